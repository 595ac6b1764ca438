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
        ran: (N, P) share of each path that ran on each sample: 1 for the whole path, 0 for none, between for
            an exit a forced runtime passed, whose segment alone ran (for predicted time); None if unknown.
    """

    pred: np.ndarray
    path: np.ndarray
    flops: np.ndarray
    labels: np.ndarray
    ran: np.ndarray | None = None

    @property
    def correct(self) -> np.ndarray:
        return self.pred == self.labels

    @property
    def accuracy(self) -> float:
        return float(self.correct.mean())

    @property
    def mean_flops(self) -> float:
        return float(self.flops.mean())

    def __len__(self) -> int:
        return int(self.pred.shape[0])

    def subset(self, idx) -> "Outcome":
        """The outcome on the samples ``idx`` only."""
        return Outcome(self.pred[idx], self.path[idx], self.flops[idx], self.labels[idx],
                       None if self.ran is None else self.ran[idx])

    def path_share(self, n_paths: int) -> np.ndarray:
        """(P,) share of samples answered by each path."""
        return np.bincount(self.path, minlength=n_paths) / len(self.path)
