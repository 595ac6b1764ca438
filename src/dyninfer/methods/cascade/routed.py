"""What the cascades on task outputs (regression, detection) share: a method of the shared protocol whose answer is
not a class, with a two-model router and one threshold as its knob.

The classifier methods run on traces of logits; a regressor's answer is a number and a detector's a list of boxes,
so these methods take the task's own record of both models' outputs where a classifier takes a
:class:`~dyninfer.trace.Trace` (:class:`~dyninfer.methods.cascade.regression.RegressionOutputs`,
:class:`~dyninfer.methods.cascade.detection.DetectionRecord`), sweep it with the shared
:func:`~dyninfer.evaluate.simulate.sweep_routed`, run on a :class:`~dyninfer.paths.ModulePool` of the student and
the teacher, and are saved, loaded and run end to end (``dyninfer run cascade-regression``) by the shared pieces;
the pipeline hands them to their task's steps (:mod:`dyninfer.tasks`).
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import numpy as np
from torch import nn

from ...errors import ConfigError
from ...evaluate.frontier import Curve
from ..base import Method, _curve_dict, _curve_from, _jsonable, _num


class RoutedCascade(Method):
    """A student answers when its router's score reaches the threshold ``knob_``; the teacher answers the rest, and a
    forwarded input pays both models.

    A family sets ``task`` and ``calib_fields`` (the calibration figures ``fit`` stores besides the threshold and
    the calibration curve, all saved with it).

    As for every method (:attr:`~dyninfer.evaluate.guarantee.OperatingPoint.not_cheaper`), when the chosen point
    costs no fewer FLOPs on calibration than the teacher alone, the fitted policy (``knob=None``) runs the teacher
    alone without running the student (``teacher_alone_``); an explicit knob always runs the routed cascade.
    """

    task: ClassVar[str] = ""
    knob_direction: ClassVar[int] = 1  # a higher threshold forwards more
    calib_fields: ClassVar[tuple[str, ...]] = ()

    def check_knob(self, value: Any) -> float:
        """A threshold: any number (``-inf`` keeps everything, ``inf`` forwards everything)."""
        if isinstance(value, (list, tuple)) and len(value) == 1:
            value = value[0]
        if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)) or math.isnan(value):
            raise ConfigError(f"the knob of {type(self).__name__} is a score threshold (a number; -inf keeps every "
                              f"input on the student, inf sends every input to the teacher), got {value!r}")
        return float(value)

    def _teacher_alone(self, knob: Any) -> bool:
        """Whether the policy at ``knob`` runs the teacher alone (the fitted point, when it is not cheaper)."""
        return knob is None and self.teacher_alone_

    def _setting(self, curve: Curve, j: int) -> float:
        return float(curve.settings[j, 0])

    def _fitted(self, curve: Curve, i: int, teacher_cost: float, **calib: float) -> None:
        """Store point ``i`` of the calibration ``curve`` as the operating point, with its calibration figures
        (``teacher_cost``: the teacher's FLOPs alone)."""
        self.knob_ = float(curve.settings[i, 0])
        self.calib_curve_ = curve
        self.teacher_alone_ = bool(curve.cost[i] >= teacher_cost)
        for k, v in calib.items():
            setattr(self, k, float(v))

    @staticmethod
    def pair(paths) -> tuple[nn.Module, nn.Module]:
        """(student, teacher) from a two-path :class:`~dyninfer.paths.ModulePool` (cheapest first) or a pair of
        modules."""
        if isinstance(paths, (tuple, list)) and len(paths) == 2:
            return paths[0], paths[1]
        models = getattr(paths, "models", None)
        if models is None or len(models) != 2:
            raise ConfigError(f"a routed cascade runs on two models, the student then the teacher (a ModulePool of "
                              f"two paths, or a (student, teacher) pair), got {type(paths).__name__}"
                              + (f" with {len(models)} paths" if models is not None else ""))
        student, teacher = (models[n] for n in paths.names)
        return student, teacher

    # ------------------------------------------------------------------ storage (through Method.save / load_method)
    def _state(self) -> tuple[dict, dict]:
        return ({"knob_": _jsonable(self.knob_), "calib_curve_": _curve_dict(self.calib_curve_),
                 "teacher_alone_": self.teacher_alone_,
                 **{k: _jsonable(getattr(self, k)) for k in self.calib_fields}}, {})

    def _set_state(self, state: dict, tensors: dict) -> None:
        self.knob_ = self.check_knob(_num(state["knob_"]))
        self.calib_curve_ = _curve_from(state["calib_curve_"])
        if not isinstance(state["teacher_alone_"], bool):
            raise ValueError(f"teacher_alone_ must be true or false, got {state['teacher_alone_']!r}")
        self.teacher_alone_ = state["teacher_alone_"]
        for k in self.calib_fields:
            setattr(self, k, float(_num(state[k])))
