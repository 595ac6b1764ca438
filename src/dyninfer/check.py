"""Checks of settings at construction: every bad value gets a :class:`~dyninfer.errors.ConfigError` that names
the setting, the allowed range and the value given."""

from __future__ import annotations

import math
from typing import Any, Iterable

from .errors import ConfigError


def number(name: str, value: Any, *, lo: float | None = None, hi: float | None = None, lo_open: bool = False,
           hi_open: bool = False, integer: bool = False, none_ok: bool = False, hint: str = "") -> None:
    """Raise ConfigError unless ``value`` is a (finite) number, or an integer, within the given bounds."""
    if value is None and none_ok:
        return
    kind = "an integer" if integer else "a number"
    rng = ""
    if lo is not None or hi is not None:
        left = "(" if lo_open else "["
        right = ")" if hi_open else "]"
        rng = f" in {left}{'-inf' if lo is None else f'{lo:g}'}, {'inf' if hi is None else f'{hi:g}'}{right}"
    ok = not isinstance(value, bool) and isinstance(value, int if integer else (int, float))
    if ok and not integer:
        ok = math.isfinite(value)
    if ok and lo is not None:
        ok = value > lo if lo_open else value >= lo
    if ok and hi is not None:
        ok = value < hi if hi_open else value <= hi
    if not ok:
        raise ConfigError(f"{name} must be {kind}{rng}{' or None' if none_ok else ''}{hint}, got {value!r}")


def choice(name: str, value: Any, allowed: Iterable[Any]) -> None:
    """Raise ConfigError unless ``value`` is one of ``allowed``."""
    allowed = list(allowed)
    if value not in allowed:
        raise ConfigError(f"{name} must be one of {allowed}, got {value!r}")


def device(value: Any):
    """``value`` as a ``torch.device``, or ConfigError when it names no device this machine has."""
    import torch

    try:
        dev = torch.device(value)
    except (RuntimeError, TypeError, ValueError):
        raise ConfigError(f"device must be cpu, cuda or cuda:N, got {value!r}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {value!r} asked for, but this machine has no CUDA device; use --device cpu")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ConfigError(f"device {value!r} does not exist; this machine has {torch.cuda.device_count()} CUDA devices")
    return dev


def flag(name: str, value: Any) -> None:
    """Raise ConfigError unless ``value`` is a bool."""
    if not isinstance(value, bool):
        raise ConfigError(f"{name} must be True or False, got {value!r}")
