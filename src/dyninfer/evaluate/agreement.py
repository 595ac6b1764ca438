"""The one check that a runtime agrees with its trace: the same predictions, paths and FLOPs.

It serves every runtime that answers in the shared result vocabulary: the torch runtimes, and the
exported onnxruntime runtime, whose float arithmetic differs from torch's by about 1e-6. For the latter,
``near=True`` also finds the samples whose decision lies within float tolerance of the knob (their path
changes when the knob moves by a relative 1e-4 either way) and counts the mismatches outside them.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import ConfigError
from ..trace import Trace


def agreement(runtime, method, trace: Trace, *, knob: Any = None, batch_size: int = 256, near: bool = False,
              rel: float = 1e-4) -> dict:
    """Run ``runtime`` over the trace's images at ``knob`` (default: its current one) and compare with
    ``method.simulate(trace, knob)`` — or, for a runtime forced to one path, with ``method.simulate_forced``.

    Returns:
        {"samples", "pred_mismatch", "path_mismatch", "flops_mismatch", "batch_size", "knob"}; all three
        mismatch counts are 0 when the runtime makes the trace's decisions. With ``near``, also
        "near_threshold" (samples within ``rel`` of the knob, see :func:`near_knob`), "agreement" (share
        of samples with the same path and prediction) and "mismatch_outside_near".
    """
    if runtime.forced is not None:
        if knob is not None:
            raise ConfigError("a knob does not apply to a runtime forced to one path; call runtime.force(None) first")
        res = runtime.run(trace.inputs(), batch_size)
        sim = method.simulate_forced(trace, runtime.paths[runtime.forced])
        out = _compare(res, sim, trace, batch_size, f"forced to {runtime.paths[runtime.forced]}")
        return _near(out, res, sim, np.zeros(trace.n, bool)) if near else out  # no decision, nothing near
    old = runtime.knob
    if knob is not None:
        runtime.knob = knob
    try:
        res = runtime.run(trace.inputs(), batch_size)
        used = runtime.knob
        sim = method.simulate(trace, used)
    finally:
        runtime.knob = old
    out = _compare(res, sim, trace, batch_size, used)
    return _near(out, res, sim, near_knob(method, trace, used, rel=rel)) if near else out


def _near(out: dict, res, sim, close: np.ndarray) -> dict:
    wrong = (np.asarray(res.pred) != sim.pred) | (np.asarray(res.path) != sim.path)
    return {**out, "near_threshold": int(close.sum()), "agreement": float(1 - wrong.mean()),
            "mismatch_outside_near": int((wrong & ~close).sum())}


def near_knob(method, trace: Trace, knob: Any, *, rel: float = 1e-4) -> np.ndarray:
    """(N,) True where a sample's path changes when every knob value moves by ``rel * max(1, |value|)``
    down or up: the decisions within float tolerance of a threshold (or, for a cost bias, of a tie)."""
    values = np.atleast_1d(np.asarray(knob, np.float64))
    step = rel * np.maximum(1.0, np.abs(np.where(np.isfinite(values), values, 0.0)))
    shape = np.shape(knob)

    def at(v: np.ndarray):
        k = float(v[0]) if shape == () else tuple(float(t) for t in v)
        return method.simulate(trace, k).path

    lo, mid, hi = at(values - step), at(values), at(values + step)
    return (lo != mid) | (hi != mid)


def _compare(res, sim, trace: Trace, batch_size: int, knob: Any) -> dict:
    return {"samples": trace.n, "batch_size": batch_size, "knob": knob,
            "pred_mismatch": int((np.asarray(res.pred) != sim.pred).sum()),
            "path_mismatch": int((np.asarray(res.path) != sim.path).sum()),
            "flops_mismatch": int((~np.isclose(res.flops, sim.flops, rtol=1e-9, atol=0.5)).sum())}
