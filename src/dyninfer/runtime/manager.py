"""The backbone manager (ABS section 3.2): an LRU cache of loaded backbones under a byte budget.

``sum(size(model_i)) > M  =>  evict least-recently-used models``. A backbone in use (inside
``with manager.use(name)``) is pinned and never evicted, so the bytes of every model the manager
holds — resident or being loaded — stay within the budget at all times; a thread whose load
cannot fit waits until another thread releases a backbone. Safe to call from several threads.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Iterator

import torch
from torch import nn

from ..check import number
from ..errors import CheckpointError, ConfigError, DyninferError
from .cost import model_bytes
from .pool import BackbonePool


@dataclass
class ManagerStats:
    """Counters of a :class:`BackboneManager` since construction (or :meth:`BackboneManager.reset_stats`).

    Attributes:
        hits: requests served by a resident backbone.
        misses: requests that loaded a backbone.
        evictions: backbones dropped to make room.
        load_seconds: total wall time spent loading (reading, building, moving to the device).
        peak_bytes: largest bytes held at once (resident + reserved for loads in flight).
        peak_measured_bytes: largest sum of ``model_bytes`` over resident models, measured after each load.
        budget_bytes: the budget.
        loads: misses per backbone.
    """

    hits: int = 0
    misses: int = 0
    evictions: int = 0
    load_seconds: float = 0.0
    peak_bytes: int = 0
    peak_measured_bytes: int = 0
    budget_bytes: int = 0
    loads: dict[str, int] = field(default_factory=dict)

    @property
    def requests(self) -> int:
        return self.hits + self.misses

    @property
    def hit_rate(self) -> float:
        return self.hits / self.requests if self.requests else 0.0

    def to_dict(self) -> dict:
        return {"hits": self.hits, "misses": self.misses, "evictions": self.evictions,
                "hit_rate": self.hit_rate, "load_seconds": self.load_seconds, "peak_bytes": self.peak_bytes,
                "peak_measured_bytes": self.peak_measured_bytes, "budget_bytes": self.budget_bytes,
                "loads": dict(self.loads)}


class BackboneManager:
    """Keeps loaded backbones of a pool within ``budget_bytes`` on one device, evicting LRU ones.

    Args:
        pool: the backbones and how to load them.
        budget_bytes: most bytes of parameters and buffers held on ``device`` at once.
        device: where backbones are loaded and run.
        wait_timeout_s: how long a load may wait for pinned backbones to be released.

    Raises:
        ConfigError: if the budget cannot hold the largest backbone of the pool.
    """

    def __init__(self, pool: BackbonePool, budget_bytes: int, *, device: str | torch.device = "cpu",
                 wait_timeout_s: float = 60.0) -> None:
        number("budget_bytes", budget_bytes, lo=1, integer=True)
        number("wait_timeout_s", wait_timeout_s, lo=0)
        if budget_bytes < pool.largest_bytes:
            big = max(pool, key=lambda e: e.bytes)
            raise ConfigError(f"memory budget of {budget_bytes} bytes is smaller than the largest backbone "
                              f"{big.name!r} ({big.bytes} bytes); raise the budget to at least "
                              f"{pool.largest_bytes} bytes or drop {big.name!r} from the pool")
        self.pool = pool
        self.budget_bytes = int(budget_bytes)
        self.device = torch.device(device)
        self.wait_timeout_s = wait_timeout_s
        self._cond = threading.Condition()
        self._cache: OrderedDict[str, nn.Module] = OrderedDict()  # LRU first
        self._bytes: dict[str, int] = {}  # name -> bytes held (resident or reserved)
        self._pins: dict[str, int] = {}
        self._loading: set[str] = set()
        self._stats = ManagerStats(budget_bytes=self.budget_bytes)

    # ------------------------------------------------------------------ inspection
    @property
    def used_bytes(self) -> int:
        """Bytes held now: resident backbones plus reservations of loads in flight."""
        with self._cond:
            return sum(self._bytes.values())

    def resident(self) -> list[str]:
        """Names of loaded backbones, least recently used first."""
        with self._cond:
            return list(self._cache)

    def resident_bytes(self) -> dict[str, int]:
        """Measured bytes of resident backbones per device (``model_bytes`` summed)."""
        with self._cond:
            models = list(self._cache.values())
        out: dict[str, int] = {}
        for m in models:
            for dev, b in model_bytes(m).items():
                out[dev] = out.get(dev, 0) + b
        return out

    def stats(self) -> ManagerStats:
        """A snapshot of the counters."""
        with self._cond:
            s = self._stats
            return ManagerStats(s.hits, s.misses, s.evictions, s.load_seconds, s.peak_bytes,
                                s.peak_measured_bytes, s.budget_bytes, dict(s.loads))

    def reset_stats(self) -> None:
        """Zero the counters (peaks restart from what is held now); resident backbones stay."""
        with self._cond:
            used = sum(self._bytes.values())
            self._stats = ManagerStats(peak_bytes=used, peak_measured_bytes=used, budget_bytes=self.budget_bytes)

    # ------------------------------------------------------------------ core
    def _evict_for(self, need: int) -> bool:
        """Evict unpinned LRU backbones until ``need`` more bytes fit; False if pinned ones block it."""
        while sum(self._bytes.values()) + need > self.budget_bytes:
            victim = next((n for n in self._cache if self._pins.get(n, 0) == 0), None)
            if victim is None:
                return False
            del self._cache[victim]
            del self._bytes[victim]
            self._pins.pop(victim, None)
            self._stats.evictions += 1
        return True

    def _acquire(self, name: str) -> nn.Module:
        entry = self.pool[name]
        deadline = time.monotonic() + self.wait_timeout_s
        with self._cond:
            while True:
                if name in self._cache:
                    self._cache.move_to_end(name)
                    self._pins[name] = self._pins.get(name, 0) + 1
                    self._stats.hits += 1
                    return self._cache[name]
                if name not in self._loading and self._evict_for(entry.bytes):
                    self._loading.add(name)
                    self._bytes[name] = entry.bytes  # reserve before loading
                    self._stats.misses += 1
                    self._stats.loads[name] = self._stats.loads.get(name, 0) + 1
                    self._stats.peak_bytes = max(self._stats.peak_bytes, sum(self._bytes.values()))
                    break
                left = deadline - time.monotonic()
                if left <= 0:
                    raise DyninferError(f"backbone manager: waited {self.wait_timeout_s:.0f} s to load {name!r} "
                                        f"({entry.bytes} bytes) but the backbones in use "
                                        f"{[n for n, c in self._pins.items() if c]} fill the budget of "
                                        f"{self.budget_bytes} bytes; raise the budget or use fewer at once")
                self._cond.wait(left)
        t0 = time.perf_counter()
        try:
            model = entry.load().to(self.device).eval()
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
        except Exception as e:
            with self._cond:
                self._loading.discard(name)
                self._bytes.pop(name, None)
                self._cond.notify_all()
            if isinstance(e, DyninferError):
                raise
            raise CheckpointError(f"backbone manager: loading {name!r} from {entry.source} failed: "
                                  f"{type(e).__name__}: {e}") from e
        seconds = time.perf_counter() - t0
        actual = model_bytes(model).get(str(self.device), 0) if self.device.type != "cuda" else \
            sum(b for d, b in model_bytes(model).items() if d.startswith("cuda"))
        with self._cond:
            self._loading.discard(name)
            self._stats.load_seconds += seconds
            if actual > entry.bytes and not self._evict_for(actual - entry.bytes):
                self._bytes.pop(name, None)
                self._cond.notify_all()
                raise DyninferError(f"backbone {name!r} holds {actual} bytes on {self.device}, more than the "
                                    f"{entry.bytes} its pool entry declares, and the budget cannot fit it")
            self._bytes[name] = actual
            self._cache[name] = model
            self._pins[name] = 1
            held = sum(self._bytes.values())
            self._stats.peak_bytes = max(self._stats.peak_bytes, held)
            measured = sum(sum(model_bytes(m).values()) for m in self._cache.values())
            self._stats.peak_measured_bytes = max(self._stats.peak_measured_bytes, measured)
            self._cond.notify_all()
        return model

    def _release(self, name: str) -> None:
        with self._cond:
            self._pins[name] = max(self._pins.get(name, 0) - 1, 0)
            self._cond.notify_all()

    @contextlib.contextmanager
    def use(self, name: str) -> Iterator[nn.Module]:
        """Pin backbone ``name`` (loading it on a miss) for the block; it cannot be evicted meanwhile.

        Args:
            name: a backbone of the pool.

        Yields:
            the model in eval mode on the manager's device.
        """
        model = self._acquire(name)
        try:
            yield model
        finally:
            self._release(name)

    def get(self, name: str) -> nn.Module:
        """The backbone ``name``, loaded if needed, marked most recently used and not kept pinned.

        The caller should drop the reference soon: a held reference keeps memory alive after an eviction.
        Prefer :meth:`use` for running a backbone.
        """
        with self.use(name) as model:
            return model

    def is_resident(self, name: str) -> bool:
        with self._cond:
            return name in self._cache

