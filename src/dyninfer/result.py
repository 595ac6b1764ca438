"""The result vocabulary every runtime answers in, torch or onnxruntime: one :class:`RuntimeResult`.

This module imports no torch: the exported onnxruntime runtime fills the same fields with numpy arrays
where the torch runtimes put tensors.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np


@dataclass
class RuntimeResult:
    """What a runtime did on one batch (or, from ``run``, on many, concatenated).

    Attributes:
        pred: (N,) predicted class (a torch tensor from the torch runtimes, a numpy array from onnxruntime).
        path: (N,) index of the path whose answer was kept.
        prob: (N,) softmax probability of the predicted class under that path's logits.
        flops: (N,) FLOPs spent on each sample (every path that ran on it, plus any decision overhead).
        seconds: wall time, validation included.
        path_seconds: (P,) time spent running each path.
        path_counts: (P,) samples each path ran on.
        decide_seconds: time spent choosing paths before running them (up-front policies).
        load_seconds: time spent loading paths into memory (a backbone manager's misses).
    """

    pred: Any
    path: Any
    prob: Any
    flops: np.ndarray
    seconds: float
    path_seconds: np.ndarray
    path_counts: np.ndarray
    decide_seconds: float = 0.0
    load_seconds: float = 0.0

    def __len__(self) -> int:
        return int(self.pred.shape[0])

    @property
    def mean_flops(self) -> float:
        return float(self.flops.mean()) if self.flops.size else 0.0

    def path_share(self) -> np.ndarray:
        """(P,) share of samples answered by each path."""
        return np.bincount(np.asarray(self.path), minlength=len(self.path_counts)) / max(len(self), 1)

    @staticmethod
    def concat(parts: Sequence["RuntimeResult"]) -> "RuntimeResult":
        """Results of consecutive batches as one (times and counts summed)."""
        return RuntimeResult(_cat([r.pred for r in parts]), _cat([r.path for r in parts]),
                             _cat([r.prob for r in parts]), np.concatenate([r.flops for r in parts]),
                             sum(r.seconds for r in parts), np.sum([r.path_seconds for r in parts], 0),
                             np.sum([r.path_counts for r in parts], 0), sum(r.decide_seconds for r in parts),
                             sum(r.load_seconds for r in parts))


def _cat(xs: list) -> Any:
    if isinstance(xs[0], np.ndarray):
        return np.concatenate(xs)
    import torch  # the parts are torch tensors, so torch is there

    return torch.cat(xs)
