"""The one check that a runtime agrees with its trace: the same predictions, paths and FLOPs."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..trace import Trace


def agreement(runtime, method, trace: Trace, *, knob: Any = None, batch_size: int = 256) -> dict:
    """Run ``runtime`` over the trace's images at ``knob`` (default: its current one) and compare with
    ``method.simulate(trace, knob)``.

    Returns:
        {"samples", "pred_mismatch", "path_mismatch", "flops_mismatch", "batch_size", "knob"}; all three
        mismatch counts are 0 when the runtime makes the trace's decisions.
    """
    old = runtime.knob
    if knob is not None:
        runtime.knob = knob
    try:
        res = runtime.run(trace.inputs(), batch_size)
        sim = method.simulate(trace, runtime.knob)
    finally:
        runtime.knob = old
    return {"samples": trace.n, "batch_size": batch_size, "knob": runtime.check_knob(knob if knob is not None else old),
            "pred_mismatch": int((res.pred.numpy() != sim.pred).sum()),
            "path_mismatch": int((res.path.numpy() != sim.path).sum()),
            "flops_mismatch": int((~np.isclose(res.flops, sim.flops, rtol=1e-9, atol=0.5)).sum())}
