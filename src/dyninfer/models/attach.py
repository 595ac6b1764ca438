"""Exits on any backbone: attach heads at named stages of an existing model and train only those heads.

A *splitter* cuts a model into an ordered list of named blocks and its final classifier; the
wrapper groups the blocks into segments ending at the requested exit points and puts a new head
after each. The backbone's modules are shared, not copied, and its own classifier stays the last
exit, so the wrapped network's last exit is bitwise the original model.

Supported out of the box: the zoo's :class:`~dyninfer.models.cnn.SmallCNN` (``stem``,
``stages.0`` ...), torchvision ResNets (``stem``, ``layer1`` ... ``layer4``), torchvision networks
with ``features``/``avgpool``/``classifier`` (MobileNet, EfficientNet: ``features.0`` ...), and
``nn.Sequential`` (children by index, the last child is the classifier). Add others with
:func:`register_splitter`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Sequence

import torch
from torch import nn

from ..errors import CheckpointError, ConfigError
from ..io import read_payload, write_payload
from ..registry import Registry
from ..runtime.cost import model_device
from .cnn import SmallCNN
from .exits import EarlyExitNetwork
from .tv import TorchvisionBackbone

Blocks = list[tuple[str, nn.Module]]
Splitter = Callable[[nn.Module], tuple[Blocks, nn.Module]]
_SPLITTERS: list[tuple[type, Splitter]] = []
EXIT_HEADS: Registry[Callable[[int, int], nn.Module]] = Registry("exit head")


def register_splitter(cls: type):
    """Decorator: ``fn(model) -> (blocks, final_head)`` cuts models of class ``cls`` (and subclasses)."""

    def add(fn: Splitter) -> Splitter:
        if any(c is cls for c, _ in _SPLITTERS):
            raise ConfigError(f"a splitter for {cls.__name__} is already registered")
        _SPLITTERS.append((cls, fn))
        return fn

    return add


def split_backbone(model: nn.Module) -> tuple[Blocks, nn.Module]:
    """Named blocks (in execution order) and the final classifier of ``model``.

    Raises:
        ConfigError: no splitter knows the model's class.
    """
    for cls, fn in reversed(_SPLITTERS):  # most recently registered (most specific) first
        if isinstance(model, cls):
            return fn(model)
    raise ConfigError(f"cannot attach exits to a {type(model).__name__}: no splitter registered for it; "
                      f"known: {[c.__name__ for c, _ in _SPLITTERS]}. Register one with register_splitter().")


@register_splitter(nn.Sequential)
def _split_sequential(model: nn.Sequential) -> tuple[Blocks, nn.Module]:
    children = list(model.named_children())
    if len(children) < 2:
        raise ConfigError("an nn.Sequential needs at least one block and a final classifier to take exits")
    return children[:-1], children[-1][1]


@register_splitter(SmallCNN)
def _split_small_cnn(model: SmallCNN) -> tuple[Blocks, nn.Module]:
    return [("stem", model.stem)] + [(f"stages.{i}", s) for i, s in enumerate(model.stages)], model.head


class _TVInput(nn.Module):
    """What TorchvisionBackbone does before the torchvision net: grey to RGB, normalise."""

    def __init__(self, tvb: TorchvisionBackbone, *extra: nn.Module) -> None:
        super().__init__()
        self.in_channels = tvb.in_channels
        self.norm = tvb.stem
        self.extra = nn.Sequential(*extra)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.in_channels == 1:
            x = x.expand(-1, 3, -1, -1)  # (B, 3, H, W)
        return self.extra(self.norm(x))


@register_splitter(TorchvisionBackbone)
def _split_torchvision(model: TorchvisionBackbone) -> tuple[Blocks, nn.Module]:
    net = model.net
    if all(hasattr(net, a) for a in ("conv1", "bn1", "relu", "maxpool", "layer1", "layer4", "avgpool", "fc")):
        blocks: Blocks = [("stem", _TVInput(model, net.conv1, net.bn1, net.relu, net.maxpool))]
        blocks += [(f"layer{i}", getattr(net, f"layer{i}")) for i in range(1, 5)]
        return blocks, nn.Sequential(net.avgpool, nn.Flatten(1), net.fc)
    if all(hasattr(net, a) for a in ("features", "avgpool", "classifier")) and isinstance(net.features, nn.Sequential):
        blocks = [("stem", _TVInput(model))] + [(f"features.{i}", f) for i, f in enumerate(net.features)]
        return blocks, nn.Sequential(net.avgpool, nn.Flatten(1), net.classifier)
    raise ConfigError(f"no exit points known for torchvision {type(net).__name__}; supported: ResNets and "
                      f"networks with features/avgpool/classifier (MobileNet, EfficientNet)")


@EXIT_HEADS.register("linear")
def linear_head(channels: int, num_classes: int) -> nn.Module:
    """Global average pool, linear classifier (the structure of a ResNet's own head)."""
    return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(1), nn.Linear(channels, num_classes))


@EXIT_HEADS.register("pool-mlp")
def pool_mlp_head(channels: int, num_classes: int, hidden: int = 128) -> nn.Module:
    """2x2 average pool (keeps coarse layout, which early features need), then a one-hidden-layer MLP."""
    return nn.Sequential(nn.AdaptiveAvgPool2d(2), nn.Flatten(1), nn.Linear(4 * channels, hidden), nn.ReLU(inplace=True),
                         nn.Linear(hidden, num_classes))


class ExitWrapper(EarlyExitNetwork):
    """An existing classifier with extra exits after named blocks.

    Args:
        backbone: a trained model (anything :func:`split_backbone` can cut); its modules are shared.
        at: block names after which an exit is added, in execution order (e.g. ``["stages.0", "stages.1"]``
            for a SmallCNN, ``["layer1", "layer2", "layer3"]`` for a ResNet).
        head: registry name of the exit head (``linear``, ``pool-mlp``).
        input_shape: (C, H, W); taken from the zoo model's data spec when omitted.

    The last exit is the backbone's own classifier (named ``final``).
    """

    def __init__(self, backbone: nn.Module, at: Sequence[str], *, head: str = "pool-mlp",
                 input_shape: tuple[int, int, int] | None = None) -> None:
        super().__init__()
        blocks, final = split_backbone(backbone)
        names = [n for n, _ in blocks]
        at = list(at)
        if not at:
            raise ConfigError(f"name at least one exit point; this model has blocks {names}")
        bad = [a for a in at if a not in names]
        if bad:
            raise ConfigError(f"no block named {bad}; exit points must be among {names}")
        pos = [names.index(a) for a in at]
        if pos != sorted(set(pos)):
            raise ConfigError(f"exit points must be distinct and in execution order {names}, got {at}")
        if pos[-1] == len(names) - 1:
            raise ConfigError(f"{at[-1]} is the last block: its exit is the backbone's own classifier already")
        if input_shape is None:
            spec = getattr(backbone, "dyninfer_arch", {}).get("spec")
            if spec is None:
                raise ConfigError("pass input_shape=(C, H, W): the backbone was not built by create_model")
            input_shape = (spec["in_channels"], *spec["image_size"])
        self.input_shape = tuple(input_shape)  # type: ignore[assignment]
        bounds = [0] + [p + 1 for p in pos] + [len(names)]
        self.segments = nn.ModuleList([nn.Sequential(*[m for _, m in blocks[a:b]]) for a, b in zip(bounds, bounds[1:])])
        self.head_kind = head
        make = EXIT_HEADS.get(head)
        was_training = backbone.training
        backbone.eval()
        with torch.no_grad():
            device = model_device(backbone)
            carry = torch.zeros(2, *self.input_shape, device=device)
            shapes = []
            for seg in self.segments:
                carry = seg(carry)
                shapes.append(tuple(carry.shape))
            num_classes = int(final(carry).shape[-1])
        backbone.train(was_training)
        for s in shapes[:-1]:
            if len(s) != 4:
                raise ConfigError(f"exit points must produce feature maps (N, C, H, W), got {s}")
        self.heads = nn.ModuleList([make(s[1], num_classes).to(device) for s in shapes[:-1]] + [final])
        self.exit_names = at + ["final"]


def attach_exits(backbone: nn.Module, at: Sequence[str], *, head: str = "pool-mlp",
                 input_shape: tuple[int, int, int] | None = None) -> ExitWrapper:
    """Shorthand for :class:`ExitWrapper` (see there)."""
    return ExitWrapper(backbone, at, head=head, input_shape=input_shape)


def save_exit_heads(net: EarlyExitNetwork, path: str | os.PathLike, meta: dict | None = None) -> Path:
    """Write the weights of every head but the last (the backbone's own) to ``path`` atomically."""
    path = Path(path)
    return write_payload(path, {"format": "dyninfer-exit-heads-2", "exit_names": list(net.exit_names),
                                "heads": net.head_state(range(net.n_exits - 1)), "meta": meta or {}})


def load_exit_heads(net: EarlyExitNetwork, path: str | os.PathLike) -> dict:
    """Load heads saved by :func:`save_exit_heads` into ``net``; returns the saved metadata.

    Raises:
        CheckpointError: missing, unreadable, or written for other exit points.
    """
    payload = read_payload(path, fmt="dyninfer-exit-heads-2", what="exit heads file")
    if payload["exit_names"] != list(net.exit_names):
        raise CheckpointError(f"{path} holds heads for exits {payload['exit_names']}, this network has {net.exit_names}")
    try:
        net.load_head_state(payload["heads"])
    except ConfigError as e:
        raise CheckpointError(f"{path}: {e}") from e
    return payload["meta"]
