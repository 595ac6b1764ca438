"""Sweeps, frontiers, operating points and statistics over traces."""

from .frontier import Curve, hull_accuracy_at, hull_cost_to_reach, pareto_front, upper_hull
from .outcome import Outcome
from .stats import bootstrap_ci, mcnemar

__all__ = ["Curve", "Outcome", "bootstrap_ci", "hull_accuracy_at", "hull_cost_to_reach", "mcnemar", "pareto_front", "upper_hull"]
