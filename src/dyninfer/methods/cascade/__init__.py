"""Cascades with energy-based routing (EBJR): a small model answers; a score decides if a bigger one must look."""

from .method import Cascade
from .simulate import BatchTimeModel, exits_for, oracle, paired_loss_bound, simulate, stage_scores, sweep

__all__ = ["BatchTimeModel", "Cascade", "exits_for", "oracle", "paired_loss_bound", "simulate", "stage_scores", "sweep"]
