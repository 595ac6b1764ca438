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

from typing import Any, Sequence

import torch

from ..check import device as check_device
from ..inputs import Knobbed, as_thresholds, check_batch_size
from ..result import RuntimeResult
from .validate import PIXEL_RANGE, check_batch

__all__ = ["Runtime", "RuntimeResult", "as_thresholds"]


class Runtime(Knobbed):
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
        batch_size = check_batch_size(batch_size)
        x = self.check(x)
        knob, forced = self._knob, self.forced
        with torch.inference_mode():
            parts = [self._execute(x[i:i + batch_size], knob, forced) for i in range(0, x.shape[0], batch_size)]
        return RuntimeResult.concat(parts)
