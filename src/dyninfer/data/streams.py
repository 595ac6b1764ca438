"""Skewed streams (EBJR section 2.4, Fig. 6 right): p% of the samples come from C̄ popular classes.

A deployment sees mostly a few popular classes. :func:`skewed_indices` draws such a stream from a split
without replacement: exactly ``round(p/100 * n)`` samples from the popular classes (spread evenly over
them) and the rest spread evenly over the other classes. Calibration streams are drawn from the
calibration split, test streams from the test split. :func:`popular_classes` chooses the top-C̄ classes
from the label frequencies of training or calibration data (never of the test split).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from ..check import number
from ..errors import ConfigError
from .datasets import Split


def popular_classes(labels: np.ndarray | torch.Tensor, size: int, num_classes: int) -> list[int]:
    """The ``size`` most frequent classes of ``labels`` (ties: the lower class index first), most frequent first.

    Args:
        labels: (N,) class indices of training or calibration data.
        size: C̄, at least 1 and below ``num_classes``.
        num_classes: K.

    Raises:
        ConfigError: C̄ out of range, or labels outside [0, K).
    """
    number("num_classes", num_classes, lo=2, integer=True)
    number("C̄ (number of popular classes)", size, lo=1, hi=num_classes - 1, integer=True,
           hint=" (one class at least must be left to 'other')")
    y = np.asarray(labels, dtype=np.int64).reshape(-1)
    if y.size == 0:
        raise ConfigError("cannot choose popular classes from no labels")
    if y.min() < 0 or y.max() >= num_classes:
        raise ConfigError(f"labels must lie in [0, {num_classes}), got values from {y.min()} to {y.max()}")
    counts = np.bincount(y, minlength=num_classes)
    order = np.lexsort((np.arange(num_classes), -counts))  # by count, descending; ties by index
    return [int(c) for c in order[:size]]


def _even(total: int, parts: int) -> np.ndarray:
    """``total`` split into ``parts`` integer shares that differ by at most one."""
    out = np.full(parts, total // parts, dtype=np.int64)
    out[:total % parts] += 1
    return out


def max_stream_size(labels: np.ndarray | torch.Tensor, classes: Sequence[int], p: float, num_classes: int) -> int:
    """The longest stream :func:`skewed_indices` can draw from ``labels`` at ``p`` percent without replacement."""
    from ..models.specialised import check_classes

    cls = check_classes(list(classes), num_classes)
    _check_p(p)
    counts = np.bincount(np.asarray(labels, dtype=np.int64).reshape(-1), minlength=num_classes)
    others = [c for c in range(num_classes) if c not in cls]
    n = int(min(counts[cls].min() * len(cls) / (p / 100) if p > 0 else np.inf,
                counts[others].min() * len(others) / (1 - p / 100) if p < 100 else np.inf))
    while n > 0 and not _fits(counts, cls, others, n, p):
        n -= 1
    return n


def _fits(counts: np.ndarray, cls: list[int], others: list[int], n: int, p: float) -> bool:
    n_top = int(round(p / 100 * n))
    return bool((_even(n_top, len(cls)) <= counts[cls]).all()
                and (_even(n - n_top, len(others)) <= counts[others]).all())


def _check_p(p: float) -> None:
    number("p (percent of the stream from the popular classes)", p, lo=0, hi=100)


def skewed_indices(labels: np.ndarray | torch.Tensor, classes: Sequence[int], p: float, *, num_classes: int,
                   n: int | None = None, seed: int = 0) -> np.ndarray:
    """Row indices of a skewed stream: ``round(p/100 * n)`` rows of ``classes``, the rest of the other classes.

    Args:
        labels: (N,) labels of the split the stream is drawn from.
        classes: the C̄ popular classes.
        p: percent of the stream from ``classes``, in [0, 100].
        num_classes: K.
        n: stream length (default: the longest the split allows, :func:`max_stream_size`).
        seed: which rows and their order.

    Returns:
        (n,) int64 row indices in stream order (shuffled), without repeats.

    Raises:
        ConfigError: unknown classes, C̄ >= K, p out of range, or a stream longer than the split allows.
    """
    from ..models.specialised import check_classes

    cls = check_classes(list(classes), num_classes)
    _check_p(p)
    number("seed", seed, integer=True)
    y = np.asarray(labels, dtype=np.int64).reshape(-1)
    longest = max_stream_size(y, cls, p, num_classes)
    if n is None:
        n = longest
    number("n (stream length)", n, lo=1, integer=True)
    if n > longest:
        raise ConfigError(f"a stream of {n} samples with {p:g}% from classes {cls} needs more images than the split "
                          f"holds; at most {longest}")
    others = [c for c in range(num_classes) if c not in cls]
    n_top = int(round(p / 100 * n))
    rng = np.random.default_rng(seed)
    picks = []
    for group, total in ((cls, n_top), (others, n - n_top)):
        for c, k in zip(group, _even(total, len(group))):
            picks.append(rng.choice(np.flatnonzero(y == c), size=int(k), replace=False))
    return rng.permutation(np.concatenate(picks)).astype(np.int64)


def skewed_stream(split: Split, classes: Sequence[int], p: float, *, num_classes: int, n: int | None = None,
                  seed: int = 0) -> Split:
    """The stream of :func:`skewed_indices` as a :class:`Split` (images and labels, in stream order)."""
    return split.subset(skewed_indices(split.y, classes, p, num_classes=num_classes, n=n, seed=seed))


__all__ = ["max_stream_size", "popular_classes", "skewed_indices", "skewed_stream"]
