"""A small object-detection task built from real images: Fashion-MNIST items placed on a larger canvas.

Each canvas (``size`` x ``size``, one channel, black background) holds 0 to ``max_items`` items, each a
Fashion-MNIST image resized to one of ``scales`` and pasted (pixel-wise max) at a random place; boxes of
one canvas overlap by IoU <= ``max_iou``. An item's pixels are those whose resized value reaches ``ink``
(fainter pixels are set to 0), and its box is the tight box around them, in pixel-edge coordinates
``(x0, y0, x1, y1)``: the item's pixels are exactly the columns ``x0 .. x1 - 1`` and rows ``y0 .. y1 - 1``.
Training canvases take items from the training split, calibration canvases from the calibration split and
test canvases from the test split of :func:`dyninfer.data.load_dataset`, so the three never share an item.

The canvases of a seed are built once and written (atomically, checksummed) under
``dyninfer.io.cache_dir() / "canvas"``; a later load checks the checksum and refuses a changed file.
"""

from __future__ import annotations

import functools
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from ..check import number
from ..errors import CheckpointError, ConfigError, DataError, InputError
from ..io import atomic_dir, cache_dir, digest, read_payload, write_json, write_payload
from .datasets import DataSpec, Split, load_dataset

FORMAT = "dyninfer-canvas-1"
FILE = "canvas.pt"
SPLITS = ("train", "calib", "test")


@dataclass(frozen=True)
class CanvasConfig:
    """How canvases are made (every field goes into the cache key)."""

    size: int = 64                        # canvas side (pixels)
    scales: tuple[int, ...] = (16, 22, 28)  # item sides after resizing (pixels)
    max_items: int = 4                    # items per canvas: 0 .. max_items
    p_empty: float = 0.1                  # share of canvases with no item; the rest draw 1 .. max_items uniformly
    max_iou: float = 0.2                  # largest IoU between two boxes of one canvas
    ink: float = 0.1                      # a resized pixel below this is background (set to 0)
    train: int = 6000                     # canvases per split
    calib: int = 1000
    test: int = 1000
    source: str = "fashion-mnist"         # registered dataset the items come from

    def __post_init__(self) -> None:
        number("size", self.size, lo=8, integer=True)
        if not self.scales or any(not isinstance(s, int) or not 4 <= s <= self.size for s in self.scales):
            raise ConfigError(f"scales must be integers in [4, size={self.size}], got {self.scales!r}")
        number("max_items", self.max_items, lo=0, integer=True)
        number("p_empty", self.p_empty, lo=0, hi=1)
        number("max_iou", self.max_iou, lo=0, hi=1)
        number("ink", self.ink, lo=0, hi=1, lo_open=True, hi_open=True)
        for s in SPLITS:
            number(s, getattr(self, s), lo=1, integer=True)


@dataclass
class CanvasSplit:
    """Canvases of one split: images (N, 1, S, S) float32 in [0, 1]; per image its boxes (K, 4) xyxy and labels (K,)."""

    x: torch.Tensor
    boxes: list[torch.Tensor]
    labels: list[torch.Tensor]

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def targets(self, idx=None) -> list[dict]:
        """torchmetrics-style targets (``boxes``, ``labels``) of the images ``idx`` (all by default)."""
        idx = range(len(self)) if idx is None else idx
        return [{"boxes": self.boxes[i], "labels": self.labels[i]} for i in idx]

    def subset(self, idx) -> "CanvasSplit":
        idx = [int(i) for i in idx]
        return CanvasSplit(self.x[idx], [self.boxes[i] for i in idx], [self.labels[i] for i in idx])


@dataclass
class CanvasData:
    """Train / calibration / test canvases and their description (duck-types :class:`Dataset` for the cache key)."""

    spec: DataSpec
    train: CanvasSplit
    calib: CanvasSplit
    test: CanvasSplit
    meta: dict

    def split(self, name: str) -> CanvasSplit:
        if name not in SPLITS:
            raise ConfigError(f"unknown split {name!r}; use train, calib or test")
        return getattr(self, name)

    @functools.cached_property
    def fingerprint(self) -> str:
        return str(self.meta["sha256"])[:16]


# ----------------------------------------------------------------------------------------------- boxes

def check_boxes(boxes, image_size: tuple[int, int], *, mode: str = "clip", what: str = "boxes") -> tuple[torch.Tensor, torch.Tensor]:
    """Check xyxy boxes against an image of ``image_size`` (H, W).

    Args:
        boxes: (K, 4) x0, y0, x1, y1 in pixels.
        mode: ``clip``: boxes reaching outside the image are clipped to it, and boxes that are empty after
            clipping (x1 <= x0 or y1 <= y0: degenerate, or wholly outside) are dropped; ``error``: either raises.
        what: how messages name the boxes.

    Returns:
        (boxes (K', 4) float32, keep (K,) bool: which input boxes remain).

    Raises:
        InputError: a shape other than (K, 4), a NaN or infinite coordinate, or (``mode="error"``) a box outside
            the image or degenerate.
    """
    if mode not in ("clip", "error"):
        raise ConfigError(f"mode must be 'clip' or 'error', got {mode!r}")
    b = torch.as_tensor(boxes, dtype=torch.float32)
    if b.numel() == 0:
        return b.reshape(0, 4), torch.zeros(0, dtype=torch.bool)
    if b.ndim != 2 or b.shape[1] != 4:
        raise InputError(f"{what} must have shape (K, 4) as x0, y0, x1, y1; got {tuple(b.shape)}")
    if not torch.isfinite(b).all():
        raise InputError(f"{what} hold NaN or infinite coordinates; give finite pixel coordinates")
    h, w = image_size
    outside = (b[:, 0] < 0) | (b[:, 1] < 0) | (b[:, 2] > w) | (b[:, 3] > h)
    if mode == "error" and outside.any():
        i = int(outside.nonzero()[0])
        raise InputError(f"{what}[{i}] = {b[i].tolist()} reaches outside the {h}x{w} image; clip it to "
                         f"[0, {w}] x [0, {h}] or use mode='clip'")
    c = b.clone()
    c[:, 0::2] = c[:, 0::2].clamp(0, w)
    c[:, 1::2] = c[:, 1::2].clamp(0, h)
    keep = (c[:, 2] > c[:, 0]) & (c[:, 3] > c[:, 1])
    if mode == "error" and not keep.all():
        i = int((~keep).nonzero()[0])
        raise InputError(f"{what}[{i}] = {b[i].tolist()} is degenerate (x1 <= x0 or y1 <= y0); drop it or "
                         f"use mode='clip' to drop such boxes")
    return c[keep], keep


def tight_box(mask: torch.Tensor) -> tuple[int, int, int, int] | None:
    """The tight pixel-edge box (x0, y0, x1, y1) around the True pixels of an (H, W) mask, or None if none."""
    ys = mask.any(1).nonzero()
    xs = mask.any(0).nonzero()
    if ys.numel() == 0:
        return None
    return int(xs[0]), int(ys[0]), int(xs[-1]) + 1, int(ys[-1]) + 1


# ----------------------------------------------------------------------------------------------- building

def _resized(items: torch.Tensor, side: int, ink: float) -> torch.Tensor:
    """(N, 1, 28, 28) -> (N, side, side) with pixels below ``ink`` set to 0."""
    r = F.interpolate(items, size=(side, side), mode="bilinear", antialias=True, align_corners=False)[:, 0]
    return torch.where(r >= ink, r.clamp(0, 1), torch.zeros(()))


def build_split(items: Split, n: int, cfg: CanvasConfig, seed: int) -> CanvasSplit:
    """``n`` canvases from the items of ``items``, deterministic for ``seed``."""
    g = np.random.default_rng(seed)
    S = cfg.size
    pools = {s: _resized(items.x, s, cfg.ink) for s in cfg.scales}  # side -> (M, s, s)
    boxes_of: dict[tuple[int, int], tuple[int, int, int, int] | None] = {}  # (side, item) -> tight box, on demand
    x = torch.zeros(n, 1, S, S)
    all_boxes, all_labels = [], []
    for i in range(n):
        k = 0 if (cfg.max_items == 0 or g.random() < cfg.p_empty) else int(g.integers(1, cfg.max_items + 1))
        placed: list[list[float]] = []
        labels: list[int] = []
        for _ in range(k):
            for _try in range(30):
                s = int(cfg.scales[g.integers(len(cfg.scales))])
                j = int(g.integers(len(items)))
                if (s, j) not in boxes_of:
                    boxes_of[s, j] = tight_box(pools[s][j] > 0)
                tb = boxes_of[s, j]
                if tb is None:
                    break
                ox, oy = int(g.integers(0, S - s + 1)), int(g.integers(0, S - s + 1))
                box = [tb[0] + ox, tb[1] + oy, tb[2] + ox, tb[3] + oy]
                if placed and _max_iou(box, placed) > cfg.max_iou:
                    continue
                x[i, 0, oy:oy + s, ox:ox + s] = torch.maximum(x[i, 0, oy:oy + s, ox:ox + s], pools[s][j])
                placed.append(box)
                labels.append(int(items.y[j]))
                break
        all_boxes.append(torch.tensor(placed, dtype=torch.float32).reshape(-1, 4))
        all_labels.append(torch.tensor(labels, dtype=torch.long))
    x = (x * 255).round_().div_(255.0)  # the uint8 precision of the file, so built and loaded canvases are equal
    return CanvasSplit(x, all_boxes, all_labels)


def _max_iou(box: list[float], others: list[list[float]]) -> float:
    from torchvision.ops import box_iou

    return float(box_iou(torch.tensor([box]), torch.tensor(others)).max())


def build_canvases(cfg: CanvasConfig, *, seed: int = 0, root: str | os.PathLike | None = None) -> CanvasData:
    """Build every split in memory (no cache): items from :func:`load_dataset` (``cfg.source``, ``seed``)."""
    data = load_dataset(cfg.source, root=root, seed=seed)
    splits = {s: build_split(data.split(s), getattr(cfg, s), cfg, seed * 1000 + k) for k, s in enumerate(SPLITS)}
    spec = DataSpec(name=f"{cfg.source}-canvas{cfg.size}", num_classes=data.spec.num_classes, in_channels=1,
                    image_size=(cfg.size, cfg.size), mean=data.spec.mean, std=data.spec.std,
                    class_names=data.spec.class_names)
    meta = {"config": asdict(cfg), "seed": seed, "source": data.meta}
    return CanvasData(spec, splits["train"], splits["calib"], splits["test"], meta)


# ----------------------------------------------------------------------------------------------- disk

def _payload(d: CanvasData) -> dict:
    out = {"format": FORMAT, "meta": {k: v for k, v in d.meta.items() if k != "sha256"},
           "spec": {"name": d.spec.name, "num_classes": d.spec.num_classes, "image_size": list(d.spec.image_size),
                    "mean": list(d.spec.mean), "std": list(d.spec.std), "class_names": list(d.spec.class_names)}}
    for s in SPLITS:
        sp = d.split(s)
        counts = torch.tensor([len(b) for b in sp.boxes], dtype=torch.long)
        out[s] = {"x": (sp.x * 255).round().to(torch.uint8), "counts": counts,
                  "boxes": torch.cat(sp.boxes) if sp.boxes else torch.zeros(0, 4),
                  "labels": torch.cat(sp.labels) if sp.labels else torch.zeros(0, dtype=torch.long)}
    return out


def _from_payload(p: dict, path: Path) -> CanvasData:
    splits = {}
    for s in SPLITS:
        part = p[s]
        x = part["x"].float().div_(255.0)
        counts = [int(c) for c in part["counts"]]
        if sum(counts) != part["boxes"].shape[0] or len(counts) != x.shape[0]:
            raise DataError(f"canvas file {path} is inconsistent (split {s}); delete it to rebuild")
        bx = list(torch.split(part["boxes"].float(), counts))
        lb = list(torch.split(part["labels"].long(), counts))
        for b in bx:  # stored boxes must lie inside the canvas
            check_boxes(b, tuple(x.shape[-2:]), mode="error", what=f"stored boxes of {path}")
        splits[s] = CanvasSplit(x, bx, lb)
    sp = p["spec"]
    spec = DataSpec(name=sp["name"], num_classes=sp["num_classes"], in_channels=1, image_size=tuple(sp["image_size"]),
                    mean=tuple(sp["mean"]), std=tuple(sp["std"]), class_names=tuple(sp["class_names"]))
    return CanvasData(spec, splits["train"], splits["calib"], splits["test"], dict(p["meta"]))


def canvas_folder(cfg: CanvasConfig, seed: int, root: str | os.PathLike | None = None) -> Path:
    key = digest({"config": asdict(cfg), "seed": seed, "format": FORMAT})[:16]
    return Path(root or cache_dir() / "canvas") / f"{cfg.source}-{cfg.size}-{key}"


def load_canvases(cfg: CanvasConfig | None = None, *, seed: int = 0, root: str | os.PathLike | None = None,
                  data_root: str | os.PathLike | None = None, log: Callable[[str], None] = print) -> CanvasData:
    """The canvases of ``cfg`` and ``seed``: read from the cache folder, or built and written there once.

    Args:
        cfg: the canvas settings (default :class:`CanvasConfig`).
        seed: seed of the item split and of the placement.
        root: cache folder (default ``cache_dir() / "canvas"``).
        data_root: folder of the source dataset (see :func:`load_dataset`).

    Raises:
        DataError: the cached file is unreadable, was changed after it was written (checksum), or is inconsistent;
            the message names the folder to delete so that it is rebuilt.
    """
    cfg = cfg or CanvasConfig()
    folder = canvas_folder(cfg, seed, root)
    path = folder / FILE
    if folder.exists():
        try:
            p = read_payload(path, fmt=FORMAT, what="canvas dataset file")
        except CheckpointError as e:
            raise DataError(f"{e} The canvas dataset is unusable: delete the folder {folder} (rm -r) and run again "
                            f"to rebuild it.") from None
        d = _from_payload(p, path)
        d.meta["sha256"] = digest({k: v for k, v in p.items()})
        log(f"[canvas] loaded {folder} ({', '.join(f'{s} {len(d.split(s))}' for s in SPLITS)})")
        return d
    d = build_canvases(cfg, seed=seed, root=data_root)
    payload = _payload(d)
    with atomic_dir(folder) as tmp:
        write_payload(tmp / FILE, payload)
        write_json(tmp / "meta.json", payload["meta"])
    d.meta["sha256"] = digest(payload)
    log(f"[canvas] built {folder} ({', '.join(f'{s} {len(d.split(s))}' for s in SPLITS)})")
    return d
