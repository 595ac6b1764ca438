"""A family of plain CNNs for small images (28x28, 32x32), sized by FLOPs per image.

FLOPs per 28x28 grey image (counted by ``torch.utils.flop_counter``, 2 per multiply-add):

==========  =================  =====================
name        widths x convs     MFLOPs (28x28, 1 ch)
==========  =================  =====================
cnn-s       (12, 24, 48) x 1   ~2.2
cnn-m       (24, 48, 96) x 2   ~33
cnn-l       (64, 128, 256) x 2 ~232
==========  =================  =====================
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..data.datasets import DataSpec
from .registry import Normalize, register_backbone


def conv_bn(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class SmallCNN(nn.Module):
    """Three stages of 3x3 conv-BN-ReLU, max-pool between stages, global average pool, linear head.

    Attributes:
        stem: input normalisation.
        stages: ``nn.ModuleList`` of the three stages (named stage points for early-exit heads).
        head: pooling and the linear classifier.
    """

    def __init__(self, spec: DataSpec, widths: tuple[int, int, int], convs: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.stem = Normalize(spec.mean, spec.std)
        stages = []
        cin = spec.in_channels
        for i, w in enumerate(widths):
            layers: list[nn.Module] = [nn.MaxPool2d(2)] if i > 0 else []
            for j in range(convs):
                layers.append(conv_bn(cin if j == 0 else w, w))
            cin = w
            stages.append(nn.Sequential(*layers))
        self.stages = nn.ModuleList(stages)
        self.feature_dims = tuple(widths)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout), nn.Linear(cin, spec.num_classes))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)  # (B, C, H, W)
        for stage in self.stages:
            x = stage(x)
        return x  # (B, widths[-1], H/4, W/4)

    def forward_head(self, f: torch.Tensor) -> torch.Tensor:
        return self.head(f)  # (B, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


@dataclass(frozen=True)
class CNNSize:
    widths: tuple[int, int, int]
    convs: int


CNN_SIZES = {
    "cnn-s": CNNSize((12, 24, 48), 1),
    "cnn-m": CNNSize((24, 48, 96), 2),
    "cnn-l": CNNSize((64, 128, 256), 2),
}


def _make_builder(size: CNNSize):
    def build(spec: DataSpec, *, dropout: float = 0.0) -> SmallCNN:
        return SmallCNN(spec, size.widths, size.convs, dropout=dropout)

    return build


for _name, _size in CNN_SIZES.items():
    register_backbone(_name)(_make_builder(_size))
