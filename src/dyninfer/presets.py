"""Presets: which backbones to train, how long, on how much data — quick for first runs and CI, full for figures.

Timings on a 2-core CPU (about 250 GFLOP/s training): ``quick`` (student ``cnn-s``, teacher
``cnn-m``, 20k training images) trains in about 2.5 minutes,
``full`` in about 30 (most of it the 232-MFLOP ``cnn-l``) when the machine is otherwise idle.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .registry import Registry
from .train.recipe import Recipe

PRESETS: Registry["Preset"] = Registry("preset")


@dataclass(frozen=True)
class Preset:
    """A training and measurement budget.

    Attributes:
        models: backbone name -> recipe, cheapest first (the pool, cascade stages).
        train_limit: training samples kept (None: the whole training split).
        calib_size: calibration samples cut from the official training part.
        latency_repeats: timed calls per latency measurement.
        latency_min_s: minimum timed seconds per latency measurement.
        runtime_rounds: interleaved rounds when timing runtimes side by side.
    """

    name: str
    models: dict[str, Recipe] = field(default_factory=dict)
    train_limit: int | None = None
    calib_size: int = 10000
    latency_repeats: int = 20
    latency_min_s: float = 0.5
    runtime_rounds: int = 5


PRESETS.register("quick", Preset(
    name="quick",
    models={"cnn-s": Recipe(epochs=15), "cnn-m": Recipe(epochs=6)},
    train_limit=20000, calib_size=5000, latency_repeats=10, latency_min_s=0.2, runtime_rounds=3,
))

PRESETS.register("full", Preset(
    name="full",
    models={"cnn-s": Recipe(epochs=20), "cnn-m": Recipe(epochs=8), "cnn-l": Recipe(epochs=6)},
    train_limit=None, calib_size=10000, latency_repeats=30, latency_min_s=1.0, runtime_rounds=7,
))

# For tests and smoke runs on scikit-learn's 8x8 digits: seconds, not minutes.
PRESETS.register("tiny", Preset(
    name="tiny",
    models={"cnn-s": Recipe(epochs=15, hflip=False, shift=1), "cnn-m": Recipe(epochs=15, hflip=False, shift=1)},
    train_limit=None, calib_size=300, latency_repeats=3, latency_min_s=0.0, runtime_rounds=1,
))


def get_preset(name: str) -> Preset:
    return PRESETS.get(name)
