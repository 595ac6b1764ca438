"""Checkpoints with metadata, written atomically, and a cache keyed by model, data, recipe and seed."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from ..data.datasets import Dataset
from ..errors import CheckpointError
from ..io import cache_dir, read_payload, versions, write_payload
from ..models.registry import create_model, spec_from_dict

FORMAT = "dyninfer-checkpoint-2"


def save_checkpoint(model: nn.Module, path: str | os.PathLike, meta: dict | None = None) -> Path:
    """Write ``model`` (built by :func:`create_model`) with ``meta`` to ``path`` atomically, checksummed."""
    arch = getattr(model, "dyninfer_arch", None)
    if arch is None:
        raise CheckpointError("model was not built by dyninfer.models.create_model; cannot record its architecture")
    layout = architecture_signature(model)
    if layout is not None:  # what the name builds today may change; the file keeps what it was written for
        arch = {**arch, "layout": layout}
    return write_payload(path, {"format": FORMAT, "arch": arch, "state_dict": model.state_dict(), "meta": meta or {}})


def check_layout(model: nn.Module, arch: dict, where: str) -> None:
    """Raise CheckpointError when the layout recorded in a checkpoint's ``arch`` differs from ``model``'s (files
    written before layouts were recorded carry none and are not checked)."""
    have, want = arch.get("layout"), architecture_signature(model)
    if have is not None and want is not None and have != want:
        raise CheckpointError(f"{where} holds a {arch.get('name')!r} of layout {have}; {arch.get('name')!r} builds "
                              f"{want} now. Retrain it (the cache does so on its own), or load it with the version "
                              f"that wrote it.")


def read_checkpoint(path: str | os.PathLike, *, fmt: str = FORMAT, what: str = "checkpoint") -> dict:
    """Read a checksummed payload and check its ``format`` tag (no model is built); see :func:`~dyninfer.io.read_payload`."""
    return read_payload(path, fmt=fmt, what=what)


def load_checkpoint(path: str | os.PathLike, *, expect_model: str | None = None,
                    map_location: str | torch.device = "cpu") -> tuple[nn.Module, dict]:
    """Rebuild the model stored in ``path`` and load its weights.

    Args:
        path: checkpoint file.
        expect_model: if given, the registry name the checkpoint must hold.

    Returns:
        (model in eval mode, metadata dict).

    Raises:
        CheckpointError: missing, truncated, or another architecture than expected.
    """
    payload = read_checkpoint(path)
    arch = payload["arch"]
    if expect_model is not None and arch["name"] != expect_model:
        raise CheckpointError(f"checkpoint {path} holds a {arch['name']!r}, not a {expect_model!r}")
    model = create_model(arch["name"], spec_from_dict(arch["spec"]), **arch["kwargs"])
    check_layout(model, arch, f"checkpoint {path}")
    load_state(model, payload["state_dict"], str(path))
    return model.to(map_location).eval(), payload["meta"]


def load_state(model: nn.Module, state: dict, where: str) -> None:
    """``load_state_dict(strict=True)`` with a CheckpointError that names the mismatch."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    extra = sorted(set(state) - set(own))
    bad = [k for k in own if k in state and tuple(own[k].shape) != tuple(state[k].shape)]
    if missing or extra or bad:
        detail = []
        if missing:
            detail.append(f"missing {missing[:3]}")
        if extra:
            detail.append(f"unexpected {extra[:3]}")
        if bad:
            detail.append(f"shape mismatch {[(k, tuple(state[k].shape), tuple(own[k].shape)) for k in bad[:3]]}")
        raise CheckpointError(f"{where} is for another architecture: {'; '.join(detail)}")
    model.load_state_dict(state)


def cache_key(model_name: str, model_kwargs: dict, data: Dataset, recipe: dict, seed: int,
              arch: dict | None = None) -> str:
    """Key of a trained model: its name and arguments, the recipe, the seed and the *content* of the data
    (:attr:`Dataset.fingerprint`), so moved data reuses the cache and changed data invalidates it. ``arch``
    (:func:`architecture_signature`) covers what a registered name builds, for models that declare it, so a
    changed layout under the same name retrains instead of loading weights of the same shapes."""
    record = {"model": model_name, "kwargs": model_kwargs, "data": [data.spec.name, data.fingerprint],
              "recipe": recipe, "seed": seed}
    if arch is not None:
        record["arch"] = arch
    blob = json.dumps(record, sort_keys=True, default=str)
    return hashlib.sha1(blob.encode()).hexdigest()[:16]


def architecture_signature(model: nn.Module) -> dict | None:
    """The layout a model declares beyond its parameter shapes (its ``shape`` property, e.g. strides), or None."""
    shape = getattr(model, "shape", None)
    return dict(shape) if isinstance(shape, dict) else None


def load_cached(path: Path, model_name: str, *, device, log, what: str = "",
                describe: Callable[[dict], str] | None = None) -> tuple[nn.Module, dict] | None:
    """A cached checkpoint of ``model_name`` at ``path`` with its metadata (naming the file under ``checkpoint``),
    or None when there is none or it is corrupt (reported through ``log``: the caller retrains). ``describe``
    turns the metadata into the log line's figure (default: the test accuracy)."""
    if not path.exists():
        return None
    try:
        model, meta = load_checkpoint(path, expect_model=model_name, map_location=device)
    except CheckpointError as e:
        log(f"[cache] {e}; retraining")
        return None
    figure = describe(meta) if describe is not None else f"test acc {meta.get('test_accuracy', float('nan')):.4f}"
    log(f"[cache] {model_name}{what}: {path} ({figure})")
    return model, {**meta, "checkpoint": str(path)}


def cached_model(model_name: str, data: Dataset, recipe, *, seed: int = 0, model_kwargs: dict | None = None,
                 device: str | torch.device = "cpu", progress: bool = True, root: str | os.PathLike | None = None,
                 log: Callable[[str], None] = print) -> tuple[nn.Module, dict]:
    """Return a trained model from the checkpoint cache, training and caching it on a miss.

    The key covers the model name and arguments, the content of the data (:func:`cache_key`), the recipe
    and the seed. A corrupt cached file is reported and retrained, never silently used. The returned
    metadata names the file under ``checkpoint``.
    """
    from ..runtime.cost import count_flops, count_params
    from .trainer import accuracy, train

    model_kwargs = model_kwargs or {}
    with torch.random.fork_rng():  # building a model for its layout leaves the caller's random state alone
        layout = architecture_signature(create_model(model_name, data.spec, **model_kwargs))
    key = cache_key(model_name, model_kwargs, data, recipe.to_dict(), seed, arch=layout)
    path = Path(root or cache_dir() / "checkpoints") / data.spec.name / f"{model_name}-{key}.pt"
    cached = load_cached(path, model_name, device=device, log=log)
    if cached is not None:
        return cached
    torch.manual_seed(seed)
    model = create_model(model_name, data.spec, **model_kwargs)
    res = train(model, data.train, recipe, seed=seed, device=device, desc=model_name, progress=progress)
    meta = {
        "model": model_name, "model_kwargs": model_kwargs, "dataset": data.meta, "recipe": recipe.to_dict(),
        "seed": seed, "train_seconds": res.seconds, "train_loss": res.train_loss,
        "test_accuracy": accuracy(model, data.test, device), "calib_accuracy": accuracy(model, data.calib, device),
        "flops": count_flops(model, data.spec.input_shape, device), "params": count_params(model),
        "versions": versions(),
    }
    save_checkpoint(model, path, meta)
    log(f"[train] {model_name}: {res.seconds:.0f} s, test acc {meta['test_accuracy']:.4f} -> {path}")
    return model, {**meta, "checkpoint": str(path)}
