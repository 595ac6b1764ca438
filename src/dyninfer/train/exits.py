"""Training early-exit networks: jointly (every exit's loss at once) or backbone first, then heads only.

``joint``: the sum of the exits' cross-entropies trains backbone and heads together (deep
supervision), the usual choice when training from scratch. ``two-stage``: the zoo's own trainer
(:func:`dyninfer.train.train`) trains the backbone with its final head — exactly how any other zoo
model is trained, and cached the same way — and then only the early heads are trained on the
frozen backbone, as the paper does with its pretrained RevCol (section 4.1). Both run the zoo
trainer's loop (AdamW, one-cycle schedule, the same augmentation and :class:`~dyninfer.train.Recipe`)
with the exits' loss.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..data.datasets import Dataset, Split
from ..errors import CheckpointError, ConfigError
from ..io import cache_dir, versions
from ..models.exits import EarlyExitNetwork
from ..models.registry import create_model
from ..runtime.cost import count_flops, count_params, model_device
from .checkpoint import cache_key, cached_model, load_checkpoint, save_checkpoint
from .recipe import Recipe
from .trainer import TrainResult, train

TRAINING_MODES = ("joint", "two-stage")


def _set_train_mode(net: EarlyExitNetwork, heads_only: bool) -> None:
    net.train()
    if heads_only:
        net.segments.eval()  # frozen backbone: batch-norm statistics must not move either


def train_exits(net: EarlyExitNetwork, data: Split, recipe: Recipe, *, heads_only: bool = False,
                exits: Sequence[int] | None = None, exit_weights: Sequence[float] | None = None, seed: int = 0,
                device: str | torch.device = "cpu", progress: bool = True, desc: str = "exits") -> TrainResult:
    """Train an early-exit network on the weighted sum of its exits' cross-entropies.

    Args:
        net: the network; modified in place.
        data: training split.
        recipe: epochs, batch size, learning rate, augmentation (as for any zoo model).
        heads_only: freeze the backbone (no gradients, batch-norm statistics fixed) and train heads only.
        exits: the exits whose heads are trained (default: all; with ``heads_only``, all but the last, so
            the backbone's own classifier stays as it is).
        exit_weights: loss weight per trained exit (default: equal).
        seed: seeds shuffling and augmentation.

    Returns:
        :class:`~dyninfer.train.trainer.TrainResult` (smoothed final loss, seconds).
    """
    if exits is None:  # heads only: keep the backbone's own classifier as it is
        exits = list(range(net.n_exits - 1 if heads_only else net.n_exits))
    exits = [int(p) for p in exits]
    if not exits or any(not 0 <= p < net.n_exits for p in exits):
        raise ConfigError(f"exits to train must be a non-empty subset of 0..{net.n_exits - 1}, got {exits}")
    w = [1.0] * len(exits) if exit_weights is None else [float(v) for v in exit_weights]
    if len(w) != len(exits) or any(v < 0 for v in w) or sum(w) <= 0:
        raise ConfigError(f"need {len(exits)} non-negative exit weights with a positive sum, got {exit_weights}")
    device = torch.device(device)
    net.to(device)
    if heads_only:
        net.freeze_backbone()
        params = list(net.head_parameters(exits))
    else:
        params = [p for p in net.segments.parameters() if p.requires_grad] + list(net.head_parameters(exits))
    wsum = sum(w)

    def loss_fn(model: EarlyExitNetwork, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if heads_only:
            logits = _heads_on_frozen(model, x, exits)
        else:
            all_logits = model.forward_exits(x)
            logits = [all_logits[p] for p in exits]
        return sum(wi * F.cross_entropy(lo, y, label_smoothing=recipe.label_smoothing)
                   for wi, lo in zip(w, logits)) / wsum

    return train(net, data, recipe, seed=seed, device=device, desc=desc, progress=progress, loss_fn=loss_fn,
                 params=params, set_mode=lambda m: _set_train_mode(m, heads_only))


def _heads_on_frozen(net: EarlyExitNetwork, x: torch.Tensor, exits: list[int]) -> list[torch.Tensor]:
    """Logits of ``exits`` with the backbone run without autograd (its features are constants)."""
    out: dict[int, torch.Tensor] = {}
    last = max(exits)
    carry = x
    for p in range(last + 1):
        with torch.no_grad():
            carry = net.segments[p](carry)
        if p in exits:
            out[p] = net.heads[p](carry)
    return [out[p] for p in exits]


def exit_accuracies(net: EarlyExitNetwork, split: Split, *, batch_size: int = 512,
                    device: str | torch.device | None = None) -> list[float]:
    """Accuracy of every exit on ``split``."""
    logits = exit_logits(net, split.x, batch_size=batch_size, device=device)
    return [float((lo.argmax(1) == split.y).float().mean()) for lo in logits]


@torch.inference_mode()
def exit_logits(net: EarlyExitNetwork, x: torch.Tensor, *, batch_size: int = 512,
                device: str | torch.device | None = None, progress: bool = False,
                desc: str = "exits") -> list[torch.Tensor]:
    """Logits of every exit on ``x`` (N, C, H, W): a list of P tensors (N, K) on the CPU, computed in batches
    on ``device`` (default: where the network is)."""
    device = model_device(net) if device is None else device
    net.eval()
    parts: list[list[torch.Tensor]] = [[] for _ in range(net.n_exits)]
    for i in tqdm(range(0, x.shape[0], batch_size), desc=desc, disable=not progress, leave=False, mininterval=1.0):
        for p, lo in enumerate(net.forward_exits(x[i:i + batch_size].to(device))):
            parts[p].append(lo.float().cpu())
    return [torch.cat(p) for p in parts]


def fit_early_exit(model_name: str, data: Dataset, recipe: Recipe, *, training: str = "joint",
                   head_recipe: Recipe | None = None, seed: int = 0, model_kwargs: dict | None = None,
                   device: str | torch.device = "cpu", progress: bool = True, root: str | Path | None = None,
                   log: Callable[[str], None] = print) -> tuple[EarlyExitNetwork, dict]:
    """Return a trained early-exit zoo model (e.g. ``revcol-s``), from the checkpoint cache or trained now.

    Args:
        model_name: a registered backbone that builds an :class:`EarlyExitNetwork`.
        data: the dataset (its train split is used).
        recipe: backbone recipe (joint: the whole network).
        training: ``joint`` or ``two-stage`` (see the module docstring).
        head_recipe: recipe of the heads-only stage of ``two-stage`` (default: ``recipe``).
        seed: seed of initialisation and training.
        model_kwargs: architecture overrides passed to :func:`create_model`.
        root: checkpoint folder (default ``<cache>/checkpoints``).

    Returns:
        (network in eval mode, metadata with per-exit accuracies, FLOPs, training seconds and versions).
    """
    if training not in TRAINING_MODES:
        raise ConfigError(f"unknown training mode {training!r}; use one of {TRAINING_MODES}")
    model_kwargs = dict(model_kwargs or {})
    head_recipe = head_recipe or recipe
    desc = {"recipe": recipe.to_dict(), "training": training,
            "head_recipe": head_recipe.to_dict() if training == "two-stage" else None}
    key = cache_key(model_name, model_kwargs, data, desc, seed)
    root = Path(root) if root is not None else cache_dir() / "checkpoints"
    path = root / data.spec.name / f"{model_name}-exits-{key}.pt"
    if path.exists():
        try:
            net, meta = load_checkpoint(path, expect_model=model_name, map_location=device)
            log(f"[cache] {model_name} ({training}): {path} (exit accuracies {meta.get('exit_test_accuracy')})")
            return net, {**meta, "checkpoint": str(path)}  # type: ignore[return-value]
        except CheckpointError as e:
            log(f"[cache] {e}; retraining")
    t0 = time.perf_counter()
    if training == "joint":
        torch.manual_seed(seed)
        net = create_model(model_name, data.spec, **model_kwargs)
        if not isinstance(net, EarlyExitNetwork):
            raise ConfigError(f"{model_name} is not an early-exit network; wrap it with attach_exits() instead")
        res = train_exits(net, data.train, recipe, seed=seed, device=device, progress=progress, desc=model_name)
        stages = {"joint": {"seconds": res.seconds, "train_loss": res.train_loss}}
    else:
        net, bmeta = cached_model(model_name, data, recipe, seed=seed, model_kwargs=model_kwargs, device=device,
                                  progress=progress, root=root, log=log)
        if not isinstance(net, EarlyExitNetwork):
            raise ConfigError(f"{model_name} is not an early-exit network; wrap it with attach_exits() instead")
        res = train_exits(net, data.train, head_recipe, heads_only=True, exits=range(net.n_exits - 1), seed=seed,
                          device=device, progress=progress, desc=f"{model_name} heads")
        for prm in net.parameters():
            prm.requires_grad_(True)
        stages = {"backbone": {"seconds": bmeta.get("train_seconds"), "cached": True},
                  "heads": {"seconds": res.seconds, "train_loss": res.train_loss}}
    meta = {
        "model": model_name, "model_kwargs": model_kwargs, "training": training, "dataset": data.meta,
        "recipe": recipe.to_dict(), "head_recipe": desc["head_recipe"], "seed": seed, "stages": stages,
        "train_seconds": time.perf_counter() - t0,
        "exit_test_accuracy": exit_accuracies(net, data.test, device=device),
        "exit_calib_accuracy": exit_accuracies(net, data.calib, device=device),
        "flops": count_flops(net, data.spec.input_shape, device), "params": count_params(net), "versions": versions(),
    }
    save_checkpoint(net, path, meta)
    log(f"[train] {model_name} ({training}): {meta['train_seconds']:.0f} s, exit test accuracies "
        f"{[round(a, 4) for a in meta['exit_test_accuracy']]} -> {path}")
    return net.eval(), {**meta, "checkpoint": str(path)}
