"""Data and paths for every method: data -> trained (cached) paths -> calibration and test traces.

``prepare(...)`` returns the dataset, the preset's path set of the kind a method runs on (a pool of
models, or one early-exit network), and its calibration and test traces. Checkpoints are cached by
model, recipe, seed and the *content* of the data; traces by the weights they were recorded
with and the data's content, so later runs and other methods reuse them. Traces carry counted costs (FLOPs, parameters,
bytes) and their split's images; latency and energy are measured once per run by the pipeline.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any, Callable

from .data.datasets import Dataset, load_dataset
from .errors import ConfigError, TraceError
from .io import cache_dir, digest
from .paths import KINDS, BigSmallPaths, ModulePool, PathSet, StagedNetwork, SupernetPaths
from .presets import Preset, get_preset
from .trace import Trace
from .train.checkpoint import cached_model
from .train.bigsmall import fit_bigsmall
from .train.exits import fit_early_exit
from .train.slimmable import fit_slimmable


@dataclass
class Prepared:
    """What :func:`prepare` returns.

    Attributes:
        data: the dataset and its splits.
        preset: the preset.
        paths: the path set.
        calib, test: traces of every path on the calibration and test splits (with their images).
        model_meta: per trained model, its checkpoint metadata (accuracy, FLOPs, recipe, file).
    """

    data: Dataset
    preset: Preset
    paths: PathSet
    calib: Trace
    test: Trace
    model_meta: dict[str, dict]


STUDENTS = ("distilled-soft", "distilled-hard", "specialised")


def _with_student(student: str, classes, names: list[str], trained: dict, metas: dict, data: Dataset, preset: Preset,
                  *, seed: int, device: str, progress: bool, log: Callable[[str], None]) -> list[str]:
    """Train (or reuse) the pool's ``student`` in place of its cheapest model; adds it to ``trained`` and ``metas``
    and returns the pool's path names, the student first."""
    from dataclasses import replace

    if len(names) < 2:
        raise ConfigError(f"a {student} student replaces the cheapest model of a pool of two or more; this pool has "
                          f"{names}")
    base, recipe = names[0], preset.models[names[0]]
    if student == "specialised":
        from .train.specialised import fit_specialised

        name = f"{base}-specialised"
        trained[name], metas[name] = fit_specialised(base, data, list(classes), replace(recipe, label_smoothing=0.0),
                                                     seed=seed, device=device, progress=progress, log=log)
    else:
        from .train.distill import cached_distilled

        mode = student.split("-", 1)[1]
        name = f"{base}-{student}"
        trained[name], metas[name] = cached_distilled(base, trained[names[-1]], data, recipe, mode=mode, seed=seed,
                                                      device=device, progress=progress, log=log)
    return [name, *names[1:]]


def load_data(dataset: str, preset: Preset, *, seed: int = 0, data_root: str | None = None,
              log: Callable[[str], None] = print) -> Dataset:
    """The preset's splits of ``dataset``."""
    log(f"[data] loading {dataset}")
    data = load_dataset(dataset, root=data_root, seed=seed, calib_size=preset.calib_size,
                        train_limit=preset.train_limit, test_limit=preset.test_limit)
    if dataset == "digits" and any(r.hflip for r in [*preset.models.values(), preset.exit_recipe]):
        raise ConfigError("digits must not be flipped; use the tiny preset (hflip=False) for digits")
    log(f"[data] {data.meta}, content {data.fingerprint}")
    return data


def prepare(dataset: str = "fashion-mnist", preset: str | Preset = "quick", *, kind: str = "pool", seed: int = 0,
            data_root: str | None = None, data: Dataset | None = None, models: list[str] | None = None,
            device: str = "cpu", supernet_paths: str | None = None, pair: Any = None, student: str | None = None,
            classes: Any = None, progress: bool = True, log: Callable[[str], None] = print) -> Prepared:
    """Load data, train or reuse the preset's paths of ``kind``, and record (or reuse) their traces.

    Args:
        dataset: registry name of the dataset.
        preset: preset name or object.
        kind: ``pool`` (the preset's models), ``staged`` (its early-exit network), ``supernet`` (its slimmable
            supernet, with the configurations of ``supernet_paths`` as paths, cheapest first, full width last) or
            ``bigsmall`` (its co-trained big/little supernet and router: the paths ``little``, emitting the router's
            keep score, and ``big``, of the largest pair; :class:`~dyninfer.paths.BigSmallPaths`).
        seed: seed of splits and training.
        data_root: dataset folder override.
        data: an already loaded dataset (skips loading; must come from the same preset and seed).
        models: subset of the preset's pool to use, cheapest first (default: all of it).
        device: where models train and run.
        supernet_paths: which subnet configurations are paths (``uniform``, ``delta`` or ``all``, see
            :meth:`~dyninfer.models.adapta.AdaptaResNet.path_configs`; default: the preset's).
        pair: ``bigsmall``: the deployed little/big pair (a ``PairConfig`` or ``{"little": ..., "big": ...}``;
            default: the largest pair); its switchable batch norms are re-estimated for it.
        student: ``pool``: the cheapest model of the pool is replaced by a student of the same architecture and
            recipe trained otherwise (EBJR, sections 2.4 and Table 4): ``distilled-soft`` / ``distilled-hard``
            (trained on the training images with the reference model's soft or hard predictions as targets, no
            labels), or ``specialised`` (the ``classes`` plus one "other" class that receives the rest). Its path
            is named ``<model>-distilled-soft`` and so on.
        classes: ``student="specialised"``: its popular classes.
    """
    p = get_preset(preset) if isinstance(preset, str) else preset
    if kind not in KINDS:
        raise ConfigError(f"the harness prepares path sets of kind {' or '.join(map(repr, KINDS))}, got {kind!r}")
    if student is not None and (kind != "pool" or student not in STUDENTS):
        raise ConfigError(f"student={student!r}: a pool's student is one of {list(STUDENTS)} (kind 'pool'; this path "
                          f"set is {kind!r})")
    if (student == "specialised") != (classes is not None):
        raise ConfigError("a specialised student needs its popular classes: pass classes=[...] (for the cascade: "
                          "--set classes='[0, 1, 2]')" if classes is None else
                          "classes= names the popular classes of a specialised student: pass student='specialised'")
    data = data if data is not None else load_data(dataset, p, seed=seed, data_root=data_root, log=log)
    metas: dict[str, dict] = {}
    if kind == "pool":
        names = list(models) if models else list(p.models)
        unknown = [n for n in names if n not in p.models]
        if unknown:
            raise ConfigError(f"preset {p.name!r} has no models {unknown}; it has {list(p.models)}")
        trained = {}
        for name in names:
            trained[name], metas[name] = cached_model(name, data, p.models[name], seed=seed, device=device,
                                                      progress=progress, log=log)
        if student is not None:
            names = _with_student(student, classes, names, trained, metas, data, p, seed=seed, device=device,
                                  progress=progress, log=log)
        paths: PathSet = ModulePool({n: trained[n] for n in names}, input_shape=data.spec.input_shape,
                                    files={n: metas[n]["checkpoint"] for n in names})
    elif kind == "supernet":
        supernet, meta = fit_slimmable(p.supernet_model, data, p.supernet_training, seed=seed, device=device,
                                       progress=progress, log=log)
        metas[p.supernet_model] = meta
        paths = SupernetPaths(supernet, supernet.path_configs(supernet_paths or p.supernet_paths))
    elif kind == "bigsmall":
        net, router, meta = fit_bigsmall(p.bigsmall_model, data, p.bigsmall_training, seed=seed, device=device,
                                         progress=progress, log=log, pair=pair)
        metas[p.bigsmall_model] = meta
        paths = BigSmallPaths(net, router, pair)
    else:
        net, meta = fit_early_exit(p.exit_model, data, p.exit_recipe, training=p.exit_training, seed=seed,
                                   device=device, progress=progress, log=log)
        metas[p.exit_model] = meta
        paths = StagedNetwork(net)
    whole = [paths.net] if isinstance(paths, StagedNetwork) else [paths.supernet, paths.router] \
        if isinstance(paths, BigSmallPaths) else [paths.supernet] if isinstance(paths, SupernetPaths) \
        else list(paths.models.values())
    weights = [digest(m.state_dict()) for m in whole]
    parts = [kind, paths.names, weights, data.fingerprint] + (["gate_flops"] if kind in ("supernet", "bigsmall") else []) \
        + ([paths.pair.as_dict()] if isinstance(paths, BigSmallPaths) else [])  # the pair's norms differ per pair
    key = hashlib.sha1(json.dumps(parts).encode()).hexdigest()[:16]
    folder = cache_dir() / "traces" / data.spec.name / key
    try:
        traces = {s: Trace.load(folder / s) for s in ("calib", "test")}
        log(f"[trace] reusing {folder}")
    except TraceError:
        costs = paths.count()
        traces = {}
        for s in ("calib", "test"):
            meta = {"dataset": data.meta, "content": data.fingerprint, "split": s, "preset": p.name,
                    "models": {n: {k: m.get(k) for k in ("test_accuracy", "exit_test_accuracy", "flops", "params")}
                               for n, m in metas.items()}}
            traces[s] = paths.record(data.split(s), costs=costs, meta=meta, progress=progress)
            traces[s].save(folder / s)
        log(f"[trace] recorded {folder}")
    return Prepared(data, p, paths, traces["calib"].with_inputs(data.calib.x), traces["test"].with_inputs(data.test.x),
                    metas)
