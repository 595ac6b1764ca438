"""What the cascades on task outputs (regression, detection) share: a two-model router with one threshold.

The classifier cascades run on traces of logits through :class:`~dyninfer.methods.base.Method`; a regressor's
answer is a number and a detector's a list of boxes, so those cascades record their own outputs and run their
own runtimes, and share the threshold knob (this mixin) and the sweep
(:func:`~dyninfer.evaluate.simulate.sweep_routed`).
"""

from __future__ import annotations

from ...errors import NotFittedError


class RoutedCascade:
    """A student answers when its router's score reaches ``threshold_``; the teacher answers the rest."""

    def _threshold(self, knob: float | None) -> float:
        """``knob`` when given, else the fitted threshold."""
        if knob is not None:
            return float(knob)
        if not hasattr(self, "threshold_"):
            raise NotFittedError(f"this {type(self).__name__} has no threshold: call fit(calibration outputs) or "
                                 f"load(folder) first, or pass a threshold as knob")
        return self.threshold_
