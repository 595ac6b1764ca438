"""Cheap shared features the selection policy reads (ABS section 3.3: ``GAP(f)``).

Two extractors, both (N, C, H, W) -> (N, D) and both cheap next to any backbone:

- :class:`PooledPixels` — the image average-pooled to a ``grid x grid`` map (a coarse silhouette).
- :class:`EarlyBlock` — the first stage of the smallest backbone (for :class:`~dyninfer.models.cnn.SmallCNN`:
  its normalisation and first conv-BN-ReLU block), average-pooled to ``grid x grid`` per channel.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from ...errors import ConfigError

FEATURES = ("pixels", "early-block")


class PooledPixels(nn.Module):
    """Average-pool the image to ``grid x grid`` and flatten.

    Args:
        grid: output side length.
    """

    def __init__(self, grid: int = 7) -> None:
        super().__init__()
        if grid < 1:
            raise ConfigError(f"feature grid must be >= 1, got {grid}")
        self.grid = grid

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        if h % self.grid == 0 and w % self.grid == 0:  # plain pooling is cheaper than adaptive on CPU
            return F.avg_pool2d(x, (h // self.grid, w // self.grid)).flatten(1)  # (N, C*g*g)
        return F.adaptive_avg_pool2d(x, self.grid).flatten(1)  # (N, C*g*g)


class EarlyBlock(nn.Module):
    """The early block of a backbone, average-pooled to ``grid x grid`` and flattened.

    Args:
        block: a module (N, C, H, W) -> (N, C', H', W'); copied, frozen and put in eval mode.
        grid: output side length of the pooling.
    """

    def __init__(self, block: nn.Module, grid: int = 4) -> None:
        super().__init__()
        self.block = copy.deepcopy(block).eval()
        for p in self.block.parameters():
            p.requires_grad_(False)
        self.grid = grid

    def train(self, mode: bool = True) -> "EarlyBlock":  # the block stays in eval mode (frozen BN)
        super().train(mode)
        self.block.eval()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.adaptive_avg_pool2d(self.block(x), self.grid).flatten(1)  # (N, C'*g*g)

    @classmethod
    def from_backbone(cls, model: nn.Module, grid: int = 4) -> "EarlyBlock":
        """The early block of a backbone with ``stem`` and ``stages`` (the project's SmallCNN).

        Raises:
            ConfigError: if the model has no ``stem`` and ``stages``.
        """
        if not (hasattr(model, "stem") and hasattr(model, "stages")):
            raise ConfigError(f"{type(model).__name__} has no stem/stages; pass features='pixels' or an "
                              f"explicit block to EarlyBlock")
        return cls(nn.Sequential(model.stem, model.stages[0]), grid)


def make_features(kind: str, grid: int, model: nn.Module | None = None) -> nn.Module:
    """Build a feature extractor by name.

    Args:
        kind: ``pixels`` or ``early-block``.
        grid: pooled side length.
        model: the smallest backbone, needed for ``early-block``.

    Returns:
        an ``nn.Module`` mapping (N, C, H, W) to (N, D).
    """
    if kind == "pixels":
        return PooledPixels(grid)
    if kind == "early-block":
        if model is None:
            raise ConfigError("features='early-block' needs the smallest backbone (feature_model=...)")
        return EarlyBlock.from_backbone(model, grid)
    raise ConfigError(f"unknown features {kind!r}; known: {list(FEATURES)}")
