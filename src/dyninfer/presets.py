"""Presets: the data, the paths of every kind and the measurement budget of a run — ``tiny`` for tests,
``quick`` for first runs and CI, ``full`` for the figures.

One preset serves every family, so all of them see the same data and the same splits: a pool of
separate models (cascades, backbone selection) and one early-exit network (early exits).

Timings on a 2-core CPU (about 250 GFLOP/s training): ``quick`` (pool ``cnn-s``, ``cnn-m``; exits
``revcol-tiny``; 20k training images) trains in about 3 minutes; ``full`` (pool ``cnn-s``, ``cnn-m``,
``cnn-l``; exits ``revcol-s``; 50k images) in about 45, most of it ``cnn-l`` and ``revcol-s``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .check import choice, number
from .errors import ConfigError
from .registry import Registry
from .train.recipe import Recipe
from .train.slimmable import SlimmableTraining

PRESETS: Registry["Preset"] = Registry("preset")


@dataclass(frozen=True)
class Preset:
    """A data, training and measurement budget.

    Attributes:
        name: preset name.
        models: the pool, backbone name -> recipe, cheapest first (cascade stages, selection backbones).
        exit_model: the early-exit network (a registered ``EarlyExitNetwork`` backbone).
        exit_recipe: its training recipe.
        exit_training: ``joint`` (backbone and heads together) or ``two-stage`` (backbone, then heads only).
        supernet_model: the slimmable supernet (a registered Adapta-ResNet).
        supernet_training: how it is trained (teacher, cascades, gates).
        train_limit: training samples kept (None: the whole training split).
        calib_size: calibration samples cut from the official training part.
        test_limit: test samples kept (None: all).
        cost_rounds: interleaved rounds of every path's cost measurement (median round kept).
        latency_repeats: timed calls per path, batch size and round.
        latency_min_s: minimum timed seconds per path, batch size and round.
        runtime_rounds: interleaved rounds when timing runtimes side by side.
        timing_samples: test images per timed run at the serving batch.
        batch1_samples: test images timed one at a time.
    """

    name: str
    models: dict[str, Recipe] = field(default_factory=dict)
    exit_model: str = "revcol-s"
    exit_recipe: Recipe = field(default_factory=lambda: Recipe(epochs=5))
    exit_training: str = "two-stage"
    supernet_model: str = "adapta-resnet-s"
    supernet_training: SlimmableTraining = field(default_factory=SlimmableTraining)
    train_limit: int | None = None
    calib_size: int = 10000
    test_limit: int | None = None
    cost_rounds: int = 3
    latency_repeats: int = 20
    latency_min_s: float = 0.5
    runtime_rounds: int = 5
    timing_samples: int = 5120
    batch1_samples: int = 200

    def __post_init__(self) -> None:
        if not self.models:
            raise ConfigError(f"preset {self.name!r} needs at least one model in its pool")
        choice("exit_training", self.exit_training, ("joint", "two-stage"))
        number("train_limit", self.train_limit, lo=1, integer=True, none_ok=True)
        number("test_limit", self.test_limit, lo=1, integer=True, none_ok=True)
        number("calib_size", self.calib_size, lo=1, integer=True)
        for name in ("cost_rounds", "latency_repeats", "runtime_rounds", "timing_samples", "batch1_samples"):
            number(name, getattr(self, name), lo=1, integer=True)
        number("latency_min_s", self.latency_min_s, lo=0)


PRESETS.register("quick", Preset(
    name="quick",
    models={"cnn-s": Recipe(epochs=15), "cnn-m": Recipe(epochs=6)},
    exit_model="revcol-tiny", exit_recipe=Recipe(epochs=3), exit_training="joint",
    train_limit=20000, calib_size=5000, cost_rounds=3, latency_repeats=10, latency_min_s=0.1, runtime_rounds=3,
    timing_samples=2560, batch1_samples=100,
))

PRESETS.register("full", Preset(
    name="full",
    models={"cnn-s": Recipe(epochs=20), "cnn-m": Recipe(epochs=8), "cnn-l": Recipe(epochs=6)},
    exit_model="revcol-s", exit_recipe=Recipe(epochs=5), exit_training="two-stage",
    train_limit=None, calib_size=10000, cost_rounds=3, latency_repeats=20, latency_min_s=0.3, runtime_rounds=7,
    timing_samples=5120, batch1_samples=200,
))

# For tests and smoke runs on scikit-learn's 8x8 digits: seconds, not minutes.
PRESETS.register("tiny", Preset(
    name="tiny",
    models={"cnn-s": Recipe(epochs=15, hflip=False, shift=1), "cnn-m": Recipe(epochs=15, hflip=False, shift=1)},
    exit_model="revcol-tiny", exit_recipe=Recipe(epochs=20, hflip=False, shift=1), exit_training="joint",
    supernet_model="adapta-resnet-tiny",
    supernet_training=SlimmableTraining(teacher=Recipe(epochs=15, batch_size=64, hflip=False, shift=1),
                                        stage_epochs=(2, 2, 2, 2), lock_epochs=2, lock_lr=1e-3, gate_lr=1e-3,
                                        eval_images=300),
    train_limit=None, calib_size=300, cost_rounds=1, latency_repeats=3, latency_min_s=0.0, runtime_rounds=1,
    timing_samples=256, batch1_samples=10,
))


def get_preset(name: str) -> Preset:
    return PRESETS.get(name)
