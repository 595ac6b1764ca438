"""Adaptive backbone selection (ABS) as a method of the shared protocol.

``fit`` splits the calibration trace in two. On the first part it trains one policy per reward
weight lambda (REINFORCE) and keeps the lambda whose policy lies furthest above the static
accuracy-time hull on the rows held out from that training (the paper's criterion). On the second
part, which neither the training nor the choice of lambda saw, it calibrates the knob: a **cost bias** b that
shifts the chosen policy's logits by ``-b * FLOPs_p / FLOPs_max``. b = 0 is the trained policy; a
larger b sends images to cheaper backbones. Because the shift is a Lagrangian penalty, each image's
chosen backbone can only get cheaper as b grows (a cheaper knob never costs more), per image, on any
data. The operating point on that knob is chosen with the shared guarantee against the reference
(the backbone with the most FLOPs), on that second part only, so that the guarantee holds.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from ...check import number
from ...errors import ConfigError
from ...evaluate.frontier import Curve, hull_accuracy_at
from ...evaluate.guarantee import check_guarantee_settings
from ...evaluate.outcome import Outcome
from ...evaluate.simulate import disagreements, oracle, simulate_forced, simulate_upfront
from ...models.registry import create_model, spec_from_dict
from ...paths import ModulePool
from ...runtime.manager import BackboneManager
from ...inputs import as_bias, biased_choice
from ...runtime.upfront import UpfrontRuntime
from ...trace import Trace
from ..base import Method, _num, register_method
from .complexity import ComplexityAnalyser, ComplexityConfig
from .features import make_features
from .policy import PolicyConfig, PolicyNet
from .selector import BackboneSelector, SelectorConfig, time_per_image

DEFAULT_LAMBDAS = (0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9, 0.93, 0.95, 0.97, 0.98, 0.99)


def margin_above_hull(outcome: Outcome, times: np.ndarray, static_accuracy: np.ndarray, overhead_s: float = 0.0) -> dict:
    """Accuracy, mean time per image and margin above the upper hull of the static backbones (ABS's criterion)."""
    t = float(times[outcome.path].mean() + overhead_s)
    hull = float(hull_accuracy_at(times, static_accuracy, t))
    return {"accuracy": outcome.accuracy, "time_per_image_s": t, "hull_accuracy": hull,
            "margin": outcome.accuracy - hull, "share": outcome.path_share(len(times)).tolist()}


@register_method("selection")
class Selection(Method):
    """Pick one backbone per image, before running any, from cheap image features.

    Args:
        lambdas: reward weights to train a policy for (R = lam * correct + (1 - lam) * (1 - T_norm)).
        features: shared policy features, ``pixels`` (pooled image) or ``early-block`` (the first block of
            the smallest backbone).
        grid: side of the pooled feature map.
        use_features, use_complexity: feed the shared features / the complexity components to the policy.
        complexity: :class:`ComplexityConfig` (or its dict).
        policy: :class:`PolicyConfig` (or its dict) of the REINFORCE training.
        serving_batch: batch whose measured time per image defines T_norm (FLOPs when the trace has no latency).
        tolerance: accuracy the policy may lose against the largest backbone (0.01 = one point).
        confidence: probability that the loss stays within ``tolerance`` (the shared guarantee).
        bound: p-values of the guarantee, ``clt`` or ``wsr``.
        bias_grid: candidate cost biases on the knob (quantiles of where images switch backbone).
        holdout: share of the calibration split kept for the guarantee (never used to train a policy or
            choose lambda).
        seed: seed of that split.

    Fitted attributes: ``paths_``, ``selectors_`` (lambda -> selector, trained on the rows ``fit_index_``;
    after ``load`` only the chosen one), ``lambda_``, ``margins_`` (held-out margin per lambda), ``times_``,
    ``cost_`` (P,) normalised FLOPs, ``flops_``, ``decide_flops_``, ``knob_`` (the cost bias), ``biases_``,
    ``operating_point_`` and ``calib_curve_`` (on the rows ``holdout_index_``).
    """

    path_kind = "pool"
    knob_direction = -1

    def __init__(self, *, lambdas: Sequence[float] = DEFAULT_LAMBDAS, features: str = "pixels", grid: int = 7,
                 use_features: bool = True, use_complexity: bool = True,
                 complexity: ComplexityConfig | Mapping | None = None, policy: PolicyConfig | Mapping | None = None,
                 serving_batch: int = 256, tolerance: float = 0.01, confidence: float = 0.95, bound: str = "clt",
                 bias_grid: int = 200, holdout: float = 0.3, seed: int = 0) -> None:
        self.lambdas = lambdas
        self.features = features
        self.grid = grid
        self.use_features = use_features
        self.use_complexity = use_complexity
        self.complexity = complexity
        self.policy = policy
        self.serving_batch = serving_batch
        self.tolerance = tolerance
        self.confidence = confidence
        self.bound = bound
        self.bias_grid = bias_grid
        self.holdout = holdout
        self.seed = seed
        if not isinstance(lambdas, (list, tuple)) or not lambdas or any(
                isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v <= 1 for v in lambdas):
            raise ConfigError(f"lambdas must be a non-empty list of numbers in [0, 1], got {lambdas!r}")
        self._config(0.5)  # features, grid, complexity and policy settings fail here
        check_guarantee_settings(tolerance, confidence, bound)
        number("serving_batch", serving_batch, lo=1, integer=True)
        number("bias_grid", bias_grid, lo=2, integer=True, hint=" (candidate cost biases)")
        number("holdout", holdout, lo=0, hi=1, lo_open=True, hi_open=True, hint=" (share of the calibration split)")
        number("seed", seed, integer=True)

    def _config(self, lam: float) -> SelectorConfig:
        try:
            return SelectorConfig(lam=float(lam), features=self.features, grid=self.grid,
                                  use_features=self.use_features, use_complexity=self.use_complexity,
                                  serving_batch=self.serving_batch,
                                  complexity=self.complexity if self.complexity is not None else ComplexityConfig(),
                                  policy=self.policy if self.policy is not None else PolicyConfig())
        except TypeError as e:
            raise ConfigError(f"bad selection settings: {e}") from None

    # ------------------------------------------------------------------ fitting
    def fit(self, calib: Trace, *, feature_model: nn.Module | None = None, progress: bool = False) -> "Selection":
        """Train a policy per lambda and choose lambda on part of the calibration trace, the operating point on
        the rest (see the module doc).

        Args:
            calib: calibration trace of every backbone, with its images (``trace.with_inputs``).
            feature_model: the smallest backbone, for ``features="early-block"``.
            progress: progress bars over the policies' training.
        """
        calib.inputs()  # a clear error now if the trace carries no images
        self.paths_ = list(calib.paths)
        if len(self.paths_) < 2:
            raise ConfigError(f"backbone selection needs at least 2 backbones, got {self.paths_}")
        n_hold = int(round(self.holdout * calib.n))
        if not 2 <= n_hold <= calib.n - 2:
            raise ConfigError(f"holdout={self.holdout} leaves too few of the {calib.n} calibration samples on one side")
        perm = np.random.default_rng(self.seed).permutation(calib.n)
        self.holdout_index_, self.fit_index_ = np.sort(perm[:n_hold]), np.sort(perm[n_hold:])
        held, part = calib.subset(self.holdout_index_), calib.subset(self.fit_index_)
        x = part.inputs()
        self.flops_ = [float(c.flops) for c in calib.costs]
        self.cost_ = torch.tensor(self.flops_) / max(self.flops_)
        have_latency = all(c.latency for c in calib.costs)
        self.times_ = (time_per_image(calib, self.serving_batch) if have_latency
                       else np.asarray(self.flops_) / max(self.flops_) * 1e-3)
        self.times_source_ = f"measured at batch {self.serving_batch}" if have_latency else "proportional to FLOPs"
        self.selectors_: dict[float, BackboneSelector] = {}
        analyser = None
        for lam in self.lambdas:
            sel = BackboneSelector(self.paths_, self._config(lam)).fit(
                part, x, feature_model=feature_model, times=self.times_, analyser=analyser, progress=progress)
            analyser = sel.analyser_
            self.selectors_[float(lam)] = sel
        self.margins_ = {}
        for lam, sel in self.selectors_.items():
            rows = sel.history_.val_index if len(sel.history_.val_index) else np.arange(part.n)
            out = self._outcome(part, sel, 0.0).subset(rows)
            self.margins_[lam] = margin_above_hull(out, self.times_, part.correct[:, rows].mean(1))["margin"]
        self.lambda_ = max(self.margins_, key=lambda k: self.margins_[k])
        self.feature_arch_ = getattr(feature_model, "dyninfer_arch", None) if self.features == "early-block" else None
        sel = self.selectors_[self.lambda_]
        self.decide_flops_ = _decide_flops(sel)
        logits = self._logits(sel, held.inputs())
        self.biases_ = self._bias_grid(logits)
        self.calib_curve_ = self._curve(held, logits)
        self.operating_point_ = self._choose(self.calib_curve_, held.n, reference=self.paths_[self._reference])
        self.knob_ = self.check_knob(self.biases_[self.operating_point_.index])
        return self

    def fit_options(self, paths) -> dict:
        """``feature_model``: the pool's smallest backbone, for ``features="early-block"``."""
        return {"feature_model": paths.models[paths.names[0]]} if self.features == "early-block" else {}

    def _logits(self, sel: BackboneSelector, x: torch.Tensor) -> torch.Tensor:
        """Policy logits (N, P) computed in serving batches, as the runtime computes them."""
        b = self.serving_batch
        return torch.cat([sel.logits(x[i:i + b]).cpu() for i in range(0, x.shape[0], b)])

    def _outcome(self, trace: Trace, sel: BackboneSelector, bias: float, logits: torch.Tensor | None = None) -> Outcome:
        z = self._logits(sel, trace.inputs()) if logits is None else logits
        choice = biased_choice(z, bias, self.cost_).numpy()
        return simulate_upfront(trace.select(self.paths_), choice, getattr(self, "decide_flops_", 0.0))

    def _bias_grid(self, logits: torch.Tensor) -> np.ndarray:
        """Candidate biases: quantiles of the biases at which images switch between backbone pairs, 0 and +-inf."""
        z, c = logits.numpy().astype(np.float64), self.cost_.numpy().astype(np.float64)
        crit = [(z[:, a] - z[:, b]) / (c[a] - c[b]) for a in range(len(c)) for b in range(a + 1, len(c))
                if c[a] != c[b]]
        crit = np.concatenate(crit) if crit else np.zeros(1)
        q = np.quantile(crit, np.linspace(0, 1, self.bias_grid))
        return np.unique(np.concatenate([[-np.inf, 0.0, np.inf], q]))

    def _curve(self, trace: Trace, logits: torch.Tensor) -> Curve:
        tr = trace.select(self.paths_)
        choices = np.stack([biased_choice(logits, float(b), self.cost_).numpy() for b in self.biases_])  # (M, N)
        correct = tr.correct[choices, np.arange(tr.n)[None]]  # (M, N)
        flops = np.asarray(self.flops_)[choices].mean(1) + self.decide_flops_
        ro, mo = disagreements(tr, correct, reference=self._reference)
        share = np.stack([(choices == p).mean(1) for p in range(len(self.paths_))], 1)
        return Curve("selection", self.biases_[:, None], correct.mean(1), flops,
                     {"ref_only": ro, "method_only": mo, "reach": share})

    # ------------------------------------------------------------------ protocol
    @property
    def _reference(self) -> int:
        """Index of the reference path: the backbone with the most FLOPs."""
        return int(np.argmax(self.flops_))

    @property
    def selector_(self) -> BackboneSelector:
        """The chosen lambda's selector."""
        self.check_fitted()
        return self.selectors_[self.lambda_]

    def check_knob(self, value: Any) -> float:
        return as_bias(value)

    def simulate_forced(self, trace: Trace, path: str) -> Outcome:
        """Every image to ``path``, the chooser not run (its FLOPs not charged)."""
        self.check_fitted()
        return simulate_forced(trace.select(self.paths_), self.paths_.index(path), sequential=False)

    def _setting(self, curve: Curve, j: int) -> float:
        return float(curve.settings[j][0])

    def choose(self, x: torch.Tensor, knob: float) -> torch.Tensor:
        """(N,) backbone per image at cost bias ``knob`` (the up-front runtime's chooser)."""
        return biased_choice(self.selector_.logits(x).cpu(), knob, self.cost_)

    def decision_module(self) -> nn.Module:
        """Images -> policy logits (N, P) of the chosen lambda's selector (what an export runs before the rule)."""
        return self.selector_.decision_module()

    def decision_rule(self) -> dict:
        """How policy logits become a path: the cost-biased argmax (:func:`~dyninfer.inputs.biased_choice`)."""
        self.check_fitted()
        return {"rule": "biased_argmax", "cost": self.cost_.tolist()}

    def simulate(self, trace: Trace, knob: Any = None) -> Outcome:
        """What the selector does on ``trace`` (which must carry its images) at cost bias ``knob``."""
        b = self._knob(knob)
        return self._uncertified(trace, knob) or self._outcome(trace, self.selector_, b)

    def curve(self, trace: Trace) -> Curve:
        """Accuracy and mean FLOPs at every bias of the calibrated grid on ``trace``."""
        self.check_fitted()
        return self._curve(trace, self._logits(self.selector_, trace.inputs()))

    def oracle(self, trace: Trace) -> Outcome:
        self.check_fitted()
        return oracle(trace.select(self.paths_), sequential=False)

    def runtime(self, paths: ModulePool, *, device: str | torch.device | None = None,
                memory_budget: int | None = None) -> UpfrontRuntime:
        """An :class:`UpfrontRuntime` choosing among ``paths`` through a backbone manager.

        Args:
            paths: the pool (its checkpoint files, when it has them, are what the manager loads on a miss).
            device: where the policy and the backbones run (default: where the pool is).
            memory_budget: bytes the manager may hold (default: the whole pool, so nothing is evicted).
        """
        self.check_fitted()
        if not isinstance(paths, ModulePool):
            raise ConfigError(f"selection runs on a module pool, got {type(paths).__name__}")
        device = torch.device(device) if device is not None else paths.device
        pool = paths.subset(self.paths_).backbone_pool()
        manager = BackboneManager(pool, memory_budget if memory_budget is not None else pool.total_bytes, device=device)
        self.selector_.to(device)
        return self._start(UpfrontRuntime(self.paths_, self, manager, self.knob_, path_flops=self.flops_,
                                          decide_flops=self.decide_flops_, input_shape=paths.input_shape,
                                          device=device))

    # ------------------------------------------------------------------ storage
    def _state(self) -> tuple[dict, dict]:
        state, tensors = super()._state()
        sel = self.selector_
        state.update({"paths_": self.paths_, "lambda_": self.lambda_, "fit_index_": self.fit_index_,
                      "holdout_index_": self.holdout_index_, "margins_": self.margins_,
                      "times_": self.times_, "times_source_": self.times_source_, "flops_": self.flops_,
                      "decide_flops_": self.decide_flops_, "biases_": self.biases_, "in_dim": sel.in_dim_,
                      "input_shape": list(sel.input_shape_), "feature_arch_": self.feature_arch_,
                      "analyser": sel.analyser_.state_dict()})
        tensors.update({"features": sel.features_.state_dict(), "policy": sel.policy_.state_dict()})
        return state, tensors

    def _set_state(self, state: dict, tensors: dict) -> None:
        self.paths_ = list(state["paths_"])
        self.flops_ = [float(v) for v in state["flops_"]]
        self.cost_ = torch.tensor(self.flops_) / max(self.flops_)
        self.lambda_ = float(state["lambda_"])
        self.fit_index_ = np.asarray(state["fit_index_"], int)
        self.holdout_index_ = np.asarray(state["holdout_index_"], int)
        self.margins_ = {float(k): float(v) for k, v in state["margins_"].items()}
        self.times_ = np.asarray(state["times_"], float)
        self.times_source_ = state["times_source_"]
        self.decide_flops_ = float(state["decide_flops_"])
        self.biases_ = np.asarray(_num(state["biases_"]), float)
        self.feature_arch_ = state["feature_arch_"]
        sel = BackboneSelector(self.paths_, self._config(self.lambda_))
        sel.analyser_ = ComplexityAnalyser.from_state_dict(state["analyser"])
        model = None
        if self.feature_arch_ is not None:
            a = self.feature_arch_
            model = create_model(a["name"], spec_from_dict(a["spec"]), **a["kwargs"])
        sel.features_ = make_features(self.features, self.grid, model).eval()
        sel.features_.load_state_dict(tensors["features"])
        sel.in_dim_ = int(state["in_dim"])
        sel.policy_ = PolicyNet(sel.in_dim_, len(self.paths_), sel.config.policy.hidden)
        sel.policy_.load_state_dict(tensors["policy"])
        sel.policy_.eval()
        sel.times_ = self.times_
        sel.t_norm_ = self.times_ / self.times_.max()
        sel.input_shape_ = tuple(state["input_shape"])
        self.selectors_ = {self.lambda_: sel}
        super()._set_state(state, tensors)


def _decide_flops(sel: BackboneSelector) -> float:
    """FLOPs of features + complexity + policy on one image (convolutions and matmuls, as counted by torch)."""
    x = torch.rand(1, *sel.input_shape_, device=sel.policy_.mean.device)
    with torch.no_grad(), FlopCounterMode(display=False) as c:
        sel.logits(x)
    return float(c.get_total_flops())
