"""Backbone pools (ABS section 3.2): named backbones with their size and how to load them.

A pool entry knows its bytes (parameters and buffers) before it is ever loaded, so a
:class:`~dyninfer.methods.selection.manager.BackboneManager` can refuse a budget that cannot
hold it, and a loader that builds the model on a miss: from a dyninfer checkpoint (the trained
CNNs of the checkpoint cache, or torchvision architectures saved once) or from any factory.
"""

from __future__ import annotations

import copy
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Mapping, Sequence

import torch
from torch import nn

from ..data.datasets import DataSpec
from ..errors import CheckpointError, ConfigError
from ..models.registry import create_model, spec_from_dict
from ..train.checkpoint import read_checkpoint, save_checkpoint
from .cost import model_bytes


@dataclass(frozen=True)
class BackboneEntry:
    """One backbone of a pool.

    Attributes:
        name: pool name (also the trace path name).
        load: builds the model on CPU in eval mode (called on every cache miss).
        bytes: parameters + buffers, in bytes.
        source: where it loads from, for reports (``checkpoint:<path>`` or ``factory``).
    """

    name: str
    load: Callable[[], nn.Module]
    bytes: int
    source: str = "factory"


def state_bytes(state: Mapping[str, torch.Tensor]) -> int:
    """Bytes of every tensor in a state dict (parameters and persistent buffers)."""
    return int(sum(t.numel() * t.element_size() for t in state.values() if isinstance(t, torch.Tensor)))


def _check_fits(own: Mapping[str, torch.Tensor], state: Mapping[str, torch.Tensor], path, arch_name: str) -> None:
    missing, extra = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    bad = [k for k in own if k in state and tuple(own[k].shape) != tuple(state[k].shape)]
    if missing or extra or bad:
        raise CheckpointError(f"checkpoint {path} does not fit {arch_name}: missing {missing[:3]}, "
                              f"unexpected {extra[:3]}, shape mismatch {bad[:3]}")


def _assign(skeleton: nn.Module, state: Mapping[str, torch.Tensor], arch: dict, path) -> nn.Module:
    """A copy of a meta-device ``skeleton`` holding ``state``'s tensors (no random initialisation)."""
    model = copy.deepcopy(skeleton)
    _check_fits(model.state_dict(), state, path, arch["name"])
    model.load_state_dict(state, assign=True)
    if any(t.is_meta for t in list(model.parameters()) + list(model.buffers())):  # non-persistent buffers
        model = create_model(arch["name"], spec_from_dict(arch["spec"]), **arch["kwargs"])
        model.load_state_dict(state)
    model.dyninfer_arch = arch
    return model.eval()


def _meta_model(arch: dict) -> nn.Module:
    with torch.device("meta"):
        return create_model(arch["name"], spec_from_dict(arch["spec"]), **arch["kwargs"])


def load_backbone(path: str | os.PathLike, *, expect_model: str | None = None) -> nn.Module:
    """Load a dyninfer checkpoint fast: build the architecture on the meta device and assign the weights.

    Skips random initialisation (seconds for large torchvision models), so a cache miss costs
    about the time to read the file.

    Args:
        path: checkpoint written by :func:`~dyninfer.train.checkpoint.save_checkpoint`.
        expect_model: registry name the checkpoint must hold.

    Returns:
        the model on CPU in eval mode.

    Raises:
        CheckpointError: missing, unreadable, another architecture, or weights that do not fit.
    """
    payload = read_checkpoint(path)
    arch = payload["arch"]
    if expect_model is not None and arch["name"] != expect_model:
        raise CheckpointError(f"checkpoint {path} holds a {arch['name']!r}, not a {expect_model!r}")
    return _assign(_meta_model(arch), payload["state_dict"], arch, path)


class CheckpointLoader:
    """Loads one checkpoint on every call, reusing a meta-device skeleton of its architecture.

    Copying the skeleton is cheaper than running the builder again (no weight initialisation), and
    the skeleton holds no memory (meta tensors have no storage).

    Args:
        path: the checkpoint file.
        arch: its ``arch`` record (name, kwargs, spec).
    """

    def __init__(self, path: str | os.PathLike, arch: dict) -> None:
        self.path = Path(path)
        self.arch = arch
        self._skeleton: nn.Module | None = None
        self._lock = threading.Lock()

    def __call__(self) -> nn.Module:
        payload = read_checkpoint(self.path)
        if payload["arch"] != self.arch:
            raise CheckpointError(f"checkpoint {self.path} changed since the pool was built: it now holds "
                                  f"{payload['arch']['name']!r}; rebuild the pool")
        with self._lock:
            if self._skeleton is None:
                self._skeleton = _meta_model(self.arch)
            skeleton = self._skeleton
        return _assign(skeleton, payload["state_dict"], self.arch, self.path)


class BackbonePool:
    """An ordered set of backbones, cheapest first by convention.

    Args:
        entries: the backbones; names must be unique.
    """

    def __init__(self, entries: Sequence[BackboneEntry]) -> None:
        names = [e.name for e in entries]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ConfigError(f"backbone pool has duplicate names {dup}")
        if not entries:
            raise ConfigError("a backbone pool needs at least one backbone")
        self._entries = {e.name: e for e in entries}

    @property
    def names(self) -> list[str]:
        return list(self._entries)

    def __getitem__(self, name: str) -> BackboneEntry:
        try:
            return self._entries[name]
        except KeyError:
            raise ConfigError(f"backbone {name!r} is not in the pool {self.names}") from None

    def __iter__(self) -> Iterator[BackboneEntry]:
        return iter(self._entries.values())

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def total_bytes(self) -> int:
        return sum(e.bytes for e in self)

    @property
    def largest_bytes(self) -> int:
        return max(e.bytes for e in self)

    # ------------------------------------------------------------------ constructors
    @classmethod
    def from_checkpoints(cls, paths: Mapping[str, str | os.PathLike]) -> "BackbonePool":
        """Backbones loaded on a miss from dyninfer checkpoint files (name -> path).

        Raises:
            CheckpointError: if a file is missing or unreadable (checked now, not at the first miss).
        """
        entries = []
        for name, path in paths.items():
            payload = read_checkpoint(path)
            entries.append(BackboneEntry(name, CheckpointLoader(path, payload["arch"]),
                                         state_bytes(payload["state_dict"]), f"checkpoint:{path}"))
        return cls(entries)

    @classmethod
    def from_factories(cls, factories: Mapping[str, Callable[[], nn.Module]]) -> "BackbonePool":
        """Backbones built by factories (called on every miss); sizes from one build now."""
        entries = []
        for name, fn in factories.items():
            entries.append(BackboneEntry(name, lambda f=fn: f().eval(), sum(model_bytes(fn()).values()), "factory"))
        return cls(entries)

    @classmethod
    def from_models(cls, models: Mapping[str, nn.Module]) -> "BackbonePool":
        """Backbones copied from in-memory models on every miss (tests, notebooks)."""
        frozen = {n: copy.deepcopy(m).cpu().eval() for n, m in models.items()}
        return cls([BackboneEntry(n, lambda m=m: copy.deepcopy(m), sum(model_bytes(m).values()), "copy")
                    for n, m in frozen.items()])

    @classmethod
    def from_registry(cls, names: Sequence[str], spec: DataSpec, folder: str | os.PathLike, *,
                      weights: str | None = None, model_kwargs: Mapping[str, dict] | None = None,
                      progress: Callable[[str], None] | None = None) -> "BackbonePool":
        """Build registry backbones once, save them as checkpoints in ``folder``, load from there on a miss.

        For torchvision names (``tv-*``) ``weights`` goes to their real weight-loading code
        (``None`` builds the untrained architecture, as offline tests do). Files already in
        ``folder`` are reused.

        Args:
            names: backbone registry names.
            spec: the data the backbones are built for.
            folder: where the checkpoints live.
            weights: torchvision weights name or None (ignored by non-torchvision backbones).
            model_kwargs: extra builder arguments per name.
            progress: called with a message before each build.
        """
        folder = Path(folder)
        paths = {}
        for name in names:
            kwargs = dict((model_kwargs or {}).get(name, {}))
            if name.startswith("tv-"):
                kwargs.setdefault("weights", weights)
            tag = "-".join(f"{k}={v}" for k, v in sorted(kwargs.items()) if v is not None)
            path = folder / spec.name / (f"{name}{'-' + tag if tag else ''}.pt")
            if not path.exists():
                if progress:
                    progress(f"[pool] building {name} -> {path}")
                model = create_model(name, spec, **kwargs)
                save_checkpoint(model, path, {"source": "registry", "weights": weights})
            paths[name] = path
        return cls.from_checkpoints(paths)
