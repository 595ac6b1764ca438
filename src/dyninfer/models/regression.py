"""An energy-based regressor (EBJR section 2.2; Gustafsson et al., ECCV 2020) on a small-image CNN backbone.

One module gives everything a router needs. For images x it computes the backbone's pooled features h(x) and

* a Gaussian head: the base prediction mu(x) and log sigma^2(x) (trained by Gaussian NLL);
* an energy head S(x, y) = softplus(MLP(W_h h(x) + W_y e(u))) >= 0, with u = (y - c) / r the target in units of
  the target range [c - r, c + r] and e(u) = ReLU(W u + b) an embedding of u; S(x, y) = -inf outside the range. The
  maximum-likelihood loss does not see a shift S + g(x); the floor at 0 removes that freedom, so a density
  can only sharpen by raising its peak above the floor, and -F measures the peak's mass (the evidence), as
  the logits' log-sum-exp does for a classifier;
* the free energy F(x) = -log int exp(S(x, y)) dy, estimated by importance sampling:

      -F(x) ~= log( 2r + 1/M sum_m (exp(S(x, y_m)) - 1) / q(y_m | x) ),   y_m ~ q(. | x),

  where the proposal q is an equal mixture of K Gaussians N(mu(x), (r sigma_k)^2) around the base prediction,
  truncated to the range, and the uniform density on the range (which keeps the estimate consistent whatever
  S looks like far from mu), with the floor as control variate (int exp(S) = 2r + int (exp(S) - 1): only the
  peak is sampled). The draws are *fixed*: n = M / (K + 1) levels (j + 1/2) / n (a buffer) per component,
  mapped through each component's inverse CDF (the standard-normal quantiles Phi^-1((j + 1/2) / n) when the
  range does not truncate; mid-points of the range for the uniform). The estimate is therefore a
  deterministic function of x (a trace and a runtime agree exactly) with the low variance of stratified
  sampling.

``forward(x)`` returns (N, 3): [prediction mu(x) clipped to the range, -F(x), log sigma^2(x)], in target
units (log-variance of the target, -F of the density over the target). The energy head over the M samples is
part of the module's forward pass, so FLOP counters see it (M x (2 E + 2 E H + 2 H^2 + 2 H) FLOPs per image).
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

from ..check import number
from ..data.datasets import DataSpec
from ..errors import ConfigError, InputError
from .registry import create_model, register_backbone

DEFAULT_SIGMAS = (0.02, 0.08, 0.25)  # proposal widths, in units of the half range r


class EnergyRegressor(nn.Module):
    """Energy-based regressor on a CNN backbone that has ``forward_features`` and ``feature_dims``.

    Args:
        backbone: e.g. ``create_model("cnn-s", spec)`` (its classifier head is dropped).
        target_range: (low, high) of the target; predictions are clipped to it and the density lives on it.
        samples: M, importance samples per image (a multiple of ``len(sigmas) + 1``).
        sigmas: widths of the Gaussian proposal components, in units of the half range.
        hidden: width H of the energy MLP.
        embed: width E of the target embedding e(u) = ReLU(W u + b) (piecewise linear in u, as in Gustafsson et al.).
    """

    def __init__(self, backbone: nn.Module, *, target_range: Sequence[float], samples: int = 64,
                 sigmas: Sequence[float] = DEFAULT_SIGMAS, hidden: int = 32, embed: int = 16) -> None:
        super().__init__()
        if not hasattr(backbone, "forward_features") or not hasattr(backbone, "feature_dims"):
            raise ConfigError(f"an EnergyRegressor needs a backbone with forward_features and feature_dims "
                              f"(e.g. cnn-s), got {type(backbone).__name__}")
        lo, hi = (float(v) for v in target_range)
        if not (math.isfinite(lo) and math.isfinite(hi) and hi > lo):
            raise ConfigError(f"target_range must be (low, high) with low < high, got {tuple(target_range)!r}")
        sigmas = tuple(float(s) for s in sigmas)
        if not sigmas or any(not (s > 0 and math.isfinite(s)) for s in sigmas):
            raise ConfigError(f"sigmas must be positive widths, got {sigmas!r}")
        k = len(sigmas) + 1
        number("samples", samples, lo=k, integer=True)
        if samples % k:
            raise ConfigError(f"samples={samples} must be a multiple of {k} (one share per proposal component: "
                              f"{len(sigmas)} Gaussians and the uniform)")
        number("hidden", hidden, lo=1, integer=True)
        number("embed", embed, lo=1, integer=True)
        self.backbone = backbone
        if hasattr(backbone, "head"):
            backbone.head = nn.Identity()  # the classifier is not used
        d = int(backbone.feature_dims[-1])
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.gauss = nn.Linear(d, 2)  # (mu, log sigma^2) in range units
        self.energy_x = nn.Linear(d, hidden)
        self.embed = nn.Sequential(nn.Linear(1, embed), nn.ReLU())
        self.energy_y = nn.Linear(embed, hidden, bias=False)
        self.energy_out = nn.Sequential(nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, 1))
        self.samples, self.sigmas_tuple = int(samples), sigmas
        self.target_range = (lo, hi)
        n = samples // k
        self.register_buffer("centre", torch.tensor((lo + hi) / 2), persistent=False)
        self.register_buffer("radius", torch.tensor((hi - lo) / 2), persistent=False)
        self.register_buffer("sigmas", torch.tensor(sigmas, dtype=torch.float32), persistent=False)
        self.register_buffer("levels", (torch.arange(n, dtype=torch.float32) + 0.5) / n, persistent=False)  # (n,)

    # ------------------------------------------------------------------ pieces
    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled backbone features (N, D)."""
        return self.pool(self.backbone.forward_features(x))

    def gaussian(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mu, log sigma^2), each (N,), in range units (u = (y - c) / r)."""
        g = self.gauss(h)  # (N, 2)
        return g[:, 0], g[:, 1].clamp(-20.0, 10.0)

    def to_unit(self, y: torch.Tensor) -> torch.Tensor:
        return (y - self.centre) / self.radius

    def energy_u(self, h: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """S at targets ``u`` (N, M) in range units for features ``h`` (N, D): (N, M); -inf outside [-1, 1]."""
        z = self.energy_x(h).unsqueeze(1) + self.energy_y(self.embed(u.unsqueeze(-1)))  # (N, M, H)
        s = nn.functional.softplus(self.energy_out(z).squeeze(-1))  # (N, M), >= 0
        return s.masked_fill(u.abs() > 1, float("-inf"))

    def energy(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """S(x, y): the energy score of images x (N, C, H, W) at targets y (N, M) in target units -> (N, M)."""
        return self.energy_u(self.features(x), self.to_unit(y))

    def _truncation(self, centre: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Standard-normal CDF at the range ends for each Gaussian component: (Phi(a), Phi(b) - Phi(a)), (N, K)."""
        c = centre.clamp(-1.0, 1.0)[:, None]  # (N, 1)
        fa = torch.special.ndtr((-1.0 - c) / self.sigmas)  # (N, K)
        fb = torch.special.ndtr((1.0 - c) / self.sigmas)
        return fa, (fb - fa).clamp_min(1e-12)

    def draw(self, centre: torch.Tensor, level: torch.Tensor, comp: torch.Tensor) -> torch.Tensor:
        """Proposal draws in range units from uniform levels (N, M) in (0, 1): component ``comp`` (N, M) k < K is
        the Gaussian N(centre, sigma_k^2) truncated to [-1, 1] (inverse CDF), k = K the uniform on [-1, 1]."""
        fa, mass = self._truncation(centre)  # (N, K)
        k = comp.clamp(max=self.sigmas.numel() - 1)
        p = (fa.gather(1, k) + level * mass.gather(1, k)).clamp(1e-7, 1 - 1e-7)
        g = centre.clamp(-1.0, 1.0)[:, None] + self.sigmas[k] * torch.special.ndtri(p)
        return torch.where(comp == self.sigmas.numel(), 2 * level - 1, g).clamp(-1.0, 1.0)

    def proposal(self, mu: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The fixed draws around ``mu`` (N,) in range units and their log proposal density: (N, M) each."""
        n, k = self.levels.shape[0], self.sigmas.numel() + 1
        level = self.levels.repeat(k).expand(mu.shape[0], -1)  # (N, M)
        comp = torch.arange(k, device=mu.device).repeat_interleave(n).expand(mu.shape[0], -1)  # (N, M)
        u = self.draw(mu, level, comp)
        return u, self.log_q(u, mu)

    def log_q(self, u: torch.Tensor, centre: torch.Tensor) -> torch.Tensor:
        """log of the mixture density q(u | centre) (range units) at ``u`` (N, M) in [-1, 1]: (N, M)."""
        s = self.sigmas[None, None, :]  # (1, 1, K)
        _, mass = self._truncation(centre)  # (N, K)
        z = (u.unsqueeze(-1) - centre.clamp(-1.0, 1.0)[:, None, None]) / s  # (N, M, K)
        comp = -0.5 * z * z - torch.log(s) - 0.5 * math.log(2 * math.pi) - torch.log(mass)[:, None, :]
        unif = torch.full_like(u, -math.log(2.0)).unsqueeze(-1)
        return torch.logsumexp(torch.cat([comp, unif], -1), -1) - math.log(s.shape[-1] + 1)

    def log_partition_u(self, s: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
        """Importance-sampling estimate of log int_{-1}^{1} exp(S) du from energies s (N, M) (-inf outside the
        range) at draws with log proposal density log_q (N, M), with the floor as control variate:
        int exp(S) = 2 + int (exp(S) - 1), and only the second part is sampled: (N,)."""
        m = math.log(s.shape[1])
        a = torch.logsumexp((s - log_q).masked_fill(torch.isinf(s), float("-inf")), 1) - m  # log mean exp(S) / q
        b = torch.logsumexp((-log_q).masked_fill(torch.isinf(s), float("-inf")), 1) - m  # log mean 1[in] / q
        top = torch.maximum(a, torch.full_like(a, math.log(2.0)))
        return top + torch.log(torch.exp(a - top) - torch.exp(b - top) + torch.exp(math.log(2.0) - top))

    # ------------------------------------------------------------------ the module
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3): [prediction (target units), -F (log of the density's normaliser over the target), log variance]."""
        if x.ndim != 4:
            raise InputError(f"an EnergyRegressor takes images (N, C, H, W), got shape {tuple(x.shape)}")
        h = self.features(x)  # (N, D)
        mu, logvar = self.gaussian(h)  # (N,), (N,)
        u, log_q = self.proposal(mu)  # (N, M)
        neg_f = self.log_partition_u(self.energy_u(h, u), log_q) + torch.log(self.radius)  # dy = r du
        pred = self.centre + self.radius * mu.clamp(-1.0, 1.0)
        return torch.stack([pred, neg_f, logvar + 2 * torch.log(self.radius)], 1)


@register_backbone("energy-regressor")
def energy_regressor(spec: DataSpec, *, base: str = "cnn-s", target_range: Sequence[float] = (-60.0, 60.0),
                     samples: int = 64, sigmas: Sequence[float] = DEFAULT_SIGMAS, hidden: int = 32,
                     embed: int = 16, base_kwargs: dict | None = None) -> EnergyRegressor:
    """An :class:`EnergyRegressor` on the backbone ``base`` (a registered CNN with ``forward_features``)."""
    backbone = create_model(base, spec, **dict(base_kwargs or {}))
    return EnergyRegressor(backbone, target_range=target_range, samples=samples, sigmas=sigmas, hidden=hidden,
                           embed=embed)


__all__ = ["DEFAULT_SIGMAS", "EnergyRegressor", "energy_regressor"]
