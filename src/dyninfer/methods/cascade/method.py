"""The cascade method (EBJR): a small model answers; a score on its output decides whether the next must look.

``fit`` chooses, on the calibration trace, the chain of paths (every chain ending at the reference
path, or the given one), the score (among the given ones) and the thresholds: the cheapest
configuration whose operating point is certified by the shared guarantee. Every configuration is
tested at delta / K (Bonferroni over the K configurations; fixed-sequence testing within each).
A two-stage chain has one threshold and is tested over every cut of the whole calibration split.
A longer chain has one threshold per stage: the accuracy-cost frontier of its threshold grid is
found on ``order_share`` of the calibration split and tested, most expensive first, on the rest
(the order is learned on samples the tests never see, so the fixed sequence stays valid).
"""

from __future__ import annotations

import dataclasses
import itertools
from typing import Any, Sequence

import numpy as np
import torch

from ...check import number
from ...errors import ConfigError, TraceError
from ...evaluate.frontier import Curve
from ...evaluate.guarantee import check_guarantee_settings
from ...evaluate.outcome import Outcome
from ...evaluate.simulate import oracle, simulate_forced, simulate_sequential, stage_scores, sweep_sequential
from ...paths import ModulePool
from ...runtime.base import as_thresholds
from ...runtime.sequential import SequentialRuntime, Stage
from ...scores import EmittedScore, Score, make_score
from ...trace import Trace
from ..base import Method, _num, register_method

DEFAULT_TEMPERATURES = tuple(float(t) for t in np.geomspace(0.1, 10.0, 21))
ROUTERS = ("energy", "energy+T", "max_softmax", "margin", "entropy", "random")


def chains(names: Sequence[str]) -> list[list[str]]:
    """Every cascade of 2+ stages through ``names`` (cheapest first) that ends at the last (the reference)."""
    *small, last = names
    return [[*combo, last] for k in range(1, len(small) + 1) for combo in itertools.combinations(small, k)]


@register_method("cascade")
class Cascade(Method):
    """A P-stage cascade (EBJR): stage p keeps a sample when its score reaches threshold p.

    Args:
        stages: path names in order, cheapest first, ending at the reference; None: every chain through
            the trace's paths that ends at its last path, the cheapest certified one is chosen.
        scores: routers to choose among: ``energy`` (EBJR's -F), ``energy+T`` (energy with its temperature
            chosen on calibration among ``temperatures``; each temperature counts as a configuration),
            ``max_softmax``, ``margin``, ``entropy``, ``random`` (a baseline).
        temperatures: candidate temperatures of ``energy+T``.
        tolerance: accuracy the cascade may lose against the reference path (0.001 = 0.1 points).
        confidence: probability that the loss stays within ``tolerance`` (the shared guarantee).
        bound: p-values of the guarantee, ``clt`` or ``wsr``.
        grid: score quantiles per stage for cascades of three or more stages.
        order_share: share of the calibration split that orders the thresholds of three or more stages.
        seed: seed of the ``random`` router and of that split.
        student: None (the pool as trained), or ``distilled-soft`` / ``distilled-hard``: the run's pool has its
            cheapest model replaced by the same architecture distilled from the reference model on the training
            images without labels (EBJR's S*, Table 4; :func:`dyninfer.harness.prepare`).

    Fitted attributes: ``stages_``, ``router_``, ``score_``, ``knob_`` (thresholds), ``operating_point_``,
    ``calib_curve_``, ``configurations_`` (every configuration on calibration), ``flops_``.
    """

    path_kind = "pool"
    knob_direction = 1
    routers: tuple[str, ...] = ROUTERS  # the names ``scores`` may hold (a subclass adds its own)

    def __init__(self, *, stages: Sequence[str] | None = None,
                 scores: Sequence[str] = ("energy", "max_softmax", "margin", "entropy"),
                 temperatures: Sequence[float] = DEFAULT_TEMPERATURES, tolerance: float = 0.001,
                 confidence: float = 0.95, bound: str = "clt", grid: int = 40, order_share: float = 0.3,
                 seed: int = 0, student: str | None = None) -> None:
        self.stages = stages
        self.scores = scores
        self.temperatures = temperatures
        self.tolerance = tolerance
        self.confidence = confidence
        self.bound = bound
        self.grid = grid
        self.order_share = order_share
        self.seed = seed
        self.student = student
        if student is not None and student not in ("distilled-soft", "distilled-hard"):
            raise ConfigError(f"student must be None (the pool as trained), 'distilled-soft' or 'distilled-hard', got "
                              f"{student!r}; a specialised student is the cascade-specialised method's")
        if stages is not None and (not isinstance(stages, (list, tuple)) or len(stages) < 2
                                   or len(set(stages)) != len(stages)):
            raise ConfigError(f"stages must be 2 or more distinct path names, got {stages!r}")
        if not isinstance(scores, (list, tuple)) or not scores or any(s not in self.routers for s in scores):
            raise ConfigError(f"scores must be a non-empty list of routers from {list(self.routers)}, got {scores!r}")
        if "energy+T" in scores and (not isinstance(temperatures, (list, tuple)) or not temperatures or any(
                isinstance(t, bool) or not (isinstance(t, (int, float)) and t > 0) for t in temperatures)):
            raise ConfigError(f"temperatures must be a non-empty list of positive numbers, got {temperatures!r}")
        check_guarantee_settings(tolerance, confidence, bound)
        number("grid", grid, lo=2, integer=True, hint=" (score quantiles per stage)")
        number("order_share", order_share, lo=0, hi=1, lo_open=True, hi_open=True)
        number("seed", seed, integer=True)

    def path_options(self) -> dict:
        """The pool's student when one is asked for (see :func:`dyninfer.harness.prepare`)."""
        return {"student": self.student} if self.student is not None else {}

    # ------------------------------------------------------------------ fitting
    def _variants(self, router: str) -> list[Score]:
        if router == "energy+T":
            return [make_score("energy", temperature=float(t)) for t in self.temperatures]
        if router == "random":
            return [make_score("random", seed=self.seed)]
        return [make_score(router)]

    def fit(self, calib: Trace, **kwargs: Any) -> "Cascade":
        """Choose chain, score and thresholds on the calibration trace (see the module doc)."""
        if kwargs:
            raise ConfigError(f"Cascade.fit takes no options, got {sorted(kwargs)}")
        candidates = [list(self.stages)] if self.stages is not None else chains(calib.paths)
        if not candidates:
            raise TraceError(f"a cascade needs at least two paths; the trace has {calib.paths}")
        K = len(candidates) * sum(len(self._variants(r)) for r in self.scores)
        perm = np.random.default_rng(self.seed).permutation(calib.n)
        n_order = int(round(self.order_share * calib.n))
        order_rows, test_rows = np.sort(perm[:n_order]), np.sort(perm[n_order:])
        rows, best = [], None
        for chain in candidates:
            for router in self.scores:
                for score in self._variants(router):
                    tr = self._chain(calib, chain, score)
                    if len(chain) == 2:
                        curve = sweep_sequential(tr, score, grid=self.grid, label=router)
                        op = self._choose(curve, tr.n, reference=chain[-1], configurations=K)
                    else:  # order on one part of the split, test on the other
                        front = sweep_sequential(tr.subset(order_rows), score, grid=self.grid).frontier()
                        held = tr.subset(test_rows)
                        curve = sweep_sequential(held, score, label=router, settings=front.settings[::-1])
                        op = self._choose(curve, held.n, reference=chain[-1], configurations=K,
                                          order=np.arange(len(curve)))
                    rows.append({"chain": chain, "router": router, "score": score.label, "score_name": score.name,
                                 "score_params": dict(score.params), "certified": op.certified,
                                 "calib_accuracy": op.calib_accuracy, "calib_flops": op.calib_flops,
                                 "thresholds": [float(v) for v in curve.settings[op.index]]})
                    key = (not op.certified, op.calib_flops, -op.calib_accuracy)
                    if best is None or key < best[0]:
                        best = (key, chain, router, score, curve, op)
        _, chain, router, score, curve, op = best  # type: ignore[misc]
        ref_flops = float(_select(calib, chain[-1:]).costs[0].flops)
        if op.certified and op.calib_flops >= ref_flops:  # the early stages do not pay for themselves
            op = dataclasses.replace(op, reference_flops=ref_flops, not_cheaper=True)
        self.stages_ = list(chain)
        self.router_ = router
        self.score_ = score
        self.calib_curve_ = curve
        self.operating_point_ = op
        self.configurations_ = rows
        self.flops_ = [float(c.flops) for c in self._chain(calib, chain, score).costs]
        self.knob_ = self.check_knob(curve.settings[op.index])
        return self

    def _chain(self, trace: Trace, chain: Sequence[str] | None = None, score: Score | None = None) -> Trace:
        """The trace over ``chain``'s paths with the costs its stages pay when scored by ``score`` (default: the
        fitted chain and score). A stage pays its path; with a score the path emits itself
        (:class:`~dyninfer.scores.EmittedScore`: a Var Gate, a learned router), every stage but the last also pays
        the emitter's FLOPs."""
        tr = _select(trace, self.stages_ if chain is None else chain)
        score = self.score_ if score is None else score
        if not isinstance(score, EmittedScore) or len(tr.paths) < 2:
            return tr
        extra = score.flops(trace)
        return tr.with_costs([dataclasses.replace(c, flops=int(c.flops + extra)) if p < len(tr.paths) - 1 else c
                              for p, c in enumerate(tr.costs)])

    # ------------------------------------------------------------------ protocol
    def own_trace(self, trace: Trace) -> Trace:
        self.check_fitted()
        return self._chain(trace)

    def check_knob(self, value: Any) -> tuple[float, ...]:
        self._check_stages()
        return as_thresholds(value, len(self.stages_) - 1)

    def _check_stages(self) -> None:
        if not hasattr(self, "stages_"):
            self.check_fitted()

    def simulate_forced(self, trace: Trace, path: str) -> Outcome:
        self.check_fitted()
        return simulate_forced(self._chain(trace), self.stages_.index(path), sequential=True)

    def simulate(self, trace: Trace, knob: Any = None) -> Outcome:
        """The cascade's outcome on ``trace`` at ``knob`` (default: the fitted thresholds)."""
        t = self._knob(knob)
        return self._uncertified(trace, knob) or simulate_sequential(self._chain(trace), self.score_, t)

    def curve(self, trace: Trace) -> Curve:
        """Every operating point of the fitted chain and score on ``trace``."""
        self.check_fitted()
        return sweep_sequential(self._chain(trace), self.score_, grid=self.grid, label=self.router_)

    def scores_on(self, trace: Trace) -> np.ndarray:
        """(P-1, N) the fitted score of every stage but the last on ``trace``."""
        self.check_fitted()
        return stage_scores(self._chain(trace), self.score_)

    def oracle(self, trace: Trace) -> Outcome:
        self.check_fitted()
        return oracle(self._chain(trace))

    def runtime(self, paths: ModulePool, *, device: str | torch.device | None = None) -> SequentialRuntime:
        """A :class:`SequentialRuntime` over the chain's modules at the fitted thresholds (its knob stays settable);
        with an emitted score, every stage but the last emits it beside its logits (``forward_gated``)."""
        self.check_fitted()
        if not isinstance(paths, ModulePool):
            raise ConfigError(f"a cascade runs on a module pool, got {type(paths).__name__}")
        pool = paths.subset(self.stages_)
        if device is not None:
            pool.to(device)
        stages = pool.stages()
        if isinstance(self.score_, EmittedScore):
            stages = [Stage(self.score_.head(pool.models[n].eval())) for n in self.stages_[:-1]] + stages[-1:]
        return self._start(SequentialRuntime(stages, self.score_, self.knob_, paths=self.stages_,
                                             stage_flops=self.flops_, input_shape=paths.input_shape,
                                             device=device or pool.device))

    # ------------------------------------------------------------------ storage
    def _state(self) -> tuple[dict, dict]:
        state, tensors = super()._state()
        state.update({"stages_": self.stages_, "router_": self.router_, "score_": self.score_.name,
                      "score_params_": self.score_.params, "configurations_": self.configurations_,
                      "flops_": self.flops_})
        return state, tensors

    def _set_state(self, state: dict, tensors: dict) -> None:
        self.stages_ = list(state["stages_"])
        self.router_ = state["router_"]
        self.score_ = make_score(state["score_"], **state["score_params_"])
        self.configurations_ = _num(state["configurations_"])
        self.flops_ = [float(v) for v in state["flops_"]]
        super()._set_state(state, tensors)


def _select(trace: Trace, chain: Sequence[str]) -> Trace:
    missing = [s for s in chain if s not in trace.paths]
    if missing:
        raise TraceError(f"trace has no paths {missing}; it has {trace.paths}")
    return trace.select(list(chain))

