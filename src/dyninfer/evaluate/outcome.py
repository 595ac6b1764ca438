"""What a policy did on a split: the prediction, the path that answered and the cost, per sample."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Outcome:
    """Per-sample result of a policy.

    Attributes:
        pred: (N,) predicted class.
        path: (N,) index of the path whose answer was kept.
        flops: (N,) FLOPs spent on the sample (every path that ran, plus any policy overhead).
        labels: (N,) true class.
    """

    pred: np.ndarray
    path: np.ndarray
    flops: np.ndarray
    labels: np.ndarray

    @property
    def correct(self) -> np.ndarray:
        return self.pred == self.labels

    @property
    def accuracy(self) -> float:
        return float(self.correct.mean())

    @property
    def mean_flops(self) -> float:
        return float(self.flops.mean())

    def path_share(self, n_paths: int) -> np.ndarray:
        """(P,) share of samples answered by each path."""
        return np.bincount(self.path, minlength=n_paths) / len(self.path)
