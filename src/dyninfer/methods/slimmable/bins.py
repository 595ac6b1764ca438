"""AdaptaNet's pull-up and pull-down policies: a Var Gate's confidence, in equal-frequency bins, picks the subnet.

An up-front policy over the subnet configurations of a supernet. Per image, a *probe* runs the stem and
the stages up to Var Gate ``gate``'s anchor at the probe configuration (default: the cheapest candidate)
and that gate's confidence falls in one of ``bins`` equal-frequency bins (edges: quantiles of the probe's
confidence on the calibration split). The bin picks a candidate configuration, which then runs whole:

* ``pull-up`` maps low-confidence bins to the candidates that were most accurate on calibration and
  high-confidence bins to the least accurate;
* ``pull-down`` is the inverse mapping.

The candidates are the configurations of ``scope``: ``rho`` (the uniform widths without δ), ``delta``
(the uniform widths with δ) or ``rho+delta`` (both), ordered by FLOPs. The k-th of B bins goes to the
candidate of accuracy rank floor(k K / B) (pull-up; K - 1 - that for pull-down). Each image pays its
candidate's FLOPs plus the probe's (its prefix and the gate, counted when the trace was recorded).

The knob is a shift s (an integer): every image moves s candidates towards the cheaper end (clipped),
so a larger s never costs more, per image; s = 0 is the paper's heuristic. A budget in mean FLOPs maps
to s through the calibration curve (:meth:`~dyninfer.methods.base.Method.knob_for`).
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import torch

from ...check import choice, number
from ...errors import ConfigError, TraceError
from ...evaluate.frontier import Curve
from ...evaluate.guarantee import check_guarantee_settings
from ...evaluate.outcome import Outcome
from ...evaluate.simulate import disagreements, oracle, simulate_forced, simulate_upfront
from ...paths import SupernetPaths
from ...runtime.upfront import UpfrontRuntime
from ...trace import Trace
from ..base import Method, _num, register_method
from .method import gate_flops

RULES = ("pull-up", "pull-down")
SCOPES = {"rho": re.compile(r"x[0-9.]+"), "delta": re.compile(r"x[0-9.]+-d"), "rho+delta": re.compile(r"x[0-9.]+(-d)?")}


def bin_edges(conf: np.ndarray, bins: int) -> np.ndarray:
    """(bins - 1,) float32 interior edges of ``bins`` equal-frequency bins of ``conf``."""
    return np.quantile(conf.astype(np.float64), np.arange(1, bins) / bins).astype(np.float32)


def bin_of(conf: np.ndarray | torch.Tensor, edges: np.ndarray) -> np.ndarray:
    """(N,) bin index (0: lowest confidence) of every confidence, compared in float32."""
    c = conf.numpy() if isinstance(conf, torch.Tensor) else np.asarray(conf)
    return np.searchsorted(edges, c.astype(np.float32), side="right")


def shifted(base: np.ndarray, shift: float, k: int) -> np.ndarray:
    """(N,) candidate index (cost order) of each image's ``base`` index moved ``shift`` towards the cheapest."""
    if np.isinf(shift):
        return np.full(base.shape, 0 if shift > 0 else k - 1)
    return np.clip(base - int(shift), 0, k - 1)


class _Chooser:
    """The runtime side of a fitted :class:`SlimmableBins`: probe, gate, bin, candidate."""

    def __init__(self, method: "SlimmableBins", probe: torch.nn.Module) -> None:
        self.m, self.probe = method, probe.eval()

    def check_knob(self, value: Any) -> float:
        return self.m.check_knob(value)

    def choose(self, x: torch.Tensor, knob: Any) -> torch.Tensor:
        conf = self.probe.gate_confidence(x, self.m.gate).float().cpu()  # (N,)
        base = self.m.map_[bin_of(conf, self.m.edges_)]
        return torch.from_numpy(shifted(base, knob, len(self.m.candidates_)).astype(np.int64))


@register_method("slimmable-bins")
class SlimmableBins(Method):
    """Pull-up or pull-down over Var Gate confidence bins (see the module doc).

    Args:
        rule: ``pull-up`` or ``pull-down``.
        scope: ``rho``, ``delta`` or ``rho+delta``: which configurations are candidates.
        gate: the Var Gate read (index; -1: the last).
        bins: equal-frequency confidence bins (the paper: 8).
        probe: the configuration whose gate is read (default: the cheapest candidate).
        tolerance, confidence, bound: the shared guarantee against the most expensive candidate.

    Fitted attributes: ``candidates_`` (cost order), ``probe_``, ``edges_`` (bins - 1), ``map_`` (bin -> base
    candidate), ``accuracy_`` (calibration accuracy per candidate), ``flops_`` (per candidate), ``decide_flops_``
    (the probe's prefix and gate), ``knob_`` (the shift), ``operating_point_``, ``calib_curve_``.
    """

    path_kind = "supernet"
    knob_direction = -1
    experimental = True  # compared inside the slimmable report (Table III); `dyninfer compare` runs it when named

    def __init__(self, *, rule: str = "pull-up", scope: str = "rho", gate: int = 0, bins: int = 8,
                 probe: str | None = None, tolerance: float = 0.01, confidence: float = 0.95,
                 bound: str = "clt") -> None:
        self.rule = rule
        self.scope = scope
        self.gate = gate
        self.bins = bins
        self.probe = probe
        self.tolerance = tolerance
        self.confidence = confidence
        self.bound = bound
        choice("rule", rule, RULES)
        choice("scope", scope, tuple(SCOPES))
        number("gate", gate, integer=True, hint=" (the index of a Var Gate)")
        number("bins", bins, lo=2, integer=True)
        if probe is not None and not isinstance(probe, str):
            raise ConfigError(f"probe must be a path name or None, got {probe!r}")
        check_guarantee_settings(tolerance, confidence, bound)

    # ------------------------------------------------------------------ fitting
    def fit(self, calib: Trace, **kwargs: Any) -> "SlimmableBins":
        """Bin the probe's gate confidence on calibration and map bins to candidates (see the module doc)."""
        if kwargs:
            raise ConfigError(f"SlimmableBins.fit takes no options, got {sorted(kwargs)}")
        if "gate" not in calib.aux:
            raise TraceError("pull-up/pull-down read Var Gate confidences; record the trace from a supernet's paths")
        n_gates = calib.aux["gate"].shape[2]
        if not -n_gates <= self.gate < n_gates:
            raise ConfigError(f"the supernet has {n_gates} Var Gates; gate {self.gate} does not exist")
        cands = [p for p in calib.paths if SCOPES[self.scope].fullmatch(p)]
        if len(cands) < 2:
            raise TraceError(f"scope {self.scope!r} needs two or more of the trace's paths; it has {calib.paths}")
        flops = np.array([calib.cost(p).flops for p in cands], float)
        order = np.argsort(flops, kind="stable")
        self.candidates_ = [cands[i] for i in order]
        probe = self.probe or self.candidates_[0]
        if probe not in calib.paths:
            raise ConfigError(f"probe {probe!r} is not a path of the trace; it has {calib.paths}")
        self.probe_ = probe
        g = range(n_gates)[self.gate]
        self.flops_ = [float(calib.cost(p).flops) for p in self.candidates_]
        costs = calib.meta.get("gate_flops", {})
        if probe not in costs.get("prefix", {}):
            raise TraceError("this trace does not carry the probe's prefix FLOPs (meta 'gate_flops'); record it again")
        self.decide_flops_ = float(costs["prefix"][probe][g] + gate_flops(calib)[g])
        conf = calib.aux["gate"][calib.index(probe), :, g]
        self.edges_ = bin_edges(conf, self.bins)
        sel = calib.select(self.candidates_)
        self.accuracy_ = [float(a) for a in sel.correct.mean(1)]
        K = len(self.candidates_)
        by_acc = sorted(range(K), key=lambda k: (-self.accuracy_[k], -self.flops_[k]))  # most accurate first
        rank = np.arange(self.bins) * K // self.bins
        if self.rule == "pull-down":
            rank = K - 1 - rank
        self.map_ = np.array([by_acc[r] for r in rank], np.int64)
        curve = self._sweep(calib)
        self.calib_curve_ = curve
        self.operating_point_ = self._choose(curve, calib.n, reference=self.candidates_[-1])
        self.knob_ = self.check_knob(float(curve.settings[self.operating_point_.index, 0]))
        return self

    def _choices(self, trace: Trace, knob: float) -> np.ndarray:
        if "gate" not in trace.aux:
            raise TraceError("this trace carries no Var Gate confidences (aux 'gate')")
        g = range(trace.aux["gate"].shape[2])[self.gate]
        base = self.map_[bin_of(trace.aux["gate"][trace.index(self.probe_), :, g], self.edges_)]
        return shifted(base, knob, len(self.candidates_))

    def _sweep(self, trace: Trace) -> Curve:
        K = len(self.candidates_)
        shifts = np.arange(K - 1, -K, -1, dtype=float)  # cheapest first
        sel = trace.select(self.candidates_)
        outs = [self._simulate(trace, s) for s in shifts]
        correct = np.stack([o.correct for o in outs])
        ref_only, method_only = disagreements(sel, correct)
        reach = np.stack([o.path_share(K) for o in outs])
        return Curve(f"{self.rule} {self.scope}", shifts[:, None], correct.mean(1),
                     np.array([o.mean_flops for o in outs]),
                     {"reach": reach, "ref_only": ref_only, "method_only": method_only})

    def _simulate(self, trace: Trace, knob: float) -> Outcome:
        return simulate_upfront(trace.select(self.candidates_), self._choices(trace, knob), self.decide_flops_)

    # ------------------------------------------------------------------ protocol
    def check_knob(self, value: Any) -> float:
        """The shift: an integer (or +-inf), or ConfigError."""
        if isinstance(value, (list, tuple, np.ndarray)) and np.size(value) == 1:
            value = np.ravel(value)[0]
        if isinstance(value, (bool, str, bytes)) or not isinstance(value, (int, float, np.integer, np.floating)) \
                or np.isnan(value) or (np.isfinite(value) and float(value) != int(value)):
            raise ConfigError(f"the pull-up/pull-down knob is an integer shift towards cheaper subnets, got {value!r}")
        return float(value)

    def simulate(self, trace: Trace, knob: Any = None) -> Outcome:
        """The policy on ``trace`` at shift ``knob`` (default: the fitted one)."""
        s = self._knob(knob)
        return self._uncertified(trace, knob) or self._simulate(trace, s)

    def curve(self, trace: Trace) -> Curve:
        """Every shift on ``trace``, cheapest first."""
        self.check_fitted()
        return self._sweep(trace)

    def simulate_forced(self, trace: Trace, path: str) -> Outcome:
        self.check_fitted()
        return simulate_forced(trace.select(self.candidates_), self.candidates_.index(path), sequential=False)

    def oracle(self, trace: Trace) -> Outcome:
        self.check_fitted()
        return oracle(trace.select(self.candidates_), sequential=False)

    def _setting(self, curve: Curve, j: int) -> float:
        return float(curve.settings[j, 0])

    def runtime(self, paths: SupernetPaths, *, device: str | torch.device | None = None) -> UpfrontRuntime:
        """An :class:`UpfrontRuntime` over the candidates' static subnets; the chooser runs the probe's prefix
        and gate (the knob, the shift, stays settable)."""
        self.check_fitted()
        if not isinstance(paths, SupernetPaths):
            raise ConfigError(f"pull-up/pull-down run on a supernet's paths (SupernetPaths), got {type(paths).__name__}")
        pool = paths.subset(list(dict.fromkeys([*self.candidates_, self.probe_])))
        if device is not None:
            pool.to(device)
        chooser = _Chooser(self, pool.models[self.probe_])
        return self._start(UpfrontRuntime(self.candidates_, chooser, {n: pool.models[n] for n in self.candidates_},
                                          self.knob_, path_flops=self.flops_, decide_flops=self.decide_flops_,
                                          input_shape=paths.input_shape, device=device or pool.device))

    # ------------------------------------------------------------------ storage
    def _state(self) -> tuple[dict, dict]:
        state, tensors = super()._state()
        state.update({"candidates_": self.candidates_, "probe_": self.probe_, "edges_": self.edges_.tolist(),
                      "map_": self.map_.tolist(), "accuracy_": self.accuracy_, "flops_": self.flops_,
                      "decide_flops_": self.decide_flops_})
        return state, tensors

    def _set_state(self, state: dict, tensors: dict) -> None:
        self.candidates_ = list(state["candidates_"])
        self.probe_ = state["probe_"]
        self.edges_ = np.asarray(_num(state["edges_"]), np.float32)
        self.map_ = np.asarray(state["map_"], np.int64)
        self.accuracy_ = [float(v) for v in state["accuracy_"]]
        self.flops_ = [float(v) for v in state["flops_"]]
        self.decide_flops_ = float(state["decide_flops_"])
        super()._set_state(state, tensors)
