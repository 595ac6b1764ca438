"""A regression task built from real images: predict the angle an image was rotated by.

Each image of a split is rotated counter-clockwise by its own angle, drawn uniformly from
``[-max_angle, max_angle]`` degrees by a generator seeded with ``seed`` (and the split's length), so the
same split and seed give the same images and targets. Targets are the angles in **degrees**, float32.
Rotation is bilinear (``F.affine_grid`` + ``F.grid_sample``) about the image centre, zero (black) outside
the source image, which is the background of Fashion-MNIST and digits.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from ..check import number
from ..errors import DataError
from .datasets import Split

DEFAULT_MAX_ANGLE = 60.0  # degrees


def rotate(x: torch.Tensor, degrees: torch.Tensor) -> torch.Tensor:
    """Images (N, C, H, W) rotated counter-clockwise by ``degrees`` (N,) about their centre, bilinear, zero fill."""
    if x.ndim != 4 or degrees.shape != (x.shape[0],):
        raise DataError(f"rotate needs images (N, C, H, W) and N angles, got {tuple(x.shape)} and {tuple(degrees.shape)}")
    a = degrees.to(x.dtype) * (math.pi / 180.0)  # (N,)
    cos, sin = torch.cos(a), torch.sin(a)
    # output pixel (u, v) samples the input at R(-a) (u, v); image y grows downwards, hence the signs
    theta = torch.stack([torch.stack([cos, -sin, torch.zeros_like(a)], 1),
                         torch.stack([sin, cos, torch.zeros_like(a)], 1)], 1)  # (N, 2, 3)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)  # (N, H, W, 2)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def check_targets(y, *, what: str = "regression targets") -> torch.Tensor:
    """``y`` as a float32 (N,) tensor, refusing NaN or infinite values.

    Raises:
        DataError: naming the rows (up to ten) that hold NaN or inf.
    """
    t = torch.as_tensor(np.asarray(y, dtype=np.float32) if not torch.is_tensor(y) else y).float().reshape(-1)
    bad = torch.nonzero(~torch.isfinite(t)).reshape(-1).tolist()
    if bad:
        shown = ", ".join(str(i) for i in bad[:10]) + (f" (and {len(bad) - 10} more)" if len(bad) > 10 else "")
        raise DataError(f"{what} hold {len(bad)} NaN or infinite value(s), at row(s) {shown}; drop or fix those rows "
                        f"before training or calibrating (a regression target must be a finite number)")
    return t


def rotation_angles(n: int, *, max_angle: float = DEFAULT_MAX_ANGLE, seed: int = 0) -> torch.Tensor:
    """(n,) float32 angles in degrees, uniform in [-max_angle, max_angle], from a generator seeded by (seed, n)."""
    number("max_angle", max_angle, lo=0, hi=180, lo_open=True)
    number("seed", seed, integer=True)
    g = np.random.default_rng([int(seed) & 0xFFFFFFFF, int(n)])
    return torch.from_numpy(g.uniform(-max_angle, max_angle, size=n).astype(np.float32))


def rotation_task(split: Split, *, max_angle: float = DEFAULT_MAX_ANGLE, seed: int = 0,
                  batch_size: int = 4096) -> Split:
    """The rotation-regression version of ``split``: images rotated by their angle, targets the angle.

    Args:
        split: images (N, C, H, W) in [0, 1] (their class labels are dropped).
        max_angle: angles are uniform in [-max_angle, max_angle] degrees.
        seed: seed of the angles (use a different one per split).
        batch_size: images rotated at a time (memory only; the result does not depend on it).

    Returns:
        a :class:`Split` with the rotated images (N, C, H, W) float32 and targets ``y`` (N,) float32 degrees.
    """
    y = rotation_angles(len(split), max_angle=max_angle, seed=seed)
    x = torch.cat([rotate(split.x[i:i + batch_size], y[i:i + batch_size])
                   for i in range(0, len(split), batch_size)]) if len(split) else split.x.clone()
    return Split(x.clamp_(0.0, 1.0), y)


def rotation_splits(data, *, max_angle: float = DEFAULT_MAX_ANGLE, seed: int = 0) -> dict[str, Split]:
    """The rotation task on a dataset's calibration and test splits, each with its own angle seed.

    Args:
        data: a :class:`~dyninfer.data.datasets.Dataset`.
        max_angle: angles are uniform in [-max_angle, max_angle] degrees.
        seed: the run's seed; the calibration angles use ``2 * seed + 1``, the test angles ``2 * seed + 2``
            (training draws fresh angles per epoch, see :mod:`dyninfer.train.regression`).

    Returns:
        {"calib": Split, "test": Split} with float32 targets in degrees.
    """
    return {name: rotation_task(data.split(name), max_angle=max_angle, seed=2 * seed + 1 + i)
            for i, name in enumerate(("calib", "test"))}


__all__ = ["DEFAULT_MAX_ANGLE", "check_targets", "rotate", "rotation_angles", "rotation_splits", "rotation_task"]
