"""Training of the GFL-style detectors of :mod:`dyninfer.models.detection`, through the checkpoint cache.

Assignment (FCOS centre sampling): a grid location is positive for a ground-truth box when its centre lies
inside the box and within ``radius`` strides of the box centre; a location claimed by several boxes takes the
smallest. Losses (Generalized Focal Loss, Li et al. 2020): quality focal loss on the class logits (target: the
IoU of the predicted box with its ground truth at positives, 0 elsewhere), GIoU loss on the decoded boxes
(``torchvision.ops.generalized_box_iou_loss``) and the distribution focal loss on the side bins, each
normalised by the number of positives. Augmentation: horizontal flips.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from ..check import number
from ..data.canvas import CanvasConfig, CanvasData, CanvasSplit
from ..errors import CheckpointError
from ..io import cache_dir, versions
from ..models.detection import STRIDE, Detector, DetectorConfig, build_detector
from .checkpoint import cache_key, load_state, read_checkpoint, save_checkpoint


@dataclass(frozen=True)
class DetRecipe:
    """How a detector is trained (every field goes into the cache key)."""

    epochs: int = 10            # passes over the training canvases
    batch_size: int = 32
    lr: float = 2e-3            # AdamW peak learning rate (one-cycle, 10% warm-up, cosine decay)
    weight_decay: float = 1e-4
    radius: float = 1.5         # centre-sampling radius, in strides
    box_weight: float = 2.0     # GIoU loss weight
    dfl_weight: float = 0.25    # distribution focal loss weight
    flip: bool = True           # random horizontal flips

    def __post_init__(self) -> None:
        number("epochs", self.epochs, lo=1, integer=True)
        number("batch_size", self.batch_size, lo=1, integer=True)
        for k in ("lr", "radius"):
            number(k, getattr(self, k), lo=0, lo_open=True)
        for k in ("weight_decay", "box_weight", "dfl_weight"):
            number(k, getattr(self, k), lo=0)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class DetectionTask:
    """The canvas detection task of a preset and its two detectors (what ``dyninfer run cascade-detection`` trains).

    Attributes:
        canvas: how the canvases are made (their items come from the run's dataset).
        student, teacher: :class:`~dyninfer.models.detection.DetectorConfig` fields of the two detectors (the class
            count, image size and normalisation come from the canvases).
        student_recipe, teacher_recipe: their training.
        curve_grid: score quantiles of the test curves in the report (the calibration sweep's are the method's
            ``grid``).
        batch: images per runtime batch (recording, timing, agreement).
    """

    canvas: CanvasConfig = field(default_factory=CanvasConfig)
    student: dict = field(default_factory=lambda: dict(width=8, depth=1, head=24, head_convs=1))
    teacher: dict = field(default_factory=lambda: dict(width=24, depth=2, head=64, head_convs=2))
    student_recipe: DetRecipe = field(default_factory=lambda: DetRecipe(epochs=16))
    teacher_recipe: DetRecipe = field(default_factory=lambda: DetRecipe(epochs=8))
    curve_grid: int = 8
    batch: int = 64

    def __post_init__(self) -> None:
        number("curve_grid", self.curve_grid, lo=2, integer=True)
        number("batch", self.batch, lo=1, integer=True)

    def detector(self, role: str, data: CanvasData) -> DetectorConfig:
        """The :class:`DetectorConfig` of ``role`` (``student`` or ``teacher``) for ``data``'s canvases."""
        return DetectorConfig(**getattr(self, role), num_classes=data.spec.num_classes,
                              image_size=data.spec.image_size[0], mean=float(data.spec.mean[0]),
                              std=float(data.spec.std[0]))


def assign(model: Detector, boxes: list[torch.Tensor], labels: list[torch.Tensor], radius: float
           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Targets on the grid for a batch.

    Returns:
        (labels (N, L) long, -1 for background; boxes (N, L, 4) xyxy of the assigned ground truth; pos (N, L) bool).
    """
    c = model.centres                                              # (L, 2)
    L = c.shape[0]
    n = len(boxes)
    lab = torch.full((n, L), -1, dtype=torch.long)
    tgt = torch.zeros(n, L, 4)
    max_d = (model.cfg.bins - 1) * model.cfg.bin_px
    for i, (b, y) in enumerate(zip(boxes, labels)):
        if b.numel() == 0:
            continue
        cx, cy = c[:, :1], c[:, 1:]                                # (L, 1)
        inside = (cx > b[:, 0]) & (cx < b[:, 2]) & (cy > b[:, 1]) & (cy < b[:, 3])  # (L, G)
        bc = (b[:, :2] + b[:, 2:]) / 2                             # (G, 2)
        r = radius * STRIDE
        near = ((cx - bc[:, 0]).abs() <= r) & ((cy - bc[:, 1]).abs() <= r)
        far = torch.stack([cx - b[:, 0], cy - b[:, 1], b[:, 2] - cx, b[:, 3] - cy], -1).amax(-1) > max_d
        ok = inside & near & ~far                                  # (L, G)
        area = ((b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])).expand(L, -1).masked_fill(~ok, float("inf"))
        best_area, best = area.min(1)
        pos = torch.isfinite(best_area)
        lab[i, pos] = y[best[pos]]
        tgt[i, pos] = b[best[pos]]
    return lab, tgt, lab >= 0


def detection_loss(model: Detector, out: torch.Tensor, boxes: list[torch.Tensor], labels: list[torch.Tensor],
                   recipe: DetRecipe) -> tuple[torch.Tensor, dict]:
    """QFL + GIoU + DFL of the head output ``out`` (N, C + 4K, G, G) for the ground truth of the batch."""
    from torchvision.ops import box_iou, generalized_box_iou_loss

    cls, bins = model.split_head(out)                              # (N, L, C), (N, L, 4, K)
    lab, tgt, pos = assign(model, boxes, labels, recipe.radius)
    n_pos = max(int(pos.sum()), 1)
    K = model.cfg.bins
    target = torch.zeros_like(cls)
    pb = model.boxes_from_bins(bins)[pos]                          # (P, 4) predicted boxes at positives
    tb = tgt[pos]
    if pb.numel():
        iou = box_iou(pb.detach(), tb).diagonal().clamp(0, 1)
        target[pos, lab[pos]] = iou
    # quality focal loss (GFL): BCE to the IoU target, modulated by |target - sigmoid|^2
    qfl = (F.binary_cross_entropy_with_logits(cls, target, reduction="none")
           * (target - cls.sigmoid()).abs().pow(2)).sum() / n_pos
    if pb.numel():
        giou = generalized_box_iou_loss(pb, tb, reduction="sum") / n_pos
        c = model.centres.unsqueeze(0).expand(len(boxes), -1, -1)[pos]  # (P, 2)
        dist = torch.cat([c - tb[:, :2], tb[:, 2:] - c], -1) / model.cfg.bin_px  # (P, 4) in bins
        dist = dist.clamp(0, K - 1 - 1e-3)
        left = dist.floor().long()
        wl = left.float() + 1 - dist
        logp = bins[pos].log_softmax(-1)                           # (P, 4, K)
        dfl = -(logp.gather(-1, left.unsqueeze(-1)).squeeze(-1) * wl
                + logp.gather(-1, (left + 1).unsqueeze(-1)).squeeze(-1) * (1 - wl)).mean(-1).sum() / n_pos
    else:
        giou = dfl = cls.sum() * 0
    loss = qfl + recipe.box_weight * giou + recipe.dfl_weight * dfl
    return loss, {"qfl": float(qfl.detach()), "giou": float(giou.detach()), "dfl": float(dfl.detach())}


def train_detector(model: Detector, data: CanvasSplit, recipe: DetRecipe, *, seed: int = 0, desc: str = "detector",
                   log: Callable[[str], None] = print) -> dict:
    """Train ``model`` on ``data`` (one log line per epoch). Returns {"seconds", "train_loss"}."""
    torch.manual_seed(seed)
    g = np.random.default_rng(seed)
    n = len(data)
    steps = recipe.epochs * ((n + recipe.batch_size - 1) // recipe.batch_size)
    opt = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=recipe.lr, total_steps=steps, pct_start=0.1)
    S = model.cfg.image_size
    t0 = time.perf_counter()
    loss_avg = float("nan")
    model.train()
    for epoch in range(recipe.epochs):
        perm = g.permutation(n)
        tot, parts, nb = 0.0, {"qfl": 0.0, "giou": 0.0, "dfl": 0.0}, 0
        for s in range(0, n, recipe.batch_size):
            idx = perm[s:s + recipe.batch_size]
            x = data.x[idx]
            bx = [data.boxes[i] for i in idx]
            lb = [data.labels[i] for i in idx]
            if recipe.flip:
                flip = g.random(len(idx)) < 0.5
                if flip.any():
                    x = x.clone()
                    x[flip] = x[flip].flip(-1)
                    bx = [torch.stack([S - b[:, 2], b[:, 1], S - b[:, 0], b[:, 3]], 1) if f else b
                          for b, f in zip(bx, flip)]
            loss, p = detection_loss(model, model(x), bx, lb, recipe)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
            opt.step()
            sched.step()
            tot += float(loss.detach())
            for k in parts:
                parts[k] += p[k]
            nb += 1
        loss_avg = tot / max(nb, 1)
        log(f"[train] {desc} epoch {epoch + 1}/{recipe.epochs}: loss {loss_avg:.4f} ("
            + ", ".join(f"{k} {v / max(nb, 1):.4f}" for k, v in parts.items())
            + f"), {time.perf_counter() - t0:.0f} s")
    model.eval()
    return {"seconds": time.perf_counter() - t0, "train_loss": loss_avg}


def cached_detector(cfg: DetectorConfig, data: CanvasData, recipe: DetRecipe, *, seed: int = 0, desc: str = "detector",
                    root=None, log: Callable[[str], None] = print) -> tuple[Detector, dict]:
    """A trained detector from the checkpoint cache, trained on ``data.train`` and cached on a miss.

    The key covers the architecture, the canvases' content (:attr:`CanvasData.fingerprint`), the recipe and the
    seed. A corrupt cached file is reported through ``log`` and retrained, never used.
    """
    from ..runtime.cost import count_flops, count_params

    key = cache_key("detector", cfg.to_dict(), data, recipe.to_dict(), seed)
    path = Path(root or cache_dir() / "checkpoints") / data.spec.name / f"detector-{key}.pt"
    if path.exists():
        try:
            payload = read_checkpoint(path)
            if payload["arch"].get("name") != "detector" or payload["arch"].get("kwargs") != cfg.to_dict():
                raise CheckpointError(f"checkpoint {path} holds another architecture: {payload['arch']}")
            model = build_detector(cfg)
            load_state(model, payload["state_dict"], str(path))
            log(f"[cache] {desc}: {path}")
            return model.eval(), {**payload["meta"], "checkpoint": str(path)}
        except CheckpointError as e:
            log(f"[cache] {e}; retraining")
    torch.manual_seed(seed)
    model = build_detector(cfg)
    res = train_detector(model, data.train, recipe, seed=seed, desc=desc, log=log)
    meta = {"config": cfg.to_dict(), "recipe": recipe.to_dict(), "seed": seed, "data": data.meta.get("config"),
            "data_fingerprint": data.fingerprint, "train_seconds": res["seconds"], "train_loss": res["train_loss"],
            "flops": count_flops(model, (1, cfg.image_size, cfg.image_size)), "params": count_params(model),
            "versions": versions()}
    save_checkpoint(model, path, meta)
    log(f"[train] {desc}: {res['seconds']:.0f} s -> {path}")
    return model, {**meta, "checkpoint": str(path)}
