"""Batched execution of sequential policies (cascades, early exits).

Every sample enters stage 0; after each stage the samples whose score reaches that stage's
threshold leave the batch with that stage's answer, and only the rest go on. The last stage
answers whatever is left. A :class:`Stage` has two parts: ``advance`` maps the carry to the carry
the next stage continues from (the identity for a cascade, whose carry is the image; a backbone
segment for an early-exit network), ``head`` maps the advanced carry to logits. When the runtime
is forced to stage p (:meth:`~dyninfer.runtime.base.Runtime.force`), the stages before p run
their advance only — for a cascade nothing, for an early-exit network its segments without their
heads — so a runtime forced to its last stage costs what the plain network costs.

For the same thresholds the runtime makes the trace simulation's decisions exactly, as long as
a sample's logits do not depend on its batch mates. On CPU that holds bitwise for batches of
two or more; at batch 1 oneDNN picks other kernels whose results differ by about 1e-6, so a
sample whose score lies within that distance of a threshold may exit at the neighbouring stage.
On CUDA, cuDNN picks kernels by batch size, and the batch shrinks as samples leave: on the
Fashion-MNIST test split (revcol-s, H100) 0-3 of 10,000 samples exited at a neighbouring stage
with the same prediction.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn

from ..errors import ConfigError
from ..scores import Score
from .base import Runtime, RuntimeResult, as_thresholds
from .validate import PIXEL_RANGE

Carry = torch.Tensor | tuple[torch.Tensor, ...]


def _identity(carry: Carry) -> Carry:
    return carry


@dataclass(frozen=True)
class Stage:
    """One stage of a sequential runtime.

    Attributes:
        head: advanced carry -> logits (n, K), or (logits (n, K), score (n,)) for a path that scores its own
            answer (a slimmable subnet's Var Gate): that score then replaces the runtime's score function.
        advance: carry -> the carry the head and the next stage read (default: unchanged).
    """

    head: Callable[[Carry], torch.Tensor]
    advance: Callable[[Carry], Carry] = _identity


def model_stage(model: nn.Module) -> Stage:
    """A cascade stage: run ``model`` on the image and pass the image on unchanged."""
    return Stage(model.eval())


def forced_flops(stage_flops: Sequence[float], skip_flops: Sequence[float], p: int) -> float:
    """FLOPs per sample of a runtime forced to stage ``p``: the earlier stages' advances, then stage p."""
    return float(np.sum(np.asarray(skip_flops, float)[:p]) + float(stage_flops[p]))


class SequentialRuntime(Runtime):
    """Runs stages in order, dropping confident samples from the batch after each.

    Args:
        stages: P :class:`Stage` objects (or callables ``carry -> logits``, taken as heads).
        scores: one :class:`~dyninfer.scores.Score` for every stage, or P-1 of them (one per stage but the last).
        thresholds: P-1 values (or one for all); stage p keeps a sample when ``score >= thresholds[p]``.
        paths: P path names (default ``stage0``, ``stage1``, ...).
        stage_flops: (P,) FLOPs per sample of each stage (advance + head), for the reported cost.
        skip_flops: (P,) FLOPs per sample of a stage's advance alone (0 for a cascade; an exit's segment),
            what a runtime forced past it pays.
        input_shape, device, value_range: see :class:`~dyninfer.runtime.base.Runtime`.
    """

    def __init__(self, stages: Sequence[Stage | Callable], scores: Score | Sequence[Score], thresholds, *,
                 paths: Sequence[str] | None = None, stage_flops: Sequence[float] | None = None,
                 skip_flops: Sequence[float] | None = None, input_shape: tuple[int, ...] | None = None,
                 device: str | torch.device = "cpu", value_range: tuple[float, float] | None = PIXEL_RANGE) -> None:
        if len(stages) < 1:
            raise ConfigError("a sequential runtime needs at least one stage")
        P = len(stages)
        super().__init__(paths if paths is not None else [f"stage{p}" for p in range(P)], input_shape=input_shape,
                         device=device, value_range=value_range)
        if len(self.paths) != P:
            raise ConfigError(f"{len(self.paths)} path names for {P} stages")
        self.stages = [s if isinstance(s, Stage) else Stage(s) for s in stages]
        self.scores = [scores] * (P - 1) if isinstance(scores, Score) else list(scores)[:P - 1]
        if len(self.scores) != P - 1:
            raise ConfigError(f"need {P - 1} per-stage scores, got {len(self.scores)}")
        self.stage_flops = np.asarray(stage_flops if stage_flops is not None else np.zeros(P), float)
        self.skip_flops = np.asarray(skip_flops if skip_flops is not None else np.zeros(P), float)
        self.knob = thresholds

    def check_knob(self, value) -> tuple[float, ...]:
        """P-1 thresholds (one number: the same at every stage); the last stage always answers."""
        return as_thresholds(value, len(self.stages) - 1)

    @property
    def thresholds(self) -> tuple[float, ...]:
        return self.knob

    @thresholds.setter
    def thresholds(self, values) -> None:
        self.knob = values

    def _execute(self, x: torch.Tensor, thresholds: tuple[float, ...], forced: int | None) -> RuntimeResult:
        if forced is not None:
            return self._execute_forced(x, forced)
        t0 = time.perf_counter()
        n, P = x.shape[0], len(self.stages)
        pred = torch.empty(n, dtype=torch.long)
        path = torch.empty(n, dtype=torch.long)
        prob = torch.empty(n)
        path_seconds = np.zeros(P)
        path_counts = np.zeros(P, dtype=int)
        alive = torch.arange(n)  # original indices of samples still in the batch
        carry: Carry = x.to(self.device)
        for p, stage in enumerate(self.stages):
            ts = time.perf_counter()
            last = p == P - 1
            carry = stage.advance(carry)
            path_counts[p] = alive.numel()
            logits, own = _logits_and_score(stage.head(carry))  # (n_alive, K), (n_alive,) or None
            keep = None if last else (self.scores[p](logits) if own is None else own) >= thresholds[p]
            n_keep = alive.numel() if keep is None else int(keep.sum())
            if n_keep:  # nobody leaving (common at batch 1): no scatter, no copy of the carry
                kept = logits if keep is None else logits[keep]
                idx = alive if keep is None else alive[keep]
                pred[idx] = kept.argmax(-1)
                prob[idx] = kept.softmax(-1).amax(-1)
                path[idx] = p
            path_seconds[p] += time.perf_counter() - ts
            if n_keep == alive.numel():
                break
            if n_keep:
                go_on = (~keep).nonzero().squeeze(1)
                alive = alive[go_on]
                carry = _index(carry, go_on.to(self.device))
        flops = np.cumsum(self.stage_flops)[path.numpy()]
        return RuntimeResult(pred, path, prob, flops, time.perf_counter() - t0, path_seconds, path_counts)

    def _execute_forced(self, x: torch.Tensor, p: int) -> RuntimeResult:
        """Every sample to stage ``p``: earlier stages advance the carry only, no head, no decision."""
        t0 = time.perf_counter()
        n, P = x.shape[0], len(self.stages)
        path_seconds = np.zeros(P)
        counts = np.zeros(P, dtype=int)
        carry: Carry = x.to(self.device)
        for q in range(p):
            ts = time.perf_counter()
            carry = self.stages[q].advance(carry)
            path_seconds[q] = time.perf_counter() - ts
        ts = time.perf_counter()
        logits, _ = _logits_and_score(self.stages[p].head(self.stages[p].advance(carry)))  # (n, K)
        pred, prob = logits.argmax(-1), logits.softmax(-1).amax(-1)
        path_seconds[p] = time.perf_counter() - ts
        counts[p] = n
        flops = np.full(n, forced_flops(self.stage_flops, self.skip_flops, p))
        return RuntimeResult(pred, torch.full((n,), p, dtype=torch.long), prob, flops, time.perf_counter() - t0,
                             path_seconds, counts)


def _logits_and_score(out) -> tuple[torch.Tensor, torch.Tensor | None]:
    """A head's output as (logits on the CPU, its own score on the CPU or None)."""
    if isinstance(out, tuple):
        return out[0].float().cpu(), out[1].float().cpu()
    return out.float().cpu(), None


def _index(carry: Carry, idx: torch.Tensor) -> Carry:
    if isinstance(carry, tuple):
        return tuple(c[idx] for c in carry)
    return carry[idx]
