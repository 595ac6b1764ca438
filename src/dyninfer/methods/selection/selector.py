"""The adaptive backbone selector: complexity analyser + shared features + learned policy.

``fit`` trains the policy on a calibration trace of every backbone (plus the calibration images,
from which the analyser and the features are computed); ``simulate`` evaluates it on any trace in
milliseconds; :class:`~dyninfer.methods.selection.runtime.SelectionRuntime` runs it for real.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn

from ...errors import ConfigError, TraceError
from ...evaluate.outcome import Outcome
from ...io import atomic_path
from ...runtime.validate import check_batch
from ...trace import Trace
from ...train.checkpoint import read_checkpoint
from .complexity import ComplexityAnalyser, ComplexityConfig
from .features import make_features
from .policy import MODES, PolicyConfig, PolicyNet, TrainHistory, choose, rewards, train_reinforce

FORMAT = "dyninfer-selector-1"


def time_per_image(trace: Trace, batch: int) -> np.ndarray:
    """(P,) measured seconds per image of every path of ``trace`` at ``batch`` (from its PathCosts)."""
    return np.array([float(c.time_per_batch(batch)) / batch for c in trace.costs])


@dataclass
class SelectorConfig:
    """Settings of a :class:`BackboneSelector` (defaults are what the benchmark runs)."""

    lam: float = 0.9               # accuracy weight lambda of the reward (1 - lambda weighs time)
    mode: str = "greedy"           # "greedy" (argmax pi) or "sampled" (a ~ pi)
    features: str = "pixels"       # shared features: "pixels" (pooled image) or "early-block" (smallest backbone)
    grid: int = 7                  # side of the pooled feature map
    use_features: bool = True      # feed the shared features to the policy
    use_complexity: bool = True    # feed the complexity components (edge, texture, score) to the policy
    serving_batch: int = 256       # batch size whose measured time per image defines T_norm
    complexity: ComplexityConfig = field(default_factory=ComplexityConfig)
    policy: PolicyConfig = field(default_factory=PolicyConfig)

    def __post_init__(self) -> None:
        if isinstance(self.complexity, dict):
            self.complexity = ComplexityConfig(**self.complexity)
        if isinstance(self.policy, dict):
            self.policy = PolicyConfig(**self.policy)
        if self.mode not in MODES:
            raise ConfigError(f"unknown selection mode {self.mode!r}; use one of {list(MODES)}")
        if not 0.0 <= self.lam <= 1.0:
            raise ConfigError(f"lambda must be in [0, 1], got {self.lam}")
        if not (self.use_features or self.use_complexity):
            raise ConfigError("the policy needs an input: set use_features or use_complexity")


class BackboneSelector:
    """Picks one backbone per image before running any.

    Args:
        paths: backbone names, cheapest first (trace paths and pool names).
        config: :class:`SelectorConfig`.

    Fitted attributes: ``analyser_``, ``features_``, ``policy_``, ``history_``, ``times_`` (P,) seconds per
    image used for the reward, ``t_norm_`` (P,), ``in_dim_``, ``input_shape_``.
    """

    def __init__(self, paths: Sequence[str], config: SelectorConfig | None = None) -> None:
        if len(paths) < 2:
            raise ConfigError(f"backbone selection needs at least 2 backbones, got {list(paths)}")
        if len(set(paths)) != len(paths):
            raise ConfigError(f"duplicate backbones in {list(paths)}")
        self.paths = list(paths)
        self.config = config or SelectorConfig()

    # ------------------------------------------------------------------ fitting
    def _trace(self, trace: Trace) -> Trace:
        missing = [p for p in self.paths if p not in trace.paths]
        if missing:
            raise TraceError(f"trace has no paths {missing}; it has {trace.paths}")
        return trace.select(self.paths)

    def fit(self, trace: Trace, x: torch.Tensor, *, feature_model: nn.Module | None = None,
            times: Sequence[float] | None = None, analyser: ComplexityAnalyser | None = None,
            progress: bool = False) -> "BackboneSelector":
        """Fit the analyser's normalisation and train the policy on a calibration trace.

        Args:
            trace: calibration trace holding every backbone of ``paths``.
            x: the trace's images (N, C, H, W), in trace order.
            feature_model: the smallest backbone, for ``features="early-block"``.
            times: (P,) seconds per image for the reward; default: the trace's measured latency
                at ``serving_batch``.
            analyser: an already fitted analyser to reuse (e.g. across lambdas).
            progress: progress bar over training epochs.

        Returns:
            self.
        """
        cfg = self.config
        tr = self._trace(trace)
        x = check_batch(x, None, where="selector fit")
        if x.shape[0] != tr.n:
            raise TraceError(f"{x.shape[0]} images for a trace of {tr.n} samples")
        self.input_shape_ = tuple(x.shape[1:])
        self.analyser_ = analyser if analyser is not None else ComplexityAnalyser(cfg.complexity).fit(x)
        self.features_ = make_features(cfg.features, cfg.grid, feature_model).eval().to(x.device)
        self.times_ = np.asarray(times, float) if times is not None else time_per_image(tr, cfg.serving_batch)
        if self.times_.shape != (len(self.paths),) or not np.all(self.times_ > 0):
            raise ConfigError(f"need {len(self.paths)} positive times per image, got {self.times_}")
        self.t_norm_ = self.times_ / self.times_.max()
        inputs = self.inputs(x)
        self.in_dim_ = int(inputs.shape[1])
        self.policy_, self.history_ = train_reinforce(inputs.cpu(), rewards(tr.correct, self.t_norm_, cfg.lam),
                                                      cfg.policy, progress=progress, desc=f"policy lam={cfg.lam:g}")
        self.policy_.to(x.device)
        return self

    def _check_fitted(self) -> None:
        if not hasattr(self, "policy_"):
            raise ConfigError("the selector is not fitted; call fit(calibration_trace, calibration_images) first")

    # ------------------------------------------------------------------ inference
    def to(self, device: str | torch.device) -> "BackboneSelector":
        """Move the features and the policy to ``device`` (images must then be there too)."""
        self._check_fitted()
        self.features_.to(device)
        self.policy_.to(device)
        return self

    @torch.no_grad()
    def inputs(self, x: torch.Tensor, batch_size: int = 4096, *, validate: bool = False) -> torch.Tensor:
        """Policy inputs (N, D): pooled shared features and/or complexity components.

        Args:
            x: images (N, C, H, W) in [0, 1], on the selector's device.
            batch_size: images processed at once.
            validate: full input validation of ``x`` (the runtime validates each batch itself).
        """
        outs = []
        for i in range(0, x.shape[0], batch_size):
            xb = x[i:i + batch_size]
            parts = []
            if self.config.use_features:
                parts.append(self.features_(xb))  # (B, D_f)
            if self.config.use_complexity:
                parts.append(self.analyser_.components(xb, validate=validate))  # (B, 3)
            outs.append(torch.cat(parts, 1) if len(parts) > 1 else parts[0])
        return torch.cat(outs) if len(outs) > 1 else outs[0]

    @torch.no_grad()
    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Policy logits (N, P) for images (N, C, H, W)."""
        self._check_fitted()
        return self.policy_.logits(self.inputs(x.to(self.policy_.mean.device)))

    def probs(self, x: torch.Tensor) -> torch.Tensor:
        """pi(a|x) (N, P)."""
        return torch.softmax(self.logits(x), 1)

    def choose(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Backbone index per image (N,), greedy or sampled as configured."""
        return choose(self.logits(x), self.config.mode, generator).cpu()

    def simulate(self, trace: Trace, x: torch.Tensor, *, choice: np.ndarray | None = None,
                 generator: torch.Generator | None = None, batch_size: int | None = None) -> Outcome:
        """What the selector does on ``trace`` (whose images are ``x``), from the recorded logits.

        Args:
            trace: a trace holding every backbone of ``paths``.
            x: the trace's images (N, C, H, W).
            choice: (N,) backbone indices to evaluate instead of the policy's (ablations).
            generator: RNG for ``mode="sampled"``.
            batch_size: choose in batches of this size (as the runtime does); None: all at once.

        Returns:
            an :class:`Outcome` whose ``flops`` are the chosen backbone's FLOPs.
        """
        tr = self._trace(trace)
        if choice is None:
            if x.shape[0] != tr.n:
                raise TraceError(f"{x.shape[0]} images for a trace of {tr.n} samples")
            bs = batch_size or max(tr.n, 1)
            choice = torch.cat([self.choose(x[i:i + bs], generator) for i in range(0, tr.n, bs)]).numpy()
        choice = np.asarray(choice, int)
        flops = np.array([c.flops for c in tr.costs], float)
        return Outcome(tr.preds[choice, np.arange(tr.n)], choice, flops[choice], tr.labels)

    # ------------------------------------------------------------------ storage
    def save(self, path: str | os.PathLike) -> Path:
        """Write settings, fitted normalisation and weights to one file, atomically."""
        self._check_fitted()
        payload = {"format": FORMAT, "paths": self.paths, "config": asdict(self.config),
                   "analyser": self.analyser_.state_dict(), "features": self.features_.state_dict(),
                   "policy": self.policy_.state_dict(), "in_dim": self.in_dim_, "times": self.times_.tolist(),
                   "input_shape": list(self.input_shape_)}
        path = Path(path)
        with atomic_path(path) as tmp:
            torch.save(payload, tmp)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike, *, feature_model: nn.Module | None = None) -> "BackboneSelector":
        """Read a selector written by :meth:`save`.

        Args:
            path: the file.
            feature_model: the smallest backbone, for ``features="early-block"`` (its block weights are
                then overwritten by the saved ones).

        Raises:
            CheckpointError: missing, unreadable or not a selector file.
        """
        payload = read_checkpoint(path, fmt=FORMAT, what="selector")
        sel = cls(payload["paths"], SelectorConfig(**payload["config"]))
        sel.analyser_ = ComplexityAnalyser.from_state_dict(payload["analyser"])
        sel.features_ = make_features(sel.config.features, sel.config.grid, feature_model).eval()
        sel.features_.load_state_dict(payload["features"])
        sel.in_dim_ = int(payload["in_dim"])
        sel.policy_ = PolicyNet(sel.in_dim_, len(sel.paths), sel.config.policy.hidden)
        sel.policy_.load_state_dict(payload["policy"])
        sel.policy_.eval()
        sel.times_ = np.asarray(payload["times"], float)
        sel.t_norm_ = sel.times_ / sel.times_.max()
        sel.input_shape_ = tuple(payload["input_shape"])
        sel.history_ = TrainHistory()
        return sel


class ScorePolicy:
    """Ablation: route by the complexity score alone — score in [t_{p-1}, t_p) goes to backbone p.

    Args:
        analyser: a fitted :class:`ComplexityAnalyser`.
        thresholds: P-1 increasing cut points on the score.
    """

    def __init__(self, analyser: ComplexityAnalyser, thresholds: Sequence[float]) -> None:
        t = np.asarray(thresholds, float)
        if np.any(t[1:] < t[:-1]):
            raise ConfigError(f"score thresholds must be increasing, got {list(t)}")
        self.analyser = analyser
        self.thresholds = t

    def choose_from_scores(self, scores: np.ndarray) -> np.ndarray:
        """(N,) backbone index from complexity scores (N,)."""
        return np.searchsorted(self.thresholds, np.asarray(scores, float), side="right")

    def choose(self, x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.choose_from_scores(self.analyser.score(x).cpu().numpy()))
