"""The paper's evaluation: Table 1 (fixed exits, thresholds, baseline), Figure 4 (subset vs other classes,
before/after test-time specialisation), exit distributions and per-exit calibration.

Latency conventions (every figure says which it is):

* *batch-1, measured*: the runtime timed on single images (the paper's setting), by default as CPU
  time of the one timing thread (``clock="cpu"``): on a CPU shared with other jobs, wall time mostly
  measures when the scheduler lets the thread run; wall-clock figures are kept beside it.
* *batch-1, exit model*: each sample is charged the measured batch-1 latency of the runtime when it
  leaves at its exit (median of forced-exit runs interleaved with the baseline, so that load spikes
  from other jobs on a shared CPU do not enter; spread from the inter-quartile range); used for
  curves over many thresholds. Checked against the measured figure in Table 1.
* *batched*: the runtime over the test split in serving batches, seconds per image.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch

from ...evaluate.agreement import agreement
from ...io import digest
from ...evaluate.frontier import hull_cost_to_reach
from ...evaluate.simulate import exits_for, stage_scores
from ...evaluate.stats import expected_calibration_error, reliability_bins
from ...models.exits import EarlyExitNetwork
from ...paths import StagedNetwork
from ...runtime.cost import CLOCKS, interleaved_latency, model_device
from ...runtime.sequential import SequentialRuntime, Stage
from ...scores import Score
from ...trace import Trace
from ...train.trainer import predict_logits
from .method import EarlyExit, forced_exit, uniform

TABLE_THRESHOLDS = (0.5, 0.6, 0.7, 0.8, 0.9, 0.95)
CURVE_THRESHOLDS = tuple(float(t) for t in np.round(np.arange(0.50, 0.9501, 0.05), 2))
FINE_THRESHOLDS = tuple(float(t) for t in np.round(np.arange(0.50, 0.9501, 0.01), 2))
# where the latency needed to reach an accuracy is searched: the fine grid, then on towards 1
SEARCH_THRESHOLDS = FINE_THRESHOLDS + tuple(float(t) for t in np.round(np.arange(0.955, 0.9951, 0.005), 3))


def mixture_latency(exits: np.ndarray, exit_ms: Sequence[float], exit_std_ms: Sequence[float]) -> tuple[float, float]:
    """Mean and std (over samples) of per-sample latency when a sample leaving at p takes exit_ms[p] ± exit_std_ms[p]."""
    m = np.asarray(exit_ms)[exits]
    s = np.asarray(exit_std_ms)[exits]
    mean = float(m.mean())
    return mean, float(np.sqrt(np.mean(s ** 2 + (m - mean) ** 2)))


def params_digest(module: torch.nn.Module) -> str:
    """SHA-256 of every parameter and buffer, bitwise (to prove something did not change)."""
    return digest(module.state_dict())


def time_runtime_per_sample(runtime: SequentialRuntime, x: torch.Tensor, *, warmup: int = 5, repeats: int = 1,
                            clock: Callable[[], float] = time.perf_counter) -> np.ndarray:
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


@dataclass
class ExitBench:
    """What the early-exit measurements share.

    Attributes:
        net: the network; paths: its staged path set; method: the fitted :class:`EarlyExit`.
        test: the test trace (measured costs); x_test: the same test images.
        latency_samples: test images timed one by one per setting.
        batch_size: the serving batch of the batched runs.
        clock: batch-1 clock, ``cpu`` or ``wall``.
    """

    net: EarlyExitNetwork
    paths: StagedNetwork
    method: EarlyExit
    test: Trace
    x_test: torch.Tensor
    latency_samples: int = 1000
    batch_size: int = 256
    clock: str = "cpu"

    def runtime(self, thresholds) -> SequentialRuntime:
        """The method's runtime at ``thresholds``."""
        rt = self.method.runtime(self.paths)
        rt.knob = thresholds
        return rt


@torch.inference_mode()
def measure_exit_latencies(b: ExitBench, x1: torch.Tensor, *, rounds: int) -> dict:
    """Batch-1 latency, interleaved: the baseline network (``baseline``) and the same as a one-stage runtime
    (``runtime_baseline``); each fixed exit as a plain module computing every earlier head (``module_exit{p}``,
    the paper's Table 1) and through the runtime with every earlier head deciding (``runtime_exit{p}``, what a
    sample leaving at p costs under a threshold policy); and the runtime forced to the last exit, earlier heads
    not run (``runtime_reference``)."""
    net = b.net
    net.eval()
    P = net.n_exits
    device = model_device(net)
    rts = [b.runtime(forced_exit(p, P)) for p in range(P)]
    ref_rt = b.runtime(b.method.knob_)
    ref_rt.force(P - 1)
    base_rt = SequentialRuntime([Stage(net)], b.method.score_, [], input_shape=net.input_shape, device=device)
    xd = x1.to(device)  # the modules get the image where they run; the runtimes take it from the caller, as deployed

    def synced(fn: Callable[[], torch.Tensor]) -> Callable[[], object]:  # a GPU call is timed to its end
        return (lambda: fn().cpu()) if device.type != "cpu" else fn

    calls: dict[str, Callable[[], object]] = {"baseline": synced(lambda: net(xd)), "runtime_baseline": lambda: base_rt(x1),
                                              "runtime_reference": lambda: ref_rt(x1)}
    for p in range(P):
        calls[f"module_exit{p}"] = synced(lambda p=p: net.forward_to(xd, p, all_heads=True))
        calls[f"runtime_exit{p}"] = (lambda p=p: rts[p](x1))
    return interleaved_latency(calls, rounds=rounds, clock=b.clock)


def table1(b: ExitBench, lat: dict, *, thresholds: Sequence[float] = TABLE_THRESHOLDS,
           progress: Callable[[str], None] = print) -> dict:
    """Rows of the paper's Table 1, measured.

    Args:
        b: the shared measurement context.
        lat: output of :func:`measure_exit_latencies`.
        thresholds: uniform thresholds to tabulate; the method's calibrated point is added as one more row.

    Returns:
        dict with ``rows`` (list of dicts) and ``runtime_matches_trace`` (per threshold: the shared
        :func:`~dyninfer.evaluate.agreement.agreement` check; 0 mismatches expected).
    """
    P, test, net = b.net.n_exits, b.test, b.net
    exit_ms = [lat[f"runtime_exit{p}"]["median_ms"] for p in range(P)]  # robust to other jobs' load spikes
    exit_std = [lat[f"runtime_exit{p}"]["robust_std_ms"] for p in range(P)]
    rows = []
    xs = b.x_test[:b.latency_samples]
    tick = CLOCKS[b.clock]
    for p in range(P):
        rt = b.runtime(forced_exit(p, P))
        res = rt.run(b.x_test, b.batch_size)
        per_image = time_runtime_per_sample(rt, xs, repeats=3, clock=tick) * 1e3
        rows.append({"kind": "fixed exit", "setting": p, "accuracy": test.accuracy(p),
                     "lat1_ms": lat[f"runtime_exit{p}"]["mean_ms"], "lat1_std_ms": lat[f"runtime_exit{p}"]["std_ms"],
                     "lat1_median_ms": exit_ms[p], "lat1_model_ms": exit_ms[p], "lat1_model_std_ms": exit_std[p],
                     "module_ms": lat[f"module_exit{p}"]["mean_ms"], "module_std_ms": lat[f"module_exit{p}"]["std_ms"],
                     "wall_median_ms": lat[f"runtime_exit{p}"]["wall"]["median_ms"],
                     "per_image_ms": float(per_image.mean()), "per_image_std_ms": float(per_image.std()),
                     "batched_ms_per_image": res.seconds / len(res) * 1e3,
                     "mflops": float(np.sum([c.flops for c in test.costs[:p + 1]]) / 1e6),
                     "exit_share": np.bincount(res.path.numpy(), minlength=P).astype(float).tolist()})
    checks = {}
    points = [(f"{t:g}", uniform(t, P)) for t in thresholds] + [("calibrated", tuple(b.method.knob_))]
    for name, th in points:
        sim = b.method.simulate(test, th)
        rt = b.runtime(th)
        res = rt.run(b.x_test, b.batch_size)
        checks[name] = agreement(rt, b.method, test, batch_size=b.batch_size)
        measured = time_runtime_per_sample(rt, xs, repeats=3, clock=tick) * 1e3
        model_mean, model_std = mixture_latency(sim.path, exit_ms, exit_std)
        sub_mean, _ = mixture_latency(sim.path[:len(xs)], exit_ms, exit_std)
        rows.append({"kind": "threshold", "setting": name, "thresholds": list(th), "accuracy": sim.accuracy,
                     "lat1_ms": float(measured.mean()), "lat1_std_ms": float(measured.std()),
                     "lat1_model_ms": model_mean, "lat1_model_std_ms": model_std,
                     "lat1_model_same_images_ms": sub_mean, "timed_images": int(len(xs)),
                     "batched_ms_per_image": res.seconds / len(res) * 1e3, "mflops": sim.mean_flops / 1e6,
                     "exit_share": (np.bincount(sim.path, minlength=P) / len(sim.path)).tolist()})
        progress(f"[table1] threshold {name}: acc {sim.accuracy:.4f}, batch-1 {measured.mean():.3f} ms "
                 f"(exit model {model_mean:.3f} ms), mismatches {checks[name]['pred_mismatch']} predictions, "
                 f"{checks[name]['path_mismatch']} exits")
    base_rt_secs = _batched_baseline(net, b.x_test, b.batch_size)
    rows.append({"kind": "baseline", "setting": "no heads", "accuracy": test.accuracy(P - 1),
                 "lat1_ms": lat["baseline"]["mean_ms"], "lat1_std_ms": lat["baseline"]["std_ms"],
                 "lat1_median_ms": lat["baseline"]["median_ms"], "lat1_model_ms": lat["baseline"]["median_ms"],
                 "lat1_model_std_ms": lat["baseline"]["robust_std_ms"],
                 "wall_median_ms": lat["baseline"]["wall"]["median_ms"],
                 "batched_ms_per_image": base_rt_secs / len(b.x_test) * 1e3,
                 "mflops": None})
    return {"rows": rows, "runtime_matches_trace": checks}


def _batched_baseline(net: EarlyExitNetwork, x: torch.Tensor, batch_size: int) -> float:
    """Seconds for the baseline over ``x`` in batches, inputs moved to the network and logits back (as the runtime)."""
    t0 = time.perf_counter()
    predict_logits(net, x, batch_size=batch_size)
    return time.perf_counter() - t0


def calibration(trace: Trace, score: Score, *, n_bins: int = 15, mask: np.ndarray | None = None) -> list[dict]:
    """Per exit: ECE and reliability-diagram bins of the max-softmax confidence on ``trace``
    (only the samples in ``mask``, when given)."""
    rows = slice(None) if mask is None else np.asarray(mask, bool)
    out = []
    for p, name in enumerate(trace.paths):
        probs = torch.from_numpy(trace.logits[p][rows]).softmax(-1)
        conf = probs.amax(-1).numpy()
        corr = trace.correct[p][rows]
        rb = reliability_bins(conf, corr, n_bins=n_bins)
        out.append({"exit": name, "accuracy": float(corr.mean()), "mean_confidence": float(conf.mean()),
                    "ece": expected_calibration_error(conf, corr, n_bins=n_bins),
                    "bins": {k: np.asarray(v).tolist() for k, v in rb.items()}})
    return out


def subset_curves(trace: Trace, score: Score, mask: np.ndarray, exit_ms: Sequence[float],
                  thresholds: Sequence[float]) -> dict:
    """Accuracy, mean batch-1 latency (exit model) and mean FLOPs for the samples in ``mask`` and the rest.

    Returns:
        {"subset": {...}, "other": {...}} with lists over ``thresholds``; a group with no samples is left out.
    """
    s = stage_scores(trace, score)
    P = len(trace.paths)
    cum = np.cumsum([c.flops for c in trace.costs])
    mask = np.asarray(mask, bool)
    groups = [(g, m) for g, m in (("subset", mask), ("other", ~mask)) if m.any()]
    out: dict[str, dict[str, list]] = {g: {"threshold": list(thresholds), "accuracy": [], "latency_ms": [],
                                           "mflops": [], "exit_share": []} for g, _ in groups}
    preds = trace.preds
    for t in thresholds:
        ex = exits_for(s, np.asarray(uniform(t, P)))
        correct = preds[ex, np.arange(trace.n)] == trace.labels
        for g, m in groups:
            out[g]["accuracy"].append(float(correct[m].mean()))
            out[g]["latency_ms"].append(float(np.asarray(exit_ms)[ex[m]].mean()))
            out[g]["mflops"].append(float(cum[ex[m]].mean() / 1e6))
            out[g]["exit_share"].append((np.bincount(ex[m], minlength=P) / m.sum()).tolist())
    return out


def cheapest_point(curve: dict, target: float) -> tuple[float | None, float | None]:
    """(mean latency, threshold) of the cheapest point of ``curve`` whose accuracy reaches ``target``
    ((None, None) if none does)."""
    ok = [(lat, th) for th, acc, lat in zip(curve["threshold"], curve["accuracy"], curve["latency_ms"])
          if acc >= target - 1e-12]
    return min(ok) if ok else (None, None)


def hull_latency_to_reach(curve: dict, target: float) -> float | None:
    """Mean latency at which the upper hull of ``curve``'s (latency, accuracy) points reaches ``target``.

    Mixing two thresholds at random reaches every point between them, so the hull is attainable; reading
    it instead of the best single grid point keeps the figure from jumping when one image more or less is
    right at one threshold of a flat curve."""
    return hull_cost_to_reach(curve["latency_ms"], curve["accuracy"], target)
