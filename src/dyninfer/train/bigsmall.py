"""Co-training the little and big subnets of a big/little supernet with their learned router (NAS paper, 3.3-3.4).

Per batch (:func:`cotrain_step`) a **sandwich over pairs** runs: the largest little/big pair, the smallest, and
``random_subnets`` random ones, each drawn within the dimensions released so far (:func:`sandwich_pairs`); both
heads of a pair come from one :meth:`~dyninfer.models.bigsmall.BigSmallSupernet.forward_pair`. The joint loss is

    L = α·L_big + β·L_little + γ·L_routing + λ·L_consistency

averaged over the pairs of the step (so the weights mean the same whatever ``random_subnets``), with

* ``L_big`` — cross-entropy of the pair's big head on the labels;
* ``L_little`` — cross-entropy of the little head on the labels, plus (``distill``) **in-place distillation**:
  T²·KL(p_max || p_little) at temperature T, p_max the detached soft predictions of the largest big subnet
  (the first pair of the sandwich);
* ``L_routing`` — BCE of the router against the optimal decision (:func:`routing_targets`: keep = the little
  head is right, or its loss is within ``keep_margin`` of the big head's) plus η × the efficiency penalty:
  the router's mean forward probability times the pair's big-subnet FLOPs over the largest big subnet's
  (the big path of a pair runs from the image, as the supernet's path pools cost it, so forwarding pays all
  of it);
* ``L_consistency`` — T²·KL(softmax(z_little/T) || softmax(z_big/T)), argument order as the paper writes it,
  on every sample, between the little head and *its own pair's* big head.

**Progressive shrinking** (``phases``): ``full`` trains the largest pair alone, then ``kernel`` releases the
depthwise kernel, ``depth`` the depth, ``width`` the width and the expansion ratio; each phase samples only
the dimensions released by it and the phases before it in that curriculum (the others stay at their largest).
Every phase restarts AdamW with a cosine decay over its steps, then scores the phase's smallest and largest
pairs on the calibration split, each after (``bn`` norm) re-estimating the switchable batch norms for it alone
(running statistics lag far behind weights that move fast; a norm two subnets share, such as a head's, must not
average both), and writes its own checkpoint with the largest pair's statistics (atomically, the router inside
it): an interrupted run resumes after the last finished phase.

Where the paper is silent, this module chooses: losses averaged over the sandwich's pairs; the big side of
``L_consistency`` and the in-place distillation target detached (the big head learns from labels only);
one temperature T for both; the routing target and the router's inputs detached unless ``router_grad``
(so L_routing trains the router, not the classifiers); the router an MLP with one hidden layer
(:class:`~dyninfer.models.bigsmall_router.BigSmallRouter`); switchable batch norms recalibrated at the end for
the chosen pair(s).

The ablation of section 5.4.2 has three arms: :func:`fit_bigsmall` (co-trained + distillation),
:func:`fit_bigsmall` with ``distill=False`` (co-trained), and :func:`fit_independent` (the little and big heads
trained in two separate supernets with the same recipe, each on its own labels only, then the router trained
on the frozen pair).
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..check import flag, number
from ..data.datasets import Dataset, Split
from ..errors import CheckpointError, ConfigError
from ..io import cache_dir, read_payload, write_payload
from ..models.bigsmall import FIELDS, HEADS, BigSmallSupernet, PairConfig, SearchSpace, StageConfig, SubnetConfig
from ..models.bigsmall_router import BigSmallRouter
from ..models.elastic import recalibrate_bn
from ..registry import check_keys
from .checkpoint import cache_key, load_cached, load_checkpoint, save_checkpoint
from .trainer import shuffled_batches

PHASES = ("full", "kernel", "depth", "width")  # the progressive-shrinking curriculum
RELEASES = {"full": (), "kernel": ("kernel",), "depth": ("depth",), "width": ("width", "expand")}  # new per phase
TERMS = ("big", "little", "ce_little", "distill", "routing", "bce", "cost", "consistency")
ROUTER_FORMAT = "dyninfer-bigsmall-router-1"


@dataclass(frozen=True)
class CoTraining:
    """Every hyper-parameter of big/little co-training (recorded with each checkpoint and in the cache key).
    Unknown keys in :meth:`from_dict` are errors; a bad value is a ConfigError naming the field."""

    alpha: float = 1.0              # α: weight of L_big
    beta: float = 1.0               # β: weight of L_little
    gamma: float = 1.0              # γ: weight of L_routing
    lam: float = 0.5                # λ: weight of L_consistency
    eta: float = 0.1                # η: weight of the efficiency penalty inside L_routing
    temperature: float = 1.0        # T of in-place distillation and of L_consistency
    distill: bool = True            # in-place distillation from the largest big subnet inside L_little
    keep_margin: float = 0.0        # optimal decision "keep": little correct, or CE_little <= CE_big + margin (nats)
    router_hidden: int = 32         # hidden units of the router MLP
    router_grad: bool = False       # let L_routing's gradient reach the supernet through the router's inputs
    lr: float = 3e-3                # peak AdamW learning rate, cosine to 0 within each phase
    weight_decay: float = 5e-4      # AdamW decoupled weight decay
    epochs: int = 5                 # epochs per phase
    batch_size: int = 128           # images per step (each runs every pair of the sandwich)
    random_subnets: int = 2         # random pairs per step beside the largest and the smallest
    phases: tuple[str, ...] = PHASES  # progressive shrinking, in curriculum order (a subset skips phases)
    train_images: int | None = None  # training images used (None: the whole training split)
    eval_images: int = 1000         # calibration images scoring the largest and smallest pairs after each phase
    bn_images: int = 2048           # training images re-estimating the switchable batch norms at the end
    seed: int = 0                   # initialisation, shuffling and subnet sampling

    def __post_init__(self) -> None:
        for name in ("alpha", "beta", "gamma", "lam", "eta", "keep_margin", "weight_decay"):
            number(name, getattr(self, name), lo=0)
        number("temperature", self.temperature, lo=0, lo_open=True)
        flag("distill", self.distill)
        flag("router_grad", self.router_grad)
        number("router_hidden", self.router_hidden, lo=1, integer=True)
        number("lr", self.lr, lo=0, lo_open=True)
        number("epochs", self.epochs, lo=1, integer=True)
        number("batch_size", self.batch_size, lo=2, integer=True)
        number("random_subnets", self.random_subnets, lo=0, integer=True)
        number("train_images", self.train_images, lo=2, integer=True, none_ok=True)
        number("eval_images", self.eval_images, lo=1, integer=True)
        number("bn_images", self.bn_images, lo=1, integer=True)
        number("seed", self.seed, lo=0, integer=True)
        phases = self.phases
        if isinstance(phases, str) or not isinstance(phases, (tuple, list)) or not phases:
            raise ConfigError(f"phases must be a non-empty sequence of {PHASES}, got {phases!r}")
        unknown = [p for p in phases if p not in PHASES]
        if unknown:
            raise ConfigError(f"phases: unknown phase(s) {unknown}; the curriculum is {PHASES}")
        if list(phases) != sorted(set(phases), key=PHASES.index):
            raise ConfigError(f"phases must be distinct and in curriculum order {PHASES}, got {tuple(phases)}")
        object.__setattr__(self, "phases", tuple(phases))

    def to_dict(self) -> dict:
        d = asdict(self)
        d["phases"] = list(self.phases)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "CoTraining":
        check_keys("CoTraining", dict(d), {f.name for f in fields(cls)})
        d = dict(d)
        if isinstance(d.get("phases"), list):
            d["phases"] = tuple(d["phases"])
        return cls(**d)


# ---------------------------------------------------------------------------------------- progressive shrinking

def released(phase: str, phases: Sequence[str] = PHASES) -> tuple[str, ...]:
    """The dimensions (of :data:`~dyninfer.models.bigsmall.FIELDS`) sampled in ``phase`` of a run through
    ``phases`` (default: the whole curriculum): its own and those of the run's phases before it. A run without
    some phases never releases their dimensions (``("full", "width")`` searches width and expansion alone)."""
    if phase not in PHASES:
        raise ConfigError(f"unknown phase {phase!r}; the curriculum is {PHASES}")
    if phase not in phases:
        raise ConfigError(f"phase {phase!r} is not among the run's phases {tuple(phases)}")
    return tuple(f for p in PHASES[:PHASES.index(phase) + 1] if p in phases for f in RELEASES[p])


def phase_subnet(space: SearchSpace, head: str, free: Sequence[str], *, rng: np.random.Generator | None = None,
                 smallest: bool = False) -> SubnetConfig:
    """A subnet of ``head`` whose dimensions outside ``free`` are at their largest choice; those in ``free`` are
    drawn uniformly per stage with ``rng``, or else all smallest (``smallest``) or all largest."""
    stages = []
    for _ in range(space.stages_of(head)):
        values = {}
        for f in FIELDS:
            ch = space.choices(f)
            if f not in free:
                values[f] = ch[-1]
            elif rng is not None:
                values[f] = ch[int(rng.integers(len(ch)))]
            else:
                values[f] = ch[0] if smallest else ch[-1]
        stages.append(StageConfig(**values))
    return SubnetConfig(head, tuple(stages))


def sandwich_pairs(space: SearchSpace, phase: str, rng: np.random.Generator, random_subnets: int = 2,
                   phases: Sequence[str] = PHASES) -> list[PairConfig]:
    """The pairs of one step in ``phase`` (of a run through ``phases``): the largest, the smallest, then
    ``random_subnets`` random ones (little and big drawn independently), all within :func:`released` dimensions;
    repeats dropped, so the ``full`` phase runs the largest pair alone. The first is always the largest pair."""
    free = released(phase, phases)
    pairs = [PairConfig(phase_subnet(space, "little", free), phase_subnet(space, "big", free)),
             PairConfig(phase_subnet(space, "little", free, smallest=True),
                        phase_subnet(space, "big", free, smallest=True))]
    pairs += [PairConfig(phase_subnet(space, "little", free, rng=rng), phase_subnet(space, "big", free, rng=rng))
              for _ in range(random_subnets)]
    return list(dict.fromkeys(pairs))


# ---------------------------------------------------------------------------------------- losses

def routing_targets(little: torch.Tensor, big: torch.Tensor, y: torch.Tensor, margin: float = 0.0) -> torch.Tensor:
    """The optimal decision per sample (B,) as floats: 1 = keep the little head's answer (it is right, or its
    cross-entropy is within ``margin`` of the big head's, so forwarding cannot help by more), 0 = forward."""
    with torch.no_grad():
        correct = little.argmax(1) == y  # (B,)
        close = F.cross_entropy(little, y, reduction="none") <= F.cross_entropy(big, y, reduction="none") + margin
        return (correct | close).float()


def routing_loss(router: BigSmallRouter, features: torch.Tensor, little: torch.Tensor, big: torch.Tensor,
                 y: torch.Tensor, *, cost: float, margin: float = 0.0, grad: bool = False
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """(BCE, efficiency penalty) of ``router`` on one pair.

    The router answers the forward probability p; the BCE is that of the keep probability 1 - p against
    :func:`routing_targets` (the same as p against 1 - target). The penalty is mean(p) x ``cost`` (the big
    subnet's FLOPs over the largest big subnet's). ``grad`` lets the gradient reach the features and logits.
    """
    keep = routing_targets(little, big, y, margin)  # (B,)
    if not grad:
        features, little = features.detach(), little.detach()
    z = router(features, little)  # (B,) forward logits
    bce = F.binary_cross_entropy_with_logits(z, 1.0 - keep)
    return bce, torch.sigmoid(z).mean() * cost


def _kl(p_logits: torch.Tensor, q_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """T²·KL(softmax(p/T) || softmax(q/T)), averaged over the batch."""
    t = temperature
    return F.kl_div(F.log_softmax(q_logits / t, 1), F.log_softmax(p_logits / t, 1), log_target=True,
                    reduction="batchmean") * t * t


@dataclass
class StepLosses:
    """What :func:`cotrain_step` computed: the weighted loss (with its graph), every term (with its graph, for
    inspection; see :data:`TERMS`) and the pairs it ran."""

    loss: torch.Tensor
    terms: dict[str, torch.Tensor]
    pairs: list[PairConfig]

    def floats(self) -> dict[str, float]:
        return {"loss": float(self.loss.detach()), **{k: float(v.detach()) for k, v in self.terms.items()}}


def _check_heads(heads: Sequence[str]) -> tuple[str, ...]:
    heads = tuple(heads)
    if heads not in (HEADS, ("little",), ("big",)):
        raise ConfigError(f"heads must be {HEADS} (co-training), ('little',) or ('big',) (independent); got {heads}")
    return heads


def cotrain_step(supernet: BigSmallSupernet, router: BigSmallRouter | None, x: torch.Tensor, y: torch.Tensor,
                 training: CoTraining, *, phase: str = "width", rng: np.random.Generator | None = None,
                 pairs: Sequence[Any] | None = None, heads: Sequence[str] = HEADS) -> StepLosses:
    """The joint loss of one batch (see the module doc); nothing is stepped.

    Args:
        supernet: the big/little supernet (in train mode for a training step).
        router: the learned router (needed when both heads train).
        x, y: images (B, C, H, W) in [0, 1] and labels (B,).
        training: the weights and settings.
        phase: the progressive-shrinking phase the sandwich samples in.
        rng: draws the random pairs (default: seeded by ``training.seed``).
        pairs: run these pairs instead of the sandwich (the first one's big head is the distillation teacher).
        heads: both (co-training), or one head alone (the independent baseline: only that head's cross-entropy
            on the labels; the other terms are 0).

    Returns:
        :class:`StepLosses`; ``loss`` = α·big + β·little + γ·routing + λ·consistency, with
        little = ce_little + distill (when ``distill``) and routing = bce + η·cost.
    """
    t = training
    heads = _check_heads(heads)
    if pairs is None:
        pairs = sandwich_pairs(supernet.space, phase, rng if rng is not None else np.random.default_rng(t.seed),
                               t.random_subnets, t.phases)
    pairs = [supernet.space.check_pair(p) for p in pairs]
    if not pairs:
        raise ConfigError("a step needs at least one pair")
    acc: dict[str, list[torch.Tensor]] = defaultdict(list)
    if heads == HEADS:
        if router is None:
            raise ConfigError("co-training trains the router with the subnets; got router=None")
        outs = [supernet.forward_pair(x, p) for p in pairs]  # per pair: little (B, K), big (B, K), features (B, F)
        teacher = outs[0][1].detach()  # (B, K) the largest big subnet's logits
        full = supernet.flops(supernet.max_subnet("big"))
        for p, (little, big, feats) in zip(pairs, outs):
            acc["big"].append(F.cross_entropy(big, y))
            acc["ce_little"].append(F.cross_entropy(little, y))
            acc["distill"].append(_kl(teacher, little, t.temperature))
            acc["consistency"].append(_kl(little, big.detach(), t.temperature))
            bce, cost = routing_loss(router, feats, little, big, y, cost=supernet.flops(p.big) / full,
                                     margin=t.keep_margin, grad=t.router_grad)
            acc["bce"].append(bce)
            acc["cost"].append(cost)
    else:
        head = heads[0]
        for p in pairs:
            supernet.set_active_subnet(getattr(p, head))
            acc["big" if head == "big" else "ce_little"].append(F.cross_entropy(supernet(x), y))
    zero = x.new_zeros(())
    terms = {k: torch.stack(acc[k]).mean() if acc[k] else zero for k in TERMS if k not in ("little", "routing")}
    terms["little"] = terms["ce_little"] + (terms["distill"] if t.distill and heads == HEADS else zero)
    terms["routing"] = terms["bce"] + t.eta * terms["cost"]
    loss = t.alpha * terms["big"] + t.beta * terms["little"] + t.gamma * terms["routing"] + \
        t.lam * terms["consistency"]
    return StepLosses(loss, {k: terms[k] for k in TERMS}, pairs)


# ---------------------------------------------------------------------------------------- evaluation

@torch.no_grad()
def pair_metrics(little_net: BigSmallSupernet, big_net: BigSmallSupernet, router: BigSmallRouter | None, split: Split,
                 pair: Any, *, margin: float = 0.0, batch_size: int = 512) -> dict[str, float]:
    """How a pair does on ``split`` (eval mode): accuracy of its little and big subnets, their FLOPs and, with a
    router, the forward rate (p > 0.5), the dynamic accuracy (the big answer where forwarded), the mean FLOPs
    per image (little, plus big where forwarded) and the routing accuracy (agreement with
    :func:`routing_targets`). ``little_net`` and ``big_net`` are the same supernet when co-trained."""
    pair = little_net.space.check_pair(pair)
    dev = next(little_net.parameters()).device
    little_net.eval()
    big_net.eval()
    zl, zb, fwd = [], [], []
    for i in range(0, len(split), batch_size):
        xb = split.x[i:i + batch_size].to(dev)
        little_net.set_active_subnet(pair.little)
        logits, feats = little_net.forward_pooled(xb)
        big_net.set_active_subnet(pair.big)
        zl.append(logits.cpu())
        zb.append(big_net(xb).cpu())
        if router is not None:
            router.eval()
            fwd.append(router.forward_probability(feats, logits).cpu() > 0.5)
    little, big, y = torch.cat(zl), torch.cat(zb), split.y
    fl, fb = little_net.flops(pair.little), big_net.flops(pair.big)
    out = {"little_acc": float((little.argmax(1) == y).float().mean()),
           "big_acc": float((big.argmax(1) == y).float().mean()), "little_flops": fl, "big_flops": fb}
    if router is not None:
        f = torch.cat(fwd)
        pred = torch.where(f, big.argmax(1), little.argmax(1))
        keep = routing_targets(little, big, y, margin).bool()
        out.update(forward_rate=float(f.float().mean()), dynamic_acc=float((pred == y).float().mean()),
                   mean_flops=float(fl + f.float().mean() * fb), routing_acc=float((f != keep).float().mean()))
    return out


def recalibrate_pairs(supernet: BigSmallSupernet, x: torch.Tensor, configs: Sequence[Any], *,
                      batch_size: int = 256) -> int:
    """Re-estimate the switchable batch norms over ``configs`` (pairs, whose little and big subnets both run, or
    single subnets) on images ``x``; returns how many were re-estimated (0 without batch norms)."""
    subnets = []
    for c in configs:
        if isinstance(c, PairConfig) or (isinstance(c, Mapping) and set(c) == {"little", "big"}):
            p = supernet.space.check_pair(c)
            subnets += [p.little, p.big]
        else:
            subnets.append(supernet.space.check_subnet(c))
    return recalibrate_bn(supernet, x, subnets, batch_size=batch_size)


# ---------------------------------------------------------------------------------------- checkpoints

def save_bigsmall(path: str | Path, supernet: BigSmallSupernet, router: BigSmallRouter | None,
                  meta: dict | None = None) -> Path:
    """Write the supernet with its router (under the metadata's ``router`` key) atomically."""
    r = None if router is None else {"kwargs": dict(router.kwargs), "state_dict": router.state_dict()}
    return save_checkpoint(supernet, path, {**(meta or {}), "router": r})


def _router_from(entry: dict | None, where: str) -> BigSmallRouter | None:
    if entry is None:
        return None
    try:
        router = BigSmallRouter(**entry["kwargs"])
        router.load_state_dict(entry["state_dict"])
    except (KeyError, TypeError, RuntimeError, ConfigError) as e:
        raise CheckpointError(f"{where} holds an unreadable router ({type(e).__name__}: {e})") from e
    return router.eval()


def load_bigsmall(path: str | Path, *, device: str | torch.device = "cpu"
                  ) -> tuple[BigSmallSupernet, BigSmallRouter | None, dict]:
    """(supernet, router or None, metadata) from a file of :func:`save_bigsmall`, in eval mode."""
    net, meta = load_checkpoint(path, map_location=device)
    if not isinstance(net, BigSmallSupernet):
        raise CheckpointError(f"{path} holds a {type(net).__name__}, not a big/little supernet")
    meta = dict(meta)
    router = _router_from(meta.pop("router", None), str(path))
    return net, None if router is None else router.to(device), meta  # type: ignore[return-value]


# ---------------------------------------------------------------------------------------- training

def _log_terms(means: Mapping[str, float]) -> str:
    inner = ", ".join(f"{k} {means[k]:.4f}" for k in TERMS if k in means)
    return f"loss {means['loss']:.4f} ({inner})"


def run_phase(phase: str, supernet: BigSmallSupernet, router: BigSmallRouter | None, train: Split,
              training: CoTraining, *, heads: Sequence[str] = HEADS, seed: int = 0, device: str | torch.device = "cpu",
              progress: bool = False, log: Callable[[str], None] = print, tag: str = "bigsmall") -> dict[str, float]:
    """Train ``supernet`` (and ``router``) in place for one phase; one log line per epoch. Returns the mean of
    every term over the last epoch."""
    t = training
    # channels-last halves the CPU time of the depthwise convolutions' backward pass (measured here: 31 vs 60 ms
    # for a 7x7 one at batch 128); the weights go back to the default layout after the phase
    supernet.to(memory_format=torch.channels_last)
    params = list(supernet.parameters()) + (list(router.parameters()) if router is not None else [])
    opt = torch.optim.AdamW(params, lr=t.lr, weight_decay=t.weight_decay)
    steps = max(1, math.ceil((len(train) - 1) / t.batch_size))  # batches of shuffled_batches
    g = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    means: dict[str, float] = {}
    for epoch in range(t.epochs):
        supernet.train()
        if router is not None:
            router.train()
        t0, sums, n = time.perf_counter(), defaultdict(float), 0
        bar = tqdm(shuffled_batches(train, t.batch_size, g), total=steps, desc=f"{phase} {epoch + 1}/{t.epochs}",
                   disable=not progress, leave=False, mininterval=1.0)
        for i, (x, y) in enumerate(bar):
            for group in opt.param_groups:
                group["lr"] = 0.5 * t.lr * (1 + math.cos(math.pi * (epoch * steps + i) / (t.epochs * steps)))
            x = x.to(device).contiguous(memory_format=torch.channels_last)
            out = cotrain_step(supernet, router, x, y.to(device), t, phase=phase, rng=rng, heads=heads)
            opt.zero_grad(set_to_none=True)
            out.loss.backward()
            opt.step()
            for k, v in out.floats().items():
                sums[k] += v
            n += 1
            bar.set_postfix(loss=f"{sums['loss'] / n:.4f}", refresh=False)
        means = {k: v / max(1, n) for k, v in sums.items()}
        log(f"[{tag}] {phase} {epoch + 1}/{t.epochs}: {_log_terms(means)}; {time.perf_counter() - t0:.1f} s")
    supernet.to(memory_format=torch.contiguous_format)
    return means


def _folder(model_name: str, model_kwargs: dict, data: Dataset, training: CoTraining, seed: int, what: str,
            root: str | Path | None) -> Path:
    key = cache_key(model_name, model_kwargs, data, {**training.to_dict(), "run": what}, seed)
    return Path(root or cache_dir() / "supernets") / data.spec.name / f"{model_name}-{what}-{key}"


def _setup(training: CoTraining, seed: int | None, data: Dataset) -> tuple[CoTraining, Dataset, Split]:
    if seed is not None:  # an explicit seed replaces the recipe's, and is what the checkpoints record
        training = dataclasses.replace(training, seed=seed)
    evaluation = data.calib.subset(range(min(training.eval_images, len(data.calib))))
    if training.train_images is not None and training.train_images < len(data.train):
        data = dataclasses.replace(data, train=data.train.subset(range(training.train_images)))
    return training, data, evaluation


def _train_run(model_name: str, data: Dataset, evaluation: Split, training: CoTraining, heads: tuple[str, ...], *,
               model_kwargs: dict, device: str | torch.device, progress: bool, root: str | Path | None,
               log: Callable[[str], None], resume: bool) -> tuple[BigSmallSupernet, BigSmallRouter | None, dict]:
    """The phases of one supernet (both heads, or one alone), resumed after the last readable phase file."""
    from ..models.registry import create_model

    what = "cotrained" if heads == HEADS else f"{heads[0]}-only"
    tag = "bigsmall" if heads == HEADS else f"bigsmall {what}"
    seed, names = training.seed, training.phases
    folder = _folder(model_name, model_kwargs, data, training, seed, what, root)
    torch.manual_seed(seed)
    net = create_model(model_name, data.spec, **model_kwargs)
    if not isinstance(net, BigSmallSupernet):
        raise ConfigError(f"{model_name!r} is not a big/little supernet (a BigSmallSupernet); "
                          f"use bigsmall-supernet or bigsmall-supernet-tiny")
    router = BigSmallRouter(net.heads["little"].fc.in_features, training.router_hidden) if heads == HEADS else None
    meta: dict = {"training": training.to_dict(), "seed": seed, "heads": list(heads), "phases": {}}
    done = 0
    for i in reversed(range(len(names)) if resume else []):
        path = folder / f"{i:02d}-{names[i]}.pt"
        cached = load_cached(path, model_name, device=device, log=log, what=f" ({what}) after phase {names[i]}",
                             describe=lambda m: f"resuming after {len(m.get('phases', {}))} phase(s)")
        if cached is None:
            continue
        loaded, m = cached
        try:
            r = _router_from(m.get("router"), str(path))
        except CheckpointError as e:
            log(f"[{tag}] {e}; retraining from an earlier phase")
            continue
        net, router, done = loaded, r, i + 1  # type: ignore[assignment]
        meta = {k: v for k, v in m.items() if k not in ("router", "checkpoint")}
        break
    net.to(device)
    if router is not None:
        router.to(device)
    for i in range(done, len(names)):
        t0 = time.perf_counter()
        losses = run_phase(names[i], net, router, data.train, training, heads=heads, seed=seed * 1000 + i,
                           device=device, progress=progress, log=log, tag=tag)
        free = released(names[i], names)
        corners = {"largest": PairConfig(phase_subnet(net.space, "little", free), phase_subnet(net.space, "big", free)),
                   "smallest": PairConfig(phase_subnet(net.space, "little", free, smallest=True),
                                          phase_subnet(net.space, "big", free, smallest=True))}
        ev = {}
        for k in ("smallest", "largest"):  # the largest last: its statistics are the ones the checkpoint keeps
            if net.norm_kind == "bn":  # running statistics lag behind fast-moving weights: re-estimate them first,
                # for this pair alone (a batch norm two subnets share, e.g. a head's, would get their average)
                recalibrate_pairs(net, data.train.x[:training.bn_images].to(device),
                                  [getattr(corners[k], h) for h in heads])
            ev[k] = pair_metrics(net, net, router, evaluation, corners[k], margin=training.keep_margin)
        ev = {k: ev[k] for k in corners}
        meta["phases"][names[i]] = {"seconds": time.perf_counter() - t0, "losses": losses, "calib": ev}
        save_bigsmall(folder / f"{i:02d}-{names[i]}.pt", net, router, meta)
        head_acc = "little_acc" if heads == ("little",) else "big_acc"
        figures = "; ".join(f"{k} {head_acc} {v[head_acc]:.4f}" + (
            f" little {v['little_acc']:.4f} forward {v['forward_rate']:.3f} dynamic {v['dynamic_acc']:.4f}"
            if router is not None else "") for k, v in ev.items())
        log(f"[{tag}] {names[i]} done in {meta['phases'][names[i]]['seconds']:.1f} s: {figures}")
    net.set_active_subnet(net.max_subnet())
    return net.eval(), (router.eval() if router is not None else None), \
        {**meta, "checkpoint": str(folder / f"{len(names) - 1:02d}-{names[-1]}.pt")}


def _bn_pairs(net: BigSmallSupernet, pair: Any) -> list[PairConfig]:
    """The one pair whose switchable batch norms are re-estimated: the deployed one (default: the largest). Norms
    that several subnets share (the heads', those of layers whose channel counts coincide) take the average over
    every subnet re-estimated, so only the deployed pair's are estimated."""
    if pair is None:
        return [PairConfig(net.max_subnet("little"), net.max_subnet("big"))]
    return [net.space.check_pair(pair)]


def fit_bigsmall(model_name: str, data: Dataset, training: CoTraining = CoTraining(), *, seed: int | None = None,
                 log: Callable[[str], None] = print, progress: bool = True, resume: bool = True, pair: Any = None,
                 model_kwargs: dict | None = None, device: str | torch.device = "cpu", root: str | Path | None = None
                 ) -> tuple[BigSmallSupernet, BigSmallRouter, dict]:
    """Co-train a big/little supernet and its router on ``data`` (or resume, or reuse a finished run).

    Every phase writes ``NN-phase.pt`` (:func:`save_bigsmall`; supernet, router, metadata) in the run's folder,
    ``$DYNINFER_CACHE/supernets/<data>/<model>-cotrained-<key>``, the key covering the model and its arguments,
    the data's content, ``training`` and the seed; a later call loads the last readable one and runs only the
    phases after it (``resume=False`` retrains from scratch and overwrites them). With ``bn`` norms the switchable
    batch norms are then re-estimated for ``pair`` alone (default: the largest pair) on
    ``bn_images`` training images; that step is not cached (cheap, and ``pair`` may come from a later search).

    Args:
        model_name: a registered big/little supernet (``bigsmall-supernet``, ``bigsmall-supernet-tiny``).
        data: train / calib / test splits.
        training: the hyper-parameters (use ``distill=False`` for the ablation without in-place distillation).
        seed: replaces ``training.seed`` when given.
        log: receives one line per epoch and per phase.
        progress: tqdm bars per epoch.
        resume: reuse finished phases.
        pair: the deployed little/big pair whose batch norms are re-estimated.

    Returns:
        (supernet in eval mode, router in eval mode, metadata: the training settings, per-phase seconds, loss
        terms and calibration figures of the largest and smallest pairs, the BN recalibration, the checkpoint).
    """
    training, data, evaluation = _setup(training, seed, data)
    model_kwargs = dict(model_kwargs or {})
    net, router, meta = _train_run(model_name, data, evaluation, training, HEADS, model_kwargs=model_kwargs,
                                   device=device, progress=progress, root=root, log=log, resume=resume)
    meta["bn"] = _recalibrate(net, data.train, training, _bn_pairs(net, pair), log)
    assert router is not None
    return net, router, meta


def _recalibrate(net: BigSmallSupernet, train: Split, training: CoTraining, configs: list, log: Callable) -> dict:
    if net.norm_kind != "bn":
        return {"batch_norms": 0}
    x = train.x[:training.bn_images].to(next(net.parameters()).device)
    n = recalibrate_pairs(net, x, configs)
    net.set_active_subnet(configs[0].big if isinstance(configs[0], PairConfig) else configs[0])
    log(f"[bigsmall] bn: re-estimated {n} switchable batch norms on {x.shape[0]} images")
    return {"batch_norms": n, "images": int(x.shape[0]),
            "configs": [c.as_dict() for c in configs]}


def _train_router(router: BigSmallRouter, little_net: BigSmallSupernet, big_net: BigSmallSupernet, train: Split,
                  training: CoTraining, *, device: str | torch.device, progress: bool,
                  log: Callable[[str], None]) -> dict[str, float]:
    """The independent baseline's router: trained alone (BCE + η·cost) on the two frozen supernets, in eval mode,
    over the sandwich pairs of the last phase, for ``epochs`` epochs."""
    t, phase = training, training.phases[-1]
    opt = torch.optim.AdamW(router.parameters(), lr=t.lr, weight_decay=t.weight_decay)
    g, rng = torch.Generator().manual_seed(t.seed), np.random.default_rng(t.seed)
    little_net.eval()
    big_net.eval()
    full = big_net.flops(big_net.max_subnet("big"))
    means: dict[str, float] = {}
    for epoch in range(t.epochs):
        router.train()
        sums, n = defaultdict(float), 0
        for x, y in tqdm(shuffled_batches(train, t.batch_size, g), desc=f"router {epoch + 1}/{t.epochs}",
                         disable=not progress, leave=False, mininterval=1.0):
            x, y = x.to(device), y.to(device)
            bces, costs = [], []
            for p in sandwich_pairs(little_net.space, phase, rng, t.random_subnets, t.phases):
                with torch.no_grad():
                    little_net.set_active_subnet(p.little)
                    little, feats = little_net.forward_pooled(x)
                    big_net.set_active_subnet(p.big)
                    big = big_net(x)
                bce, cost = routing_loss(router, feats, little, big, y, cost=big_net.flops(p.big) / full,
                                         margin=t.keep_margin)
                bces.append(bce)
                costs.append(cost)
            bce, cost = torch.stack(bces).mean(), torch.stack(costs).mean()
            loss = bce + t.eta * cost
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            for k, v in (("routing", loss), ("bce", bce), ("cost", cost)):
                sums[k] += float(v.detach())
            n += 1
        means = {k: v / max(1, n) for k, v in sums.items()}
        log(f"[bigsmall independent] router {epoch + 1}/{t.epochs}: "
            + ", ".join(f"{k} {v:.4f}" for k, v in means.items()))
    return means


def fit_independent(model_name: str, data: Dataset, training: CoTraining = CoTraining(), *, seed: int | None = None,
                    log: Callable[[str], None] = print, progress: bool = True, resume: bool = True, pair: Any = None,
                    model_kwargs: dict | None = None, device: str | torch.device = "cpu",
                    root: str | Path | None = None
                    ) -> tuple[BigSmallSupernet, BigSmallSupernet, BigSmallRouter, dict]:
    """The "independent" arm of the co-training ablation: the little and the big head trained in two separate
    supernets with the same recipe (phases, sandwich, optimiser, epochs; each on its own labels only: no
    distillation, consistency or routing), then the router trained on the frozen pair, then batch norms
    re-estimated as in :func:`fit_bigsmall`. Each supernet's phases and the router are cached and resumed like
    :func:`fit_bigsmall`'s.

    Returns:
        (supernet whose little head is used, supernet whose big head is used, router, metadata with
        ``little``, ``big`` and ``router`` entries).
    """
    training, data, evaluation = _setup(training, seed, data)
    model_kwargs = dict(model_kwargs or {})
    kw = dict(model_kwargs=model_kwargs, device=device, progress=progress, root=root, log=log, resume=resume)
    little_net, _, m_little = _train_run(model_name, data, evaluation, training, ("little",), **kw)  # type: ignore[arg-type]
    big_net, _, m_big = _train_run(model_name, data, evaluation, training, ("big",), **kw)  # type: ignore[arg-type]
    path = _folder(model_name, model_kwargs, data, training, training.seed, "independent", root) / "router.pt"
    router = None
    if resume and path.exists():
        try:
            payload = read_payload(path, fmt=ROUTER_FORMAT, what="router checkpoint")
            router, m_router = _router_from(payload["router"], str(path)), payload["meta"]
            log(f"[cache] independent router: {path}")
        except CheckpointError as e:
            log(f"[cache] {e}; retraining")
    if router is None:
        torch.manual_seed(training.seed)
        router = BigSmallRouter(little_net.heads["little"].fc.in_features, training.router_hidden).to(device)
        t0 = time.perf_counter()
        losses = _train_router(router, little_net, big_net, data.train, training, device=device, progress=progress,
                               log=log)
        largest = PairConfig(little_net.max_subnet("little"), big_net.max_subnet("big"))
        m_router = {"seconds": time.perf_counter() - t0, "losses": losses,
                    "calib": pair_metrics(little_net, big_net, router, evaluation, largest, margin=training.keep_margin)}
        write_payload(path, {"format": ROUTER_FORMAT, "meta": m_router,
                             "router": {"kwargs": dict(router.kwargs), "state_dict": router.state_dict()}})
    pairs = _bn_pairs(little_net, pair)
    bn = {"little": _recalibrate(little_net, data.train, training, [p.little for p in pairs], log),
          "big": _recalibrate(big_net, data.train, training, [p.big for p in pairs], log)}
    meta = {"training": training.to_dict(), "seed": training.seed, "little": m_little, "big": m_big,
            "router": {**m_router, "checkpoint": str(path)}, "bn": bn}
    return little_net, big_net, router.eval(), meta


__all__ = ["PHASES", "TERMS", "CoTraining", "StepLosses", "cotrain_step", "fit_bigsmall", "fit_independent",
           "load_bigsmall", "pair_metrics", "phase_subnet", "recalibrate_pairs", "released", "routing_loss",
           "routing_targets", "sandwich_pairs", "save_bigsmall", "run_phase"]
