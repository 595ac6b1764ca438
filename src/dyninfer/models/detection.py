"""Small anchor-free single-stage detectors (GFL-style) and the free energy over their boxes (EBJR eqs. 12-13).

Architecture: a CNN backbone (stride-2 stem, a stride-4 and a stride-8 stage), an FPN-lite merge of both
stages on the stride-4 grid, a shared conv tower and two 1x1 outputs per grid location:

* ``C`` class logits ``S^c`` (sigmoid, trained with the quality focal loss of Generalized Focal Loss);
* for each of the 4 box sides (left, top, right, bottom distance from the location's centre) ``K`` bin logits
  ``S^r`` over distances ``0, bin_px, ..., (K-1) bin_px`` (trained with the distribution focal loss). The box
  side is the expectation of the softmax over bins.

``forward(x)`` returns the raw head output (N, C + 4K, H/4, W/4), so FLOPs are countable with FlopCounterMode;
:meth:`Detector.decode` turns it into per-image detections and the per-image free energy.

Free energy (EBJR section 2.3): over the B boxes of an image,
F^c = (1/B) sum_b -log sum_i exp(S^c_{b,i}) (eq. 12) and F^r = (1/4B) sum_b sum_j -log sum_k exp(S^r_{b,j,k})
(eq. 13: the integral over the side's value is exactly the sum over the discrete bins, taken with bin width 1,
which shifts F^r by the constant log(bin_px) and changes no routing). F^o = F^c + F^r; the router keeps the
student's answer when -F^o >= t (eq. 14).

Which boxes: B counts the image's final detections (after NMS) whose score reaches ``energy_score``. An image
with none (an empty image, or a student that finds nothing) takes its ``empty_k`` highest-scoring grid
locations, whatever their score, as its boxes, so -F is defined for every image.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn
import torch.nn.functional as F

from ..check import number
from ..errors import ConfigError, InputError
from ..data.datasets import DataSpec
from .registry import Normalize, create_model, register_backbone


@dataclass(frozen=True)
class DetectorConfig:
    """Architecture of a :class:`Detector` (every field is stored in checkpoints)."""

    width: int = 8            # channels of the stride-2 stem; the stride-4 stage has 2x, the stride-8 stage 4x
    depth: int = 1            # extra 3x3 conv blocks in each of the stride-4 and stride-8 stages
    head: int = 24            # channels of the FPN merge and of the head tower
    head_convs: int = 1       # 3x3 convs in the head tower
    bins: int = 17            # K: bins per box side (GFL's reg_max + 1)
    bin_px: float = 2.0       # width of one bin, pixels (largest side distance (K - 1) * bin_px)
    num_classes: int = 10
    image_size: int = 64      # square input side (a multiple of 8)
    mean: float = 0.0         # input normalisation (part of the model)
    std: float = 1.0

    def __post_init__(self) -> None:
        for k in ("width", "head", "bins", "num_classes"):
            number(k, getattr(self, k), lo=1, integer=True)
        number("depth", self.depth, lo=0, integer=True)
        number("head_convs", self.head_convs, lo=0, integer=True)
        number("bin_px", self.bin_px, lo=0, lo_open=True)
        number("std", self.std, lo=0, lo_open=True)
        if not isinstance(self.image_size, int) or self.image_size < 8 or self.image_size % 8:
            raise ConfigError(f"image_size must be a multiple of 8, got {self.image_size!r}")

    def to_dict(self) -> dict:
        return asdict(self)


STRIDE = 4


def _conv(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


@dataclass
class DetectionOutput:
    """Decoded output of a detector on N images.

    Attributes:
        detections: per image ``{"boxes": (D, 4) xyxy, "scores": (D,), "labels": (D,)}`` (torchmetrics format).
        neg_energy: (N,) -F^o = -(F^c + F^r) (empty when decoded with ``energy=False``).
        neg_energy_cls: (N,) -F^c.
        neg_energy_box: (N,) -F^r.
        confidence: (N,) mean score of the same B boxes (the baseline router).
        n_boxes: (N,) B, the detections the energy averages over (0: the ``empty_k`` fallback was used).
    """

    detections: list[dict]
    neg_energy: torch.Tensor
    neg_energy_cls: torch.Tensor
    neg_energy_box: torch.Tensor
    confidence: torch.Tensor
    n_boxes: torch.Tensor

    def __len__(self) -> int:
        return len(self.detections)

    @staticmethod
    def cat(parts: list["DetectionOutput"]) -> "DetectionOutput":
        return DetectionOutput([d for p in parts for d in p.detections],
                               *(torch.cat([getattr(p, k) for p in parts]) for k in
                                 ("neg_energy", "neg_energy_cls", "neg_energy_box", "confidence", "n_boxes")))


def class_free_energy(cls_logits: torch.Tensor) -> torch.Tensor:
    """Eq. 12 per box: -log sum_i exp(S^c_{b,i}). (B, C) -> (B,)."""
    return -torch.logsumexp(cls_logits, dim=-1)


def box_free_energy(bin_logits: torch.Tensor) -> torch.Tensor:
    """Eq. 13 per box: (1/4) sum_j -log sum_k exp(S^r_{b,j,k}), the integral over a side's value taken over
    its discrete bins. (B, 4, K) -> (B,)."""
    return -torch.logsumexp(bin_logits, dim=-1).mean(dim=-1)


class Detector(nn.Module):
    """GFL-style single-stage detector on a stride-4 grid (see the module docstring)."""

    def __init__(self, cfg: DetectorConfig) -> None:
        super().__init__()
        self.cfg = cfg
        w, h = cfg.width, cfg.head
        self.norm = Normalize([cfg.mean], [cfg.std])
        self.stem = _conv(1, w, 2)
        self.s4 = nn.Sequential(_conv(w, 2 * w, 2), *[_conv(2 * w, 2 * w) for _ in range(cfg.depth)])
        self.s8 = nn.Sequential(_conv(2 * w, 4 * w, 2), *[_conv(4 * w, 4 * w) for _ in range(cfg.depth)])
        self.lat4 = nn.Conv2d(2 * w, h, 1)
        self.lat8 = nn.Conv2d(4 * w, h, 1)
        self.tower = nn.Sequential(*[_conv(h, h) for _ in range(cfg.head_convs)])
        self.out = nn.Conv2d(h, cfg.num_classes + 4 * cfg.bins, 1)
        with torch.no_grad():  # class prior 0.01 (focal-loss initialisation)
            self.out.bias[: cfg.num_classes].fill_(-4.595)
        g = cfg.image_size // STRIDE
        ys, xs = torch.meshgrid(torch.arange(g), torch.arange(g), indexing="ij")
        centres = (torch.stack([xs, ys], -1).reshape(-1, 2).float() + 0.5) * STRIDE
        self.register_buffer("centres", centres, persistent=False)  # (G*G, 2) x, y
        self.register_buffer("bin_values", torch.arange(cfg.bins).float() * cfg.bin_px, persistent=False)  # (K,)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Images (N, 1, S, S) in [0, 1] -> raw head output (N, C + 4K, S/4, S/4)."""
        f4 = self.s4(self.stem(self.norm(x)))                     # (N, 2w, S/4, S/4)
        f8 = self.s8(f4)                                          # (N, 4w, S/8, S/8)
        p = self.lat4(f4) + F.interpolate(self.lat8(f8), scale_factor=2.0, mode="nearest")
        return self.out(self.tower(p))

    # ------------------------------------------------------------------------------------ decoding

    def split_head(self, out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, C + 4K, G, G) -> class logits (N, G*G, C) and bin logits (N, G*G, 4, K)."""
        n, _, gh, gw = out.shape
        C, K = self.cfg.num_classes, self.cfg.bins
        flat = out.permute(0, 2, 3, 1).reshape(n, gh * gw, C + 4 * K)
        return flat[..., :C], flat[..., C:].reshape(n, gh * gw, 4, K)

    def boxes_from_bins(self, bins: torch.Tensor) -> torch.Tensor:
        """Bin logits (N, L, 4, K) -> boxes (N, L, 4) xyxy: each side the expected distance under the softmax."""
        d = bins.softmax(-1) @ self.bin_values                      # (N, L, 4) left, top, right, bottom
        c = self.centres[: d.shape[1]]
        return torch.cat([c - d[..., :2], c + d[..., 2:]], dim=-1)

    def check_input(self, x) -> torch.Tensor:
        s = self.cfg.image_size
        if not isinstance(x, torch.Tensor) or x.ndim != 4 or tuple(x.shape[1:]) != (1, s, s):
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise InputError(f"detector input must be images (N, 1, {s}, {s}) in [0, 1], got {shape}")
        if not x.is_floating_point():
            raise InputError(f"detector input must be float in [0, 1], got {x.dtype}; divide uint8 images by 255")
        return x

    @torch.no_grad()
    def decode(self, out: torch.Tensor, *, score_thresh: float = 0.05, nms_iou: float = 0.6, pre_nms: int = 50,
               max_det: int = 100, energy: bool = True, energy_score: float = 0.3, empty_k: int = 1) -> DetectionOutput:
        """Per-image detections (and, with ``energy``, the free energy) from the raw head output.

        Args:
            out: (N, C + 4K, G, G) from :meth:`forward`.
            score_thresh: smallest detection score kept (COCO-style evaluation keeps low scores).
            nms_iou: class-wise NMS IoU (``torchvision.ops.batched_nms`` per image).
            pre_nms: candidates (location, class) per image before NMS.
            max_det: detections per image after NMS.
            energy: compute -F (False: detections only, as a teacher answering alone needs).
            energy_score: detections with at least this score are the B boxes of eqs. 12-13.
            empty_k: boxes of an image with B = 0: its ``empty_k`` best grid locations, whatever their score.
        """
        from torchvision.ops import batched_nms, clip_boxes_to_image

        n, _, gh, gw = out.shape
        C, K = self.cfg.num_classes, self.cfg.bins
        L = gh * gw
        flat = out.reshape(n, -1, L)                                # (N, C + 4K, L), a view
        cls = flat[:, :C]                                           # (N, C, L) class logits
        k = min(pre_nms, L * C)
        top, idx = cls.reshape(n, C * L).topk(k, dim=1)            # (N, k) logits, sorted
        ok = top >= torch.logit(torch.tensor(score_thresh))        # score >= score_thresh
        img_f = torch.arange(n).unsqueeze(1).expand(n, k)[ok]
        lab_f, loc_f = idx[ok] // L, idx[ok] % L
        sc_f = top[ok].sigmoid()
        bx_f = clip_boxes_to_image(self._boxes_at(flat, img_f, loc_f), (self.cfg.image_size,) * 2)  # (M, 4)
        good = (bx_f[:, 2] > bx_f[:, 0]) & (bx_f[:, 3] > bx_f[:, 1])   # degenerate boxes are dropped
        if not bool(good.all()):
            img_f, lab_f, loc_f, sc_f, bx_f = img_f[good], lab_f[good], loc_f[good], sc_f[good], bx_f[good]
        # class-wise NMS per image (candidates are grouped by image already: img_f is sorted)
        per = torch.bincount(img_f, minlength=n).tolist()
        kept, start = [], 0
        for c in per:
            if c:
                k_i = batched_nms(bx_f[start:start + c], sc_f[start:start + c], lab_f[start:start + c], nms_iou)
                kept.append(start + k_i[:max_det])              # sorted by score
            start += c
        keep = torch.cat(kept) if kept else torch.zeros(0, dtype=torch.long)
        counts = torch.bincount(img_f[keep], minlength=n)
        sizes = counts.tolist()
        dets = [{"boxes": b, "scores": s, "labels": lb} for b, s, lb in
                zip(bx_f[keep].split(sizes), sc_f[keep].split(sizes), lab_f[keep].split(sizes))]
        if not energy:
            e = torch.zeros(0)
            return DetectionOutput(dets, e, e, e, e, torch.zeros(0, dtype=torch.long))
        sel = keep[sc_f[keep] >= energy_score]
        b_img, b_loc, b_sc = img_f[sel], loc_f[sel], sc_f[sel]
        nb = torch.bincount(b_img, minlength=n)
        # images without a box: their empty_k best locations (by max class score), whatever the score
        none = (nb == 0).nonzero().squeeze(1)
        if none.numel():
            kk = min(empty_k, L)
            fb_logit, fb_loc = cls[none].max(1).values.topk(kk, dim=1)  # (M, kk)
            b_img = torch.cat([b_img, none.unsqueeze(1).expand(-1, kk).reshape(-1)])
            b_loc = torch.cat([b_loc, fb_loc.reshape(-1)])
            b_sc = torch.cat([b_sc, fb_logit.sigmoid().reshape(-1)])
        at = flat[b_img, :, b_loc]                                  # (B_all, C + 4K) head output of the boxes
        fc = class_free_energy(at[:, :C])                           # (B_all,) eq. 12 terms
        fr = box_free_energy(at[:, C:].reshape(-1, 4, K))           # (B_all,) eq. 13 terms
        cnt = torch.bincount(b_img, minlength=n).clamp_min(1).float()
        mean = lambda v: torch.zeros(n).index_add_(0, b_img, v) / cnt  # noqa: E731
        nfc, nfr = -mean(fc), -mean(fr)
        return DetectionOutput(dets, nfc + nfr, nfc, nfr, mean(b_sc), nb)

    def _boxes_at(self, flat: torch.Tensor, img: torch.Tensor, loc: torch.Tensor) -> torch.Tensor:
        """Boxes (M, 4) xyxy at grid locations ``loc`` of images ``img`` from the flat head output (N, C + 4K, L)."""
        C, K = self.cfg.num_classes, self.cfg.bins
        bins = flat[img, C:, loc].reshape(-1, 4, K)                 # (M, 4, K)
        d = bins.softmax(-1) @ self.bin_values                      # (M, 4) left, top, right, bottom
        c = self.centres[loc]
        return torch.cat([c - d[:, :2], c + d[:, 2:]], dim=-1)

    @torch.no_grad()
    def detect(self, x: torch.Tensor, **decode_kwargs) -> DetectionOutput:
        """:meth:`decode` of :meth:`forward` on images (N, 1, S, S) in [0, 1] (checked)."""
        x = self.check_input(x)
        if x.shape[0] == 0:
            e = torch.zeros(0)
            return DetectionOutput([], e, e, e, e, torch.zeros(0, dtype=torch.long))
        return self.decode(self(x), **decode_kwargs)


def build_detector(cfg: DetectorConfig) -> Detector:
    """A :class:`Detector` that records how it was built (``dyninfer_arch``), so the shared checkpoint loader
    (:func:`~dyninfer.train.checkpoint.load_checkpoint`, and with it a saved policy) rebuilds it."""
    spec = DataSpec(name="canvas", num_classes=cfg.num_classes, in_channels=1, image_size=(cfg.image_size,) * 2,
                    mean=(cfg.mean,), std=(cfg.std,))
    return create_model("detector", spec, **cfg.to_dict())


@register_backbone("detector")
def _detector(spec: DataSpec, **kwargs) -> Detector:
    """The registered builder behind :func:`build_detector` (``kwargs``: a :class:`DetectorConfig`'s fields)."""
    return Detector(DetectorConfig(**kwargs))


@torch.no_grad()
def record_detections(model: Detector, images: torch.Tensor, *, batch_size: int = 64, **decode_kwargs) -> DetectionOutput:
    """:meth:`Detector.detect` on ``images`` (N, 1, S, S) in batches of ``batch_size``, concatenated."""
    number("batch_size", batch_size, lo=1, integer=True)
    model.eval()
    parts = [model.detect(images[i:i + batch_size], **decode_kwargs) for i in range(0, images.shape[0], batch_size)]
    if not parts:
        return model.detect(images[:0])
    return DetectionOutput.cat(parts)
