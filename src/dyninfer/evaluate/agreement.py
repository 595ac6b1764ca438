"""The one check that a runtime agrees with its trace: the same predictions, paths and FLOPs."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import ConfigError
from ..trace import Trace


def agreement(runtime, method, trace: Trace, *, knob: Any = None, batch_size: int = 256) -> dict:
    """Run ``runtime`` over the trace's images at ``knob`` (default: its current one) and compare with
    ``method.simulate(trace, knob)`` — or, for a runtime forced to one path, with ``method.simulate_forced``.

    Returns:
        {"samples", "pred_mismatch", "path_mismatch", "flops_mismatch", "batch_size", "knob"}; all three
        mismatch counts are 0 when the runtime makes the trace's decisions.
    """
    if runtime.forced is not None:
        if knob is not None:
            raise ConfigError("a knob does not apply to a runtime forced to one path; call runtime.force(None) first")
        res = runtime.run(trace.inputs(), batch_size)
        sim = method.simulate_forced(trace, runtime.paths[runtime.forced])
        return _compare(res, sim, trace, batch_size, f"forced to {runtime.paths[runtime.forced]}")
    old = runtime.knob
    if knob is not None:
        runtime.knob = knob
    try:
        res = runtime.run(trace.inputs(), batch_size)
        sim = method.simulate(trace, runtime.knob)
    finally:
        runtime.knob = old
    return _compare(res, sim, trace, batch_size, runtime.check_knob(knob if knob is not None else old))


def _compare(res, sim, trace: Trace, batch_size: int, knob: Any) -> dict:
    return {"samples": trace.n, "batch_size": batch_size, "knob": knob,
            "pred_mismatch": int((res.pred.numpy() != sim.pred).sum()),
            "path_mismatch": int((res.path.numpy() != sim.path).sum()),
            "flops_mismatch": int((~np.isclose(res.flops, sim.flops, rtol=1e-9, atol=0.5)).sum())}
