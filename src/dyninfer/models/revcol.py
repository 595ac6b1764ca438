"""A multi-column network with reversible connections and an exit per column (RevCol, paper section 3.1).

N columns of identical structure each produce L levels of features. Level l of column i is

    x[i][l] = F[i][l](x[i][l-1], x[i-1][l+1]) + gamma[i][l] * x[i-1][l]          (x[i][-1] = stem output)

where F fuses the finer level of the same column (down-sampled) with the coarser level of the
previous column (up-sampled) and refines them with residual blocks. Because the previous column
enters only through the ``gamma * x`` term and through F's *coarser* input, column i-1 can be
reconstructed from column i top-down (``x[i-1][l] = (x[i][l] - F(...)) / gamma``). Training
uses that: the forward pass keeps only the stem output and the last column, and the backward pass
rebuilds each earlier column on the fly, so activation memory does not grow with the number of
columns (:class:`_ReversibleColumns`). A classification head (global pool + linear, the final
head's structure) reads the top level of every column.

Sizes (baseline FLOPs per image — all columns, final head — counted with torch's FlopCounterMode):

=============  ===========  =======  ======  ===============  ===============  ==========
name           widths       columns  blocks  MFLOPs 28x28x1   MFLOPs 32x32x3   parameters
=============  ===========  =======  ======  ===============  ===============  ==========
revcol-tiny    (8, 16, 32)  3        1       5.42             6.47             94k
revcol-s       (16, 32, 64) 4        1       28.86            34.17            494k
revcol-m       (24, 48, 96) 4        1       64.89            76.72            1.1M
=============  ===========  =======  ======  ===============  ===============  ==========
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..data.datasets import DataSpec
from ..errors import ConfigError
from .exits import EarlyExitNetwork
from .registry import Normalize, register_backbone


@dataclass(frozen=True)
class RevColConfig:
    """Architecture of a :class:`RevColNet`."""

    widths: tuple[int, ...] = (16, 32, 64)  # channels of each level (level l has 1/2**(l+1) of the input size)
    columns: int = 4                        # number of columns = number of exits
    blocks: int = 1                         # residual blocks per level per column
    reversible: bool = True                 # rebuild columns in the backward pass instead of storing them
    gamma_init: float = 1.0                 # initial per-channel weight of the previous column's feature

    def __post_init__(self) -> None:
        if self.columns < 1 or self.blocks < 1 or len(self.widths) < 1 or min(self.widths) < 1:
            raise ConfigError(f"bad RevCol config {self}: need >= 1 column, block, level and channel")
        if not self.gamma_init > 0:
            raise ConfigError(f"gamma_init must be > 0 (the reversible inverse divides by it), got {self.gamma_init}")


def _conv_bn(cin: int, cout: int, k: int = 3, stride: int = 1, relu: bool = True) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2, bias=False), nn.BatchNorm2d(cout)]
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN plus identity, then ReLU. (N, C, H, W) -> (N, C, H, W)."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.body = nn.Sequential(_conv_bn(c, c), _conv_bn(c, c, relu=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x + self.body(x))


class Level(nn.Module):
    """F of one level: fuse the finer level of this column with the coarser level of the previous one.

    Args:
        cin_low: channels of the finer input (the stem output for level 0).
        c: channels of this level.
        c_high: channels of the coarser level of the previous column, or None (first column / top level).
        down: whether the finer input is halved in size (all levels but the first).
        blocks: residual blocks after the fusion.
    """

    def __init__(self, cin_low: int, c: int, c_high: int | None, down: bool, blocks: int) -> None:
        super().__init__()
        self.down = _conv_bn(cin_low, c, 3 if down else 1, stride=2 if down else 1, relu=False)
        self.up = _conv_bn(c_high, c, 1, relu=False) if c_high is not None else None
        self.blocks = nn.Sequential(*[BasicBlock(c) for _ in range(blocks)])

    def forward(self, low: torch.Tensor, high: torch.Tensor | None) -> torch.Tensor:
        x = self.down(low)  # (N, c, h, w)
        if high is not None and self.up is not None:
            x = x + F.interpolate(self.up(high), size=x.shape[-2:], mode="nearest")
        return self.blocks(x)


class Column(nn.Module):
    """One column: L levels; from the second column on, each level also reads the previous column."""

    def __init__(self, widths: tuple[int, ...], blocks: int, first: bool, gamma_init: float) -> None:
        super().__init__()
        L = len(widths)
        self.first = first
        self.levels = nn.ModuleList([
            Level(widths[0] if l == 0 else widths[l - 1], widths[l],
                  None if first or l == L - 1 else widths[l + 1], down=l > 0, blocks=blocks)
            for l in range(L)])
        self.gammas = nn.ParameterList([] if first else [
            nn.Parameter(torch.full((1, w, 1, 1), float(gamma_init))) for w in widths])

    def gamma(self, l: int) -> torch.Tensor:
        """Per-channel weight of the previous column at level l, kept away from 0 so the inverse exists."""
        return self.gammas[l].abs() + 1e-3  # (1, C_l, 1, 1)

    def forward(self, x0: torch.Tensor, prev: list[torch.Tensor] | None) -> list[torch.Tensor]:
        """x0: stem output (N, C0, H0, W0); prev: the previous column's L levels (None for the first)."""
        out: list[torch.Tensor] = []
        low = x0
        L = len(self.levels)
        for l, level in enumerate(self.levels):
            high = prev[l + 1] if prev is not None and l + 1 < L else None
            x = level(low, high)  # (N, C_l, H_l, W_l)
            if prev is not None:
                x = x + self.gamma(l) * prev[l]
            out.append(x)
            low = x
        return out

    @torch.no_grad()
    def inverse(self, x0: torch.Tensor, cur: list[torch.Tensor]) -> list[torch.Tensor]:
        """Rebuild the previous column's levels from this column's (top level first)."""
        if self.first:
            raise ConfigError("the first column has no previous column to reconstruct")
        L = len(self.levels)
        prev: list[torch.Tensor | None] = [None] * L
        for l in reversed(range(L)):
            low = x0 if l == 0 else cur[l - 1]
            high = prev[l + 1] if l + 1 < L else None
            prev[l] = (cur[l] - self.levels[l](low, high)) / self.gamma(l)
        return prev  # type: ignore[return-value]


class Stem(nn.Module):
    """Normalise, then conv3x3 stride 2: (N, C_in, H, W) -> (N, widths[0], H/2, W/2)."""

    def __init__(self, spec: DataSpec, c: int) -> None:
        super().__init__()
        self.norm = Normalize(spec.mean, spec.std)
        self.conv = _conv_bn(spec.in_channels, c, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.norm(x))


class FirstSegment(nn.Module):
    """Stem and the first column: image -> carry ``(x0, level_0, ..., level_{L-1})``."""

    def __init__(self, stem: Stem, column: Column) -> None:
        super().__init__()
        self.stem, self.column = stem, column

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        x0 = self.stem(x)
        return (x0, *self.column(x0, None))


class ColumnSegment(nn.Module):
    """A later column: carry of the previous column -> carry of this one (x0 passed through)."""

    def __init__(self, column: Column) -> None:
        super().__init__()
        self.column = column

    def forward(self, carry: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        x0, prev = carry[0], list(carry[1:])
        return (x0, *self.column(x0, prev))


class ExitHead(nn.Module):
    """Global average pool of the carry's last (coarsest) feature map, then a linear classifier."""

    def __init__(self, c: int, num_classes: int) -> None:
        super().__init__()
        self.fc = nn.Linear(c, num_classes)

    def forward(self, carry) -> torch.Tensor:
        top = carry[-1] if isinstance(carry, tuple) else carry  # (N, C, h, w)
        return self.fc(top.mean((2, 3)))  # (N, K)


class _ReversibleColumns(torch.autograd.Function):
    """All columns at once; saves only the stem output and the last column for the backward pass.

    Forward returns the top level of every column. Backward walks the columns from last to first,
    rebuilding column i-1 from column i (:meth:`Column.inverse`, fused with the recomputation of F)
    and accumulating parameter gradients directly, as in RevNet/RevCol.
    """

    @staticmethod
    def forward(ctx, net: "RevColNet", x0: torch.Tensor) -> tuple[torch.Tensor, ...]:  # type: ignore[override]
        with torch.no_grad():
            prev: list[torch.Tensor] | None = None
            tops = []
            for col in net.columns():
                prev = col(x0, prev)
                tops.append(prev[-1])
        ctx.net = net
        ctx.save_for_backward(x0, *prev)  # type: ignore[misc]
        return tuple(tops)

    @staticmethod
    def backward(ctx, *g_tops: torch.Tensor):  # type: ignore[override]
        x0, *cur = ctx.saved_tensors
        net: RevColNet = ctx.net
        cols = net.columns()
        L = len(cur)
        g_cur = [torch.zeros_like(c) for c in cur]
        g_cur[-1] = g_cur[-1] + g_tops[-1]
        g_x0 = torch.zeros_like(x0)
        saved_bn = _bn_buffers(cols)  # the recomputation must not count batches twice in BN statistics
        with torch.enable_grad():
            for i in reversed(range(len(cols))):
                col = cols[i]
                x0_leaf = x0.detach().requires_grad_()
                lows = [x0_leaf] + [c.detach().requires_grad_() for c in cur[:-1]]  # finer input of each level
                prev_leaves: list[torch.Tensor | None] = [None] * L
                for l in reversed(range(L)):
                    high = prev_leaves[l + 1] if (l + 1 < L and not col.first) else None
                    f = col.levels[l](lows[l], high)  # (N, C_l, H_l, W_l), with graph
                    if col.first:
                        out = f
                    else:
                        g = col.gamma(l)
                        p = ((cur[l] - f) / g).detach().requires_grad_()  # previous column, rebuilt
                        prev_leaves[l] = p
                        out = f + g * p
                    torch.autograd.backward(out, g_cur[l])
                    if l > 0:
                        g_cur[l - 1] = g_cur[l - 1] + lows[l].grad
                g_x0 = g_x0 + x0_leaf.grad
                if i > 0:
                    g_cur = [pl.grad if pl.grad is not None else torch.zeros_like(pl) for pl in prev_leaves]  # type: ignore[union-attr]
                    g_cur[-1] = g_cur[-1] + g_tops[i - 1]
                    cur = [pl.detach() for pl in prev_leaves]  # type: ignore[union-attr]
        _restore_bn(cols, saved_bn)
        return None, g_x0


def _bn_buffers(modules) -> list[list[torch.Tensor]]:
    return [[b.clone() for b in m.buffers()] for col in modules for m in col.modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def _restore_bn(modules, saved: list[list[torch.Tensor]]) -> None:
    bns = [m for col in modules for m in col.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    with torch.no_grad():
        for m, bufs in zip(bns, saved):
            for b, s in zip(m.buffers(), bufs):
                b.copy_(s)


class RevColNet(EarlyExitNetwork):
    """RevCol-style multi-column classifier with an exit head per column.

    Args:
        spec: the data (channels, image size, classes, normalisation).
        config: the architecture (:class:`RevColConfig`).

    Segments: segment 0 is the stem and column 0; segment i is column i. The carry is the tuple
    ``(x0, level_0, ..., level_{L-1})`` of the last column run. Head i reads the top level of column i.
    """

    def __init__(self, spec: DataSpec, config: RevColConfig = RevColConfig()) -> None:
        super().__init__()
        self.config = config
        self.input_shape = spec.input_shape
        w = tuple(config.widths)
        stem = Stem(spec, w[0])
        cols = [Column(w, config.blocks, first=i == 0, gamma_init=config.gamma_init) for i in range(config.columns)]
        self.segments = nn.ModuleList([FirstSegment(stem, cols[0])] + [ColumnSegment(c) for c in cols[1:]])
        self.heads = nn.ModuleList([ExitHead(w[-1], spec.num_classes) for _ in range(config.columns)])
        self.exit_names = [f"column{i}" for i in range(config.columns)]

    def columns(self) -> list[Column]:
        return [seg.column for seg in self.segments]

    @property
    def stem(self) -> Stem:
        return self.segments[0].stem

    def _use_reversible(self) -> bool:
        return (self.config.reversible and self.training and torch.is_grad_enabled()
                and any(p.requires_grad for p in self.segments.parameters()))

    def column_tops(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Top-level features (N, C, h, w) of every column; reversible in training when configured."""
        x0 = self.stem(x)  # (N, C0, H/2, W/2)
        if self._use_reversible():
            if not x0.requires_grad:
                x0 = x0.detach().requires_grad_()
            return list(_ReversibleColumns.apply(self, x0))
        prev = None
        tops = []
        for col in self.columns():
            prev = col(x0, prev)
            tops.append(prev[-1])
        return tops

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._use_reversible():
            return self.heads[-1](self.column_tops(x)[-1])
        return super().forward(x)

    def forward_exits(self, x: torch.Tensor) -> list[torch.Tensor]:
        if self._use_reversible():
            return [h(t) for h, t in zip(self.heads, self.column_tops(x))]
        return super().forward_exits(x)


REVCOL_SIZES = {
    "revcol-tiny": RevColConfig(widths=(8, 16, 32), columns=3),
    "revcol-s": RevColConfig(widths=(16, 32, 64), columns=4),
    "revcol-m": RevColConfig(widths=(24, 48, 96), columns=4),
}


def _make_builder(base: RevColConfig):
    def build(spec: DataSpec, **overrides) -> RevColNet:
        allowed = set(asdict(base))
        unknown = sorted(set(overrides) - allowed)
        if unknown:
            raise ConfigError(f"unknown RevCol settings {unknown}; allowed: {sorted(allowed)}")
        cfg = asdict(base) | overrides
        cfg["widths"] = tuple(cfg["widths"])
        return RevColNet(spec, RevColConfig(**cfg))

    build.__doc__ = f"RevCol early-exit network {base} (see :class:`RevColNet`)."
    return build


for _name, _cfg in REVCOL_SIZES.items():
    register_backbone(_name)(_make_builder(_cfg))


def saved_activation_bytes(net: EarlyExitNetwork, x: torch.Tensor) -> int:
    """Bytes autograd keeps for the backward pass of one training step on ``x`` (all exits' logits summed).

    Counted with ``torch.autograd.graph.saved_tensors_hooks``; compares reversible and plain training memory.

    Args:
        net: the network (put in training mode for the measurement, restored after).
        x: a batch (N, C, H, W).

    Returns:
        total bytes of the tensors saved for backward.
    """
    total = 0

    def pack(t: torch.Tensor) -> torch.Tensor:
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    was = net.training
    saved = _bn_buffers([net])  # a measurement must not move batch-norm statistics
    net.train()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        sum(o.sum() for o in net.forward_exits(x))
    _restore_bn([net], saved)
    net.train(was)
    return total
