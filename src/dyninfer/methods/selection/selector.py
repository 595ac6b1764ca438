"""The adaptive backbone selector: complexity analyser + shared features + learned policy.

``fit`` trains the policy for one reward weight lambda on a calibration trace of every backbone
(plus the calibration images, from which the analyser and the features are computed). The
``selection`` method (:mod:`.method`) fits one per lambda, simulates them on traces and runs the
chosen one in the shared up-front runtime.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch
from torch import nn

from ...check import flag, number
from ...errors import ConfigError, NotFittedError, TraceError
from ...runtime.validate import check_batch
from ...trace import Trace
from .complexity import ComplexityAnalyser, ComplexityConfig
from .features import FEATURES, make_features
from .policy import PolicyConfig, rewards, train_reinforce

def time_per_image(trace: Trace, batch: int) -> np.ndarray:
    """(P,) measured seconds per image of every path of ``trace`` at ``batch`` (from its PathCosts)."""
    return np.array([float(c.time_per_batch(batch)) / batch for c in trace.costs])


@dataclass
class SelectorConfig:
    """Settings of a :class:`BackboneSelector` (defaults are what the benchmark runs)."""

    lam: float = 0.9               # accuracy weight lambda of the reward (1 - lambda weighs time)
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
        number("lam", self.lam, lo=0, hi=1)
        if self.features not in FEATURES:
            raise ConfigError(f"unknown features {self.features!r}; known: {list(FEATURES)}")
        number("grid", self.grid, lo=1, integer=True)
        number("serving_batch", self.serving_batch, lo=1, integer=True)
        flag("use_features", self.use_features)
        flag("use_complexity", self.use_complexity)
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
            raise NotFittedError("the selector is not fitted; call fit(calibration_trace, calibration_images) first")

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
        outs = [self.batch_inputs(x[i:i + batch_size], validate=validate) for i in range(0, x.shape[0], batch_size)]
        return torch.cat(outs) if len(outs) > 1 else outs[0]

    def batch_inputs(self, x: torch.Tensor, *, validate: bool = False) -> torch.Tensor:
        """Policy inputs (B, D) of one batch (what :meth:`inputs` computes per chunk, and what is exported)."""
        parts = []
        if self.config.use_features:
            parts.append(self.features_(x))  # (B, D_f)
        if self.config.use_complexity:
            parts.append(self.analyser_.components(x, validate=validate))  # (B, 3)
        return torch.cat(parts, 1) if len(parts) > 1 else parts[0]

    def decision_module(self) -> nn.Module:
        """A module images (N, C, H, W) -> policy logits (N, P): features, complexity and policy in one graph."""
        self._check_fitted()
        return _Decision(self)

    @torch.no_grad()
    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Policy logits (N, P) for images (N, C, H, W)."""
        self._check_fitted()
        return self.policy_.logits(self.inputs(x.to(self.policy_.mean.device)))


class _Decision(nn.Module):
    def __init__(self, sel: BackboneSelector) -> None:
        super().__init__()
        self.sel = sel
        self.features, self.policy = sel.features_, sel.policy_  # registered, so .to() and export see them

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.policy.logits(self.sel.batch_inputs(x))


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
