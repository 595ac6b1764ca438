"""The pipeline steps of methods whose answer is not a class: EBJR for regression and for detection.

``dyninfer run cascade-regression`` and ``dyninfer run cascade-detection`` go through the same
:func:`dyninfer.pipeline.run` as every classifier method: the pipeline hands a method whose ``task`` is not
``classification`` to its task's steps here, which

1. build the task's data from the run's dataset and preset, and train (or reuse from the checkpoint cache) the
   preset's student and teacher (:class:`~dyninfer.train.regression.RegressionTask`,
   :class:`~dyninfer.train.detection.DetectionTask`);
2. record both models' outputs on the calibration and test splits once;
3. fit the method on calibration and simulate it on test;
4. check the real runtime against the simulation and time it beside the teacher alone, interleaved;
5. return a :class:`TaskEvaluation` whose sections the pipeline writes through the shared report writer, with the
   fitted method and its two models saved as a policy (``DIR/policy``, :func:`dyninfer.policy.load_policy`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from ..registry import Registry
from ..runtime.cost import energy_per_sample, interleaved_latency


@dataclass
class TaskEvaluation:
    """What a task's steps produced for one method (what its report sections and own figures read).

    Attributes:
        cfg: the run's :class:`~dyninfer.pipeline.RunConfig`.
        method: the fitted method.
        paths: a two-path :class:`~dyninfer.paths.ModulePool` (student, teacher) the policy runs on.
        data: the task's data (rotated splits, canvases).
        calib, test: the recorded outputs of both models on each split.
        results: every shared figure (JSON-able): ``operating_point``, ``timing``, ``energy``, ``agreement``, ...
        sections: the report sections of the run (the method's own figures are added after them).
        meta: data description for the report (``data``, ``content`` fingerprint, ``preset``, ``title``).
        summary: the run's last log line.
        extra: anything else the method's own figures need (models' metadata, the timed batches).
    """

    cfg: Any
    method: Any
    paths: Any
    data: Any
    calib: Any
    test: Any
    results: dict
    sections: list
    meta: dict
    summary: str
    log: Callable[[str], None] = print
    extra: dict = field(default_factory=dict)


TASKS: Registry[Callable[..., TaskEvaluation]] = Registry("task")


def time_beside_teacher(runtime: Callable, teacher: Callable, batches: list, *, rounds: int, clock: str,
                        cpu_watts: float, grid_g_per_kwh: float, extra: dict[str, Callable] | None = None) -> dict:
    """The runtime and the teacher alone (plus ``extra`` calls) on the same batches, in interleaved rounds.

    ``clock``: ``wall``, or ``cpu`` (CPU time of the calling thread: the latency on a dedicated core when torch runs
    one thread, ``--threads 1``). Returns ``timing`` (per system: median ms over the batches on ``clock``, wall-clock
    ms, ms per image; the teacher over the runtime on both) and ``energy`` (joules per image measured where a counter exists, otherwise
    estimated from the stated power model, labelled by ``source``).
    """
    n = int(sum(b.shape[0] for b in batches))
    calls = {"runtime": lambda: [runtime(b) for b in batches], "teacher": lambda: [teacher(b) for b in batches],
             **(extra or {})}
    lat = interleaved_latency(calls, rounds=rounds, warmup=1, clock=clock)
    timing = {"images": n, "batches": len(batches), "rounds": rounds, "clock": clock,
              "ms": {k: v["median_ms"] for k, v in lat.items()},
              "wall_ms": {k: v["wall"]["median_ms"] for k, v in lat.items()},
              "ms_per_image": {k: v["median_ms"] / n for k, v in lat.items()},
              "times_ms": {k: v["times_ms"] for k, v in lat.items()}}
    timing["speedup"] = timing["ms"]["teacher"] / timing["ms"]["runtime"]
    timing["wall_speedup"] = timing["wall_ms"]["teacher"] / timing["wall_ms"]["runtime"]
    energy = energy_per_sample({k: calls[k] for k in ("runtime", "teacher")}, n, cpu_watts_per_thread=cpu_watts,
                               grid_g_per_kwh=grid_g_per_kwh)
    return {"timing": timing, "energy": energy}


def batches_of(x, batch: int, limit: int | None = None) -> list:
    """``x`` (N, ...) cut into consecutive batches of ``batch``, the first ``limit`` rows only when given."""
    n = x.shape[0] if limit is None else min(int(limit), x.shape[0])
    return [x[i:min(i + batch, n)] for i in range(0, n, batch)]


def check_routers(routers, known: tuple[str, ...]) -> tuple[str, ...]:
    """``routers`` as a tuple, or a ConfigError naming the unknown ones and the known ones."""
    from ..errors import ConfigError

    routers = tuple(routers)
    bad = [r for r in routers if r not in known]
    if bad or not routers:
        raise ConfigError(f"unknown routers {bad}; use some of {list(known)}" if bad else
                          f"name at least one router of {list(known)}")
    return routers


def run_task(task: str, cfg, method, log: Callable[[str], None] = print) -> TaskEvaluation:
    """The steps of ``task`` (registered by :mod:`dyninfer.tasks.regression` and :mod:`dyninfer.tasks.detection`,
    which :mod:`dyninfer.pipeline` imports; imported here too for a caller without it)."""
    from . import detection, regression  # noqa: F401  (a lazy import: the submodules import this package)

    return TASKS.get(task)(cfg, method, log)


__all__ = ["TASKS", "TaskEvaluation", "batches_of", "check_routers", "run_task", "time_beside_teacher"]
