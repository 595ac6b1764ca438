"""Statistics for comparing policies: McNemar's test, bootstrap intervals."""

from __future__ import annotations

import numpy as np

from ..errors import InputError


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
    if a.shape != b.shape or a.ndim != 1:
        raise InputError(f"mcnemar needs two 1-D arrays of the same length (one entry per sample, both classifiers "
                         f"on the same samples), got shapes {a.shape} and {b.shape}")
    if a.size == 0:
        raise InputError("mcnemar needs at least one sample")
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


def reliability_bins(confidence: np.ndarray, correct: np.ndarray, *, n_bins: int = 15) -> dict:
    """Reliability diagram data: equal-width confidence bins over [0, 1].

    Args:
        confidence: (N,) predicted-class probability (e.g. max softmax).
        correct: (N,) bool, whether the prediction was right.
        n_bins: number of bins.

    Returns:
        dict of (n_bins,) arrays ``edges`` (n_bins + 1), ``count``, ``confidence`` (mean per bin, NaN if empty)
        and ``accuracy`` (per bin, NaN if empty).
    """
    conf = np.asarray(confidence, float)
    corr = np.asarray(correct, bool)
    if conf.shape != corr.shape or conf.ndim != 1:
        raise InputError(f"confidence {conf.shape} and correct {corr.shape} must be 1-D arrays of the same length")
    if conf.size and (np.isnan(conf).any() or np.nanmin(conf) < 0 or np.nanmax(conf) > 1):
        raise InputError("confidences must lie in [0, 1] and not be NaN (pass max-softmax probabilities)")
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    b = np.clip(np.searchsorted(edges, conf, side="right") - 1, 0, n_bins - 1)  # (N,) bin of each sample
    count = np.bincount(b, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.bincount(b, weights=conf, minlength=n_bins) / count
        acc = np.bincount(b, weights=corr.astype(float), minlength=n_bins) / count
    return {"edges": edges, "count": count, "confidence": mean_conf, "accuracy": acc}


def expected_calibration_error(confidence: np.ndarray, correct: np.ndarray, *, n_bins: int = 15) -> float:
    """ECE (Guo et al. 2017): sum over bins of (bin share) x |accuracy - mean confidence|."""
    r = reliability_bins(confidence, correct, n_bins=n_bins)
    n = max(int(r["count"].sum()), 1)
    ok = r["count"] > 0
    return float(np.sum(r["count"][ok] / n * np.abs(r["accuracy"][ok] - r["confidence"][ok])))
