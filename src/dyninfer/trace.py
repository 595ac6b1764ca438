"""Traces: every path's logits on every sample of a split, with the per-path costs.

A trace is recorded once; any policy at any threshold is then evaluated on it in
milliseconds. On disk a trace is a folder holding ``trace.json`` (paths, costs, metadata) and
``logits.npz`` (logits (P, N, K) float32 and labels (N,)), replaced whole or not at all.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

import numpy as np
import torch
from torch import nn

from .data.datasets import Split
from .errors import TraceError
from .io import atomic_dir, versions
from .runtime.cost import PathCost, measure_path
from .train.trainer import predict_logits

FORMAT = "dyninfer-trace-1"


@dataclass
class Trace:
    """Outputs of P paths on N samples.

    Attributes:
        paths: path names, in cascade order (cheapest first by convention).
        logits: (P, N, K) float32.
        labels: (N,) int64.
        costs: one :class:`PathCost` per path.
        meta: dataset, split, seed, versions.
    """

    paths: list[str]
    logits: np.ndarray
    labels: np.ndarray
    costs: list[PathCost]
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.logits.ndim != 3 or self.logits.shape[0] != len(self.paths):
            raise TraceError(f"logits of shape {self.logits.shape} do not fit {len(self.paths)} paths (P, N, K)")
        if self.labels.shape != (self.logits.shape[1],):
            raise TraceError(f"labels of shape {self.labels.shape} do not fit logits {self.logits.shape}")
        if len(self.costs) != len(self.paths):
            raise TraceError(f"{len(self.costs)} costs for {len(self.paths)} paths")

    @property
    def n(self) -> int:
        return int(self.labels.shape[0])

    def index(self, path: str | int) -> int:
        if isinstance(path, int):
            return path
        try:
            return self.paths.index(path)
        except ValueError:
            raise TraceError(f"trace has no path {path!r}; it has {self.paths}") from None

    def logits_of(self, path: str | int) -> torch.Tensor:
        return torch.from_numpy(self.logits[self.index(path)])

    @property
    def preds(self) -> np.ndarray:  # (P, N)
        return self.logits.argmax(-1)

    @property
    def correct(self) -> np.ndarray:  # (P, N) bool
        return self.preds == self.labels[None]

    def accuracy(self, path: str | int) -> float:
        return float(self.correct[self.index(path)].mean())

    def cost(self, path: str | int) -> PathCost:
        return self.costs[self.index(path)]

    def select(self, paths: list[str]) -> "Trace":
        """A trace over a subset of paths, in the given order."""
        idx = [self.index(p) for p in paths]
        return Trace(list(paths), self.logits[idx], self.labels, [self.costs[i] for i in idx], dict(self.meta))

    def save(self, folder: str | os.PathLike) -> Path:
        folder = Path(folder)
        with atomic_dir(folder) as tmp:
            np.savez(tmp / "logits.npz", logits=self.logits, labels=self.labels)
            (tmp / "trace.json").write_text(json.dumps(
                {"format": FORMAT, "paths": self.paths, "costs": [c.to_dict() for c in self.costs],
                 "meta": self.meta}, indent=2, default=str))
        return folder

    @classmethod
    def load(cls, folder: str | os.PathLike) -> "Trace":
        folder = Path(folder)
        try:
            info = json.loads((folder / "trace.json").read_text())
            with np.load(folder / "logits.npz") as z:
                logits, labels = z["logits"], z["labels"]
        except FileNotFoundError as e:
            raise TraceError(f"no trace at {folder} ({e.filename} missing); record it again") from e
        except (ValueError, KeyError, OSError, json.JSONDecodeError) as e:
            raise TraceError(f"trace at {folder} is corrupt ({type(e).__name__}: {e}); record it again") from e
        if info.get("format") != FORMAT:
            raise TraceError(f"{folder} is not a {FORMAT} trace")
        return cls(info["paths"], logits, labels, [PathCost.from_dict(c) for c in info["costs"]], info["meta"])


def measure_costs(models: Mapping[str, nn.Module], sample: torch.Tensor, *, batches=(1, 16, 64, 256),
                  repeats: int = 20, min_time_s: float = 0.3, log=print) -> list[PathCost]:
    """Measure every path's cost on ``sample`` (N, C, H, W), interleaving nothing: one path at a time."""
    out = []
    for name, model in models.items():
        c = measure_path(name, model, sample, batches=batches, repeats=repeats, min_time_s=min_time_s)
        log(f"[cost] {name}: {c.flops / 1e6:.2f} MFLOPs, batch 1 {c.latency[min(batches)].median_s * 1e3:.2f} ms, "
            f"batch {max(batches)} {c.latency[max(batches)].throughput:.0f} img/s")
        out.append(c)
    return out


def record_trace(models: Mapping[str, nn.Module], split: Split, costs: list[PathCost], *, meta: dict | None = None,
                 batch_size: int = 512, progress: bool = True) -> Trace:
    """Run every model over ``split`` once and keep logits, labels and ``costs``."""
    if len(split) == 0:
        raise TraceError("cannot record a trace on an empty split")
    logits = np.stack([predict_logits(m, split.x, batch_size=batch_size, progress=progress, desc=f"trace {n}").numpy()
                       for n, m in models.items()]).astype(np.float32)
    meta = dict(meta or {})
    meta.setdefault("versions", versions())
    return Trace(list(models), logits, split.y.numpy().astype(np.int64), list(costs), meta)
