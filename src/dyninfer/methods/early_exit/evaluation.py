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

import hashlib
import time
from typing import Callable, Sequence

import numpy as np
import torch

from ...evaluate.frontier import hull_cost_to_reach
from ...evaluate.stats import expected_calibration_error, reliability_bins
from ...scores import Score
from ...runtime.cost import CLOCKS, interleaved_latency
from ...trace import Trace
from ...train.trainer import model_device, predict_logits
from ...runtime.executor import SequentialRuntime
from ..cascade.simulate import exits_for, simulate, stage_scores
from .method import EarlyExit, forced_exit, run_batched, time_runtime_per_sample, uniform
from .network import EarlyExitNetwork

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
    """SHA-1 of every parameter and buffer, bitwise (to prove something did not change)."""
    h = hashlib.sha1()
    for k, v in sorted(module.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


@torch.inference_mode()
def measure_exit_latencies(net: EarlyExitNetwork, policy: EarlyExit, x1: torch.Tensor, *, rounds: int,
                           clock: str = "cpu") -> dict:
    """Batch-1 latency of the baseline, of each fixed exit as a plain module (heads 0..p computed), and of the
    runtime forced to leave at each exit (what a sample leaving there costs in deployment), interleaved.

    ``runtime_baseline`` is the baseline network run through the same runtime as a single stage, so that
    comparing it with ``runtime_exit{P-1}`` isolates what the intermediate heads and exit decisions add."""
    net.eval()
    P = net.n_exits
    device = model_device(net)
    rts = [policy.runtime(net, forced_exit(p, P)) for p in range(P)]
    base_rt = SequentialRuntime([lambda x: (net(x), x)], policy.score_, [], input_shape=net.input_shape, device=device)
    xd = x1.to(device)  # the modules get the image where they run; the runtimes take it from the caller, as deployed

    def synced(fn: Callable[[], torch.Tensor]) -> Callable[[], object]:  # a GPU call is timed to its end
        return (lambda: fn().cpu()) if device.type != "cpu" else fn

    calls: dict[str, Callable[[], object]] = {"baseline": synced(lambda: net(xd)), "runtime_baseline": lambda: base_rt(x1)}
    for p in range(P):
        calls[f"module_exit{p}"] = synced(lambda p=p: net.forward_to(xd, p, all_heads=True))
        calls[f"runtime_exit{p}"] = (lambda p=p: rts[p](x1))
    return interleaved_latency(calls, rounds=rounds, clock=clock)


def table1(net: EarlyExitNetwork, policy: EarlyExit, test: Trace, x_test: torch.Tensor, lat: dict, *,
           thresholds: Sequence[float] = TABLE_THRESHOLDS, latency_samples: int = 1000, batch_size: int = 256,
           fitted: EarlyExit | None = None, clock: str = "cpu", progress: Callable[[str], None] = print) -> dict:
    """Rows of the paper's Table 1, measured.

    Args:
        net: the network; policy: the threshold policy (its score is used).
        test: test trace of the network; x_test: the same test images (for runtime runs).
        lat: output of :func:`measure_exit_latencies`.
        latency_samples: test images timed one by one per threshold.
        fitted: an :class:`EarlyExit` fitted on the calibration trace, added as one more row.

    Returns:
        dict with ``rows`` (list of dicts) and ``runtime_matches_trace`` (per threshold: mismatching predictions
        and exits between the batched runtime and the trace simulation; 0 expected).
    """
    P = net.n_exits
    exit_ms = [lat[f"runtime_exit{p}"]["median_ms"] for p in range(P)]  # robust to other jobs' load spikes
    exit_std = [lat[f"runtime_exit{p}"]["robust_std_ms"] for p in range(P)]
    rows = []
    xs = x_test[:latency_samples]
    for p in range(P):
        rt = policy.runtime(net, forced_exit(p, P))
        pred, ex, secs = run_batched(rt, x_test, batch_size)
        per_image = time_runtime_per_sample(rt, xs, repeats=3, clock=CLOCKS[clock]) * 1e3
        rows.append({"kind": "fixed exit", "setting": p, "accuracy": test.accuracy(p),
                     "lat1_ms": lat[f"runtime_exit{p}"]["mean_ms"], "lat1_std_ms": lat[f"runtime_exit{p}"]["std_ms"],
                     "lat1_median_ms": exit_ms[p], "lat1_model_ms": exit_ms[p], "lat1_model_std_ms": exit_std[p],
                     "module_ms": lat[f"module_exit{p}"]["mean_ms"], "module_std_ms": lat[f"module_exit{p}"]["std_ms"],
                     "wall_median_ms": lat[f"runtime_exit{p}"]["wall"]["median_ms"],
                     "per_image_ms": float(per_image.mean()), "per_image_std_ms": float(per_image.std()),
                     "batched_ms_per_image": secs / len(pred) * 1e3,
                     "mflops": float(np.sum([c.flops for c in test.costs[:p + 1]]) / 1e6),
                     "exit_share": np.bincount(ex, minlength=P).astype(float).tolist()})
    checks = {}
    points = [(f"{t:g}", uniform(t, P)) for t in thresholds]
    if fitted is not None:
        points.append(("calibrated", tuple(fitted.thresholds_)))
    for name, th in points:
        sim = simulate(test, policy.score_ if name != "calibrated" else fitted.score_, th)  # type: ignore[union-attr]
        rt = policy.runtime(net, th) if name != "calibrated" else fitted.runtime(net)  # type: ignore[union-attr]
        pred, ex, secs = run_batched(rt, x_test, batch_size)
        checks[name] = {"pred_mismatch": int((pred != sim.pred).sum()), "exit_mismatch": int((ex != sim.path).sum())}
        measured = time_runtime_per_sample(rt, xs, repeats=3, clock=CLOCKS[clock]) * 1e3
        model_mean, model_std = mixture_latency(sim.path, exit_ms, exit_std)
        sub_mean, _ = mixture_latency(sim.path[:len(xs)], exit_ms, exit_std)
        rows.append({"kind": "threshold", "setting": name, "thresholds": list(th), "accuracy": sim.accuracy,
                     "lat1_ms": float(measured.mean()), "lat1_std_ms": float(measured.std()),
                     "lat1_model_ms": model_mean, "lat1_model_std_ms": model_std,
                     "lat1_model_same_images_ms": sub_mean, "timed_images": int(len(xs)),
                     "batched_ms_per_image": secs / len(pred) * 1e3, "mflops": sim.mean_flops / 1e6,
                     "exit_share": (np.bincount(sim.path, minlength=P) / len(sim.path)).tolist()})
        progress(f"[table1] threshold {name}: acc {sim.accuracy:.4f}, batch-1 {measured.mean():.3f} ms "
                 f"(exit model {model_mean:.3f} ms), mismatches {checks[name]}")
    base_rt_secs = _batched_baseline(net, x_test, batch_size)
    rows.append({"kind": "baseline", "setting": "no heads", "accuracy": test.accuracy(P - 1),
                 "lat1_ms": lat["baseline"]["mean_ms"], "lat1_std_ms": lat["baseline"]["std_ms"],
                 "lat1_median_ms": lat["baseline"]["median_ms"], "lat1_model_ms": lat["baseline"]["median_ms"],
                 "lat1_model_std_ms": lat["baseline"]["robust_std_ms"],
                 "wall_median_ms": lat["baseline"]["wall"]["median_ms"],
                 "batched_ms_per_image": base_rt_secs / len(x_test) * 1e3,
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
