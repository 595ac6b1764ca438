"""Cost meters: FLOPs, parameters, bytes, latency, energy and CO2 of a path.

Energy is *measured* where a counter exists (Intel/AMD RAPL through powercap, NVIDIA NVML) and
otherwise *estimated* as power x measured time from a stated power model; every energy figure
carries its ``source`` so a report can say which it is.
"""

from __future__ import annotations

import contextlib
import dataclasses
import glob
import itertools
import os
import statistics
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Iterator

import numpy as np
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from ..check import number
from ..errors import ConfigError, TraceError

DEFAULT_GRID_G_PER_KWH = 400.0  # gCO2 per kWh, as in the backbone-selection paper
DEFAULT_CPU_WATTS_PER_THREAD = 8.0  # stated power model for CPUs without an energy counter


def model_device(model: nn.Module) -> torch.device:
    """The device of a model's first parameter or buffer (CPU for a model without tensors)."""
    first = next(itertools.chain(model.parameters(), model.buffers()), None)
    return first.device if first is not None else torch.device("cpu")


def count_flops(model: nn.Module, input_shape: tuple[int, ...], device: str | torch.device | None = None) -> int:
    """FLOPs of one forward pass on one sample (2 per multiply-add), counted by torch's FlopCounterMode.

    The probe image is made on ``device`` (default: :func:`model_device`)."""
    x = torch.zeros(1, *input_shape, device=model_device(model) if device is None else device)
    was_training = model.training
    model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x)
    model.train(was_training)
    return int(counter.get_total_flops())


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def model_bytes(model: nn.Module) -> dict[str, int]:
    """Bytes of parameters and buffers, per device (e.g. ``{"cpu": 123456}``)."""
    out: dict[str, int] = {}
    for t in list(model.parameters()) + list(model.buffers()):
        key = str(t.device)
        out[key] = out.get(key, 0) + t.numel() * t.element_size()
    return out


@dataclass
class LatencyStats:
    """Wall-clock time of one call at a batch size, over repeats after warm-up."""

    batch: int
    median_s: float
    p25_s: float
    p75_s: float
    mean_s: float
    std_s: float
    repeats: int

    @property
    def per_sample_s(self) -> float:
        return self.median_s / self.batch

    @property
    def throughput(self) -> float:
        """Samples per second at this batch size (median)."""
        return self.batch / self.median_s


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ----------------------------------------------------------------------------- interleaved timing

CLOCKS = {"cpu": time.thread_time, "wall": time.perf_counter}


def _stats(a: np.ndarray) -> dict:
    q25, q50, q75 = np.percentile(a, [25, 50, 75])
    return {"median_ms": float(q50), "mean_ms": float(a.mean()), "std_ms": float(a.std()), "p25_ms": float(q25),
            "p75_ms": float(q75), "robust_std_ms": float((q75 - q25) / 1.349)}


def interleaved_latency(calls: dict[str, Callable[[], object]], *, rounds: int, warmup: int = 5,
                        clock: str = "cpu") -> dict[str, dict]:
    """Time each call once per round, rounds interleaved so drifting machine load hits all alike.

    Args:
        calls: name -> zero-argument callable.
        rounds: timed calls per name.
        clock: ``cpu`` (CPU time of the calling thread: with one torch thread this is the latency on a
            dedicated core, unaffected by other jobs taking the CPU away) or ``wall`` (wall clock).

    Returns:
        name -> {median_ms, mean_ms, std_ms, p25_ms, p75_ms, robust_std_ms, rounds, clock, times_ms, wall: {...}}
        where the top-level figures use ``clock`` (``times_ms``: every round's time, in round order, for paired
        comparisons) and ``wall`` holds the wall-clock figures of the same calls.
    """
    if clock not in CLOCKS:
        raise ConfigError(f"unknown clock {clock!r}; use one of {sorted(CLOCKS)}")
    number("rounds", rounds, lo=1, integer=True)
    number("warmup", warmup, lo=0, integer=True)
    tick = CLOCKS[clock]
    for _ in range(warmup):
        for fn in calls.values():
            fn()
    times: dict[str, list[float]] = {k: [] for k in calls}
    walls: dict[str, list[float]] = {k: [] for k in calls}
    for _ in range(rounds):
        for k, fn in calls.items():
            w0, t0 = time.perf_counter(), tick()
            fn()
            times[k].append(tick() - t0)
            walls[k].append(time.perf_counter() - w0)
    return {k: {**_stats(np.asarray(times[k]) * 1e3), "rounds": rounds, "clock": clock,
                "times_ms": (np.asarray(times[k]) * 1e3).tolist(), "wall": _stats(np.asarray(walls[k]) * 1e3)}
            for k in calls}


def paired_overhead(lat: dict, name: str, reference: str, *, level: float = 0.95, seed: int = 0) -> dict:
    """How much slower ``name`` is than ``reference``, from rounds of :func:`interleaved_latency`.

    Each round timed both calls back to back, so the per-round ratio cancels the machine's drift; the
    figure is the median ratio minus one (percent) with a percentile-bootstrap interval.

    Returns:
        {"pct", "ci_low_pct", "ci_high_pct", "level", "rounds"}.
    """
    from ..evaluate.stats import bootstrap_ci

    ratio = np.asarray(lat[name]["times_ms"]) / np.asarray(lat[reference]["times_ms"])
    lo, hi = bootstrap_ci(ratio, stat=np.median, level=level, seed=seed) if ratio.size > 1 else (np.nan, np.nan)
    return {"pct": float(100 * (np.median(ratio) - 1)), "ci_low_pct": 100 * (lo - 1), "ci_high_pct": 100 * (hi - 1),
            "level": level, "rounds": int(ratio.size)}


def time_calls(fn: Callable[[], object], *, repeats: int = 20, warmup: int = 3, batch: int = 1,
               device: str | torch.device = "cpu", min_time_s: float = 0.0) -> LatencyStats:
    """Time ``fn()``: ``warmup`` untimed calls, then at least ``repeats`` timed ones (and ``min_time_s``)."""
    device = torch.device(device)
    for _ in range(warmup):
        fn()
    _sync(device)
    times: list[float] = []
    start_all = time.perf_counter()
    while len(times) < repeats or time.perf_counter() - start_all < min_time_s:
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    q = np.percentile(times, [25, 50, 75])
    return LatencyStats(batch=batch, median_s=float(q[1]), p25_s=float(q[0]), p75_s=float(q[2]),
                        mean_s=float(statistics.fmean(times)),
                        std_s=float(statistics.pstdev(times)) if len(times) > 1 else 0.0, repeats=len(times))


def measure_latency(model: nn.Module, x: torch.Tensor, *, repeats: int = 20, warmup: int = 3,
                    min_time_s: float = 0.0) -> LatencyStats:
    """Latency of ``model(x)`` in eval mode without autograd."""
    model.eval()

    def call():
        with torch.inference_mode():
            model(x)

    return time_calls(call, repeats=repeats, warmup=warmup, batch=int(x.shape[0]), device=x.device,
                      min_time_s=min_time_s)


# ----------------------------------------------------------------------------------------- energy

def _rapl_files() -> list[str]:
    files = sorted(glob.glob("/sys/class/powercap/intel-rapl:*/energy_uj"))
    return [f for f in files if os.access(f, os.R_OK) and f.count(":") == 1]


class EnergyMeter:
    """Measures energy over a block: ``with meter: ...; meter.joules``.

    Sources, in order: RAPL package counters (CPU), NVML (CUDA device), else an estimate
    ``watts x elapsed`` with ``watts = threads x cpu_watts_per_thread`` — labelled ``estimated``.

    Args:
        device: the device the work runs on.
        cpu_watts_per_thread: the stated power model used when no counter exists.
    """

    def __init__(self, device: str | torch.device = "cpu", cpu_watts_per_thread: float = DEFAULT_CPU_WATTS_PER_THREAD):
        number("cpu_watts_per_thread", cpu_watts_per_thread, lo=0)
        self.device = torch.device(device)
        self.cpu_watts_per_thread = cpu_watts_per_thread
        self._rapl = _rapl_files() if self.device.type == "cpu" else []
        self._nvml = None
        if self.device.type == "cuda":
            try:  # optional dependency: nvidia-ml-py
                import pynvml

                pynvml.nvmlInit()
                self._nvml = pynvml.nvmlDeviceGetHandleByIndex(self.device.index or 0)
                pynvml.nvmlDeviceGetTotalEnergyConsumption(self._nvml)
            except Exception:
                self._nvml = None
        self.joules = 0.0
        self.seconds = 0.0

    @property
    def source(self) -> str:
        if self._rapl:
            return "measured (RAPL)"
        if self._nvml is not None:
            return "measured (NVML)"
        threads = torch.get_num_threads()
        return (f"estimated ({threads} threads x {self.cpu_watts_per_thread:g} W per busy thread x measured time; "
                f"no energy counter on this machine)")

    @property
    def measured(self) -> bool:
        return bool(self._rapl) or self._nvml is not None

    def _read(self) -> float:
        if self._rapl:
            return sum(int(open(f).read()) for f in self._rapl) / 1e6
        if self._nvml is not None:
            import pynvml

            return pynvml.nvmlDeviceGetTotalEnergyConsumption(self._nvml) / 1e3
        return 0.0

    def __enter__(self) -> "EnergyMeter":
        _sync(self.device)
        self._e0 = self._read()
        self._t0 = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        _sync(self.device)
        self.seconds = time.perf_counter() - self._t0
        if self.measured:
            self.joules = max(self._read() - self._e0, 0.0)
        else:
            self.joules = self.seconds * torch.get_num_threads() * self.cpu_watts_per_thread


def co2_grams(joules: float, grid_g_per_kwh: float = DEFAULT_GRID_G_PER_KWH) -> float:
    """Grams of CO2 for ``joules`` at a grid intensity in gCO2/kWh."""
    return joules / 3.6e6 * grid_g_per_kwh


def energy_per_sample(calls: dict[str, Callable[[], object]], n: int, *, device: str | torch.device = "cpu",
                      cpu_watts_per_thread: float = DEFAULT_CPU_WATTS_PER_THREAD,
                      grid_g_per_kwh: float = DEFAULT_GRID_G_PER_KWH) -> dict[str, dict]:
    """Energy of each call (one pass over ``n`` samples) through :class:`EnergyMeter`: name -> ``joules_per_image``,
    ``source`` (measured where a counter exists, otherwise the stated power model) and ``co2_g_per_10k_images``."""
    out = {}
    for k, fn in calls.items():
        meter = EnergyMeter(device, cpu_watts_per_thread)
        with meter:
            fn()
        out[k] = {"joules_per_image": meter.joules / n, "source": meter.source,
                  "co2_g_per_10k_images": co2_grams(meter.joules / n * 1e4, grid_g_per_kwh)}
    return out


# ----------------------------------------------------------------------------------------- path cost

@dataclass
class PathCost:
    """Everything measured about one path (a cascade stage, an exit, a backbone, a subnetwork).

    FLOPs, parameters and bytes are counted; latency and energy are measured (empty until then)."""

    name: str
    flops: int  # per sample, counted
    params: int
    bytes: int
    latency: dict[int, LatencyStats] = field(default_factory=dict)  # batch size -> stats
    energy_j_per_sample: float = 0.0  # at the largest measured batch
    energy_source: str = ""
    device: str = "cpu"
    skip_flops: int = 0  # per sample when the path is passed without answering (an exit's segment; 0 in a pool)

    def time_per_batch(self, batch: int | np.ndarray) -> np.ndarray:
        """Predicted wall time of one call at ``batch`` samples: piecewise-linear in the measured batch sizes.

        Beyond the largest measured batch the last segment's slope continues; where noise made that slope zero
        or negative (a larger batch measured no slower), the time grows in proportion to the batch instead, so a
        prediction is never negative. Zero samples cost nothing (the runtime skips the call).
        """
        if not self.latency:
            raise TraceError(f"path {self.name} has no latency measurements; measure them with dyninfer.paths.measure_costs")
        bs = np.array(sorted(self.latency), dtype=float)
        ts = np.array([self.latency[int(b)].median_s for b in bs])
        b = np.asarray(batch, dtype=float)
        if len(bs) == 1:
            t = ts[0] * b / bs[0]
        else:
            slope = (ts[-1] - ts[-2]) / (bs[-1] - bs[-2])
            if slope <= 0:
                slope = ts[-1] / bs[-1]
            t = np.where(b > bs[-1], ts[-1] + slope * (b - bs[-1]), np.interp(b, bs, ts))
        return np.where(b > 0, t, 0.0)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["latency"] = {str(k): asdict(v) for k, v in self.latency.items()}
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "PathCost":
        d = dict(d)
        d["latency"] = {int(k): LatencyStats(**v) for k, v in d.get("latency", {}).items()}
        return cls(**d)


def median_costs(rounds: list[list[PathCost]]) -> list[PathCost]:
    """Merge cost measurements taken in interleaved rounds: per path and batch size, the round with the median time.

    On a CPU shared with other jobs one round can land on a burst of contention; the median round does not.
    """
    out = []
    for per_path in zip(*rounds):
        base = per_path[0]
        lat = {}
        for b in base.latency:
            stats = sorted((c.latency[b] for c in per_path), key=lambda s: s.median_s)
            lat[b] = stats[len(stats) // 2]
        energy = sorted(per_path, key=lambda c: c.energy_j_per_sample)[len(per_path) // 2]
        out.append(dataclasses.replace(base, latency=lat, energy_j_per_sample=energy.energy_j_per_sample,
                                       energy_source=energy.energy_source))
    return out


@contextlib.contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Set torch's intra-op threads for a block and restore them after, also on an error (None: leave as is)."""
    old = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(old)
