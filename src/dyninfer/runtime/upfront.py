"""Batched execution of up-front policies (backbone selection, subnetwork choice).

Per batch: validate, let the chooser pick one path per image from the image alone, then run each
path's group once — through a :class:`~dyninfer.runtime.manager.BackboneManager` when the paths
live under a memory budget (resident paths first, most recently used first, so a batch evicts as
little as it can), or from a plain mapping of loaded modules.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any, Iterator, Mapping, Protocol, Sequence

import numpy as np
import torch
from torch import nn

from ..errors import ConfigError
from .base import Runtime, RuntimeResult
from .manager import BackboneManager
from .validate import PIXEL_RANGE


class Chooser(Protocol):
    """What an up-front runtime asks of a policy."""

    def choose(self, x: torch.Tensor, knob: Any) -> torch.Tensor:
        """(N,) path index per image of ``x`` (N, C, H, W), on the CPU."""

    def check_knob(self, value: Any) -> Any:
        """The knob value, validated (raise ConfigError on a bad one)."""


def resident_first(present: list[int], names: list[str], manager: BackboneManager) -> list[int]:
    """Order path indices: resident ones first (most recently used first), then the ones to load.

    Running resident backbones before loading others means a batch evicts only what it must.
    """
    lru = manager.resident()  # least recently used first
    resident = sorted((p for p in present if names[p] in lru), key=lambda p: -lru.index(names[p]))
    return resident + [p for p in present if names[p] not in lru]


class UpfrontRuntime(Runtime):
    """Chooses a path per image, then runs each path on its images.

    Args:
        paths: P path names (chooser output indexes them).
        chooser: the fitted policy (see :class:`Chooser`); it runs on ``device``.
        modules: a :class:`BackboneManager` whose pool holds every path, or a mapping name -> loaded module.
        knob: the initial knob value.
        path_flops: (P,) FLOPs per sample of each path.
        decide_flops: FLOPs per sample of the chooser (charged to every sample).
        resident_first: with a manager, run the groups of resident paths before loading others.
        input_shape, device, value_range: see :class:`~dyninfer.runtime.base.Runtime`.
    """

    def __init__(self, paths: Sequence[str], chooser: Chooser, modules: BackboneManager | Mapping[str, nn.Module],
                 knob: Any, *, path_flops: Sequence[float] | None = None, decide_flops: float = 0.0,
                 resident_first: bool = True, input_shape: tuple[int, ...] | None = None,
                 device: str | torch.device | None = None, value_range: tuple[float, float] | None = PIXEL_RANGE) -> None:
        if isinstance(modules, BackboneManager):
            have = modules.pool.names
            device = modules.device if device is None else device
        else:
            have = list(modules)
        missing = [p for p in paths if p not in have]
        if missing:
            raise ConfigError(f"no modules for paths {missing}; given {have}")
        super().__init__(paths, input_shape=input_shape, device=device or "cpu", value_range=value_range)
        if isinstance(modules, BackboneManager) and torch.device(modules.device) != self.device:
            raise ConfigError(f"the manager loads onto {modules.device}, the runtime runs on {self.device}")
        self.chooser = chooser
        self.modules = modules
        self.resident_first = resident_first
        self.path_flops = np.asarray(path_flops if path_flops is not None else np.zeros(len(paths)), float)
        self.decide_flops = float(decide_flops)
        self.knob = knob

    def check_knob(self, value: Any) -> Any:
        return self.chooser.check_knob(value)

    @contextlib.contextmanager
    def _use(self, name: str) -> Iterator[nn.Module]:
        if isinstance(self.modules, BackboneManager):
            with self.modules.use(name) as m:
                yield m
        else:
            yield self.modules[name]

    def _order(self, present: list[int]) -> list[int]:
        if self.resident_first and isinstance(self.modules, BackboneManager):
            return resident_first(present, self.paths, self.modules)
        return present

    def _load_seconds(self) -> float:
        return self.modules.stats().load_seconds if isinstance(self.modules, BackboneManager) else 0.0

    def _execute(self, x: torch.Tensor, knob: Any, forced: int | None) -> RuntimeResult:
        t0 = time.perf_counter()
        x = x.to(self.device)
        n, P = x.shape[0], len(self.paths)
        choice = torch.full((n,), forced, dtype=torch.long) if forced is not None else self.chooser.choose(x, knob)
        t_dec = time.perf_counter() - t0
        pred = torch.empty(n, dtype=torch.long)
        prob = torch.empty(n)
        secs = np.zeros(P)
        counts = np.bincount(choice.numpy(), minlength=P)
        load0 = self._load_seconds()
        for p in self._order([int(v) for v in np.flatnonzero(counts)]):
            idx = (choice == p).nonzero().squeeze(1)  # (n_p,)
            with self._use(self.paths[p]) as model:
                ts = time.perf_counter()
                logits = model(x[idx.to(self.device)]).float().cpu()  # (n_p, K)
                pred[idx] = logits.argmax(1)
                prob[idx] = logits.softmax(1).amax(1)
                secs[p] += time.perf_counter() - ts
        flops = self.path_flops[choice.numpy()] + (0.0 if forced is not None else self.decide_flops)
        return RuntimeResult(pred, choice, prob, flops, time.perf_counter() - t0, secs, counts, t_dec,
                             self._load_seconds() - load0)
