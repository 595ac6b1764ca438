"""Input checks shared by every runtime (and by the server and the exported runtimes later): a bad
batch is refused, with what was wrong and what to do, before any work is done.

One place decides what a valid batch is: a 4-D floating-point tensor (N, C, H, W) with N >= 1, the
channels and size the models expect, finite values, and pixel values in [0, 1] (the models carry
their own normalisation). The range check is one fused min/max pass, so it also finds NaN and inf.
"""

from __future__ import annotations

import torch

from ..errors import InputError

# Pixels are in [0, 1]; the slack admits mild augmentation but refuses 0-255 pixels and normalised inputs.
PIXEL_RANGE = (-0.5, 1.5)


def check_batch(x: object, input_shape: tuple[int, ...] | None, *, where: str = "runtime",
                value_range: tuple[float, float] | None = PIXEL_RANGE) -> torch.Tensor:
    """Validate a batch of images (N, C, H, W) and return it as float32.

    Args:
        x: the batch.
        input_shape: (C, H, W) the images must have; None skips the check.
        where: who checks, for the message.
        value_range: (low, high) allowed pixel values; None skips the range check (NaN and inf are
            still refused).

    Returns:
        ``x`` itself when it is float32, else a float32 copy (float64 and half inputs are converted).

    Raises:
        InputError: not a tensor, not floating point, wrong rank, channels or size, empty, NaN or inf,
            or values outside ``value_range``.
    """
    if not isinstance(x, torch.Tensor):
        raise InputError(f"{where}: expected a torch.Tensor of images (N, C, H, W), got {type(x).__name__}; "
                         f"convert with torch.as_tensor(x, dtype=torch.float32)")
    if not torch.is_floating_point(x):
        hint = "x.float() / 255 for uint8 pixels" if x.dtype == torch.uint8 else "x.float() with values in [0, 1]"
        raise InputError(f"{where}: expected floating-point images in [0, 1], got dtype {x.dtype}; convert with {hint}")
    if x.ndim != 4:
        hint = "; add a batch dimension with x.unsqueeze(0)" if x.ndim == 3 else ""
        raise InputError(f"{where}: expected a 4-D batch (N, C, H, W), got shape {tuple(x.shape)}{hint}")
    if x.shape[0] == 0:
        raise InputError(f"{where}: empty batch (shape {tuple(x.shape)}); send at least one image")
    if input_shape is not None and tuple(x.shape[1:]) != tuple(input_shape):
        c, h, w = input_shape
        what = "channels" if x.shape[1] != c else "image size"
        raise InputError(f"{where}: wrong {what}: got images of shape {tuple(x.shape[1:])}, the models expect "
                         f"(C, H, W) = {tuple(input_shape)}; resize or convert them first")
    if x.dtype != torch.float32:
        x = x.float()
    lo, hi = (float(v) for v in torch.aminmax(x))  # NaN propagates into both
    if not (lo == lo and hi == hi) or abs(lo) == float("inf") or abs(hi) == float("inf"):
        bad = int((~torch.isfinite(x)).flatten(1).any(1).sum())
        raise InputError(f"{where}: {bad} of {x.shape[0]} images contain NaN or inf values; clean them first")
    if value_range is not None and (lo < value_range[0] or hi > value_range[1]):
        if hi > 10:
            why = "they look like 0-255 pixels: divide by 255"
        elif lo < 0:
            why = ("they look normalised (mean 0, std 1): pass raw pixels in [0, 1], the models normalise "
                   "their input themselves")
        else:
            why = "rescale them to [0, 1]"
        raise InputError(f"{where}: pixel values span [{lo:.3g}, {hi:.3g}], outside the expected [0, 1] "
                         f"(allowed {value_range[0]:g} to {value_range[1]:g}); {why}")
    return x
