"""The learned router of a big/little pair (section 3.4 of the NAS-for-dynamic-inference paper, "learned router").

A small MLP reads what the little path has already computed — the little head's pooled features and two
statistics of its logits (normalised entropy and max-softmax) — and answers the probability that the input
should be *forwarded* to the big subnet. It costs one extra (F + 2) x hidden x 1 MLP per image and runs
nothing the little path did not run. Its weights travel in the supernet's checkpoint
(:func:`dyninfer.train.bigsmall.save_bigsmall`).

The paper leaves the MLP's layers and hidden width open; this one has a single hidden ReLU layer.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..check import number
from ..errors import InputError

N_STATS = 2  # logit statistics appended to the pooled features: normalised entropy, max-softmax


def logit_stats(logits: torch.Tensor) -> torch.Tensor:
    """(B, 2): entropy of softmax(logits) divided by log K (in [0, 1]) and the max softmax probability."""
    logp = F.log_softmax(logits, 1)  # (B, K)
    p = logp.exp()
    entropy = -(p * logp).sum(1) / math.log(max(2, logits.shape[1]))  # (B,)
    return torch.stack([entropy, p.max(1).values], 1)  # (B, 2)


class BigSmallRouter(nn.Module):
    """MLP ``[pooled features, entropy, max-softmax] -> hidden -> 1``; the output is the forward logit.

    Args:
        in_features: width F of the little head's pooled features.
        hidden: hidden units.
    """

    def __init__(self, in_features: int, hidden: int = 32) -> None:
        super().__init__()
        number("in_features", in_features, lo=1, integer=True)
        number("hidden", hidden, lo=1, integer=True)
        self.kwargs = {"in_features": int(in_features), "hidden": int(hidden)}
        self.mlp = nn.Sequential(nn.Linear(in_features + N_STATS, hidden), nn.ReLU(), nn.Linear(hidden, 1))

    def forward(self, features: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        """Forward logits (B,) from the little path's pooled features (B, F) and logits (B, K)."""
        if features.ndim != 2 or features.shape[1] != self.kwargs["in_features"] or logits.shape[0] != features.shape[0]:
            raise InputError(f"the router reads pooled features (B, {self.kwargs['in_features']}) and logits (B, K); "
                             f"got {tuple(features.shape)} and {tuple(logits.shape)}")
        z = torch.cat([features, logit_stats(logits)], 1)  # (B, F + 2)
        return self.mlp(z).squeeze(1)  # (B,)

    def forward_probability(self, features: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        """Probability (B,) that the input is forwarded to the big subnet."""
        return torch.sigmoid(self(features, logits))


class RoutedSubnet(nn.Module):
    """The little path of a big/little pair with its router: a static little subnet
    (:class:`~dyninfer.models.bigsmall.BigSmallSubnet`) that also emits the router's *keep* score.

    ``forward`` is the subnet's logits alone; ``forward_scored`` / ``forward_gated`` add the keep score
    ``1 - p_forward`` (one emitter: index 0), which a :class:`~dyninfer.paths.SupernetPaths` records in a trace and a
    cascade stage emits at run time (:class:`~dyninfer.scores.EmittedScore`).
    """

    def __init__(self, subnet: nn.Module, router: BigSmallRouter) -> None:
        super().__init__()
        self.subnet, self.router = subnet, router
        self.input_shape = getattr(subnet, "input_shape", None)

    def _pooled(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        s = self.subnet
        f = s.head.pool(s.layers(s.stem(s.normalize(x))))  # (B, F)
        return s.head.fc(f), f  # (B, K), (B, F)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._pooled(x)[0]  # (B, K)

    def forward_gated(self, x: torch.Tensor, gate: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits (B, K), keep score 1 - p_forward (B,)); ``gate`` must name the one emitter (0 or -1)."""
        if gate not in (0, -1):
            raise InputError(f"a big/little little path emits one score (the router's); gate {gate} does not exist")
        logits, f = self._pooled(x)
        return logits, 1 - self.router.forward_probability(f, logits)

    def forward_scored(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits (B, K), keep scores (B, 1))."""
        logits, keep = self.forward_gated(x, 0)
        return logits, keep[:, None]

    def router_flops(self) -> int:
        """Counted FLOPs per sample of the router's MLP (on features and the two logit statistics)."""
        from ..runtime.cost import count_flops

        return count_flops(self.router.mlp, (self.router.kwargs["in_features"] + N_STATS,))
