"""Accuracy-cost curves, Pareto frontiers and operating-point choice."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class Curve:
    """Operating points of one policy family: M points with their settings, accuracy and cost.

    Attributes:
        label: e.g. ``"energy"``.
        settings: (M, D) the knob values (thresholds) of each point.
        accuracy: (M,) accuracy in [0, 1].
        cost: (M,) mean cost per sample (FLOPs unless said otherwise).
        extra: named (M,) arrays (e.g. forwarded share, predicted time).
    """

    label: str
    settings: np.ndarray
    accuracy: np.ndarray
    cost: np.ndarray
    extra: dict[str, np.ndarray] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.accuracy.shape[0])

    def frontier(self) -> "Curve":
        """The Pareto-optimal points (no other point is cheaper and at least as accurate), by cost."""
        idx = pareto_front(self.cost, self.accuracy)
        return Curve(self.label, self.settings[idx], self.accuracy[idx], self.cost[idx],
                     {k: v[idx] for k, v in self.extra.items()})

    def cheapest_at(self, target_accuracy: float) -> int | None:
        """Index of the cheapest point with accuracy >= target, or None if no point reaches it."""
        ok = np.flatnonzero(self.accuracy >= target_accuracy - 1e-12)
        if ok.size == 0:
            return None
        return int(ok[np.lexsort((-self.accuracy[ok], self.cost[ok]))[0]])


def pareto_front(cost: np.ndarray, accuracy: np.ndarray) -> np.ndarray:
    """Indices of the points on the upper-left frontier, sorted by increasing cost."""
    order = np.lexsort((-accuracy, cost))  # by cost, then best accuracy first
    best = -np.inf
    keep = []
    for i in order:
        if accuracy[i] > best:
            keep.append(i)
            best = accuracy[i]
    return np.asarray(keep, dtype=int)


def upper_hull(cost: np.ndarray, accuracy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Vertices of the upper concave hull of (cost, accuracy) points, by cost.

    Mixing two operating points at random reaches every point on the segment between them, so
    the hull is what random mixing of static choices already achieves.
    """
    idx = pareto_front(cost, accuracy)
    pts = [(float(cost[i]), float(accuracy[i])) for i in idx]
    hull: list[tuple[float, float]] = []
    for p in pts:
        while len(hull) >= 2:
            (x1, y1), (x2, y2) = hull[-2], hull[-1]
            if (x2 - x1) * (p[1] - y1) - (y2 - y1) * (p[0] - x1) >= 0:  # hull[-1] is not above the chord
                hull.pop()
            else:
                break
        hull.append(p)
    h = np.asarray(hull)
    return h[:, 0], h[:, 1]


def hull_accuracy_at(cost: np.ndarray, accuracy: np.ndarray, at: float | np.ndarray) -> np.ndarray:
    """Accuracy of the upper hull of the given points at cost ``at`` (flat beyond the ends)."""
    hx, hy = upper_hull(np.asarray(cost, float), np.asarray(accuracy, float))
    return np.interp(at, hx, hy)


def hull_cost_to_reach(cost: np.ndarray, accuracy: np.ndarray, target: float) -> float | None:
    """Lowest cost at which the upper hull of the given points reaches accuracy ``target`` (None if it never does).

    The inverse of :func:`hull_accuracy_at`; the hull rises strictly, so it is read by interpolation."""
    hx, hy = upper_hull(np.asarray(cost, float), np.asarray(accuracy, float))
    if hy[-1] < target - 1e-12:
        return None
    return float(np.interp(target, hy, hx))
