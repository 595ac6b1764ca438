"""An ONNX graph as a path of a module pool: :class:`OnnxModule` runs it on onnxruntime behind the
``nn.Module`` interface, so a quantised copy of a student is traced, timed, swept, certified, saved with
a policy and exported like any other path."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..errors import CheckpointError
from .ort_runtime import make_session


class OnnxModule(nn.Module):
    """Images (N, C, H, W) -> logits (N, K) through an ONNX graph on onnxruntime (CPU).

    Args:
        path: the ``.onnx`` file (input ``images``, last output the logits).
        flops: FLOPs per image counted on the module it was exported from (an INT8 graph does the same
            multiply-adds in another precision).
        params: parameters of that module.
        precision: ``fp32``, ``fp16``, ``int8-dynamic`` or ``int8-static``.
        source: the path it was made from.
        threads: intra-op threads (default onnxruntime's).
    """

    def __init__(self, path: str | os.PathLike, *, flops: int, params: int = 0, precision: str = "fp32",
                 source: str | None = None, threads: int | None = None) -> None:
        super().__init__()
        self.path = Path(path)
        try:
            self.graph_bytes = self.path.read_bytes()
        except FileNotFoundError:
            raise CheckpointError(f"{self.path} is missing; quantise or export the path again") from None
        self.flops, self.params, self.precision, self.source, self.threads = int(flops), int(params), precision, source, threads
        self._session = make_session(self.path, threads=threads)
        self._input = self._session.get_inputs()[0].name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self._session.run(None, {self._input: np.ascontiguousarray(x.detach().cpu().numpy(), np.float32)})[-1]
        return torch.from_numpy(out)

    def extra_repr(self) -> str:
        return f"{self.path.name}, precision={self.precision}, source={self.source}"

    def __deepcopy__(self, memo) -> "OnnxModule":
        return OnnxModule(self.path, flops=self.flops, params=self.params, precision=self.precision,
                          source=self.source, threads=self.threads)

    def describe(self) -> dict:
        """What a saved pool records about this path (beside its copied graph)."""
        return {"flops": self.flops, "params": self.params, "precision": self.precision, "source": self.source}
