"""Slimmable networks (AdaptaNet): subnetworks of one supernet as paths, Var Gates as scores.

Two methods: ``slimmable`` (a confidence cascade over subnets, scored by a Var Gate) and ``slimmable-bins``
(the paper's pull-up / pull-down over equal-frequency gate-confidence bins)."""

from .bins import SlimmableBins
from .method import GateScore, Slimmable
from . import figures  # noqa: E402,F401  (registers the slimmable figures)

__all__ = ["GateScore", "Slimmable", "SlimmableBins", "figures"]
