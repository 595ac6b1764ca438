"""Choosing the adaptation setting on held-out calibration data, never on the test split.

A deployment that wants more than the paper's default step size (lr 1e-4, which barely moves the
heads in a stream of a few thousand images) needs a way to pick one that does not peek at the data
it is judged on. :func:`select_adaptation` does k-fold cross-validation over the subset's images in
the calibration split:

* the subset's calibration images are cut into ``folds`` parts, stratified by class; for fold k the
  stream is every other part (shuffled), and part k is held out;
* each candidate adapts the heads on each fold's stream, then the exits' logits are recorded on the
  held-out part and on calibration images of every other class; heads are put back after each run;
* the held-out parts are pooled, so every subset calibration image is judged once, by heads that
  never saw it. The criterion is the issue's own: the reduction of the mean latency at which the
  upper hull of the pooled accuracy-latency curve reaches the pre-adaptation subset accuracy
  (:func:`~dyninfer.methods.early_exit.evaluation.hull_latency_to_reach`), under a constraint on
  the other classes' accuracy at the highest threshold (mean change over folds).

The chosen setting is the candidate with the largest pooled reduction among those that keep the
other classes within ``max_other_drop`` points; a stricter bound than the target's 0.5 points leaves
room for the difference between calibration and test data.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch

from ...data.datasets import Split
from ...errors import ConfigError
from ...models.exits import EarlyExitNetwork
from ...paths import StagedNetwork
from ...runtime.cost import PathCost
from ...scores import Score
from ...trace import Trace
from .adapt import SpecializeConfig, TestTimeSpecializer, parse_adaptation
from .evaluation import FINE_THRESHOLDS, SEARCH_THRESHOLDS, hull_latency_to_reach, params_digest, subset_curves
from .streams import class_mask

# Step sizes tried by default: the paper's and two larger plain-SGD rates, and normalised steps
# (lr_scale="input-norm", see adapt.py) with one pass over the stream or three.
DEFAULT_CANDIDATES = ("1e-4", "1e-3", "1e-2", "0.1:input-norm", "0.3:input-norm", "1:input-norm",
                      "0.1:input-norm:3", "0.3:input-norm:3", "1:input-norm:3")


def fold_indices(labels: np.ndarray, classes: Sequence[int], folds: int, seed: int = 0) -> list[np.ndarray]:
    """Indices of ``labels`` in ``classes`` cut into ``folds`` disjoint parts, stratified by class.

    Raises:
        ConfigError: fewer than two folds, or a class with fewer images than folds.
    """
    if folds < 2:
        raise ConfigError(f"cross-validation needs at least 2 folds, got {folds}")
    rng = np.random.default_rng(seed)
    parts: list[list[np.ndarray]] = [[] for _ in range(folds)]
    for c in classes:
        idx = np.flatnonzero(np.asarray(labels) == c)
        if idx.size < folds:
            raise ConfigError(f"class {c} has {idx.size} calibration images, fewer than the {folds} folds; "
                              f"use fewer folds or a larger calibration split")
        for k, part in enumerate(np.array_split(rng.permutation(idx), folds)):
            parts[k].append(part)
    return [np.sort(np.concatenate(p)) for p in parts]


def record_exit_trace(net: EarlyExitNetwork, split: Split, costs: Sequence[PathCost]) -> Trace:
    """Every exit's logits on ``split`` with the given costs."""
    return StagedNetwork(net).record(split, costs=costs)


def _pool(traces: Sequence[Trace]) -> Trace:
    t0 = traces[0]
    return Trace(list(t0.paths), np.concatenate([t.logits for t in traces], axis=1),
                 np.concatenate([t.labels for t in traces]), list(t0.costs), dict(t0.meta))


@dataclass(frozen=True)
class SelectConfig:
    """How :func:`select_adaptation` cross-validates."""

    folds: int = 5                    # each fold's stream holds (folds-1)/folds of the subset's images
    other_limit: int | None = 3000    # calibration images of the other classes judged (a fixed random sample)
    max_other_drop: float = 0.25      # largest drop (points) of the other classes' accuracy allowed
    seed: int = 0                     # folds, stream orders, the other-class sample
    prefetch: int = 256               # see TestTimeSpecializer.adapt (a speed-up; 1 replays exactly as deployed)


def select_adaptation(net: EarlyExitNetwork, calib: Split, classes: Sequence[int],
                      candidates: Sequence[SpecializeConfig | str], *, costs: Sequence[PathCost],
                      exit_ms: Sequence[float], score: Score, config: SelectConfig = SelectConfig(),
                      progress: bool = False, log: Callable[[str], None] = print, **defaults) -> dict:
    """Cross-validate adaptation settings on the calibration split (see the module docstring).

    Args:
        net: the early-exit network; its heads are restored after every run.
        calib: calibration images and labels (labels are used for judging only, never for adapting).
        classes: class indices of the deployment's subset.
        candidates: settings (:class:`SpecializeConfig` or ``LR[:LR_SCALE[:PASSES]]`` strings).
        costs: per-exit costs (for the traces).
        exit_ms: batch-1 latency of leaving at each exit (the latency model of the curves).
        score: exit score of the curves.
        config: folds, the other-class sample and its allowed drop, seed, prefetch (:class:`SelectConfig`).
        defaults: settings applied to string candidates (e.g. ``threshold``, ``batch_size``).

    Returns:
        {"rows": one dict per candidate, "chosen": label or None, "chosen_config": dict or None, ...}.

    Raises:
        ConfigError: no candidates, bad folds, or a class too small for the folds.
    """
    folds, other_limit, max_other_drop, seed, prefetch = (config.folds, config.other_limit, config.max_other_drop,
                                                          config.seed, config.prefetch)
    cands = [c if isinstance(c, SpecializeConfig) else parse_adaptation(c, **defaults) for c in candidates]
    if not cands:
        raise ConfigError("no adaptation candidates to select from")
    y = calib.y.numpy()
    parts = fold_indices(y, classes, folds, seed)
    rng = np.random.default_rng(seed + 1)
    other = np.flatnonzero(~class_mask(y, classes))
    if other_limit is not None and other.size > other_limit:
        other = np.sort(rng.choice(other, size=other_limit, replace=False))
    if other.size == 0:
        raise ConfigError("the calibration split has no images outside the subset to check the other classes on")
    streams = [rng.permutation(np.concatenate([p for j, p in enumerate(parts) if j != k])) for k in range(folds)]
    held = np.concatenate(parts)
    hi = FINE_THRESHOLDS[-1]

    def curve(tr: Trace, thresholds) -> dict:  # every sample of ``tr``
        return subset_curves(tr, score, np.ones(tr.n, bool), exit_ms, thresholds)["subset"]

    def other_acc(tr: Trace) -> float:
        return curve(tr, (hi,))["accuracy"][0]

    before_tr = record_exit_trace(net, calib.subset(held), costs)
    before_search = curve(before_tr, SEARCH_THRESHOLDS)
    target = curve(before_tr, (hi,))["accuracy"][0]  # pooled subset accuracy at the highest threshold
    lat_before = hull_latency_to_reach(before_search, target)
    other_before = other_acc(record_exit_trace(net, calib.subset(other), costs))
    heads0 = [params_digest(h) for h in net.heads]
    rows = []
    for n, cfg in enumerate(cands):
        spec = TestTimeSpecializer(net, cfg)
        snap = spec.snapshot()
        held_after, other_changes = [], []
        for k in range(folds):
            log(f"[select] {cfg.label} ({n + 1}/{len(cands)}), fold {k + 1}/{folds}: stream {streams[k].size} images, "
                f"held out {parts[k].size}")
            spec.adapt(calib.x[torch.from_numpy(streams[k])], progress=progress, prefetch=prefetch)
            held_after.append(record_exit_trace(net, calib.subset(parts[k]), costs))
            other_changes.append(100 * (other_acc(record_exit_trace(net, calib.subset(other), costs)) - other_before))
            spec.restore(snap)
        pooled = _pool(held_after)
        after_search = curve(pooled, SEARCH_THRESHOLDS)
        lat_after = hull_latency_to_reach(after_search, target)
        red = None if lat_after is None or lat_before is None else 1 - lat_after / lat_before
        other_change = float(np.mean(other_changes))
        rows.append({"label": cfg.label, "config": cfg.to_dict(), "latency_before_ms": lat_before,
                     "latency_after_ms": lat_after, "latency_reduction": red,
                     "other_accuracy_change_points": other_change,
                     "other_accuracy_change_points_per_fold": [float(v) for v in other_changes],
                     "subset_accuracy_at_highest_after": curve(pooled, (hi,))["accuracy"][0],
                     "eligible": bool(red is not None and other_change >= -max_other_drop)})
        log(f"[select] {cfg.label}: held-out reduction {'n/a' if red is None else f'{red:.3f}'}, other classes "
            f"{other_change:+.2f} points")
    if [params_digest(h) for h in net.heads] != heads0:
        raise AssertionError("heads were not restored after cross-validation")
    ok = [i for i, r in enumerate(rows) if r["eligible"]]
    best = max(ok, key=lambda i: rows[i]["latency_reduction"]) if ok else None
    return {
        "folds": folds, "stream_images_per_fold": [int(s.size) for s in streams],
        "held_out_images": int(held.size), "other_images": int(other.size),
        "pre_adaptation_subset_accuracy": target, "other_accuracy_before": other_before,
        "highest_threshold": hi, "max_other_drop_points": max_other_drop,
        "criterion": "pooled held-out reduction of the hull latency needed to reach the pre-adaptation subset "
                     f"accuracy; eligible when the other classes' accuracy at threshold {hi} drops by at most "
                     f"{max_other_drop} points (mean over folds)",
        "rows": rows, "chosen": rows[best]["label"] if best is not None else None,
        "chosen_config": cands[best].to_dict() if best is not None else None,
    }
