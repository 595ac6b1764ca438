"""Slimmable networks (AdaptaNet): subnetworks of one supernet as paths, Var Gates as scores."""

from .method import GateScore, Slimmable

__all__ = ["GateScore", "Slimmable"]
