"""Early-exit networks with test-time specialisation (Leroux et al., "Test-time specialization of
dynamic neural networks"): a RevCol-style multi-column network with an exit per column, exit heads
on any backbone, threshold exiting through the shared runtime, and on-device head adaptation."""

from . import revcol  # noqa: F401  (registers revcol-* backbones)
from .network import EarlyExitNetwork
from .presets import EE_PRESETS, EarlyExitPreset
from .revcol import RevColConfig, RevColNet
from .train import exit_accuracies, exit_logits, fit_early_exit, train_exits

__all__ = ["EE_PRESETS", "EarlyExitNetwork", "EarlyExitPreset", "RevColConfig", "RevColNet", "exit_accuracies",
           "exit_logits", "fit_early_exit", "train_exits"]
