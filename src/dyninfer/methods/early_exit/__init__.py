"""Early exits with test-time specialisation (Leroux et al., "Test-time specialization of dynamic neural
networks"): threshold exiting through the shared runtime (the ``early-exit`` method) and on-device
head adaptation. The networks themselves (RevCol, exits on any backbone) live in :mod:`dyninfer.models`."""

from .adapt import AdaptLog, SpecializeConfig, TestTimeSpecializer
from .method import EarlyExit, forced_exit, uniform
from .streams import SUBSETS, class_mask, subset_classes, subset_stream
from . import figures  # noqa: E402,F401  (registers the early-exit figures)

__all__ = ["AdaptLog", "EarlyExit", "SUBSETS", "SpecializeConfig", "TestTimeSpecializer", "class_mask",
           "forced_exit", "subset_classes", "subset_stream", "uniform"]
