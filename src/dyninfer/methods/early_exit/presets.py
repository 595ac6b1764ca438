"""Budgets of the early-exit benchmark: ``quick`` (smoke runs, under 2 minutes), ``full`` (the figures), ``tiny`` (tests).

Training cost of ``full`` (``revcol-s``, 28.9 MFLOPs, 5 joint epochs over 50k images, reversible backward,
so about 4 forward-pass equivalents per image): about 29 TFLOP, i.e. 2.5 minutes at the ~200 GFLOP/s an idle
2-core CPU trains at (small convolutions reach less). Measured here: 1036 s with one torch thread while other jobs kept the load
average near 6 on 2 cores.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from ...registry import Registry
from ...train.recipe import Recipe

EE_PRESETS: Registry["EarlyExitPreset"] = Registry("early-exit preset")


@dataclass(frozen=True)
class EarlyExitPreset:
    """Data, model and measurement budget of one benchmark run.

    Attributes:
        name: preset name.
        model: registered early-exit backbone (``revcol-*``).
        recipe: training recipe of the network.
        training: ``joint`` or ``two-stage`` (backbone, then heads only).
        train_limit: training images kept (None: all 50k after the calibration cut).
        calib_size: calibration images cut from the official training part (also the adaptation stream pool).
        test_limit: test images evaluated (None: all 10k).
        stream_per_class: stream images per subset class for test-time specialisation (paper: 100 per class).
        latency_repeats: timed calls per batch-1 latency measurement.
        latency_samples: test images timed one by one to check the batch-1 latency model.
        batch_size: the serving batch of the batched measurements.
        threads: torch threads while timing (1: batch-1 latency is not spread over cores).
    """

    name: str
    model: str = "revcol-s"
    recipe: Recipe = field(default_factory=lambda: Recipe(epochs=5))
    training: str = "joint"
    train_limit: int | None = None
    calib_size: int = 10000
    test_limit: int | None = None
    stream_per_class: int = 800
    latency_repeats: int = 200
    latency_samples: int = 1000
    batch_size: int = 256
    threads: int = 1

    def to_dict(self) -> dict:
        return asdict(self)


EE_PRESETS.register("full", EarlyExitPreset(name="full"))
EE_PRESETS.register("quick", EarlyExitPreset(
    name="quick", model="revcol-tiny", recipe=Recipe(epochs=2), train_limit=10000, calib_size=5000,
    test_limit=2000, stream_per_class=300, latency_repeats=50, latency_samples=200))
EE_PRESETS.register("tiny", EarlyExitPreset(
    name="tiny", model="revcol-tiny", recipe=Recipe(epochs=20, hflip=False, shift=1), calib_size=300,
    stream_per_class=30, latency_repeats=5, latency_samples=20, batch_size=64))
