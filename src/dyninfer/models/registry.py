"""Backbone registry: ``create_model(name, spec)`` builds any registered architecture for a dataset."""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn

from ..data.datasets import DataSpec
from ..registry import Registry

BACKBONES: Registry[Callable[..., nn.Module]] = Registry("backbone")


def register_backbone(name: str):
    """Decorator: register ``builder(spec: DataSpec, **kwargs) -> nn.Module`` as ``name``."""
    return BACKBONES.register(name)


def create_model(name: str, spec: DataSpec, **kwargs: Any) -> nn.Module:
    """Build the backbone ``name`` for data described by ``spec``.

    The returned module takes images (N, C, H, W) in [0, 1] and returns logits (N, num_classes);
    input normalisation is part of the model, so deployed inputs need no preprocessing.
    The model records how it was built in ``model.dyninfer_arch`` (checked when loading checkpoints).
    """
    model = BACKBONES.get(name)(spec, **kwargs)
    model.dyninfer_arch = {"name": name, "kwargs": dict(kwargs), "spec": _spec_dict(spec)}
    return model


def list_models(pattern: str = "*") -> list[str]:
    return BACKBONES.names(pattern)


def _spec_dict(spec: DataSpec) -> dict:
    return {"name": spec.name, "num_classes": spec.num_classes, "in_channels": spec.in_channels,
            "image_size": list(spec.image_size), "mean": list(spec.mean), "std": list(spec.std),
            "class_names": list(spec.class_names)}


def spec_from_dict(d: dict) -> DataSpec:
    return DataSpec(name=d["name"], num_classes=d["num_classes"], in_channels=d["in_channels"],
                    image_size=tuple(d["image_size"]), mean=tuple(d["mean"]), std=tuple(d["std"]),
                    class_names=tuple(d.get("class_names", ())))


class Normalize(nn.Module):
    """(x - mean) / std per channel, stored as buffers so checkpoints carry it."""

    def __init__(self, mean, std) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std
