"""Input checks shared by every runtime (and by the server and the exported runtimes later): a bad
batch is refused, with what was wrong and what to do, before any work is done.

The rules (and the messages) live in :mod:`dyninfer.inputs`, which imports no torch, so the exported
onnxruntime runtime checks numpy batches exactly as this checks torch tensors. The range check is one
fused min/max pass, so it also finds NaN and inf.
"""

from __future__ import annotations

import torch

from ..errors import InputError
from ..inputs import PIXEL_RANGE, check_range, check_shape, dtype_message

__all__ = ["PIXEL_RANGE", "check_batch"]


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
        raise InputError(dtype_message(where, str(x.dtype).removeprefix("torch."), integer_u8=x.dtype == torch.uint8,
                                       numpy=False))
    check_shape(tuple(x.shape), input_shape, where)
    if x.dtype != torch.float32:
        x = x.float()
    lo, hi = (float(v) for v in torch.aminmax(x))  # NaN propagates into both
    check_range(lo, hi, x.shape[0], lambda: int((~torch.isfinite(x)).flatten(1).any(1).sum()), value_range, where)
    return x
