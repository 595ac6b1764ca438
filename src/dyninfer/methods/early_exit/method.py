"""Threshold exiting on an early-exit network (the paper's section 3.2) as a method of the shared protocol.

The exits of one network are the paths of a staged path set (:class:`~dyninfer.paths.StagedNetwork`);
a path's cost is the incremental cost of its exit (segment p plus head p), and a sample leaving at
exit p pays the sum up to p — the shared sequential simulation and runtime. The knob is one
threshold per exit but the last; ``fit`` chooses one uniform threshold with the shared guarantee.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import torch

from ...check import number
from ...errors import ConfigError, TraceError
from ...evaluate.frontier import Curve
from ...evaluate.guarantee import check_guarantee_settings
from ...evaluate.outcome import Outcome
from ...evaluate.simulate import (float32_grid, oracle, simulate_forced, simulate_sequential, stage_scores,
                                  sweep_sequential)
from ...paths import StagedNetwork
from ...runtime.base import as_thresholds
from ...runtime.sequential import SequentialRuntime
from ...scores import make_score
from ...trace import Trace
from ..base import Method, register_method


def uniform(threshold: float, n_exits: int) -> tuple[float, ...]:
    """The same threshold at every exit but the last (which always answers)."""
    return tuple([float(threshold)] * (n_exits - 1))


def forced_exit(p: int, n_exits: int) -> tuple[float, ...]:
    """Thresholds that send every sample to exit ``p``, every earlier head running and deciding (what a sample
    leaving at p costs under a threshold policy; :meth:`Runtime.force` skips those heads instead)."""
    if not 0 <= p < n_exits:
        raise ConfigError(f"exit {p} does not exist (0..{n_exits - 1})")
    return tuple(float("inf") if q < p else float("-inf") for q in range(n_exits - 1))


@register_method("early-exit")
class EarlyExit(Method):
    """Leave at the first exit whose score reaches its threshold.

    Args:
        score: registry name of the exit score (``max_softmax`` as in the paper; ``energy``, ``entropy``, ``margin``).
        score_params: settings of the score (e.g. ``{"temperature": 2.0}`` for energy).
        tolerance: accuracy the policy may lose against the last exit (0.01 = one point).
        confidence: probability that the loss stays within ``tolerance`` (the shared guarantee).
        bound: p-values of the guarantee, ``clt`` or ``wsr``.
        grid: candidate uniform thresholds (quantiles of the exit scores on calibration).

    Fitted attributes: ``score_``, ``knob_`` (P-1 thresholds), ``thresholds_grid_``, ``operating_point_``,
    ``calib_curve_``, ``exits_``, ``flops_``, ``skip_flops_``.
    """

    path_kind = "staged"
    knob_direction = 1

    def __init__(self, *, score: str = "max_softmax", score_params: Mapping[str, Any] | None = None,
                 tolerance: float = 0.01, confidence: float = 0.95, bound: str = "clt", grid: int = 200) -> None:
        self.score = score
        self.score_params = score_params
        self.tolerance = tolerance
        self.confidence = confidence
        self.bound = bound
        self.grid = grid
        make_score(score, **dict(score_params or {}))  # unknown score or bad settings fail here
        if score == "random":
            raise ConfigError("the random score cannot drive exits; use max_softmax, margin, entropy or energy")
        check_guarantee_settings(tolerance, confidence, bound)
        number("grid", grid, lo=2, integer=True, hint=" (candidate thresholds)")

    def fit(self, calib: Trace, **kwargs: Any) -> "EarlyExit":
        """Choose the cheapest uniform threshold certified by the shared guarantee on the calibration trace."""
        if kwargs:
            raise ConfigError(f"EarlyExit.fit takes no options, got {sorted(kwargs)}")
        if len(calib.paths) < 2:
            raise TraceError(f"early exits need at least two exits; the trace has {calib.paths}")
        self.score_ = make_score(self.score, **dict(self.score_params or {}))
        s = stage_scores(calib, self.score_)  # (P-1, N)
        self.thresholds_grid_ = float32_grid(np.concatenate([[-np.inf], np.quantile(s, np.linspace(0, 1, self.grid)),
                                                             [np.inf]]))
        self.exits_ = list(calib.paths)
        self.flops_ = [float(c.flops) for c in calib.costs]
        self.skip_flops_ = [float(c.skip_flops) for c in calib.costs]
        self.calib_curve_ = sweep_sequential(calib, self.score_, uniform=self.thresholds_grid_, label=self.score,
                                             scores=s)
        self.operating_point_ = self._choose(self.calib_curve_, calib.n, reference=calib.paths[-1])
        self.knob_ = self.check_knob(self.calib_curve_.settings[self.operating_point_.index])
        return self

    def check_knob(self, value: Any) -> tuple[float, ...]:
        if not hasattr(self, "exits_"):
            self.check_fitted()
        return as_thresholds(value, len(self.exits_) - 1)

    def simulate_forced(self, trace: Trace, path: str) -> Outcome:
        self.check_fitted()
        return simulate_forced(self._trace(trace), self.exits_.index(path), sequential=True)

    def _trace(self, trace: Trace) -> Trace:
        if list(trace.paths) != self.exits_:
            raise TraceError(f"trace paths {trace.paths} are not this policy's exits {self.exits_}")
        return trace

    def simulate(self, trace: Trace, knob: Any = None) -> Outcome:
        """What the policy does on ``trace`` at ``knob`` (one threshold or P-1; default: the fitted ones)."""
        t = self._knob(knob)
        return self._uncertified(trace, knob) or simulate_sequential(self._trace(trace), self.score_, t)

    def curve(self, trace: Trace) -> Curve:
        """Accuracy and cost of every uniform threshold of the calibrated grid on ``trace``."""
        self.check_fitted()
        return sweep_sequential(self._trace(trace), self.score_, uniform=self.thresholds_grid_, label=self.score)

    def oracle(self, trace: Trace) -> Outcome:
        self.check_fitted()
        return oracle(self._trace(trace))

    def runtime(self, paths: StagedNetwork, *, device: str | torch.device | None = None) -> SequentialRuntime:
        """A batched :class:`SequentialRuntime` over the network's exits; its knob stays settable."""
        self.check_fitted()
        if not isinstance(paths, StagedNetwork):
            raise ConfigError(f"early exits run on a staged network, got {type(paths).__name__}")
        if paths.names != self.exits_:
            raise ConfigError(f"the network's exits {paths.names} are not this policy's {self.exits_}")
        if device is not None:
            paths.to(device)
        return self._start(SequentialRuntime(paths.stages(), self.score_, self.knob_, paths=self.exits_,
                                             stage_flops=self.flops_, skip_flops=self.skip_flops_,
                                             input_shape=paths.input_shape, device=device or paths.device))

    def _state(self) -> tuple[dict, dict]:
        state, tensors = super()._state()
        state.update({"exits_": self.exits_, "flops_": self.flops_, "skip_flops_": self.skip_flops_,
                      "thresholds_grid_": self.thresholds_grid_})
        return state, tensors

    def _set_state(self, state: dict, tensors: dict) -> None:
        self.exits_ = list(state["exits_"])
        self.flops_ = [float(v) for v in state["flops_"]]
        self.skip_flops_ = [float(v) for v in state["skip_flops_"]]
        self.thresholds_grid_ = np.asarray([float(v) for v in state["thresholds_grid_"]])
        self.score_ = make_score(self.score, **dict(self.score_params or {}))
        super()._set_state(state, tensors)
