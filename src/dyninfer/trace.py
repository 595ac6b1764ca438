"""Traces: every path's logits on every sample of a split, with the per-path costs.

A trace is recorded once (:meth:`dyninfer.paths.PathSet.record`); any policy at any knob value is
then evaluated on it in milliseconds. Policies that decide from the image itself (up-front
selection) also read the split's images, which a trace carries in memory (``x``) but does not
store. On disk a trace is a folder holding ``trace.json`` (paths, costs, metadata) and
``logits.npz`` (logits (P, N, K) float32 and labels (N,)), replaced whole or not at all.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .errors import TraceError
from .io import atomic_dir, digest
from .runtime.cost import PathCost

FORMAT = "dyninfer-trace-2"


@dataclass
class Trace:
    """Outputs of P paths on N samples.

    Attributes:
        paths: path names, in cascade order (cheapest first by convention).
        logits: (P, N, K) float32.
        labels: (N,) int64.
        costs: one :class:`PathCost` per path.
        meta: dataset, split, seed, path-set kind, versions.
        x: the split's images (N, C, H, W), in memory only (None: not attached; see :meth:`with_inputs`).
        aux: named per-path, per-sample arrays (P, N, ...) a path emits besides its logits (e.g. the Var Gate
            confidences of a slimmable subnet, ``gate`` (P, N, G)); stored with the logits.
    """

    paths: list[str]
    logits: np.ndarray
    labels: np.ndarray
    costs: list[PathCost]
    meta: dict = field(default_factory=dict)
    x: torch.Tensor | None = field(default=None, repr=False)
    aux: dict[str, np.ndarray] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if self.logits.ndim != 3 or self.logits.shape[0] != len(self.paths):
            raise TraceError(f"logits of shape {self.logits.shape} do not fit {len(self.paths)} paths (P, N, K)")
        if self.labels.shape != (self.logits.shape[1],):
            raise TraceError(f"labels of shape {self.labels.shape} do not fit logits {self.logits.shape}")
        if len(self.costs) != len(self.paths):
            raise TraceError(f"{len(self.costs)} costs for {len(self.paths)} paths")
        if self.x is not None and self.x.shape[0] != self.n:
            raise TraceError(f"{self.x.shape[0]} images for a trace of {self.n} samples")
        for k, v in self.aux.items():
            if v.shape[:2] != self.logits.shape[:2]:
                raise TraceError(f"aux array {k!r} of shape {v.shape} does not fit logits {self.logits.shape} (P, N, ...)")

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
        return Trace(list(paths), self.logits[idx], self.labels, [self.costs[i] for i in idx], dict(self.meta), self.x,
                     {k: v[idx] for k, v in self.aux.items()})

    def with_costs(self, costs: list[PathCost]) -> "Trace":
        """The same trace with other costs (e.g. measured in this run); this one is left as it is."""
        if [c.name for c in costs] != self.paths:
            raise TraceError(f"costs for {[c.name for c in costs]} do not fit the trace's paths {self.paths}")
        return Trace(list(self.paths), self.logits, self.labels, list(costs), dict(self.meta), self.x, dict(self.aux))

    def with_inputs(self, x: torch.Tensor) -> "Trace":
        """The same trace carrying its split's images (N, C, H, W), for policies that read them."""
        return Trace(list(self.paths), self.logits, self.labels, list(self.costs), dict(self.meta), x, dict(self.aux))

    def subset(self, idx) -> "Trace":
        """The trace on samples ``idx`` only."""
        idx = np.asarray(idx)
        return Trace(list(self.paths), self.logits[:, idx], self.labels[idx], list(self.costs), dict(self.meta),
                     None if self.x is None else self.x[torch.as_tensor(idx)], {k: v[:, idx] for k, v in self.aux.items()})

    def inputs(self) -> torch.Tensor:
        """The images, or a TraceError saying how to attach them."""
        if self.x is None:
            raise TraceError("this policy reads the images, but the trace carries none; attach them with "
                             "trace.with_inputs(split.x)")
        return self.x

    def save(self, folder: str | os.PathLike) -> Path:
        folder = Path(folder)
        with atomic_dir(folder) as tmp:
            np.savez(tmp / "logits.npz", logits=self.logits, labels=self.labels,
                     **{f"aux_{k}": v for k, v in self.aux.items()})
            (tmp / "trace.json").write_text(json.dumps(
                {"format": FORMAT, "paths": self.paths, "costs": [c.to_dict() for c in self.costs],
                 "meta": self.meta, "sha256": self._digest()}, indent=2, default=str))
        return folder

    @classmethod
    def load(cls, folder: str | os.PathLike) -> "Trace":
        folder = Path(folder)
        try:
            info = json.loads((folder / "trace.json").read_text())
            with np.load(folder / "logits.npz") as z:
                logits, labels = z["logits"], z["labels"]
                aux = {k[4:]: z[k] for k in z.files if k.startswith("aux_")}
        except FileNotFoundError as e:
            raise TraceError(f"no trace at {folder} ({e.filename} missing); record it again") from e
        except (ValueError, KeyError, OSError, json.JSONDecodeError) as e:
            raise TraceError(f"trace at {folder} is corrupt ({type(e).__name__}: {e}); record it again") from e
        if not isinstance(info, dict) or info.get("format") != FORMAT:
            raise TraceError(f"{folder} is not a {FORMAT} trace; record it again")
        try:
            tr = cls(info["paths"], logits, labels, [PathCost.from_dict(c) for c in info["costs"]], info["meta"],
                     aux=aux)
        except (KeyError, TypeError, ValueError) as e:
            raise TraceError(f"trace at {folder} is corrupt ({type(e).__name__}: {e}); record it again") from e
        if info.get("sha256") != tr._digest():
            raise TraceError(f"trace at {folder} does not match its SHA-256 checksum (changed or damaged after it was "
                             f"written); delete it and record it again")
        return tr

    def _digest(self) -> str:
        """SHA-256 of the paths, their costs, the logits, the labels and the aux arrays (when there are any)."""
        parts = [self.paths, [c.to_dict() for c in self.costs], self.logits, self.labels]
        if self.aux:
            parts.append({k: self.aux[k] for k in sorted(self.aux)})
        return digest(parts)

