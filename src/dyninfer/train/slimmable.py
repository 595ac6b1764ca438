"""Training an Adapta-ResNet supernet: teacher, Cascade Method, locking-in, δ substitutes, Var Gates.

Phases, each written to its own checkpoint (atomically) so an interrupted run resumes after the last
finished phase:

1. **teacher** — the full-width network trained with :func:`~dyninfer.train.trainer.train` (cached like
   every backbone, :func:`~dyninfer.train.checkpoint.cached_model`); the student starts from its weights;
2. **cascade** — stages trained one after another (stem with stage 1, the classifier with stage 4),
   everything else frozen. The input of stage n is the student's own earlier stages at a random
   configuration. The loss of a subnet is eq. (1)-(2): MSE at the anchor plus MSE of the downstream
   teacher anchors (and logits) reached by running the subnet's anchor through the teacher's later
   stages. Per step the Multi-Dimensional Sandwich Rule (eq. 3) runs the largest subnet, the corners of
   the stage's dimensions and ``random_subnets`` random ones, mixing teacher and largest-subnet targets
   with weight ``v``;
3. **lock** — every non-δ weight trained together at ``lock_lr`` on whole-network configurations (uniform
   largest and smallest, plus random ones), anchors and logits against the teacher;
4. **delta cascade** and **delta lock** — the same with only the δ substitutes trainable;
5. **gates** — each Var Gate for ``gate_epochs`` with everything else frozen, on anchors of random
   configurations: a detection head distilled (soft cross-entropy) from the largest subnet and a variance
   head trained against a pseudo-Dirac target of variance ``gate_lambda`` centred on its logits (eq. 4);
6. **bn** (``bn`` norm only) — switchable batch-norm statistics re-estimated over the uniform configurations.

Two baselines train the same supernet type from scratch, one phase per epoch (``usnet1``, ``usnet2``, ...),
without a teacher, δ substitutes or Var Gates (``recipe``):

* ``usnet`` (US-Net, Yu & Huang 2019) — per step the sandwich rule over uniform widths (the largest with
  the labels, the smallest and two random widths distilled in place from the largest's softmax), SGD with
  Nesterov momentum, a linear warm-up (5% of the steps) and a cosine schedule on the subnets' mean loss,
  then BN recalibration (``bn`` norm);
* ``dsnet`` (DS-Net supernet training, Li et al. 2021, its gate left out) — the same sandwich, the smaller
  subnets distilled from an exponential moving average of the supernet at its largest width (in-place
  ensemble bootstrapping), then BN recalibration.

``sampling="random3"`` replaces the sandwich by three random stage-wise configurations per step (of the
4^4 width choices): US-Net's then learn from the labels, DS-Net's from the labels and the moving average, half
each (without the largest subnet in the step no label would reach the network).
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import json
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ..check import choice, flag, number
from ..data.datasets import Dataset, Split
from ..errors import ConfigError
from ..io import cache_dir
from ..models.adapta import STAGES, AdaptaResNet, check_same_shape
from ..models.elastic import WIDTHS, recalibrate_bn
from ..registry import check_keys
from .checkpoint import architecture_signature, cache_key, cached_model, load_state, read_checkpoint, save_checkpoint
from .recipe import Recipe
from .trainer import accuracy, shuffled_batches


@dataclass(frozen=True)
class SlimmableTraining:
    """How an Adapta-ResNet supernet is trained (see the module doc). Unknown keys in :meth:`from_dict` are errors."""

    teacher: Recipe = field(default_factory=lambda: Recipe(epochs=10))  # the full-width teacher
    stage_epochs: tuple[int, ...] = (3, 4, 5, 6)  # cascade epochs of stem+stage 1, 2, 3, 4+classifier
    lock_epochs: int = 7            # locking-in epochs (also of the δ locking-in)
    lr: float = 1e-3                # Adam learning rate of the cascades
    lock_lr: float = 1e-4           # Adam learning rate of locking-in
    batch_size: int = 64            # samples per optimiser step
    v: float = 0.5                  # eq. (3): weight of the teacher's targets against the largest subnet's
    random_subnets: int = 1         # random configurations per step beside the sandwich corners
    delta: bool = True              # train the δ substitutes (second cascade)
    gate_epochs: int = 1            # epochs per Var Gate
    gate_lr: float = 1e-4           # Adam learning rate of the Var Gates
    gate_lambda: float = 1e-4       # variance of the pseudo-Dirac target
    gate_kl: str = "gp"             # "pg": |KL(P||G)| as eq. (4) writes it; "gp": KL(G||P) (see VarGate loss)
    bn_images: int = 2048           # training images that re-estimate switchable batch-norm statistics
    eval_images: int = 1000         # calibration images scoring the uniform widths after each phase
    train_images: int | None = None  # training images of the supernet's phases (None: all; the teacher uses all)
    recipe: str = "adapta"          # "adapta" (the phases above), or the baselines "usnet" / "dsnet"
    sampling: str = "sandwich"      # baselines: "sandwich" (4 uniform widths per step) or "random3"
    baseline_epochs: int = 10       # baselines: epochs (one phase each)
    baseline_lr: float = 0.05       # baselines: peak SGD learning rate (cosine to 0 over the epochs)
    baseline_wd: float = 5e-5       # baselines: weight decay
    ema: float = 0.999              # dsnet: momentum of the moving-average supernet, per step

    def __post_init__(self) -> None:
        if not isinstance(self.teacher, Recipe):
            raise ConfigError(f"teacher must be a Recipe, got {self.teacher!r}")
        if (not isinstance(self.stage_epochs, (tuple, list)) or len(self.stage_epochs) != STAGES
                or any(isinstance(e, bool) or not isinstance(e, int) or e < 1 for e in self.stage_epochs)):
            raise ConfigError(f"stage_epochs must be {STAGES} positive integers, got {self.stage_epochs!r}")
        number("lock_epochs", self.lock_epochs, lo=0, integer=True)
        number("lr", self.lr, lo=0, lo_open=True)
        number("lock_lr", self.lock_lr, lo=0, lo_open=True)
        number("batch_size", self.batch_size, lo=2, integer=True)
        number("v", self.v, lo=0, hi=1)
        number("random_subnets", self.random_subnets, lo=1, integer=True, hint=" (eq. 3 needs at least one)")
        flag("delta", self.delta)
        number("gate_epochs", self.gate_epochs, lo=1, integer=True)
        number("gate_lr", self.gate_lr, lo=0, lo_open=True)
        number("gate_lambda", self.gate_lambda, lo=0, lo_open=True)
        choice("gate_kl", self.gate_kl, ("pg", "gp"))
        number("bn_images", self.bn_images, lo=1, integer=True)
        number("eval_images", self.eval_images, lo=1, integer=True)
        number("train_images", self.train_images, lo=2, integer=True, none_ok=True)
        choice("recipe", self.recipe, RECIPES)
        choice("sampling", self.sampling, ("sandwich", "random3"))
        if self.recipe == "adapta" and self.sampling != "sandwich":
            raise ConfigError("AdaptaNet's cascade always runs its sandwich rule (set random_subnets for more random "
                              "configurations); sampling='random3' is for the usnet and dsnet baselines")
        number("baseline_epochs", self.baseline_epochs, lo=1, integer=True)
        number("baseline_lr", self.baseline_lr, lo=0, lo_open=True)
        number("baseline_wd", self.baseline_wd, lo=0)
        number("ema", self.ema, lo=0, hi=1, hi_open=True)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["stage_epochs"] = list(self.stage_epochs)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "SlimmableTraining":
        check_keys("SlimmableTraining", dict(d), {f.name for f in fields(cls)})
        d = dict(d)
        if isinstance(d.get("teacher"), Mapping):
            d["teacher"] = Recipe.from_dict(dict(d["teacher"]))
        if isinstance(d.get("stage_epochs"), list):
            d["stage_epochs"] = tuple(d["stage_epochs"])
        return cls(**d)


# ---------------------------------------------------------------------------------------- sandwich rule

def sandwich(dims: Mapping[str, Sequence[Any]], rng: np.random.Generator, random_subnets: int = 1) -> list[dict]:
    """The subnets of one step of the Multi-Dimensional Sandwich Rule.

    Args:
        dims: dimension -> its values, largest first (e.g. ``{"rho": WIDTHS, "delta": (False, True)}``).
        rng: source of the random configurations.
        random_subnets: random configurations beside the corners.

    Returns:
        the corners of every dimension's extremes (2^|D| of them for the dimensions with two or more values;
        the first is the largest subnet), then ``random_subnets`` random configurations.
    """
    names = list(dims)
    extremes = [list(dict.fromkeys((dims[k][0], dims[k][-1]))) for k in names]
    corners = [dict(zip(names, c)) for c in itertools.product(*extremes)]
    rand = [{k: dims[k][int(rng.integers(len(dims[k])))] for k in names} for _ in range(random_subnets)]
    return corners + rand


# ---------------------------------------------------------------------------------------- losses

def teacher_targets(teacher: AdaptaResNet, x: torch.Tensor) -> list[torch.Tensor]:
    """The teacher's four anchors and its logits on ``x`` (no gradient)."""
    with torch.no_grad():
        a = teacher.anchors(x)
        return [*a, teacher.forward_head(a[-1])]


def downstream(teacher: AdaptaResNet, s: int, anchor: torch.Tensor, head: nn.Module | None = None) -> list[torch.Tensor]:
    """Eq. (2): ``anchor`` of stage ``s`` and what the teacher's later stages and head make of it.

    Returns [ŷ_s, ŷ'_{s+1}, ..., ŷ'_4, logits]; ``head`` replaces the teacher's classifier (the student's own,
    trained with the last stage)."""
    out, h = [anchor], anchor
    for i in range(s + 1, STAGES):
        h = teacher.run_stage(i, h)
        out.append(h)
    out.append((head or teacher.head)(h.mean((2, 3))))
    return out


def chain_mse(a: Sequence[torch.Tensor], b: Sequence[torch.Tensor]) -> torch.Tensor:
    """Eq. (1): the sum of the MSEs of corresponding anchors (and logits)."""
    return sum(F.mse_loss(x, y) for x, y in zip(a, b))  # type: ignore[return-value]


def sandwich_loss(outs: Sequence[Sequence[torch.Tensor]], targets: Sequence[torch.Tensor], v: float,
                  largest_trainable: bool = True) -> torch.Tensor:
    """Eq. (3): the largest subnet's loss against the teacher plus the mean over the other subnets of
    ``v`` x (loss against the teacher) + (1 - v) x (loss against the largest subnet).

    Args:
        outs: per subnet, its chain of outputs; the first subnet is the largest.
        targets: the teacher's chain.
        largest_trainable: add the largest subnet's own term (False when none of its weights train).
    """
    largest = [t.detach() for t in outs[0]]
    rest = outs[1:]
    mix = sum(v * chain_mse(o, targets) + (1 - v) * chain_mse(o, largest) for o in rest) / max(1, len(rest))
    return (chain_mse(outs[0], targets) if largest_trainable else 0.0) + mix  # type: ignore[return-value]


def gate_loss(det: torch.Tensor, logvar: torch.Tensor, largest: torch.Tensor, *, lam: float = 1e-4,
              kl: str = "gp", temperature: float = 1.0) -> torch.Tensor:
    """Eq. (4): |KL| between the gate's normal P(det, exp(logvar)) and the pseudo-Dirac G(largest, lam), plus
    the soft cross-entropy of the detection head against the largest subnet's softmax.

    ``kl="pg"`` is KL(P||G), as eq. (4) writes it; its minimum over the variance is ``lam`` whatever the
    error, so the variance head learns no confidence from it. ``kl="gp"`` is KL(G||P) (the KL loss of
    He et al. that the gates follow), minimised by variance ``lam + (largest - det)^2``: large where the
    gate's detection misses the largest subnet.

    The error is taken between log-probabilities (log-softmax of both), not raw logits: logits grow with the
    network's certainty, so a raw-logit error, and the variance learnt from it, was largest on the easiest
    images (measured on Fashion-MNIST: accuracy fell as the gates' confidence rose).
    """
    d2 = (F.log_softmax(largest, 1) - F.log_softmax(det, 1)) ** 2  # (B, K)
    if kl == "pg":
        k = 0.5 * (np.log(lam) - logvar + (logvar.exp() + d2) / lam - 1)
    else:
        k = 0.5 * (logvar - np.log(lam) + (lam + d2) * torch.exp(-logvar) - 1)
    soft = -(F.softmax(largest / temperature, 1) * F.log_softmax(det / temperature, 1)).sum(1).mean()
    return k.mean().abs() + soft


# ---------------------------------------------------------------------------------------- phases

def _freeze(net: nn.Module, trainable: Sequence[nn.Module]) -> list[nn.Parameter]:
    for p in net.parameters():
        p.requires_grad_(False)
    params = []
    for m in trainable:
        for p in m.parameters():
            p.requires_grad_(True)
            params.append(p)
    return params


def _random_prefix(student: AdaptaResNet, rng: np.random.Generator, delta: bool) -> dict:
    rho = [float(rng.choice(WIDTHS)) for _ in range(STAGES)]
    return {"rho": rho, "delta": [delta and bool(rng.integers(2)) and d > 1 for d in student.depths]}


def stage_step(student: AdaptaResNet, teacher: AdaptaResNet, s: int, x: torch.Tensor, rng: np.random.Generator, *,
               v: float, random_subnets: int, delta_phase: bool) -> tuple[torch.Tensor, int]:
    """The cascade loss of stage ``s`` on batch ``x`` (eq. 1-3). Returns (loss, subnets run)."""
    targets = teacher_targets(teacher, x)[s:]
    student.set_active_subnet(_random_prefix(student, rng, delta_phase))
    if s == 0:
        h = student.stem_forward(x) if not delta_phase else student.stem_forward(x).detach()
    else:
        with torch.no_grad():
            h = student.stem_forward(x)
            for i in range(s):
                h = student.run_stage(i, h)
    dims = {"rho": WIDTHS, "delta": (True,) if delta_phase else (False,)}
    subnets = [{"rho": 1.0, "delta": False}] if delta_phase else []
    subnets += sandwich(dims, rng, random_subnets)
    head = student.head if s == STAGES - 1 else None
    outs = []
    for i, c in enumerate(subnets):
        student.set_stage(s, c["rho"], c["delta"])
        if delta_phase and i == 0:
            with torch.no_grad():
                outs.append(downstream(teacher, s, student.run_stage(s, h), head))
        else:
            outs.append(downstream(teacher, s, student.run_stage(s, h), head))
    return sandwich_loss(outs, targets, v, largest_trainable=not delta_phase), len(subnets)


def lock_step(student: AdaptaResNet, teacher: AdaptaResNet, x: torch.Tensor, rng: np.random.Generator, *, v: float,
              random_subnets: int, delta_phase: bool) -> torch.Tensor:
    """The locking-in loss on batch ``x``: whole-network sandwich, every anchor and the logits against the teacher."""
    targets = teacher_targets(teacher, x)
    mask = student.delta_mask(delta_phase)
    cfgs = [student.largest(), {"rho": [min(WIDTHS)] * STAGES, "delta": mask}]
    if delta_phase:
        cfgs.insert(1, {"rho": [max(WIDTHS)] * STAGES, "delta": mask})
    cfgs += [_random_prefix(student, rng, delta_phase) for _ in range(random_subnets)]
    outs = []
    for i, cfg in enumerate(cfgs):
        student.set_active_subnet(cfg)
        if delta_phase and i == 0:
            with torch.no_grad():
                a = student.anchors(x)
        else:
            a = student.anchors(x)
        outs.append([*a, student.forward_head(a[-1])])
    return sandwich_loss(outs, targets, v, largest_trainable=not delta_phase)


def _run_phase(name: str, student: AdaptaResNet, data: Split, params: list[nn.Parameter], lr: float, epochs: int,
               step: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], set_mode: Callable[[], None], *,
               batch_size: int, seed: int, progress: bool, log: Callable[[str], None]) -> float:
    opt = torch.optim.Adam(params, lr=lr)
    g = torch.Generator().manual_seed(seed)
    loss_ema = float("nan")
    for epoch in range(epochs):
        set_mode()
        n_steps = (len(data) + batch_size - 1) // batch_size
        bar = tqdm(shuffled_batches(data, batch_size, g), total=n_steps, desc=f"{name} {epoch + 1}/{epochs}",
                   disable=not progress, leave=False, mininterval=1.0)
        for x, y in bar:
            loss = step(x, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            loss_ema = loss.item() if np.isnan(loss_ema) else 0.95 * loss_ema + 0.05 * loss.item()
            bar.set_postfix(loss=f"{loss_ema:.4f}", refresh=False)
    log(f"[slimmable] {name}: loss {loss_ema:.4f}")
    return loss_ema


RECIPES = ("adapta", "usnet", "dsnet")


def soft_ce(logits: torch.Tensor, target_probs: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of ``logits`` (B, K) against soft targets (B, K) (in-place distillation)."""
    return -(target_probs * F.log_softmax(logits, 1)).sum(1).mean()


def random_config(rng: np.random.Generator) -> dict:
    """A random stage-wise width configuration without δ (one of 4^4)."""
    return {"rho": [float(rng.choice(WIDTHS)) for _ in range(STAGES)], "delta": [False] * STAGES}


def baseline_step(student: AdaptaResNet, x: torch.Tensor, y: torch.Tensor, rng: np.random.Generator, *,
                  recipe: str, sampling: str, ema: AdaptaResNet | None = None) -> tuple[torch.Tensor, int]:
    """The summed loss of one US-Net or DS-Net step on batch (x, y) (see the module doc). Returns (loss, subnets
    run); the trainer steps on their mean."""
    target = None
    if recipe == "dsnet":
        if ema is None:
            raise ConfigError("a dsnet step needs the moving-average supernet")
        with torch.no_grad():
            ema.set_active_subnet(ema.largest())
            target = F.softmax(ema(x), 1)  # (B, K)
    if sampling == "random3":
        cfgs = [random_config(rng) for _ in range(3)]
        loss = 0.0
        for c in cfgs:
            student.set_active_subnet(c)
            out = student(x)
            # DS-Net*: no subnet of the step is the largest, so none would see a label and the moving average would
            # only ever bootstrap itself (measured: chance accuracy after two epochs); each subnet learns from the
            # labels and the moving average's soft targets, half each
            loss = loss + (F.cross_entropy(out, y) if target is None
                           else 0.5 * (F.cross_entropy(out, y) + soft_ce(out, target)))
        return loss, 3  # type: ignore[return-value]
    cfgs = [student.largest(), student.smallest()] + [uniform_cfg(float(rng.choice(WIDTHS))) for _ in range(2)]
    student.set_active_subnet(cfgs[0])
    big = student(x)  # (B, K)
    loss = F.cross_entropy(big, y)
    target = F.softmax(big.detach(), 1) if target is None else target
    for c in cfgs[1:]:
        student.set_active_subnet(c)
        loss = loss + soft_ce(student(x), target)
    return loss, len(cfgs)


def uniform_cfg(rho: float) -> dict:
    return {"rho": [rho] * STAGES, "delta": [False] * STAGES}


def _run_baseline_epoch(name: str, student: AdaptaResNet, data: Split, t: SlimmableTraining, epoch: int,
                        ema: AdaptaResNet | None, rng: np.random.Generator, *, seed: int, progress: bool,
                        log: Callable[[str], None]) -> float:
    params = _freeze(student, [student.stem, student.stages, student.head])
    opt = torch.optim.SGD(params, lr=t.baseline_lr, momentum=0.9, nesterov=True, weight_decay=t.baseline_wd)
    steps = (len(data) + t.batch_size - 1) // t.batch_size
    total = steps * t.baseline_epochs
    g = torch.Generator().manual_seed(seed)
    student.train()
    loss_ema = float("nan")
    bar = tqdm(shuffled_batches(data, t.batch_size, g), total=steps, desc=name, disable=not progress, leave=False,
               mininterval=1.0)
    warmup = max(1, total // 20)
    for i, (x, y) in enumerate(bar):
        k = epoch * steps + i
        for group in opt.param_groups:  # linear warm-up over the first 5% of steps, then cosine to 0
            group["lr"] = min(1.0, (k + 1) / warmup) * 0.5 * t.baseline_lr * (1 + np.cos(np.pi * k / total))
        loss, n = baseline_step(student, x, y, rng, recipe=t.recipe, sampling=t.sampling, ema=ema)
        loss = loss / n  # the mean over the step's subnets: their summed loss diverged at this rate (GN, batch 64)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if ema is not None:
            with torch.no_grad():
                for pe, ps in zip(ema.parameters(), student.parameters()):
                    pe.mul_(t.ema).add_(ps.detach(), alpha=1 - t.ema)
                for be, bs in zip(ema.buffers(), student.buffers()):
                    be.copy_(bs)
        loss_ema = loss.item() if np.isnan(loss_ema) else 0.95 * loss_ema + 0.05 * loss.item()
        bar.set_postfix(loss=f"{loss_ema:.4f}", refresh=False)
    log(f"[slimmable] {name}: loss {loss_ema:.4f}")
    return loss_ema


def phases(student: AdaptaResNet, training: SlimmableTraining) -> list[str]:
    """The names of the phases, in order (δ phases only for stages with a block besides the anchor)."""
    if training.recipe != "adapta":
        bn = ["bn"] if student.norm_kind == "bn" else []
        return [f"{training.recipe}{e + 1}" for e in range(training.baseline_epochs)] + bn
    out = [f"cascade{s + 1}" for s in range(STAGES)] + (["lock"] if training.lock_epochs else [])
    if training.delta and any(d > 1 for d in student.depths):
        out += [f"delta{s + 1}" for s in range(STAGES) if student.depths[s] > 1]
        out += ["delta-lock"] if training.lock_epochs else []
    out += [f"gate{g + 1}" for g in range(STAGES - 1)]
    return out + (["bn"] if student.norm_kind == "bn" else [])


def run_phase(name: str, student: AdaptaResNet, teacher: AdaptaResNet | None, data: Dataset,
              training: SlimmableTraining, *,
              seed: int = 0, progress: bool = False, log: Callable[[str], None] = print) -> float:
    """Run one phase of :func:`phases` on ``student`` in place; returns its final loss (nan for ``bn``)."""
    t = training
    rng = np.random.default_rng([seed, sum(map(ord, name))])
    if teacher is None and t.recipe == "adapta" and name != "bn":
        raise ConfigError(f"AdaptaNet's phase {name!r} needs the teacher")
    if teacher is not None:
        teacher.eval()
    kw = dict(batch_size=t.batch_size, seed=seed, progress=progress, log=log)
    delta_phase = name.startswith("delta")
    if name.startswith("cascade") or name in ("delta1", "delta2", "delta3", "delta4"):
        s = int(name[-1]) - 1
        if delta_phase:
            trainable: list[nn.Module] = [student.deltas[s]]
        else:
            trainable = [student.stages[s]] + ([student.stem] if s == 0 else []) + \
                ([student.head] if s == STAGES - 1 else [])
        params = _freeze(student, trainable)

        def set_mode() -> None:
            student.eval()
            for m in trainable:
                m.train()
        epochs = t.stage_epochs[s]
        return _run_phase(name, student, data.train, params, t.lr, epochs,
                          lambda x, y: stage_step(student, teacher, s, x, rng, v=t.v, random_subnets=t.random_subnets,
                                                  delta_phase=delta_phase)[0], set_mode, **kw)
    if name in ("lock", "delta-lock"):
        trainable = [student.deltas] if delta_phase else [student.stem, student.stages, student.head]
        params = _freeze(student, trainable)

        def set_mode() -> None:
            student.eval()
            for m in trainable:
                m.train()
        return _run_phase(name, student, data.train, params, t.lock_lr, t.lock_epochs,
                          lambda x, y: lock_step(student, teacher, x, rng, v=t.v, random_subnets=t.random_subnets,
                                                 delta_phase=delta_phase), set_mode, **kw)
    if name.startswith("gate"):
        gi = int(name[-1]) - 1
        gate = student.gates[gi]
        params = _freeze(student, [gate])
        use_delta = t.delta

        def step(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            with torch.no_grad():
                student.set_active_subnet(student.largest())
                largest = student(x)  # (B, K)
                student.set_active_subnet(_random_prefix(student, rng, use_delta))
                h = student.stem_forward(x)
                for i in range(gi + 1):
                    h = student.run_stage(i, h)
            det, logvar = gate(h)
            return gate_loss(det, logvar, largest, lam=t.gate_lambda, kl=t.gate_kl)

        def set_mode() -> None:
            student.eval()
            gate.train()
        return _run_phase(name, student, data.train, params, t.gate_lr, t.gate_epochs, step, set_mode, **kw)
    if t.recipe != "adapta" and name.startswith(t.recipe):
        epoch = int(name[len(t.recipe):]) - 1
        ema = None
        if t.recipe == "dsnet":
            ema = getattr(student, "_dyninfer_ema", None)
            if ema is None:  # the moving average starts from the supernet as it is (after a resume: as loaded)
                ema = copy.deepcopy(student).eval()
                for p in ema.parameters():
                    p.requires_grad_(False)
                object.__setattr__(student, "_dyninfer_ema", ema)
        return _run_baseline_epoch(name, student, data.train, t, epoch, ema, rng, seed=seed, progress=progress, log=log)
    if name == "bn":
        x = data.train.x[:t.bn_images]
        configs = student.configs(delta=None if t.delta and t.recipe == "adapta" else False)
        n = recalibrate_bn(student, x, configs, batch_size=256)
        log(f"[slimmable] bn: re-estimated {n} switchable batch norms over {len(configs)} configurations")
        return float("nan")
    raise ConfigError(f"unknown training phase {name!r}; phases are {phases(student, training)}")


# ---------------------------------------------------------------------------------------- the whole run

def load_into(net: AdaptaResNet, path: str | Path) -> dict:
    """Load the supernet checkpoint ``path`` into ``net``; refused (CheckpointError naming both shapes) when the
    checkpoint was written for another supernet shape. Returns the checkpoint's metadata."""
    payload = read_checkpoint(path)
    check_same_shape(net, payload["arch"], str(path))
    load_state(net, payload["state_dict"], str(path))
    return payload["meta"]


def uniform_accuracy(net: AdaptaResNet, split: Split, delta: bool = False) -> dict[str, float]:
    """Accuracy of every uniform width of ``net`` on ``split``."""
    out = {}
    for cfg in net.configs(delta=delta):
        net.set_active_subnet(cfg)
        out[f"x{cfg['rho'][0]:g}{'-d' if delta else ''}"] = accuracy(net, split)
    net.set_active_subnet(net.largest())
    return out


def fit_slimmable(model_name: str, data: Dataset, training: SlimmableTraining, *, seed: int = 0,
                  model_kwargs: dict | None = None, device: str | torch.device = "cpu", progress: bool = True,
                  root: str | Path | None = None, log: Callable[[str], None] = print) -> tuple[AdaptaResNet, dict]:
    """Train (or resume, or reuse) an Adapta-ResNet supernet on ``data``.

    Every phase writes ``NN-phase.pt`` in the run's folder (``$DYNINFER_CACHE/supernets/<data>/<model>-<key>``, the
    key covering model, arguments, data content, training settings and seed); a later call loads the last one
    written and runs only the phases after it.

    Returns:
        (the supernet in eval mode at its largest configuration, metadata: teacher accuracy, per-phase seconds and
        losses, uniform-width accuracies after each phase, the checkpoint).
    """
    from ..models.registry import create_model

    model_kwargs = dict(model_kwargs or {})
    baseline = training.recipe != "adapta"
    if baseline:  # US-Net and DS-Net train from scratch, without a teacher
        teacher, tmeta = None, {}
    else:
        teacher, tmeta = cached_model(model_name, data, training.teacher, seed=seed, model_kwargs=model_kwargs,
                                      device=device, progress=progress, log=log)
        teacher.eval()
        for p in teacher.parameters():
            p.requires_grad_(False)
    torch.manual_seed(seed)
    student: AdaptaResNet = create_model(model_name, data.spec, **model_kwargs).to(device)  # type: ignore[assignment]
    record = training.to_dict()
    if training.recipe == "dsnet" and training.sampling == "random3":
        record["dsnet_random3"] = "labels+ema"  # its step changed: earlier checkpoints trained another recipe
    if training.recipe == "adapta":
        record["gate_error"] = "log-probabilities"  # the gates' loss changed: earlier gate phases trained another
    key = cache_key(model_name, model_kwargs, data, record, seed, arch=architecture_signature(student))
    folder = Path(root or cache_dir() / "supernets") / data.spec.name / f"{model_name}-{key}"
    if teacher is not None:
        student.load_state_dict(teacher.state_dict())
    names = phases(student, training)
    done, meta = 0, {"teacher": {k: tmeta.get(k) for k in ("test_accuracy", "calib_accuracy", "flops", "checkpoint",
                                                             "train_seconds")},
                     "phases": {}, "training": training.to_dict(), "seed": seed}
    for i in reversed(range(len(names))):
        path = folder / f"{i:02d}-{names[i]}.pt"
        if path.exists():
            meta = load_into(student, path)
            done = i + 1
            log(f"[slimmable] resuming after phase {names[i]} ({path})")
            break
    evaluation = data.calib.subset(range(min(training.eval_images, len(data.calib))))
    if training.train_images is not None and training.train_images < len(data.train):
        data = dataclasses.replace(data, train=data.train.subset(range(training.train_images)))
    for i in range(done, len(names)):
        t0 = time.perf_counter()
        loss = run_phase(names[i], student, teacher, data, training, seed=seed + i, progress=progress, log=log)
        student.eval()
        for p in student.parameters():
            p.requires_grad_(True)
        acc = uniform_accuracy(student, evaluation)
        if training.delta and names[i].startswith("delta"):
            acc.update(uniform_accuracy(student, evaluation, delta=True))
        meta["phases"][names[i]] = {"seconds": time.perf_counter() - t0, "loss": loss, "calib_accuracy": acc}
        log(f"[slimmable] {names[i]} done in {meta['phases'][names[i]]['seconds']:.1f} s; uniform widths "
            f"{json.dumps({k: round(v, 4) for k, v in acc.items()})}")
        save_checkpoint(student, folder / f"{i:02d}-{names[i]}.pt", meta)
    student.set_active_subnet(student.largest())
    return student.eval(), {**meta, "checkpoint": str(folder / f"{len(names) - 1:02d}-{names[-1]}.pt")}
