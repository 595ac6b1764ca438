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
=============  =====================================================  ==========================

Scores take logits (N, K) as a torch tensor and return (N,) float32. The same function runs in
the trace simulation and in the runtime, so both make bitwise-identical decisions.
"""

from __future__ import annotations

from typing import Callable

import torch

from .check import number
from .errors import ConfigError
from .registry import Registry

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
