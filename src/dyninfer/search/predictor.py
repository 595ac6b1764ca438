"""Once-for-all style search for a little/big pair (NAS-for-dynamic-inference paper, 3.5.3).

The supernet is trained once; then an **accuracy predictor** — a small MLP on the pair's architecture encoding,
one-hot per choice (:func:`one_hot`; or :func:`ordinal`, one feature per choice), by default with the pair's counted
FLOPs as two more features and as an ensemble of five MLPs — is trained on pairs measured by a
:class:`~dyninfer.search.fitness.PairEvaluator` (a held-out share of them scores it: RMSE in accuracy points),
and Pareto-optimal pairs are chosen among many sampled pairs by *predicted* accuracy against FLOPs, without
training or running any of them.

The dynamic system's expected FLOPs depend on how many images the little subnet keeps, which counting cannot
give; so the predictor has a second output, the exit rate, and a candidate's cost is its counted FLOPs
``little + (1 - predicted exit rate) x big`` (both outputs squashed into [0, 1]). Optionally the chosen pairs are
measured afterwards, to report predicted against measured accuracy.

``benchmarks/bigsmall_predictor.py`` measures many pairs of a co-trained supernet and compares these choices by
their held-out RMSE against the number of measured pairs (the defaults were chosen there, on calibration pairs).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn

from ..check import number
from ..errors import ConfigError
from ..models.bigsmall import FIELDS, PairConfig, SearchSpace
from .fitness import PairEvaluator, PairRecord, json_safe, pareto_indices


def one_hot(space: SearchSpace, encodings: Any) -> torch.Tensor:
    """Pair encodings (n, L) of :meth:`~dyninfer.models.bigsmall.SearchSpace.encode` as one-hot features
    (n, sum of the choice counts over the entries): each entry becomes a block as wide as its field's choices.
    An out-of-range entry is a ConfigError naming it and the allowed values."""
    arr = np.asarray(encodings)
    if arr.ndim == 1:
        arr = arr[None]
    length = space.encoding_lengths()["pair"]
    if arr.ndim != 2 or arr.shape[1] != length:
        raise ConfigError(f"pair encodings are (n, {length}) integer choice indices; got shape {arr.shape}")
    for row in arr:
        space.decode(row)  # names a bad entry and its allowed values
    arr = arr.astype(np.int64)
    sizes = [len(space.choices(FIELDS[j % len(FIELDS)])) for j in range(length)]
    offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    out = np.zeros((arr.shape[0], int(sum(sizes))), np.float32)
    rows = np.repeat(np.arange(arr.shape[0]), length)
    out[rows, (arr + offsets[None]).ravel()] = 1.0
    return torch.from_numpy(out)


def flops_features(flops: Any, flops_range: tuple[float, float]) -> torch.Tensor:
    """Counted (little, big) FLOPs (n, 2) as two features in [0, 1]: log FLOPs scaled between the space's
    smallest and largest subnet (``flops_range``)."""
    f = np.asarray(flops, np.float64)
    if f.ndim == 1:
        f = f[None]
    if f.ndim != 2 or f.shape[1] != 2 or not np.all(np.isfinite(f)) or np.any(f <= 0):
        raise ConfigError(f"flops must be positive (n, 2) counted (little, big) FLOPs per image; got shape {f.shape}")
    lo, hi = (math.log(float(v)) for v in flops_range)
    return torch.from_numpy(((np.log(f) - lo) / max(hi - lo, 1e-12)).astype(np.float32))


def ordinal(space: SearchSpace, encodings: Any) -> torch.Tensor:
    """Pair encodings (n, L) as one feature per entry: its choice index over the field's last index, in [0, 1]
    (smallest choice 0, largest 1). An out-of-range entry is a ConfigError naming it and the allowed values."""
    arr = np.asarray(encodings)
    one_hot(space, arr)  # the same checks
    arr = arr.reshape(-1, arr.shape[-1]).astype(np.float64)
    sizes = np.array([len(space.choices(FIELDS[j % len(FIELDS)])) for j in range(arr.shape[1])], np.float64)
    return torch.from_numpy((arr / np.maximum(sizes - 1, 1)).astype(np.float32))


ENCODINGS = {"one-hot": one_hot, "ordinal": ordinal}


def supernet_flops_range(net: Any) -> tuple[float, float]:
    """The (smallest, largest) counted FLOPs of a little or big subnet of ``net``: a predictor's ``flops_range``."""
    sizes = [net.flops(getattr(net, f"{end}_subnet")(head)) for end in ("min", "max") for head in ("little", "big")]
    return float(min(sizes)), float(max(sizes))


class AccuracyPredictor(nn.Module):
    """MLP on a pair's one-hot encoding -> (dynamic accuracy, exit rate), both in [0, 1] (sigmoid outputs).

    Args:
        space: the search space whose pairs it reads.
        hidden: hidden units per layer.
        layers: hidden layers.
        flops_range: the (smallest, largest) counted FLOPs of a subnet of the space. With it the features also hold
            the pair's log FLOPs (:func:`flops_features`), and :meth:`predict` needs them.
        members: MLPs averaged (an ensemble; each member initialised and trained on its own).
        encoding: how a pair's choices are fed: ``one-hot`` (a block per entry, as once-for-all's predictor) or
            ``ordinal`` (one feature per entry, its choice's rank in [0, 1]: fewer inputs for few measured pairs).
    """

    def __init__(self, space: SearchSpace, hidden: int = 64, layers: int = 2, *,
                 flops_range: tuple[float, float] | None = None, members: int = 1, encoding: str = "one-hot") -> None:
        super().__init__()
        number("hidden", hidden, lo=1, integer=True)
        number("layers", layers, lo=1, integer=True)
        number("members", members, lo=1, integer=True)
        if flops_range is not None:
            lo, hi = (float(v) for v in flops_range)
            if not (0 < lo <= hi and math.isfinite(hi)):
                raise ConfigError(f"flops_range must be (smallest, largest) positive FLOPs; got {flops_range}")
            flops_range = (lo, hi)
        if encoding not in ENCODINGS:
            raise ConfigError(f"unknown predictor encoding {encoding!r}; allowed: {sorted(ENCODINGS)}")
        self.space, self.flops_range, self.encoding = space, flops_range, encoding
        width = int(ENCODINGS[encoding](space, np.zeros(space.encoding_lengths()["pair"], np.int64)).shape[1])
        width += 2 if flops_range is not None else 0

        def mlp() -> nn.Sequential:
            mods: list[nn.Module] = []
            for i in range(layers):
                mods += [nn.Linear(width if i == 0 else hidden, hidden), nn.ReLU()]
            return nn.Sequential(*mods, nn.Linear(hidden, 2))

        self.members = nn.ModuleList(mlp() for _ in range(members))

    def features(self, encodings: Any, flops: Any = None) -> torch.Tensor:
        """The MLP's input: the encoded pairs (n, D), with the (little, big) FLOPs (n, 2) appended when the
        predictor reads FLOPs (then ``flops`` is required)."""
        x = ENCODINGS[self.encoding](self.space, encodings)
        if self.flops_range is None:
            return x
        if flops is None:
            raise ConfigError("this predictor reads the pairs' counted FLOPs: pass flops (n, 2) (little, big)")
        f = flops_features(flops, self.flops_range)
        if f.shape[0] != x.shape[0]:
            raise ConfigError(f"{f.shape[0]} FLOPs rows for {x.shape[0]} encodings")
        return torch.cat([x, f], 1)

    def forward(self, features: torch.Tensor, member: int | None = None) -> torch.Tensor:
        """(n, 2) predicted (accuracy, exit rate) from features (n, D): the members' mean, or one member's."""
        if member is not None:
            return torch.sigmoid(self.members[member](features))
        return torch.stack([torch.sigmoid(m(features)) for m in self.members]).mean(0)

    @torch.no_grad()
    def predict(self, encodings: Any, flops: Any = None) -> np.ndarray:
        """(n, 2) predicted (accuracy, exit rate) of pair encodings (n, L) (and their FLOPs, see :meth:`features`)."""
        self.eval()
        return self(self.features(encodings, flops)).numpy().astype(np.float64)


def _rmse_points(pred: np.ndarray, target: np.ndarray) -> float:
    return float(100.0 * np.sqrt(np.mean((pred - target) ** 2))) if len(target) else math.nan


def train_predictor(records: Sequence[PairRecord], space: SearchSpace, *, holdout: float = 0.25, hidden: int = 64,
                    layers: int = 2, epochs: int = 400, lr: float = 3e-3, weight_decay: float = 1e-4,
                    flops_range: tuple[float, float] | None = None, members: int = 1, encoding: str = "one-hot",
                    seed: int = 0,
                    ) -> tuple[AccuracyPredictor, dict]:
    """Train an :class:`AccuracyPredictor` on measured pairs (full batch, AdamW, mean squared error on both
    outputs, each member from its own initialisation; pairs encoded as ``encoding`` says), holding out a random ``holdout`` share of them (distinct
    pairs) to score it. With ``flops_range`` the predictor also reads the records' counted FLOPs.

    Returns:
        (predictor in eval mode, report: ``rmse_points`` / ``train_rmse_points`` — accuracy RMSE in points on the
        held-out / training pairs — ``exit_rmse_points`` on the held-out pairs, ``mean_rmse_points`` — that of
        predicting the training pairs' mean accuracy for every held-out pair, the floor a predictor must beat —
        ``n_train``, ``n_holdout``, ``seconds``).
    """
    with torch.random.fork_rng():  # its seeded initialisation leaves the caller's random state alone
        return _train_predictor(records, space, holdout=holdout, hidden=hidden, layers=layers, epochs=epochs, lr=lr,
                                weight_decay=weight_decay, flops_range=flops_range, members=members, encoding=encoding,
                                seed=seed)


def _record_flops(records: Sequence[PairRecord]) -> np.ndarray:
    return np.array([[r.little_flops, r.big_flops] for r in records], np.float64)


def _train_predictor(records: Sequence[PairRecord], space: SearchSpace, *, holdout: float, hidden: int, layers: int,
                     epochs: int, lr: float, weight_decay: float, flops_range: tuple[float, float] | None,
                     members: int, encoding: str, seed: int) -> tuple[AccuracyPredictor, dict]:
    number("holdout", holdout, lo=0, hi=1, hi_open=True)
    number("epochs", epochs, lo=1, integer=True)
    number("lr", lr, lo=0, lo_open=True)
    number("weight_decay", weight_decay, lo=0)
    number("seed", seed, lo=0, integer=True)
    distinct = list({r.encoding: r for r in records}.values())
    n_hold = int(round(holdout * len(distinct)))
    if len(distinct) - n_hold < 2 or (holdout > 0 and n_hold < 1):
        raise ConfigError(f"a predictor needs at least 2 training pairs and, with holdout > 0, one held-out pair; "
                          f"got {len(distinct)} distinct measured pairs at holdout {holdout}")
    t0 = time.perf_counter()
    order = np.random.default_rng(seed).permutation(len(distinct))
    hold, train = order[:n_hold], order[n_hold:]
    enc = np.array([r.encoding for r in distinct], np.int64)
    flops = _record_flops(distinct)
    target = np.array([[r.accuracy, r.exit_rate] for r in distinct], np.float32)
    torch.manual_seed(seed)
    model = AccuracyPredictor(space, hidden, layers, flops_range=flops_range, members=members, encoding=encoding)
    x, y = model.features(enc[train], flops[train]), torch.from_numpy(target[train])
    model.train()
    for i in range(members):
        opt = torch.optim.AdamW(model.members[i].parameters(), lr=lr, weight_decay=weight_decay)
        for _ in range(epochs):
            loss = ((model(x, member=i) - y) ** 2).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    model.eval()
    pred_train = model.predict(enc[train], flops[train])
    report = {"train_rmse_points": _rmse_points(pred_train[:, 0], target[train, 0]),
              "n_train": int(len(train)), "n_holdout": int(len(hold)), "members": members,
              "flops_features": flops_range is not None, "encoding": encoding}
    if len(hold):
        pred = model.predict(enc[hold], flops[hold])
        report.update(rmse_points=_rmse_points(pred[:, 0], target[hold, 0]),
                      exit_rmse_points=_rmse_points(pred[:, 1], target[hold, 1]),
                      mean_rmse_points=_rmse_points(np.full(len(hold), target[train, 0].mean()), target[hold, 0]))
    else:
        report.update(rmse_points=math.nan, exit_rmse_points=math.nan, mean_rmse_points=math.nan)
    report["seconds"] = time.perf_counter() - t0
    return model, report


@dataclass
class Candidate:
    """A pair chosen by predicted values: its encoding, predicted accuracy and exit rate, counted little / big
    FLOPs, the predicted expected FLOPs and, once re-measured, its :class:`PairRecord`."""

    encoding: tuple[int, ...]
    pair: dict
    predicted_accuracy: float
    predicted_exit_rate: float
    little_flops: int
    big_flops: int
    predicted_flops: float
    measured: PairRecord | None = None

    def as_dict(self) -> dict:
        d = {k: getattr(self, k) for k in ("pair", "predicted_accuracy", "predicted_exit_rate", "little_flops",
                                           "big_flops", "predicted_flops")}
        return {"encoding": list(self.encoding), **d,
                "measured": self.measured.as_dict() if self.measured is not None else None}


@dataclass
class PredictorResult:
    """What :func:`predictor_search` found: the measured pairs the predictor learned from, its report, the chosen
    (predicted-Pareto) candidates by increasing predicted FLOPs, how many candidates were scored, the comparison
    of predicted and measured accuracy of the re-measured ones, and the search cost."""

    measured: list[PairRecord]
    predictor: AccuracyPredictor
    report: dict
    front: list[Candidate]
    candidates: int
    remeasured: dict = field(default_factory=dict)
    cost: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        """The result in standard JSON form: an undefined figure (NaN or infinite, e.g. the held-out RMSE with
        ``holdout=0``) is None (null), never a bare ``NaN``."""
        return json_safe({"measured": [r.as_dict() for r in self.measured], "report": self.report,
                          "front": [c.as_dict() for c in self.front], "candidates": self.candidates,
                          "remeasured": self.remeasured, "cost": self.cost})


def _distinct_pairs(space: SearchSpace, n: int, rng: np.random.Generator, seen: set) -> list[PairConfig]:
    out: list[PairConfig] = []
    tries = 0
    while len(out) < n and tries < 20 * n + 100:
        tries += 1
        p = space.sample_pair(rng)
        key = tuple(int(v) for v in space.encode(p))
        if key not in seen:
            seen.add(key)
            out.append(p)
    return out


def predictor_search(evaluator: PairEvaluator, *, measure: int = 64, candidates: int = 2000, holdout: float = 0.25,
                     remeasure: int = 0, seed: int = 0, hidden: int = 64, layers: int = 2, epochs: int = 400,
                     lr: float = 3e-3, flops_features: bool = True, members: int = 5, encoding: str = "one-hot",
                     include_corners: bool = True,
                     log: Callable[[str], None] | None = None, progress: bool = False) -> PredictorResult:
    """Once-for-all style search (see the module doc).

    Args:
        evaluator: measures the training pairs (and the re-measured ones) at its threshold.
        measure: distinct random pairs measured to train and score the predictor (plus the largest and smallest
            pairs with ``include_corners``).
        candidates: distinct random pairs scored by the predictor alone.
        holdout: share of the measured pairs held out to score the predictor.
        remeasure: how many of the chosen pairs (spread over the front) to measure afterwards (0: none).
        seed: draws the pairs and initialises the predictor.
        hidden, layers, epochs, lr: the predictor and its training (:func:`train_predictor`).
        flops_features: the predictor also reads each pair's counted FLOPs (scaled between the space's smallest
            and largest subnet).
        members: MLPs in the predictor's ensemble.
        encoding: the predictor's pair encoding (``one-hot`` or ``ordinal``, see :class:`AccuracyPredictor`).
        log: receives a line per step.
        progress: a tqdm bar over the measured pairs.

    Returns:
        :class:`PredictorResult`.
    """
    number("measure", measure, lo=3, integer=True)
    number("candidates", candidates, lo=1, integer=True)
    number("remeasure", remeasure, lo=0, integer=True)
    if not isinstance(evaluator, PairEvaluator):
        raise ConfigError(f"evaluator must be a PairEvaluator, got {type(evaluator).__name__}")
    say = log or (lambda s: None)
    space, net = evaluator.space, evaluator.supernet
    rng = np.random.default_rng(seed)
    ran0, cpu0 = evaluator.evaluated, evaluator.cpu_seconds
    seen: set = set()
    pairs: list[PairConfig] = []
    if include_corners:
        for p in (PairConfig(net.max_subnet("little"), net.max_subnet("big")),
                  PairConfig(net.min_subnet("little"), net.min_subnet("big"))):
            seen.add(tuple(int(v) for v in space.encode(p)))
            pairs.append(p)
    pairs += _distinct_pairs(space, measure, rng, seen)
    from tqdm.auto import tqdm

    measured = [evaluator.evaluate(p) for p in tqdm(pairs, desc="measure pairs", disable=not progress, leave=False)]
    say(f"[search] predictor: measured {len(measured)} pairs "
        f"({evaluator.evaluated - ran0} run, {evaluator.cpu_seconds - cpu0:.1f} CPU s)")
    flops_range = supernet_flops_range(net) if flops_features else None
    model, report = train_predictor(measured, space, holdout=holdout, hidden=hidden, layers=layers, epochs=epochs,
                                    lr=lr, flops_range=flops_range, members=members, encoding=encoding, seed=seed)
    say(f"[search] predictor: held-out accuracy RMSE {report['rmse_points']:.2f} points on {report['n_holdout']} "
        f"pairs (predicting the mean: {report['mean_rmse_points']:.2f}; train {report['train_rmse_points']:.2f} on "
        f"{report['n_train']})")
    pool = _distinct_pairs(space, candidates, rng, set())
    enc = np.stack([space.encode(p) for p in pool])
    fl = np.array([net.flops(p.little) for p in pool], np.float64)
    fb = np.array([net.flops(p.big) for p in pool], np.float64)
    pred = model.predict(enc, np.stack([fl, fb], 1))  # (n, 2)
    cost = fl + (1.0 - pred[:, 1]) * fb
    front = [Candidate(tuple(int(v) for v in enc[i]), pool[i].as_dict(), float(pred[i, 0]), float(pred[i, 1]),
                       int(fl[i]), int(fb[i]), float(cost[i]))
             for i in pareto_indices(list(zip(pred[:, 0], cost)))]
    say(f"[search] predictor: {len(front)} predicted-Pareto pairs among {len(pool)} candidates")
    remeasured: dict = {}
    if remeasure and front:
        picks = sorted(set(np.linspace(0, len(front) - 1, min(remeasure, len(front))).round().astype(int).tolist()))
        for i in picks:
            front[i].measured = evaluator.evaluate(front[i].encoding)
        chosen = [front[i] for i in picks]
        p_acc = np.array([c.predicted_accuracy for c in chosen])
        m_acc = np.array([c.measured.accuracy for c in chosen])  # type: ignore[union-attr]
        remeasured = {"n": len(chosen), "rmse_points": _rmse_points(p_acc, m_acc),
                      "predicted": p_acc.tolist(), "measured": m_acc.tolist(),
                      "predicted_flops": [c.predicted_flops for c in chosen],
                      "measured_flops": [c.measured.flops for c in chosen]}  # type: ignore[union-attr]
        say(f"[search] predictor: {len(chosen)} chosen pairs re-measured, accuracy RMSE "
            f"{remeasured['rmse_points']:.2f} points")
    cost_report = {"evaluated": evaluator.evaluated - ran0, "cpu_seconds": evaluator.cpu_seconds - cpu0,
                   "predictor_seconds": report["seconds"], "candidates_scored": len(pool)}
    return PredictorResult(measured, model, report, front, len(pool), remeasured, cost_report)


__all__ = ["AccuracyPredictor", "Candidate", "PredictorResult", "flops_features", "one_hot", "ordinal", "supernet_flops_range", "predictor_search", "train_predictor"]
