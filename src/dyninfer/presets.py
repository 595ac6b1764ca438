"""Presets: the data, the paths of every kind and the measurement budget of a run — ``tiny`` for tests,
``quick`` for first runs and CI, ``full`` for the figures.

One preset serves every family, so all of them see the same data and the same splits: a pool of
separate models (cascades, backbone selection) and one early-exit network (early exits).

Timings on a 2-core CPU (about 250 GFLOP/s training): ``quick`` (pool ``cnn-s``, ``cnn-m``; exits
``revcol-tiny``; 20k training images) trains in about 3 minutes; ``full`` (pool ``cnn-s``, ``cnn-m``,
``cnn-l``; exits ``revcol-s``; 50k images) in about 45, most of it ``cnn-l`` and ``revcol-s``.

The slimmable supernet (``adapta-resnet-s``, 26.2 MFLOPs at x1.0 on 28x28) and its baselines are sized from
counted FLOPs per training image (forward, backward and the teacher's targets; estimates, see
``SUPERNET_SIZING``) at about 110 GFLOP/s, the rate this CPU reaches on a model of this size between the
measured 45 GFLOP/s of a 2 MFLOP CNN and 250 of a 232 MFLOP one: ``quick`` trains AdaptaNet in about 2.5
minutes and its four baselines in about 1 (5k images for the supernet phases); ``full`` in about 34 and 29
(50k images).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .check import choice, number
from .errors import ConfigError
from .registry import Registry
from .train.recipe import Recipe
from .models.adapta import PATH_SETS
from .train.bigsmall import CoTraining
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
        supernet_paths: its configurations that are paths (``uniform``, ``delta`` or ``all``: see
            :meth:`~dyninfer.models.adapta.AdaptaResNet.path_configs`).
        supernet_baselines: supernets of the same model trained by other recipes (US-Net, DS-Net and their
            random-3 variants), name -> training; the slimmable report compares them (Table II).
        bigsmall_model: the big/little supernet (a registered ``BigSmallSupernet``) of the ``bigsmall`` method.
        bigsmall_training: its co-training (phases, sandwich, losses; :class:`~dyninfer.train.bigsmall.CoTraining`).
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
    supernet_paths: str = "all"
    supernet_baselines: dict[str, SlimmableTraining] = field(default_factory=dict)
    bigsmall_model: str = "bigsmall-supernet"
    bigsmall_training: CoTraining = field(default_factory=CoTraining)
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
        choice("supernet_paths", self.supernet_paths, PATH_SETS)
        for k, t in self.supernet_baselines.items():
            if not isinstance(t, SlimmableTraining) or t.recipe == "adapta":
                raise ConfigError(f"supernet baseline {k!r} must be a SlimmableTraining with recipe 'usnet' or 'dsnet'")
        if not isinstance(self.bigsmall_training, CoTraining):
            raise ConfigError(f"bigsmall_training must be a CoTraining, got {type(self.bigsmall_training).__name__}")
        number("train_limit", self.train_limit, lo=1, integer=True, none_ok=True)
        number("test_limit", self.test_limit, lo=1, integer=True, none_ok=True)
        number("calib_size", self.calib_size, lo=1, integer=True)
        for name in ("cost_rounds", "latency_repeats", "runtime_rounds", "timing_samples", "batch1_samples"):
            number(name, getattr(self, name), lo=1, integer=True)
        number("latency_min_s", self.latency_min_s, lo=0)


# Per training image, MFLOPs of one step of each supernet phase of adapta-resnet-s on 28x28 (x1.0: 26.2 forward,
# x0.25: 4.6, a random uniform width 14.7 and a random stage-wise one about 12 on average; training is about 3x
# forward, a frozen stage that gradients pass through about 2x):
SUPERNET_SIZING = {
    "teacher": 3 * 26.2,                      # 78.5
    "cascade": 26.2 + 10 + 3 * 2.5 * 26.2,    # teacher targets, prefix, 3 subnets through the downstream: ~232
    "lock": 26.2 + 3 * (26.2 + 4.6 + 12),     # teacher targets, largest, smallest, one random: ~154
    "delta": 26.2 + 4 * 60,                   # the largest (target), two δ corners, one random: ~266
    "delta-lock": 26.2 + 26.2 + 2.5 * (15.8 + 3.3 + 9),  # ~122
    "gate": 26.2 + 10 + 3 * 3,                # largest, a random prefix, the gate: ~45
    "usnet": 3 * (26.2 + 4.6 + 2 * 14.7),     # sandwich of four uniform widths: ~180
    "dsnet": 26.2 + 3 * (26.2 + 4.6 + 2 * 14.7),  # and the moving average's targets: ~206
    "usnet*": 3 * 3 * 12,                     # three random stage-wise configurations: ~108
    "dsnet*": 26.2 + 3 * 3 * 12,              # ~134
}


def _baselines(epochs: int, train_images: int | None, **kw) -> dict[str, SlimmableTraining]:
    """US-Net, DS-Net and their random-3 variants (``*``) with the same budget."""
    return {f"{r}{'*' if s == 'random3' else ''}": SlimmableTraining(recipe=r, sampling=s, baseline_epochs=epochs,
                                                                      train_images=train_images, **kw)
            for r in ("usnet", "dsnet") for s in ("sandwich", "random3")}


PRESETS.register("quick", Preset(
    name="quick",
    models={"cnn-s": Recipe(epochs=15), "cnn-m": Recipe(epochs=6)},
    exit_model="revcol-tiny", exit_recipe=Recipe(epochs=3), exit_training="joint",
    # teacher 2 x 20k x 78.5 M = 3.1 TFLOP; on 5k images: cascade 4 x 1.16, lock 0.77, δ 4 x 1.33, δ lock 0.61,
    # gates 3 x 0.23 TFLOP: 15.4 TFLOP, about 140 s. Baselines 2 epochs x 5k: 6.3 TFLOP, about 60 s.
    supernet_training=SlimmableTraining(teacher=Recipe(epochs=2), stage_epochs=(1, 1, 1, 1), lock_epochs=1,
                                        train_images=5000, bn_images=1024, eval_images=1000),
    supernet_baselines=_baselines(2, 5000),
    # bigsmall: not yet timed on this CPU; 2 epochs per phase on 5k images of the 20k
    bigsmall_training=CoTraining(epochs=2, train_images=5000, eval_images=1000),
    train_limit=20000, calib_size=5000, cost_rounds=3, latency_repeats=10, latency_min_s=0.1, runtime_rounds=3,
    timing_samples=2560, batch1_samples=100,
))

PRESETS.register("full", Preset(
    name="full",
    models={"cnn-s": Recipe(epochs=20), "cnn-m": Recipe(epochs=8), "cnn-l": Recipe(epochs=6)},
    exit_model="revcol-s", exit_recipe=Recipe(epochs=5), exit_training="two-stage",
    # on 50k images: teacher 10 x 3.9, cascade 6 x 11.6, lock 2 x 7.7, δ 6 x 13.3, δ lock 2 x 6.1, gates 3 x 2.25
    # TFLOP: 223 TFLOP, about 34 min. Baselines 6 epochs each: 6 x (9.0 + 10.3 + 5.4 + 6.7) = 188 TFLOP, about 29 min.
    supernet_training=SlimmableTraining(teacher=Recipe(epochs=10), stage_epochs=(1, 1, 2, 2), lock_epochs=2,
                                        eval_images=2000),
    supernet_baselines=_baselines(6, None),
    bigsmall_training=CoTraining(epochs=5, eval_images=2000),  # not yet timed on this CPU
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
    supernet_baselines=_baselines(2, None, batch_size=64, baseline_lr=0.05),
    # the largest pair alone (the deployed one), no random pairs: about 30 s on digits with one thread (big ~0.92,
    # little ~0.89 on calibration); progressive shrinking at 1 epoch per phase took 46 s for ~0.70
    bigsmall_model="bigsmall-supernet-tiny",
    bigsmall_training=CoTraining(phases=("full",), epochs=6, batch_size=64, random_subnets=0, eval_images=300,
                                 bn_images=512),
    train_limit=None, calib_size=300, cost_rounds=1, latency_repeats=3, latency_min_s=0.0, runtime_rounds=1,
    timing_samples=256, batch1_samples=10,
))


def get_preset(name: str) -> Preset:
    return PRESETS.get(name)
