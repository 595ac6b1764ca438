"""Elastic layers: convolutions, linear layers and normalisations whose active width can be set.

Shared by every supernet of the library (slimmable networks, big/little search). A layer holds the
weights of its widest form; the *input* width is read from the incoming tensor (the first channels
of the full weight are used), the *output* width is set with :meth:`set_active` (the first
``active_out`` output channels). :meth:`static` returns a plain ``torch.nn`` layer holding copies of
the active weights, so a network made of its layers' static copies computes exactly what the
supernet computes at that width.

Normalisations (:class:`ElasticNorm`):

* ``bn`` — switchable batch norm: one private ``BatchNorm2d`` (statistics and affine) per channel
  count the layer can see; :func:`recalibrate_bn` re-estimates their statistics after training;
* ``gn`` — group norm with a group count that divides every channel count the layer can see, affine
  parameters sliced from the widest;
* ``ln`` — layer norm over (C, H, W) (group norm with one group), affine parameters sliced.

Elastic kernels (:class:`ElasticDepthwiseConv2d`): a depthwise convolution holds its largest kernel; a smaller
kernel is the centre of the next larger one passed through a learned linear map (once-for-all's kernel
transform matrices, initialised to the identity), chained from the largest size down.
"""

from __future__ import annotations

import copy
import math
from typing import Callable, Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError, InputError

WIDTHS = (1.0, 0.75, 0.5, 0.25)  # width multipliers rho, widest first
NORMS = ("bn", "gn", "ln")


def scaled(channels: int, rho: float) -> int:
    """Channels of a layer of ``channels`` at width ``rho`` (rounded, at least 1)."""
    return max(1, int(round(channels * rho)))


def width_options(channels: int, widths: Sequence[float] = WIDTHS) -> tuple[int, ...]:
    """The distinct channel counts of a layer of ``channels`` over ``widths``, smallest first."""
    return tuple(sorted({scaled(channels, r) for r in widths}))


class ElasticConv2d(nn.Conv2d):
    """A ``Conv2d`` whose input width follows its input and whose output width is settable.

    Args: as ``nn.Conv2d`` (no groups); the given sizes are the widest.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, padding: int = 0,
                 bias: bool = False) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=padding, bias=bias)
        self.active_out = out_channels

    def set_active(self, out_channels: int) -> None:
        """Use the first ``out_channels`` filters."""
        if not 1 <= out_channels <= self.out_channels:
            raise ConfigError(f"{type(self).__name__} has {self.out_channels} output channels; cannot use {out_channels}")
        self.active_out = int(out_channels)

    def _weights(self, cin: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        if cin > self.in_channels:
            raise InputError(f"{type(self).__name__} takes at most {self.in_channels} channels, got {cin}")
        w = self.weight[:self.active_out, :cin]  # (out, cin, k, k)
        return w, None if self.bias is None else self.bias[:self.active_out]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w, b = self._weights(x.shape[1])
        return F.conv2d(x, w, b, self.stride, self.padding, self.dilation)

    def static(self, in_channels: int) -> nn.Conv2d:
        """A plain ``nn.Conv2d`` (``in_channels`` -> active output) with copies of the active weights."""
        w, b = self._weights(in_channels)
        m = nn.Conv2d(in_channels, self.active_out, self.kernel_size, stride=self.stride, padding=self.padding,
                      dilation=self.dilation, bias=b is not None)
        with torch.no_grad():
            m.weight.copy_(w)
            if b is not None:
                m.bias.copy_(b)
        return m.to(self.weight.device)


class ElasticLinear(nn.Linear):
    """A ``Linear`` whose input width follows its input and whose output width is settable."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True) -> None:
        super().__init__(in_features, out_features, bias=bias)
        self.active_out = out_features

    def set_active(self, out_features: int) -> None:
        if not 1 <= out_features <= self.out_features:
            raise ConfigError(f"{type(self).__name__} has {self.out_features} outputs; cannot use {out_features}")
        self.active_out = int(out_features)

    def _weights(self, cin: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        if cin > self.in_features:
            raise InputError(f"{type(self).__name__} takes at most {self.in_features} features, got {cin}")
        return self.weight[:self.active_out, :cin], None if self.bias is None else self.bias[:self.active_out]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w, b = self._weights(x.shape[-1])
        return F.linear(x, w, b)

    def static(self, in_features: int) -> nn.Linear:
        """A plain ``nn.Linear`` with copies of the active weights."""
        w, b = self._weights(in_features)
        m = nn.Linear(in_features, self.active_out, bias=b is not None)
        with torch.no_grad():
            m.weight.copy_(w)
            if b is not None:
                m.bias.copy_(b)
        return m.to(self.weight.device)


class ElasticDepthwiseConv2d(nn.Module):
    """A depthwise ``Conv2d`` ("same" padding, no bias) whose channels follow its input and whose kernel size is
    settable.

    The weight holds the largest kernel. Kernel ``k`` is made by walking down the sizes: the centre ``k' x k'`` of
    the current kernel, flattened, times the learned ``k'^2 x k'^2`` matrix ``transforms[f"{K}to{k'}"]`` (shared by
    every channel, initialised to the identity), until ``k' == k``. With identity matrices kernel ``k`` is the
    centre of the largest.

    Args:
        channels: the widest channel count.
        kernel_sizes: the odd kernel sizes it can run.
        stride: stride of the convolution.
    """

    def __init__(self, channels: int, kernel_sizes: Sequence[int] = (3, 5, 7), stride: int = 1) -> None:
        super().__init__()
        sizes = tuple(sorted(set(int(k) for k in kernel_sizes)))
        if not sizes or any(k < 1 or k % 2 == 0 for k in sizes):
            raise ConfigError(f"kernel sizes must be positive odd integers, got {tuple(kernel_sizes)}")
        self.channels, self.kernel_sizes, self.stride = int(channels), sizes, int(stride)
        self.max_kernel = sizes[-1]
        self.weight = nn.Parameter(torch.empty(channels, 1, self.max_kernel, self.max_kernel))
        nn.init.kaiming_normal_(self.weight, mode="fan_out")
        # "7to5": 25x25, "5to3": 9x9, each mapping the flattened centre of the larger kernel to the smaller one
        self.transforms = nn.ParameterDict({f"{big}to{small}": nn.Parameter(torch.eye(small * small))
                                            for big, small in zip(sizes[1:], sizes[:-1])})
        self.active_kernel = self.max_kernel

    def set_active(self, kernel_size: int) -> None:
        """Run kernel ``kernel_size`` (one of :attr:`kernel_sizes`)."""
        if kernel_size not in self.kernel_sizes:
            raise ConfigError(f"{type(self).__name__} has no kernel {kernel_size!r}; it takes {self.kernel_sizes}")
        self.active_kernel = int(kernel_size)

    def kernel(self, channels: int, kernel_size: int | None = None) -> torch.Tensor:
        """(channels, 1, k, k) weights of the first ``channels`` channels at kernel ``k`` (default: the active)."""
        k = self.active_kernel if kernel_size is None else kernel_size
        if channels > self.channels:
            raise InputError(f"{type(self).__name__} takes at most {self.channels} channels, got {channels}")
        w = self.weight[:channels]  # (c, 1, K, K)
        for big, small in zip(self.kernel_sizes[::-1], self.kernel_sizes[-2::-1]):
            if big <= k:
                break
            s = (big - small) // 2
            centre = w[:, :, s:s + small, s:s + small].reshape(channels, small * small)  # (c, small^2)
            w = F.linear(centre, self.transforms[f"{big}to{small}"]).view(channels, 1, small, small)
        return w

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c, k = x.shape[1], self.active_kernel
        return F.conv2d(x, self.kernel(c), None, self.stride, k // 2, 1, c)  # (B, c, H/s, W/s)

    def static(self, channels: int) -> nn.Conv2d:
        """A plain depthwise ``nn.Conv2d`` of ``channels`` at the active kernel, the transforms applied."""
        k = self.active_kernel
        m = nn.Conv2d(channels, channels, k, stride=self.stride, padding=k // 2, groups=channels, bias=False)
        with torch.no_grad():
            m.weight.copy_(self.kernel(channels))
        return m.to(self.weight.device)


def _groups(options: Sequence[int], max_groups: int) -> int:
    """The largest group count <= ``max_groups`` dividing every channel count in ``options`` and leaving at
    least two channels per group at the smallest (one group when the smallest has a single channel)."""
    g = 0
    for c in options:
        g = math.gcd(g, int(c))
    return max(d for d in range(1, min(g, max_groups) + 1) if g % d == 0 and (d == 1 or min(options) // d >= 2))


class ElasticNorm(nn.Module):
    """A normalisation that works at every channel count in ``options`` (see the module doc).

    Args:
        num_features: the widest channel count.
        kind: ``bn``, ``gn`` or ``ln``.
        options: every channel count the layer may see (default: :func:`width_options`).
        max_groups: upper bound on the group count of ``gn``.
        eps: numerical guard of the variance.
    """

    def __init__(self, num_features: int, kind: str = "bn", options: Sequence[int] | None = None,
                 max_groups: int = 8, eps: float = 1e-5) -> None:
        super().__init__()
        if kind not in NORMS:
            raise ConfigError(f"unknown normalisation {kind!r}; use one of {NORMS}")
        self.kind = kind
        self.num_features = num_features
        self.options = tuple(sorted(set(options or width_options(num_features))))
        if max(self.options) > num_features:
            raise ConfigError(f"channel options {self.options} exceed the {num_features} channels of the norm")
        self.eps = eps
        if kind == "bn":
            self.bns = nn.ModuleDict({str(c): nn.BatchNorm2d(c, eps=eps) for c in self.options})
        else:
            self.groups = 1 if kind == "ln" else _groups(self.options, max_groups)
            self.weight = nn.Parameter(torch.ones(num_features))
            self.bias = nn.Parameter(torch.zeros(num_features))

    def _check(self, c: int) -> None:
        if c not in self.options:
            raise InputError(f"{self.kind} norm of {self.num_features} channels has no setting for {c} channels; "
                             f"it takes {self.options}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = x.shape[1]
        self._check(c)
        if self.kind == "bn":
            return self.bns[str(c)](x)
        return F.group_norm(x, self.groups, self.weight[:c], self.bias[:c], self.eps)

    def static(self, channels: int) -> nn.Module:
        """A plain ``BatchNorm2d`` or ``GroupNorm`` for ``channels`` with copied statistics and affine weights."""
        self._check(channels)
        if self.kind == "bn":
            return copy.deepcopy(self.bns[str(channels)])
        m = nn.GroupNorm(self.groups, channels, eps=self.eps)
        with torch.no_grad():
            m.weight.copy_(self.weight[:channels])
            m.bias.copy_(self.bias[:channels])
        return m.to(self.weight.device)


def elastic_batch_norms(model: nn.Module) -> list[nn.BatchNorm2d]:
    """The private batch norms of every ``bn`` :class:`ElasticNorm` in ``model``."""
    return [bn for m in model.modules() if isinstance(m, ElasticNorm) and m.kind == "bn" for bn in m.bns.values()]


@torch.no_grad()
def recalibrate_bn(model: nn.Module, x: torch.Tensor, configs: Iterable, *, set_config: Callable | None = None,
                   batch_size: int = 256) -> int:
    """Re-estimate the statistics of every switchable batch norm in ``model`` after training.

    Each private batch norm forgets its statistics and takes the exact average over every batch of ``x``
    run through every configuration that reaches it; one no configuration reaches keeps its old ones.

    Args:
        model: a supernet built from :class:`ElasticNorm` layers.
        x: (N, C, H, W) images the model takes (a slice of the training split).
        configs: the subnet configurations to run.
        set_config: ``cfg -> None`` that activates a configuration (default ``model.set_active_subnet``).
        batch_size: images per forward pass.

    Returns:
        the number of batch norms re-estimated.
    """
    set_config = set_config or model.set_active_subnet
    bns = elastic_batch_norms(model)
    if not bns:
        return 0
    saved = [(copy.deepcopy(bn.state_dict()), bn.momentum) for bn in bns]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average
    was_training = model.training
    model.train()
    try:
        for cfg in configs:
            set_config(cfg)
            for i in range(0, x.shape[0], batch_size):
                model(x[i:i + batch_size])
    finally:
        model.train(was_training)
        for bn, (state, momentum) in zip(bns, saved):
            bn.momentum = momentum
            if int(bn.num_batches_tracked) == 0:
                bn.load_state_dict(state)
    return sum(int(bn.num_batches_tracked) > 0 for bn in bns)
