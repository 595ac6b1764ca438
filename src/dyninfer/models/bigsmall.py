"""The big/little search space and its supernet: one once-for-all network holding a little and a big classifier.

Layout (section 3.2 of the NAS-for-dynamic-inference paper): a fixed shared stem, ``N`` searchable stages of
MobileNetV2-style inverted residuals (1x1 expand, depthwise ``k x k``, 1x1 project; a residual on every layer but
the first of a stage), a *little* head after stage ``L`` and a *big* head after stage ``N``. Each stage chooses

* ``width``  — multiplier of the stage's output channels (:data:`~dyninfer.models.elastic.WIDTHS`);
* ``depth``  — how many of its layers run (the first ``depth``, as in once-for-all);
* ``kernel`` — the depthwise kernel (an elastic kernel: :class:`~dyninfer.models.elastic.ElasticDepthwiseConv2d`);
* ``expand`` — expansion ratio: hidden channels = ``round(expand * input channels)``.

A *single* subnet is a configuration of the stages in front of one head (:class:`SubnetConfig`: ``L`` stages
for the little head, ``N`` for the big one); a *pair* (:class:`PairConfig`) is a little and a big configuration
of the same supernet, sharing its weights. :class:`SearchSpace` checks, samples, enumerates and encodes them
(:meth:`SearchSpace.encode`: a flat vector of choice indices, smallest choice 0); :func:`cardinality` counts the
distinct architectures exactly.

:class:`BigSmallSupernet` follows the once-for-all API (``set_active_subnet``, ``sample_active_subnet``,
``get_active_subnet``), so its subnets are paths of a :class:`~dyninfer.paths.SupernetPaths`
(``SupernetPaths(net, net.pair_paths(pair))`` gives the paths ``little`` and ``big``). For co-training
(:mod:`dyninfer.train.bigsmall`) :meth:`BigSmallSupernet.forward_pair` runs both heads of a pair in one call
(the stem and the stages both configurations share run once) and returns the little head's pooled features for
the router (:mod:`dyninfer.models.bigsmall_router`); :meth:`BigSmallSupernet.flops` counts a subnet's FLOPs
from its shapes.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
from collections import Counter
from dataclasses import dataclass
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from ..data.datasets import DataSpec
from ..errors import ConfigError
from .elastic import NORMS, WIDTHS, ElasticConv2d, ElasticDepthwiseConv2d, ElasticNorm, scaled
from .registry import Normalize, register_backbone

DEPTHS = (1, 2, 3, 4)  # active layers per stage
KERNELS = (3, 5, 7)  # depthwise kernel sizes
EXPANDS = (1, 2, 4, 6)  # expansion ratios
HEADS = ("little", "big")
FIELDS = ("width", "depth", "kernel", "expand")  # per stage, in encoding order


def expanded(channels: int, expand: float) -> int:
    """Hidden channels of an inverted residual reading ``channels`` at expansion ratio ``expand``."""
    return max(1, int(round(channels * expand)))


# ---------------------------------------------------------------------------------------- configurations

@dataclass(frozen=True)
class StageConfig:
    """The choices of one searchable stage."""

    width: float  # multiplier of the stage's output channels
    depth: int  # active layers: the first ``depth``
    kernel: int  # depthwise kernel size
    expand: float  # hidden channels / input channels of each layer

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class SubnetConfig:
    """One subnet: the stages in front of ``head`` (the first ``L`` for ``little``, all ``N`` for ``big``)."""

    head: str
    stages: tuple[StageConfig, ...]

    def as_dict(self) -> dict:
        """The JSON form ``{"head": ..., "stages": [{"width": ..., ...}, ...]}`` (what path sets store)."""
        return {"head": self.head, "stages": [s.as_dict() for s in self.stages]}


@dataclass(frozen=True)
class PairConfig:
    """A little/big pair of one supernet."""

    little: SubnetConfig
    big: SubnetConfig

    def as_dict(self) -> dict:
        return {"little": self.little.as_dict(), "big": self.big.as_dict()}


@dataclass(frozen=True)
class Cardinality:
    """Distinct architectures of a space: little subnets, single (big) subnets, and little/big pairs."""

    little: int
    single: int
    pairs: int


@dataclass(frozen=True)
class SearchSpace:
    """The choices of every searchable stage, and where the little head sits.

    Choices are kept smallest first; a choice's index in its tuple is its code in :meth:`encode`.
    """

    n_stages: int = 4  # searchable stages N
    little_after: int = 2  # the little head reads stage L (1 <= L < N)
    widths: tuple[float, ...] = tuple(sorted(WIDTHS))  # width multipliers
    depths: tuple[int, ...] = DEPTHS  # active layers per stage
    kernels: tuple[int, ...] = KERNELS  # depthwise kernel sizes (odd)
    expands: tuple[float, ...] = EXPANDS  # expansion ratios

    def __post_init__(self) -> None:
        if not isinstance(self.n_stages, int) or self.n_stages < 2:
            raise ConfigError(f"a big/little space has at least 2 stages, got n_stages={self.n_stages!r}")
        if not isinstance(self.little_after, int) or not 1 <= self.little_after < self.n_stages:
            raise ConfigError(f"little_after must be a stage before the last: one of 1..{self.n_stages - 1}, "
                              f"got {self.little_after!r}")
        checks = {"widths": lambda v: 0 < v <= 1, "depths": lambda v: isinstance(v, int) and v >= 1,
                  "kernels": lambda v: isinstance(v, int) and v >= 1 and v % 2 == 1, "expands": lambda v: v > 0}
        for name, ok in checks.items():
            values = tuple(getattr(self, name))
            if not values or len(set(values)) != len(values) or not all(
                    not isinstance(v, bool) and isinstance(v, (int, float)) and ok(v) for v in values):
                raise ConfigError(f"{name} must be distinct valid values, got {values!r}")
            object.__setattr__(self, name, tuple(sorted(values)))

    # ------------------------------------------------------------------ structure
    def choices(self, field: str) -> tuple:
        """The allowed values of ``field`` (``width``, ``depth``, ``kernel`` or ``expand``), smallest first."""
        return getattr(self, field + "s")

    def stages_of(self, head: str) -> int:
        """How many stages a subnet of ``head`` configures."""
        if head not in HEADS:
            raise ConfigError(f"head {head!r} is not one of {HEADS}")
        return self.little_after if head == "little" else self.n_stages

    def num_configs(self, head: str = "big") -> int:
        """Configurations of one head (counted as choices; see :func:`cardinality` for distinct architectures)."""
        per_stage = len(self.widths) * len(self.depths) * len(self.kernels) * len(self.expands)
        return per_stage ** self.stages_of(head)

    # ------------------------------------------------------------------ checking
    def check_stage(self, stage: Any, s: int = 0) -> StageConfig:
        """``stage`` (a :class:`StageConfig` or a mapping with the keys of :data:`FIELDS`) checked against the
        choices, or a ConfigError naming the stage, the field and its allowed values."""
        if isinstance(stage, StageConfig):
            stage = stage.as_dict()
        if not isinstance(stage, Mapping):
            raise ConfigError(f"stage {s + 1} must be a mapping with keys {FIELDS}, got {stage!r}")
        unknown, missing = sorted(set(stage) - set(FIELDS)), [f for f in FIELDS if f not in stage]
        if unknown or missing:
            raise ConfigError(f"stage {s + 1} takes the keys {FIELDS}; unknown {unknown}, missing {missing}")
        values = {}
        for f in FIELDS:
            v, allowed = stage[f], self.choices(f)
            if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, float, np.integer, np.floating)) \
                    or v not in allowed:
                raise ConfigError(f"stage {s + 1}: {f} {v!r} is not one of the allowed values {allowed}")
            values[f] = allowed[allowed.index(v)]  # the space's own value (int or float)
        return StageConfig(**values)

    def check_subnet(self, cfg: Any, head: str | None = None) -> SubnetConfig:
        """``cfg`` as a canonical :class:`SubnetConfig`, or a ConfigError saying what is wrong.

        Args:
            cfg: a :class:`SubnetConfig`, its dict form ``{"head": ..., "stages": [...]}`` (``head`` may be left
                out: ``L`` stages mean little, ``N`` big) or a bare sequence of stages.
            head: the head it must be for (default: any).
        """
        if isinstance(cfg, SubnetConfig):
            cfg = cfg.as_dict()
        if isinstance(cfg, Mapping):
            unknown = sorted(set(cfg) - {"head", "stages"})
            if unknown or "stages" not in cfg:
                raise ConfigError(f"a subnet configuration has the keys 'head' (optional) and 'stages'; "
                                  f"got {sorted(cfg)}")
            stages, given = cfg["stages"], cfg.get("head")
        else:
            stages, given = cfg, None
        if not isinstance(stages, (list, tuple)):
            raise ConfigError(f"stages must be a list with one entry per stage, got {stages!r}")
        counts = {h: self.stages_of(h) for h in HEADS}
        if given is None:
            given = next((h for h, n in counts.items() if n == len(stages)), None)
            if given is None:
                raise ConfigError(f"a subnet configures {counts['little']} stages (little head) or "
                                  f"{counts['big']} (big head); got {len(stages)}")
        elif given not in HEADS:
            raise ConfigError(f"head {given!r} is not one of {HEADS}")
        if head is not None and given != head:
            raise ConfigError(f"expected a {head} subnet, got a {given} one")
        if len(stages) != counts[given]:
            raise ConfigError(f"a {given} subnet configures {counts[given]} stages; got {len(stages)}")
        return SubnetConfig(given, tuple(self.check_stage(st, s) for s, st in enumerate(stages)))

    def check_pair(self, pair: Any) -> PairConfig:
        """``pair`` (a :class:`PairConfig` or ``{"little": ..., "big": ...}``) in canonical form, or a ConfigError
        saying what a pair is (a single subnet given for a pair is named as such)."""
        if isinstance(pair, PairConfig):
            pair = {"little": pair.little, "big": pair.big}
        if isinstance(pair, SubnetConfig) or (isinstance(pair, Mapping) and "stages" in pair):
            head = pair.head if isinstance(pair, SubnetConfig) else pair.get("head", "(unnamed)")
            raise ConfigError(f"expected a little/big pair {{'little': <little subnet>, 'big': <big subnet>}}; got a "
                              f"single subnet (head {head}): give both subnets")
        if not isinstance(pair, Mapping) or set(pair) != {"little", "big"}:
            raise ConfigError(f"a pair configuration has exactly the keys 'little' and 'big'; got {pair!r}")
        return PairConfig(self.check_subnet(pair["little"], "little"), self.check_subnet(pair["big"], "big"))

    # ------------------------------------------------------------------ building configurations
    def uniform(self, head: str = "big", **choices: Any) -> SubnetConfig:
        """The subnet of ``head`` with the same choices at every stage (keys of :data:`FIELDS`)."""
        return self.check_subnet({"head": head, "stages": [dict(choices)] * self.stages_of(head)})

    def min_subnet(self, head: str = "big") -> SubnetConfig:
        """The smallest subnet of ``head``: the smallest choice everywhere."""
        return self.uniform(head, **{f: self.choices(f)[0] for f in FIELDS})

    def max_subnet(self, head: str = "big") -> SubnetConfig:
        """The largest subnet of ``head``: the largest choice everywhere."""
        return self.uniform(head, **{f: self.choices(f)[-1] for f in FIELDS})

    def sample(self, rng: np.random.Generator, head: str = "big") -> SubnetConfig:
        """A configuration of ``head`` drawn uniformly (each choice of each stage independently uniform)."""
        stages = [StageConfig(**{f: self.choices(f)[int(rng.integers(len(self.choices(f))))] for f in FIELDS})
                  for _ in range(self.stages_of(head))]
        return SubnetConfig(head, tuple(stages))

    def sample_pair(self, rng: np.random.Generator) -> PairConfig:
        """A little/big pair drawn uniformly."""
        return PairConfig(self.sample(rng, "little"), self.sample(rng, "big"))

    def configs(self, head: str = "big") -> Iterator[SubnetConfig]:
        """Every configuration of ``head`` (:meth:`num_configs` of them; for small spaces)."""
        per_stage = [StageConfig(*c) for c in itertools.product(self.widths, self.depths, self.kernels, self.expands)]
        for stages in itertools.product(per_stage, repeat=self.stages_of(head)):
            yield SubnetConfig(head, stages)

    # ------------------------------------------------------------------ encoding
    def encoding_lengths(self) -> dict[str, int]:
        """Length of the flat encoding of a little subnet, a big subnet and a pair."""
        return {"little": 4 * self.little_after, "big": 4 * self.n_stages,
                "pair": 4 * (self.little_after + self.n_stages)}

    def encode(self, cfg: Any) -> np.ndarray:
        """A flat int64 vector of choice indices: per stage (width, depth, kernel, expand), stage by stage; for a
        pair the little subnet's then the big one's. Its length tells what it encodes (:meth:`encoding_lengths`)."""
        if isinstance(cfg, PairConfig) or (isinstance(cfg, Mapping) and set(cfg) == {"little", "big"}):
            pair = self.check_pair(cfg)
            return np.concatenate([self.encode(pair.little), self.encode(pair.big)])
        sub = self.check_subnet(cfg)
        return np.array([self.choices(f).index(getattr(st, f)) for st in sub.stages for f in FIELDS], dtype=np.int64)

    def decode(self, vec: Any) -> SubnetConfig | PairConfig:
        """The configuration a vector from :meth:`encode` stands for, or a ConfigError naming the bad entry."""
        arr = np.asarray(vec)
        lengths = self.encoding_lengths()
        if arr.ndim != 1 or arr.shape[0] not in lengths.values():
            raise ConfigError(f"an encoding of this space is a flat vector of {lengths['little']} (little), "
                              f"{lengths['big']} (big) or {lengths['pair']} (pair) integers; got shape {arr.shape}")
        if arr.dtype == bool or not (np.issubdtype(arr.dtype, np.integer)
                                     or (np.issubdtype(arr.dtype, np.floating) and np.all(arr == np.round(arr)))):
            raise ConfigError(f"an encoding holds integer choice indices; got dtype {arr.dtype}")
        arr = arr.astype(np.int64)
        if arr.shape[0] == lengths["pair"]:
            cut = lengths["little"]
            return PairConfig(self._decode(arr[:cut], "little"), self._decode(arr[cut:], "big", offset=cut))
        return self._decode(arr, "little" if arr.shape[0] == lengths["little"] else "big")

    def _decode(self, arr: np.ndarray, head: str, offset: int = 0) -> SubnetConfig:
        stages = []
        for s in range(self.stages_of(head)):
            values = {}
            for j, f in enumerate(FIELDS):
                i, allowed = int(arr[4 * s + j]), self.choices(f)
                if not 0 <= i < len(allowed):
                    raise ConfigError(f"{head} stage {s + 1}: {f} index {i} (entry {offset + 4 * s + j}) is out of range; "
                                      f"{f} takes indices 0..{len(allowed) - 1} for the allowed values {allowed}")
                values[f] = allowed[i]
            stages.append(StageConfig(**values))
        return SubnetConfig(head, tuple(stages))


def cardinality(space: SearchSpace, stem: int, channels: Sequence[int]) -> Cardinality:
    """Exact count of the distinct architectures of ``space`` over a supernet with ``stem`` stem channels and
    full stage widths ``channels``.

    Two configurations are the same architecture when every layer has the same shape; widths that round to
    the same channel count (or expansions to the same hidden count) collapse. Counted stage by stage: the
    number of distinct prefixes ending in each channel count, times the distinct stage layouts after it.
    """
    if len(channels) != space.n_stages:
        raise ConfigError(f"the space has {space.n_stages} stages; got {len(channels)} stage widths")
    counts = Counter({int(stem): 1})  # output channels -> distinct prefixes ending there
    per_stage = []
    for s in range(space.n_stages):
        new: Counter = Counter()
        for cin, mult in counts.items():
            layouts = set()
            for w, d, k, e in itertools.product(space.widths, space.depths, space.kernels, space.expands):
                out = scaled(channels[s], w)
                layouts.add((out, k, tuple(expanded(cin if j == 0 else out, e) for j in range(d))))
            for out, *_ in layouts:
                new[out] += mult
        counts = new
        per_stage.append(sum(counts.values()))
    little, single = per_stage[space.little_after - 1], per_stage[-1]
    return Cardinality(little=little, single=single, pairs=little * single)


# ---------------------------------------------------------------------------------------- blocks

class InvertedResidual(nn.Module):
    """1x1 expand, depthwise k x k, 1x1 project (no activation after it), plus the input when ``residual``.

    Built from elastic layers in the supernet and from their static copies in a subnet; the forward is the same.
    """

    def __init__(self, expand, n1, dw, n2, project, n3, residual: bool) -> None:
        super().__init__()
        self.expand, self.n1, self.dw, self.n2, self.project, self.n3 = expand, n1, dw, n2, project, n3
        self.act = nn.ReLU6()
        self.residual = residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.act(self.n1(self.expand(x)))  # (B, hidden, H, W)
        h = self.act(self.n2(self.dw(h)))  # (B, hidden, H/s, W/s)
        h = self.n3(self.project(h))  # (B, out, H/s, W/s)
        return h + x if self.residual else h


class Head(nn.Module):
    """1x1 conv to a fixed feature width, norm, ReLU6, global average pooling, linear classifier."""

    def __init__(self, conv: nn.Module, norm: nn.Module, fc: nn.Linear) -> None:
        super().__init__()
        self.conv, self.norm, self.act, self.fc = conv, norm, nn.ReLU6(), fc

    def pool(self, h: torch.Tensor) -> torch.Tensor:
        """The pooled features (B, F) the classifier reads."""
        return self.act(self.norm(self.conv(h))).mean((2, 3))  # (B, F)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(h))  # (B, K)


# ---------------------------------------------------------------------------------------- supernet

class BigSmallSupernet(nn.Module):
    """The big/little supernet (see the module doc).

    Args:
        spec: the data it classifies (channels, image size, classes, normalisation).
        channels: full output channels of each searchable stage (its width at multiplier 1).
        stem: channels of the fixed stem (3x3 conv, norm, ReLU6 at full resolution).
        little_after: the stage the little head reads (1-based, before the last).
        head_channels: feature width of the (little, big) heads' 1x1 convolutions.
        strides: stride of each stage's first layer (default: 2 for the first three stages, then 1).
        widths, depths, kernels, expands: the choices of every stage (see :class:`SearchSpace`).
        norm: ``bn`` (switchable batch norm), ``gn`` or ``ln``.
        seed: seed of :meth:`sample_active_subnet` when it is given no generator.
    """

    def __init__(self, spec: DataSpec, *, channels: Sequence[int] = (16, 32, 64, 96), stem: int = 16,
                 little_after: int = 2, head_channels: Sequence[int] = (128, 256), strides: Sequence[int] | None = None,
                 widths: Sequence[float] = tuple(sorted(WIDTHS)), depths: Sequence[int] = DEPTHS,
                 kernels: Sequence[int] = KERNELS, expands: Sequence[float] = EXPANDS, norm: str = "bn",
                 seed: int = 0) -> None:
        super().__init__()
        self.space = SearchSpace(len(channels), little_after, tuple(widths), tuple(depths), tuple(kernels),
                                 tuple(expands))
        n = self.space.n_stages
        strides = tuple(strides) if strides is not None else tuple(2 if s < 3 else 1 for s in range(n))
        if len(strides) != n or any(s not in (1, 2) for s in strides):
            raise ConfigError(f"strides must give 1 or 2 for each of the {n} stages, got {strides}")
        if len(head_channels) != 2 or any(int(c) < 1 for c in head_channels):
            raise ConfigError(f"head_channels gives the (little, big) feature widths, got {tuple(head_channels)}")
        if norm not in NORMS:
            raise ConfigError(f"unknown normalisation {norm!r}; use one of {NORMS}")
        self.channels, self.stem_channels, self.strides = tuple(int(c) for c in channels), int(stem), strides
        self.norm_kind = norm
        self.input_shape = spec.input_shape
        self.num_classes = spec.num_classes
        self.rng = np.random.default_rng(seed)
        sp = self.space
        self.normalize = Normalize(spec.mean, spec.std)
        self.stem = nn.Sequential(nn.Conv2d(spec.in_channels, stem, 3, padding=1, bias=False),
                                  ElasticNorm(stem, norm, options=(stem,)), nn.ReLU6())
        self.stages = nn.ModuleList()
        cins = (self.stem_channels,)  # the channel counts the next stage may read
        for s, cmax in enumerate(self.channels):
            outs = tuple(sorted({scaled(cmax, w) for w in sp.widths}))
            layers = []
            for j in range(max(sp.depths)):
                reads = cins if j == 0 else outs
                hidden = tuple(sorted({expanded(c, e) for c in reads for e in sp.expands}))
                hmax = max(hidden)
                layers.append(InvertedResidual(
                    ElasticConv2d(max(reads), hmax, 1), ElasticNorm(hmax, norm, hidden),
                    ElasticDepthwiseConv2d(hmax, sp.kernels, stride=strides[s] if j == 0 else 1),
                    ElasticNorm(hmax, norm, hidden),
                    ElasticConv2d(hmax, cmax, 1), ElasticNorm(cmax, norm, outs), residual=j > 0))
            self.stages.append(nn.ModuleList(layers))
            cins = outs
        self.heads = nn.ModuleDict({
            h: Head(ElasticConv2d(self.channels[sp.stages_of(h) - 1], f, 1), ElasticNorm(f, norm, options=(f,)),
                    nn.Linear(f, spec.num_classes)) for h, f in zip(HEADS, (int(c) for c in head_channels))})
        self.set_active_subnet(sp.max_subnet())

    # ------------------------------------------------------------------ the space
    def cardinality(self) -> Cardinality:
        """Distinct little subnets, single (big) subnets and pairs of this supernet (:func:`cardinality`)."""
        return cardinality(self.space, self.stem_channels, self.channels)

    def min_subnet(self, head: str = "big") -> SubnetConfig:
        """The smallest configuration of ``head`` (for the sandwich rule)."""
        return self.space.min_subnet(head)

    def max_subnet(self, head: str = "big") -> SubnetConfig:
        """The largest configuration of ``head`` (for the sandwich rule)."""
        return self.space.max_subnet(head)

    def encode(self, cfg: Any) -> np.ndarray:
        """:meth:`SearchSpace.encode` of this supernet's space."""
        return self.space.encode(cfg)

    def decode(self, vec: Any) -> SubnetConfig | PairConfig:
        """:meth:`SearchSpace.decode` of this supernet's space."""
        return self.space.decode(vec)

    def pair_paths(self, pair: Any) -> dict[str, dict]:
        """``{"little": ..., "big": ...}`` in JSON form: the paths of a :class:`~dyninfer.paths.SupernetPaths`."""
        pair = self.space.check_pair(pair)
        return {"little": pair.little.as_dict(), "big": pair.big.as_dict()}

    def _layer_channels(self, cfg: SubnetConfig) -> Iterator[tuple[int, int, int, int, StageConfig]]:
        """(stage, layer, input channels, hidden channels, output channels, stage config) of each active layer."""
        cin = self.stem_channels
        for s, st in enumerate(cfg.stages):
            out = scaled(self.channels[s], st.width)
            for j in range(st.depth):
                yield s, j, cin, expanded(cin, st.expand), out, st
                cin = out

    # ------------------------------------------------------------------ once-for-all API
    def set_active_subnet(self, cfg: Any) -> None:
        """Activate ``cfg`` (a little or big subnet; checked by :meth:`SearchSpace.check_subnet`)."""
        cfg = self.space.check_subnet(cfg)
        for s, j, _, hidden, out, st in self._layer_channels(cfg):
            layer = self.stages[s][j]
            layer.expand.set_active(hidden)
            layer.dw.set_active(st.kernel)
            layer.project.set_active(out)
        self.active = cfg

    def sample_active_subnet(self, rng: np.random.Generator | int | None = None, *, head: str = "big") -> SubnetConfig:
        """Activate and return a configuration of ``head`` drawn uniformly from the space.

        Args:
            rng: a numpy generator, a seed, or None for the supernet's own generator (seeded by ``seed``).
            head: ``big`` (all stages) or ``little``.
        """
        rng = self.rng if rng is None else np.random.default_rng(rng)
        cfg = self.space.sample(rng, head)
        self.set_active_subnet(cfg)
        return cfg

    def sample_pair(self, rng: np.random.Generator | int | None = None) -> PairConfig:
        """A little/big pair drawn uniformly (nothing is activated)."""
        return self.space.sample_pair(self.rng if rng is None else np.random.default_rng(rng))

    def _run_stages(self, h: torch.Tensor, cfg: SubnetConfig, start: int = 0) -> torch.Tensor:
        """Stages ``start..`` of the active subnet ``cfg`` on stage input ``h``."""
        for s in range(start, len(cfg.stages)):
            for layer in self.stages[s][:cfg.stages[s].depth]:
                h = layer(h)
        return h

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (B, K) of the active subnet (at its head) on images (B, C, H, W) in [0, 1]."""
        return self.forward_pooled(x)[0]

    def forward_pooled(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits (B, K), pooled head features (B, F)) of the active subnet on images (B, C, H, W)."""
        h = self._run_stages(self.stem(self.normalize(x)), self.active)  # (B, C_L or C_N, h, w)
        f = self.heads[self.active.head].pool(h)  # (B, F)
        return self.heads[self.active.head].fc(f), f

    def forward_pair(self, x: torch.Tensor, pair: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Both heads of a little/big pair in one call: (little logits (B, K), big logits (B, K), the little
        head's pooled features (B, F_little)).

        The stem runs once, and so do the leading stages on which the two configurations agree (the big
        path reuses the little's activations there). Leaves the pair's big subnet active.
        """
        pair = self.space.check_pair(pair)
        h = self.stem(self.normalize(x))  # (B, stem, H, W)
        shared = next((s for s, (a, b) in enumerate(zip(pair.little.stages, pair.big.stages)) if a != b),
                      len(pair.little.stages))
        self.set_active_subnet(pair.little)
        hs = self._run_stages(h, SubnetConfig("little", pair.little.stages[:shared]))  # the common prefix
        hl = self._run_stages(hs, pair.little, start=shared)  # (B, C_L, h, w)
        f = self.heads["little"].pool(hl)  # (B, F_little)
        little = self.heads["little"].fc(f)  # (B, K)
        self.set_active_subnet(pair.big)
        big = self.heads["big"](self._run_stages(hs, pair.big, start=shared))  # (B, K)
        return little, big, f

    def stage_sizes(self) -> list[tuple[int, int]]:
        """Spatial size (h, w) of each stage's input, then of the last stage's output."""
        h, w = self.input_shape[1:]
        out = [(h, w)]
        for s in self.strides:
            h, w = (h - 1) // s + 1, (w - 1) // s + 1
            out.append((h, w))
        return out

    def flops(self, cfg: Any = None) -> int:
        """FLOPs per image of subnet ``cfg`` (default: the active one) from its shapes, without running it:
        2 per multiply-add of every convolution and the classifier, as :func:`~dyninfer.runtime.cost.count_flops`
        counts them (equal to :meth:`subnet_flops`, much faster)."""
        cfg = self.active if cfg is None else self.space.check_subnet(cfg)
        (h, w), k_stem = self.input_shape[1:], self.stem[0].kernel_size[0]
        total = 2 * self.input_shape[0] * self.stem_channels * k_stem * k_stem * h * w
        for s, j, cin, hidden, out, st in self._layer_channels(cfg):
            total += 2 * cin * hidden * h * w  # 1x1 expand
            if j == 0:
                h, w = (h - 1) // self.strides[s] + 1, (w - 1) // self.strides[s] + 1
            total += 2 * hidden * st.kernel * st.kernel * h * w + 2 * hidden * out * h * w  # depthwise, 1x1 project
        cin = scaled(self.channels[len(cfg.stages) - 1], cfg.stages[-1].width)
        hd = self.heads[cfg.head]
        return int(total + 2 * cin * hd.conv.out_channels * h * w + 2 * hd.fc.in_features * hd.fc.out_features)

    def get_active_subnet(self) -> "BigSmallSubnet":
        """A plain network of static layers (no elastic ones) with copies of the active subnet's weights: the
        first channels, the depthwise kernels with their transforms applied, the private norms."""
        cfg = self.active
        layers = []
        for s, j, cin, hidden, out, _ in self._layer_channels(cfg):
            e = self.stages[s][j]
            layers.append(InvertedResidual(e.expand.static(cin), e.n1.static(hidden), e.dw.static(hidden),
                                           e.n2.static(hidden), e.project.static(hidden), e.n3.static(out),
                                           residual=e.residual))
            cin = out
        stem = nn.Sequential(copy.deepcopy(self.stem[0]), self.stem[1].static(self.stem_channels), nn.ReLU6())
        hd = self.heads[cfg.head]
        f = hd.conv.out_channels
        head = Head(hd.conv.static(cin), hd.norm.static(f), copy.deepcopy(hd.fc))
        net = BigSmallSubnet(copy.deepcopy(self.normalize), stem, nn.Sequential(*layers), head, cfg)
        net.input_shape = self.input_shape
        return net.train(self.training)

    def subnet_flops(self, cfg: Any = None) -> int:
        """Counted FLOPs per image of subnet ``cfg`` (default: the active one), on its static copy."""
        from ..runtime.cost import count_flops

        old = self.active
        if cfg is not None:
            self.set_active_subnet(cfg)
        try:
            return count_flops(self.get_active_subnet(), self.input_shape)
        finally:
            self.set_active_subnet(old)


class BigSmallSubnet(nn.Module):
    """A static subnet of :class:`BigSmallSupernet`: stem, the active layers, the head; ``config`` says which."""

    def __init__(self, normalize: nn.Module, stem: nn.Module, layers: nn.Sequential, head: Head,
                 config: SubnetConfig) -> None:
        super().__init__()
        self.normalize, self.stem, self.layers, self.head = normalize, stem, layers, head
        self.config = config.as_dict()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.layers(self.stem(self.normalize(x))))  # (B, K)


# ---------------------------------------------------------------------------------------- registry

BIGSMALL_SIZES = {
    # name: (stage channels, stem, (little, big) head features); FLOPs of the min/max subnets: `subnet_flops`
    "bigsmall-supernet-tiny": ((8, 12, 16, 24), 8, (32, 48)),  # tests on 8x8 digits
    "bigsmall-supernet": ((16, 32, 64, 96), 16, (128, 256)),  # Fashion-MNIST / CIFAR on a CPU
}


def _builder(channels, stem, head_channels):
    def build(spec: DataSpec, *, little_after: int = 2, norm: str = "bn", seed: int = 0,
              **choices: Any) -> BigSmallSupernet:
        unknown = sorted(set(choices) - {"widths", "depths", "kernels", "expands", "strides"})
        if unknown:
            raise ConfigError(f"unknown big/little supernet settings {unknown}; use widths, depths, kernels, "
                              f"expands, strides, little_after, norm, seed")
        return BigSmallSupernet(spec, channels=channels, stem=stem, head_channels=head_channels,
                                little_after=little_after, norm=norm, seed=seed, **choices)
    return build


for _name, (_c, _s, _h) in BIGSMALL_SIZES.items():
    register_backbone(_name)(_builder(_c, _s, _h))
