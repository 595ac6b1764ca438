"""Differentiable (DARTS-style) search for a little/big pair (NAS-for-dynamic-inference paper, 3.5.1).

The choices of a pair of an already-trained :class:`~dyninfer.models.bigsmall.BigSmallSupernet` are relaxed:
:class:`ArchParameters` holds, for each head (``little``, ``big``), each stage it configures and each field
(``width``, ``depth``, ``kernel``, ``expand``), logits α over that field's choices; their softmax weights a
continuous mixture of the supernet's subnets, so the loss is differentiable in α. :func:`relaxed_logits` runs
that mixture, walking the supernet's layers with their full (largest) weights — the supernet's classes are not
changed. The relaxation, per inverted-residual layer (1x1 expand, depthwise, 1x1 project) of a stage:

* **kernel** — the depthwise weights are the softmax-weighted sum of the kernels at every size (each made by the
  elastic kernel transform, :meth:`~dyninfer.models.elastic.ElasticDepthwiseConv2d.kernel`), zero-padded to the
  largest size and run once with that size's padding (a zero-padded k x k kernel computes what the k x k one
  does);
* **expand** and **width** — FBNetV2-style channel masks of the largest layer: the 1x1 convolutions run at their
  full width once and a choice keeps the first channels. Because the supernet's normalisations are switchable
  (a private batch norm per channel count; group norm groups depend on the count too), a mask of ``c`` channels
  is realised as *the first c channels normalised by the norm of c channels, zero-padded* to the full width,
  and the masks are mixed with their probabilities. The hidden width of a layer is ``round(expand x input
  channels)``, and the input width is the previous stage's width choice (or this stage's after the first
  layer), so a hidden count's weight is the probability of every (input width, expansion) giving it;
* **depth** — the softmax-weighted sum of the stage's outputs after each allowed number of layers.

At a one-hot α every mixture has a single term, so the relaxed network computes exactly the discrete subnet of
that configuration (with the same normalisation state: the private norms are the ones the subnet uses; in train
mode each branch's batch statistics are those of the subnet's channels). The price is that every hidden / output
channel count runs its own normalisation: fine for the small supernets of this library.

:func:`expected_flops` is the FLOPs of the relaxed architecture as a differentiable function of α: the expectation
of :meth:`~dyninfer.models.bigsmall.BigSmallSupernet.flops` when every choice is drawn independently with its
softmax probability (every layer's term is weighted by the probability that the stage is deep enough to run it
and by the probabilities of the widths, expansion and kernel it depends on). At a one-hot α it equals
``supernet.flops(cfg)``.

**The loss** of the dynamic system on a batch (:func:`darts_loss`) is

    L = w_little · CE(little) + w_big · CE(big) + η · (E[F_little] + r · E[F_big]) / F_big,max

with ``w_little = w_big = 1`` by default; ``r`` the forward rate of the confidence router at threshold τ on the
batch (the share of images whose little max-softmax is below τ; measured, not differentiated: the little head is
not taught to look confident); ``E[F]`` the expected FLOPs above (a forwarded image pays the little subnet and
the whole big one, as :class:`~dyninfer.search.fitness.PairEvaluator` charges it); ``F_big,max`` the largest big
subnet's FLOPs, so η weighs a fraction of the largest model's cost against nats.

**Latency instead of FLOPs.** Given a :class:`~dyninfer.search.fitness.LatencyTable` (measured block latencies),
the cost term is the expected *latency* of the relaxed pair instead (:func:`expected_latency`: each block's
measured time weighted by the probability of its configuration, stem and head included; at a one-hot α it is the
table's :meth:`~dyninfer.search.fitness.LatencyTable.predict`), normalised by the largest big subnet's predicted
latency: ``(E[T_little] + r · E[T_big]) / T_big,max``. The table is filled before the first step (every block
the relaxed mixture can run), and the time spent timing blocks counts as search cost.

**Bi-level optimisation** (:func:`darts_search`): per step, α takes an Adam step on the loss of a validation batch,
then the network weights take an SGD step (momentum 0.9) on the cross-entropy terms of a training batch through
the relaxed network (α fixed; the cost term does not depend on the weights). ``weight_lr=0`` keeps the
supernet's weights and searches α only. α's gradient (:func:`architecture_gradient`) is

* ``order=1`` (first-order DARTS): ``∇_α L_val(w, α)``, the weights as they are;
* ``order=2`` (second-order DARTS, the paper's eq. 7): the gradient at the weights after one unrolled step
  ``w' = w − ξ ∇_w L_train(w, α)`` (ξ = ``weight_lr``; a plain gradient step, as DARTS unrolls it),
  ``∇_α L_val(w', α) − ξ ∇²_{α,w} L_train(w, α) · ∇_{w'} L_val(w', α)``. DARTS approximates the second term
  by central finite differences at ``w ± ε ∇_{w'} L_val``; here it is the exact Hessian-vector product (the
  α-gradient of ``<∇_w L_train, ∇_{w'} L_val>``, double backward through the relaxed network), because on the
  co-trained supernets the finite difference at DARTS's ``ε = 0.01 / ‖∇_{w'} L_val‖`` was off by more than the
  term itself (the relaxed loss, batch-normalised over small batches, is rough in the weights). A step costs
  about three times a first-order one. The weights and batch-norm statistics are restored after it.

The search works on a **copy** of the supernet (``update_supernet=True`` copies the searched
weights back). The network runs in train mode (batch statistics in the switchable batch norms, as DARTS does).
After the last epoch each field's argmax gives the discrete pair (:meth:`ArchParameters.pair`), checked by
:meth:`~dyninfer.models.bigsmall.SearchSpace.check_pair` and, given a
:class:`~dyninfer.search.fitness.PairEvaluator`, scored on the evaluator's own supernet (its copy of the one it
was built on, as that was at the evaluator's construction: with ``update_supernet=True`` build the evaluator
after the search to score the searched weights).

**Resume.** With ``folder``, after every epoch ``state.pt`` (α, both optimiser states, the copy's weights, the
trajectory, the search cost so far; checksummed, :func:`~dyninfer.io.write_payload`) and ``result.json`` are
written atomically; a second call with the same folder and settings resumes after the last completed epoch
(``epochs`` may be raised to search longer). Batches are drawn from a generator seeded by ``seed`` and the
epoch, so a resumed search draws the batches an uninterrupted one would have drawn.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ..check import flag, number
from ..data.datasets import Split
from ..errors import CheckpointError, ConfigError
from ..io import read_payload, write_json, write_payload
from ..models.bigsmall import FIELDS, HEADS, BigSmallSupernet, PairConfig, SubnetConfig, expanded
from ..models.elastic import scaled
from ..runtime.cost import model_device
from ..train.trainer import shuffled_batches
from .fitness import LatencyTable, PairEvaluator, PairRecord

STATE_FORMAT = "dyninfer-bigsmall-darts-state-1"
RESULT_FORMAT = "dyninfer-bigsmall-darts-1"
STATE = "state.pt"
# settings added after states were first written: an older state holds them at these values
_ADDED_SETTINGS = {"objective": "flops", "latency_batch": None}
RESULT = "result.json"

Probs = list[dict[str, torch.Tensor]]  # per stage: field -> (n_choices,) probabilities


# ---------------------------------------------------------------------------------------- architecture parameters

def param_key(head: str, stage: int, field_: str) -> str:
    """The name of one choice's logits: ``<head>.s<stage, 1-based>.<field>`` (as the evolutionary search names
    its trial parameters)."""
    return f"{head}.s{stage + 1}.{field_}"


class ArchParameters(nn.Module):
    """The architecture logits α of a pair: one vector per head, stage and field, over that field's choices
    (smallest first, as :meth:`~dyninfer.models.bigsmall.SearchSpace.choices` orders them).

    Args:
        space: the supernet's search space.
        init_std: standard deviation of the random initial logits (DARTS: 1e-3; 0 gives uniform mixtures).
        seed: seed of the initial logits.
    """

    def __init__(self, space, *, init_std: float = 1e-3, seed: int = 0) -> None:
        super().__init__()
        self.space = space
        g = torch.Generator().manual_seed(int(seed))
        self.logits = nn.ParameterDict()
        for head in HEADS:
            for s in range(space.stages_of(head)):
                for f in FIELDS:
                    n = len(space.choices(f))
                    self.logits[self._name(head, s, f)] = nn.Parameter(init_std * torch.randn(n, generator=g))

    @staticmethod
    def _name(head: str, s: int, f: str) -> str:
        return f"{head}_s{s + 1}_{f}"  # ParameterDict keys may not hold dots

    def alpha(self, head: str, s: int, f: str) -> nn.Parameter:
        """The logits of one choice."""
        return self.logits[self._name(head, s, f)]

    def probs(self, head: str) -> Probs:
        """Per stage of ``head``: field -> softmax probabilities over the field's choices."""
        return [{f: torch.softmax(self.alpha(head, s, f), 0) for f in FIELDS}
                for s in range(self.space.stages_of(head))]

    def subnet(self, head: str) -> SubnetConfig:
        """The argmax configuration of ``head`` (the most probable choice of each field; ties: the smallest)."""
        stages = [{f: self.space.choices(f)[int(torch.argmax(self.alpha(head, s, f).detach()))] for f in FIELDS}
                  for s in range(self.space.stages_of(head))]
        return self.space.check_subnet({"head": head, "stages": stages}, head)

    def pair(self) -> PairConfig:
        """The discretised pair: the argmax of every field, checked by the space."""
        return self.space.check_pair({h: self.subnet(h) for h in HEADS})

    @torch.no_grad()
    def set_pair(self, pair: Any, peak: float = 50.0) -> None:
        """Logits peaked on ``pair``'s choices: ``peak`` on the chosen one, 0 elsewhere (softmax ~ one-hot)."""
        pair = self.space.check_pair(pair)
        for head in HEADS:
            cfg = getattr(pair, head)
            for s, st in enumerate(cfg.stages):
                for f in FIELDS:
                    a = self.alpha(head, s, f)
                    a.zero_()
                    a[self.space.choices(f).index(getattr(st, f))] = float(peak)

    def probabilities(self) -> dict[str, list[float]]:
        """``{"little.s1.width": [p per choice, smallest first], ...}`` (JSON form)."""
        return {param_key(h, s, f): [float(v) for v in torch.softmax(self.alpha(h, s, f).detach(), 0)]
                for h in HEADS for s in range(self.space.stages_of(h)) for f in FIELDS}


def one_hot_probs(space, cfg: Any) -> Probs:
    """Exactly one-hot probabilities of a subnet configuration (what :func:`relaxed_logits` takes)."""
    cfg = space.check_subnet(cfg)
    out = []
    for st in cfg.stages:
        d = {}
        for f in FIELDS:
            p = torch.zeros(len(space.choices(f)))
            p[space.choices(f).index(getattr(st, f))] = 1.0
            d[f] = p
        out.append(d)
    return out


# ---------------------------------------------------------------------------------------- relaxed forward

def _weights_by_count(counts: Sequence[int], probs: torch.Tensor) -> dict[int, torch.Tensor]:
    """Probability of each distinct channel count, summing the choices that give it."""
    out: dict[int, torch.Tensor] = {}
    for c, p in zip(counts, probs):
        out[c] = out[c] + p if c in out else p
    return out


def _pad_channels(t: torch.Tensor, channels: int) -> torch.Tensor:
    """(B, c, H, W) zero-padded to (B, channels, H, W)."""
    return t if t.shape[1] == channels else F.pad(t, (0, 0, 0, 0, 0, channels - t.shape[1]))


def _mixed_kernel(dw, channels: int, pk: torch.Tensor) -> torch.Tensor:
    """(channels, 1, K, K): the kernels at every size, zero-padded to the largest K, weighted by ``pk``."""
    big = dw.max_kernel
    out = 0
    for k, p in zip(dw.kernel_sizes, pk):
        w = dw.kernel(channels, k)  # (c, 1, k, k), the elastic transforms applied
        s = (big - k) // 2
        out = out + p * F.pad(w, (s, s, s, s))
    return out  # type: ignore[return-value]


def _relaxed_layer(layer, x: torch.Tensor, p_in: dict[int, torch.Tensor], pe: torch.Tensor, pk: torch.Tensor,
                   p_out: dict[int, torch.Tensor], expands: Sequence[float], kernels: Sequence[int]) -> torch.Tensor:
    """One inverted residual on the mixture ``x`` (B, C_in,max, H, W); returns (B, C_out,max, H', W')."""
    hidden_w: dict[int, torch.Tensor] = {}
    for c, pc in p_in.items():
        for e, pe_ in zip(expands, pe):
            h = expanded(c, e)
            hidden_w[h] = hidden_w[h] + pc * pe_ if h in hidden_w else pc * pe_
    ex, dw, pj = layer.expand, layer.dw, layer.project
    hmax = ex.out_channels
    full = F.conv2d(x, ex.weight[:, :x.shape[1]])  # (B, hmax, H, W): every expand filter once
    kmix = _mixed_kernel(dw, hmax, pk)  # (hmax, 1, K, K); kernel(c) is the first c channels of kernel(hmax)
    hid = 0
    for h, q in hidden_w.items():
        t = layer.act(layer.n1(full[:, :h]))  # the mask of h channels, normalised by the norm of h channels
        t = F.conv2d(t, kmix[:h], None, dw.stride, dw.max_kernel // 2, 1, h)  # (B, h, H', W')
        t = layer.act(layer.n2(t))
        hid = hid + q * _pad_channels(t, hmax)
    proj = F.conv2d(hid, pj.weight)  # (B, cmax, H', W')  # type: ignore[arg-type]
    cmax = pj.out_channels
    out = 0
    for c, p in p_out.items():
        out = out + p * _pad_channels(layer.n3(proj[:, :c]), cmax)
    return out + x if layer.residual else out  # type: ignore[return-value]


def relaxed_features(net: BigSmallSupernet, h: torch.Tensor, probs: Probs) -> torch.Tensor:
    """The relaxed stages (as many as ``probs`` has) on the stem output ``h``; returns (B, C_max, h, w) of the
    last one, its channels beyond a width zero-weighted."""
    sp = net.space
    p_in = {net.stem_channels: torch.ones((), dtype=h.dtype, device=h.device)}
    for s, ps in enumerate(probs):
        outs = [scaled(net.channels[s], w) for w in sp.widths]
        p_out = _weights_by_count(outs, ps["width"])
        stage_out = 0
        for j in range(max(sp.depths)):
            h = _relaxed_layer(net.stages[s][j], h, p_in if j == 0 else p_out, ps["expand"], ps["kernel"], p_out,
                               sp.expands, sp.kernels)
            if j + 1 in sp.depths:
                stage_out = stage_out + ps["depth"][sp.depths.index(j + 1)] * h
        h, p_in = stage_out, p_out  # type: ignore[assignment]
    return h


def relaxed_logits(net: BigSmallSupernet, x: torch.Tensor, probs: Probs, head: str,
                   stem: torch.Tensor | None = None) -> torch.Tensor:
    """Logits (B, K) of the relaxed subnet of ``head`` on images ``x`` (B, C, H, W) in [0, 1].

    Args:
        net: the supernet (its full weights are used; its active subnet is ignored and left unchanged).
        probs: per stage of ``head`` (``L`` or ``N`` of them): field -> probabilities over the field's choices
            (:meth:`ArchParameters.probs`, or :func:`one_hot_probs`).
        head: ``little`` or ``big``.
        stem: the stem's output, when it was already computed (the two heads share it).
    """
    if head not in HEADS:
        raise ConfigError(f"head {head!r} is not one of {HEADS}")
    if len(probs) != net.space.stages_of(head):
        raise ConfigError(f"a {head} subnet has {net.space.stages_of(head)} stages; got probabilities of "
                          f"{len(probs)}")
    h = net.stem(net.normalize(x)) if stem is None else stem
    h = relaxed_features(net, h, probs)
    hd = net.heads[head]
    t = F.conv2d(h, hd.conv.weight[:, :h.shape[1]])  # (B, F, h, w)
    return hd.fc(hd.act(hd.norm(t)).mean((2, 3)))  # (B, K)


# ---------------------------------------------------------------------------------------- expected FLOPs

def expected_flops(net: BigSmallSupernet, probs: Probs, head: str) -> torch.Tensor:
    """Expected FLOPs per image (a float64 scalar, differentiable in the probabilities) of the relaxed subnet of
    ``head``: the mean of :meth:`~dyninfer.models.bigsmall.BigSmallSupernet.flops` over configurations whose
    choices are drawn independently with ``probs``; equal to it at one-hot probabilities."""
    sp = net.space
    if head not in HEADS or len(probs) != sp.stages_of(head):
        raise ConfigError(f"expected_flops takes the {sp.stages_of(head) if head in HEADS else '?'} stages of "
                          f"head little or big; got head {head!r} and {len(probs)} stages")
    dev = probs[0]["width"].device
    t = lambda a: torch.as_tensor(np.asarray(a, dtype=np.float64), device=dev)  # noqa: E731
    sizes = net.stage_sizes()
    (h0, w0), k_stem = net.input_shape[1:], net.stem[0].kernel_size[0]
    total = t(2.0 * net.input_shape[0] * net.stem_channels * k_stem * k_stem * h0 * w0)
    cin = np.array([net.stem_channels], dtype=np.float64)  # input channel count of each input-width choice
    p_cin = t([1.0])
    expands, k2 = np.array(sp.expands, dtype=float), t([2.0 * k * k for k in sp.kernels])
    for s, ps in enumerate(probs):
        pw, pd, pk, pe = (ps[f].double() for f in ("width", "depth", "kernel", "expand"))
        out = np.array([scaled(net.channels[s], w) for w in sp.widths], dtype=np.float64)
        hin = sizes[s][0] * sizes[s][1]
        hw = sizes[s + 1][0] * sizes[s + 1][1]
        e_k2 = pk @ k2  # E[2 k^2]
        for j in range(max(sp.depths)):
            active = sum(pd[i] for i, d in enumerate(sp.depths) if d > j)  # P(depth > j)
            if j == 0:
                hid = np.array([[expanded(int(c), e) for e in expands] for c in cin], dtype=np.float64)
                e_expand = p_cin @ t(2.0 * cin[:, None] * hid * hin) @ pe
                e_hid = p_cin @ t(hid) @ pe
                e_proj = e_hid * (pw @ t(2.0 * out * hw))  # output width independent of the input width here
            else:
                hid = np.array([[expanded(int(c), e) for e in expands] for c in out], dtype=np.float64)
                e_expand = pw @ t(2.0 * out[:, None] * hid * hw) @ pe
                e_hid = pw @ t(hid) @ pe
                e_proj = pw @ t(2.0 * hid * out[:, None] * hw) @ pe
            total = total + active * (e_expand + e_hid * e_k2 * hw + e_proj)
        cin, p_cin = out, pw
    hd = net.heads[head]
    hw = sizes[sp.stages_of(head)][0] * sizes[sp.stages_of(head)][1]
    total = total + p_cin @ t(2.0 * cin * hd.conv.out_channels * hw)
    return total + 2.0 * hd.fc.in_features * hd.fc.out_features


def expected_latency(net: BigSmallSupernet, probs: Probs, head: str, table: LatencyTable,
                     batch: int = 1) -> torch.Tensor:
    """Expected latency (ms per call of ``batch`` images; a float64 scalar, differentiable in the probabilities)
    of the relaxed subnet of ``head``: the table's stem, each block weighted by the probability of its
    configuration (the stage deep enough to run it, its input and output widths, expansion and kernel, drawn
    independently with ``probs``) and the head weighted by the last width's probabilities. Equal to
    ``table.predict(cfg, batch)`` at one-hot probabilities. Blocks missing from the table are timed first."""
    sp = net.space
    if head not in HEADS or len(probs) != sp.stages_of(head):
        raise ConfigError(f"expected_latency takes the {sp.stages_of(head) if head in HEADS else '?'} stages of "
                          f"head little or big; got head {head!r} and {len(probs)} stages")
    if not isinstance(table, LatencyTable) or table.supernet is not net:
        raise ConfigError("expected_latency needs a LatencyTable built for this supernet (LatencyTable(net))")
    batch = table.check_batch(batch)
    dev = probs[0]["width"].device
    grids, heads = table.block_grids(len(probs)), table.head_keys(head)
    table.measure(["stem", *heads, *(k for _, _, keys in grids for k in keys.flat)])
    ms = np.vectorize(lambda k: table.entries[k][batch], otypes=[np.float64])
    t = lambda a: torch.as_tensor(a, dtype=torch.float64, device=dev)  # noqa: E731
    total = t(table.entries["stem"][batch])
    p_cin = t([1.0])
    for s, j, keys in grids:
        ps = probs[s]
        pw, pd, pk, pe = (ps[f].double() for f in ("width", "depth", "kernel", "expand"))
        active = sum(pd[i] for i, d in enumerate(sp.depths) if d > j)  # P(depth > j)
        lat = t(ms(keys))  # (inputs, widths, expansions, kernels)
        if j == 0:
            total = total + active * torch.einsum("c,w,e,k,cwek->", p_cin, pw, pe, pk, lat)
        else:
            total = total + active * torch.einsum("w,e,k,wek->", pw, pe, pk, lat[0])
        if j == max(sp.depths) - 1:
            p_cin = pw
    return total + p_cin @ t([table.entries[k][batch] for k in heads])


# ---------------------------------------------------------------------------------------- the loss

@dataclass
class DartsLoss:
    """The terms of :func:`darts_loss` on one batch (``loss`` keeps its graph)."""

    loss: torch.Tensor
    ce_little: float
    ce_big: float
    cost: float  # (E[C_little] + r E[C_big]) / C_big,max, C FLOPs or latency
    forward_rate: float  # r
    flops_little: float  # E[F_little]
    flops_big: float  # E[F_big]
    latency_little: float | None = None  # E[T_little] (ms), with a latency table
    latency_big: float | None = None  # E[T_big]


def darts_loss(net: BigSmallSupernet, arch: ArchParameters, x: torch.Tensor, y: torch.Tensor, *, eta: float,
               threshold: float, little_weight: float = 1.0, big_weight: float = 1.0,
               max_flops: float | None = None, latency_table: LatencyTable | None = None, latency_batch: int = 1,
               max_latency: float | None = None) -> DartsLoss:
    """The dynamic system's loss on a batch (see the module doc): weighted cross-entropies of both relaxed heads
    plus η times the expected cost: FLOPs normalised by ``max_flops`` (default: the largest big subnet's FLOPs),
    or, with ``latency_table``, latency at ``latency_batch`` normalised by ``max_latency`` (default: the largest
    big subnet's predicted latency)."""
    stem = net.stem(net.normalize(x))
    pl, pb = arch.probs("little"), arch.probs("big")
    little = relaxed_logits(net, x, pl, "little", stem=stem)  # (B, K)
    big = relaxed_logits(net, x, pb, "big", stem=stem)  # (B, K)
    ce_l, ce_b = F.cross_entropy(little, y), F.cross_entropy(big, y)
    with torch.no_grad():
        r = (torch.softmax(little.float(), 1).max(1).values < threshold).float().mean()
    fl, fb = expected_flops(net, pl, "little"), expected_flops(net, pb, "big")
    tl = tb = None
    if latency_table is None:
        cmax = float(max_flops if max_flops is not None else net.flops(net.space.max_subnet("big")))
        cost = (fl + r.double() * fb) / cmax
    else:
        tl = expected_latency(net, pl, "little", latency_table, latency_batch)
        tb = expected_latency(net, pb, "big", latency_table, latency_batch)
        cmax = float(max_latency if max_latency is not None
                     else latency_table.predict(net.space.max_subnet("big"), latency_batch))
        cost = (tl + r.double() * tb) / cmax
    loss = little_weight * ce_l + big_weight * ce_b + eta * cost.float()
    return DartsLoss(loss, float(ce_l.detach()), float(ce_b.detach()), float(cost.detach()), float(r),
                     float(fl.detach()), float(fb.detach()), None if tl is None else float(tl.detach()),
                     None if tb is None else float(tb.detach()))


def _train_loss(net: BigSmallSupernet, arch: ArchParameters, x: torch.Tensor, y: torch.Tensor,
                little_weight: float, big_weight: float, *, alpha_grad: bool) -> torch.Tensor:
    """The weighted cross-entropies of both relaxed heads on a training batch (the weights' loss)."""
    with torch.set_grad_enabled(alpha_grad):
        pl, pb = arch.probs("little"), arch.probs("big")
    stem = net.stem(net.normalize(x))
    return little_weight * F.cross_entropy(relaxed_logits(net, x, pl, "little", stem=stem), y) \
        + big_weight * F.cross_entropy(relaxed_logits(net, x, pb, "big", stem=stem), y)


def _grads(loss: torch.Tensor, params: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """d loss / d params, zeros for a parameter the loss does not use."""
    gs = torch.autograd.grad(loss, list(params), allow_unused=True)
    return [torch.zeros_like(p) if g is None else g for p, g in zip(params, gs)]


def architecture_gradient(net: BigSmallSupernet, arch: ArchParameters, val: tuple[torch.Tensor, torch.Tensor],
                          train: tuple[torch.Tensor, torch.Tensor] | None = None, *, order: int = 1,
                          xi: float = 0.0, weights: Sequence[torch.Tensor] | None = None,
                          **loss_kw: Any) -> tuple[DartsLoss, list[torch.Tensor]]:
    """α's gradient for one architecture step (see the module doc), in the order of ``arch.parameters()``.

    Args:
        val: the validation batch ``(x, y)`` of :func:`darts_loss`.
        train: the training batch of the unrolled step (``order=2`` only).
        order: 1 (first-order DARTS) or 2 (second-order: one unrolled weight step of size ``xi``, the mixed
            second derivative as an exact Hessian-vector product).
        weights: the network weights unrolled (default: every parameter of ``net`` that requires a gradient).
        loss_kw: :func:`darts_loss`'s keywords (``eta``, ``threshold``, the head weights, the cost's scale).

    Returns:
        The validation loss's terms (at the unrolled weights for ``order=2``) and the gradient.
    """
    alphas = list(arch.parameters())
    if order == 1:
        out = darts_loss(net, arch, *val, **loss_kw)
        return out, _grads(out.loss, alphas)
    if order != 2:
        raise ConfigError(f"order must be 1 (first-order DARTS) or 2 (second-order), got {order!r}")
    if train is None or not xi > 0:
        raise ConfigError("second-order DARTS unrolls a weight step: it needs a training batch and xi > 0")
    weights = [p for p in net.parameters() if p.requires_grad] if weights is None else list(weights)
    lw, bw = loss_kw.get("little_weight", 1.0), loss_kw.get("big_weight", 1.0)
    w0 = [p.detach().clone() for p in weights]
    buffers = [b.detach().clone() for b in net.buffers()]
    try:
        g_train = _grads(_train_loss(net, arch, *train, lw, bw, alpha_grad=False), weights)
        with torch.no_grad():
            for p, w, g in zip(weights, w0, g_train):
                p.copy_(w - xi * g)  # w' = w − ξ ∇_w L_train(w, α)
        out = darts_loss(net, arch, *val, **loss_kw)
        g = _grads(out.loss, alphas + weights)
        d_alpha, d_w = g[:len(alphas)], g[len(alphas):]
        with torch.no_grad():
            for p, w in zip(weights, w0):
                p.copy_(w)
        # ∇²_{α,w} L_train(w, α) · ∇_{w'} L_val: the α-gradient of <∇_w L_train(w, α), ∇_{w'} L_val> (Pearlmutter)
        g_train = torch.autograd.grad(_train_loss(net, arch, *train, lw, bw, alpha_grad=True), weights,
                                      create_graph=True, allow_unused=True)
        dot = sum((gt * d).sum() for gt, d in zip(g_train, d_w) if gt is not None)
        if isinstance(dot, torch.Tensor) and dot.requires_grad:
            d_alpha = [da - xi * h for da, h in zip(d_alpha, _grads(dot, alphas))]
    finally:
        with torch.no_grad():
            for p, w in zip(weights, w0):
                p.copy_(w)
            for b, v in zip(net.buffers(), buffers):
                b.copy_(v)
    return out, d_alpha


# ---------------------------------------------------------------------------------------- the search

@dataclass
class DartsResult:
    """What :func:`darts_search` found.

    ``pair`` is the discretised pair (argmax of each field) and ``encoding`` its
    :meth:`~dyninfer.models.bigsmall.SearchSpace.encode` vector; ``probabilities`` α's softmax per choice
    (``{"little.s1.width": [...], ...}``, choices smallest first); ``trajectory`` one dict per completed epoch
    (``epoch`` (1-based), ``val_loss``, ``ce_little``, ``ce_big``, ``cost``, ``forward_rate`` (means over the
    epoch's α steps), ``train_loss`` (mean over its weight steps; None when ``weight_lr=0``),
    ``flops_little``, ``flops_big`` (expected FLOPs at the epoch's final α), ``expected_flops``
    (``flops_little + forward_rate x flops_big``), with a latency table ``latency_little``, ``latency_big`` and
    ``expected_latency`` likewise (ms), ``encoding`` and ``pair`` (the argmax pair), ``cpu_seconds``);
    ``cost`` the search cost over every run of a resumed search (``cpu_seconds`` of process time, ``steps``,
    ``arch_steps``, ``weight_steps``, ``evaluated``: discrete pairs scored — the search itself runs one
    relaxed supernet); ``record`` the pair's :class:`~dyninfer.search.fitness.PairRecord` when an evaluator was
    given.
    """

    pair: PairConfig
    encoding: list[int]
    probabilities: dict[str, list[float]]
    trajectory: list[dict]
    cost: dict
    settings: dict
    epochs_done: int
    record: PairRecord | None = None
    supernet: BigSmallSupernet | None = field(default=None, repr=False)  # the searched copy

    def as_dict(self) -> dict:
        return {"format": RESULT_FORMAT, "pair": self.pair.as_dict(), "encoding": self.encoding,
                "probabilities": self.probabilities,
                "trajectory": self.trajectory, "cost": self.cost, "settings": self.settings,
                "epochs_done": self.epochs_done, "record": None if self.record is None else self.record.as_dict()}


def _check_split(name: str, split: Any, shape: tuple[int, ...]) -> Split:
    if not isinstance(split, Split):
        raise ConfigError(f"{name} must be a dyninfer Split (images and labels), got {type(split).__name__}")
    if split.x.ndim != 4 or tuple(split.x.shape[1:]) != shape or split.y.shape != (split.x.shape[0],) \
            or len(split) < 2:
        raise ConfigError(f"{name} must hold at least 2 images (N, {', '.join(map(str, shape))}) with labels (N,); "
                          f"got {tuple(split.x.shape)} and {tuple(split.y.shape)}")
    return split


def _batches(split: Split, batch_size: int, seed: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Shuffled batches forever: a new pass (seeded ``seed``, ``seed + 1``, ...) after each."""
    k = 0
    while True:
        yield from shuffled_batches(split, batch_size, torch.Generator().manual_seed(seed + k))
        k += 1


def _state_seed(seed: int, epoch: int, which: int) -> int:
    return (seed * 1_000_003 + epoch * 7919 + which * 104_729) % (2 ** 62)


def darts_search(supernet: BigSmallSupernet, train: Split, val: Split, *, epochs: int = 10, arch_lr: float = 3e-3,
                 weight_lr: float = 1e-3, eta: float = 1.0, threshold: float = 0.9,
                 evaluator: PairEvaluator | None = None, folder: str | Path | None = None, seed: int = 0,
                 batch_size: int = 64, steps_per_epoch: int | None = None, little_weight: float = 1.0,
                 big_weight: float = 1.0, update_supernet: bool = False, signature: dict | None = None,
                 order: int = 1, latency_table: LatencyTable | None = None, latency_batch: int = 1,
                 log: Callable[[str], None] | None = None, progress: bool = False) -> DartsResult:
    """DARTS (first or second order) over the pairs of a trained big/little supernet (see the module doc).

    Args:
        supernet: the trained supernet; searched on a copy (its weights change only with ``update_supernet``).
        train: the training split (network-weight steps).
        val: the validation split (architecture steps) — e.g. the calibration split, never the test split.
        epochs: epochs to have completed (a resumed search runs only those missing).
        arch_lr: Adam learning rate of α (betas (0.5, 0.999), weight decay 1e-3, as DARTS).
        weight_lr: SGD learning rate of the network weights (momentum 0.9, weight decay 3e-4); 0 freezes them.
        eta: η, weight of the expected-cost term (0: accuracy only).
        threshold: τ of the confidence router (the forward-rate estimate, and the evaluator's scoring).
        evaluator: scores the discretised pair (a :class:`~dyninfer.search.fitness.PairEvaluator` on a supernet
            of the same space).
        folder: where the per-epoch state goes; a second call with it resumes.
        seed: α's initialisation and the batch order.
        batch_size: images per step, for both splits.
        steps_per_epoch: steps (one α step and one weight step each) per epoch; default one pass over ``train``.
        little_weight, big_weight: weights of the little and big cross-entropies.
        update_supernet: copy the searched weights into ``supernet`` at the end.
        order: 1 (first-order DARTS) or 2 (second-order: α's gradient through one unrolled weight step of size
            ``weight_lr``, which must then be above 0).
        latency_table: the cost term is the expected latency from this table of measured blocks (built for
            ``supernet``; filled before the first step) instead of the expected FLOPs.
        latency_batch: the batch of the latency term (one the table times).
        signature: what the search depends on beyond the settings (the supernet's checkpoint, the data): kept
            with the state, and a resumed search with another one is refused.
        log: receives one line per epoch (default: none).
        progress: a tqdm bar per epoch.
    """
    if not isinstance(supernet, BigSmallSupernet):
        raise ConfigError(f"darts_search needs a BigSmallSupernet, got {type(supernet).__name__}")
    shape = tuple(supernet.input_shape)
    train, val = _check_split("train", train, shape), _check_split("val", val, shape)
    number("epochs", epochs, lo=1, integer=True)
    number("arch_lr", arch_lr, lo=0, lo_open=True)
    number("weight_lr", weight_lr, lo=0)
    number("eta", eta, lo=0)
    number("threshold", threshold, lo=0, hint=" (τ on the little head's max-softmax; above 1 always forwards)")
    number("seed", seed, lo=0, integer=True)
    number("batch_size", batch_size, lo=2, integer=True)
    number("steps_per_epoch", steps_per_epoch, lo=1, integer=True, none_ok=True)
    number("little_weight", little_weight, lo=0)
    number("big_weight", big_weight, lo=0)
    if little_weight == 0 and big_weight == 0:
        raise ConfigError("little_weight and big_weight are both 0: the search would optimise cost alone")
    flag("update_supernet", update_supernet)
    flag("progress", progress)
    if order not in (1, 2):
        raise ConfigError(f"order must be 1 (first-order DARTS) or 2 (second-order), got {order!r}")
    if order == 2 and weight_lr == 0:
        raise ConfigError("second-order DARTS unrolls a weight step of size weight_lr; with weight_lr=0 the "
                          "weights are frozen and it is first-order DARTS: use order=1 or weight_lr > 0")
    if latency_table is not None:
        if not isinstance(latency_table, LatencyTable) or latency_table.supernet is not supernet:
            raise ConfigError("latency_table must be a LatencyTable built for the searched supernet "
                              "(LatencyTable(supernet))")
        latency_batch = latency_table.check_batch(latency_batch)
    if evaluator is not None:
        if not isinstance(evaluator, PairEvaluator):
            raise ConfigError(f"evaluator must be a PairEvaluator, got {type(evaluator).__name__}")
        if evaluator.space != supernet.space:
            raise ConfigError("the evaluator's supernet has another search space than the searched supernet")
    log = log or (lambda s: None)
    steps = steps_per_epoch or math.ceil(len(train) / batch_size)
    settings = {"arch_lr": float(arch_lr), "weight_lr": float(weight_lr), "eta": float(eta),
                "threshold": float(threshold), "seed": int(seed), "batch_size": int(batch_size), "steps": int(steps),
                "little_weight": float(little_weight), "big_weight": float(big_weight),
                "first_order": order == 1, "objective": "flops" if latency_table is None else "latency",
                "latency_batch": None if latency_table is None else latency_batch,
                "train_images": len(train), "val_images": len(val), "signature": signature}

    net = copy.deepcopy(supernet)
    dev = model_device(net)
    arch = ArchParameters(net.space, seed=seed).to(dev)
    arch_opt = torch.optim.Adam(arch.parameters(), lr=arch_lr, betas=(0.5, 0.999), weight_decay=1e-3)
    weights = [p for p in net.parameters() if p.requires_grad]
    weight_opt = torch.optim.SGD(weights, lr=weight_lr, momentum=0.9, weight_decay=3e-4) if weight_lr > 0 else None
    trajectory: list[dict] = []
    cost = {"cpu_seconds": 0.0, "steps": 0, "arch_steps": 0, "weight_steps": 0, "evaluated": 0}
    done = 0
    folder = Path(folder) if folder is not None else None
    if folder is not None and (folder / STATE).exists():
        st = read_payload(folder / STATE, fmt=STATE_FORMAT, what="DARTS search state")
        st["settings"] = {**_ADDED_SETTINGS, **st["settings"]}
        if st["settings"] != settings:
            diff = sorted(k for k in settings if st["settings"].get(k) != settings[k])
            raise ConfigError(f"{folder} holds a DARTS search with other settings ({', '.join(diff)}: "
                              f"{[st['settings'].get(k) for k in diff]} there, {[settings[k] for k in diff]} now); "
                              f"use another folder or the same settings")
        if st["epoch"] > epochs:
            raise ConfigError(f"{folder} holds a search of {st['epoch']} epochs; ask for at least that many "
                              f"(epochs={epochs})")
        try:
            net.load_state_dict(st["supernet"])
            arch.load_state_dict(st["arch"])
        except RuntimeError as e:
            raise ConfigError(f"{folder} holds a DARTS search of another supernet: {str(e)[:200]}") from e
        arch_opt.load_state_dict(st["arch_opt"])
        if weight_opt is not None:
            weight_opt.load_state_dict(st["weight_opt"])
        trajectory, cost, done = list(st["trajectory"]), dict(st["cost"]), int(st["epoch"])
        log(f"[darts] resuming {folder} after epoch {done}")

    # the search works on the copy: a latency table of the caller's supernet times the copy's blocks (same layout)
    table = None
    if latency_table is not None and done < epochs:
        t0 = time.process_time()
        table = copy.copy(latency_table)  # shares the caller's entries: what is timed here is kept there
        table.supernet = net
        table.fill()
        cost["cpu_seconds"] += time.process_time() - t0
    loss_kw = dict(eta=eta, threshold=threshold, little_weight=little_weight, big_weight=big_weight,
                   max_flops=float(net.flops(net.space.max_subnet("big"))))
    if table is not None:
        loss_kw.update(latency_table=table, latency_batch=latency_batch,
                       max_latency=table.predict(net.space.max_subnet("big"), latency_batch))
    for epoch in range(done, epochs):
        t0 = time.process_time()
        net.train()
        tr = _batches(train, batch_size, _state_seed(seed, epoch, 0))
        va = _batches(val, batch_size, _state_seed(seed, epoch, 1))
        sums = {k: 0.0 for k in ("val_loss", "ce_little", "ce_big", "cost", "forward_rate", "train_loss")}
        bar = tqdm(range(steps), desc=f"darts {epoch + 1}/{epochs}", disable=not progress, leave=False,
                   mininterval=1.0)
        for _ in bar:
            # α step on a validation batch (first order: the weights as they are; second: after an unrolled step)
            xv, yv = next(va)
            xt, yt = next(tr) if weight_opt is not None else (None, None)
            unrolled = (xt.to(dev), yt.to(dev)) if order == 2 else None  # type: ignore[union-attr]
            out, grads = architecture_gradient(net, arch, (xv.to(dev), yv.to(dev)), unrolled, order=order,
                                               xi=weight_lr, weights=weights, **loss_kw)
            for p, g in zip(arch.parameters(), grads):
                p.grad = g
            arch_opt.step()
            arch_opt.zero_grad(set_to_none=True)
            for k, v in (("val_loss", float(out.loss.detach())), ("ce_little", out.ce_little), ("ce_big", out.ce_big),
                         ("cost", out.cost), ("forward_rate", out.forward_rate)):
                sums[k] += v
            cost["arch_steps"] += 1
            # weight step on a training batch (α fixed): the cross-entropies through the relaxed network
            if weight_opt is not None:
                loss = _train_loss(net, arch, xt.to(dev), yt.to(dev), little_weight, big_weight,  # type: ignore
                                   alpha_grad=False)
                grads = torch.autograd.grad(loss, weights, allow_unused=True)
                for p, g in zip(weights, grads):
                    p.grad = g
                weight_opt.step()
                weight_opt.zero_grad(set_to_none=True)
                sums["train_loss"] += float(loss.detach())
                cost["weight_steps"] += 1
            cost["steps"] += 1
            bar.set_postfix(val_loss=f"{sums['val_loss'] / (cost['steps'] or 1):.4f}", refresh=False)
        with torch.no_grad():
            fl = float(expected_flops(net, arch.probs("little"), "little"))
            fb = float(expected_flops(net, arch.probs("big"), "big"))
            lat = {} if table is None else {
                f"latency_{h}": float(expected_latency(net, arch.probs(h), h, table, latency_batch)) for h in HEADS}
        if lat:
            lat["expected_latency"] = lat["latency_little"] + sums["forward_rate"] / steps * lat["latency_big"]
        means = {k: v / steps for k, v in sums.items()}
        pair = arch.pair()
        cpu = time.process_time() - t0
        cost["cpu_seconds"] += cpu
        rec = {"epoch": epoch + 1, **means, "train_loss": means["train_loss"] if weight_opt is not None else None,
               "flops_little": fl, "flops_big": fb, "expected_flops": fl + means["forward_rate"] * fb, **lat,
               "encoding": [int(v) for v in net.space.encode(pair)], "pair": pair.as_dict(), "cpu_seconds": cpu}
        trajectory.append(rec)
        if folder is not None:
            write_payload(folder / STATE, {
                "format": STATE_FORMAT, "settings": settings, "epoch": epoch + 1, "arch": arch.state_dict(),
                "arch_opt": arch_opt.state_dict(),
                "weight_opt": None if weight_opt is None else weight_opt.state_dict(),
                "supernet": net.state_dict(), "trajectory": trajectory, "cost": cost})
            write_json(folder / RESULT, _result(net, arch, trajectory, cost, settings, epoch + 1, None).as_dict())
        log(f"[darts] epoch {epoch + 1}/{epochs}: val loss {means['val_loss']:.4f} (CE little "
            f"{means['ce_little']:.4f}, big {means['ce_big']:.4f}, cost {means['cost']:.4f}); E[FLOPs] little "
            f"{fl:,.0f}, big {fb:,.0f}"
            + (f"; E[latency] little {lat['latency_little']:.3f} ms, big {lat['latency_big']:.3f} ms" if lat else "")
            + f", forward rate {means['forward_rate']:.2f}; argmax pair {rec['encoding']}; {cpu:.1f} CPU s")

    net.eval()
    if update_supernet:
        supernet.load_state_dict(net.state_dict())
    record = None
    if evaluator is not None:
        before = evaluator.evaluated
        t0 = time.process_time()
        record = evaluator.evaluate(arch.pair(), threshold)
        cost["evaluated"] += evaluator.evaluated - before
        cost["cpu_seconds"] += time.process_time() - t0
    res = _result(net, arch, trajectory, cost, settings, max(done, epochs), record)
    if folder is not None:
        write_json(folder / RESULT, res.as_dict())
    return res


def _result(net: BigSmallSupernet, arch: ArchParameters, trajectory: list[dict], cost: dict, settings: dict,
            epochs_done: int, record: PairRecord | None) -> DartsResult:
    pair = arch.pair()
    return DartsResult(pair=pair, encoding=[int(v) for v in net.space.encode(pair)],
                       probabilities=arch.probabilities(), trajectory=list(trajectory),
                       cost=dict(cost), settings=dict(settings), epochs_done=epochs_done, record=record,
                       supernet=net)


def load_darts_result(folder: str | Path) -> dict:
    """The ``result.json`` a search wrote in ``folder`` (a CheckpointError when it is missing)."""
    import json

    path = Path(folder) / RESULT
    if not path.exists():
        raise CheckpointError(f"{path} does not exist; run darts_search with folder={str(folder)!r} first")
    return json.loads(path.read_text())


__all__ = ["ArchParameters", "DartsLoss", "DartsResult", "architecture_gradient", "darts_loss", "darts_search",
           "expected_flops", "expected_latency",
           "load_darts_result", "one_hot_probs", "param_key", "relaxed_features", "relaxed_logits"]
