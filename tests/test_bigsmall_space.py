"""The big/little search space and supernet: elastic kernels, static subnets, cardinality, encoding, paths."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dyninfer import ConfigError
from dyninfer.data.datasets import DataSpec
from dyninfer.models import create_model, list_models
from dyninfer.models.bigsmall import (FIELDS, BigSmallSupernet, PairConfig, SearchSpace, StageConfig, SubnetConfig,
                                      cardinality)
from dyninfer.models.elastic import ElasticConv2d, ElasticDepthwiseConv2d, ElasticNorm, recalibrate_bn
from dyninfer.paths import PathSet, Supernet, SupernetPaths
from dyninfer.runtime.cost import count_flops

pytestmark = pytest.mark.usefixtures("one_thread")

FASHION = DataSpec("fashion-mnist", 10, 1, (28, 28), (0.286,), (0.353,))
CIFAR = DataSpec("cifar10", 10, 3, (32, 32), (0.49, 0.48, 0.45), (0.25, 0.24, 0.26))


def _perturbed(net: BigSmallSupernet, x: torch.Tensor, seed: int = 0) -> BigSmallSupernet:
    """Move the kernel transforms off the identity and the batch-norm statistics off their initial values, so a
    static copy that skipped either would differ."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, ElasticDepthwiseConv2d):
                for t in m.transforms.values():
                    t.add_(0.2 * torch.randn(t.shape, generator=g))
        net.train()
        rng = np.random.default_rng(seed)
        for _ in range(6):
            for head in ("little", "big"):
                net.sample_active_subnet(rng, head=head)
                net(x)
    return net.eval()


def _is_static(module: torch.nn.Module) -> bool:
    return not any(isinstance(m, (ElasticConv2d, ElasticDepthwiseConv2d, ElasticNorm)) for m in module.modules())


# ---------------------------------------------------------------------------------------- elastic kernel

def test_elastic_kernel_is_the_transformed_centre_of_the_largest():
    torch.manual_seed(0)
    conv = ElasticDepthwiseConv2d(6, (3, 5, 7), stride=2)
    w = conv.weight.detach()
    assert sorted(conv.transforms) == ["5to3", "7to5"]
    assert torch.equal(conv.transforms["7to5"], torch.eye(25)) and torch.equal(conv.transforms["5to3"], torch.eye(9))
    assert torch.equal(conv.kernel(4, 3), w[:4, :, 2:5, 2:5])  # identity: the plain centre
    with torch.no_grad():
        for t in conv.transforms.values():
            t.add_(0.1 * torch.randn(t.shape))
    m75, m53 = conv.transforms["7to5"].detach(), conv.transforms["5to3"].detach()
    k5 = (w[:4, 0, 1:6, 1:6].reshape(4, 25) @ m75.T).view(4, 5, 5)
    k3 = (k5[:, 1:4, 1:4].reshape(4, 9) @ m53.T).view(4, 1, 3, 3)
    assert torch.allclose(conv.kernel(4, 5), k5.unsqueeze(1)) and torch.allclose(conv.kernel(4, 3), k3)
    x = torch.randn(2, 4, 9, 9)  # channels follow the input
    for k in (3, 5, 7):
        conv.set_active(k)
        y = conv(x)
        assert y.shape == (2, 4, 5, 5)
        with torch.no_grad():
            assert torch.allclose(conv.static(4)(x), y, atol=1e-6)
    conv.set_active(3)
    conv(x).square().sum().backward()  # the small kernel trains both matrices and the shared weight
    assert all(t.grad is not None and t.grad.abs().sum() > 0 for t in conv.transforms.values())
    assert conv.weight.grad[:, :, 0].abs().sum() == 0 and conv.weight.grad[:4, :, 3, 3].abs().sum() > 0
    with pytest.raises(ConfigError, match=r"\(3, 5, 7\)"):
        conv.set_active(4)


# ---------------------------------------------------------------------------------------- static subnets

@pytest.mark.parametrize("norm", ["bn", "gn", "ln"])
def test_static_subnets_compute_what_the_supernet_computes(digits, norm):
    torch.manual_seed(0)
    net = _perturbed(create_model("bigsmall-supernet-tiny", digits.spec, norm=norm), digits.train.x[:64])
    x = digits.test.x[:16]
    rng = np.random.default_rng(1)
    cfgs = [net.min_subnet(h) for h in ("little", "big")] + [net.max_subnet(h) for h in ("little", "big")]
    cfgs += [net.space.sample(rng, "big") for _ in range(5)] + [net.space.sample(rng, "little") for _ in range(3)]
    for cfg in cfgs:
        net.set_active_subnet(cfg)
        sub = net.get_active_subnet().eval()
        assert _is_static(sub) and sub.config == cfg.as_dict() and not sub.training
        assert len(sub.layers) == sum(st.depth for st in cfg.stages)
        with torch.no_grad():
            diff = (sub(x) - net(x)).abs().max().item()
        assert diff < 1e-5, (cfg, diff)


def test_static_subnets_copy_their_weights(digits):
    net = create_model("bigsmall-supernet-tiny", digits.spec).eval()
    net.set_active_subnet(net.min_subnet())
    sub = net.get_active_subnet()
    with torch.no_grad():
        for p in sub.parameters():
            p.add_(1.0)
    net.set_active_subnet(net.min_subnet())
    x = digits.test.x[:4]
    with torch.no_grad():
        assert not torch.allclose(sub(x), net(x))
        assert torch.allclose(net.get_active_subnet()(x), net(x), atol=1e-5)


def test_cifar_images_and_a_training_step_reach_the_shared_weights():
    torch.manual_seed(0)
    net = create_model("bigsmall-supernet-tiny", CIFAR)
    x, y = torch.rand(4, 3, 32, 32), torch.randint(0, 10, (4,))
    net.set_active_subnet(net.space.uniform("little", width=0.5, depth=2, kernel=3, expand=2))
    F.cross_entropy(net(x), y).backward()  # the little subnet alone
    first = net.stages[0][0]
    assert first.expand.weight.grad[:8].abs().sum() > 0 and first.dw.transforms["5to3"].grad.abs().sum() > 0
    assert net.heads["big"].fc.weight.grad is None and net.stages[2][0].expand.weight.grad is None
    net.set_active_subnet(net.max_subnet())
    assert net(x).shape == (4, 10)


# ---------------------------------------------------------------------------------------- cardinality

def _signature(module: torch.nn.Module) -> tuple:
    """The structure of a static network: every module's type, parameter shapes, stride and groups."""
    return tuple((type(m).__name__, tuple(tuple(p.shape) for p in m.parameters(recurse=False)),
                  getattr(m, "stride", None), getattr(m, "groups", None)) for m in module.modules())


def test_cardinality_equals_brute_force_enumeration_on_a_tiny_space(digits):
    # widths 0.25 and 0.5 of a 2-channel stage both round to 1 channel: some configurations are the same network
    net = BigSmallSupernet(digits.spec, channels=(2, 4), stem=3, little_after=1, head_channels=(4, 4),
                           widths=(0.25, 0.5, 1.0), depths=(1, 2), kernels=(3, 5), expands=(1, 2))
    space = net.space
    ids: dict[str, list[int]] = {}
    for head in ("little", "big"):
        seen: dict[tuple, int] = {}
        ids[head] = []
        for cfg in space.configs(head):
            net.set_active_subnet(cfg)
            ids[head].append(seen.setdefault(_signature(net.get_active_subnet()), len(seen)))
        assert len(ids[head]) == space.num_configs(head) == 24 ** space.stages_of(head)
    pairs = {(a, b) for a, b in itertools.product(ids["little"], ids["big"])}
    brute = (len(set(ids["little"])), len(set(ids["big"])), len(pairs))
    card = net.cardinality()
    assert (card.little, card.single, card.pairs) == brute == (16, 384, 16 * 384)
    assert card.single < space.num_configs("big")  # the collapse was counted, not assumed away


def test_cardinality_of_the_default_space():
    net = create_model("bigsmall-supernet", FASHION)
    per_stage = 4 * 4 * 3 * 4
    card = net.cardinality()
    assert card.single == per_stage ** 4 == net.space.num_configs("big") == 1_358_954_496
    assert card.little == per_stage ** 2 and card.pairs == per_stage ** 6 == 50_096_498_540_544
    assert cardinality(net.space, 16, (16, 32, 64, 96)) == card
    with pytest.raises(ConfigError, match="4 stages"):
        cardinality(net.space, 16, (16, 32))


# ---------------------------------------------------------------------------------------- encoding and errors

def test_encoding_round_trips():
    space = SearchSpace()
    assert space.encoding_lengths() == {"little": 8, "big": 16, "pair": 24}
    rng = np.random.default_rng(0)
    for _ in range(50):
        for head in ("little", "big"):
            cfg = space.sample(rng, head)
            vec = space.encode(cfg)
            assert vec.dtype == np.int64 and space.decode(vec) == cfg
            assert np.array_equal(space.encode(cfg.as_dict()), vec)
            assert space.check_subnet(cfg.as_dict()) == cfg
        pair = space.sample_pair(rng)
        vec = space.encode(pair)
        assert vec.shape == (24,) and space.decode(vec) == pair and space.decode(list(vec)) == pair
        assert np.array_equal(space.encode(pair.as_dict()), vec)
        rand = np.array([rng.integers(len(space.choices(f))) for _ in range(4) for f in FIELDS])
        assert np.array_equal(space.encode(space.decode(rand)), rand)
    assert not space.encode(space.min_subnet()).any()
    assert np.array_equal(space.encode(space.max_subnet("little")), [3, 3, 2, 3] * 2)
    assert space.max_subnet().stages[0] == StageConfig(width=1.0, depth=4, kernel=7, expand=6)


@pytest.mark.parametrize("stage, match", [
    ({"width": 0.3, "depth": 2, "kernel": 3, "expand": 2}, r"stage 1: width 0.3 .*\(0.25, 0.5, 0.75, 1.0\)"),
    ({"width": 0.5, "depth": 5, "kernel": 3, "expand": 2}, r"stage 1: depth 5 .*\(1, 2, 3, 4\)"),
    ({"width": 0.5, "depth": 2, "kernel": 4, "expand": 2}, r"stage 1: kernel 4 .*\(3, 5, 7\)"),
    ({"width": 0.5, "depth": 2, "kernel": 3, "expand": 3}, r"stage 1: expand 3 .*\(1, 2, 4, 6\)"),
    ({"width": 0.5, "depth": True, "kernel": 3, "expand": 2}, r"depth True .*\(1, 2, 3, 4\)"),
    ({"width": 0.5, "depth": 2, "kernel": 3}, r"missing \['expand'\]"),
    ({"width": 0.5, "depth": 2, "kernel": 3, "expand": 2, "se": 1}, r"unknown \['se'\]"),
])
def test_a_choice_outside_the_space_names_the_field_and_its_values(stage, match):
    net = create_model("bigsmall-supernet-tiny", FASHION)
    good = {"width": 1.0, "depth": 1, "kernel": 3, "expand": 1}
    with pytest.raises(ConfigError, match=match):
        net.set_active_subnet({"head": "little", "stages": [stage, good]})
    with pytest.raises(ConfigError, match=match.replace("stage 1", "stage 2")):
        net.set_active_subnet([good, stage, good, good])
    assert net.active == net.max_subnet()  # a refused configuration changes nothing


def test_bad_configurations_and_encodings_are_config_errors():
    space = SearchSpace()
    good = {"width": 1.0, "depth": 1, "kernel": 3, "expand": 1}
    cases = [
        (lambda: space.check_subnet([good] * 3), r"2 stages \(little head\) or 4 \(big head\); got 3"),
        (lambda: space.check_subnet({"head": "medium", "stages": [good] * 2}), r"head 'medium' .*\('little', 'big'\)"),
        (lambda: space.check_subnet({"head": "big", "stages": [good] * 2}), "a big subnet configures 4 stages"),
        (lambda: space.check_subnet({"stages": [good] * 4, "extra": 1}), "keys 'head' .* and 'stages'"),
        (lambda: space.check_pair({"little": [good] * 4, "big": [good] * 4}), "expected a little subnet"),
        (lambda: space.decode(np.zeros(7, dtype=int)), r"8 \(little\), 16 \(big\) or 24 \(pair\)"),
        (lambda: space.decode(np.zeros((2, 8), dtype=int)), r"got shape \(2, 8\)"),
        (lambda: space.decode(np.full(8, 0.5)), "integer choice indices"),
        (lambda: space.decode([0, 0, 3, 0] + [0] * 4),
         r"little stage 1: kernel index 3 \(entry 2\) is out of range; kernel takes indices 0..2 .*\(3, 5, 7\)"),
        (lambda: space.decode([0] * 8 + [0, 0, 0, -1] + [0] * 12),
         r"big stage 1: expand index -1 \(entry 11\) .*\(1, 2, 4, 6\)"),
        (lambda: SearchSpace(n_stages=4, little_after=4), r"one of 1..3"),
        (lambda: SearchSpace(kernels=(3, 4)), "kernels must be"),
        (lambda: create_model("bigsmall-supernet-tiny", FASHION, width=0.5), r"unknown .* \['width'\]"),
        (lambda: create_model("bigsmall-supernet-tiny", FASHION, norm="in"), "use one of"),
    ]
    for call, match in cases:
        with pytest.raises(ConfigError, match=match):
            call()


# ---------------------------------------------------------------------------------------- sampling

def test_sampling_is_uniform_seeded_and_activates():
    net = create_model("bigsmall-supernet-tiny", FASHION, seed=3)
    again = create_model("bigsmall-supernet-tiny", FASHION, seed=3)
    assert [net.sample_active_subnet() for _ in range(5)] == [again.sample_active_subnet() for _ in range(5)]
    cfg = net.sample_active_subnet(7, head="little")
    assert net.active == cfg and cfg.head == "little" and len(cfg.stages) == 2
    assert net.sample_active_subnet(np.random.default_rng(7), head="little") == cfg
    rng = np.random.default_rng(0)
    draws = [st for _ in range(1000) for st in net.space.sample(rng).stages]  # 4000 stage draws
    for f in FIELDS:
        allowed = net.space.choices(f)
        counts = np.array([sum(getattr(st, f) == v for st in draws) for v in allowed])
        p = 1 / len(allowed)
        assert np.all(np.abs(counts - len(draws) * p) < 5 * np.sqrt(len(draws) * p * (1 - p))), (f, counts)
    pair = net.sample_pair(0)
    assert isinstance(pair, PairConfig) and pair == net.space.check_pair(pair.as_dict())


# ---------------------------------------------------------------------------------------- FLOPs

def test_every_choice_grows_the_flops():
    net = create_model("bigsmall-supernet-tiny", FASHION).eval()
    rng = np.random.default_rng(0)
    base = net.space.sample(rng)
    for s in range(net.space.n_stages):
        for f in FIELDS:
            flops = []
            for v in net.space.choices(f):
                stages = [st.as_dict() for st in base.stages]
                stages[s][f] = v
                flops.append(net.subnet_flops(stages))
            assert all(a < b for a, b in zip(flops, flops[1:])), (s, f, flops)
    for head in ("little", "big"):
        lo, hi = net.subnet_flops(net.min_subnet(head)), net.subnet_flops(net.max_subnet(head))
        assert lo < net.subnet_flops(net.space.sample(rng, head)) < hi
    assert net.subnet_flops(net.max_subnet("little")) < net.subnet_flops(net.max_subnet("big"))
    assert net.active == net.max_subnet()  # counting leaves the active subnet as it was


def test_default_sizes_are_modest():
    net = create_model("bigsmall-supernet", FASHION)
    lo, hi = net.subnet_flops(net.min_subnet()), net.subnet_flops(net.max_subnet())
    assert lo < 2e6 and 20e6 <= hi <= 60e6, (lo, hi)
    net.set_active_subnet(net.max_subnet())
    assert hi == count_flops(net.get_active_subnet(), (1, 28, 28))
    assert {"bigsmall-supernet", "bigsmall-supernet-tiny"} <= set(list_models("bigsmall-*"))


# ---------------------------------------------------------------------------------------- path sets

def test_a_pair_is_a_supernet_path_set(digits, tmp_path):
    torch.manual_seed(0)
    net = _perturbed(create_model("bigsmall-supernet-tiny", digits.spec), digits.train.x[:64])
    assert isinstance(net, Supernet)
    little = net.space.uniform("little", width=0.5, depth=1, kernel=3, expand=2)
    pair = PairConfig(little, net.max_subnet("big"))
    paths = SupernetPaths(net, net.pair_paths(pair))
    assert paths.names == ["little", "big"] and paths.input_shape == (1, 8, 8)
    costs = paths.count()
    assert [c.flops for c in costs] == [net.subnet_flops(little), net.subnet_flops(pair.big)]
    assert costs[0].flops < costs[1].flops
    split = digits.test.subset(range(16))
    trace = paths.record(split, costs=costs)
    assert trace.logits.shape == (2, 16, 10) and trace.meta["kind"] == "supernet"
    for i, cfg in enumerate((pair.little, pair.big)):
        net.set_active_subnet(cfg)
        with torch.no_grad():
            assert np.allclose(trace.logits[i], net(split.x).numpy(), atol=1e-5)
    back = PathSet.load(paths.save(tmp_path / "paths"))
    assert isinstance(back, SupernetPaths) and back.configs == paths.configs
    assert np.allclose(back.logits(split.x), trace.logits, atol=1e-5)


def test_switchable_norms_recalibrate_per_subnet(digits):
    net = create_model("bigsmall-supernet-tiny", digits.spec)
    x = digits.train.x[:64]
    cfgs = [net.min_subnet("little"), net.max_subnet("big")]
    assert recalibrate_bn(net, x, cfgs) > 0
    net.eval().set_active_subnet(cfgs[1])
    assert isinstance(net.active, SubnetConfig)
    with torch.no_grad():
        assert torch.allclose(net.get_active_subnet()(x[:8]), net(x[:8]), atol=1e-5)
