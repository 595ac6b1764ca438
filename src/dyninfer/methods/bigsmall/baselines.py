"""Static and fixed-cascade baselines of the big/little report (NAS for dynamic inference, section 4.3).

* Static: torchvision's MobileNetV3-Small, MobileNetV3-Large and EfficientNet-B0 (``weights=None``), trained here
  on the same data and input size as the big/little pair (:func:`train_static`, through the shared checkpoint
  cache); the report measures them beside every other system (top-1/top-5, counted FLOPs and parameters, batch-1
  latency, throughput at the serving batch, peak memory of one batch-1 call and energy per image).
* Cascaded: the independently trained MobileNetV3-Small -> MobileNetV3-Large at a *fixed* max-softmax threshold
  (not fitted on calibration): the little model answers a sample when its max-softmax reaches the threshold, the
  big one answers the rest (:func:`fixed_cascade`). It runs on the shared
  :class:`~dyninfer.runtime.sequential.SequentialRuntime` over a :class:`~dyninfer.paths.ModulePool`, the
  runtime every cascade uses (:func:`cascade_runtime`).

Input size: the torchvision builders run unchanged on 8x8 (digits) and 28x28 (Fashion-MNIST) images: their
padded stride-2 convolutions reach 1x1 (MobileNetV3 downsamples by 32: 28 -> 14 -> 7 -> 4 -> 2 -> 1) and the
adaptive average pool copes, so no upsampling is added. One consequence: BatchNorm then sees one value per channel
in the 1x1 tail, so these models cannot train on a batch of one image — :func:`train_static` refuses a training
split whose last batch would hold a single image instead of failing mid-training. Another: torchvision builds
BatchNorm with momentum 0.01, so after a short training (a few hundred steps) the running statistics are still
mostly their initial values and the models can predict almost the same class for every image in eval mode;
:func:`train_static` then re-estimates them on training images (:func:`settle_batch_norms`) and says so.

Peak memory (:func:`call_activation_peak`): the peak of the bytes allocated and not yet freed during one call,
from the allocator's records of ``torch.profiler`` (``profile_memory=True``), each allocation and free in time order
(finer than summing per-operator totals, which hides the temporaries inside an operator); memory that a kernel
library allocates outside PyTorch's allocator is not seen.
"""

from __future__ import annotations

import contextlib
import os
import sys
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn

from ...check import number
from ...check import device as check_device
from ...data.datasets import Dataset, Split
from ...errors import ConfigError, InputError
from ...evaluate.simulate import simulate_sequential
from ...paths import ModulePool
from ...runtime.base import as_thresholds
from ...runtime.sequential import SequentialRuntime
from ...scores import make_score
from ...train.checkpoint import cached_model
from ...train.recipe import Recipe

STATIC_MODELS = ("tv-mobilenet_v3_small", "tv-mobilenet_v3_large", "tv-efficientnet_b0")  # section 4.3, static
CASCADE_MODELS = ("tv-mobilenet_v3_small", "tv-mobilenet_v3_large")  # section 4.3, cascaded: little, big
CASCADE_SCORE = "max_softmax"  # the fixed cascade's confidence score
BN_SETTLE_STEPS = 460  # optimiser steps after which BatchNorm (momentum 0.01) keeps < 1% of its initial statistics
BN_IMAGES = 2048  # training images re-estimating the statistics of a model trained for fewer steps


# ----------------------------------------------------------------------------------------- training

def train_static(names: Sequence[str] | None, data: Dataset, recipe: Recipe, *, seed: int = 0,
                 device: str | torch.device = "cpu", progress: bool = True,
                 log: Callable[[str], None] = print) -> dict[str, tuple[nn.Module, dict]]:
    """Train each registered backbone on ``data`` with ``recipe``, or reuse it from the checkpoint cache.

    Args:
        names: registered backbone names; None: :data:`STATIC_MODELS`.
        data: the dataset (the models are built for its spec: classes, channels, image size).
        recipe: a :class:`~dyninfer.train.recipe.Recipe`, the same for every model.
        seed, device, progress, log: passed to :func:`~dyninfer.train.checkpoint.cached_model`.

    Returns:
        name -> (model in eval mode, metadata: test accuracy, FLOPs, parameters, checkpoint file, ...).

    Raises:
        ConfigError: an unknown name (naming the known ones; checked for all names before any training), or a
            training split whose last batch would hold one image (see the module doc).
        InputError: an empty training split.
    """
    from ...models import BACKBONES

    names = list(STATIC_MODELS if names is None else names)
    if not names or len(set(names)) != len(names):
        raise ConfigError(f"names must be distinct registered backbone names, got {names!r}")
    for n in names:
        BACKBONES.get(n)  # unknown: ConfigError naming the known ones, before anything trains
    n_train = len(data.train)
    if n_train == 0:
        raise InputError("the training split is empty; nothing to train on")
    if n_train % recipe.batch_size == 1:
        raise ConfigError(f"{n_train} training images in batches of {recipe.batch_size} leave a last batch of one "
                          f"image, which BatchNorm cannot train on at these models' 1x1 final resolution; change "
                          f"batch_size or the number of training images")
    steps = recipe.epochs * -(-n_train // recipe.batch_size)
    out = {}
    for n in names:
        model, meta = cached_model(n, data, recipe, seed=seed, device=device, progress=progress, log=log)
        if steps < BN_SETTLE_STEPS:  # running statistics still near their start: re-estimate them
            settle_batch_norms(model, data.train.x[:BN_IMAGES], batch_size=recipe.batch_size)
            meta = {**meta, "bn_reestimated_images": min(BN_IMAGES, n_train)}
            log(f"[static] {n}: {steps} optimiser steps leave torchvision's BatchNorm statistics (momentum 0.01) "
                f"{100 * 0.99 ** steps:.0f}% at their start; re-estimated on {min(BN_IMAGES, n_train)} training images")
        out[n] = (model.eval(), meta)
    return out


def settle_batch_norms(model: nn.Module, x: torch.Tensor, *, batch_size: int = 256) -> None:
    """Re-estimate every BatchNorm's running statistics as the plain average over ``x`` (torch's ``update_bn``);
    the model is left in eval mode."""
    dev = next(model.parameters()).device
    loader = [x[i:i + batch_size].to(dev) for i in range(0, x.shape[0], batch_size)]
    if loader and loader[-1].shape[0] == 1:
        loader = loader[:-1] or loader
    torch.optim.swa_utils.update_bn(loader, model)
    model.eval()


# ----------------------------------------------------------------------------------------- measuring

def _check_split(test: Split, what: str) -> None:
    if len(test) == 0:
        raise InputError(f"{what}: the test split is empty; pass a split with at least one image")


def topk_accuracy(logits: torch.Tensor, labels: torch.Tensor, k: int) -> float:
    """Share of samples whose label is among the ``min(k, classes)`` highest logits (N, K)."""
    k = min(k, logits.shape[1])
    top = logits.topk(k, dim=1).indices  # (N, k)
    return float((top == labels[:, None]).any(1).float().mean())


@contextlib.contextmanager
def _quiet_stderr():
    """Silence file descriptor 2 for the block: the profiler's C++ side logs a line at every start and stop (and
    a GPU probe error on machines without one) straight to it, which would flood a run's log."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def call_activation_peak(fn: Callable[[], object]) -> tuple[int, str]:
    """The peak of live bytes allocated on CPU during one call of ``fn`` (a model's forward, a runtime's call), from
    torch.profiler's allocator records; and how it was measured."""
    from torch.profiler import ProfilerActivity, profile

    with _quiet_stderr(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    try:  # every allocation (+) and free (-) of the CPU allocator, as the profiler records them
        mem = [(e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events()
               if e.name() == "[memory]" and e.device_type() == torch.autograd.DeviceType.CPU]
        method = "torch.profiler allocator records (each allocation and free in time order)"
    except AttributeError:  # a torch without the raw records: per-operator net allocations in start order
        mem = [(e.time_range.start, e.self_cpu_memory_usage) for e in prof.events()]
        method = "torch.profiler per-operator self CPU memory in start order"
    mem.sort(key=lambda t: t[0])
    live = np.cumsum([b for _, b in mem]) if mem else np.zeros(1)
    return max(int(live.max()), 0), method


def cascade_runtime(little: nn.Module, big: nn.Module, threshold: float, *, input_shape: tuple[int, ...],
                    device: str | torch.device = "cpu") -> SequentialRuntime:
    """The shared two-stage runtime: ``little`` answers when its max-softmax reaches ``threshold``, else ``big``.

    Its ``flops`` per sample are counted on ``input_shape``: little's, plus big's for a forwarded sample. The
    threshold stays settable (``runtime.knob``); a threshold of 0 keeps every answer of little, one above 1 none.
    """
    dev = check_device(device)
    pool = ModulePool({"little": little, "big": big}, input_shape=input_shape).to(dev)
    return _runtime(pool, threshold, [c.flops for c in pool.count()], dev)


def _runtime(pool: ModulePool, threshold: float, flops: Sequence[float], dev: torch.device) -> SequentialRuntime:
    thr = as_thresholds(threshold, 1, "threshold")
    return SequentialRuntime(pool.stages(), make_score(CASCADE_SCORE), thr, paths=pool.names, stage_flops=flops,
                             input_shape=pool.input_shape, device=dev)


def fixed_cascade(little: nn.Module, big: nn.Module, test: Split, *, threshold: float = 0.9,
                  batch_size: int = 256, device: str | torch.device = "cpu",
                  log: Callable[[str], None] = print) -> dict:
    """The little -> big cascade at a fixed max-softmax threshold, run for real on ``test`` (its time is measured
    beside every other system by the report, on :func:`cascade_runtime`).

    Accuracy, exit rate and FLOPs come from the two-stage run (:func:`cascade_runtime` over the whole split); top-5
    from the answering stage's logits; the run is checked against the shared trace simulation.

    Returns:
        {threshold, score, top1, top5, topk_k, mean_flops, little_flops, big_flops, exit_rate (share answered by
        little), forwarded_share, little_top1, big_top1, simulation_mismatch {pred, path}}.

    Raises:
        InputError: an empty split. ConfigError: a bad threshold or batch size.
    """
    _check_split(test, "fixed_cascade")
    number("batch_size", batch_size, lo=1, integer=True)
    dev = check_device(device)
    shape = tuple(test.x.shape[1:])  # (C, H, W)
    pool = ModulePool({"little": little, "big": big}, input_shape=shape).to(dev)
    costs = pool.count()  # FLOPs, parameters, bytes of each stage
    rt = _runtime(pool, threshold, [c.flops for c in costs], dev)  # the same runtime as cascade_runtime's
    res = rt.run(test.x, batch_size)  # the real two-stage run
    trace = pool.record(test, costs=costs, batch_size=batch_size)  # both models on every image
    sim = simulate_sequential(trace, make_score(CASCADE_SCORE), rt.knob)
    pred, path = res.pred.numpy(), res.path.numpy()
    n = len(test)
    answered = torch.from_numpy(trace.logits[path, np.arange(n)])  # (N, K) logits of the stage that answered
    labels = test.y
    little_flops, big_flops = (float(c.flops) for c in trace.costs)
    out = {"threshold": float(rt.knob[0]), "score": CASCADE_SCORE,
           "top1": float((torch.from_numpy(pred) == labels).float().mean()),
           "top5": topk_accuracy(answered, labels, 5), "topk_k": min(5, answered.shape[1]),
           "mean_flops": float(res.flops.mean()), "little_flops": little_flops, "big_flops": big_flops,
           "exit_rate": float((path == 0).mean()), "forwarded_share": float((path == 1).mean()),
           "little_top1": trace.accuracy(0), "big_top1": trace.accuracy(1),
           "simulation_mismatch": {"pred": int((pred != sim.pred).sum()), "path": int((path != sim.path).sum())}}
    log(f"[cascade] threshold {out['threshold']:g}: top-1 {out['top1']:.4f} (little {out['little_top1']:.4f}, big "
        f"{out['big_top1']:.4f}), exit rate {out['exit_rate']:.3f}, {out['mean_flops'] / 1e6:.2f} MFLOPs/img")
    return out


__all__ = ["CASCADE_MODELS", "STATIC_MODELS", "call_activation_peak", "cascade_runtime", "fixed_cascade",
           "settle_batch_norms", "topk_accuracy", "train_static"]
