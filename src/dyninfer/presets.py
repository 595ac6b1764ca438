"""Presets: the data, the paths of every kind and the measurement budget of a run — ``tiny`` for tests,
``quick`` for first runs and CI, ``full`` for the figures.

One preset serves every family, so all of them see the same data and the same splits: a pool of
separate models (cascades, backbone selection) and one early-exit network (early exits).

Timings on a 2-core CPU (about 250 GFLOP/s training): ``quick`` (pool ``cnn-s``, ``cnn-m``; exits
``revcol-tiny``; 20k training images) trains in about 3 minutes; ``full`` (pool ``cnn-s``, ``cnn-m``,
``cnn-l``; exits ``revcol-s``; 50k images) in about 45, most of it ``cnn-l`` and ``revcol-s``.

The slimmable supernet (``adapta-resnet-s``, 12.7 MFLOPs at x1.0 on 28x28) and its baselines are sized from
measured seconds per training image of each phase (``SUPERNET_SECONDS_PER_1K``): ``quick`` trains AdaptaNet in
about 3.5 minutes and its four baselines in about 3.5 (5k images for the supernet phases); ``full`` took 34
minutes for AdaptaNet (teacher included) and 33 for the baselines (20k images for the phases and the baselines,
the teacher on all 50k).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .check import choice, number
from .errors import ConfigError
from .registry import Registry
from .train.recipe import Recipe
from .models.adapta import PATH_SETS
from .data.canvas import CanvasConfig
from .train.bigsmall import CoTraining
from .train.detection import DetectionTask, DetRecipe
from .train.regression import RegressionTask
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
        bigsmall_ablation: the co-training of the big/little report's ablation arms (independent training, no
            distillation, one dimension searched, one loss term removed); None: ``bigsmall_training``. With a
            smaller budget the report also trains the full recipe at that budget as the arms' reference.
        bigsmall_baselines: static torchvision networks trained for the big/little report, name -> recipe.
        regression: the rotation-angle task and its two regressors (``cascade-regression``).
        detection: the canvas detection task and its two detectors (``cascade-detection``).
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
    bigsmall_ablation: CoTraining | None = None
    bigsmall_baselines: dict[str, Recipe] = field(default_factory=dict)
    regression: RegressionTask = field(default_factory=RegressionTask)
    detection: DetectionTask = field(default_factory=DetectionTask)
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
        if self.bigsmall_ablation is not None and not isinstance(self.bigsmall_ablation, CoTraining):
            raise ConfigError(f"bigsmall_ablation must be a CoTraining or None, got "
                              f"{type(self.bigsmall_ablation).__name__}")
        number("train_limit", self.train_limit, lo=1, integer=True, none_ok=True)
        number("test_limit", self.test_limit, lo=1, integer=True, none_ok=True)
        number("calib_size", self.calib_size, lo=1, integer=True)
        for name in ("cost_rounds", "latency_repeats", "runtime_rounds", "timing_samples", "batch1_samples"):
            number(name, getattr(self, name), lo=1, integer=True)
        number("latency_min_s", self.latency_min_s, lo=0)


# Measured on this 2-core CPU (two threads), seconds per 1,000 training images and epoch of each phase of
# adapta-resnet-s (12.7 MFLOPs at x1.0 on 28x28), from a quick-preset run on 5k images: the teacher trains at about
# 850 images/s. The presets below are sized from these.
SUPERNET_SECONDS_PER_1K = {
    "teacher": 1.2,
    "cascade1": 3.5, "cascade2": 3.0, "cascade3": 2.3, "cascade4": 1.8, "lock": 4.5,
    "delta1": 4.1, "delta2": 3.0, "delta3": 2.4, "delta4": 1.7, "delta-lock": 3.0,
    "gate1": 0.9, "gate2": 1.0, "gate3": 0.9,
    "usnet": 5.2,
}


def _baselines(epochs: int, train_images: int | None, **kw) -> dict[str, SlimmableTraining]:
    """US-Net, DS-Net and their random-3 variants (``*``) with the same budget."""
    return {f"{r}{'*' if s == 'random3' else ''}": SlimmableTraining(recipe=r, sampling=s, baseline_epochs=epochs,
                                                                      train_images=train_images, **kw)
            for r in ("usnet", "dsnet") for s in ("sandwich", "random3")}


# the static torchvision networks of the big/little report (MobileNetV3-Small and -Large also form its fixed cascade)
_TV_BASELINES = ("tv-mobilenet_v3_small", "tv-mobilenet_v3_large", "tv-efficientnet_b0")


PRESETS.register("quick", Preset(
    name="quick",
    models={"cnn-s": Recipe(epochs=15), "cnn-m": Recipe(epochs=6)},
    exit_model="revcol-tiny", exit_recipe=Recipe(epochs=3), exit_training="joint",
    # measured: teacher 2 epochs x 20k 47 s, the phases on 5k images 161 s, a US-Net epoch on 5k 26 s
    supernet_training=SlimmableTraining(teacher=Recipe(epochs=2), stage_epochs=(1, 1, 1, 1), lock_epochs=1,
                                        train_images=5000, bn_images=1024, eval_images=1000),
    supernet_baselines=_baselines(2, 5000),
    # bigsmall: 2 epochs per phase on 5k images of the 20k; its report's ablation arms on 1.5k images, 1 epoch per phase
    bigsmall_training=CoTraining(epochs=2, train_images=5000, eval_images=1000),
    bigsmall_ablation=CoTraining(epochs=1, train_images=1500, eval_images=500, random_subnets=1),
    bigsmall_baselines={n: Recipe(epochs=2) for n in _TV_BASELINES},
    # EBJR regression and detection: small tasks of a few minutes each (measured figures in the README)
    regression=RegressionTask(student_recipe=Recipe(epochs=3, hflip=False), teacher_recipe=Recipe(epochs=1, hflip=False),
                              train_images=5000, timing_images=1024),
    detection=DetectionTask(canvas=CanvasConfig(train=1000, calib=200, test=200),
                            teacher=dict(width=16, depth=1, head=32, head_convs=2),
                            student_recipe=DetRecipe(epochs=3), teacher_recipe=DetRecipe(epochs=3), curve_grid=6),
    train_limit=20000, calib_size=5000, cost_rounds=3, latency_repeats=10, latency_min_s=0.1, runtime_rounds=3,
    timing_samples=2560, batch1_samples=100,
))

PRESETS.register("full", Preset(
    name="full",
    models={"cnn-s": Recipe(epochs=20), "cnn-m": Recipe(epochs=8), "cnn-l": Recipe(epochs=6)},
    exit_model="revcol-s", exit_recipe=Recipe(epochs=5), exit_training="two-stage",
    # measured (benchmarks/slimmable.sh): teacher 8 epochs x 50k 735 s; the phases on 20k images (stages 1, 1, 2, 2
    # epochs, locking-in 2, gates) 1308 s (cascade phases 2-3x the quick table's rate); the four baselines 5 epochs
    # x 20k 1996 s; measurement with everything cached about 14 min: about 82 min in all
    supernet_training=SlimmableTraining(teacher=Recipe(epochs=8), stage_epochs=(1, 1, 2, 2), lock_epochs=2,
                                        train_images=20000, eval_images=2000),
    supernet_baselines=_baselines(5, 20000),
    # bigsmall, sized from the quick run's measured seconds (about 0.011 s per image and epoch in the full phase,
    # 0.042 with four pairs in the others): co-training about 70 min, nine ablation arms about 50, the baselines
    # about 28 (357, 188 and 118 img/s here): about 2.7 h in all with measurement; not yet run
    bigsmall_training=CoTraining(epochs=2, train_images=15000, eval_images=2000),
    bigsmall_ablation=CoTraining(epochs=1, train_images=3000, eval_images=1000, random_subnets=1),
    bigsmall_baselines={n: Recipe(epochs=2, batch_size=256) for n in _TV_BASELINES},
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
    bigsmall_baselines={n: Recipe(epochs=3, batch_size=64, hflip=False, shift=1) for n in _TV_BASELINES[:2]},
    regression=RegressionTask(student_recipe=Recipe(epochs=6, batch_size=64, hflip=False, shift=1),
                              teacher_recipe=Recipe(epochs=6, batch_size=64, hflip=False, shift=1), max_angle=45.0,
                              batch=64, timing_images=128),
    detection=DetectionTask(canvas=CanvasConfig(train=48, calib=24, test=24, p_empty=0.2),
                            student=dict(width=4, depth=0, head=8, head_convs=0),
                            teacher=dict(width=8, depth=1, head=16, head_convs=1),
                            student_recipe=DetRecipe(epochs=3, batch_size=16),
                            teacher_recipe=DetRecipe(epochs=3, batch_size=16), curve_grid=4, batch=16),
    train_limit=None, calib_size=300, cost_rounds=1, latency_repeats=3, latency_min_s=0.0, runtime_rounds=1,
    timing_samples=256, batch1_samples=10,
))


def get_preset(name: str) -> Preset:
    return PRESETS.get(name)
