"""The shared pipeline every method stands on: data -> trained (cached) backbones -> costs -> traces.

``prepare(...)`` returns the dataset, the trained models of a preset, and calibration and test
traces of every model, each cached on disk (checkpoints by model/data/recipe/seed, traces by the
checkpoints they were recorded from) so that later runs and other methods reuse them.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Callable

from torch import nn

from .data.datasets import Dataset, load_dataset
from .errors import ConfigError, TraceError
from .io import cache_dir
from .presets import Preset, get_preset
from .trace import Trace, measure_costs, record_trace
from .train.checkpoint import cache_key, cached_model


@dataclass
class Prepared:
    data: Dataset
    preset: Preset
    models: dict[str, nn.Module]
    model_meta: dict[str, dict]
    calib: Trace
    test: Trace


def prepare(dataset: str = "fashion-mnist", preset: str | Preset = "quick", *, seed: int = 0,
            data_root: str | None = None, models: list[str] | None = None, device: str = "cpu",
            progress: bool = True, log: Callable[[str], None] = print, remeasure: bool = False) -> Prepared:
    """Load data, train or reuse the preset's models, and record (or reuse) their traces.

    Args:
        dataset: registry name of the dataset.
        preset: preset name or object.
        seed: seed of splits and training.
        data_root: dataset folder override.
        models: subset of the preset's models to use (default: all of them).
        remeasure: record traces and costs again even if cached.
    """
    p = get_preset(preset) if isinstance(preset, str) else preset
    log(f"[data] loading {dataset}")
    data = load_dataset(dataset, root=data_root, seed=seed, calib_size=p.calib_size, train_limit=p.train_limit)
    log(f"[data] {data.meta}")
    names = models or list(p.models)
    unknown = [n for n in names if n not in p.models]
    if unknown:
        raise ConfigError(f"preset {p.name!r} has no models {unknown}; it has {list(p.models)}")
    trained, metas = {}, {}
    for name in names:
        trained[name], metas[name] = cached_model(name, data, p.models[name], seed=seed, device=device,
                                                  progress=progress, log=log)
    keys = [cache_key(n, {}, data, p.models[n].to_dict(), seed) for n in names]
    tkey = hashlib.sha1(json.dumps([names, keys, device, p.latency_repeats, p.latency_min_s]).encode()).hexdigest()[:16]
    folder = cache_dir() / "traces" / data.spec.name / tkey
    traces: dict[str, Trace] = {}
    if not remeasure:
        try:
            traces = {s: Trace.load(folder / s) for s in ("calib", "test")}
            log(f"[trace] reusing {folder}")
        except TraceError:
            traces = {}
    if not traces:
        sample = data.calib.x[:256].to(device)
        costs = measure_costs(trained, sample, repeats=p.latency_repeats, min_time_s=p.latency_min_s, log=log)
        for s in ("calib", "test"):
            meta = {"dataset": data.meta, "split": s, "preset": p.name,
                    "models": {n: {k: metas[n][k] for k in ("test_accuracy", "flops", "params", "recipe")} for n in names}}
            traces[s] = record_trace(trained, data.split(s), costs, meta=meta, progress=progress)
            traces[s].save(folder / s)
        log(f"[trace] recorded {folder}")
    return Prepared(data, p, trained, metas, traces["calib"], traces["test"])
