"""Early-exit networks with test-time specialisation (Leroux et al., "Test-time specialization of
dynamic neural networks"): a RevCol-style multi-column network with an exit per column, exit heads
on any backbone, threshold exiting through the shared runtime, and on-device head adaptation."""

from . import revcol  # noqa: F401  (registers revcol-* backbones)
from .adapt import AdaptLog, SpecializeConfig, TestTimeSpecializer
from .method import EarlyExit, exit_costs, exit_flops, forced_exit, record_exit_trace, uniform
from .network import EarlyExitNetwork
from .presets import EE_PRESETS, EarlyExitPreset
from .revcol import RevColConfig, RevColNet
from .streams import SUBSETS, class_mask, subset_classes, subset_stream
from .train import exit_accuracies, exit_logits, fit_early_exit, train_exits
from .wrap import EXIT_HEADS, ExitWrapper, attach_exits, load_exit_heads, register_splitter, save_exit_heads

__all__ = ["AdaptLog", "EE_PRESETS", "EXIT_HEADS", "EarlyExit", "EarlyExitNetwork", "EarlyExitPreset", "ExitWrapper",
           "RevColConfig", "RevColNet", "SUBSETS", "SpecializeConfig", "TestTimeSpecializer", "attach_exits",
           "class_mask", "exit_accuracies", "exit_costs", "exit_flops", "exit_logits", "fit_early_exit", "forced_exit",
           "load_exit_heads", "record_exit_trace", "register_splitter", "save_exit_heads", "subset_classes",
           "subset_stream", "train_exits", "uniform"]
