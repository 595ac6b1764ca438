"""EBJR for regression (paper section 2.2): a small regressor answers; a score on its output decides whether the
large one must look.

The student keeps sample i when ``score_i >= t`` (eq. 6), else the teacher answers (eq. 7); a forwarded sample
pays both models. Routers (scores on the student's output, higher = keep):

* ``energy``: -F(x), the log normaliser of the energy-based density (:class:`~dyninfer.models.regression.EnergyRegressor`);
* ``variance``: -log sigma^2(x) of the Gaussian head (the baseline: low predicted variance keeps);
* ``random``: a seeded uniform draw per sample (simulation only: the floor any router must beat).

:class:`RegressionOutputs` holds what both models output on a split (recorded once); :class:`RegressionCascade`
(registered as ``cascade-regression``) fits its threshold on calibration outputs, simulates any threshold on recorded
outputs (through the shared :func:`~dyninfer.evaluate.simulate.sweep_routed`), and runs for real on batches
(:meth:`RegressionCascade.runtime`), where the student's scores are compared with the threshold in float32 exactly
as in the simulation. ``dyninfer run cascade-regression`` runs it end to end (:mod:`dyninfer.tasks.regression`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
from torch import nn

from ...check import choice, number
from ...data.datasets import Split
from ...data.rotated import check_targets
from ...errors import ConfigError
from ...evaluate.frontier import Curve
from ...evaluate.simulate import sweep_routed
from ..base import register_method
from .routed import RoutedCascade

PREDICTION, ENERGY, LOGVAR = 0, 1, 2  # columns of a regressor's (N, 3) output

# router name -> score of the student's (N, 3) output (numpy or torch alike); "random" has no score function
SCORES: dict[str, Callable] = {
    "energy": lambda out: out[:, ENERGY],       # -F(x)
    "variance": lambda out: -out[:, LOGVAR],    # -log sigma^2(x)
}
ROUTERS = (*SCORES, "random")


@dataclass
class RegressionOutputs:
    """What a student and a teacher regressor output on one split.

    Attributes:
        student, teacher: (N, 3) float32 [prediction, -F, log variance] per sample.
        targets: (N,) float32, finite.
        costs: FLOPs per sample of the student and of the teacher.
        meta: where the outputs come from (split, models).
    """

    student: np.ndarray
    teacher: np.ndarray
    targets: np.ndarray
    costs: tuple[float, float]
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.targets = check_targets(self.targets, what="recorded regression targets").numpy()
        n = self.targets.shape[0]
        self.student = np.asarray(self.student, np.float32)
        self.teacher = np.asarray(self.teacher, np.float32)
        for name, a in (("student", self.student), ("teacher", self.teacher)):
            if a.shape != (n, 3):
                raise ConfigError(f"{name} outputs must be (N, 3) [prediction, -F, log variance] for N={n} targets, "
                                  f"got shape {a.shape}")
        if len(self.costs) != 2 or not all(math.isfinite(float(c)) and float(c) >= 0 for c in self.costs):
            raise ConfigError(f"costs must be two non-negative FLOP counts (student, teacher), got {self.costs!r}")
        self.costs = (float(self.costs[0]), float(self.costs[1]))

    def __len__(self) -> int:
        return int(self.targets.shape[0])

    @classmethod
    def record(cls, student: nn.Module, teacher: nn.Module, split: Split, *, costs: tuple[float, float] | None = None,
               batch_size: int = 256, meta: dict | None = None) -> "RegressionOutputs":
        """Run both models over ``split`` once (batched, eval mode); costs are counted when not given.

        Raises:
            DataError: targets with NaN or inf (naming the rows).
        """
        from ...train.regression import predict_outputs

        y = check_targets(split.y)
        if costs is None:
            costs = count_costs(student, teacher, tuple(split.x.shape[1:]))
        return cls(predict_outputs(student, split.x, batch_size=batch_size),
                   predict_outputs(teacher, split.x, batch_size=batch_size), y.numpy(), costs,
                   {**(meta or {}), "batch_size": batch_size})

    def abs_errors(self) -> tuple[np.ndarray, np.ndarray]:
        """(N,) absolute errors of the student and of the teacher."""
        return (np.abs(self.student[:, PREDICTION] - self.targets).astype(np.float64),
                np.abs(self.teacher[:, PREDICTION] - self.targets).astype(np.float64))

    def mae(self, which: str) -> float:
        """Mean absolute error of ``student`` or ``teacher``."""
        choice("which", which, ("student", "teacher"))
        return float(self.abs_errors()[0 if which == "student" else 1].mean())

    def subset(self, idx) -> "RegressionOutputs":
        idx = np.asarray(idx)
        return RegressionOutputs(self.student[idx], self.teacher[idx], self.targets[idx], self.costs, dict(self.meta))


def count_costs(student: nn.Module, teacher: nn.Module, input_shape: tuple[int, ...]) -> tuple[float, float]:
    """Counted FLOPs per sample of both models (their whole forward pass, energy head included)."""
    from ...paths import ModulePool

    c = ModulePool({"student": student, "teacher": teacher}, input_shape=input_shape).count()
    return float(c[0].flops), float(c[1].flops)


@dataclass
class RegressionOutcome:
    """What a routed regressor did per sample.

    Attributes:
        prediction: (N,) the answers.
        answered_by: (N,) 0 where the student answered, 1 where the teacher did.
        flops: (N,) FLOPs paid per sample.
        targets: (N,) or None (a runtime does not know them).
    """

    prediction: np.ndarray
    answered_by: np.ndarray
    flops: np.ndarray
    targets: np.ndarray | None = None

    @property
    def mae(self) -> float:
        if self.targets is None:
            raise ConfigError("this outcome has no targets (a runtime's); compare its predictions with them instead")
        return float(np.abs(self.prediction.astype(np.float64) - self.targets).mean())

    @property
    def mean_flops(self) -> float:
        return float(self.flops.mean())

    @property
    def student_share(self) -> float:
        return float((self.answered_by == 0).mean())


@register_method("cascade-regression")
class RegressionCascade(RoutedCascade):
    """A student and a teacher regressor with a router on the student's output.

    Args:
        router: ``energy`` (-F), ``variance`` (-log sigma^2) or ``random``.
        tolerance: relative MAE the fitted threshold may lose: the cheapest calibration point whose MAE is at
            most the teacher's calibration MAE x (1 + tolerance).
        seed: seed of the ``random`` router's draws.

    Attributes (after :meth:`fit`):
        knob_: the threshold: the student keeps a sample when its score >= knob_ (float32 comparison).
        calib_curve_: the calibration sweep (``accuracy`` is minus the MAE).
        calib_mae_, teacher_calib_mae_, calib_flops_, student_share_: the calibration figures at knob_.
    """

    task = "regression"
    calib_fields = ("calib_mae_", "teacher_calib_mae_", "calib_flops_", "student_share_")

    def __init__(self, *, router: str = "energy", tolerance: float = 0.01, seed: int = 0) -> None:
        choice("router", router, ROUTERS)
        number("tolerance", tolerance, lo=0)
        number("seed", seed, integer=True)
        self.router, self.tolerance, self.seed = router, float(tolerance), int(seed)

    # ------------------------------------------------------------------ scores and sweeps
    def scores(self, outputs: RegressionOutputs) -> np.ndarray:
        """(N,) float32 router score of every sample of ``outputs`` (higher: the student keeps it)."""
        if self.router == "random":
            return np.random.default_rng(self.seed).random(len(outputs)).astype(np.float32)
        return np.asarray(SCORES[self.router](outputs.student), np.float32)

    def curve(self, outputs: RegressionOutputs) -> Curve:
        """Every operating point on ``outputs``: ``accuracy`` is minus the MAE, ``cost`` the mean FLOPs."""
        es, et = outputs.abs_errors()
        return sweep_routed(self.scores(outputs), outputs.costs, quality=(-es, -et), label=self.router)

    def fit(self, calib: RegressionOutputs) -> "RegressionCascade":
        """Choose the cheapest threshold whose calibration MAE <= teacher calibration MAE x (1 + tolerance)."""
        c = self.curve(calib)
        teacher = -float(c.accuracy[-1])  # threshold +inf: the teacher answers all (same summation as the sweep)
        i = c.cheapest_at(-teacher * (1 + self.tolerance))
        if i is None:  # unreachable: the forward-all point meets it
            raise ConfigError("no threshold reaches the teacher's calibration MAE")
        self._fitted(c, i, calib.costs[1], calib_mae_=-float(c.accuracy[i]), teacher_calib_mae_=teacher,
                     calib_flops_=float(c.cost[i]), student_share_=1.0 - float(c.extra["reach"][i, 1]))
        return self

    def simulate(self, outputs: RegressionOutputs, knob: float | None = None) -> RegressionOutcome:
        """What the cascade does on recorded ``outputs`` at threshold ``knob`` (default: the fitted one)."""
        t = np.float32(self._knob(knob))
        if self._teacher_alone(knob):  # the student does not run
            by = np.ones(len(outputs), np.int64)
            return RegressionOutcome(outputs.teacher[:, PREDICTION].copy(), by, outputs.costs[1] * by.astype(float),
                                     outputs.targets)
        keep = self.scores(outputs) >= t
        pred = np.where(keep, outputs.student[:, PREDICTION], outputs.teacher[:, PREDICTION])
        by = (~keep).astype(np.int64)
        return RegressionOutcome(pred, by, outputs.costs[0] + by * outputs.costs[1], outputs.targets)

    def runtime(self, paths, *, device=None, knob: float | None = None,
                costs: tuple[float, float] | None = None) -> "RegressionRuntime":
        """A callable that runs the cascade on a batch: the student on all of it, the teacher on what it forwards.

        Args:
            paths: the student and the teacher (a two-path :class:`~dyninfer.paths.ModulePool`, cheapest first, or a
                ``(student, teacher)`` pair).
            device: where the models run (default: where they are).
            knob: threshold (default: the fitted one).
            costs: FLOPs per sample of both (default: counted on the first batch).

        Raises:
            ConfigError: the ``random`` router (its draws belong to recorded outputs, not to images).
        """
        threshold = self._knob(knob)
        if self.router not in SCORES:
            raise ConfigError(f"router {self.router!r} has no score on a model's output and only runs in simulation; "
                              f"use one of {sorted(SCORES)} for a runtime")
        student, teacher = self.pair(paths)
        if device is not None:
            student, teacher = student.to(device), teacher.to(device)
        return RegressionRuntime(student, teacher, threshold=threshold, score=SCORES[self.router], costs=costs,
                                 teacher_alone=self._teacher_alone(knob))


class RegressionRuntime:
    """Runs a fitted :class:`RegressionCascade` on batches of images: ``runtime(x) -> RegressionOutcome``.

    Args:
        student, teacher: modules mapping images (N, C, H, W) to (N, 3) [prediction, -F, log variance].
        threshold: the student keeps sample i when its score >= threshold (float32).
        score: the router's score of the student's (N, 3) output.
        costs: FLOPs per sample of student and teacher (counted from the modules when None).
        teacher_alone: the teacher answers every sample and the student does not run.
    """

    def __init__(self, student: nn.Module, teacher: nn.Module, *, threshold: float, score: Callable,
                 costs: tuple[float, float] | None = None, teacher_alone: bool = False) -> None:
        self.student, self.teacher = student.eval(), teacher.eval()
        self.teacher_alone = bool(teacher_alone)
        self.threshold = torch.tensor(threshold, dtype=torch.float32)
        self.score = score
        self.costs = costs

    @torch.inference_mode()
    def __call__(self, x: torch.Tensor) -> RegressionOutcome:
        from ...runtime.validate import check_batch

        x = check_batch(x, None, where="regression cascade")
        dev = next(self.student.parameters()).device
        x = x.to(dev)
        if self.costs is None:
            self.costs = count_costs(self.student, self.teacher, tuple(x.shape[1:]))
        if self.teacher_alone:
            by = np.ones(x.shape[0], np.int64)
            return RegressionOutcome(self.teacher(x)[:, PREDICTION].float().cpu().numpy(), by,
                                     self.costs[1] * by.astype(float))
        out = self.student(x)  # (N, 3)
        keep = self.score(out).float() >= self.threshold  # (N,)
        pred = out[:, PREDICTION].clone()
        fwd = torch.nonzero(~keep).reshape(-1)
        if fwd.numel():
            pred[fwd] = self.teacher(x[fwd])[:, PREDICTION].to(pred.dtype)
        by = (~keep).long().cpu().numpy()
        return RegressionOutcome(pred.float().cpu().numpy(), by, self.costs[0] + by * self.costs[1])


__all__ = ["ROUTERS", "RegressionCascade", "RegressionOutcome", "RegressionOutputs", "RegressionRuntime",
           "count_costs"]
