"""Sweeps, frontiers, operating points and statistics over traces."""

from .frontier import Curve, hull_accuracy_at, pareto_front, upper_hull
from .outcome import Outcome
from .stats import bootstrap_ci, mcnemar

__all__ = ["Curve", "Outcome", "bootstrap_ci", "hull_accuracy_at", "mcnemar", "pareto_front", "upper_hull"]
