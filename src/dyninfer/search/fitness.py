"""Fitness of a little/big pair of a trained big/little supernet (NAS-for-dynamic-inference paper, 3.5).

A search strategy (:mod:`dyninfer.search.evolution`, :mod:`dyninfer.search.predictor`) looks for a *pair*, so its
fitness is that of the dynamic system the pair makes under a router, not that of one network:

* :class:`PairEvaluator` — re-estimates the pair's switchable batch norms on some training images (a subnet's
  accuracy means nothing before; :func:`~dyninfer.train.bigsmall.recalibrate_pairs`), runs both heads on a
  validation split (:meth:`~dyninfer.models.bigsmall.BigSmallSupernet.forward_pair`) and scores the confidence
  router at threshold τ: the little answer is kept where its max-softmax reaches τ, otherwise the big subnet
  answers. The expected FLOPs per image are ``little + forward rate x big``: a forwarded image runs the big
  subnet *from the image* (as :class:`~dyninfer.paths.BigSmallPaths` and the cascade runtime run it), so it pays
  the little subnet and the whole big one. The head outputs are cached by encoding, so other thresholds cost
  nothing; the evaluator counts the architectures it ran and the CPU seconds it spent (the search cost).
* :class:`LatencyTable` — a lookup table of measured block latencies: every inverted-residual block
  configuration (stage, layer, input / hidden / output channels, kernel), the stem and each head is timed once
  (as a static module, the deployed form) at batch 1 and at a serving batch with the shared timer
  (:func:`~dyninfer.runtime.cost.interleaved_latency`); a subnet's predicted latency is the sum over its blocks
  plus stem and head. Blocks are timed when first needed (or all at once with :meth:`LatencyTable.fill`).
"""

from __future__ import annotations

import copy
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from ..check import number
from ..errors import ConfigError
from ..io import write_json
from ..models.bigsmall import BigSmallSupernet, Head, InvertedResidual, PairConfig, SubnetConfig, expanded
from ..models.elastic import scaled
from ..runtime.cost import interleaved_latency, model_device

TABLE_FORMAT = "dyninfer-bigsmall-latency-table-1"


# ---------------------------------------------------------------------------------------- latency table

def _block_key(s: int, j: int, cin: int, hidden: int, out: int, kernel: int) -> str:
    return f"block:s{s}:l{j}:{cin}-{hidden}-{out}:k{kernel}"


class LatencyTable:
    """Measured latency (ms per call) of every block of a :class:`~dyninfer.models.bigsmall.BigSmallSupernet`.

    Keys are ``stem``, ``block:s<stage>:l<layer>:<in>-<hidden>-<out>:k<kernel>`` (0-based stage and layer; the
    layer fixes the stride and the input size) and ``head:<little|big>:<in>``. Each entry holds the median time
    at every batch of ``batches``.

    Args:
        supernet: the trained supernet (its weights are copied into static blocks; values do not matter for time).
        batches: batch sizes timed, e.g. 1 and a serving batch.
        rounds: timed calls per block and batch (interleaved over the blocks timed together).
        warmup: untimed calls per block first.
        clock: ``cpu`` (thread CPU time: with one torch thread, the latency on a dedicated core whatever else runs)
            or ``wall``; on a CUDA supernet use ``wall`` (each call synchronises).
    """

    def __init__(self, supernet: BigSmallSupernet, *, batches: Sequence[int] = (1, 32), rounds: int = 10,
                 warmup: int = 2, clock: str = "cpu") -> None:
        if not isinstance(supernet, BigSmallSupernet):
            raise ConfigError(f"a latency table needs a BigSmallSupernet, got {type(supernet).__name__}")
        batches = tuple(batches)
        if not batches:
            raise ConfigError("batches must name at least one batch size, e.g. (1, 32)")
        for b in batches:
            number("batch", b, lo=1, integer=True)
        number("rounds", rounds, lo=1, integer=True)
        number("warmup", warmup, lo=0, integer=True)
        if clock not in ("cpu", "wall"):
            raise ConfigError(f"clock must be one of ['cpu', 'wall'], got {clock!r}")
        self.supernet = supernet
        self.batches = tuple(sorted(set(int(b) for b in batches)))
        self.rounds, self.warmup, self.clock = int(rounds), int(warmup), clock
        self.entries: dict[str, dict[int, float]] = {}  # key -> batch -> median ms per call
        self.cpu_seconds = 0.0  # process CPU time spent timing blocks
        self.measured = 0  # entries timed by this table (not loaded)

    # ------------------------------------------------------------------ structure
    def keys_of(self, cfg: Any) -> list[str]:
        """The table keys a subnet ``cfg`` (little or big) is made of: stem, its blocks, its head."""
        net = self.supernet
        cfg = net.space.check_subnet(cfg)
        keys = ["stem"]
        for s, j, cin, hidden, out, st in net._layer_channels(cfg):
            keys.append(_block_key(s, j, cin, hidden, out, st.kernel))
        cin = scaled(net.channels[len(cfg.stages) - 1], cfg.stages[-1].width)
        keys.append(f"head:{cfg.head}:{cin}")
        return keys

    def _module(self, key: str) -> tuple[nn.Module, tuple[int, int, int]]:
        """A static module for ``key`` and its input shape (C, H, W)."""
        net, sizes = self.supernet, self.supernet.stage_sizes()
        if key == "stem":
            c = net.stem_channels
            stem = nn.Sequential(copy.deepcopy(net.normalize), copy.deepcopy(net.stem[0]), net.stem[1].static(c),
                                 nn.ReLU6())
            return stem, tuple(net.input_shape)  # type: ignore[return-value]
        parts = key.split(":")
        if parts[0] == "head":
            head, cin = parts[1], int(parts[2])
            hd = net.heads[head]
            f = hd.conv.out_channels
            h, w = sizes[net.space.stages_of(head)]
            return Head(hd.conv.static(cin), hd.norm.static(f), copy.deepcopy(hd.fc)), (cin, h, w)
        s, j = int(parts[1][1:]), int(parts[2][1:])
        cin, hidden, out = (int(v) for v in parts[3].split("-"))
        kernel = int(parts[4][1:])
        e = net.stages[s][j]
        saved = (e.expand.active_out, e.dw.active_kernel, e.project.active_out)
        e.expand.set_active(hidden)
        e.dw.set_active(kernel)
        e.project.set_active(out)
        try:
            block = InvertedResidual(e.expand.static(cin), e.n1.static(hidden), e.dw.static(hidden),
                                     e.n2.static(hidden), e.project.static(hidden), e.n3.static(out),
                                     residual=e.residual)
        finally:
            e.expand.set_active(saved[0])
            e.dw.set_active(saved[1])
            e.project.set_active(saved[2])
        h, w = sizes[s] if j == 0 else sizes[s + 1]
        return block, (cin, h, w)

    # ------------------------------------------------------------------ measuring
    def measure(self, keys: Iterable[str]) -> int:
        """Time the entries of ``keys`` not in the table yet (interleaved, at every batch); returns how many."""
        missing = list(dict.fromkeys(k for k in keys if k not in self.entries))
        if not missing:
            return 0
        t0 = time.process_time()
        dev = model_device(self.supernet)
        cuda = dev.type == "cuda"
        modules = {}
        for k in missing:
            m, shape = self._module(k)
            modules[k] = (m.to(dev).eval(), shape)
        for b in self.batches:
            calls = {}
            for k, (m, shape) in modules.items():
                x = torch.rand(b, *shape, device=dev)

                def call(m=m, x=x):
                    with torch.inference_mode():
                        m(x)
                    if cuda:
                        torch.cuda.synchronize(dev)

                calls[k] = call
            lat = interleaved_latency(calls, rounds=self.rounds, warmup=self.warmup, clock=self.clock)
            for k in missing:
                self.entries.setdefault(k, {})[b] = float(lat[k]["median_ms"])
        self.cpu_seconds += time.process_time() - t0
        self.measured += len(missing)
        return len(missing)

    def block_grids(self, stages: int | None = None) -> list[tuple[int, int, np.ndarray]]:
        """The entries each block position can read, per stage ``s`` (the first ``stages``; None: all) and layer
        ``j``: ``(s, j, keys)`` with ``keys[a, b, e, k]`` the key of the block reading input width ``a`` and
        writing output width ``b`` (both in the order of the space's widths; the stem's width feeds stage 0),
        expansion ``e`` and kernel ``k``. Only layer 0 reads the previous stage's widths; a later layer reads its
        own output width, so its array has one input row. :func:`~dyninfer.search.darts.expected_latency` weights
        these arrays by the choice probabilities; :meth:`all_keys` lists them flat."""
        net, sp = self.supernet, self.supernet.space
        grids: list[tuple[int, int, np.ndarray]] = []
        cins = [net.stem_channels]
        for s in range(len(net.channels) if stages is None else stages):
            outs = [scaled(net.channels[s], w) for w in sp.widths]
            for j in range(max(sp.depths)):
                rows = cins if j == 0 else [None]
                keys = np.empty((len(rows), len(outs), len(sp.expands), len(sp.kernels)), dtype=object)
                for a, c in enumerate(rows):
                    for b, out in enumerate(outs):
                        cin = out if c is None else c
                        for e, x in enumerate(sp.expands):
                            for k, kernel in enumerate(sp.kernels):
                                keys[a, b, e, k] = _block_key(s, j, cin, expanded(cin, x), out, kernel)
                grids.append((s, j, keys))
            cins = outs
        return grids

    def head_keys(self, head: str) -> list[str]:
        """The entries of ``head``'s classifier, one per width of the stage it reads (in the space's order)."""
        net, sp = self.supernet, self.supernet.space
        return [f"head:{head}:{scaled(net.channels[sp.stages_of(head) - 1], w)}" for w in sp.widths]

    def all_keys(self) -> list[str]:
        """Every entry the supernet's space can need (for :meth:`fill`)."""
        blocks = (k for _, _, keys in self.block_grids() for k in keys.flat)
        return list(dict.fromkeys(["stem", *blocks, *self.head_keys("little"), *self.head_keys("big")]))

    def fill(self) -> int:
        """Time every entry of :meth:`all_keys` still missing; returns how many were timed."""
        return self.measure(self.all_keys())

    def check_batch(self, batch: int) -> int:
        """``batch`` as an int, or a ConfigError when the table did not time it."""
        if batch not in self.batches:
            raise ConfigError(f"batch {batch!r} was not timed; this table holds the batches {self.batches}")
        return int(batch)

    def predict(self, cfg: Any, batch: int = 1) -> float:
        """Predicted latency (ms per call of ``batch`` images) of subnet ``cfg``: stem + its blocks + its head,
        timing the entries it needs that are missing."""
        batch = self.check_batch(batch)
        keys = self.keys_of(cfg)
        self.measure(keys)
        return float(sum(self.entries[k][batch] for k in keys))

    # ------------------------------------------------------------------ persistence
    def to_dict(self) -> dict:
        return {"format": TABLE_FORMAT, "batches": list(self.batches), "rounds": self.rounds, "clock": self.clock,
                **_layout(self.supernet),
                "entries": {k: {str(b): v for b, v in e.items()} for k, e in self.entries.items()}}

    def save(self, path: str | Path) -> Path:
        """Write the table as JSON (atomically)."""
        write_json(path, self.to_dict())
        return Path(path)

    @classmethod
    def load(cls, path: str | Path, supernet: BigSmallSupernet, **kwargs: Any) -> "LatencyTable":
        """A table for ``supernet`` holding the entries of a file from :meth:`save` (it must describe the same
        layout — channels, stem, input shape, strides, little-head stage, head widths, normalisation — or it is
        refused with a ConfigError naming both; measured on the machine that will serve)."""
        import json

        try:
            d = json.loads(Path(path).read_text())
        except (OSError, ValueError) as e:
            raise ConfigError(f"cannot read a latency table from {path}: {e}") from e
        if not isinstance(d, dict) or d.get("format") != TABLE_FORMAT:
            raise ConfigError(f"{path} is not a latency table (format {TABLE_FORMAT!r})")
        if not isinstance(supernet, BigSmallSupernet):
            raise ConfigError(f"a latency table needs a BigSmallSupernet, got {type(supernet).__name__}")
        want = _layout(supernet)
        diff = [k for k in want if d.get(k, _MISSING) != want[k]]
        if diff:
            there = ", ".join(f"{k} {d[k] if k in d else '(not recorded)'}" for k in diff)
            here = ", ".join(f"{k} {want[k]}" for k in diff)
            raise ConfigError(f"{path} was measured on another supernet layout ({there}); this supernet has "
                              f"{here}: measure a table for it (LatencyTable(...).fill()) instead")
        table = cls(supernet, batches=d["batches"], rounds=d["rounds"], clock=d["clock"], **kwargs)
        table.entries = {k: {int(b): float(v) for b, v in e.items()} for k, e in d["entries"].items()}
        return table


_MISSING = object()


def _layout(net: BigSmallSupernet) -> dict:
    """What a block's latency depends on besides its key: the supernet's layout, in JSON form."""
    return {"channels": list(net.channels), "stem": net.stem_channels, "input_shape": list(net.input_shape),
            "strides": [int(v) for v in net.strides], "little_after": net.space.little_after,
            "head_channels": [int(net.heads[h].conv.out_channels) for h in ("little", "big")],
            "norm": net.norm_kind}


# ---------------------------------------------------------------------------------------- pair evaluation

@dataclass(frozen=True)
class PairRecord:
    """The fitness of one pair at one router threshold.

    Accuracies and rates are fractions of the validation split; FLOPs are per image (expected: ``flops`` =
    ``little_flops + forward_rate x big_flops``); latencies are predicted from a :class:`LatencyTable`, in ms per
    image (``latency_ms``: batch 1; ``latency_ms_batch``: at the table's serving batch, both subnets charged at
    that batch), None without a table.
    """

    encoding: tuple[int, ...]
    pair: dict
    threshold: float
    accuracy: float  # the dynamic system's
    little_acc: float
    big_acc: float
    exit_rate: float  # share answered by the little subnet
    forward_rate: float  # share forwarded to the big subnet
    flops: float
    little_flops: int
    big_flops: int
    latency_ms: float | None = None
    latency_ms_batch: float | None = None

    def as_dict(self) -> dict:
        d = asdict(self)
        d["encoding"] = list(self.encoding)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "PairRecord":
        d = dict(d)
        d["encoding"] = tuple(int(v) for v in d["encoding"])
        return cls(**d)

    def cost(self, objective: str) -> float:
        """The cost an objective minimises: ``flops`` or ``latency`` (batch 1)."""
        if objective == "flops":
            return float(self.flops)
        if objective == "latency":
            if self.latency_ms is None:
                raise ConfigError("the latency objective needs an evaluator with a LatencyTable")
            return float(self.latency_ms)
        raise ConfigError(f"objective must be one of {OBJECTIVES}, got {objective!r}")


OBJECTIVES = ("flops", "latency")


@dataclass
class _Outputs:
    """What one forward of a pair left behind: per validation image, the little head's confidence and whether
    each head is right."""

    confidence: np.ndarray  # (N,) max-softmax of the little head
    little_right: np.ndarray  # (N,) bool
    big_right: np.ndarray  # (N,) bool


class PairEvaluator:
    """Scores little/big pairs of a trained supernet under the confidence router (see the module doc).

    Args:
        supernet: the trained big/little supernet. The evaluator scores a private copy of it, taken once here
            (:attr:`supernet`; the caller's is :attr:`source`): each pair's switchable batch norms are re-estimated
            and its subnets activated on the copy, so the caller's supernet — weights, batch-norm running
            statistics, active subnet — is never changed by evaluating. The scores (and their cache) are those of
            the supernet as it was at construction: build a new evaluator after changing its weights.
        images, labels: the validation split scored (N, C, H, W) in [0, 1] and (N,) — the calibration split,
            never the test split.
        bn_images: training images (M, C, H, W) re-estimating the batch norms of each pair (ignored without
            batch norms).
        threshold: τ of the confidence router in [0, inf): keep the little answer where its max-softmax >= τ
            (0: always keep; above 1: always forward).
        latency_table: predicts latency (``latency_ms`` of the records; the ``latency`` objective).
        serving_batch: the batch of ``latency_ms_batch`` (one of the table's batches; default its largest).
        batch_size: images per forward pass.
    """

    def __init__(self, supernet: BigSmallSupernet, images: torch.Tensor, labels: torch.Tensor,
                 bn_images: torch.Tensor | None = None, *, threshold: float = 0.9,
                 latency_table: LatencyTable | None = None, serving_batch: int | None = None,
                 batch_size: int = 512) -> None:
        if not isinstance(supernet, BigSmallSupernet):
            raise ConfigError(f"a pair evaluator needs a BigSmallSupernet, got {type(supernet).__name__}")
        images, labels = torch.as_tensor(images), torch.as_tensor(labels)
        shape = tuple(supernet.input_shape)
        if images.ndim != 4 or tuple(images.shape[1:]) != shape or labels.shape != (images.shape[0],) \
                or images.shape[0] == 0:
            raise ConfigError(f"images must be (N, {', '.join(map(str, shape))}) with N > 0 and labels (N,); got "
                              f"{tuple(images.shape)} and {tuple(labels.shape)}")
        if supernet.norm_kind == "bn":
            if bn_images is None or bn_images.ndim != 4 or tuple(bn_images.shape[1:]) != shape \
                    or bn_images.shape[0] == 0:
                raise ConfigError(f"a supernet with batch norms needs bn_images (M, {', '.join(map(str, shape))}) "
                                  f"from the training split to re-estimate each pair's statistics; got "
                                  f"{None if bn_images is None else tuple(bn_images.shape)}")
        self.threshold = _check_threshold(threshold)
        number("batch_size", batch_size, lo=1, integer=True)
        if latency_table is not None and latency_table.supernet is not supernet:
            raise ConfigError("the latency table was built for another supernet")
        if serving_batch is None and latency_table is not None:
            serving_batch = latency_table.batches[-1]
        if latency_table is not None:
            latency_table.check_batch(serving_batch)  # type: ignore[arg-type]
        self.source = supernet  # the caller's, never changed here
        self.supernet = copy.deepcopy(supernet).eval()  # the copy whose norms and active subnet evaluation changes
        for p in self.supernet.parameters():
            p.requires_grad_(False)
        self.space = self.supernet.space
        self.images, self.labels = images, labels.long()
        self.bn_images = bn_images
        self.latency_table, self.serving_batch = latency_table, serving_batch
        self.batch_size = int(batch_size)
        self._outputs: dict[tuple[int, ...], _Outputs] = {}
        self._records: dict[tuple[tuple[int, ...], float], PairRecord] = {}
        self.evaluated = 0  # architectures (pairs) run by this evaluator
        self.cache_hits = 0  # evaluations answered from the cache
        self._cpu = 0.0  # process CPU seconds spent recalibrating and running pairs

    # ------------------------------------------------------------------ the search cost
    @property
    def cpu_seconds(self) -> float:
        """Process CPU seconds spent scoring pairs (batch-norm re-estimation, forwards, latency timing)."""
        return self._cpu + (self.latency_table.cpu_seconds if self.latency_table is not None else 0.0)

    def search_cost(self) -> dict:
        """``{"evaluated", "cache_hits", "cpu_seconds", "latency_entries"}``: what the searches spent so far."""
        return {"evaluated": self.evaluated, "cache_hits": self.cache_hits, "cpu_seconds": self.cpu_seconds,
                "latency_entries": self.latency_table.measured if self.latency_table is not None else 0}

    # ------------------------------------------------------------------ evaluation
    def key(self, pair: Any) -> tuple[int, ...]:
        """The cache key of a pair: its encoding (a pair, its dict form, or an encoding vector)."""
        if isinstance(pair, (PairConfig, SubnetConfig, Mapping)):
            return tuple(int(v) for v in self.space.encode(self.space.check_pair(pair)))  # a ConfigError for a subnet
        cfg = self.space.decode(pair)  # a ConfigError naming the bad entry and the allowed values
        if not isinstance(cfg, PairConfig):
            lengths = self.space.encoding_lengths()
            raise ConfigError(f"a pair's encoding has {lengths['pair']} entries (little then big); got "
                              f"{lengths[cfg.head]} ({cfg.head} subnet only)")
        return tuple(int(v) for v in np.asarray(pair).astype(np.int64))

    @torch.no_grad()
    def _run(self, pair: PairConfig) -> _Outputs:
        t0 = time.process_time()
        net = self.supernet
        was_training = net.training
        dev = model_device(net)
        if net.norm_kind == "bn":
            from ..train.bigsmall import recalibrate_pairs

            recalibrate_pairs(net, self.bn_images.to(dev), [pair], batch_size=self.batch_size)
        net.eval()
        conf, lr, br = [], [], []
        try:
            for i in range(0, self.images.shape[0], self.batch_size):
                xb = self.images[i:i + self.batch_size].to(dev)
                yb = self.labels[i:i + self.batch_size].to(dev)
                little, big, _ = net.forward_pair(xb, pair)  # (B, K), (B, K)
                conf.append(torch.softmax(little.float(), 1).max(1).values.cpu())
                lr.append((little.argmax(1) == yb).cpu())
                br.append((big.argmax(1) == yb).cpu())
        finally:
            net.train(was_training)
        self._cpu += time.process_time() - t0
        self.evaluated += 1
        return _Outputs(torch.cat(conf).numpy(), torch.cat(lr).numpy(), torch.cat(br).numpy())

    def evaluate(self, pair: Any, threshold: float | None = None) -> PairRecord:
        """The :class:`PairRecord` of ``pair`` (a :class:`~dyninfer.models.bigsmall.PairConfig`, its dict form or
        its encoding) at ``threshold`` (default: the evaluator's τ); a pair seen before is not run again."""
        key = self.key(pair)
        tau = self.threshold if threshold is None else _check_threshold(threshold)
        rec = self._records.get((key, tau))
        if rec is not None:
            self.cache_hits += 1
            return rec
        cfg = self.space.decode(np.asarray(key))
        if not isinstance(cfg, PairConfig):  # key() refuses these; kept as a ConfigError, never an assert
            raise ConfigError(f"expected a little/big pair, got a single {cfg.head} subnet")
        out = self._outputs.get(key)
        if out is None:
            out = self._outputs[key] = self._run(cfg)
        else:
            self.cache_hits += 1
        keep = out.confidence >= tau  # (N,)
        exit_rate = float(keep.mean())
        fwd = 1.0 - exit_rate
        right = np.where(keep, out.little_right, out.big_right)
        fl, fb = self.supernet.flops(cfg.little), self.supernet.flops(cfg.big)
        lat = lat_b = None
        if self.latency_table is not None:
            t = self.latency_table
            lat = t.predict(cfg.little, 1) + fwd * t.predict(cfg.big, 1)
            b = int(self.serving_batch)  # type: ignore[arg-type]
            lat_b = (t.predict(cfg.little, b) + fwd * t.predict(cfg.big, b)) / b
        rec = PairRecord(encoding=key, pair=cfg.as_dict(), threshold=tau, accuracy=float(right.mean()),
                         little_acc=float(out.little_right.mean()), big_acc=float(out.big_right.mean()),
                         exit_rate=exit_rate, forward_rate=fwd, flops=float(fl + fwd * fb), little_flops=int(fl),
                         big_flops=int(fb), latency_ms=lat, latency_ms_batch=lat_b)
        self._records[(key, tau)] = rec
        return rec

    def evaluate_many(self, pairs: Iterable[Any], threshold: float | None = None) -> list[PairRecord]:
        """:meth:`evaluate` of each pair, in order."""
        return [self.evaluate(p, threshold) for p in pairs]

    def remember(self, records: Iterable[PairRecord | Mapping[str, Any]]) -> int:
        """Put records of an earlier run (e.g. a resumed search's) into the cache, so those pairs are not run
        again at their thresholds; returns how many were added. They must come from the same supernet and
        validation split (nothing here can check that)."""
        n = 0
        for r in records:
            r = r if isinstance(r, PairRecord) else PairRecord.from_dict(r)
            if (r.encoding, r.threshold) not in self._records:
                self._records[(r.encoding, r.threshold)] = r
                n += 1
        return n


def json_safe(obj: Any) -> Any:
    """``obj`` (nested dicts, lists, tuples, numbers) with every NaN or infinite float replaced by None, so that
    ``json.dumps(..., allow_nan=False)`` accepts it: standard JSON has no NaN (an undefined figure, e.g. the
    RMSE on no held-out pair, is written as null)."""
    if isinstance(obj, Mapping):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return json_safe(obj.tolist())
    if isinstance(obj, (float, np.floating)):
        return float(obj) if np.isfinite(obj) else None
    if isinstance(obj, np.integer):
        return int(obj)
    return obj


def _check_threshold(threshold: Any) -> float:
    number("threshold", threshold, lo=0, hint=" (τ on the little head's max-softmax; above 1 always forwards)")
    return float(threshold)


def dominates(a: Sequence[float], b: Sequence[float]) -> bool:
    """Whether point ``a`` = (accuracy, cost) dominates ``b``: no less accurate, no costlier, better in one."""
    return a[0] >= b[0] and a[1] <= b[1] and (a[0] > b[0] or a[1] < b[1])


def pareto_indices(points: Sequence[Sequence[float]]) -> list[int]:
    """Indices of the non-dominated points of (accuracy to maximise, cost to minimise), by increasing cost;
    of equal points the first is kept (the shared :func:`~dyninfer.evaluate.frontier.pareto_front`)."""
    from ..evaluate.frontier import pareto_front

    pts = np.array([(float(a), float(c)) for a, c in points], float).reshape(-1, 2)
    if not np.isfinite(pts).all():
        raise ConfigError("pareto_indices needs finite (accuracy, cost) points")
    return [int(i) for i in pareto_front(pts[:, 1], pts[:, 0])]


def hypervolume(points: Sequence[Sequence[float]], reference_cost: float, reference_accuracy: float = 0.0) -> float:
    """Area dominated by (accuracy, cost) points and bounded by the reference point (``reference_accuracy``,
    ``reference_cost``): larger is a better front."""
    pts = [(a, c) for a, c in (points[i] for i in pareto_indices(points))
           if a > reference_accuracy and c < reference_cost]
    area = 0.0
    for k, (a, c) in enumerate(pts):
        nxt = pts[k + 1][1] if k + 1 < len(pts) else reference_cost
        area += (a - reference_accuracy) * (nxt - c)
    return float(area)


__all__ = ["OBJECTIVES", "LatencyTable", "PairEvaluator", "PairRecord", "dominates", "hypervolume", "json_safe",
           "pareto_indices"]
