"""Threshold exiting on an early-exit network: per-exit costs, traces, simulation and the batched runtime.

The exits of a network are the paths of a :class:`~dyninfer.trace.Trace`, in order. A path's cost
is the **incremental** cost of its exit — segment p plus head p (``PathCost.flops``, ``params`` and
the batch latencies are all incremental) — because the sequential policy of
:mod:`dyninfer.methods.cascade.simulate` charges a sample the cumulative sum of the costs of every
stage it went through. A sample leaving at exit p therefore costs segments 0..p and heads 0..p, as
in the runtime.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

import numpy as np
import torch

from ...data.datasets import Split
from ...errors import ConfigError, TraceError
from ...evaluate.outcome import Outcome
from ...io import versions
from ...runtime.cost import DEFAULT_CPU_WATTS_PER_THREAD, EnergyMeter, LatencyStats, PathCost, count_flops, time_calls
from ...runtime.executor import SequentialRuntime
from ...scores import Score, make_score
from ...trace import Trace
from ...train.trainer import model_device
from ..cascade.simulate import simulate, stage_scores
from .network import EarlyExitNetwork
from .train import exit_logits


def exit_flops(net: EarlyExitNetwork) -> list[int]:
    """Incremental FLOPs per sample of each exit, counted with torch's FlopCounterMode.

    Args:
        net: the network (its ``input_shape`` must be set).

    Returns:
        P integers: FLOPs of segment p plus head p; their cumulative sum up to p is what a sample leaving at
        exit p costs.
    """
    if net.input_shape is None:
        raise ConfigError("the network does not know its input shape; set net.input_shape = (C, H, W)")
    cum = [count_flops(net.exit_module(p, all_heads=True), net.input_shape) for p in range(net.n_exits)]
    return [int(c - (cum[p - 1] if p else 0)) for p, c in enumerate(cum)]


def _params(module: torch.nn.Module) -> tuple[int, int]:
    ps = list(module.parameters())
    return sum(p.numel() for p in ps), sum(p.numel() * p.element_size() for p in ps) + sum(
        b.numel() * b.element_size() for b in module.buffers())


@torch.inference_mode()
def exit_costs(net: EarlyExitNetwork, sample: torch.Tensor, *, batches: Sequence[int] = (1, 64, 256),
               repeats: int = 20, warmup: int = 3, min_time_s: float = 0.2) -> list[PathCost]:
    """Measure each exit's incremental cost: FLOPs, parameters, bytes, and the latency of segment p + head p
    on the carry that segment p-1 hands over, at each batch size.

    Args:
        net: the network (eval mode is set).
        sample: images (N, C, H, W); batches larger than N repeat the images.
        batches: batch sizes to time.

    Returns:
        P :class:`PathCost` (name = exit name), in exit order.
    """
    net.eval()
    flops = exit_flops(net)
    out = []
    device = sample.device
    xs = {b: sample[:b] if sample.shape[0] >= b else sample.repeat((b + sample.shape[0] - 1) // sample.shape[0], 1, 1, 1)[:b]
          for b in batches}
    carries = {b: xs[b] for b in batches}
    for p in range(net.n_exits):
        stage = net.stage(p)
        lat: dict[int, LatencyStats] = {}
        for b in batches:
            c = carries[b]
            lat[int(b)] = time_calls(lambda: stage(c), repeats=repeats, warmup=warmup, batch=int(b), device=device,
                                     min_time_s=min_time_s)
        big = max(batches)
        meter = EnergyMeter(device, DEFAULT_CPU_WATTS_PER_THREAD)
        with meter:
            for _ in range(3):
                stage(carries[big])
        seg_params, seg_bytes = _params(net.segments[p])
        head_params, head_bytes = _params(net.heads[p])
        out.append(PathCost(name=net.exit_names[p], flops=flops[p], params=seg_params + head_params,
                            bytes=seg_bytes + head_bytes, latency=lat, energy_j_per_sample=meter.joules / (3 * big),
                            energy_source=meter.source, device=str(device)))
        carries = {b: net.segments[p](carries[b]) for b in batches}
    return out


def record_exit_trace(net: EarlyExitNetwork, split: Split, costs: Sequence[PathCost], *, meta: dict | None = None,
                      batch_size: int = 512, progress: bool = False) -> Trace:
    """Every exit's logits on ``split`` as a :class:`Trace`.

    Args:
        net: the network.
        split: images and labels.
        costs: P incremental path costs (from :func:`exit_costs`).
        meta: stored with the trace (dataset, split, ...); versions are added.

    Returns:
        a :class:`Trace` whose paths are the exits in order; simulate it with
        :func:`dyninfer.methods.cascade.simulate.simulate` or :meth:`EarlyExit.simulate`.

    Raises:
        TraceError: empty split or a cost list that does not fit the exits.
        InputError: images of the wrong shape.
    """
    if len(split) == 0:
        raise TraceError("cannot record a trace on an empty split")
    if len(costs) != net.n_exits:
        raise TraceError(f"{len(costs)} costs for {net.n_exits} exits")
    net.check_input(split.x[:1], where="record_exit_trace")
    logits = np.stack([lo.numpy() for lo in exit_logits(net, split.x, batch_size=batch_size, progress=progress,
                                                         desc="exit trace")]).astype(np.float32)  # (P, N, K)
    meta = dict(meta or {})
    meta.setdefault("versions", versions())
    meta.setdefault("cost_convention", "incremental: path p costs segment p + head p; a sample pays the cumsum")
    return Trace(list(net.exit_names), logits, split.y.numpy().astype(np.int64), list(costs), meta)


def uniform(threshold: float, n_exits: int) -> tuple[float, ...]:
    """The same threshold at every exit but the last (which always answers)."""
    return tuple([float(threshold)] * (n_exits - 1))


def forced_exit(p: int, n_exits: int) -> tuple[float, ...]:
    """Thresholds that send every sample to exit ``p`` (never leave before, always leave at p)."""
    if not 0 <= p < n_exits:
        raise ConfigError(f"exit {p} does not exist (0..{n_exits - 1})")
    return tuple(float("inf") if q < p else float("-inf") for q in range(n_exits - 1))


@dataclass
class EarlyExit:
    """Threshold exiting (paper section 3.2): leave at the first exit whose score reaches its threshold.

    Settings (stored as given):
        score: registry name of the score (``max_softmax`` as in the paper; ``energy``, ``entropy``, ``margin``).
        score_params: settings of the score (e.g. ``{"temperature": 2.0}``).
        thresholds: P-1 per-exit thresholds, or one number for all exits; None until :meth:`fit`.
        tolerance: for :meth:`fit`: accuracy the policy may lose against the last exit on the calibration trace.
        grid: candidate uniform thresholds for :meth:`fit` (score quantiles).

    Fitted attributes: ``score_``, ``thresholds_``, ``calib_point_``.
    """

    score: str = "max_softmax"
    score_params: Mapping = field(default_factory=dict)
    thresholds: Sequence[float] | float | None = None
    tolerance: float = 0.01
    grid: int = 200

    def __post_init__(self) -> None:
        self.score_: Score = make_score(self.score, **dict(self.score_params))
        if self.thresholds is not None:
            self.thresholds_ = self.thresholds

    def _resolve(self, thresholds, n_exits: int) -> tuple[float, ...]:
        if thresholds is None:
            raise ConfigError("no thresholds: pass thresholds=... or call fit(calibration_trace) first")
        if np.isscalar(thresholds):
            return uniform(float(thresholds), n_exits)  # type: ignore[arg-type]
        t = tuple(float(v) for v in thresholds)  # type: ignore[union-attr]
        if len(t) != n_exits - 1:
            raise ConfigError(f"need {n_exits - 1} thresholds for {n_exits} exits, got {len(t)}")
        return t

    def fit(self, calib: Trace) -> "EarlyExit":
        """Choose the cheapest uniform threshold whose calibration accuracy is within ``tolerance`` of the last exit."""
        s = stage_scores(calib, self.score_)  # (P-1, N)
        P = len(calib.paths)
        cands = np.unique(np.quantile(s, np.linspace(0, 1, self.grid)))
        target = calib.accuracy(P - 1) - self.tolerance
        best = None
        for t in cands:
            o = simulate(calib, self.score_, uniform(float(t), P), scores=s)
            if o.accuracy >= target - 1e-12 and (best is None or o.mean_flops < best[1]):
                best = (float(t), o.mean_flops, o.accuracy)
        if best is None:  # cannot reach the target: always go to the last exit
            best = (float("inf"), float(np.sum([c.flops for c in calib.costs])), calib.accuracy(P - 1))
        self.thresholds_ = uniform(best[0], P)
        self.calib_point_ = {"threshold": best[0], "flops": best[1], "accuracy": best[2], "target": target}
        return self

    def simulate(self, trace: Trace, thresholds=None) -> Outcome:
        """What the policy does on ``trace`` (fitted or given thresholds)."""
        t = self._resolve(thresholds if thresholds is not None else getattr(self, "thresholds_", None), len(trace.paths))
        return simulate(trace, self.score_, t)

    def runtime(self, net: EarlyExitNetwork, thresholds=None, *, stage_flops: Sequence[float] | None = None,
                device: str | torch.device | None = None) -> SequentialRuntime:
        """A batched :class:`SequentialRuntime` over the network's exits; its ``thresholds`` stay changeable.

        ``device``: where the network runs (it is moved there); default: where it already is."""
        t = self._resolve(thresholds if thresholds is not None else getattr(self, "thresholds_", None), net.n_exits)
        device = model_device(net) if device is None else torch.device(device)
        net.to(device).eval()
        return SequentialRuntime(net.stages(), self.score_, t, stage_flops=stage_flops, input_shape=net.input_shape,
                                 device=device)


def time_runtime_per_sample(runtime: SequentialRuntime, x: torch.Tensor, *, warmup: int = 5,
                            repeats: int = 1, clock: Callable[[], float] = time.perf_counter) -> np.ndarray:
    """Time of the runtime on each image of ``x`` alone (batch 1), seconds (N,).

    Args:
        repeats: each image is timed that many times and its median kept (robust to load spikes).
        clock: ``time.perf_counter`` (wall) or ``time.thread_time`` (CPU time of this thread).
    """
    for i in range(min(warmup, x.shape[0])):
        runtime(x[i:i + 1])
    out = np.empty(x.shape[0])
    for i in range(x.shape[0]):
        xi = x[i:i + 1]
        ts = []
        for _ in range(repeats):
            t0 = clock()
            runtime(xi)
            ts.append(clock() - t0)
        out[i] = float(np.median(ts))
    return out


def run_batched(runtime: SequentialRuntime, x: torch.Tensor, batch_size: int) -> tuple[np.ndarray, np.ndarray, float]:
    """Run the runtime over ``x`` (N, C, H, W) in batches of ``batch_size``.

    Returns:
        (pred (N,), exit (N,), wall seconds of the whole run).
    """
    res = runtime.run(x, batch_size=batch_size)
    return res.pred.numpy(), res.exit.numpy(), res.seconds

