"""The selection runtime (ABS section 3.5): analyse, choose, group by backbone, run each group.

Per batch: validate, compute the policy inputs (features + complexity), choose one backbone per
image, then run each backbone's group through the :class:`BackboneManager` — backbones already
resident first (most recently used first), so a batch evicts as little as it can. Predictions are
those the trace simulation of the same selector gives (a test holds them together).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch

from ...errors import ConfigError
from ...runtime.validate import check_batch
from .manager import BackboneManager
from .selector import BackboneSelector


@dataclass
class SelectionResult:
    """What the runtime did.

    Attributes:
        pred: (N,) predicted class.
        path: (N,) chosen backbone index.
        seconds: wall time, validation included.
        decide_seconds: time spent on analyser + features + policy.
        backbone_seconds: (P,) time inside each backbone (inference only).
        load_seconds: time the manager spent loading backbones during the call (switching overhead; with
            several threads sharing one manager it includes loads made for the other threads meanwhile).
        counts: (P,) images sent to each backbone.
    """

    pred: torch.Tensor
    path: torch.Tensor
    seconds: float
    decide_seconds: float
    backbone_seconds: np.ndarray
    load_seconds: float
    counts: np.ndarray = field(default_factory=lambda: np.zeros(0, int))

    @property
    def switching_share(self) -> float:
        """Load time as a share of total wall time."""
        return self.load_seconds / self.seconds if self.seconds > 0 else 0.0


def resident_first(present: list[int], names: list[str], manager: BackboneManager) -> list[int]:
    """Order backbone indices: resident ones first (most recently used first), then the ones to load.

    Running resident backbones before loading others means a batch evicts only what it must.
    """
    lru = manager.resident()  # least recently used first
    resident = sorted((p for p in present if names[p] in lru), key=lambda p: -lru.index(names[p]))
    return resident + [p for p in present if names[p] not in lru]


class SelectionRuntime:
    """Runs a fitted selector on batches with backbones from a manager.

    Args:
        selector: a fitted :class:`BackboneSelector`.
        manager: a :class:`BackboneManager` whose pool holds every backbone of ``selector.paths``.
        seed: seed of the generator used when the selector samples (``mode="sampled"``).
        resident_first: run the groups of resident backbones before loading others.
    """

    def __init__(self, selector: BackboneSelector, manager: BackboneManager, *, seed: int = 0,
                 resident_first: bool = True) -> None:
        selector._check_fitted()
        missing = [p for p in selector.paths if p not in manager.pool.names]
        if missing:
            raise ConfigError(f"the manager's pool has no backbones {missing}; it has {manager.pool.names}")
        self.selector = selector.to(manager.device)
        self.manager = manager
        self.device = manager.device
        self.seed = seed
        self.resident_first = resident_first
        self.generator = torch.Generator().manual_seed(seed)

    def _order(self, present: list[int]) -> list[int]:
        return resident_first(present, self.selector.paths, self.manager) if self.resident_first else present

    @torch.inference_mode()
    def __call__(self, x: torch.Tensor) -> SelectionResult:
        """Classify a batch (N, C, H, W) in [0, 1]."""
        t0 = time.perf_counter()
        x = check_batch(x, self.selector.input_shape_, where="selection runtime").to(self.device)
        n, n_paths = x.shape[0], len(self.selector.paths)
        choice = self.selector.choose(x, self.generator)  # (N,) on CPU
        t_dec = time.perf_counter() - t0
        pred = torch.empty(n, dtype=torch.long)
        secs = np.zeros(n_paths)
        counts = np.bincount(choice.numpy(), minlength=n_paths)
        load0 = self.manager.stats().load_seconds
        for p in self._order([int(v) for v in np.flatnonzero(counts)]):
            idx = (choice == p).nonzero().squeeze(1)  # (n_p,)
            with self.manager.use(self.selector.paths[p]) as model:
                ts = time.perf_counter()
                pred[idx] = model(x[idx.to(self.device)]).argmax(1).cpu()  # (n_p,)
                secs[p] += time.perf_counter() - ts
        load = self.manager.stats().load_seconds - load0
        return SelectionResult(pred, choice, time.perf_counter() - t0, t_dec, secs, load, counts)

    def run(self, x: torch.Tensor, batch_size: int = 256) -> SelectionResult:
        """Run over a large tensor (N, C, H, W) in batches; results concatenated, times summed."""
        parts = [self(x[i:i + batch_size]) for i in range(0, x.shape[0], batch_size)]
        return SelectionResult(torch.cat([r.pred for r in parts]), torch.cat([r.path for r in parts]),
                               sum(r.seconds for r in parts), sum(r.decide_seconds for r in parts),
                               np.sum([r.backbone_seconds for r in parts], 0), sum(r.load_seconds for r in parts),
                               np.sum([r.counts for r in parts], 0))
