"""Statistics for comparing policies: McNemar's test, bootstrap intervals."""

from __future__ import annotations

import numpy as np


def mcnemar(correct_a: np.ndarray, correct_b: np.ndarray, *, exact: bool | None = None) -> dict:
    """McNemar's test of two classifiers on the same samples (EBJR section 3.1).

    Args:
        correct_a, correct_b: (N,) bool, whether each classifier got each sample right.
        exact: binomial test (default when fewer than 25 discordant pairs) or chi-square with correction.

    Returns:
        dict with the discordant counts ``a_only`` (A right, B wrong) and ``b_only``, ``statistic``,
        ``pvalue``, ``odds_ratio`` (a_only / b_only) and ``method``.
    """
    from statsmodels.stats.contingency_tables import mcnemar as _mcnemar

    a = np.asarray(correct_a, bool)
    b = np.asarray(correct_b, bool)
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {a.shape} vs {b.shape}")
    table = np.array([[np.sum(a & b), np.sum(a & ~b)], [np.sum(~a & b), np.sum(~a & ~b)]])
    n01, n10 = int(table[0, 1]), int(table[1, 0])
    if exact is None:
        exact = n01 + n10 < 25
    res = _mcnemar(table, exact=exact, correction=True)
    return {"a_only": n01, "b_only": n10, "statistic": float(res.statistic), "pvalue": float(res.pvalue),
            "odds_ratio": (n01 / n10) if n10 else float("inf") if n01 else 1.0,
            "method": "exact binomial" if exact else "chi-square with continuity correction"}


def bootstrap_ci(values: np.ndarray, *, stat=np.mean, n_boot: int = 1000, level: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of ``stat`` over samples."""
    from scipy.stats import bootstrap

    res = bootstrap((np.asarray(values),), stat, n_resamples=n_boot, confidence_level=level, method="percentile",
                    random_state=np.random.default_rng(seed), vectorized=False)
    return float(res.confidence_interval.low), float(res.confidence_interval.high)
