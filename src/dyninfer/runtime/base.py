"""The one runtime type and its result vocabulary, shared by every method.

A :class:`Runtime` executes a fitted policy on real batches: it validates the batch, runs only the
paths the policy needs per sample, and answers with a :class:`RuntimeResult` whose fields are the
same for every family — ``pred``, ``path`` (the index of the path that answered), ``prob`` (the
answer's softmax probability), ``flops`` and ``seconds``. Its ``knob`` (thresholds, a cost bias, ...)
can be changed at any time: a call reads it (and the forced path) once when it starts, so a change
made during ``__call__`` or ``run`` applies to the next call. :meth:`Runtime.force` sends every sample
to one path instead, without running any decision (the reference-path mode a server falls back to,
and the side-by-side baseline of every report).

Two executors implement it: :class:`~dyninfer.runtime.sequential.SequentialRuntime` (run, score,
stop or go on: cascades, early exits) and :class:`~dyninfer.runtime.upfront.UpfrontRuntime` (choose one
path per sample before running any: backbone selection, subnetwork choice).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch

from ..check import device as check_device
from ..errors import ConfigError, InputError
from .validate import PIXEL_RANGE, check_batch


@dataclass
class RuntimeResult:
    """What a runtime did on one batch (or, from :meth:`Runtime.run`, on many, concatenated).

    Attributes:
        pred: (N,) predicted class.
        path: (N,) index of the path whose answer was kept.
        prob: (N,) softmax probability of the predicted class under that path's logits.
        flops: (N,) FLOPs spent on each sample (every path that ran on it, plus any decision overhead).
        seconds: wall time, validation included.
        path_seconds: (P,) time spent running each path.
        path_counts: (P,) samples each path ran on.
        decide_seconds: time spent choosing paths before running them (up-front policies).
        load_seconds: time spent loading paths into memory (a backbone manager's misses).
    """

    pred: torch.Tensor
    path: torch.Tensor
    prob: torch.Tensor
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
        return np.bincount(self.path.numpy(), minlength=len(self.path_counts)) / max(len(self), 1)

    @staticmethod
    def concat(parts: Sequence["RuntimeResult"]) -> "RuntimeResult":
        """Results of consecutive batches as one (times and counts summed)."""
        return RuntimeResult(torch.cat([r.pred for r in parts]), torch.cat([r.path for r in parts]),
                             torch.cat([r.prob for r in parts]), np.concatenate([r.flops for r in parts]),
                             sum(r.seconds for r in parts), np.sum([r.path_seconds for r in parts], 0),
                             np.sum([r.path_counts for r in parts], 0), sum(r.decide_seconds for r in parts),
                             sum(r.load_seconds for r in parts))


class Runtime:
    """Base of the executors: input checks, the knob, batching.

    Args:
        paths: path names, in the order ``RuntimeResult.path`` indexes.
        input_shape: (C, H, W) every image must have (None: not checked).
        device: where the paths run; inputs are moved there.
        value_range: (low, high) outside which pixel values are refused (None: not checked); see
            :func:`~dyninfer.runtime.validate.check_batch`.
    """

    def __init__(self, paths: Sequence[str], *, input_shape: tuple[int, ...] | None = None,
                 device: str | torch.device = "cpu", value_range: tuple[float, float] | None = PIXEL_RANGE) -> None:
        self.paths = list(paths)
        self.input_shape = tuple(input_shape) if input_shape is not None else None
        self.device = check_device(device)
        self.value_range = value_range
        self.forced: int | None = None

    def force(self, path: int | str | None) -> None:
        """Send every sample to ``path`` (index or name) without running any decision; None: back to the knob."""
        if path is None:
            self.forced = None
            return
        idx = self.paths.index(path) if isinstance(path, str) and path in self.paths else path
        if isinstance(idx, bool) or not isinstance(idx, (int, np.integer)) or not 0 <= idx < len(self.paths):
            raise ConfigError(f"no path {path!r}; this runtime has {self.paths}")
        self.forced = int(idx)

    @property
    def knob(self) -> Any:
        """The policy's current setting (thresholds, cost bias, ...)."""
        return self._knob

    @knob.setter
    def knob(self, value: Any) -> None:
        self._knob = self.check_knob(value)

    def check_knob(self, value: Any) -> Any:  # pragma: no cover - every executor overrides it
        raise NotImplementedError

    def _execute(self, x: torch.Tensor, knob: Any, forced: int | None) -> RuntimeResult:  # pragma: no cover
        raise NotImplementedError

    def check(self, x: object) -> torch.Tensor:
        """Validate a batch (N, C, H, W) as every runtime does; returns it as float32."""
        return check_batch(x, self.input_shape, where=type(self).__name__, value_range=self.value_range)

    @torch.inference_mode()
    def __call__(self, x: torch.Tensor) -> RuntimeResult:
        """Classify one batch of images (N, C, H, W) in [0, 1]."""
        knob, forced = self._knob, self.forced
        return self._execute(self.check(x), knob, forced)

    def run(self, x: torch.Tensor, batch_size: int = 256) -> RuntimeResult:
        """Run over a large tensor in batches of ``batch_size``; results concatenated, times summed.

        Raises:
            InputError: an empty tensor or a batch size that is not a positive integer.
        """
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise InputError(f"batch_size must be a positive integer, got {batch_size!r}")
        x = self.check(x)
        knob, forced = self._knob, self.forced
        with torch.inference_mode():
            parts = [self._execute(x[i:i + batch_size], knob, forced) for i in range(0, x.shape[0], batch_size)]
        return RuntimeResult.concat(parts)


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
