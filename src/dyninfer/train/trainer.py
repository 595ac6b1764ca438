"""A small, fast trainer for in-memory datasets, with progress and seeded randomness."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ..data.datasets import Split
from ..errors import ConfigError
from ..runtime.cost import model_device  # noqa: F401  (re-exported: trainers and methods import it from here)
from .recipe import Recipe


def augment_batch(x: torch.Tensor, shift: int, hflip: bool, g: torch.Generator) -> torch.Tensor:
    """Random per-sample translations (zero padding) and horizontal flips. x: (B, C, H, W)."""
    b, _, h, w = x.shape
    if hflip:
        flip = torch.rand(b, generator=g) < 0.5
        x = torch.where(flip.view(b, 1, 1, 1), x.flip(3), x)
    if shift > 0:
        padded = F.pad(x, (shift, shift, shift, shift))  # (B, C, H+2s, W+2s)
        dx = torch.randint(0, 2 * shift + 1, (b,), generator=g)
        dy = torch.randint(0, 2 * shift + 1, (b,), generator=g)
        rows = (dy.view(b, 1) + torch.arange(h).view(1, h))  # (B, H)
        cols = (dx.view(b, 1) + torch.arange(w).view(1, w))  # (B, W)
        idx_b = torch.arange(b).view(b, 1, 1)
        x = padded.permute(0, 2, 3, 1)[idx_b, rows.view(b, h, 1), cols.view(b, 1, w)].permute(0, 3, 1, 2)
    return x.contiguous()


def shuffled_batches(split: Split, batch_size: int, g: torch.Generator) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """One shuffled pass over ``split`` in batches (x (B, C, H, W), y (B,)); a last batch of a single sample is
    dropped (it would break batch norm)."""
    perm = torch.randperm(len(split), generator=g)
    for i in range(0, len(split) - 1, batch_size):
        idx = perm[i:i + batch_size]
        if idx.numel() > 1:
            yield split.x[idx], split.y[idx]


@torch.inference_mode()
@torch.inference_mode()
def predict_logits(model: nn.Module, x: torch.Tensor, batch_size: int = 512, device: str | torch.device | None = None,
                   progress: bool = False, desc: str = "predict") -> torch.Tensor:
    """Logits (N, K) of ``model`` over ``x`` (N, C, H, W), in eval mode, batched; returned on the CPU.

    Batches are moved to ``device`` (default: where the model's parameters are)."""
    device = model_device(model) if device is None else device
    model.eval()
    outs = []
    it = range(0, x.shape[0], batch_size)
    for i in tqdm(it, desc=desc, disable=not progress, leave=False, mininterval=1.0):
        outs.append(model(x[i:i + batch_size].to(device)).float().cpu())
    return torch.cat(outs) if outs else torch.empty(0)


def accuracy(model: nn.Module, split: Split, device: str | torch.device | None = None) -> float:
    logits = predict_logits(model, split.x, device=device)
    return float((logits.argmax(1) == split.y).float().mean())


@dataclass
class TrainResult:
    train_loss: float
    seconds: float


def train(model: nn.Module, data: Split, recipe: Recipe, *, seed: int = 0, device: str | torch.device = "cpu",
          desc: str = "train", progress: bool = True,
          loss_fn: Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
          params: Sequence[nn.Parameter] | None = None,
          set_mode: Callable[[nn.Module], None] | None = None) -> TrainResult:
    """Train ``model`` on ``data`` with AdamW and a one-cycle schedule.

    Args:
        model: any module mapping (B, C, H, W) in [0, 1] to logits.
        data: the training split.
        recipe: hyperparameters.
        seed: seeds initialisation-independent randomness (shuffling, augmentation).
        progress: show a tqdm bar per epoch.
        loss_fn: ``(model, x, y) -> loss``; default cross-entropy of ``model(x)`` (e.g. a sum over exits instead).
        params: the parameters to optimise; default every parameter that requires gradients.
        set_mode: called on the model at the start of each epoch; default ``model.train()``
            (e.g. to keep a frozen backbone's batch-norm statistics fixed).
    """
    import time

    if len(data) == 0:
        raise ConfigError("cannot train on an empty split")
    device = torch.device(device)
    model.to(device)
    g = torch.Generator().manual_seed(seed)
    n = len(data)
    steps_per_epoch = math.ceil(n / recipe.batch_size)
    params = list(params) if params is not None else [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ConfigError("nothing to train: every parameter is frozen")
    if loss_fn is None:
        def loss_fn(m: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return F.cross_entropy(m(x), y, label_smoothing=recipe.label_smoothing)
    opt = torch.optim.AdamW(params, lr=recipe.lr, weight_decay=recipe.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=recipe.lr, total_steps=recipe.epochs * steps_per_epoch,
                                                pct_start=0.25)
    t0 = time.perf_counter()
    loss_ema = float("nan")
    for epoch in range(recipe.epochs):
        (set_mode or nn.Module.train)(model)
        perm = torch.randperm(n, generator=g)
        bar = tqdm(range(steps_per_epoch), desc=f"{desc} epoch {epoch + 1}/{recipe.epochs}", disable=not progress,
                   leave=False, mininterval=1.0)
        for step in bar:
            idx = perm[step * recipe.batch_size:(step + 1) * recipe.batch_size]
            x, y = data.x[idx], data.y[idx]
            if recipe.augment:
                x = augment_batch(x, recipe.shift, recipe.hflip, g)
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            loss = loss_fn(model, x, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            loss_ema = loss.item() if math.isnan(loss_ema) else 0.95 * loss_ema + 0.05 * loss.item()
            if step % 20 == 0:
                bar.set_postfix(loss=f"{loss_ema:.3f}")
    model.eval()
    return TrainResult(train_loss=loss_ema, seconds=time.perf_counter() - t0)
