"""Policies simulated on a trace, for every family: sequential (run, score, stop or go on) and up-front
(choose one path before running any), sweeps of their knobs, the oracle bounds, and predicted time.

Sequential (EBJR eqs. 6-7, generalised to P stages): stage p keeps a sample when ``score_p >= t_p``;
the last stage answers the rest. A sample pays every stage it went through. Up-front: a sample pays
the path it was sent to plus the chooser's overhead. Forced (:func:`simulate_forced`): every sample
goes to one path with no decision; before it, a sequential runtime runs only each stage's advance
(its ``skip_flops``: 0 for a cascade stage, the backbone segment for an exit).

Every curve carries, per point, the paired disagreements with the reference path (the last one):
``ref_only`` (share the reference gets right and the policy wrong) and ``method_only`` (the reverse);
:mod:`dyninfer.evaluate.guarantee` turns them into a confidence bound on the accuracy lost.
"""

from __future__ import annotations

import itertools
from typing import Callable, Sequence

import numpy as np

from ..errors import ConfigError
from ..runtime.sequential import forced_flops
from ..scores import Score
from ..trace import Trace
from .frontier import Curve
from .outcome import Outcome


def stage_scores(trace: Trace, score: Score | Sequence[Score]) -> np.ndarray:
    """(P-1, N) score of every stage but the last, computed with the runtime's own function (a score that a
    path emits itself, such as a Var Gate's, has ``from_trace(trace, p)`` and is read from the trace's aux)."""
    P = len(trace.paths)
    scores = [score] * (P - 1) if isinstance(score, Score) else list(score)
    if len(scores) < P - 1:
        raise ConfigError(f"need {P - 1} per-stage scores for {P} stages, got {len(scores)}")
    if P == 1:
        return np.zeros((0, trace.n), np.float32)
    return np.stack([scores[p].from_trace(trace, p) if hasattr(scores[p], "from_trace")
                     else scores[p](trace.logits_of(p)).numpy() for p in range(P - 1)])


def exits_for(scores: np.ndarray, thresholds) -> np.ndarray:
    """(N,) index of the first stage whose score reaches its threshold (P-1 if none)."""
    p1, n = scores.shape
    if p1 == 0:
        return np.zeros(n, dtype=int)
    keep = scores >= np.asarray(thresholds, np.float32)[:, None]  # (P-1, N)
    keep = np.vstack([keep, np.ones((1, n), bool)])
    return keep.argmax(0)


def _flops(trace: Trace) -> tuple[np.ndarray, np.ndarray]:
    return (np.array([c.flops for c in trace.costs], float), np.array([c.skip_flops for c in trace.costs], float))


def simulate_sequential(trace: Trace, score: Score | Sequence[Score], thresholds,
                        scores: np.ndarray | None = None) -> Outcome:
    """What a sequential policy does on ``trace`` at ``thresholds`` (P-1 values)."""
    thresholds = np.asarray(thresholds, dtype=np.float64)
    P = len(trace.paths)
    if thresholds.shape != (P - 1,):
        raise ConfigError(f"need {P - 1} thresholds for {P} stages, got {thresholds.shape}")
    s = stage_scores(trace, score) if scores is None else scores
    ex = exits_for(s, thresholds)
    cost = np.cumsum(_flops(trace)[0])
    ran = (np.arange(P)[None] <= ex[:, None]).astype(float)  # (N, P)
    return Outcome(trace.preds[ex, np.arange(trace.n)], ex, cost[ex], trace.labels, ran)


def simulate_forced(trace: Trace, p: int, *, sequential: bool) -> Outcome:
    """Every sample sent to path ``p`` with no decision (a runtime's ``force(p)``: no chooser runs either)."""
    flops, skip = _flops(trace)
    n, P = trace.n, len(trace.paths)
    ran = np.zeros((n, P))
    ran[:, p] = 1.0
    if sequential:  # earlier stages run their advance only
        ran[:, :p] = np.divide(skip, flops, out=np.zeros(P), where=flops > 0)[None, :p]
        cost = forced_flops(flops, skip, p)
    else:
        cost = flops[p]
    return Outcome(trace.preds[p].copy(), np.full(n, p), np.full(n, float(cost)), trace.labels, ran)


def simulate_upfront(trace: Trace, choice: np.ndarray, overhead_flops: float = 0.0) -> Outcome:
    """What an up-front policy does on ``trace`` when it sends sample i to path ``choice[i]``."""
    choice = np.asarray(choice, int)
    flops, _ = _flops(trace)
    ran = np.zeros((trace.n, len(trace.paths)))
    ran[np.arange(trace.n), choice] = 1.0
    return Outcome(trace.preds[choice, np.arange(trace.n)], choice, flops[choice] + overhead_flops, trace.labels, ran)


def oracle(trace: Trace, *, sequential: bool = True) -> Outcome:
    """The cheapest correct path per sample (where none is, the first): an upper bound on any router.

    Sequential: a sample answered by path p paid paths 0..p. Up-front: it paid path p alone."""
    if not sequential:
        flops, _ = _flops(trace)
        order = np.argsort(flops, kind="stable")
        corr = trace.correct[order]  # (P, N) by cost
        first = np.where(corr.any(0), corr.argmax(0), 0)
        return simulate_upfront(trace, order[first])
    corr = np.vstack([trace.correct, np.ones((1, trace.n), bool)])
    ex = np.minimum(corr.argmax(0), len(trace.paths) - 1)
    ex = np.where(trace.correct.any(0), ex, 0)
    cum = np.cumsum(_flops(trace)[0])
    P = len(trace.paths)
    ran = (np.arange(P)[None] <= ex[:, None]).astype(float)
    return Outcome(trace.preds[ex, np.arange(trace.n)], ex, cum[ex], trace.labels, ran)


def disagreements(trace: Trace, correct: np.ndarray, reference: int = -1) -> tuple[np.ndarray, np.ndarray]:
    """(M,) ``ref_only`` and ``method_only`` shares for M outcomes' correctness (M, N) against the reference path."""
    ref = trace.correct[reference][None]
    correct = np.atleast_2d(correct)
    return (ref & ~correct).mean(1), (correct & ~ref).mean(1)


def _cuts(v: np.ndarray) -> np.ndarray:
    """Every distinct float32 value of v above the lowest, plus accept-all (-inf) and accept-none (+inf).

    A threshold equal to a score keeps that score (``score >= t``); float32 thresholds compare exactly as
    the runtime compares them (in float32), so each cut separates the same samples there."""
    u = np.unique(v.astype(np.float32))
    return np.concatenate([[-np.inf], u[1:].astype(np.float64), [np.inf]])


def float32_grid(values: np.ndarray) -> np.ndarray:
    """Candidate thresholds rounded to float32 (the runtime's precision) and deduplicated, as float64."""
    v = np.asarray(values, np.float64)
    return np.unique(np.where(np.isfinite(v), v.astype(np.float32).astype(np.float64), v))


def sweep_sequential(trace: Trace, score: Score | Sequence[Score] | None, *, grid: int = 40, label: str | None = None,
                     scores: np.ndarray | None = None, uniform: Sequence[float] | None = None,
                     settings: np.ndarray | None = None) -> Curve:
    """Every operating point of a sequential policy on ``trace``.

    Two stages: exact — one point per distinct first-stage score (O(N log N)). More stages: the
    product of ``grid`` score quantiles per stage (plus -inf and +inf), vectorised. ``uniform``: only
    the given thresholds, the same at every stage (early exits). ``settings`` (M, P-1): exactly these
    threshold vectors, in this order. ``scores`` (P-1, N) may be given instead of ``score`` (e.g. an
    oracle ordering).

    Returns:
        a :class:`Curve` with settings (M, P-1), accuracy, mean FLOPs, and extras ``reach`` (M, P)
        share of samples entering each stage, ``ref_only`` and ``method_only`` (M,) (see the module doc).
    """
    if score is None and scores is None:
        raise ConfigError("sweep needs a score or precomputed scores")
    s = stage_scores(trace, score) if scores is None else scores
    P, n = len(trace.paths), trace.n
    flops = _flops(trace)[0]
    corr = trace.correct
    label = label or (score.label if isinstance(score, Score) else "custom")
    if P == 1:
        return Curve(label, np.zeros((1, 0)), np.array([corr[0].mean()]), np.array([flops[0]]),
                     {"reach": np.ones((1, 1)), "ref_only": np.zeros(1), "method_only": np.zeros(1)})
    if P == 2 and uniform is None and settings is None:
        t = _cuts(s[0])  # (M,) increasing: -inf keeps all, +inf forwards all
        s32 = s[0].astype(np.float32)
        order = np.argsort(s32, kind="stable")
        n_forward = np.searchsorted(s32[order], t.astype(np.float32), side="left")  # samples with score < t go on
        cum = lambda v: np.concatenate([[0], np.cumsum(v[order])])  # noqa: E731
        c0, c1 = cum(corr[0]), cum(corr[1])
        ref_only, meth_only = cum(corr[1] & ~corr[0]), cum(corr[0] & ~corr[1])  # only on kept samples
        acc = (c1[n_forward] + (c0[-1] - c0[n_forward])) / n
        share = n_forward / n
        return Curve(label, t[:, None], acc, flops[0] + share * flops[1],
                     {"reach": np.stack([np.ones_like(share), share], 1),
                      "ref_only": (ref_only[-1] - ref_only[n_forward]) / n,
                      "method_only": (meth_only[-1] - meth_only[n_forward]) / n})
    if settings is not None:
        combos = np.asarray(settings, np.float64).reshape(-1, P - 1)
    elif uniform is not None:
        combos = np.repeat(float32_grid(uniform)[:, None], P - 1, 1)
    else:
        grids = [float32_grid(np.concatenate([[-np.inf], np.quantile(s[p], np.linspace(0, 1, grid)), [np.inf]]))
                 for p in range(P - 1)]
        combos = np.array(list(itertools.product(*grids)))  # (M, P-1)
    accs, costs, reaches, ref_only, meth_only = [], [], [], [], []
    cols = np.arange(n)[None]
    for chunk in np.array_split(combos, max(1, len(combos) // 256)):
        keep = s[None, :, :] >= chunk[:, :, None].astype(np.float32)  # (m, P-1, N)
        keep = np.concatenate([keep, np.ones((len(chunk), 1, n), bool)], 1)
        ex = keep.argmax(1)  # (m, N)
        cc = corr[ex, cols]  # (m, N) policy correct
        accs.append(cc.mean(1))
        ro, mo = disagreements(trace, cc)
        ref_only.append(ro)
        meth_only.append(mo)
        reach = np.stack([(ex >= p).mean(1) for p in range(P)], 1)  # (m, P)
        reaches.append(reach)
        costs.append(reach @ flops)
    return Curve(label, combos, np.concatenate(accs), np.concatenate(costs),
                 {"reach": np.concatenate(reaches), "ref_only": np.concatenate(ref_only),
                  "method_only": np.concatenate(meth_only)})


def predicted_seconds(trace: Trace, ran: np.ndarray, batch_size: int, overhead_s_per_sample: float = 0.0) -> float:
    """Seconds the runtime should take on samples whose run paths are ``ran`` (N, P), in order, in batches.

    One batch costs ``sum_p w_p t_p(n_p)`` where n_p of its samples run path p, t_p is that path's
    measured time at that batch size (piecewise-linear between measured sizes) and w_p the share of the
    path they run (``ran`` is 1 for the whole path, less for an exit passed by a forced runtime, whose
    segment alone runs). A cost model: reports label it as predicted."""
    ran = np.asarray(ran, float)
    total = 0.0
    for i in range(0, ran.shape[0], batch_size):
        part = ran[i:i + batch_size]
        counts = (part > 0).sum(0)
        for p, c in enumerate(trace.costs):
            if counts[p]:
                total += float(c.time_per_batch(int(counts[p]))) * float(part[part[:, p] > 0, p].mean())
    return total + overhead_s_per_sample * ran.shape[0]


def curve_times(trace: Trace, curve: Curve, batch: int, overhead_s: float = 0.0) -> np.ndarray:
    """(M,) predicted seconds per image at ``batch`` of each curve point, from its per-path reach and the paths'
    measured latencies (a cost model; reports label it as predicted).

    Raises:
        ConfigError: the curve carries no per-path reach (``extra["reach"]``) for the trace's paths.
        TraceError: a path has no latency measurements.
    """
    reach = curve.extra.get("reach")
    if reach is None or reach.shape[1] != len(trace.costs):
        raise ConfigError(f"the curve carries no per-path reach for the trace's {len(trace.costs)} paths; predicted "
                          f"times need a sequential policy's curve over the same paths")
    t = np.zeros(len(curve))
    for p, c in enumerate(trace.costs):
        t += c.time_per_batch(np.rint(reach[:, p] * batch)) / batch
    return t + overhead_s


def sweep_routed(score: np.ndarray, cost: tuple[float, float], *, quality: tuple[np.ndarray, np.ndarray] | None = None,
                 metric: Callable[[np.ndarray], float] | None = None, grid: int = 40,
                 label: str = "custom") -> Curve:
    """Every operating point of a two-stage router on any task (regression, detection, classification).

    The student keeps sample i when ``score[i] >= t``; the teacher answers the rest and each forwarded
    sample pays both models. The quality of the mixed answers (higher is better: accuracy, minus the mean
    absolute error, mAP) comes either from per-sample values or from a set-level metric:

    Args:
        score: (N,) the router's score on the student's output.
        cost: per-sample cost of the student and of the teacher (FLOPs or seconds).
        quality: (student, teacher), each (N,) per-sample quality (e.g. minus the absolute error); the sweep is
            then exact, one point per distinct score (O(N log N)).
        metric: ``metric(keep)`` -> quality of the answers when the student keeps the samples where ``keep``
            (N,) bool is True (e.g. mAP over images); evaluated at ``grid`` score quantiles plus keep-all and
            keep-none.
        grid: quantiles of ``score`` for ``metric``.
        label: the curve's label.

    Returns:
        a :class:`Curve`: settings (M, 1) thresholds, ``accuracy`` the quality, ``cost`` the mean cost, and extra
        ``reach`` (M, 2) (share entering each stage).

    Raises:
        ConfigError: neither or both of ``quality`` and ``metric``, scores with NaN, or shapes that do not match.
    """
    s = np.asarray(score, np.float64).reshape(-1)
    if (quality is None) == (metric is None):
        raise ConfigError("sweep_routed needs exactly one of quality= (per-sample) and metric= (set-level)")
    if s.size == 0 or np.isnan(s).any():
        raise ConfigError(f"router scores must be a non-empty array without NaN, got {s.size} values")
    c0, c1 = float(cost[0]), float(cost[1])
    if quality is not None:
        q0, q1 = (np.asarray(q, np.float64).reshape(-1) for q in quality)
        if q0.shape != s.shape or q1.shape != s.shape:
            raise ConfigError(f"quality arrays of shapes {q0.shape}, {q1.shape} do not match {s.size} scores")
        t = _cuts(s)
        s32 = s.astype(np.float32)
        order = np.argsort(s32, kind="stable")
        n_fwd = np.searchsorted(s32[order], t.astype(np.float32), side="left")  # score < t goes on
        cq0 = np.concatenate([[0.0], np.cumsum(q0[order])])
        cq1 = np.concatenate([[0.0], np.cumsum(q1[order])])
        qual = (cq1[n_fwd] + cq0[-1] - cq0[n_fwd]) / s.size
    else:
        t = float32_grid(np.concatenate([[-np.inf], np.quantile(s[np.isfinite(s)], np.linspace(0, 1, grid)),
                                         [np.inf]]))
        s32 = s.astype(np.float32)
        keeps = [s32 >= np.float32(v) for v in t]
        n_fwd = np.array([int((~k).sum()) for k in keeps])
        qual = np.array([float(metric(k)) for k in keeps])
    share = n_fwd / s.size
    return Curve(label, t[:, None], qual, c0 + share * c1, {"reach": np.stack([np.ones_like(share), share], 1)})
