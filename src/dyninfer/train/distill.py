"""Distilled students S* (EBJR Table 4, supplementary 5.8): trained on unlabelled images, the teacher's outputs
as targets.

``hard``: cross-entropy to the teacher's argmax (eq. 30 with one-hot pseudo-labels). ``soft``: KL divergence
from the teacher's softmax at temperature T to the student's at T, times T² (so gradients keep their scale
across temperatures). The training split's labels are never read.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..check import choice, number
from ..data.datasets import Dataset, Split
from ..io import cache_dir, digest, versions
from ..models.registry import create_model
from .checkpoint import cache_key, load_cached, save_checkpoint
from .recipe import Recipe
from .trainer import accuracy, predict_logits, train

MODES = ("hard", "soft")


def distillation_targets(teacher: nn.Module, x: torch.Tensor, *, mode: str = "soft", temperature: float = 4.0,
                         batch_size: int = 512) -> torch.Tensor:
    """The teacher's targets on images ``x`` (N, C, H, W): ``hard`` (N,) int64 argmax, ``soft`` (N, K) softmax(z / T)."""
    choice("distillation mode", mode, MODES)
    number("distillation temperature", temperature, lo=0, lo_open=True)
    z = predict_logits(teacher, x, batch_size=batch_size)  # (N, K)
    return z.argmax(-1) if mode == "hard" else (z / temperature).softmax(-1)


def distillation_loss(student_logits: torch.Tensor, target: torch.Tensor, *, temperature: float = 4.0) -> torch.Tensor:
    """Cross-entropy to hard targets (N,), or T² KL(target || softmax(student / T)) to soft targets (N, K)."""
    if target.ndim == 1:
        return F.cross_entropy(student_logits, target)
    logp = (student_logits / temperature).log_softmax(-1)
    return F.kl_div(logp, target, reduction="batchmean") * temperature ** 2


def distill(student: nn.Module, teacher: nn.Module, images: torch.Tensor, recipe: Recipe, *, mode: str = "soft",
            temperature: float = 4.0, seed: int = 0, device: str | torch.device = "cpu", progress: bool = True):
    """Train ``student`` on ``images`` alone, with ``teacher``'s targets (see the module doc); returns the
    trainer's :class:`~dyninfer.train.trainer.TrainResult`. Augmented batches keep the targets of their
    unaugmented images."""
    targets = distillation_targets(teacher, images, mode=mode, temperature=temperature)
    unlabelled = Split(images, targets)  # the targets stand where labels would
    return train(student, unlabelled, recipe, seed=seed, device=device, desc=f"distil {mode}", progress=progress,
                 loss_fn=lambda m, x, t: distillation_loss(m(x), t, temperature=temperature))


def cached_distilled(model_name: str, teacher: nn.Module, data: Dataset, recipe: Recipe, *, mode: str = "soft",
                     temperature: float = 4.0, seed: int = 0, device: str | torch.device = "cpu",
                     progress: bool = True, root: str | os.PathLike | None = None,
                     log: Callable[[str], None] = print) -> tuple[nn.Module, dict]:
    """A student ``model_name`` distilled from ``teacher`` on ``data.train``'s images, from the checkpoint cache
    (keyed by the model, the teacher's weights, the data's content, the recipe, mode, temperature and seed),
    trained and cached on a miss. The metadata holds test and calibration accuracy and the file."""
    choice("distillation mode", mode, MODES)
    number("distillation temperature", temperature, lo=0, lo_open=True)
    extra = {"distil": mode, "temperature": float(temperature) if mode == "soft" else None,
             "teacher": digest(teacher.state_dict())[:16]}
    key = hashlib.sha1((cache_key(model_name, {}, data, recipe.to_dict(), seed) + repr(sorted(extra.items())))
                       .encode()).hexdigest()[:16]
    path = Path(root or cache_dir() / "checkpoints") / data.spec.name / f"{model_name}-distil-{mode}-{key}.pt"
    cached = load_cached(path, model_name, device=device, log=log, what=f" distilled ({mode})")
    if cached is not None:
        return cached
    torch.manual_seed(seed)
    model = create_model(model_name, data.spec)
    res = distill(model, teacher, data.train.x, recipe, mode=mode, temperature=temperature, seed=seed, device=device,
                  progress=progress)
    meta = {"model": model_name, "dataset": data.meta, "recipe": recipe.to_dict(), "seed": seed, **extra,
            "train_seconds": res.seconds, "train_loss": res.train_loss,
            "test_accuracy": accuracy(model, data.test, device), "calib_accuracy": accuracy(model, data.calib, device),
            "versions": versions()}
    save_checkpoint(model, path, meta)
    log(f"[train] {model_name} distilled ({mode}): {res.seconds:.0f} s, test acc {meta['test_accuracy']:.4f} -> {path}")
    return model, {**meta, "checkpoint": str(path)}


__all__ = ["MODES", "cached_distilled", "distill", "distillation_loss", "distillation_targets"]
