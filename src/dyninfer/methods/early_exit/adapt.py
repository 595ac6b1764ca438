"""Test-time specialisation (paper section 3.3): on an unlabelled stream, earlier heads learn from the exit that answered.

For every stream image the network runs as deployed (threshold exiting). When exit e answers with
class y_hat, each earlier head j < e takes one cross-entropy step towards y_hat on the features it
already computed (the backbone runs without autograd and never changes; the last head is never
updated). Heads therefore become confident sooner on the classes a deployment actually sees.

Step size. With plain SGD the step a linear head takes is proportional to the squared norm of its
input, and that grows with depth (revcol-s on Fashion-MNIST: about 27 for the first head's pooled
features vs 324 for the third), so one learning rate is too small for the first head and too large
for the later ones. ``lr_scale="input-norm"`` divides each head's learning rate by the running mean
squared norm of its classifier input on the stream (the normalised LMS rule), which needs no labels
and makes ``lr`` a step size relative to each head's own features.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode
from tqdm.auto import tqdm

from ...check import choice, number
from ...errors import ConfigError
from ...scores import make_score
from ...runtime.cost import model_device
from ...models.exits import EarlyExitNetwork


LR_SCALES = ("none", "input-norm")


@dataclass(frozen=True)
class SpecializeConfig:
    """How heads adapt on the stream (defaults: the paper's section 4.2)."""

    lr: float = 1e-4              # SGD learning rate of the head updates
    batch_size: int = 1           # stream images per update (1: update after every prediction)
    momentum: float = 0.0         # SGD momentum
    weight_decay: float = 0.0     # SGD weight decay
    score: str = "max_softmax"    # confidence score deciding which exit answers during adaptation
    threshold: float = 0.9        # uniform exit threshold while adapting
    lr_scale: str = "none"        # "none" (plain SGD) or "input-norm" (lr / mean squared norm of each head's input)
    passes: int = 1               # times the stream is replayed (1: one online pass, as in the paper)

    def __post_init__(self) -> None:
        number("lr", self.lr, lo=0, lo_open=True)
        number("batch_size", self.batch_size, lo=1, integer=True)
        number("momentum", self.momentum, lo=0, hi=1, hi_open=True)
        number("weight_decay", self.weight_decay, lo=0)
        number("threshold", self.threshold)
        number("passes", self.passes, lo=1, integer=True)
        choice("lr_scale", self.lr_scale, LR_SCALES)
        make_score(self.score)

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def label(self) -> str:
        """Short name, e.g. ``lr 0.0001`` or ``lr 0.3 input-norm x3``."""
        out = f"lr {self.lr:g}"
        if self.lr_scale != "none":
            out += f" {self.lr_scale}"
        if self.momentum:
            out += f" momentum {self.momentum:g}"
        if self.passes > 1:
            out += f" x{self.passes}"
        return out

    @property
    def slug(self) -> str:
        """File-name-safe form of :attr:`label`."""
        return self.label.replace("lr ", "lr").replace(" ", "_")


def parse_adaptation(spec: str, **defaults) -> SpecializeConfig:
    """A :class:`SpecializeConfig` from ``LR[:LR_SCALE[:PASSES]]``, e.g. ``1e-4`` or ``0.3:input-norm:3``.

    Raises:
        ConfigError: a malformed spec, with the expected form.
    """
    parts = str(spec).split(":")
    try:
        if not 1 <= len(parts) <= 3:
            raise ValueError
        kw = dict(defaults, lr=float(parts[0]))
        if len(parts) > 1:
            kw["lr_scale"] = parts[1]
        if len(parts) > 2:
            kw["passes"] = int(parts[2])
    except ValueError:
        raise ConfigError(f"bad adaptation {spec!r}: use LR[:LR_SCALE[:PASSES]], e.g. 1e-4 or 0.3:input-norm:3, "
                          f"with LR_SCALE one of {LR_SCALES}") from None
    return SpecializeConfig(**kw)


@dataclass
class AdaptLog:
    """What happened on the stream.

    Attributes:
        exit: (N,) exit that answered each stream image.
        pred: (N,) the answer (also the target of the earlier heads).
        infer_s: (N,) wall time of the prediction (threshold exiting at batch 1, features kept).
        update_s: (U,) wall time of each head update (loss, backward, SGD step).
        update_heads: (U,) number of heads each update touched.
        update_cpu_s: (U,) CPU time of the updating thread for each update (unaffected by other jobs).
    """

    exit: np.ndarray
    pred: np.ndarray
    infer_s: np.ndarray
    update_s: np.ndarray
    update_heads: np.ndarray
    update_cpu_s: np.ndarray

    def summary(self) -> dict:
        u, c = self.update_s, self.update_cpu_s
        full = self.update_heads == self.update_heads.max() if u.size else np.zeros(0, bool)
        worst, worst_cpu = u[full], c[full]
        return {"stream": int(self.exit.size), "updates": int(u.size),
                "exit_share": np.bincount(self.exit, minlength=int(self.exit.max(initial=0)) + 1).tolist(),
                "update_ms_median": float(np.median(u) * 1e3) if u.size else 0.0,
                "update_ms_mean": float(np.mean(u) * 1e3) if u.size else 0.0,
                "update_ms_worst_case_median": float(np.median(worst) * 1e3) if worst.size else 0.0,
                "update_cpu_ms_median": float(np.median(c) * 1e3) if c.size else 0.0,
                "update_cpu_ms_worst_case_median": float(np.median(worst_cpu) * 1e3) if worst_cpu.size else 0.0,
                "infer_ms_median": float(np.median(self.infer_s) * 1e3) if self.infer_s.size else 0.0}


class TestTimeSpecializer:
    """Adapts the early heads of ``net`` on an unlabelled stream.

    Args:
        net: the early-exit network; its heads 0..P-2 are updated in place.
        config: :class:`SpecializeConfig`.

    Fitted attributes (after :meth:`adapt`): ``log_`` (:class:`AdaptLog`), ``n_seen_``.
    """

    __test__ = False  # not a pytest class

    def __init__(self, net: EarlyExitNetwork, config: SpecializeConfig = SpecializeConfig()) -> None:
        if net.n_exits < 2:
            raise ConfigError("test-time specialisation needs at least two exits")
        self.net = net
        self.config = config
        self.score_ = make_score(config.score)
        self.exits_ = list(range(net.n_exits - 1))  # the last head is never updated
        self.optimizer_ = torch.optim.SGD([{"params": list(net.head_parameters([j]))} for j in self.exits_],
                                          lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
        self.n_seen_ = 0
        # input-norm: the classifier layer of each head, and running sums of its inputs' squared norms
        self._linears = [_last_linear(net.heads[j], j) for j in self.exits_] if config.lr_scale == "input-norm" else []
        self.input_sq_ = np.zeros(len(self.exits_))  # running sum of squared input norms per head
        self.input_n_ = np.zeros(len(self.exits_))   # rows seen per head

    # ----------------------------------------------------------------- snapshots
    def snapshot(self) -> dict:
        """Weights of the adaptable heads and the optimiser state (deep copies)."""
        return {"heads": self.net.head_state(self.exits_),
                "optimizer": _clone(self.optimizer_.state_dict()), "n_seen": self.n_seen_,
                "input_sq": self.input_sq_.copy(), "input_n": self.input_n_.copy()}

    def restore(self, snap: dict) -> None:
        """Return heads and optimiser to a :meth:`snapshot` (e.g. the state before deployment)."""
        try:
            self.net.load_head_state(snap["heads"])
            self.optimizer_.load_state_dict(_clone(snap["optimizer"]))
            self.n_seen_ = int(snap["n_seen"])
            self.input_sq_ = np.array(snap["input_sq"], dtype=float)
            self.input_n_ = np.array(snap["input_n"], dtype=float)
        except (KeyError, TypeError) as e:
            raise ConfigError(f"not a specialiser snapshot ({type(e).__name__}: {e})") from e

    # ----------------------------------------------------------------- the stream
    @torch.no_grad()
    def _predict_one(self, x: torch.Tensor | None, features: list | None = None):
        """Threshold exiting on one image, keeping each visited exit's carry. Returns (exit, pred, carries).

        ``features``: the image's carry at every exit, computed beforehand (then ``x`` is not used)."""
        carry = x
        carries = []
        P = self.net.n_exits
        for p in range(P):
            carry = features[p] if features is not None else self.net.segments[p](carry)
            logits = self.net.heads[p](carry)  # (1, K)
            carries.append(carry)
            if p == P - 1 or bool(self.score_(logits.float())[0] >= self.config.threshold):
                return p, int(logits.argmax(-1)[0]), carries
        raise AssertionError("unreachable")

    @torch.no_grad()
    def _features(self, x: torch.Tensor) -> list:
        """Every exit's carry for a batch of images (the backbone never changes, so this can run ahead)."""
        out, carry = [], x
        for seg in self.net.segments:
            carry = seg(carry)
            out.append(carry)
        return out

    def _update(self, batch: list[tuple[int, int, list]]) -> tuple[float, float, int]:
        """One SGD step of heads j < exit towards the answer, over a batch of (exit, pred, carries).

        Returns:
            (wall seconds, CPU seconds of this thread, heads touched).
        """
        t0, c0 = time.perf_counter(), time.thread_time()
        losses = []
        touched = 0
        for j in self.exits_:
            items = [(pred, carries[j]) for e, pred, carries in batch if j < e]
            if not items:
                continue
            touched += 1
            carry = _stack([c for _, c in items])
            target = torch.tensor([t for t, _ in items], dtype=torch.long, device=model_device(self.net))
            losses.append(F.cross_entropy(self.net.heads[j](carry), target))
        if losses:
            self.optimizer_.zero_grad(set_to_none=True)
            torch.stack(losses).sum().backward()
            if self._linears:
                for k, group in enumerate(self.optimizer_.param_groups):
                    mean_sq = self.input_sq_[k] / self.input_n_[k] if self.input_n_[k] else 1.0
                    group["lr"] = self.config.lr / max(mean_sq, 1e-12)
            self.optimizer_.step()
        return time.perf_counter() - t0, time.thread_time() - c0, touched

    def adapt(self, x: torch.Tensor, *, progress: bool = True, prefetch: int = 1) -> "TestTimeSpecializer":
        """Process the stream ``x`` (N, C, H, W) in order: predict each image, then update the earlier heads.

        The stream is processed ``config.passes`` times (a replayed stream; 1 is the paper's single pass).

        Args:
            prefetch: stream images whose backbone features are computed together, in one batch, before
                their predictions. 1 (default) runs each image alone, as a deployment does. Larger values
                are a simulation speed-up for evaluations: the backbone never changes, so the features
                are those of one image at a time up to float rounding (about 1e-6), and the heads still
                see the images one by one, in order, each after the updates of the images before it.
                ``log_.infer_s`` then holds each image's share of its batch's backbone time plus its heads.

        Returns:
            self, with ``log_`` describing the stream (exits, answers, per-update wall time).
        """
        if int(prefetch) < 1:
            raise ConfigError(f"prefetch must be >= 1 (images whose features are computed together), got {prefetch}")
        x = self.net.check_input(x, where="TestTimeSpecializer.adapt")
        self.net.eval()  # the backbone stays in inference mode: batch-norm statistics are frozen too
        hooks = [lin.register_forward_pre_hook(self._input_hook(k)) for k, lin in enumerate(self._linears)]
        try:
            return self._adapt(x, progress, int(prefetch))
        finally:
            for h in hooks:
                h.remove()

    def _input_hook(self, k: int):
        def hook(module, args):
            if not torch.is_grad_enabled():  # count each stream image once: at prediction, not again at the update
                f = args[0].detach().float().flatten(1)
                self.input_sq_[k] += float((f * f).sum())
                self.input_n_[k] += f.shape[0]
        return hook

    def _adapt(self, x: torch.Tensor, progress: bool, chunk: int) -> "TestTimeSpecializer":
        exits, preds, infer, upd, cpu, heads = [], [], [], [], [], []
        pending: list = []
        order = [i for _ in range(self.config.passes) for i in range(x.shape[0])]
        dev = model_device(self.net)  # the stream may live elsewhere (e.g. on the CPU for a CUDA network)
        feats: list = []
        share = 0.0
        for n, i in enumerate(tqdm(order, desc="specialise", disable=not progress, leave=False, mininterval=1.0)):
            t0 = time.perf_counter()
            if chunk > 1:
                if n % chunk == 0:  # the backbone features of the next `chunk` stream images, in one batch
                    idx = torch.as_tensor(order[n:n + chunk], device=x.device)
                    feats = self._features(x[idx].to(dev))
                    share = (time.perf_counter() - t0) / len(idx)
                    t0 = time.perf_counter()
                k = n % chunk
                e, pred, carries = self._predict_one(None, [_row(f, k) for f in feats])
                infer.append(time.perf_counter() - t0 + share)
            else:
                e, pred, carries = self._predict_one(x[i:i + 1].to(dev))
                infer.append(time.perf_counter() - t0)
            exits.append(e)
            preds.append(pred)
            self.n_seen_ += 1
            if e > 0:
                pending.append((e, pred, carries))
            if len(pending) >= self.config.batch_size:
                dt, dc, touched = self._update(pending)
                upd.append(dt)
                cpu.append(dc)
                heads.append(touched)
                pending = []
        if pending:
            dt, dc, touched = self._update(pending)
            upd.append(dt)
            cpu.append(dc)
            heads.append(touched)
        self.log_ = AdaptLog(np.asarray(exits, int), np.asarray(preds, int), np.asarray(infer),
                             np.asarray(upd), np.asarray(heads, int), np.asarray(cpu))
        return self

    def update_flops(self) -> int:
        """FLOPs of the worst-case update (every adaptable head, one image), counted with FlopCounterMode."""
        shape = self.net.input_shape
        if shape is None:
            raise ConfigError("the network does not know its input shape")
        with torch.no_grad():
            carries = []
            carry = torch.zeros(1, *shape, device=model_device(self.net))
            for p in self.exits_:
                carry = self.net.segments[p](carry)
                carries.append(carry)
        snap = self.snapshot()
        with FlopCounterMode(display=False) as counter:
            self._update([(self.net.n_exits - 1, 0, carries)])
        self.restore(snap)
        return int(counter.get_total_flops())


def _last_linear(head: torch.nn.Module, j: int) -> torch.nn.Linear:
    linears = [m for m in head.modules() if isinstance(m, torch.nn.Linear)]
    if not linears:
        raise ConfigError(f"lr_scale='input-norm' needs an nn.Linear classifier in each head; head {j} has none "
                          f"({type(head).__name__}); use lr_scale='none'")
    return linears[-1]


def _row(carry, k: int):
    """Row ``k`` of a batched carry (a tensor or a tuple of tensors), keeping the batch dimension."""
    if isinstance(carry, tuple):
        return tuple(c[k:k + 1] for c in carry)
    return carry[k:k + 1]


def _stack(carries: list):
    if isinstance(carries[0], tuple):
        return tuple(torch.cat([c[k] for c in carries]) for k in range(len(carries[0])))
    return torch.cat(carries)


def _clone(obj):
    if isinstance(obj, torch.Tensor):
        return obj.detach().clone()
    if isinstance(obj, dict):
        return {k: _clone(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_clone(v) for v in obj]
    return obj

