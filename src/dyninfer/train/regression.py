"""Training of an energy-based regressor on the rotation task, through the checkpoint cache.

Loss per image (targets in range units u = (y - c) / r):

* Gaussian NLL of the base head: ``0.5 * (log s2 + (u - mu)^2 / s2)``;
* ML-IS (Gustafsson et al., ECCV 2020, eq. 7) for the energy head:
  ``-S(x, u) + log Z(x)`` where Z(x) is estimated from u_m drawn at random from q(. | u), an equal mixture of
  Gaussians N(u, sigma_k^2) centred at the *true* target (the model's ``sigmas``, truncated to the range) and
  the uniform density on the range: the family, and the estimator (control variate included), that the model
  uses at test time with fixed draws centred on mu(x).

Training images are rotated on the fly, with fresh angles every epoch (uniform in [-max_angle, max_angle],
from a generator seeded by ``seed``); random shifts follow the recipe. Horizontal flips would change the
angle's sign and are refused. One log line per epoch; the checkpoint is written atomically.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from ..check import number
from ..data.datasets import Dataset, Split
from ..data.rotated import DEFAULT_MAX_ANGLE, check_targets, rotate, rotation_splits
from ..errors import ConfigError
from ..io import cache_dir, versions
from ..models.registry import create_model
from ..models.regression import EnergyRegressor
from .checkpoint import cache_key, load_cached, save_checkpoint
from .recipe import Recipe
from .trainer import augment_batch, model_device

MODEL = "energy-regressor"


@dataclass(frozen=True)
class RegressionTask:
    """The rotation-angle task of a preset and its two regressors (what ``dyninfer run cascade-regression`` trains).

    Attributes:
        student, teacher: registered CNN backbones of the two energy regressors, cheapest first.
        student_recipe, teacher_recipe: their training (no horizontal flips: a flip changes the angle's sign).
        max_angle: angles uniform in [-max_angle, max_angle] degrees.
        samples: M, importance samples of -F per image (counted in the FLOPs).
        train_images: training images used (None: the preset's whole training split).
        batch: batch of the recorded outputs, of the timed runtime and of the agreement check.
        timing_images: test images timed.
    """

    student: str = "cnn-s"
    teacher: str = "cnn-m"
    student_recipe: Recipe = field(default_factory=lambda: Recipe(epochs=6, hflip=False))
    teacher_recipe: Recipe = field(default_factory=lambda: Recipe(epochs=2, hflip=False))
    max_angle: float = DEFAULT_MAX_ANGLE
    samples: int = 64
    train_images: int | None = None
    batch: int = 256
    timing_images: int = 2560

    def __post_init__(self) -> None:
        number("max_angle", self.max_angle, lo=0, hi=180, lo_open=True)
        for k in ("samples", "batch", "timing_images"):
            number(k, getattr(self, k), lo=1, integer=True)
        number("train_images", self.train_images, lo=1, integer=True, none_ok=True)
        check_recipe(self.student_recipe)
        check_recipe(self.teacher_recipe)


def regression_loss(model: EnergyRegressor, x: torch.Tensor, y: torch.Tensor, *, samples: int,
                    g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(Gaussian NLL, ML-IS energy loss), each averaged over the batch, for images x (B, C, H, W), targets y (B,)."""
    h = model.features(x)  # (B, D)
    mu, logvar = model.gaussian(h)
    u = model.to_unit(y)  # (B,)
    nll = 0.5 * (logvar + (u - mu) ** 2 * torch.exp(-logvar))
    k = model.sigmas.numel() + 1
    comp = torch.randint(0, k, (u.shape[0], samples), generator=g).to(u.device)  # (B, M)
    level = torch.rand(u.shape[0], samples, generator=g).to(u.device)
    um = model.draw(u, level, comp)  # (B, M), around the true target
    log_q = model.log_q(um, u)  # proposal centred at the true target
    s = model.energy_u(h, torch.cat([u[:, None], um], 1))  # (B, 1 + M)
    e = -s[:, 0] + model.log_partition_u(s[:, 1:], log_q)
    return nll.mean(), e.mean()


def check_recipe(recipe: Recipe) -> None:
    """Raise ConfigError for a recipe with horizontal flips (a flip negates the rotation angle)."""
    if recipe.augment and recipe.hflip:
        raise ConfigError("a rotation regressor trains without horizontal flips (a flip negates the angle); "
                          "use a recipe with hflip=False")


def train_regressor(model: EnergyRegressor, train: Split, recipe: Recipe, *, max_angle: float = DEFAULT_MAX_ANGLE,
                    energy_samples: int = 32, seed: int = 0, device: str | torch.device = "cpu", desc: str = "regressor",
                    log: Callable[[str], None] = print) -> dict:
    """Train ``model`` on the rotation task over ``train``'s images (AdamW, one-cycle), in place.

    Returns:
        {"train_loss", "nll", "energy_loss", "seconds"} of the last epoch.

    Raises:
        ConfigError: an empty split, a recipe with horizontal flips, or a target range narrower than the angles.
    """
    number("energy_samples", energy_samples, lo=1, integer=True)
    if len(train) == 0:
        raise ConfigError("cannot train on an empty split")
    check_recipe(recipe)
    lo, hi = model.target_range
    if lo > -max_angle or hi < max_angle:
        raise ConfigError(f"the model's target range {model.target_range} does not hold angles in "
                          f"[-{max_angle}, {max_angle}]; build it with target_range=(-{max_angle}, {max_angle})")
    device = torch.device(device)
    model.to(device)
    g = torch.Generator().manual_seed(seed)
    n = len(train)
    steps = math.ceil(n / recipe.batch_size)
    opt = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=recipe.lr, total_steps=recipe.epochs * steps,
                                                pct_start=0.25)
    t0 = time.perf_counter()
    out: dict = {}
    for epoch in range(recipe.epochs):
        model.train()
        perm = torch.randperm(n, generator=g)
        sums = np.zeros(2)
        for step in range(steps):
            idx = perm[step * recipe.batch_size:(step + 1) * recipe.batch_size]
            x = train.x[idx]
            if recipe.augment:
                x = augment_batch(x, recipe.shift, False, g)
            y = (torch.rand(x.shape[0], generator=g) * 2 - 1) * max_angle  # (B,) degrees
            x = rotate(x, y).clamp_(0.0, 1.0)
            nll, e = regression_loss(model, x.to(device), y.to(device), samples=energy_samples, g=g)
            loss = nll + e
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            sums += [nll.item(), e.item()]
        sums /= steps
        out = {"train_loss": float(sums.sum()), "nll": float(sums[0]), "energy_loss": float(sums[1]),
               "seconds": time.perf_counter() - t0}
        log(f"[train] {desc} epoch {epoch + 1}/{recipe.epochs}: nll {sums[0]:.3f}, energy {sums[1]:.3f} "
            f"({out['seconds']:.0f} s)")
    model.eval()
    return out


@torch.inference_mode()
def predict_outputs(model: nn.Module, x: torch.Tensor, *, batch_size: int = 256) -> np.ndarray:
    """(N, 3) outputs of a regressor [prediction, -F, log variance] over images ``x``, batched, in eval mode."""
    model.eval()
    dev = model_device(model)
    parts = [model(x[i:i + batch_size].to(dev)).float().cpu() for i in range(0, x.shape[0], batch_size)]
    return torch.cat(parts).numpy() if parts else np.zeros((0, 3), np.float32)


def mae(model: nn.Module, split: Split, *, batch_size: int = 256) -> float:
    y = check_targets(split.y).numpy()
    return float(np.abs(predict_outputs(model, split.x, batch_size=batch_size)[:, 0] - y).mean())


def fit_regressor(base: str, data: Dataset, recipe: Recipe, *, max_angle: float = DEFAULT_MAX_ANGLE, seed: int = 0,
                  energy_samples: int = 32, model_kwargs: dict | None = None, device: str | torch.device = "cpu",
                  root: str | Path | None = None, log: Callable[[str], None] = print) -> tuple[EnergyRegressor, dict]:
    """An energy regressor on backbone ``base`` for the rotation task on ``data``, from the checkpoint cache or
    trained on ``data.train`` and cached.

    The key covers the backbone and model arguments, the content of the data, the recipe, ``max_angle``,
    ``energy_samples`` and the seed. A corrupt cached file is reported and retrained. The metadata holds the
    calibration and test MAE (degrees, on :func:`~dyninfer.data.rotated.rotation_splits` with the same seed),
    the counted FLOPs and the checkpoint file (``checkpoint``).

    Args:
        base: registered CNN backbone (``cnn-s``, ``cnn-m``, ``cnn-l``).
        model_kwargs: more arguments of ``energy-regressor`` (``samples``, ``sigmas``, ``hidden``, ``freqs``).
    """
    from ..runtime.cost import count_flops, count_params

    number("max_angle", max_angle, lo=0, hi=180, lo_open=True)
    check_recipe(recipe)
    kwargs = {"base": base, "target_range": [-float(max_angle), float(max_angle)], **dict(model_kwargs or {})}
    task = {"task": "rotation", "max_angle": float(max_angle), "energy_samples": int(energy_samples)}
    key = cache_key(MODEL, kwargs, data, {**recipe.to_dict(), **task}, seed)
    path = Path(root or cache_dir() / "checkpoints") / data.spec.name / f"{MODEL}-{base}-{key}.pt"
    cached = load_cached(path, MODEL, device=device, log=log, what=f" ({base})",
                         describe=lambda m: f"test MAE {m.get('test_mae', float('nan')):.2f} deg")
    if cached is not None:
        return cached  # type: ignore[return-value]
    torch.manual_seed(seed)
    model = create_model(MODEL, data.spec, **kwargs)
    res = train_regressor(model, data.train, recipe, max_angle=max_angle, energy_samples=energy_samples, seed=seed,
                          device=device, desc=f"{MODEL} ({base})", log=log)
    splits = rotation_splits(data, max_angle=max_angle, seed=seed)
    meta = {"model": MODEL, "model_kwargs": kwargs, "dataset": data.meta, "recipe": recipe.to_dict(), "task": task,
            "seed": seed, "train_seconds": res["seconds"], "train_loss": res["train_loss"],
            "calib_mae": mae(model, splits["calib"]), "test_mae": mae(model, splits["test"]),
            "flops": count_flops(model, data.spec.input_shape, device), "params": count_params(model),
            "versions": versions()}
    save_checkpoint(model, path, meta)
    log(f"[train] {MODEL} ({base}): {res['seconds']:.0f} s, test MAE {meta['test_mae']:.2f} deg -> {path}")
    return model, {**meta, "checkpoint": str(path)}  # type: ignore[return-value]


__all__ = ["RegressionTask", "check_recipe", "fit_regressor", "mae", "predict_outputs", "regression_loss", "train_regressor"]
