"""Static and fixed-cascade baselines of the big/little report (NAS for dynamic inference, section 4.3).

* Static: torchvision's MobileNetV3-Small, MobileNetV3-Large and EfficientNet-B0 (``weights=None``), trained here
  on the same data and input size as the big/little pair (:func:`train_static`, through the shared checkpoint
  cache) and measured side by side (:func:`measure_static`): top-1/top-5, counted FLOPs and parameters, batch-1
  latency, throughput at the serving batch, peak memory of one batch-1 forward and energy per image.
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

Peak memory (:func:`peak_forward_memory`): parameters and buffers, plus the input image, plus the peak of the bytes
allocated and not yet freed during one batch-1 forward, after one warm-up forward. On CPU the allocations are the
allocator's records of ``torch.profiler`` (``profile_memory=True``), each allocation and free in time order (finer
than summing per-operator totals, which hides the temporaries inside an operator); memory that a kernel library
allocates outside PyTorch's allocator is not seen. On CUDA it is ``torch.cuda.max_memory_allocated`` over the call.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import sys
from typing import Callable, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from ...check import choice, number
from ...check import device as check_device
from ...data.datasets import Dataset, Split
from ...errors import ConfigError, InputError
from ...evaluate.simulate import simulate_sequential
from ...paths import ModulePool
from ...runtime.base import as_thresholds
from ...runtime.cost import (CLOCKS, DEFAULT_CPU_WATTS_PER_THREAD, EnergyMeter, count_flops, count_params,
                             interleaved_latency, model_bytes)
from ...runtime.sequential import SequentialRuntime
from ...scores import make_score
from ...train.checkpoint import cached_model
from ...train.recipe import Recipe
from ...train.trainer import predict_logits

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


def peak_forward_memory(model: nn.Module, x: torch.Tensor) -> dict:
    """Peak memory of one forward of ``model`` on ``x`` (see the module doc for what is counted and how).

    Returns:
        {"peak_memory_bytes" (the sum of the three parts), "model_bytes" (parameters and buffers), "input_bytes",
         "activation_peak_bytes", "memory_method"}.
    """
    dev = x.device
    weights = sum(model_bytes(model).values())
    inp = x.numel() * x.element_size()
    model.eval()
    with torch.inference_mode():
        model(x)  # warm-up: lazily created state is not an activation
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
            base = torch.cuda.memory_allocated(dev)
            torch.cuda.reset_peak_memory_stats(dev)
            model(x)
            torch.cuda.synchronize(dev)
            act, method = torch.cuda.max_memory_allocated(dev) - base, "torch.cuda.max_memory_allocated over the call"
        else:
            act, method = call_activation_peak(lambda: model(x))
    return {"peak_memory_bytes": int(weights + inp + act), "model_bytes": int(weights), "input_bytes": int(inp),
            "activation_peak_bytes": int(act), "memory_method": method}


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


def _plain_call(model: nn.Module, device: torch.device) -> Callable[[torch.Tensor, int], None]:
    from ...pipeline import _plain  # the shared timed call of a plain model (waits for the answer on the host)

    return _plain(model, device)


def _cycle(fn: Callable[[torch.Tensor], object], xs: Sequence[torch.Tensor]) -> Callable[[], object]:
    """A zero-argument call that runs ``fn`` on the next of ``xs`` each time (round robin)."""
    it = itertools.cycle(xs)
    return lambda: fn(next(it))


def _timing_inputs(test: Split, dev: torch.device, timing_samples: int | None,
                   batch1_samples: int) -> tuple[torch.Tensor, list[torch.Tensor]]:
    xs = test.x[:timing_samples].to(dev)  # (n, C, H, W)
    singles = [test.x[i:i + 1].to(dev) for i in range(min(batch1_samples, len(test)))]  # (1, C, H, W) each
    return xs, singles


def _check_timing(serving_batch, rounds, batch1_samples, warmup, timing_samples, clock, cpu_watts_per_thread):
    number("serving_batch", serving_batch, lo=1, integer=True)
    number("rounds", rounds, lo=1, integer=True)
    number("batch1_samples", batch1_samples, lo=1, integer=True)
    number("warmup", warmup, lo=0, integer=True)
    number("timing_samples", timing_samples, lo=1, integer=True, none_ok=True)
    choice("clock", clock, sorted(CLOCKS))
    number("cpu_watts_per_thread", cpu_watts_per_thread, lo=0)


def _time(serving: dict[str, Callable[[], object]], single: dict[str, Callable[[], object]], *, rounds: int,
          n_single: int, warmup: int, clock: str) -> tuple[dict, dict]:
    """Interleaved rounds at the serving batch (wall clock: several threads work on a batch) and single-image calls
    (``rounds * n_single`` timed calls per name, after ``warmup`` untimed ones)."""
    lat_b = interleaved_latency(serving, rounds=rounds, warmup=1, clock="wall")
    lat_1 = interleaved_latency(single, rounds=rounds * n_single, warmup=warmup, clock=clock)
    return lat_b, lat_1


def _timing_row(lat_b: dict, lat_1: dict, n_images: int, serving_batch: int) -> dict:
    return {"batch1_ms_median": lat_1["median_ms"], "batch1_ms_p25": lat_1["p25_ms"], "batch1_ms_p75": lat_1["p75_ms"],
            "batch1_count": lat_1["rounds"], "batch1_clock": lat_1["clock"],
            "throughput": n_images / (lat_b["median_ms"] / 1e3), "serving_batch": serving_batch,
            "serving_rounds": lat_b["rounds"], "timed_images": n_images}


def _energy(fn: Callable[[], object], n_images: int, dev: torch.device, cpu_watts_per_thread: float) -> dict:
    meter = EnergyMeter(dev, cpu_watts_per_thread)
    with meter:
        fn()
    return {"energy_j_per_image": meter.joules / n_images, "energy_source": meter.source}


def measure_static(models: Mapping[str, nn.Module], test: Split, *, serving_batch: int = 256, rounds: int = 3,
                   batch1_samples: int = 50, warmup: int = 10, timing_samples: int | None = None,
                   clock: str = "wall", device: str | torch.device = "cpu",
                   cpu_watts_per_thread: float = DEFAULT_CPU_WATTS_PER_THREAD,
                   log: Callable[[str], None] = print) -> list[dict]:
    """Accuracy and every cost of each static model, the models timed side by side in interleaved rounds.

    Args:
        models: name -> model (images (N, C, H, W) in [0, 1] -> logits).
        test: the split to evaluate and time on.
        serving_batch: batch size of the throughput and energy measurement.
        rounds: interleaved rounds at the serving batch; at batch 1, each round times every model on each of
            ``batch1_samples`` images one at a time (``rounds * batch1_samples`` timed calls per model).
        warmup: untimed single-image calls per model before the batch-1 rounds.
        timing_samples: images of ``test`` timed at the serving batch (None: all).
        clock: clock of the batch-1 calls (``wall`` or ``cpu``); the serving batch uses the wall clock.
        device: where the models run (they are moved there).
        cpu_watts_per_thread: the stated power model where no energy counter exists.

    Returns:
        one row per model: ``name, top1, top5, topk_k, flops, params, model_bytes, batch1_ms_median,
        batch1_ms_p25, batch1_ms_p75, batch1_count, batch1_clock, throughput (images/s), serving_batch,
        serving_rounds, timed_images, peak_memory_bytes, activation_peak_bytes, input_bytes, memory_method,
        energy_j_per_image, energy_source``.

    Raises:
        InputError: an empty split. ConfigError: no models or a bad setting.
    """
    _check_split(test, "measure_static")
    if not models:
        raise ConfigError("measure_static needs at least one model")
    _check_timing(serving_batch, rounds, batch1_samples, warmup, timing_samples, clock, cpu_watts_per_thread)
    dev = check_device(device)
    models = {n: m.to(dev).eval() for n, m in models.items()}
    shape = tuple(test.x.shape[1:])  # (C, H, W)
    xs, singles = _timing_inputs(test, dev, timing_samples, batch1_samples)
    plain = {n: _plain_call(m, dev) for n, m in models.items()}
    log(f"[static] {len(models)} models, {rounds} interleaved rounds: batch {serving_batch} over {len(xs)} images, "
        f"batch 1 over {len(singles)} images x {rounds}")
    lat_b, lat_1 = _time({n: (lambda f=f: f(xs, serving_batch)) for n, f in plain.items()},
                         {n: _cycle(lambda x, f=f: f(x, 1), singles) for n, f in plain.items()},
                         rounds=rounds, n_single=len(singles), warmup=warmup, clock=clock)
    rows = []
    for n, m in models.items():
        with torch.inference_mode():
            logits = predict_logits(m, test.x, batch_size=serving_batch)  # (N, K)
        k = min(5, logits.shape[1])
        mem = peak_forward_memory(m, singles[0])
        row = {"name": n, "top1": topk_accuracy(logits, test.y, 1), "top5": topk_accuracy(logits, test.y, 5),
               "topk_k": k, "flops": count_flops(m, shape, dev), "params": count_params(m),
               **_timing_row(lat_b[n], lat_1[n], len(xs), serving_batch), **mem,
               **_energy(lambda f=plain[n]: f(xs, serving_batch), len(xs), dev, cpu_watts_per_thread)}
        log(f"[static] {n}: top-1 {row['top1']:.4f}, {row['flops'] / 1e6:.2f} MFLOPs, {row['params'] / 1e6:.2f} M "
            f"params, batch 1 {row['batch1_ms_median']:.2f} ms, {row['throughput']:.0f} img/s at batch "
            f"{serving_batch}, peak {row['peak_memory_bytes'] / 2**20:.1f} MiB")
        rows.append(row)
    return rows


# ----------------------------------------------------------------------------------------- fixed cascade

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
                  serving_batch: int = 256, rounds: int = 3, batch1_samples: int = 50, warmup: int = 10,
                  timing_samples: int | None = None, clock: str = "wall", device: str | torch.device = "cpu",
                  cpu_watts_per_thread: float = DEFAULT_CPU_WATTS_PER_THREAD,
                  log: Callable[[str], None] = print) -> dict:
    """The little -> big cascade at a fixed max-softmax threshold, run for real on ``test`` and timed.

    Accuracy, exit rate and FLOPs come from the two-stage run (:func:`cascade_runtime` over the whole split at the
    serving batch); top-5 from the answering stage's logits. The cascade is timed in interleaved rounds beside the
    plain little and big models (same protocol as :func:`measure_static`).

    Args:
        little, big: the two models (independently trained), cheapest first.
        test: the split.
        threshold: the fixed max-softmax threshold (not fitted): little keeps a sample whose score reaches it.
        serving_batch, rounds, batch1_samples, warmup, timing_samples, clock, device, cpu_watts_per_thread:
            as in :func:`measure_static`.

    Returns:
        {threshold, score, top1, top5, topk_k, mean_flops, little_flops, big_flops, exit_rate (share answered by
        little), forwarded_share, little_top1, big_top1, simulation_mismatch {pred, path} (the run against the
        shared trace simulation), batch1_ms_median, batch1_count, ..., throughput, energy_j_per_image,
        energy_source, side_by_side {little, big: the plain models' timing in the same rounds}}.

    Raises:
        InputError: an empty split. ConfigError: a bad threshold or setting.
    """
    _check_split(test, "fixed_cascade")
    _check_timing(serving_batch, rounds, batch1_samples, warmup, timing_samples, clock, cpu_watts_per_thread)
    dev = check_device(device)
    shape = tuple(test.x.shape[1:])  # (C, H, W)
    pool = ModulePool({"little": little, "big": big}, input_shape=shape).to(dev)
    costs = pool.count()  # FLOPs, parameters, bytes of each stage
    rt = _runtime(pool, threshold, [c.flops for c in costs], dev)  # the same runtime as cascade_runtime's
    res = rt.run(test.x, serving_batch)  # the real two-stage run
    trace = pool.record(test, costs=costs, batch_size=serving_batch)  # both models on every image
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
    xs, singles = _timing_inputs(test, dev, timing_samples, batch1_samples)
    plain = {k: _plain_call(m, dev) for k, m in (("little", little), ("big", big))}
    log(f"[cascade] threshold {out['threshold']:g}: {rounds} interleaved rounds beside little and big")
    serving = {"cascade": lambda: rt.run(xs, serving_batch),
               **{k: (lambda f=f: f(xs, serving_batch)) for k, f in plain.items()}}
    single = {"cascade": _cycle(rt, singles), **{k: _cycle(lambda x, f=f: f(x, 1), singles) for k, f in plain.items()}}
    lat_b, lat_1 = _time(serving, single, rounds=rounds, n_single=len(singles), warmup=warmup, clock=clock)
    out.update(_timing_row(lat_b["cascade"], lat_1["cascade"], len(xs), serving_batch))
    out.update(_energy(serving["cascade"], len(xs), dev, cpu_watts_per_thread))
    out["side_by_side"] = {k: _timing_row(lat_b[k], lat_1[k], len(xs), serving_batch) for k in plain}
    log(f"[cascade] top-1 {out['top1']:.4f} (little {out['little_top1']:.4f}, big {out['big_top1']:.4f}), exit rate "
        f"{out['exit_rate']:.3f}, {out['mean_flops'] / 1e6:.2f} MFLOPs/img, {out['throughput']:.0f} img/s at batch "
        f"{serving_batch}, batch 1 {out['batch1_ms_median']:.2f} ms")
    return out


__all__ = ["CASCADE_MODELS", "STATIC_MODELS", "cascade_runtime", "fixed_cascade", "measure_static",
           "peak_forward_memory", "topk_accuracy", "train_static"]
