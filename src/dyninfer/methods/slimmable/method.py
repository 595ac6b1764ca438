"""The slimmable method: a confidence cascade over the subnetworks of one supernet, driven by its Var Gates.

The paths are subnet configurations of a supernet (:class:`~dyninfer.paths.SupernetPaths`), cheapest
first. The slimmest configuration runs first; its Var Gate (the gate after anchor ``gate``, read from
the anchors of that configuration) says whether it keeps the answer; otherwise the next wider
configuration runs, and so on up to the reference. Fitting is the cascade's (chain, score and
thresholds chosen on the calibration trace through the shared guarantee, :meth:`Method._choose`); only
the score differs: the gate's confidence is recorded in the trace (its ``gate`` aux array, written by
the supernet's static subnets) and emitted by each stage at run time.

The load-aware knob is the shared :meth:`~dyninfer.methods.base.Method.knob_for`: a budget in mean
FLOPs per image maps through the calibration curve to thresholds that meet it on average; the
runtime's knob can be changed between batches.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

from ...check import number
from ...errors import ConfigError, TraceError
from ...paths import SupernetPaths
from ...runtime.sequential import SequentialRuntime, Stage, model_stage
from ...scores import SCORES, Score
from ...trace import Trace
from ..base import register_method
from ..cascade.method import Cascade

ROUTERS = ("gate", "max_softmax", "margin", "entropy", "energy", "random")


@SCORES.register("var_gate")
class GateScore(Score):
    """The confidence of Var Gate ``gate`` (index into the supernet's gates; -1: the last), emitted by the path.

    It reads no logits: in a trace it is the ``gate`` aux array, at run time the path's ``forward_scored``."""

    name = "var_gate"

    def __init__(self, gate: int = -1) -> None:
        number("gate", gate, integer=True)
        super().__init__()
        self.params = {"gate": int(gate)}

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        raise ConfigError("the Var Gate score is emitted by a slimmable subnet (forward_scored), not computed from "
                          "logits; run it through the slimmable method's runtime")

    def from_trace(self, trace: Trace, p: int) -> np.ndarray:
        """(N,) the gate's confidence for path ``p`` of ``trace``."""
        if "gate" not in trace.aux:
            raise TraceError("this trace carries no Var Gate confidences (aux 'gate'); record it from the supernet's "
                             "paths (SupernetPaths.record)")
        g = trace.aux["gate"]  # (P, N, G)
        if not -g.shape[2] <= self.params["gate"] < g.shape[2]:
            raise TraceError(f"the trace has {g.shape[2]} gates; gate {self.params['gate']} does not exist")
        return g[p, :, self.params["gate"]].astype(np.float32)

    def head(self, model: torch.nn.Module):
        """A runtime stage head: ``x -> (logits, this gate's confidence)``."""
        gate = self.params["gate"]

        def run(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            logits, conf = model.forward_scored(x)  # (n, K), (n, G)
            return logits, conf[:, gate]
        return run


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
    experimental = True  # no quick/full training settings or report yet
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
        """Choose chain, score and thresholds on the calibration trace of the supernet's paths."""
        return super().fit(calib, **kwargs)  # type: ignore[return-value]

    def runtime(self, paths: SupernetPaths, *, device: str | torch.device | None = None) -> SequentialRuntime:
        """A :class:`SequentialRuntime` over the chain's static subnets; gate-scored stages emit their gate's
        confidence with their logits (the knob, thresholds, stays settable)."""
        self.check_fitted()
        if not isinstance(paths, SupernetPaths):
            raise ConfigError(f"the slimmable method runs on a supernet's paths (SupernetPaths), got {type(paths).__name__}")
        pool = paths.subset(self.stages_)
        if device is not None:
            pool.to(device)
        models = [pool.models[n] for n in self.stages_]
        if isinstance(self.score_, GateScore):
            stages = [Stage(self.score_.head(m.eval())) for m in models[:-1]] + [model_stage(models[-1])]
        else:
            stages = pool.stages()
        return self._start(SequentialRuntime(stages, self.score_, self.knob_, paths=self.stages_,
                                             stage_flops=self.flops_, input_shape=paths.input_shape,
                                             device=device or pool.device))
