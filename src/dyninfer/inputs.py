"""What a valid batch and a valid knob are, in one place that imports no torch.

Every runtime checks its inputs with these rules before any work: the torch runtimes through
:func:`dyninfer.runtime.validate.check_batch` (torch tensors), the exported onnxruntime runtime through
:func:`check_array` (numpy arrays). Both say the same thing about the same mistake and raise the same
:class:`~dyninfer.errors.InputError` or :class:`~dyninfer.errors.ConfigError`.

A valid batch is a 4-D floating-point array (N, C, H, W) with N >= 1, the channels and size the models
expect, finite values, and pixel values in [0, 1] (the models carry their own normalisation).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from .errors import ConfigError, InputError

# Pixels are in [0, 1]; the slack admits mild augmentation but refuses 0-255 pixels and normalised inputs.
PIXEL_RANGE = (-0.5, 1.5)


def dtype_message(where: str, dtype: str, *, integer_u8: bool, numpy: bool) -> str:
    """The error for a batch that is not floating point."""
    if numpy:
        hint = "x.astype(np.float32) / 255 for uint8 pixels" if integer_u8 else "x.astype(np.float32) with values in [0, 1]"
    else:
        hint = "x.float() / 255 for uint8 pixels" if integer_u8 else "x.float() with values in [0, 1]"
    return f"{where}: expected floating-point images in [0, 1], got dtype {dtype}; convert with {hint}"


def check_shape(shape: tuple[int, ...], input_shape: Sequence[int] | None, where: str) -> None:
    """Rank 4, at least one image, and (when known) the channels and size the models expect."""
    if len(shape) != 4:
        hint = "; add a batch dimension with x[None]" if len(shape) == 3 else ""
        raise InputError(f"{where}: expected a 4-D batch (N, C, H, W), got shape {tuple(shape)}{hint}")
    if shape[0] == 0:
        raise InputError(f"{where}: empty batch (shape {tuple(shape)}); send at least one image")
    if input_shape is not None and tuple(shape[1:]) != tuple(input_shape):
        c = input_shape[0]
        what = "channels" if shape[1] != c else "image size"
        raise InputError(f"{where}: wrong {what}: got images of shape {tuple(shape[1:])}, the models expect "
                         f"(C, H, W) = {tuple(input_shape)}; resize or convert them first")


def check_range(lo: float, hi: float, n: int, count_bad, value_range: tuple[float, float] | None, where: str) -> None:
    """NaN, inf and the pixel range, from the batch's min and max (NaN propagates into both).

    ``count_bad()`` counts the images holding NaN or inf (called only when there are some).
    """
    if not (lo == lo and hi == hi) or abs(lo) == float("inf") or abs(hi) == float("inf"):
        raise InputError(f"{where}: {count_bad()} of {n} images contain NaN or inf values; clean them first")
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


def check_array(x: object, input_shape: Sequence[int] | None, *, where: str = "runtime",
                value_range: tuple[float, float] | None = PIXEL_RANGE) -> np.ndarray:
    """Validate a batch of images (N, C, H, W) given as a numpy array; returns it as float32.

    Anything with a ``numpy()`` method (a CPU torch tensor) is converted first.

    Raises:
        InputError: not an array, not floating point, wrong rank, channels or size, empty, NaN or inf,
            or values outside ``value_range``.
    """
    if not isinstance(x, np.ndarray) and callable(getattr(x, "numpy", None)):
        x = x.detach().cpu().numpy() if hasattr(x, "detach") else x.numpy()  # type: ignore[union-attr]
    if not isinstance(x, np.ndarray):
        raise InputError(f"{where}: expected a numpy array of images (N, C, H, W), got {type(x).__name__}; "
                         f"convert with np.asarray(x, dtype=np.float32)")
    if x.dtype.kind != "f":
        raise InputError(dtype_message(where, str(x.dtype), integer_u8=x.dtype == np.uint8, numpy=True))
    check_shape(x.shape, input_shape, where)
    x = np.ascontiguousarray(x, dtype=np.float32)
    lo, hi = float(x.min()), float(x.max())
    check_range(lo, hi, x.shape[0], lambda: int((~np.isfinite(x)).reshape(x.shape[0], -1).any(1).sum()),
                value_range, where)
    return x


def check_batch_size(batch_size: object) -> int:
    """A positive integer batch size, or InputError."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise InputError(f"batch_size must be a positive integer, got {batch_size!r}")
    return int(batch_size)


def as_thresholds(values: object, count: int, what: str = "thresholds") -> tuple[float, ...]:
    """``count`` thresholds as floats (one number is used for all); clear errors for anything else.

    -inf makes every sample leave at that stage; +inf lets none leave unless its score is +inf too.
    """
    if isinstance(values, (int, float, np.integer, np.floating)) and not isinstance(values, bool):
        values = [values] * count
    try:
        values = list(values)  # type: ignore[arg-type]
    except TypeError:
        raise ConfigError(f"{what} must be a number or a list of numbers, got {values!r}") from None
    if any(isinstance(v, (bool, str, bytes)) or not isinstance(v, (int, float, np.integer, np.floating))
           for v in values):
        raise ConfigError(f"{what} must be numbers, got {values!r}")
    t = tuple(float(v) for v in values)
    if len(t) != count:
        raise ConfigError(f"need {count} {what}, got {len(t)}: {list(t)}")
    if any(np.isnan(v) for v in t):
        raise ConfigError(f"{what} must not be NaN: {list(t)}")
    return t


def path_index(paths: Sequence[str], path: object) -> int | None:
    """The index of ``path`` (a name or an index) among ``paths``; None stays None; ConfigError otherwise."""
    if path is None:
        return None
    idx = list(paths).index(path) if isinstance(path, str) and path in paths else path
    if isinstance(idx, bool) or not isinstance(idx, (int, np.integer)) or not 0 <= idx < len(paths):
        raise ConfigError(f"no path {path!r}; this runtime has {list(paths)}")
    return int(idx)


def as_bias(value: object) -> float:
    """A cost-bias knob (up-front selection) as one float, or ConfigError."""
    if isinstance(value, (list, tuple, np.ndarray)) and np.size(value) == 1:
        value = np.ravel(value)[0]
    if isinstance(value, (bool, str, bytes)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ConfigError(f"the selection knob is one number (a cost bias), got {value!r}")
    if np.isnan(value):
        raise ConfigError("the selection knob must not be NaN")
    return float(value)


def biased_choice(logits, bias: float, cost):
    """(N,) argmax_p of ``logits - bias * cost`` for policy logits (N, P) and path costs (P,), as numpy
    arrays or torch tensors (the result has the input's type); +inf picks the cheapest path, -inf the dearest."""
    if bias in (float("inf"), float("-inf")):
        p = int(cost.argmin() if bias > 0 else cost.argmax())
        return logits[:, :1].argmax(1) + p  # (N,) int64 of the input's type: argmax over one column is 0
    return (logits - bias * cost[None]).argmax(1)


class Knobbed:
    """The knob and forced-path state every runtime shares (torch or onnxruntime): ``knob`` is checked by
    ``check_knob`` when set; ``force(path)`` sends every sample to one path (None: back to the knob).
    Subclasses set ``paths`` and implement ``check_knob``."""

    paths: list[str]
    forced: int | None = None

    def check_knob(self, value: Any) -> Any:  # pragma: no cover - every runtime overrides it
        raise NotImplementedError

    @property
    def knob(self) -> Any:
        """The policy's current setting (thresholds, cost bias, ...)."""
        return self._knob

    @knob.setter
    def knob(self, value: Any) -> None:
        self._knob = self.check_knob(value)

    def force(self, path: int | str | None) -> None:
        """Send every sample to ``path`` (index or name) without running any decision; None: back to the knob."""
        self.forced = path_index(self.paths, path)
