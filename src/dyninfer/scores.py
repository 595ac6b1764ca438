"""Per-input scores on a path's logits. Convention: **higher means more confident** — keep the answer.

=============  =====================================================  ==========================
name           value                                                  paper
=============  =====================================================  ==========================
max_softmax    max_k p_k                                              EBJR eq. 19
margin         p_(1) - p_(2)                                          
entropy        -H(p) = sum_k p_k log p_k  (negated entropy)           EBJR eq. 22
energy         -F(x) = T * logsumexp(z / T)  (negative free energy)   EBJR eq. 3, 6
specialised    -F̄(x) = logsumexp(z[classes]) if the top subset logit  EBJR eq. 16, 17
               reaches logsumexp(z[others]) ("other" is not the
               argmax), else -inf (always forwarded)
random         U(0, 1) per input, from a seeded hash of its logits (a baseline that ignores confidence)
difficulty     a fitted logistic regression on logit statistics (the
               big/little family's difficulty-aware router)
=============  =====================================================  ==========================

Scores take logits (N, K) as a torch tensor and return (N,) float32. The same function runs in
the trace simulation and in the runtime, so both make bitwise-identical decisions.

An :class:`EmittedScore` is the exception: a path computes it beside its logits (a slimmable subnet's Var
Gate, a big/little pair's learned router). A trace keeps it as its ``gate`` aux array (P, N, G) and the FLOPs
of each emitter in its meta ``gate_flops``; at run time the path's ``forward_gated(x, gate)`` returns it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np
import torch

from .check import number
from .errors import ConfigError, TraceError
from .registry import Registry

if TYPE_CHECKING:  # trace imports the runtime, which imports this module
    from .trace import Trace

SCORES: Registry[Callable[..., "Score"]] = Registry("score")


class Score:
    """A named function of logits; ``params`` are its settings (e.g. temperature)."""

    name: str = ""
    deterministic: bool = True  # False for scores that ignore the input (random)

    def __init__(self) -> None:
        self.params: dict = {}

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:  # (N, K) -> (N,)
        raise NotImplementedError

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params.items())
        return f"{self.name}({args})"

    @property
    def label(self) -> str:
        """Short human-readable name including settings, for tables and plots."""
        if not self.params:
            return self.name
        return self.name + "(" + ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                                           for k, v in self.params.items()) + ")"


def make_score(name: str, **params) -> Score:
    """Build the registered score ``name`` with settings ``params``."""
    try:
        return SCORES.get(name)(**params)
    except TypeError as e:
        raise ConfigError(f"bad settings {params} for score {name!r}: {e}") from None


@SCORES.register("max_softmax")
class MaxSoftmax(Score):
    name = "max_softmax"

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        return logits.float().softmax(-1).amax(-1)


@SCORES.register("margin")
class Margin(Score):
    name = "margin"

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        top2 = logits.float().softmax(-1).topk(2, dim=-1).values  # (N, 2)
        return top2[:, 0] - top2[:, 1]


@SCORES.register("entropy")
class NegEntropy(Score):
    name = "entropy"

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        logp = logits.float().log_softmax(-1)
        return (logp.exp() * logp).sum(-1)


@SCORES.register("energy")
class NegFreeEnergy(Score):
    """Negative free energy ``T * logsumexp(z / T)``; ``temperature`` T > 0 (1 is the paper's)."""

    name = "energy"

    def __init__(self, temperature: float = 1.0) -> None:
        number("energy temperature", temperature, lo=0, lo_open=True)
        super().__init__()
        self.params = {"temperature": float(temperature)}

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        t = self.params["temperature"]
        return t * torch.logsumexp(logits.float() / t, dim=-1)


@SCORES.register("random")
class RandomScore(Score):
    """Scores uniform in [0, 1) and unrelated to confidence: forwards a random share of inputs.

    Each input's score is a seeded hash of its logits (a random projection, then the fractional part of a
    large multiple of its sine), so the same input gets the same score in a trace and in the runtime, in
    any batch."""

    name = "random"
    deterministic = False

    def __init__(self, seed: int = 0) -> None:
        number("random score seed", seed, integer=True)
        super().__init__()
        self.params = {"seed": int(seed)}

    def projection(self, k: int) -> torch.Tensor:
        """The seeded random projection (k,) float64 for k classes (made once per k)."""
        cache = self.__dict__.setdefault("_projection", {})
        if k not in cache:
            cache[k] = torch.randn(k, generator=torch.Generator().manual_seed(self.params["seed"]), dtype=torch.float64)
        return cache[k]

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        z = logits.double()
        v = torch.sin(z @ self.projection(z.shape[-1]).to(z.device)).abs() * 43758.5453
        return (v - torch.floor(v)).float()  # the fractional part (v >= 0)


@SCORES.register("specialised")
class SpecialisedEnergy(Score):
    """The specialised student's router (EBJR eqs. 16-17) on K-class logits.

    ``classes`` are the C̄ popular classes; the others together stand for the "other" class, whose logit is
    ``logsumexp`` over them (exact for a :class:`~dyninfer.models.specialised.SpecialisedStudent`). The score
    is ``-F̄ = logsumexp(z[classes])`` when ``max(z[classes]) >= logsumexp(z[others])`` (the argmax is not
    "other"), else ``-inf``: any finite threshold sends those samples on; the threshold ``-inf`` (keep
    everything) keeps them too.

    Args:
        classes: distinct class indices, C̄ of them, fewer than the logits' K (checked on the first call).
    """

    name = "specialised"

    def __init__(self, classes=()) -> None:
        from .models.specialised import check_classes

        super().__init__()
        ok = isinstance(classes, (list, tuple)) and all(isinstance(c, int) and not isinstance(c, bool) and c >= 0
                                                        for c in classes)
        if not ok or not classes:
            raise ConfigError(f"the specialised score needs classes: a non-empty list of class indices (integers "
                              f">= 0), got {classes!r}")
        cls = check_classes(list(classes), max(classes) + 2)  # distinct; K is checked against the logits
        self.params = {"classes": cls}

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        from .models.specialised import check_classes

        z = logits.float()  # (N, K)
        cls = check_classes(self.params["classes"], z.shape[-1])
        mask = torch.zeros(z.shape[-1], dtype=torch.bool, device=z.device)
        mask[cls] = True
        inside, outside = z[:, mask], z[:, ~mask]  # (N, C̄), (N, K - C̄)
        neg_f = torch.logsumexp(inside, dim=-1)  # (N,) -F̄ over the popular classes
        other = torch.logsumexp(outside, dim=-1)  # (N,) the "other" logit
        keep = inside.amax(-1) >= other
        return torch.where(keep, neg_f, torch.full_like(neg_f, float("-inf")))


class EmittedScore(Score):
    """A score a path emits beside its logits (see the module doc): emitter ``gate`` of the path (an index into
    the ``G`` scores its ``forward_scored`` returns; -1: the last).

    It reads no logits: in a trace it is column ``gate`` of the ``gate`` aux array, at run time the path's
    ``forward_gated(x, gate)``. A stage scored by it also pays the emitter's FLOPs (:meth:`flops`)."""

    name = "emitted"
    emitter = "an emitted score"  # what emits it, for messages

    def __init__(self, gate: int = -1) -> None:
        number("gate", gate, integer=True)
        super().__init__()
        self.params = {"gate": int(gate)}

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        raise ConfigError(f"{self.emitter} is emitted by its path (forward_scored / forward_gated), not computed from "
                          f"logits; run it through its method's runtime")

    def from_trace(self, trace: "Trace", p: int) -> np.ndarray:
        """(N,) the score of path ``p`` of ``trace``."""
        if "gate" not in trace.aux:
            raise TraceError(f"this trace carries no scores of {self.emitter} (aux 'gate'); record it from the "
                             f"supernet's paths (SupernetPaths.record)")
        g = trace.aux["gate"]  # (P, N, G)
        if not -g.shape[2] <= self.params["gate"] < g.shape[2]:
            raise TraceError(f"the trace has {g.shape[2]} emitted scores; index {self.params['gate']} does not exist")
        out = g[p, :, self.params["gate"]].astype(np.float32)
        if np.isnan(out).any():
            raise TraceError(f"path {trace.paths[p]!r} of this trace emits no score ({self.emitter}); only paths that "
                             f"answer forward_scored can be scored by it")
        return out

    def head(self, model: torch.nn.Module):
        """A runtime stage head: ``x -> (logits, this score)``."""
        gate = self.params["gate"]

        def run(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return model.forward_gated(x, gate)  # (n, K), (n,): this emitter alone runs
        return run

    def flops(self, trace: "Trace") -> float:
        """Counted FLOPs per sample of this emitter, from the meta ``gate_flops`` of the trace's recording."""
        info = trace.meta.get("gate_flops")
        if not isinstance(info, dict) or "gate" not in info:
            raise TraceError(f"this trace does not carry the FLOPs of {self.emitter} (meta 'gate_flops'); record it "
                             f"again from the supernet's paths (SupernetPaths.record)")
        return float(info["gate"][self.params["gate"]])


STATISTICS = ("entropy", "variance", "max_softmax", "margin")  # the difficulty score's features, in order


def logit_statistics(logits: torch.Tensor) -> torch.Tensor:
    """(N, 4) float64 statistics of logits (N, K): entropy of the softmax, variance of the logits, max-softmax and
    margin (top-1 minus top-2 probability)."""
    z = logits.double()
    logp = z.log_softmax(-1)  # (N, K)
    p = logp.exp()
    top2 = p.topk(2, dim=-1).values  # (N, 2)
    return torch.stack([-(p * logp).sum(-1), z.var(-1, unbiased=False), top2[:, 0], top2[:, 0] - top2[:, 1]], 1)


@SCORES.register("difficulty")
class DifficultyScore(Score):
    """Difficulty-aware router: the log-odds that the answering head is right, from a logistic regression on
    :func:`logit_statistics` (standardised by ``mean`` and ``scale``). Fitted by :meth:`fit`; its parameters
    are plain numbers, so a fitted score saves and loads with its method like any other.

    Args:
        coef: the regression's 4 weights, one per statistic of :data:`STATISTICS`.
        intercept: its intercept.
        mean, scale: the statistics' standardisation (scale > 0).
    """

    name = "difficulty"

    def __init__(self, coef: Sequence[float] = (0.0,) * 4, intercept: float = 0.0,
                 mean: Sequence[float] = (0.0,) * 4, scale: Sequence[float] = (1.0,) * 4) -> None:
        super().__init__()
        vals = {"coef": coef, "mean": mean, "scale": scale}
        for k, v in vals.items():
            if not isinstance(v, (list, tuple)) or len(v) != len(STATISTICS) or any(
                    isinstance(x, bool) or not isinstance(x, (int, float)) or not np.isfinite(x) for x in v):
                raise ConfigError(f"difficulty score: {k} must be {len(STATISTICS)} finite numbers, got {v!r}")
        if any(x <= 0 for x in scale):
            raise ConfigError(f"difficulty score: scale must be positive, got {scale!r}")
        number("difficulty intercept", intercept)
        self.params = {"coef": [float(x) for x in coef], "intercept": float(intercept),
                       "mean": [float(x) for x in mean], "scale": [float(x) for x in scale]}

    @classmethod
    def fit(cls, logits: torch.Tensor | np.ndarray, correct: np.ndarray, *, C: float = 1.0) -> "DifficultyScore":
        """Fit on logits (N, K) of the answering head and whether it was right (N,) (scikit-learn's
        ``LogisticRegression``, L2 with inverse strength ``C``, on standardised statistics)."""
        from sklearn.linear_model import LogisticRegression

        x = logit_statistics(torch.as_tensor(logits)).numpy()  # (N, 4)
        y = np.asarray(correct, bool)
        mean, scale = x.mean(0), x.std(0)
        scale = np.where(scale > 1e-12, scale, 1.0)
        if y.all() or not y.any():  # one class only: a constant score (every sample alike)
            return cls(mean=mean.tolist(), scale=scale.tolist())
        lr = LogisticRegression(C=C, max_iter=1000).fit((x - mean) / scale, y)
        return cls(lr.coef_[0].tolist(), float(lr.intercept_[0]), mean.tolist(), scale.tolist())

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        s = logit_statistics(logits)  # (N, 4) float64
        p = {k: torch.tensor(v, dtype=torch.float64, device=s.device) for k, v in self.params.items() if k != "intercept"}
        return (((s - p["mean"]) / p["scale"]) @ p["coef"] + self.params["intercept"]).float()  # (N,)
