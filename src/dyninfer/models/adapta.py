"""Adapta-ResNet: a 4-stage bottleneck ResNet for small images whose stages slim in width and depth.

A subnet configuration chooses, per stage, a width ``rho`` in :data:`~dyninfer.models.elastic.WIDTHS`
and ``delta``: the full bottlenecks, or each non-anchor bottleneck replaced by its δ substitute (the
bottleneck's 3x3 convolution alone, at the bottleneck's width, with its norm and ReLU; no 1x1
convolutions, no residual). The substitutes are slot-compatible at the anchor boundary: the anchor
reads any input width up to its own (its first convolution and its projection are elastic in
their input), so the stage still ends in the same full-width anchor. The last block of every
stage is its *anchor*: its output keeps the full stage width whatever the configuration, so the
anchors are fixed interfaces aligned with a teacher (the same network at full width) and read by
the Var Gates. A configuration is a mapping ``{"rho": [r1, r2, r3, r4], "delta": [d1, d2, d3, d4]}``.

The network follows the once-for-all API (:meth:`AdaptaResNet.set_active_subnet`,
:meth:`~AdaptaResNet.sample_active_subnet`, :meth:`~AdaptaResNet.get_active_subnet`); the static
subnet (:class:`AdaptaSubnet`) carries copies of the gates and answers ``forward_scored`` with the
logits and every gate's confidence.

Strides adapt to the image: by default the stem and stage 1 keep the resolution, stages 2 and 3 halve it,
stage 4 halves it from 28x28 up (28x28: 28-14-7-4, 32x32: 32-16-8-4, 8x8 digits: 8-4-2-2); ``strides``
sets them per stage (``adapta-resnet-s`` halves in stages 1-3 from 28x28 up: 28-14-7-4-4).
"""

from __future__ import annotations

import copy
from typing import Any, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..data.datasets import DataSpec
from ..errors import CheckpointError, ConfigError
from .elastic import NORMS, WIDTHS, ElasticConv2d, ElasticNorm, scaled, width_options
from .registry import Normalize, register_backbone

STAGES = 4
# the paper's four mixed stage-wise width configurations (Table II), as widths per stage
MIXED = ((0.25, 1.0, 1.0, 0.25), (1.0, 0.25, 0.25, 1.0), (0.25, 1.0, 0.25, 1.0), (1.0, 0.25, 1.0, 0.25))
PATH_SETS = ("uniform", "delta", "all")  # see AdaptaResNet.path_configs


# ---------------------------------------------------------------------------------------- blocks

class Bottleneck(nn.Module):
    """1x1 reduce, 3x3, 1x1 expand, plus a shortcut (identity or a strided 1x1 projection).

    Built from elastic layers in the supernet and from their static copies in a subnet; the forward is the same.
    """

    def __init__(self, conv1, n1, conv2, n2, conv3, n3, proj: nn.Module | None = None,
                 proj_norm: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1, self.n1, self.conv2, self.n2, self.conv3, self.n3 = conv1, n1, conv2, n2, conv3, n3
        self.proj, self.proj_norm = proj, proj_norm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.n1(self.conv1(x)))  # (B, mid, H, W)
        h = F.relu(self.n2(self.conv2(h)))  # (B, mid, H/s, W/s)
        h = self.n3(self.conv3(h))  # (B, out, H/s, W/s)
        short = x if self.proj is None else self.proj_norm(self.proj(x))
        return F.relu(h + short)


class DeltaBlock(nn.Module):
    """The δ substitute of a bottleneck: one 3x3 convolution (block input -> block output), norm, ReLU."""

    def __init__(self, conv: nn.Module, norm: nn.Module) -> None:
        super().__init__()
        self.conv, self.norm = conv, norm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.norm(self.conv(x)))


class VarGate(nn.Module):
    """A Var Gate read from an anchor: two 2x2 conv-BN-ReLU, average pooling to ``size`` x ``size``, then a
    detection head (class logits, distilled from the largest subnet) and a variance head (log-variance per
    class).

    Args:
        in_channels: anchor channels.
        num_classes: classes of the detection head.
        width: channels of the two convolutions.
        size: side of the pooled map.
        stride: stride of the first convolution (2 when the anchor map is at least twice ``size``).
        top_k: detection outputs whose variance makes the confidence.
    """

    def __init__(self, in_channels: int, num_classes: int, *, width: int = 32, size: int = 4, stride: int = 1,
                 top_k: int = 1) -> None:
        super().__init__()
        pad = nn.ZeroPad2d((0, 1, 0, 1))  # a 2x2 kernel at stride 1 keeps the map size
        self.body = nn.Sequential(
            *([pad] if stride == 1 else []), nn.Conv2d(in_channels, width, 2, stride=stride, bias=False),
            nn.BatchNorm2d(width), nn.ReLU(),
            pad, nn.Conv2d(width, width, 2, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
            nn.AdaptiveAvgPool2d(size), nn.Flatten())
        self.detect = nn.Linear(width * size * size, num_classes)
        self.logvar = nn.Linear(width * size * size, num_classes)
        self.top_k = top_k

    def forward(self, anchor: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = self.body(anchor)  # (B, width * size * size)
        return self.detect(f), self.logvar(f)  # (B, K), (B, K)

    def confidence(self, anchor: torch.Tensor) -> torch.Tensor:
        """(B,) minus the mean log-variance at the ``top_k`` largest detection outputs (higher: more confident)."""
        det, logvar = self(anchor)
        top = det.topk(self.top_k, dim=1).indices  # (B, k)
        return -logvar.gather(1, top).mean(1)


# ---------------------------------------------------------------------------------------- configurations

def uniform(rho: float, delta: bool = False, stages: int = STAGES) -> dict:
    """The configuration with width ``rho`` (and ``delta``) at every stage."""
    return {"rho": [float(rho)] * stages, "delta": [bool(delta)] * stages}


def config_name(cfg: Mapping[str, Any]) -> str:
    """A short path name: ``x0.5`` for a uniform width, ``x0.25-1-1-0.25`` for a mixed one, ``d`` marking δ stages."""
    rho, delta = cfg["rho"], cfg["delta"]
    if len(set(rho)) == 1:
        name = f"x{rho[0]:g}"
    else:
        name = "x" + "-".join(f"{r:g}" for r in rho)
    if any(delta):
        name += "-d" if all(d or i == len(delta) - 1 for i, d in enumerate(delta)) else \
            "-d" + "".join(str(i + 1) for i, d in enumerate(delta) if d)
    return name


# ---------------------------------------------------------------------------------------- supernet

class AdaptaResNet(nn.Module):
    """The Adapta-ResNet supernet (see the module doc).

    Args:
        spec: the data it classifies (channels, image size, classes, normalisation).
        depths: bottlenecks per stage (the last of each is its anchor).
        widths: output channels of each stage (its anchor's width).
        expansion: stage width / bottleneck width.
        stem: channels of the stem convolution.
        norm: ``bn`` (switchable), ``gn`` or ``ln``.
        gate_width: channels of the Var Gates' convolutions.
        gate_size: side of the Var Gates' pooled map.
        strides: stride of each stage's first block (1 or 2); None: see the module doc.
        seed: seed of :meth:`sample_active_subnet`.
    """

    def __init__(self, spec: DataSpec, *, depths: Sequence[int] = (2, 2, 2, 2),
                 widths: Sequence[int] = (64, 128, 256, 512), expansion: int = 4, stem: int = 32, norm: str = "gn",
                 gate_width: int = 32, gate_size: int = 4, strides: Sequence[int] | None = None, seed: int = 0) -> None:
        super().__init__()
        if len(depths) != STAGES or len(widths) != STAGES:
            raise ConfigError(f"an Adapta-ResNet has {STAGES} stages; got depths {tuple(depths)}, widths {tuple(widths)}")
        if any(not isinstance(d, int) or d < 1 for d in depths):
            raise ConfigError(f"depths must be positive integers, got {tuple(depths)}")
        if any(not isinstance(w, int) or w < expansion or w % expansion for w in widths):
            raise ConfigError(f"widths must be multiples of the expansion {expansion}, got {tuple(widths)}")
        if norm not in NORMS:
            raise ConfigError(f"unknown normalisation {norm!r}; use one of {NORMS}")
        self.depths, self.widths, self.expansion, self.norm_kind = tuple(depths), tuple(widths), expansion, norm
        self.input_shape = spec.input_shape
        self.num_classes = spec.num_classes
        self.rng = np.random.default_rng(seed)
        size = spec.image_size[0]
        self.strides = tuple(strides) if strides is not None else (1, 2, 2, 2 if size >= 28 else 1)
        if len(self.strides) != STAGES or any(v not in (1, 2) for v in self.strides):
            raise ConfigError(f"strides must be {STAGES} values of 1 or 2 (one per stage), got {strides!r}")
        self.normalize = Normalize(spec.mean, spec.std)
        self.stem = nn.Sequential(nn.Conv2d(spec.in_channels, stem, 3, padding=1, bias=False),
                                  ElasticNorm(stem, norm, options=(stem,)), nn.ReLU())
        cin = stem
        self.stages = nn.ModuleList()
        self.deltas = nn.ModuleList()  # per stage: a δ substitute per non-anchor block
        self.gates = nn.ModuleList()
        self.anchor_sizes = []
        for s, (depth, cout) in enumerate(zip(depths, widths)):
            mid = cout // expansion
            blocks, subs = [], []
            for b in range(depth):
                first, anchor = b == 0, b == depth - 1
                bout_opts = (cout,) if anchor else width_options(cout)
                stride = self.strides[s] if first else 1
                blocks.append(self._bottleneck(cin if first else cout, mid, cout, stride, bout_opts,
                                               project=first or anchor))
                if not anchor:  # the δ substitute: the 3x3 convolution alone, at the bottleneck's width
                    subs.append(DeltaBlock(ElasticConv2d(cin if first else mid, mid, 3, stride=stride, padding=1),
                                           ElasticNorm(mid, norm, options=width_options(mid))))
            self.stages.append(nn.ModuleList(blocks))
            self.deltas.append(nn.ModuleList(subs))
            size = (size + self.strides[s] - 1) // self.strides[s]
            self.anchor_sizes.append(size)
            cin = cout
        for s in range(STAGES - 1):
            self.gates.append(VarGate(widths[s], spec.num_classes, width=gate_width, size=gate_size,
                                      stride=2 if self.anchor_sizes[s] >= 2 * gate_size else 1,
                                      top_k=max(1, spec.num_classes // 10)))
        self.head = nn.Linear(widths[-1], spec.num_classes)
        self.active = self.largest()
        self.set_active_subnet(self.active)

    def _bottleneck(self, cin: int, mid: int, cout: int, stride: int, out_opts: Sequence[int],
                    project: bool) -> Bottleneck:
        k = self.norm_kind
        mids = width_options(mid)
        return Bottleneck(ElasticConv2d(cin, mid, 1), ElasticNorm(mid, k, mids),
                          ElasticConv2d(mid, mid, 3, stride=stride, padding=1), ElasticNorm(mid, k, mids),
                          ElasticConv2d(mid, cout, 1), ElasticNorm(cout, k, out_opts),
                          ElasticConv2d(cin, cout, 1, stride=stride) if project else None,
                          ElasticNorm(cout, k, out_opts) if project else None)

    # ------------------------------------------------------------------ configurations
    @property
    def shape(self) -> dict:
        """What fixes the parameter shapes: compared when a checkpoint is loaded into this supernet."""
        return {"depths": list(self.depths), "widths": list(self.widths), "expansion": self.expansion,
                "norm": self.norm_kind, "strides": list(self.strides), "input_shape": list(self.input_shape),
                "num_classes": self.num_classes}

    def largest(self) -> dict:
        return uniform(max(WIDTHS))

    def smallest(self, delta: bool = False) -> dict:
        return self.check_config({"rho": [min(WIDTHS)] * STAGES, "delta": self.delta_mask(delta)})

    def delta_mask(self, on: bool = True) -> list[bool]:
        """δ at every stage that has a block besides its anchor (``on``), or nowhere."""
        return [bool(on) and d > 1 for d in self.depths]

    def check_config(self, cfg: Any) -> dict:
        """``cfg`` in canonical form, or a ConfigError that says what is wrong with it."""
        if not isinstance(cfg, Mapping):
            raise ConfigError(f"a subnet configuration is a mapping {{'rho': [...], 'delta': [...]}}, got {cfg!r}")
        unknown = sorted(set(cfg) - {"rho", "delta"})
        if unknown or "rho" not in cfg:
            raise ConfigError(f"a subnet configuration has keys 'rho' and 'delta' (optional); got {sorted(cfg)}")
        rho, delta = cfg["rho"], cfg.get("delta", [False] * STAGES)
        for key, v in (("rho", rho), ("delta", delta)):
            if not isinstance(v, (list, tuple)) or len(v) != STAGES:
                raise ConfigError(f"{key} must list one value per stage ({STAGES}), got {v!r}")
        for s, r in enumerate(rho):
            if isinstance(r, bool) or not isinstance(r, (int, float)) or float(r) not in WIDTHS:
                raise ConfigError(f"width {r!r} at stage {s + 1} is not one of {WIDTHS}")
        for s, d in enumerate(delta):
            if not isinstance(d, (bool, np.bool_)):
                raise ConfigError(f"delta at stage {s + 1} must be True or False, got {d!r}")
            if d and self.depths[s] < 2:
                raise ConfigError(f"delta at stage {s + 1} is not slot-compatible: that stage has only its anchor "
                                  f"block (depths {self.depths}), and an anchor keeps its full block")
        return {"rho": [float(r) for r in rho], "delta": [bool(d) for d in delta]}

    def stage_channels(self, cfg: Mapping[str, Any], s: int) -> tuple[int, int]:
        """(bottleneck width, non-anchor block output width) of stage ``s`` under ``cfg``."""
        r = cfg["rho"][s]
        return scaled(self.widths[s] // self.expansion, r), scaled(self.widths[s], r)

    def set_stage(self, s: int, rho: float, delta: bool) -> None:
        """Change stage ``s`` of the active configuration only."""
        cfg = copy.deepcopy(self.active)
        cfg["rho"][s], cfg["delta"][s] = float(rho), bool(delta)
        self.set_active_subnet(cfg)

    def set_active_subnet(self, cfg: Any) -> None:
        """Activate configuration ``cfg`` (checked: see :meth:`check_config`)."""
        cfg = self.check_config(cfg)
        for s, blocks in enumerate(self.stages):
            mid, out = self.stage_channels(cfg, s)
            for b, blk in enumerate(blocks):
                bout = self.widths[s] if b == len(blocks) - 1 else out
                blk.conv1.set_active(mid)
                blk.conv2.set_active(mid)
                blk.conv3.set_active(bout)
                if blk.proj is not None:
                    blk.proj.set_active(bout)
            for sub in self.deltas[s]:
                sub.conv.set_active(mid)
        self.active = cfg

    def sample_active_subnet(self) -> dict:
        """Activate and return a random configuration (width and δ drawn per stage, δ where it fits)."""
        rho = [float(self.rng.choice(WIDTHS)) for _ in range(STAGES)]
        delta = [bool(self.rng.integers(2)) and d > 1 for d in self.depths]
        cfg = {"rho": rho, "delta": delta}
        self.set_active_subnet(cfg)
        return cfg

    def configs(self, *, delta: bool | None = False) -> list[dict]:
        """The uniform configurations, widest first: without δ (``False``), with δ (``True``) or both (None)."""
        ds = [False, True] if delta is None else [delta]
        return [self.check_config({"rho": [r] * STAGES, "delta": self.delta_mask(d)}) for d in ds for r in WIDTHS]

    def mixed_configs(self, *, delta: bool = False) -> list[dict]:
        """The paper's four mixed stage-wise width configurations (:data:`MIXED`), with δ (``True``) or without."""
        return [self.check_config({"rho": list(r), "delta": self.delta_mask(delta)}) for r in MIXED]

    def path_configs(self, which: str = "all") -> dict[str, dict]:
        """Named configurations as paths, cheapest (counted FLOPs) first, the full-width network last.

        Args:
            which: ``uniform`` (the uniform widths), ``delta`` (the uniform widths with and without δ) or ``all``
                (those and the four mixed configurations of :data:`MIXED`, with and without δ).

        Raises:
            ConfigError: an unknown path set.
        """
        from ..runtime.cost import count_flops

        if which not in PATH_SETS:
            raise ConfigError(f"unknown supernet path set {which!r}; use one of {PATH_SETS}")
        has_delta = any(self.delta_mask(True))
        cfgs = self.configs(delta=None if which != "uniform" and has_delta else False)
        if which == "all":
            cfgs += self.mixed_configs() + (self.mixed_configs(delta=True) if has_delta else [])
        named = {config_name(c): c for c in cfgs}
        old = self.active
        flops = {}
        for n, c in named.items():
            self.set_active_subnet(c)
            flops[n] = count_flops(self.get_active_subnet(), self.input_shape)
        self.set_active_subnet(old)
        ref = config_name(self.largest())
        order = sorted(named, key=lambda n: (n == ref, flops[n], n))
        return {n: named[n] for n in order}

    # ------------------------------------------------------------------ forward
    def run_stage(self, s: int, h: torch.Tensor) -> torch.Tensor:
        """Stage ``s`` of the active configuration on ``h``; returns its anchor's output (B, widths[s], H', W')."""
        blocks = self.stages[s]
        use_delta = self.active["delta"][s]
        for b, blk in enumerate(blocks):
            h = self.deltas[s][b](h) if use_delta and b < len(blocks) - 1 else blk(h)
        return h

    def stem_forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.stem(self.normalize(x))  # (B, stem, H, W)

    def forward_head(self, h: torch.Tensor) -> torch.Tensor:
        return self.head(h.mean((2, 3)))  # (B, K)

    def anchors(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The four anchor outputs of the active configuration."""
        h = self.stem_forward(x)
        out = []
        for s in range(STAGES):
            h = self.run_stage(s, h)
            out.append(h)
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.anchors(x)[-1])

    def forward_scored(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits (B, K), confidence of every Var Gate (B, 3)) of the active configuration."""
        a = self.anchors(x)
        conf = torch.stack([g.confidence(a[s]) for s, g in enumerate(self.gates)], 1)
        return self.forward_head(a[-1]), conf

    # ------------------------------------------------------------------ static subnet
    def get_active_subnet(self) -> "AdaptaSubnet":
        """A plain network of static layers with copies of the active configuration's weights (and the gates)."""
        cfg = self.active
        stages = []
        cin = self.stem[0].out_channels
        for s, blocks in enumerate(self.stages):
            mid, out = self.stage_channels(cfg, s)
            layers = []
            for b, blk in enumerate(blocks):
                anchor = b == len(blocks) - 1
                bout = self.widths[s] if anchor else out
                if cfg["delta"][s] and not anchor:
                    sub = self.deltas[s][b]
                    layers.append(DeltaBlock(sub.conv.static(cin), sub.norm.static(mid)))
                    cin = mid
                    continue
                else:
                    layers.append(Bottleneck(
                        blk.conv1.static(cin), blk.n1.static(mid), blk.conv2.static(mid), blk.n2.static(mid),
                        blk.conv3.static(mid), blk.n3.static(bout),
                        blk.proj.static(cin) if blk.proj is not None else None,
                        blk.proj_norm.static(bout) if blk.proj is not None else None))
                cin = bout
            stages.append(nn.Sequential(*layers))
        stem = nn.Sequential(copy.deepcopy(self.stem[0]), self.stem[1].static(self.stem[0].out_channels), nn.ReLU())
        net = AdaptaSubnet(copy.deepcopy(self.normalize), stem, stages, copy.deepcopy(self.head),
                           copy.deepcopy(self.gates), cfg)
        net.input_shape = self.input_shape
        return net.train(self.training)


class AdaptaSubnet(nn.Module):
    """A static subnet of :class:`AdaptaResNet`: plain layers, the configuration it came from, and the gates.

    ``forward`` returns logits (B, K); ``forward_scored`` also returns every gate's confidence (B, 3).
    """

    def __init__(self, normalize: nn.Module, stem: nn.Module, stages: Sequence[nn.Module], head: nn.Module,
                 gates: nn.ModuleList, config: dict) -> None:
        super().__init__()
        self.normalize, self.stem, self.stages, self.head, self.gates = normalize, stem, nn.ModuleList(stages), head, gates
        self.config = copy.deepcopy(config)

    def anchors(self, x: torch.Tensor) -> list[torch.Tensor]:
        h = self.stem(self.normalize(x))
        out = []
        for stage in self.stages:
            h = stage(h)
            out.append(h)
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stem(self.normalize(x))
        for stage in self.stages:
            h = stage(h)
        return self.head(h.mean((2, 3)))  # (B, K)

    def forward_scored(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        a = self.anchors(x)
        conf = torch.stack([g.confidence(a[s]) for s, g in enumerate(self.gates)], 1)  # (B, 3)
        return self.head(a[-1].mean((2, 3))), conf

    def forward_gated(self, x: torch.Tensor, gate: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits (B, K), confidence of Var Gate ``gate`` alone (B,)): what a gate-scored cascade stage runs."""
        gate = range(len(self.gates))[gate]
        a = self.anchors(x)
        return self.head(a[-1].mean((2, 3))), self.gates[gate].confidence(a[gate])

    def gate_confidence(self, x: torch.Tensor, gate: int) -> torch.Tensor:
        """(B,) confidence of Var Gate ``gate``, running only the stem and the stages up to its anchor."""
        gate = range(len(self.gates))[gate]
        h = self.stem(self.normalize(x))
        for stage in list(self.stages)[:gate + 1]:
            h = stage(h)
        return self.gates[gate].confidence(h)

    def gate_costs(self, input_shape: Sequence[int]) -> dict[str, list[int]]:
        """Counted FLOPs per sample of each Var Gate on its anchor (``gate``), and of the stem and stages up to
        each gate's anchor (``prefix``), for an input of ``input_shape`` (C, H, W)."""
        from ..runtime.cost import count_flops

        prefix = [count_flops(_Prefix(self, g), tuple(input_shape)) for g in range(len(self.gates))]
        with torch.no_grad():
            anchors = self.anchors(torch.zeros(1, *input_shape, device=self.head.weight.device))
        gates = [count_flops(_Confidence(g), tuple(anchors[i].shape[1:])) for i, g in enumerate(self.gates)]
        return {"gate": gates, "prefix": prefix}


class _Prefix(nn.Module):
    """The stem and stages of a static subnet up to anchor ``gate`` (for counting)."""

    def __init__(self, sub: AdaptaSubnet, gate: int) -> None:
        super().__init__()
        self.sub, self.gate = sub, gate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.sub.stem(self.sub.normalize(x))
        for stage in list(self.sub.stages)[:self.gate + 1]:
            h = stage(h)
        return h


class _Confidence(nn.Module):
    """A Var Gate's confidence as a module (for counting)."""

    def __init__(self, gate: VarGate) -> None:
        super().__init__()
        self.g = gate

    def forward(self, anchor: torch.Tensor) -> torch.Tensor:
        return self.g.confidence(anchor)


def check_same_shape(net: AdaptaResNet, arch: Mapping[str, Any], where: str) -> None:
    """Raise CheckpointError unless a checkpoint's architecture record ``arch`` builds ``net``'s shape."""
    from .registry import create_model, spec_from_dict

    try:
        theirs = create_model(arch["name"], spec_from_dict(arch["spec"]), **arch["kwargs"])
    except (KeyError, TypeError, ConfigError) as e:
        raise CheckpointError(f"{where} does not describe a supernet ({type(e).__name__}: {e})") from None
    recorded = arch.get("layout")  # the layout the file was written for (None in files older than the record)
    if not isinstance(theirs, AdaptaResNet) or (recorded or theirs.shape) != net.shape:
        other = (recorded or theirs.shape) if isinstance(theirs, AdaptaResNet) else arch.get("name")
        raise CheckpointError(f"{where} holds a supernet of shape {other}; this supernet has shape {net.shape}. "
                              f"Train this shape, or build the supernet the checkpoint was written for.")


# ---------------------------------------------------------------------------------------- registry

ADAPTA_SIZES = {
    # name: (depths, widths, stem, strides from 28x28 up or None for the default); MFLOPs per 28x28 image at full
    # width are printed by `dyninfer list`
    "adapta-resnet-tiny": ((2, 2, 2, 1), (16, 32, 32, 64), 8, None),   # tests on 8x8 digits
    # Fashion-MNIST on a CPU: stage 1 at half resolution (28-14-7-4-4; 32x32: 32-16-8-4-4), 12.7 MFLOPs at x1.
    # Keeping 28x28 in stage 1 doubles the FLOPs (26.2) and trains 2.6x slower on this CPU (369 vs 961 img/s
    # at batch 128, two threads) for a network that must train within the benchmark's budget.
    "adapta-resnet-s": ((2, 2, 2, 2), (32, 64, 128, 256), 16, (2, 2, 2, 1)),
    "adapta-resnet-50": ((3, 4, 6, 3), (256, 512, 1024, 2048), 64, None),  # the paper's layout
}


def _builder(depths, widths, stem, strides):
    def build(spec: DataSpec, *, norm: str = "gn", seed: int = 0) -> AdaptaResNet:
        st = strides if strides is not None and spec.image_size[0] >= 28 else None
        return AdaptaResNet(spec, depths=depths, widths=widths, stem=stem, norm=norm, strides=st, seed=seed)
    return build


for _name, (_d, _w, _s, _st) in ADAPTA_SIZES.items():
    register_backbone(_name)(_builder(_d, _w, _s, _st))
