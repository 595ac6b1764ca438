"""Operating points with a stated guarantee, the same way for every family: Learn-then-Test.

The knob is chosen on the calibration split so that the accuracy the policy loses against the
family's reference path (the last, most expensive one) stays within ``tolerance`` with probability
at least ``confidence`` over the draw of the calibration set — for the chosen point, although it
was picked from a whole grid of candidates (Angelopoulos et al., "Learn then Test", 2021).

Each candidate knob j is a null hypothesis H_j: loss_j > tolerance, where loss_j = E[ref right] -
E[policy right] is paired per sample. The candidates are tested in a fixed sequence, from the most
expensive knob value to the cheapest, each at the full level delta = 1 - confidence, stopping at the
first one not rejected (fixed-sequence testing controls the family-wise error without dividing delta
by the grid size). The order never comes from the labels the p-values use: by value for a
one-dimensional knob, by the sum of per-dimension ranks (ties lexicographic) for several thresholds,
or a sequence learned on a separate part of the calibration split (a cascade of three or more stages
takes the accuracy-cost frontier of one part and tests it, most expensive first, on the rest). The
cheapest rejected candidate is the operating point.

p-values of the paired loss d_i in {-1, 0, 1}:

* ``clt``: one-sided normal test of the mean with the paired variance (a + b - (a - b)^2, a and b the
  two disagreement shares), floored at the variance a loss of exactly ``tolerance`` would have
  (tolerance * (1 - tolerance)), so that a handful of disagreements cannot certify a point on its own.
  Asymptotically valid (a normal approximation); the tightest.
* ``wsr``: the betting test of Waudby-Smith and Ramdas (2023, predictable plug-in bets) on
  x_i = (d_i + 1) / 2 in [0, 1]; valid for every n, adaptive to the small variance of paired
  disagreements. The disagreements are laid out in one seeded random order (the samples are
  exchangeable, so this is the law of a random order of the data).

When a method picks among K configurations (chains, scores) as well, each is tested at delta / K
(Bonferroni over configurations, fixed sequence within each).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from ..check import number
from ..errors import ConfigError
from .frontier import Curve

BOUNDS = ("clt", "wsr")


@dataclass
class OperatingPoint:
    """The knob a method chose on calibration and the guarantee it comes with.

    Attributes:
        index: the chosen point of the calibration curve.
        certified: whether the guarantee holds for it (False: no candidate could be certified; the method
            then runs the reference path alone, and ``index`` is the most expensive candidate).
        tolerance, confidence, bound: what was guaranteed, and how (see the module doc).
        reference: the reference path's name.
        candidates: knob values on the grid; tested: hypotheses tested, the one that stopped the sequence included.
        configurations: configurations the method chose among (Bonferroni factor).
        calib_accuracy, calib_flops, calib_loss: the chosen point on calibration.
        pvalue: its p-value (``clt``) or 1 / its largest betting capital (``wsr``).
        reference_flops: the reference path's FLOPs alone on calibration (0: not compared).
        not_cheaper: the certified point costs no less than the reference alone on calibration (a cascade's
            early stages not paying for themselves), so the method runs the reference path alone.
    """

    index: int
    certified: bool
    tolerance: float
    confidence: float
    bound: str
    reference: str
    candidates: int
    tested: int
    configurations: int
    calib_accuracy: float
    calib_flops: float
    calib_loss: float
    pvalue: float
    reference_flops: float = 0.0
    not_cheaper: bool = False

    @property
    def runs_reference(self) -> bool:
        """Whether the fitted policy is the reference path alone (nothing certified, or nothing cheaper)."""
        return not self.certified or self.not_cheaper

    def statement(self) -> str:
        """The guarantee in one sentence, for reports."""
        corr = f", Bonferroni over {self.configurations} configurations" if self.configurations > 1 else ""
        if not self.certified:
            return (f"No knob value could be certified to lose at most {100 * self.tolerance:.2f} points against "
                    f"{self.reference} with {100 * self.confidence:g}% confidence; the policy runs {self.reference} "
                    f"alone.")
        if self.not_cheaper:
            return (f"The cheapest knob value certified to lose at most {100 * self.tolerance:.2f} points against "
                    f"{self.reference} with {100 * self.confidence:g}% confidence costs {self.calib_flops / 1e6:.3f} "
                    f"MFLOPs on calibration, no less than {self.reference} alone ({self.reference_flops / 1e6:.3f}); "
                    f"the policy runs {self.reference} alone.")
        how = "normal-approximation p-values, asymptotic" if self.bound == "clt" else "betting test, valid at every n"
        return (f"With probability at least {100 * self.confidence:g}% over the calibration sample, the accuracy lost "
                f"against {self.reference} is at most {100 * self.tolerance:.2f} points (Learn-then-Test, fixed-sequence "
                f"testing over {self.candidates} knob values from the most expensive, {how}{corr}).")

    def to_dict(self) -> dict:
        return {**asdict(self), "statement": self.statement()}


def check_guarantee_settings(tolerance: float, confidence: float, bound: str) -> None:
    """Raise ConfigError naming the allowed range for a bad tolerance, confidence or bound."""
    number("tolerance", tolerance, lo=0, hi=1, hi_open=True, hint=" (accuracy lost; 0.01 = one point)")
    number("confidence", confidence, lo=0.5, hi=1, hi_open=True)
    if bound not in BOUNDS:
        raise ConfigError(f"unknown bound {bound!r}; use one of {list(BOUNDS)}")


def clt_pvalues(ref_only: np.ndarray, method_only: np.ndarray, n: int, tolerance: float) -> np.ndarray:
    """(M,) one-sided p-values of H: loss > tolerance, from the paired disagreement shares (normal test)."""
    from scipy.stats import norm

    a, b = np.asarray(ref_only, float), np.asarray(method_only, float)
    mean = a - b
    var = np.maximum(a + b - mean ** 2, tolerance * (1 - tolerance))  # never below the variance at the null boundary
    se = np.sqrt(var / max(n - 1, 1))
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.where(se > 0, (tolerance - mean) / np.where(se > 0, se, 1), np.where(mean <= tolerance, np.inf, -np.inf))
    return norm.sf(z)


def wsr_rejects(n_ref_only: int, n_method_only: int, n: int, tolerance: float, delta: float, *, seed: int = 0) -> tuple[bool, float]:
    """Betting test of H: loss > tolerance at level ``delta``; returns (rejected, 1 / max capital)."""
    rng = np.random.default_rng(seed)
    d = np.zeros(n)
    d[:n_ref_only] = 1.0
    d[n_ref_only:n_ref_only + n_method_only] = -1.0
    x = (rng.permutation(d) + 1) / 2  # (n,) in [0, 1]
    m = (1 + tolerance) / 2  # the null is E[x] >= m
    i = np.arange(1, n + 1)
    mu = (0.5 + np.cumsum(x)) / (i + 1)  # running mean after i samples
    var = (0.25 + np.cumsum((x - mu) ** 2)) / (i + 1)
    var_prev = np.concatenate([[0.25], var[:-1]])  # predictable: uses samples before i
    lam = np.minimum(np.sqrt(2 * np.log(1 / delta) / (n * var_prev)), 0.75 / (1 - m))
    log_k = np.cumsum(np.log1p(lam * (m - x)))
    best = float(np.exp(min(log_k.max(), 700)))
    return best >= 1 / delta, min(1.0, 1 / best)


def knob_order(settings: np.ndarray, direction: int = 1) -> np.ndarray:
    """Indices of knob values (M, D) from the most expensive to the cheapest, from the values alone.

    ``direction`` +1: a larger value costs more (thresholds); -1: a larger value costs less (a cost bias).
    One dimension: by value. Several: by the sum of each dimension's rank, ties lexicographic."""
    s = np.asarray(settings, float) * direction
    if s.ndim == 1:
        s = s[:, None]
    ranks = np.stack([np.unique(col, return_inverse=True)[1].ravel() for col in s.T], 1)  # (M, D)
    keys = [-ranks[:, d] for d in reversed(range(ranks.shape[1]))] + [-ranks.sum(1)]
    return np.lexsort(keys)


def choose_operating_point(curve: Curve, n: int, *, tolerance: float, confidence: float, bound: str = "clt",
                           reference: str = "reference", configurations: int = 1, direction: int = 1,
                           order: np.ndarray | None = None, seed: int = 0) -> OperatingPoint:
    """Learn-then-Test with fixed-sequence testing over the points of a calibration ``curve``.

    Args:
        curve: the method's calibration curve, with extras ``ref_only`` and ``method_only``.
        n: calibration samples.
        tolerance: accuracy the policy may lose against the reference (0.01 = one point).
        confidence: 1 - delta.
        bound: ``clt`` or ``wsr`` (see the module doc).
        reference: the reference path's name (for the statement).
        configurations: how many configurations the caller picks among (each tested at delta / K).
        direction: how the knob orders cost (see :func:`knob_order`).
        order: the sequence of curve indices to test, fixed without this curve's labels (e.g. learned on another
            part of the calibration split); default :func:`knob_order`.

    Returns:
        an :class:`OperatingPoint`; ``certified`` False if even the first (most expensive) point fails.
    """
    check_guarantee_settings(tolerance, confidence, bound)
    if len(curve) == 0:
        raise ConfigError("cannot choose an operating point on an empty curve")
    delta = (1 - confidence) / max(configurations, 1)
    a, b = curve.extra["ref_only"], curve.extra["method_only"]
    order = knob_order(curve.settings, direction) if order is None else np.asarray(order, int)
    pvals = clt_pvalues(a, b, n, tolerance) if bound == "clt" else None
    certified: list[tuple[int, float]] = []
    tested = 0
    for j in order:
        tested += 1
        if pvals is not None:
            ok, p = bool(pvals[j] <= delta), float(pvals[j])
        else:
            ok, p = wsr_rejects(int(round(a[j] * n)), int(round(b[j] * n)), n, tolerance, delta, seed=seed)
        if not ok:
            break
        certified.append((int(j), p))
    if certified:
        j, p = min(certified, key=lambda c: (curve.cost[c[0]], -curve.accuracy[c[0]]))
    else:
        j, p = int(order[0]), float("nan")
    return OperatingPoint(index=int(j), certified=bool(certified), tolerance=float(tolerance),
                          confidence=float(confidence), bound=bound, reference=reference, candidates=len(curve),
                          tested=tested, configurations=int(configurations), calib_accuracy=float(curve.accuracy[j]),
                          calib_flops=float(curve.cost[j]), calib_loss=float(a[j] - b[j]), pvalue=p)
