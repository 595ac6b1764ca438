"""Training loops, recipes and the checkpoint cache."""

from .checkpoint import cached_model, load_checkpoint, read_checkpoint, save_checkpoint
from .recipe import Recipe
from .trainer import accuracy, augment_batch, predict_logits, train

__all__ = ["Recipe", "accuracy", "augment_batch", "cached_model", "load_checkpoint", "predict_logits",
           "read_checkpoint", "save_checkpoint", "train"]
