"""Threshold exiting on an early-exit network (the paper's section 3.2) as a method of the shared protocol.

The exits of one network are the paths of a staged path set (:class:`~dyninfer.paths.StagedNetwork`);
a path's cost is the incremental cost of its exit (segment p plus head p), and a sample leaving at
exit p pays the sum up to p — the shared sequential simulation and runtime. The knob is one
threshold per exit but the last; ``fit`` chooses one uniform threshold with the shared guarantee.

``exits`` lets only some exits answer: the others' heads do not run, their segments do (an answering exit's
stage is then the segments since the previous answering exit plus its head). ``exits=[first, last]`` with the
``energy`` score is EBJR's cascade inside one network (supplementary 5.3): the first exit is the student, the
last the teacher, routed by the free energy.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence

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
from ...runtime.cost import LatencyStats, PathCost
from ...runtime.sequential import SequentialRuntime, Stage
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
        exits: the exits that may answer, in network order, ending at the last (None: every exit); the heads of
            the others do not run. ``[first, last]`` with ``score="energy"``: a cascade inside one network.

    Fitted attributes: ``score_``, ``knob_`` (one threshold per answering exit but the last), ``thresholds_grid_``,
    ``operating_point_``, ``calib_curve_``, ``exits_`` (the answering exits), ``network_exits_`` (every exit of
    the network), ``flops_``, ``skip_flops_`` (per answering exit, skipped exits' segments included).
    """

    path_kind = "staged"
    knob_direction = 1

    def __init__(self, *, score: str = "max_softmax", score_params: Mapping[str, Any] | None = None,
                 tolerance: float = 0.01, confidence: float = 0.95, bound: str = "clt", grid: int = 200,
                 exits: Sequence[str] | None = None) -> None:
        self.score = score
        self.score_params = score_params
        self.tolerance = tolerance
        self.confidence = confidence
        self.bound = bound
        self.grid = grid
        self.exits = exits
        if exits is not None and (not isinstance(exits, (list, tuple)) or len(exits) < 2
                                  or not all(isinstance(e, str) for e in exits) or len(set(exits)) != len(exits)):
            raise ConfigError(f"exits must be 2 or more distinct exit names in network order, got {exits!r}")
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
        self.network_exits_ = list(calib.paths)
        self.exits_ = list(self.exits) if self.exits is not None else list(calib.paths)
        calib = self._trace(calib)
        s = stage_scores(calib, self.score_)  # (P-1, N)
        self.thresholds_grid_ = float32_grid(np.concatenate([[-np.inf], np.quantile(s, np.linspace(0, 1, self.grid)),
                                                             [np.inf]]))
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
        """The trace over the answering exits, each costing what its stage runs (see the module doc)."""
        if list(trace.paths) == self.exits_:
            return trace
        if list(trace.paths) != self.network_exits_:
            raise TraceError(f"trace paths {trace.paths} are not this policy's network's exits {self.network_exits_}")
        idx = _answering(self.network_exits_, self.exits_)
        return trace.select(self.exits_).with_costs(_merged_costs(trace.costs, idx))

    def own_trace(self, trace: Trace) -> Trace:
        self.check_fitted()
        return self._trace(trace)

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
        if paths.names != self.network_exits_:
            raise ConfigError(f"the network's exits {paths.names} are not this policy's {self.network_exits_}")
        if device is not None:
            paths.to(device)
        stages, idx, prev = paths.stages(), _answering(self.network_exits_, self.exits_), -1
        merged = []
        for q in idx:  # an answering exit's stage: the segments since the previous answering exit, then its head
            adv = [stages[j].advance for j in range(prev + 1, q + 1)]
            merged.append(Stage(head=stages[q].head, advance=adv[0] if len(adv) == 1 else torch.nn.Sequential(*adv)))
            prev = q
        return self._start(SequentialRuntime(merged, self.score_, self.knob_, paths=self.exits_,
                                             stage_flops=self.flops_, skip_flops=self.skip_flops_,
                                             input_shape=paths.input_shape, device=device or paths.device))

    def _state(self) -> tuple[dict, dict]:
        state, tensors = super()._state()
        state.update({"exits_": self.exits_, "network_exits_": self.network_exits_, "flops_": self.flops_, "skip_flops_": self.skip_flops_,
                      "thresholds_grid_": self.thresholds_grid_})
        return state, tensors

    def _set_state(self, state: dict, tensors: dict) -> None:
        self.exits_ = list(state["exits_"])
        self.network_exits_ = list(state.get("network_exits_", state["exits_"]))
        self.flops_ = [float(v) for v in state["flops_"]]
        self.skip_flops_ = [float(v) for v in state["skip_flops_"]]
        self.thresholds_grid_ = np.asarray([float(v) for v in state["thresholds_grid_"]])
        self.score_ = make_score(self.score, **dict(self.score_params or {}))
        super()._set_state(state, tensors)


def _answering(names: Sequence[str], exits: Sequence[str]) -> list[int]:
    """Indices of ``exits`` among the network's exit ``names``; they must be in order and end at the last."""
    unknown = [e for e in exits if e not in names]
    if unknown:
        raise ConfigError(f"unknown exits {unknown}; the network's exits are {list(names)}")
    idx = [list(names).index(e) for e in exits]
    if idx != sorted(idx) or idx[-1] != len(names) - 1:
        raise ConfigError(f"exits {list(exits)} must follow the network's order {list(names)} and end at its last "
                          f"exit {names[-1]!r} (the reference)")
    return idx


def _merged_costs(costs: Sequence[PathCost], idx: Sequence[int]) -> list[PathCost]:
    """Per answering exit: FLOPs of the skipped exits' segments plus its own stage; latency the sum of the exits'
    measured stage times (their heads included: an upper bound, used only by predicted times)."""
    out, prev = [], -1
    for q in idx:
        skipped = costs[prev + 1:q]
        seg = sum(c.skip_flops for c in skipped)
        lat = {}
        if all(c.latency for c in costs[prev + 1:q + 1]):
            for b in costs[q].latency:
                parts = [c.latency[b] for c in costs[prev + 1:q + 1] if b in c.latency]
                if len(parts) == q - prev:
                    lat[b] = LatencyStats(b, *(sum(getattr(p, f) for p in parts) for f in
                                               ("median_s", "p25_s", "p75_s", "mean_s")),
                                          float(np.sqrt(sum(p.std_s ** 2 for p in parts))), min(p.repeats for p in parts))
        out.append(dataclasses.replace(costs[q], flops=int(seg + costs[q].flops), skip_flops=int(seg + costs[q].skip_flops),
                                       params=sum(c.params for c in costs[prev + 1:q + 1]),
                                       bytes=sum(c.bytes for c in costs[prev + 1:q + 1]), latency=lat,
                                       energy_j_per_sample=sum(c.energy_j_per_sample for c in costs[prev + 1:q + 1])))
        prev = q
    return out
