"""A latency-target controller: it moves a served policy's knob along the calibrated curve as load changes.

Every ``interval_s`` the controller reads the p99 latency of the requests answered in the last
``window_s`` seconds. Above the target, it moves to a cheaper point of the calibrated accuracy–cost
frontier (the cost drops by ``step`` at least: more samples stop early or take cheaper paths, so the
runtime drains its queue faster). Below ``low`` × target for ``hold`` readings in a row, it moves one step
back toward the point the user set, never past it. Between the two thresholds it holds still (the
hysteresis band), and after every move it waits ``cooldown`` readings before the next, so one burst
does not make it oscillate. The cooldown (1 s) is shorter than the window (2 s): under overload it keeps
stepping down while the queue drains, which reaches a cheap enough point sooner (a cooldown spanning the
whole window gave a higher p99 in ``benchmarks/serve_load.py``); it never steps below the accuracy floor.

It never trades more than ``max_loss`` of calibrated accuracy against the user's point: under more load
than the cheapest allowed point can carry, the service answers 503 (queue full) instead. What it trades
(calibrated accuracy of the user's point minus that of the point in force) is in ``/v1/knob``,
``/metrics`` and the web page.
"""

from __future__ import annotations

import asyncio
from dataclasses import asdict, dataclass

import numpy as np

from ..check import number


@dataclass
class ControllerConfig:
    """Settings of :class:`LatencyController` (see the module doc)."""

    target_p99_ms: float
    interval_s: float = 0.5
    window_s: float = 2.0
    low: float = 0.6
    hold: int = 4
    cooldown: int = 2
    step: float = 0.15
    max_loss: float = 0.01

    def __post_init__(self) -> None:
        number("target_p99_ms", self.target_p99_ms, lo=0, lo_open=True, hint=" (milliseconds)")
        number("interval_s", self.interval_s, lo=0, lo_open=True)
        number("window_s", self.window_s, lo=0, lo_open=True)
        number("low", self.low, lo=0, hi=1, lo_open=True, hi_open=True)
        number("step", self.step, lo=0, hi=1, lo_open=True, hi_open=True)
        number("max_loss", self.max_loss, lo=0, hi=1)
        for name in ("hold", "cooldown"):
            number(name, getattr(self, name), lo=0, integer=True)


class LatencyController:
    """Keeps a :class:`~dyninfer.serve.service.PolicyService`'s p99 latency under a target (module doc).

    ``tick()`` makes one decision; ``run()`` ticks every ``interval_s`` until cancelled. ``enabled``
    switches it off (the knob returns to the user's point) and on.
    """

    def __init__(self, service, config: ControllerConfig) -> None:
        self.service = service
        self.config = config
        self.enabled = True
        self.moves = 0
        self.last_p99_ms: float | None = None
        self._calm = 0
        self._wait = 0
        service.controller = self

    def reset(self) -> None:
        """The user set a new point: start from it."""
        self._calm = 0
        self._wait = 0

    def set_enabled(self, on: bool) -> None:
        self.enabled = bool(on)
        self.reset()
        if not self.enabled and self.service.point != self.service.user_point:
            self.service.move_to(self.service.user_point)

    def floor(self) -> int:
        """The cheapest point allowed: calibrated accuracy within ``max_loss`` of the user's point."""
        c = self.service.curve
        u = self.service.user_point
        ok = np.flatnonzero(c.accuracy[:u + 1] >= c.accuracy[u] - self.config.max_loss - 1e-12)
        return int(ok[0]) if ok.size else u

    def tick(self) -> int:
        """One reading and decision; returns the move made (-1 cheaper, +1 dearer, 0 none)."""
        s = self.service
        if not self.enabled or s.runtime.forced is not None:
            return 0
        p99 = s.stats.latency_ms(99, last_s=self.config.window_s)
        self.last_p99_ms = p99
        if self._wait > 0:
            self._wait -= 1
            return 0
        if p99 is None:
            self._calm += 1
        elif p99 > self.config.target_p99_ms:
            self._calm = 0
            j = self._cheaper(s.point)
            if j is not None:
                return self._move(j, -1)
            return 0
        elif p99 < self.config.low * self.config.target_p99_ms:
            self._calm += 1
        else:
            self._calm = 0
        if self._calm >= self.config.hold and s.point < s.user_point:
            self._calm = 0
            return self._move(self._dearer(s.point), +1)
        return 0

    def _cheaper(self, j: int) -> int | None:
        c, lo = self.service.curve, self.floor()
        want = c.cost[j] * (1 - self.config.step)
        ok = [i for i in range(lo, j) if c.cost[i] <= want]
        return ok[-1] if ok else (lo if lo < j else None)

    def _dearer(self, j: int) -> int:
        c, u = self.service.curve, self.service.user_point
        want = c.cost[j] / (1 - self.config.step)
        ok = [i for i in range(j + 1, u + 1) if c.cost[i] >= want]
        return ok[0] if ok else u

    def _move(self, j: int, direction: int) -> int:
        self.service.move_to(j)
        self.moves += 1
        self._wait = self.config.cooldown
        return direction

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.config.interval_s)
            self.tick()

    def state(self) -> dict:
        return {"enabled": self.enabled, "moves": self.moves, "last_p99_ms": self.last_p99_ms,
                "floor_point": self.floor(), **asdict(self.config)}
