"""The cascade method: fit thresholds on a calibration trace, simulate on any trace, run for real."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np
from torch import nn

from ...errors import ConfigError, TraceError
from ...evaluate.frontier import Curve
from ...evaluate.outcome import Outcome
from ...runtime.executor import SequentialRuntime, model_stage
from ...scores import make_score
from ...trace import Trace
from .simulate import paired_loss_bound, simulate, stage_scores, sweep

DEFAULT_TEMPERATURES = tuple(float(t) for t in np.geomspace(0.1, 10.0, 21))


@dataclass
class Cascade:
    """A P-stage cascade (EBJR): stage p keeps a sample when its score reaches threshold p.

    Settings (stored as given; learning happens in :meth:`fit`):
        stages: path names in order, cheapest first; the last answers whatever is left.
        score: registry name of the score (``energy``, ``max_softmax``, ``margin``, ``entropy``, ``random``).
        score_params: settings of the score (e.g. ``{"temperature": 2.0}``).
        fit_temperature: for ``energy``: choose the temperature on the calibration trace too.
        tolerance: accuracy the cascade may lose against the last stage (0.001 = 0.1 points).
        target_accuracy: fixed accuracy target instead of ``last stage - tolerance``.
        budget_flops: instead of an accuracy target, the most accurate point within this mean FLOPs.
        confidence: the target must hold on the calibration split with this one-sided confidence
            (paired normal bound on the loss against the last stage, or a binomial-normal bound on
            an absolute ``target_accuracy``). 0.5 accepts any point whose calibration accuracy
            meets the target, which overfits the calibration split when many points are compared.
        grid: score quantiles per stage for cascades of three or more stages.

    Fitted attributes: ``score_``, ``thresholds_``, ``target_``, ``calib_point_`` (accuracy, flops).
    """

    stages: Sequence[str]
    score: str = "energy"
    score_params: Mapping = field(default_factory=dict)
    fit_temperature: bool = False
    tolerance: float = 0.001
    target_accuracy: float | None = None
    budget_flops: float | None = None
    confidence: float = 0.95
    grid: int = 40
    temperatures: Sequence[float] = DEFAULT_TEMPERATURES

    def __post_init__(self) -> None:
        if len(self.stages) < 2:
            raise ConfigError(f"a cascade needs at least 2 stages, got {list(self.stages)}")
        if self.fit_temperature and self.score != "energy":
            raise ConfigError("fit_temperature applies to the energy score only")
        make_score(self.score, **dict(self.score_params))  # fail early on bad settings
        if not 0.5 <= self.confidence < 1:
            raise ConfigError(f"confidence must be in [0.5, 1), got {self.confidence}")

    @property
    def label(self) -> str:
        return self.score + ("+T" if self.fit_temperature else "")

    def _check(self, trace: Trace) -> Trace:
        missing = [s for s in self.stages if s not in trace.paths]
        if missing:
            raise TraceError(f"trace has no paths {missing}; it has {trace.paths}")
        return trace.select(list(self.stages))

    def _feasible(self, curve: Curve, n: int) -> np.ndarray:
        """(M,) bool: points that meet the accuracy target with the required confidence."""
        if self.target_accuracy is None:
            return paired_loss_bound(curve, n, self.confidence) <= self.tolerance + 1e-12
        from scipy.stats import norm

        acc = curve.accuracy
        return acc - norm.ppf(self.confidence) * np.sqrt(acc * (1 - acc) / n) >= self.target_accuracy - 1e-12

    def _choose(self, curve: Curve, n: int) -> tuple[int, bool]:
        """Index of the chosen point and whether it meets the requirement."""
        if self.budget_flops is not None:
            ok = np.flatnonzero(curve.cost <= self.budget_flops)
            if ok.size == 0:
                raise ConfigError(f"no operating point within {self.budget_flops:.3g} FLOPs; "
                                  f"the cheapest costs {curve.cost.min():.3g}")
            return int(ok[np.lexsort((curve.cost[ok], -curve.accuracy[ok]))[0]]), True
        ok = np.flatnonzero(self._feasible(curve, n))
        if ok.size == 0:
            return int(np.argmax(curve.accuracy)), False
        return int(ok[np.lexsort((-curve.accuracy[ok], curve.cost[ok]))[0]]), True

    def fit(self, calib: Trace) -> "Cascade":
        """Choose the score settings and thresholds on the calibration trace."""
        tr = self._check(calib)
        self.target_ = (self.target_accuracy if self.target_accuracy is not None
                        else tr.accuracy(len(tr.paths) - 1) - self.tolerance)
        candidates = ([make_score("energy", temperature=t) for t in self.temperatures] if self.fit_temperature
                      else [make_score(self.score, **dict(self.score_params))])
        best = None
        for sc in candidates:
            curve = sweep(tr, sc, grid=self.grid)
            i, ok = self._choose(curve, tr.n)
            key = (-curve.accuracy[i], curve.cost[i]) if self.budget_flops is not None else \
                (not ok, curve.cost[i], -curve.accuracy[i])
            if best is None or key < best[0]:
                best = (key, sc, curve, i)
        _, self.score_, curve, i = best
        self.thresholds_ = tuple(float(v) for v in curve.settings[i])
        self.calib_point_ = {"accuracy": float(curve.accuracy[i]), "flops": float(curve.cost[i]),
                             "reach": curve.extra["reach"][i].tolist(),
                             "meets_target": bool(not best[0][0]) if self.budget_flops is None else True,
                             "loss_bound": float(paired_loss_bound(curve, tr.n, self.confidence)[i])}
        return self

    def _fitted(self) -> None:
        if not hasattr(self, "thresholds_"):
            raise ConfigError("call fit(calibration_trace) first")

    def simulate(self, trace: Trace, thresholds: Sequence[float] | None = None) -> Outcome:
        """The cascade's outcome on ``trace`` (fitted thresholds unless given)."""
        self._fitted()
        return simulate(self._check(trace), self.score_, self.thresholds_ if thresholds is None else thresholds)

    def curve(self, trace: Trace) -> Curve:
        """Every operating point of this cascade's score on ``trace``."""
        sc = self.score_ if hasattr(self, "score_") else make_score(self.score, **dict(self.score_params))
        return sweep(self._check(trace), sc, grid=self.grid, label=self.label)

    def scores_on(self, trace: Trace) -> np.ndarray:
        self._fitted()
        return stage_scores(self._check(trace), self.score_)

    def runtime(self, models: Mapping[str, nn.Module], *, input_shape=None, device="cpu",
                stage_flops: Sequence[float] | None = None) -> SequentialRuntime:
        """A :class:`SequentialRuntime` running ``models`` (by stage name) at the fitted thresholds."""
        self._fitted()
        missing = [s for s in self.stages if s not in models]
        if missing:
            raise ConfigError(f"no model given for stages {missing}")
        return SequentialRuntime([model_stage(models[s].to(device)) for s in self.stages], self.score_,
                                 self.thresholds_, stage_flops=stage_flops, input_shape=input_shape, device=device)
