"""The selection policy (ABS sections 3.3-3.4) and its REINFORCE training on traces.

The policy maps an input vector (pooled shared features, optionally with the complexity
components) to a distribution over backbones: ``pi(a|f) = softmax(W2 ReLU(W1 f))``. It is trained
with REINFORCE and a learned baseline on ``R = lam * A + (1 - lam) * (1 - T_norm)``, where ``A`` is
whether backbone ``a`` got the sample right (read from the calibration trace, so no backbone runs
again) and ``T_norm`` its measured time per image divided by the slowest backbone's.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ...check import choice, number
from ...errors import ConfigError
from ...runtime.cost import torch_threads

MODES = ("greedy", "sampled")


@dataclass
class PolicyConfig:
    """Hyperparameters of the policy network and its REINFORCE training."""

    hidden: int = 64              # width of the hidden layer W1
    epochs: int = 40              # passes over the training part of the calibration set
    batch_size: int = 256         # samples per policy-gradient step
    lr: float = 3e-3              # Adam learning rate
    weight_decay: float = 1e-4    # Adam L2 penalty
    entropy_coef: float = 1e-3    # entropy bonus (keeps exploring early on)
    value_coef: float = 0.5       # weight of the baseline's squared error
    baseline: str = "learned"     # "learned" (value head V(f)), "mean" (running mean reward) or "none"
    val_fraction: float = 0.2     # calibration share held out to pick the best epoch
    threads: int | None = 1       # torch threads while training (tiny matmuls: 1 is fastest; None keeps the setting)
    seed: int = 0                 # initialisation, sampling, split

    def __post_init__(self) -> None:
        choice("baseline", self.baseline, ("learned", "mean", "none"))
        number("val_fraction", self.val_fraction, lo=0, hi=1, hi_open=True)
        for name in ("hidden", "epochs", "batch_size"):
            number(name, getattr(self, name), lo=1, integer=True)
        number("lr", self.lr, lo=0, lo_open=True)
        for name in ("weight_decay", "entropy_coef", "value_coef"):
            number(name, getattr(self, name), lo=0)
        number("threads", self.threads, lo=1, integer=True, none_ok=True)
        number("seed", self.seed, integer=True)


class PolicyNet(nn.Module):
    """Two-layer policy over P backbones with a value head used as the REINFORCE baseline.

    Args:
        in_dim: input size D.
        n_paths: number of backbones P.
        hidden: hidden width.

    Buffers ``mean`` and ``std`` (D,) standardise inputs; set them with :meth:`set_normalisation`.
    """

    def __init__(self, in_dim: int, n_paths: int, hidden: int = 64) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(in_dim))
        self.register_buffer("std", torch.ones(in_dim))
        self.body = nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU())  # W1, ReLU
        self.head = nn.Linear(hidden, n_paths)  # W2
        self.value = nn.Linear(hidden, 1)  # baseline V(f), training only

    def set_normalisation(self, inputs: torch.Tensor) -> None:
        """Standardise inputs with the mean and std of ``inputs`` (N, D)."""
        self.mean.copy_(inputs.mean(0))
        self.std.copy_(inputs.std(0).clamp_min(1e-6))

    def forward(self, f: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.body((f - self.mean) / self.std)  # (N, hidden)
        return self.head(h), self.value(h).squeeze(1)  # logits (N, P), value (N,)

    def logits(self, f: torch.Tensor) -> torch.Tensor:
        return self.head(self.body((f - self.mean) / self.std))  # (N, P)


def rewards(correct: np.ndarray, t_norm: np.ndarray, lam: float) -> np.ndarray:
    """Reward of every (sample, backbone): ``lam * A + (1 - lam) * (1 - T_norm)``.

    Args:
        correct: (P, N) bool, backbone p right on sample n.
        t_norm: (P,) normalised time per image in [0, 1].
        lam: accuracy weight in [0, 1].

    Returns:
        (N, P) float32.
    """
    if not 0.0 <= lam <= 1.0:
        raise ConfigError(f"lambda must be in [0, 1], got {lam}")
    t_norm = np.asarray(t_norm, float)
    if t_norm.shape != (correct.shape[0],):
        raise ConfigError(f"need one time per backbone ({correct.shape[0]}), got {t_norm.shape}")
    return (lam * correct.T.astype(np.float32) + (1 - lam) * (1 - t_norm[None])).astype(np.float32)


def choose(logits: torch.Tensor, mode: str = "greedy", generator: torch.Generator | None = None) -> torch.Tensor:
    """Backbone per sample from policy logits (N, P): argmax (greedy) or a sample from softmax.

    Returns:
        (N,) int64 indices.
    """
    if mode == "greedy":
        return logits.argmax(1)
    if mode == "sampled":
        return torch.multinomial(F.softmax(logits.float(), 1), 1, generator=generator).squeeze(1)
    raise ConfigError(f"unknown selection mode {mode!r}; use one of {list(MODES)}")


@dataclass
class TrainHistory:
    """Per-epoch mean sampled reward (train) and greedy reward (validation); best epoch kept."""

    train_reward: list[float] = field(default_factory=list)
    val_reward: list[float] = field(default_factory=list)
    best_epoch: int = -1
    val_index: np.ndarray = field(default_factory=lambda: np.zeros(0, int))  # calibration rows held out


def train_reinforce(inputs: torch.Tensor, reward: np.ndarray, config: PolicyConfig | None = None, *,
                    progress: bool = False, desc: str = "policy") -> tuple[PolicyNet, TrainHistory]:
    """Train a :class:`PolicyNet` with REINFORCE and a baseline on per-sample rewards.

    Only the reward of the sampled backbone enters the gradient (``-(R - b) log pi(a|f)``), as in
    the paper; the full reward table just spares re-running backbones.

    Args:
        inputs: (N, D) float policy inputs.
        reward: (N, P) reward of each backbone on each sample (see :func:`rewards`).
        config: hyperparameters.
        progress: show a progress bar over epochs.

    Returns:
        (policy in eval mode with the best validation epoch's weights, history).
    """
    cfg = config or PolicyConfig()
    with torch_threads(cfg.threads):
        return _train(inputs, reward, cfg, progress, desc)


def _train(inputs: torch.Tensor, reward: np.ndarray, cfg: PolicyConfig, progress: bool,
           desc: str) -> tuple[PolicyNet, TrainHistory]:
    n, p = reward.shape
    if inputs.ndim != 2 or inputs.shape[0] != n:
        raise ConfigError(f"inputs {tuple(inputs.shape)} do not fit rewards {reward.shape} (N, D) / (N, P)")
    if n < 2:
        raise ConfigError("need at least 2 calibration samples to train a policy")
    torch.manual_seed(cfg.seed)
    g = torch.Generator().manual_seed(cfg.seed)
    perm = torch.randperm(n, generator=g)
    n_val = int(round(cfg.val_fraction * n))
    val_idx, tr_idx = perm[:n_val], perm[n_val:]
    hist = TrainHistory(val_index=np.sort(val_idx.numpy()))
    x = inputs.float()
    r = torch.from_numpy(np.asarray(reward, np.float32))  # (N, P)
    net = PolicyNet(x.shape[1], p, cfg.hidden)
    net.set_normalisation(x[tr_idx])
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    best_state, best_val = None, -np.inf
    running = float(r[tr_idx].mean())
    for epoch in tqdm(range(cfg.epochs), desc=desc, disable=not progress, leave=False):
        net.train()
        order = tr_idx[torch.randperm(len(tr_idx), generator=g)]
        total, count = 0.0, 0
        for i in range(0, len(order), cfg.batch_size):
            idx = order[i:i + cfg.batch_size]
            logits, value = net(x[idx])  # (B, P), (B,)
            logp = F.log_softmax(logits, 1)  # (B, P)
            a = torch.multinomial(logp.exp().detach(), 1, generator=g).squeeze(1)  # (B,)
            ra = r[idx, a]  # (B,) reward of the sampled backbone
            if cfg.baseline == "learned":
                b = value.detach()
            elif cfg.baseline == "mean":
                b = torch.full_like(ra, running)
            else:
                b = torch.zeros_like(ra)
            adv = ra - b  # (B,)
            entropy = -(logp.exp() * logp).sum(1).mean()
            loss = -(adv * logp.gather(1, a[:, None]).squeeze(1)).mean() - cfg.entropy_coef * entropy
            if cfg.baseline == "learned":
                loss = loss + cfg.value_coef * F.mse_loss(value, ra)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            running = 0.95 * running + 0.05 * float(ra.mean())
            total += float(ra.sum())
            count += len(idx)
        hist.train_reward.append(total / count)
        net.eval()
        with torch.no_grad():
            ev = val_idx if n_val > 0 else tr_idx
            greedy = net.logits(x[ev]).argmax(1)
            val = float(r[ev, greedy].mean())
        hist.val_reward.append(val)
        if val > best_val + 1e-9:
            best_val, best_state, hist.best_epoch = val, copy.deepcopy(net.state_dict()), epoch
    net.load_state_dict(best_state)
    return net.eval(), hist
