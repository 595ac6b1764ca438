"""Cascades with energy-based routing (EBJR): a small model answers; a score decides if a bigger one must look."""

from .method import ROUTERS, Cascade, chains
from .specialised import SpecialisedCascade  # noqa: E402  (registers cascade-specialised)
from . import figures  # noqa: E402,F401  (registers the cascade's own figures)

__all__ = ["Cascade", "ROUTERS", "SpecialisedCascade", "chains"]
