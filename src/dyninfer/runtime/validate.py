"""Input checks shared by every runtime: a bad batch is refused before any work is done."""

from __future__ import annotations

import torch

from ..errors import InputError


def check_batch(x: object, input_shape: tuple[int, ...] | None, *, where: str = "runtime") -> torch.Tensor:
    """Validate a batch of images (N, C, H, W) and return it.

    Raises:
        InputError: not a tensor, not floating point, wrong rank, channels or size, empty, NaN or inf.
    """
    if not isinstance(x, torch.Tensor):
        raise InputError(f"{where}: expected a torch.Tensor of images (N, C, H, W), got {type(x).__name__}")
    if not torch.is_floating_point(x):
        raise InputError(f"{where}: expected floating-point images in [0, 1], got dtype {x.dtype}; "
                         f"convert with x.float() / 255 for uint8 images")
    if x.ndim != 4:
        hint = "; add a batch dimension with x.unsqueeze(0)" if x.ndim == 3 else ""
        raise InputError(f"{where}: expected a 4-D batch (N, C, H, W), got shape {tuple(x.shape)}{hint}")
    if x.shape[0] == 0:
        raise InputError(f"{where}: empty batch (shape {tuple(x.shape)}); send at least one image")
    if input_shape is not None and tuple(x.shape[1:]) != tuple(input_shape):
        c, h, w = input_shape
        what = "channels" if x.shape[1] != c else "image size"
        raise InputError(f"{where}: wrong {what}: got images of shape {tuple(x.shape[1:])}, the models expect "
                         f"(C, H, W) = {tuple(input_shape)}")
    if not bool(torch.isfinite(x).all()):
        bad = int((~torch.isfinite(x)).flatten(1).any(1).sum())
        raise InputError(f"{where}: {bad} of {x.shape[0]} images contain NaN or inf values; clean them first")
    return x
