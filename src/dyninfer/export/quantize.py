"""INT8 and FP16 copies of a path, each a new path with its own measured cost and trace.

:func:`quantized_pool` exports the chosen paths of a module pool to ONNX and quantises them with
onnxruntime's tools; the copies join the pool as :class:`~dyninfer.export.graph.OnnxModule` paths named
``NAME@MODE``, so recording a trace, measuring costs, sweeping, certifying, running, saving and exporting
treat them like any other path (a cascade may then take an INT8 student before an FP32 teacher).

Modes:
    ``int8-dynamic``  weights INT8, activations quantised at run time with the range of the whole batch
                      (``quantize_dynamic``): a sample's logits then depend on its batch mates, so a sequential
                      runtime (whose batch shrinks as samples leave) can disagree with the trace; prefer
                      ``int8-static`` in cascades;
    ``int8-static``   weights and activations INT8 (QDQ, per-channel weights), activation ranges calibrated
                      on calibration images (``quantize_static``; MinMax, entropy or percentile calibrator);
                      the first convolution, which reads the raw image, stays float32;
    ``fp16``          weights and compute in FP16, float32 inputs and outputs (``convert_float_to_float16``);
                      refused where onnxruntime's CPU provider cannot run the graph.
"""

from __future__ import annotations

import contextlib
import io
import os
import tempfile
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from ..errors import ConfigError
from ..paths import ModulePool
from ..runtime.cost import count_flops, count_params
from .graph import OnnxModule
from .onnx import ExportError, export_graph
from .ort_runtime import make_session

MODES = ("int8-dynamic", "int8-static", "fp16")
CALIBRATIONS = {"minmax": "MinMax", "entropy": "Entropy", "percentile": "Percentile"}


class _Reader:
    """onnxruntime's calibration data reader over calibration images, in batches."""

    def __init__(self, images: np.ndarray, name: str, batch: int = 64) -> None:
        self.batches = iter([{name: np.ascontiguousarray(images[i:i + batch])} for i in range(0, len(images), batch)])

    def get_next(self):
        return next(self.batches, None)


def quantize_graph(src: str | os.PathLike, dst: str | os.PathLike, mode: str, *,
                   calib_images: np.ndarray | None = None, calibration: str = "minmax") -> Path:
    """Write a ``mode`` copy of the float32 graph ``src`` to ``dst``.

    Args:
        calib_images: (N, C, H, W) float32 calibration images, needed by ``int8-static``.
        calibration: how ``int8-static`` sets activation ranges from them: ``minmax``, ``entropy`` or
            ``percentile`` (onnxruntime's calibrators).

    Raises:
        ConfigError: an unknown mode, no calibration images for static INT8, or a graph the CPU provider
            cannot run in that precision.
    """
    from onnxruntime import quantization as q

    if mode not in MODES:
        raise ConfigError(f"unknown quantisation mode {mode!r}; known: {list(MODES)}")
    if calibration not in CALIBRATIONS:
        raise ConfigError(f"unknown calibration {calibration!r}; known: {list(CALIBRATIONS)}")
    src, dst = Path(src), Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    quiet = contextlib.redirect_stdout(io.StringIO())
    with tempfile.TemporaryDirectory() as tmp, quiet, contextlib.redirect_stderr(io.StringIO()):
        pre = Path(tmp) / "pre.onnx"
        if mode == "fp16":
            import onnx
            from onnxruntime.transformers.float16 import convert_float_to_float16

            onnx.save(convert_float_to_float16(onnx.load(str(src)), keep_io_types=True), str(dst))
        else:
            q.quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
            if mode == "int8-dynamic":
                q.quantize_dynamic(str(pre), str(dst), weight_type=q.QuantType.QInt8)
            else:
                if calib_images is None or len(calib_images) == 0:
                    raise ConfigError("int8-static needs calibration images (calib_images=...) for its activation "
                                      "ranges")
                name = make_session(pre).get_inputs()[0].name
                q.quantize_static(str(pre), str(dst), _Reader(np.asarray(calib_images, np.float32), name),
                                  nodes_to_exclude=_first_conv(pre), quant_format=q.QuantFormat.QDQ, per_channel=True,
                                  activation_type=q.QuantType.QUInt8, weight_type=q.QuantType.QInt8,
                                  calibrate_method=getattr(q.CalibrationMethod, CALIBRATIONS[calibration]))
    try:
        session = make_session(dst)
        session.run(None, {session.get_inputs()[0].name: np.zeros((2, *_input_shape(session)), np.float32)})
    except Exception as e:
        dst.unlink(missing_ok=True)
        raise ConfigError(f"onnxruntime's CPU provider cannot run the {mode} graph of {src.name} here "
                          f"({str(e).splitlines()[0][:200]}); use another mode") from None
    return dst


def _first_conv(path: Path) -> list[str]:
    """The first convolution's node name: it stays float32 in static INT8. It reads the raw image, and
    quantising it cost 0.7 points (cnn-m) and 7 points (cnn-s) of Fashion-MNIST calibration accuracy, against
    under 0.1 point for everything else quantised; its share of the FLOPs is small."""
    import onnx

    convs = [n.name for n in onnx.load(str(path)).graph.node if n.op_type == "Conv"]
    return convs[:1]


def _input_shape(session) -> tuple[int, ...]:
    return tuple(int(d) for d in session.get_inputs()[0].shape[1:])


def quantized_pool(pool: ModulePool, names: Sequence[str], modes: Sequence[str], folder: str | os.PathLike, *,
                   calib_images: torch.Tensor | None = None, calibration: str = "minmax", replace: bool = False,
                   log: Callable[[str], None] | None = print) -> ModulePool:
    """A pool with ``mode`` copies of the paths ``names`` (``NAME@MODE``), each placed before its source.

    Args:
        pool: the float32 pool.
        names: the paths to quantise (e.g. the students of a cascade).
        modes: see :data:`MODES`.
        folder: where the graphs are written (kept: the new paths run from there).
        calib_images: calibration images (N, C, H, W) in [0, 1] for ``int8-static`` (the first 1024 are used).
        calibration: activation-range calibrator of ``int8-static`` (see :func:`quantize_graph`).
        replace: drop the float32 sources of the copies (a pool of INT8 students and a float32 teacher).

    Returns:
        a new :class:`ModulePool` over the same modules plus the copies.
    """
    missing = [n for n in names if n not in pool.names]
    if missing:
        raise ConfigError(f"the pool has no paths {missing}; it has {pool.names}")
    if pool.input_shape is None:
        raise ConfigError("the pool does not know its input shape; pass input_shape=(C, H, W) to ModulePool")
    folder = Path(folder)
    calib = None if calib_images is None else calib_images[:1024].float().cpu()
    sample = calib[:16] if calib is not None else torch.rand(16, *pool.input_shape,
                                                             generator=torch.Generator().manual_seed(0))
    models: dict = {}
    for name, model in pool.models.items():
        if name in names:
            fp32 = folder / f"{name}.fp32.onnx"
            try:
                export_graph(model, (sample,), fp32, ["images"], ["logits"])
            except ExportError as e:
                raise ConfigError(f"cannot quantise {name}: {e}") from None
            flops, params = count_flops(model, pool.input_shape), count_params(model)
            for mode in modes:
                dst = quantize_graph(fp32, folder / f"{name}@{mode}.onnx", mode,
                                     calib_images=None if calib is None else calib.numpy(), calibration=calibration)
                models[f"{name}@{mode}"] = OnnxModule(dst, flops=flops, params=params, precision=mode, source=name)
                if log:
                    log(f"[quantize] {name}@{mode}: {dst.stat().st_size / 1e6:.2f} MB (float32 "
                        f"{fp32.stat().st_size / 1e6:.2f} MB)")
            if replace:
                continue
        models[name] = model
    return ModulePool(models, input_shape=pool.input_shape,
                      files={n: f for n, f in pool.files.items() if n in models})
