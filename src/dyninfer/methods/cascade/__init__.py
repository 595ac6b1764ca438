"""Cascades with energy-based routing (EBJR): a small model answers; a score decides if a bigger one must look."""

from .method import ROUTERS, Cascade, chains
from .specialised import SpecialisedCascade  # noqa: E402  (registers cascade-specialised)
from .regression import RegressionCascade, RegressionOutputs  # noqa: E402  (EBJR for regression, section 2.2)
from .detection import DetectionCascade, DetectionRecord  # noqa: E402  (EBJR for detection, section 2.3)
from . import figures  # noqa: E402,F401  (registers the cascade's own figures)

__all__ = ["Cascade", "DetectionCascade", "DetectionRecord", "ROUTERS", "RegressionCascade", "RegressionOutputs",
           "SpecialisedCascade", "chains"]
