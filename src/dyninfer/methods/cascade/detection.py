"""EBJR for object detection (paper section 2.3, eq. 14): a small detector answers an image when -F^o >= t,
else the large detector answers it.

Both detectors' per-image detections on a split are recorded once (:func:`record_pair`); every operating point
is then evaluated by merging the cached lists and scoring them with torchmetrics' ``MeanAveragePrecision``
(COCO mAP@[.5:.95], pycocotools backend). The sweep is the shared
:func:`dyninfer.evaluate.simulate.sweep_routed`. :meth:`DetectionCascade.runtime` executes the policy for real
on a batch: the student on every image, the teacher only on the images it forwards; for the same threshold its
detections equal :meth:`DetectionCascade.simulate`'s.

Routers: ``energy`` (-F^o of :mod:`dyninfer.models.detection`), ``confidence`` (mean score of the same B boxes,
the baseline), ``count`` (fewer confident boxes keep: a crowded image is a hard one; equal counts are ordered by
-F^o) and ``random`` (a seeded uniform score per image, in image order: the same draw for a split in
:meth:`simulate` and for a batch holding that split in the runtime).

:class:`DetectionCascade` is registered as ``cascade-detection``; ``dyninfer run cascade-detection`` runs it end to
end (:mod:`dyninfer.tasks.detection`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ...check import choice, number
from ...errors import ConfigError, TraceError
from ...evaluate.frontier import Curve
from ...evaluate.simulate import sweep_routed
from ..base import register_method
from .routed import RoutedCascade
from ...models.detection import DetectionOutput, Detector, record_detections

ROUTER_NAMES = ("energy", "confidence", "count", "random")
COUNT_STEP = 1000.0  # -B * COUNT_STEP + (-F^o): the count decides, -F^o (|-F^o| << COUNT_STEP) breaks ties


def mean_average_precision(preds: list[dict], targets: list[dict], *, backend: str = "pycocotools") -> dict[str, float]:
    """COCO box mAP from torchmetrics' ``MeanAveragePrecision`` (imported here: the ``detection`` extra).

    Args:
        preds: per image ``{"boxes" (D, 4) xyxy, "scores" (D,), "labels" (D,)}`` (D may be 0).
        targets: per image ``{"boxes" (K, 4) xyxy, "labels" (K,)}`` (K may be 0).

    Returns:
        {"map", "map_50", "map_75"} (-1 where no image has a ground-truth box).
    """
    try:
        from torchmetrics.detection import MeanAveragePrecision
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ConfigError("mAP needs torchmetrics and pycocotools: pip install 'dyninfer[detection]'") from e
    if len(preds) != len(targets):
        raise TraceError(f"{len(preds)} predictions for {len(targets)} images")
    m = MeanAveragePrecision(box_format="xyxy", iou_type="bbox", backend=backend)
    m.update(preds, targets)
    r = m.compute()
    return {k: float(r[k]) for k in ("map", "map_50", "map_75")}


@dataclass
class DetectionRecord:
    """Both detectors' outputs on one split, recorded once.

    Attributes:
        student, teacher: decoded outputs on the same N images (the student's with its free energy).
        targets: per image ``{"boxes", "labels"}``.
        flops: FLOPs per image of the student and of the teacher (forward pass, FlopCounterMode).
    """

    student: DetectionOutput
    teacher: DetectionOutput
    targets: list[dict]
    flops: tuple[float, float]

    def __post_init__(self) -> None:
        n = len(self.targets)
        if len(self.student) != n or len(self.teacher) != n:
            raise TraceError(f"record holds {len(self.student)} student and {len(self.teacher)} teacher outputs for "
                             f"{n} images; record both detectors on the same split")
        self._memo: dict[bytes, dict] = {}

    @property
    def n(self) -> int:
        return len(self.targets)

    def mixture(self, keep: np.ndarray) -> list[dict]:
        """Per image: the student's detections where ``keep``, else the teacher's."""
        keep = np.asarray(keep, bool)
        return [s if k else t for s, t, k in zip(self.student.detections, self.teacher.detections, keep)]

    def metrics(self, keep: np.ndarray, backend: str = "pycocotools") -> dict[str, float]:
        """mAP figures of :meth:`mixture` (memoised per ``keep``)."""
        keep = np.asarray(keep, bool)
        key = np.packbits(keep).tobytes() + backend.encode()
        if key not in self._memo:
            self._memo[key] = mean_average_precision(self.mixture(keep), self.targets, backend=backend)
        return self._memo[key]


def record_pair(student: Detector, teacher: Detector, images: torch.Tensor, targets: list[dict], *,
                batch_size: int = 64, **decode_kwargs) -> DetectionRecord:
    """Record both detectors on ``images`` (N, 1, S, S) with their FLOPs per image."""
    from ...runtime.cost import count_flops

    shape = tuple(images.shape[1:])
    return DetectionRecord(record_detections(student, images, batch_size=batch_size, **decode_kwargs),
                           record_detections(teacher, images, batch_size=batch_size, energy=False, **decode_kwargs),
                           targets, (float(count_flops(student, shape)), float(count_flops(teacher, shape))))


def router_score(router: str, out: DetectionOutput, seed: int = 0) -> np.ndarray:
    """(N,) float32 score of ``router`` on the student's output (higher: keep the student's answer)."""
    choice("router", router, ROUTER_NAMES)
    if router == "energy":
        return out.neg_energy.numpy().astype(np.float32)
    if router == "confidence":
        return out.confidence.numpy().astype(np.float32)
    if router == "count":
        return (-COUNT_STEP * out.n_boxes.double() + out.neg_energy.double()).numpy().astype(np.float32)
    return np.random.default_rng(seed).random(len(out)).astype(np.float32)


@dataclass
class DetectionOutcome:
    """What the policy does on a record at one threshold."""

    threshold: float
    keep: np.ndarray          # (N,) bool: the student answered
    detections: list[dict]
    map: float
    map_50: float
    share_forwarded: float
    mean_flops: float


@dataclass
class RoutedDetections:
    """What the runtime returns for a batch: per-image detections, who answered, and the router's score."""

    detections: list[dict]
    keep: torch.Tensor        # (N,) bool
    score: torch.Tensor       # (N,) float32


class DetectionRuntime:
    """Executes the policy on a batch: the student on every image, the teacher only on the forwarded ones."""

    def __init__(self, student: Detector, teacher: Detector, *, threshold: float, router: str, seed: int,
                 decode_kwargs: dict, teacher_alone: bool = False) -> None:
        self.student, self.teacher = student.eval(), teacher.eval()
        self.teacher_alone = bool(teacher_alone)  # the teacher answers every image; the student does not run
        self.threshold = np.float32(threshold)
        self.router, self.seed, self.decode_kwargs = router, seed, dict(decode_kwargs)

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> RoutedDetections:
        from ...runtime.validate import check_batch

        images = check_batch(images, None, where="detection cascade")
        if self.teacher_alone:
            n = images.shape[0]
            dets = self.teacher.detect(images, energy=False, **self.decode_kwargs).detections
            return RoutedDetections(list(dets), torch.zeros(n, dtype=torch.bool), torch.full((n,), float("nan")))
        out = self.student.detect(images, **self.decode_kwargs)
        score = torch.from_numpy(router_score(self.router, out, self.seed))
        keep = score >= torch.tensor(self.threshold)
        dets = list(out.detections)
        fwd = (~keep).nonzero().squeeze(1)
        if fwd.numel():
            t = self.teacher.detect(images[fwd], energy=False, **self.decode_kwargs)
            for i, d in zip(fwd.tolist(), t.detections):
                dets[i] = d
        return RoutedDetections(dets, keep, score)


@register_method("cascade-detection")
class DetectionCascade(RoutedCascade):
    """Two-stage detection cascade with an energy, confidence, count or random router (EBJR eq. 14).

    Args:
        router: ``energy`` | ``confidence`` | ``count`` | ``random``.
        tolerance: relative mAP the calibrated point may lose: the cheapest threshold whose calibration mAP is at
            least the teacher's calibration mAP times (1 - tolerance).
        seed: seed of the ``random`` router.
        grid: score quantiles the sweep evaluates (plus keep-all and keep-none).
        backend: torchmetrics' COCO backend (``pycocotools`` or ``faster_coco_eval``).

    Attributes (after :meth:`fit`):
        knob_: the threshold: the student keeps an image when its score >= knob_ (float32 comparison).
        calib_curve_: the calibration sweep (``accuracy`` is the mAP).
        teacher_calib_map_, calib_map_, calib_share_forwarded_, calib_mean_flops_: calibration figures.
    """

    task = "detection"
    calib_fields = ("teacher_calib_map_", "calib_map_", "calib_share_forwarded_", "calib_mean_flops_")

    def __init__(self, *, router: str = "energy", tolerance: float = 0.03, seed: int = 0, grid: int = 20,
                 backend: str = "pycocotools") -> None:
        choice("router", router, ROUTER_NAMES)
        number("tolerance", tolerance, lo=0, hi=1, hi_open=True)
        number("seed", seed, integer=True)
        number("grid", grid, lo=2, integer=True)
        choice("backend", backend, ("pycocotools", "faster_coco_eval"))
        self.router, self.tolerance, self.seed, self.grid, self.backend = router, tolerance, seed, grid, backend

    # ------------------------------------------------------------------------------------ trace side

    def score(self, record: DetectionRecord) -> np.ndarray:
        return router_score(self.router, record.student, self.seed)

    def curve(self, record: DetectionRecord, grid: int | None = None) -> Curve:
        """mAP against mean FLOPs at ``grid`` (default: the cascade's) score quantiles plus keep-all and keep-none;
        extra ``map_50`` and ``reach`` (share entering each stage)."""
        number("grid", grid, lo=2, integer=True, none_ok=True)
        cv = sweep_routed(self.score(record), record.flops, metric=lambda keep: record.metrics(keep, self.backend)["map"],
                          grid=grid or self.grid, label=self.router)
        s32 = self.score(record)
        cv.extra["map_50"] = np.array([record.metrics(s32 >= np.float32(t), self.backend)["map_50"]
                                       for t in cv.settings[:, 0]])
        return cv

    def fit(self, calib: DetectionRecord) -> "DetectionCascade":
        """Choose the threshold on calibration images: the cheapest point within ``tolerance`` of the teacher's mAP."""
        cv = self.curve(calib)
        teacher = calib.metrics(np.zeros(calib.n, bool), self.backend)["map"]
        i = cv.cheapest_at(teacher * (1 - self.tolerance))
        if i is None:  # keep-none is the teacher itself, so this cannot happen unless the metric is broken
            raise TraceError("no threshold reaches the target on calibration images, not even the teacher alone")
        self._fitted(cv, i, calib.flops[1], teacher_calib_map_=teacher, calib_map_=float(cv.accuracy[i]),
                     calib_share_forwarded_=float(cv.extra["reach"][i, 1]), calib_mean_flops_=float(cv.cost[i]))
        return self

    def simulate(self, record: DetectionRecord, knob: float | None = None) -> DetectionOutcome:
        """The policy on a record at threshold ``knob`` (default: the fitted one)."""
        t = self._knob(knob)
        alone = self._teacher_alone(knob)  # the student does not run
        keep = np.zeros(record.n, bool) if alone else self.score(record) >= np.float32(t)
        m = record.metrics(keep, self.backend)
        share = float((~keep).mean())
        return DetectionOutcome(t, keep, record.mixture(keep), m["map"], m["map_50"], share,
                                (0.0 if alone else record.flops[0]) + share * record.flops[1])

    # ------------------------------------------------------------------------------------ runtime

    def runtime(self, paths, *, device=None, knob: float | None = None, **decode_kwargs) -> DetectionRuntime:
        """A callable on a batch of images (N, 1, S, S) -> :class:`RoutedDetections`, at ``knob`` (default: fitted).

        ``paths``: the student and the teacher detector (a two-path :class:`~dyninfer.paths.ModulePool`, cheapest
        first, or a ``(student, teacher)`` pair); ``device``: where they run (default: where they are)."""
        threshold = self._knob(knob)
        student, teacher = self.pair(paths)
        if device is not None:
            student, teacher = student.to(device), teacher.to(device)
        return DetectionRuntime(student, teacher, threshold=threshold, router=self.router, seed=self.seed,
                                decode_kwargs=decode_kwargs, teacher_alone=self._teacher_alone(knob))
