"""The slimmable method: a confidence cascade over the subnetworks of one supernet, driven by its Var Gates.

The paths are subnet configurations of a supernet (:class:`~dyninfer.paths.SupernetPaths`), cheapest
first. The slimmest configuration runs first; its Var Gate (the gate after anchor ``gate``, read from
the anchors of that configuration) says whether it keeps the answer; otherwise the next wider
configuration runs, and so on up to the reference. Fitting is the cascade's (chain, score and
thresholds chosen on the calibration trace through the shared guarantee, :meth:`Method._choose`); only
the score differs: the gate's confidence is recorded in the trace (its ``gate`` aux array, written by
the supernet's static subnets) and emitted by each stage at run time. A gate-scored stage runs its Var
Gate besides its subnet, so its cost is the subnet's FLOPs plus the gate's (counted when the trace was
recorded, its meta ``gate_flops``); the last stage runs no gate. Without ``stages``, the chains are
those through the uniform widths without δ (``x0.25`` ... ``x1``); ``stages`` may name any traced
configuration (δ, mixed).

The load-aware knob is the shared :meth:`~dyninfer.methods.base.Method.knob_for`: a budget in mean
FLOPs per image maps through the calibration curve to thresholds that meet it on average; the
runtime's knob can be changed between batches.
"""

from __future__ import annotations

import re
from typing import Any, Sequence

import torch

from ...check import number
from ...errors import ConfigError, TraceError
from ...paths import SupernetPaths
from ...runtime.sequential import SequentialRuntime
from ...scores import SCORES, EmittedScore, Score
from ...trace import Trace
from ..base import register_method
from ..cascade.method import Cascade

UNIFORM = re.compile(r"x[0-9.]+")  # config_name of a uniform width without δ
ROUTERS = ("gate", "max_softmax", "margin", "entropy", "energy", "random")


@SCORES.register("var_gate")
class GateScore(EmittedScore):
    """The confidence of Var Gate ``gate`` (index into the supernet's gates; -1: the last), emitted by the path.

    It reads no logits: in a trace it is the ``gate`` aux array, at run time the path's ``forward_scored``."""

    name = "var_gate"
    emitter = "the Var Gate score"


def gate_flops(trace: Trace) -> list[float]:
    """Counted FLOPs per sample of each Var Gate of the supernet ``trace`` was recorded from."""
    info = trace.meta.get("gate_flops")
    if not isinstance(info, dict) or "gate" not in info:
        raise TraceError("this trace does not carry its Var Gates' FLOPs (meta 'gate_flops'); record it again from "
                         "the supernet's paths (SupernetPaths.record)")
    return [float(v) for v in info["gate"]]


@register_method("slimmable")
class Slimmable(Cascade):
    """A cascade over the subnet configurations of a supernet, scored by a Var Gate (see the module doc).

    Args:
        stages: configuration path names in order, cheapest first, ending at the reference; None: every chain
            through the trace's paths ending at its last, the cheapest certified one is chosen.
        scores: routers to choose among: ``gate`` (the Var Gate's confidence), or a score on the subnet's
            logits (``max_softmax``, ``margin``, ``entropy``, ``energy``, ``random``) as baselines.
        gate: which Var Gate scores a configuration (index, -1: the one after the last gated anchor).
        tolerance, confidence, bound: the shared guarantee (accuracy lost against the reference path).
        grid: score quantiles per stage for chains of three or more configurations.
        order_share: share of the calibration split that orders the thresholds of three or more stages.
        seed: seed of the ``random`` router and of that split.

    Fitted attributes: as :class:`~dyninfer.methods.cascade.Cascade`.
    """

    path_kind = "supernet"
    experimental = True  # its supernet trains for minutes beyond the pool (quick: about 4); `dyninfer compare` runs it when named
    routers = ROUTERS

    def __init__(self, *, stages: Sequence[str] | None = None, scores: Sequence[str] = ("gate",), gate: int = -1,
                 tolerance: float = 0.001, confidence: float = 0.95, bound: str = "clt", grid: int = 40,
                 order_share: float = 0.3, seed: int = 0) -> None:
        number("gate", gate, integer=True, hint=" (the index of a Var Gate)")
        self.gate = gate
        super().__init__(stages=stages, scores=scores, tolerance=tolerance, confidence=confidence, bound=bound,
                         grid=grid, order_share=order_share, seed=seed)

    def _variants(self, router: str) -> list[Score]:
        if router == "gate":
            return [GateScore(self.gate)]
        return super()._variants(router)

    def fit(self, calib: Trace, **kwargs: Any) -> "Slimmable":
        """Choose chain, score and thresholds on the calibration trace of the supernet's paths (without
        ``stages``: chains through its uniform widths without δ)."""
        if self.stages is None:
            widths = [p for p in calib.paths if UNIFORM.fullmatch(p)]
            calib = calib.select(widths) if len(widths) >= 2 and widths[-1] == calib.paths[-1] else calib
        return super().fit(calib, **kwargs)  # type: ignore[return-value]

    def runtime(self, paths: SupernetPaths, *, device: str | torch.device | None = None) -> SequentialRuntime:
        """A :class:`SequentialRuntime` over the chain's static subnets; gate-scored stages emit their gate's
        confidence with their logits (the knob, thresholds, stays settable)."""
        if not isinstance(paths, SupernetPaths):
            raise ConfigError(f"the slimmable method runs on a supernet's paths (SupernetPaths), got {type(paths).__name__}")
        return super().runtime(paths, device=device)
