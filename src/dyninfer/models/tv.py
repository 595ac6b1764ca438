"""torchvision's classification builders by name, with their real weight-loading code.

``tv-resnet18`` etc. wrap ``torchvision.models.get_model``. ``weights`` takes a torchvision
weights name (``"DEFAULT"``, ``"IMAGENET1K_V1"``; needs the weights in the torch hub cache, as
no download is attempted when ``$DYNINFER_OFFLINE`` is set) or a path to a local state-dict file.
``weights=None`` builds the architecture untrained (structure, size and cost measurements).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torchvision
from torch import nn

from ..data.datasets import DataSpec
from ..errors import CheckpointError, ConfigError
from .registry import Normalize, register_backbone

TV_MODELS = {
    "tv-resnet18": "resnet18",
    "tv-resnet50": "resnet50",
    "tv-mobilenet_v2": "mobilenet_v2",
    "tv-mobilenet_v3_small": "mobilenet_v3_small",
    "tv-mobilenet_v3_large": "mobilenet_v3_large",
    "tv-densenet121": "densenet121",
    "tv-densenet161": "densenet161",
    "tv-efficientnet_b0": "efficientnet_b0",
}
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class TorchvisionBackbone(nn.Module):
    """Normalise, repeat grey input to 3 channels if needed, run a torchvision classifier."""

    def __init__(self, net: nn.Module, spec: DataSpec, mean, std) -> None:
        super().__init__()
        self.in_channels = spec.in_channels
        self.stem = Normalize(mean, std)
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.in_channels == 1:
            x = x.expand(-1, 3, -1, -1)  # (B, 3, H, W)
        return self.net(self.stem(x))


def _replace_classifier(net: nn.Module, num_classes: int) -> None:
    """Swap the final linear layer for one with ``num_classes`` outputs."""
    for attr in ("fc", "classifier"):
        mod = getattr(net, attr, None)
        if isinstance(mod, nn.Linear):
            if mod.out_features == num_classes:
                return
            setattr(net, attr, nn.Linear(mod.in_features, num_classes))
            return
        if isinstance(mod, nn.Sequential) and isinstance(mod[-1], nn.Linear):
            if mod[-1].out_features == num_classes:
                return
            mod[-1] = nn.Linear(mod[-1].in_features, num_classes)
            return
    raise ConfigError(f"cannot find the classifier of {type(net).__name__} to resize")


def build_torchvision(tv_name: str, spec: DataSpec, weights: str | os.PathLike | None = None) -> TorchvisionBackbone:
    """Build ``torchvision.models.<tv_name>`` for ``spec``, optionally with weights.

    Args:
        tv_name: torchvision builder name, e.g. ``resnet18``.
        spec: the data; the classifier is resized to ``spec.num_classes``.
        weights: None, a torchvision weights name, or a local state-dict path.

    Raises:
        CheckpointError: if weights cannot be found or do not fit the architecture.
    """
    if weights is None:
        net = torchvision.models.get_model(tv_name, weights=None, num_classes=spec.num_classes)
        return TorchvisionBackbone(net, spec, spec.mean * (3 // spec.in_channels), spec.std * (3 // spec.in_channels))
    path = Path(str(weights))
    if path.suffix in (".pt", ".pth") or path.exists():
        net = torchvision.models.get_model(tv_name, weights=None)
        if not path.exists():
            raise CheckpointError(f"weights file {path} does not exist")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:
            raise CheckpointError(f"cannot read weights {path}: {e}") from e
        try:
            net.load_state_dict(state)
        except RuntimeError as e:
            raise CheckpointError(f"weights {path} do not fit torchvision {tv_name}: {str(e)[:300]}") from e
    else:
        try:
            w = torchvision.models.get_model_weights(tv_name)[str(weights)]
        except KeyError:
            raise ConfigError(f"{tv_name} has no weights {weights!r}; "
                              f"known: {[e.name for e in torchvision.models.get_model_weights(tv_name)]}") from None
        if os.environ.get("DYNINFER_OFFLINE"):
            cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(w.url).name
            if not cached.exists():
                raise CheckpointError(f"{tv_name} weights {w.name} are not in the torch hub cache ({cached}) "
                                      f"and DYNINFER_OFFLINE forbids downloading; copy the file there or "
                                      f"pass a local state-dict path")
        try:
            net = torchvision.models.get_model(tv_name, weights=w)
        except Exception as e:  # network errors surface as URLError, OSError, RuntimeError
            raise CheckpointError(f"cannot load {tv_name} weights {w.name}: {e}. Without network, put "
                                  f"{Path(w.url).name} in {Path(torch.hub.get_dir()) / 'checkpoints'} "
                                  f"or pass a local state-dict path") from e
    if getattr(net, "fc", getattr(net, "classifier", None)) is not None:
        _replace_classifier(net, spec.num_classes)
    return TorchvisionBackbone(net, spec, IMAGENET_MEAN, IMAGENET_STD)


def _make(tv_name: str):
    def build(spec: DataSpec, *, weights: str | None = None) -> TorchvisionBackbone:
        return build_torchvision(tv_name, spec, weights)

    build.__doc__ = f"torchvision {tv_name} (see :func:`build_torchvision`)."
    return build


for _name, _tv in TV_MODELS.items():
    register_backbone(_name)(_make(_tv))
