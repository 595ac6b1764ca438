"""Cascade policy on a trace (EBJR eqs. 6-7, generalised to P stages): simulation and sweeps.

Stage p keeps a sample when ``score_p >= t_p``; the last stage answers the rest. A sample's
FLOPs are those of every stage it went through (the student always, the teacher on the
forwarded share — EBJR section 3.1).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

from ...errors import ConfigError
from ...evaluate.frontier import Curve
from ...evaluate.outcome import Outcome
from ...scores import Score
from ...trace import Trace


def stage_scores(trace: Trace, score: Score) -> np.ndarray:
    """(P-1, N) score of every stage but the last, computed with the runtime's own function."""
    return np.stack([score(trace.logits_of(p)).numpy() for p in range(len(trace.paths) - 1)]) \
        if len(trace.paths) > 1 else np.zeros((0, trace.n), np.float32)


def exits_for(scores: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """(N,) index of the first stage whose score reaches its threshold (P-1 if none)."""
    p1, n = scores.shape
    if p1 == 0:
        return np.zeros(n, dtype=int)
    keep = scores >= np.asarray(thresholds, np.float32)[:, None]  # (P-1, N)
    keep = np.vstack([keep, np.ones((1, n), bool)])
    return keep.argmax(0)


def simulate(trace: Trace, score: Score, thresholds, scores: np.ndarray | None = None) -> Outcome:
    """What the cascade does on ``trace`` at ``thresholds`` (P-1 values)."""
    thresholds = np.asarray(thresholds, dtype=np.float64)
    if thresholds.shape != (len(trace.paths) - 1,):
        raise ConfigError(f"need {len(trace.paths) - 1} thresholds for {len(trace.paths)} stages, got {thresholds.shape}")
    s = stage_scores(trace, score) if scores is None else scores
    ex = exits_for(s, thresholds)
    preds = trace.preds
    cum = np.cumsum([c.flops for c in trace.costs])
    return Outcome(pred=preds[ex, np.arange(trace.n)], path=ex, flops=cum[ex].astype(float), labels=trace.labels)


def oracle(trace: Trace) -> Outcome:
    """The cheapest stage that is correct; where none is, the first stage (an upper bound on any router)."""
    corr = np.vstack([trace.correct, np.ones((1, trace.n), bool)])
    ex = np.minimum(corr.argmax(0), len(trace.paths) - 1)
    ex = np.where(trace.correct.any(0), ex, 0)
    cum = np.cumsum([c.flops for c in trace.costs])
    return Outcome(trace.preds[ex, np.arange(trace.n)], ex, cum[ex].astype(float), trace.labels)


def _midpoints(v: np.ndarray) -> np.ndarray:
    """Thresholds separating consecutive distinct values of v, plus accept-all and accept-none."""
    u = np.unique(v.astype(np.float64))
    mids = (u[:-1] + u[1:]) / 2 if u.size > 1 else np.empty(0)
    return np.concatenate([[-np.inf], mids, [np.inf]])


def sweep(trace: Trace, score: Score | None, *, grid: int = 40, label: str | None = None,
          scores: np.ndarray | None = None) -> Curve:
    """Every operating point of the cascade on ``trace``.

    Two stages: exact — one point per distinct student score (O(N log N)). More stages: the
    product of ``grid`` score quantiles per stage (plus accept-all/none), vectorised.
    ``scores`` (P-1, N) may be given instead of ``score`` (e.g. an oracle ordering).

    Returns:
        a :class:`Curve` with settings (M, P-1), accuracy, mean FLOPs, and extras ``reach``
        (M, P) share of samples entering each stage, ``ref_only`` (M,) share of samples the last
        stage alone gets right and the cascade gets wrong, ``cascade_only`` (M,) the reverse —
        the paired disagreements that :func:`paired_loss_bound` turns into a confidence bound.
    """
    if score is None and scores is None:
        raise ConfigError("sweep needs a score or precomputed scores")
    s = stage_scores(trace, score) if scores is None else scores
    P, n = len(trace.paths), trace.n
    flops = np.array([c.flops for c in trace.costs], float)
    corr = trace.correct
    label = label or (score.label if score is not None else "custom")
    if P == 1:
        return Curve(label, np.zeros((1, 0)), np.array([corr[0].mean()]), np.array([flops[0]]),
                     {"reach": np.ones((1, 1)), "ref_only": np.zeros(1), "cascade_only": np.zeros(1)})
    if P == 2:
        t = _midpoints(s[0])  # (M,) increasing: -inf keeps all, +inf forwards all
        order = np.argsort(s[0].astype(np.float64), kind="stable")
        sv = s[0].astype(np.float64)[order]
        n_forward = np.searchsorted(sv, t, side="left")  # samples with score < t go on
        cum = lambda v: np.concatenate([[0], np.cumsum(v[order])])  # noqa: E731
        c0, c1 = cum(corr[0]), cum(corr[1])
        ref_only, casc_only = cum(corr[1] & ~corr[0]), cum(corr[0] & ~corr[1])  # only on kept samples
        acc = (c1[n_forward] + (c0[-1] - c0[n_forward])) / n
        share = n_forward / n
        cost = flops[0] + share * flops[1]
        return Curve(label, t[:, None], acc, cost, {"reach": np.stack([np.ones_like(share), share], 1),
                                                    "ref_only": (ref_only[-1] - ref_only[n_forward]) / n,
                                                    "cascade_only": (casc_only[-1] - casc_only[n_forward]) / n})
    grids = [np.unique(np.concatenate([[-np.inf], np.quantile(s[p], np.linspace(0, 1, grid)), [np.inf]]))
             for p in range(P - 1)]
    combos = np.array(list(itertools.product(*grids)))  # (M, P-1)
    accs, costs, reaches, ref_only, casc_only = [], [], [], [], []
    cols = np.arange(n)[None]
    for chunk in np.array_split(combos, max(1, len(combos) // 256)):
        keep = s[None, :, :] >= chunk[:, :, None].astype(np.float32)  # (m, P-1, N)
        keep = np.concatenate([keep, np.ones((len(chunk), 1, n), bool)], 1)
        ex = keep.argmax(1)  # (m, N)
        cc = corr[ex, cols]  # (m, N) cascade correct
        accs.append(cc.mean(1))
        ref_only.append((corr[-1][None] & ~cc).mean(1))
        casc_only.append((cc & ~corr[-1][None]).mean(1))
        reach = np.stack([(ex >= p).mean(1) for p in range(P)], 1)  # (m, P)
        reaches.append(reach)
        costs.append(reach @ flops)
    return Curve(label, combos, np.concatenate(accs), np.concatenate(costs),
                 {"reach": np.concatenate(reaches), "ref_only": np.concatenate(ref_only),
                  "cascade_only": np.concatenate(casc_only)})


def paired_loss_bound(curve: Curve, n: int, confidence: float) -> np.ndarray:
    """(M,) one-sided upper confidence bound on each point's accuracy loss against the last stage.

    The per-sample loss d_i = [last stage right] - [cascade right] is paired, so its variance
    comes from the disagreements only: mean = a - b, var = a + b - (a - b)^2 with a, b the shares
    from :func:`sweep`. Normal approximation; ``confidence`` 0.5 gives the plain mean.
    """
    from scipy.stats import norm

    a, b = curve.extra["ref_only"], curve.extra["cascade_only"]
    mean = a - b
    var = np.maximum(a + b - mean ** 2, 0.0)
    return mean + norm.ppf(confidence) * np.sqrt(var * n / max(n - 1, 1) / n)


@dataclass
class BatchTimeModel:
    """Predicted runtime of the cascade from the trace's latency measurements.

    One batch of B samples costs ``sum_p t_p(n_p)`` where n_p samples reach stage p and t_p is
    the stage's measured time at that batch size (piecewise-linear between measured sizes).
    """

    trace: Trace

    def predict(self, exits: np.ndarray, batch_size: int) -> float:
        """Predicted seconds to run the samples in order, in batches, given each sample's exit stage."""
        total = 0.0
        for i in range(0, len(exits), batch_size):
            ex = exits[i:i + batch_size]
            for p, c in enumerate(self.trace.costs):
                total += float(c.time_per_batch(int((ex >= p).sum())))
        return total
