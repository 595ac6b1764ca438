"""Elastic layers, the Adapta-ResNet supernet, its training pieces and the slimmable method's own parts."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from dyninfer import CheckpointError, ConfigError
from dyninfer.models import create_model
from dyninfer.models.adapta import AdaptaResNet, config_name
from dyninfer.models.elastic import WIDTHS, ElasticConv2d, ElasticLinear, ElasticNorm, recalibrate_bn
from dyninfer.train import save_checkpoint
from dyninfer.train.slimmable import (SlimmableTraining, gate_loss, load_into, run_phase, sandwich, stage_step,
                                      teacher_targets)

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def spec(digits):
    return digits.spec


def _trained_a_little(net: AdaptaResNet, x: torch.Tensor) -> AdaptaResNet:
    """Move batch-norm statistics off their initial values (so static copies have something to copy)."""
    net.train()
    with torch.no_grad():
        for _ in range(4):
            net.sample_active_subnet()
            net(x)
    return net.eval()


# ---------------------------------------------------------------------------------------- elastic layers

def test_elastic_layers_equal_their_static_copies():
    torch.manual_seed(0)
    conv, lin = ElasticConv2d(8, 12, 3, padding=1, bias=True), ElasticLinear(12, 6)
    x = torch.randn(4, 6, 5, 5)
    conv.set_active(9)
    lin.set_active(4)
    with torch.no_grad():
        h = conv(x)
        assert h.shape == (4, 9, 5, 5) and torch.equal(conv.static(6)(x), h)
        f = h.mean((2, 3))
        assert lin(f).shape == (4, 4) and torch.equal(lin.static(9)(f), lin(f))
    with pytest.raises(ConfigError, match="12 output channels"):
        conv.set_active(13)


@pytest.mark.parametrize("kind", ["bn", "gn", "ln"])
def test_elastic_norm_works_at_every_width(kind):
    norm = ElasticNorm(16, kind)
    assert norm.options == (4, 8, 12, 16)
    norm.train()
    for c in norm.options:
        norm(torch.randn(8, c, 3, 3))
    norm.eval()
    for c in norm.options:
        x = torch.randn(2, c, 3, 3)
        with torch.no_grad():
            assert torch.equal(norm.static(c)(x), norm(x))
    if kind == "gn":
        assert all(c % norm.groups == 0 and c // norm.groups >= 2 for c in norm.options)


@pytest.mark.parametrize("norm", ["bn", "gn", "ln"])
def test_static_subnets_compute_exactly_what_the_supernet_computes(spec, digits, norm):
    net = _trained_a_little(create_model("adapta-resnet-tiny", spec, norm=norm), digits.train.x[:64])
    x = digits.test.x[:16]
    cfgs = net.configs(delta=None) + [{"rho": [0.25, 1.0, 0.5, 0.75], "delta": [True, False, True, False]}]
    for cfg in cfgs:
        net.set_active_subnet(cfg)
        sub = net.get_active_subnet().eval()
        assert type(sub).__module__.startswith("dyninfer") and not any(
            isinstance(m, (ElasticConv2d, ElasticNorm)) for m in sub.modules())
        with torch.no_grad():
            assert torch.equal(sub(x), net(x)), cfg
            (a, ga), (b, gb) = sub.forward_scored(x), net.forward_scored(x)
            assert torch.equal(a, b) and torch.equal(ga, gb) and ga.shape == (16, 3)
    cfg = net.sample_active_subnet()
    assert net.active == net.check_config(cfg)


def test_bn_recalibration_changes_the_statistics(spec, digits):
    net = _trained_a_little(create_model("adapta-resnet-tiny", spec, norm="bn"), digits.train.x[:64])
    bn = net.stages[1][0].n1.bns["2"]  # stage 2's bottleneck width at x0.25
    before = bn.running_mean.clone()
    n = recalibrate_bn(net, digits.train.x[:128], net.configs(), batch_size=64)
    assert n > 0 and not torch.equal(before, bn.running_mean)
    assert int(bn.num_batches_tracked) == 2  # one x0.25 configuration, two batches, exact average
    assert recalibrate_bn(create_model("adapta-resnet-tiny", spec, norm="gn"), digits.train.x[:8], net.configs()) == 0


# ---------------------------------------------------------------------------------------- configurations

@pytest.mark.parametrize("cfg, message", [
    ({"rho": [1.0, 0.3, 1.0, 1.0]}, r"width 0.3 at stage 2 is not one of"),
    ({"rho": [1.0, 1.0, 1.0]}, "one value per stage"),
    ({"rho": [1.0] * 4, "delta": [False, False, False, True]}, "not slot-compatible"),
    ({"rho": [1.0] * 4, "depth": [1, 1, 1, 1]}, "keys 'rho' and 'delta'"),
    ({"rho": [1.0] * 4, "delta": [0, 0, 0, 0]}, "True or False"),
    ([1.0, 1.0, 1.0, 1.0], "mapping"),
])
def test_bad_configurations_raise_the_library_error(spec, cfg, message):
    net = create_model("adapta-resnet-tiny", spec)  # depths (2, 2, 2, 1): stage 4 is its anchor alone
    with pytest.raises(ConfigError, match=message):
        net.set_active_subnet(cfg)


def test_config_names_and_depth_slimming_costs(spec):
    from dyninfer.runtime.cost import count_flops

    net = create_model("adapta-resnet-tiny", spec)
    names = [config_name(c) for c in net.configs(delta=None)]
    assert names[:4] == ["x1", "x0.75", "x0.5", "x0.25"] and names[4] == "x1-d"
    flops = {}
    for cfg in net.configs(delta=None):
        net.set_active_subnet(cfg)
        flops[config_name(cfg)] = count_flops(net.get_active_subnet(), spec.input_shape)
    assert flops["x0.25"] < flops["x0.5"] < flops["x0.75"] < flops["x1"]
    assert flops["x1-d"] < flops["x1"] and flops["x0.25-d"] < flops["x0.25"]


def test_a_checkpoint_of_another_shape_is_refused_naming_both(spec, tmp_path):
    small = create_model("adapta-resnet-tiny", spec)
    other = create_model("adapta-resnet-tiny", spec, norm="bn")
    save_checkpoint(other, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match=r"'norm': 'bn'.*this supernet has shape.*'norm': 'gn'"):
        load_into(small, tmp_path / "other.pt")
    save_checkpoint(small, tmp_path / "same.pt", {"phase": "x"})
    assert load_into(create_model("adapta-resnet-tiny", spec), tmp_path / "same.pt") == {"phase": "x"}


def test_strides_are_part_of_the_shape_and_of_the_cache_key(spec, tmp_path):
    from dyninfer.train.checkpoint import architecture_signature, cache_key
    from dyninfer.data.datasets import DataSpec

    with pytest.raises(ConfigError, match="strides must be 4 values of 1 or 2"):
        AdaptaResNet(spec, depths=(1, 1, 1, 1), widths=(8, 8, 8, 8), stem=4, strides=(1, 2, 3, 1))
    fm = DataSpec("fm", 10, 1, (28, 28), (0.3,), (0.35,))
    net = create_model("adapta-resnet-s", fm)
    assert net.strides == (2, 2, 2, 1) and net.anchor_sizes == [14, 7, 4, 4]
    default = AdaptaResNet(fm, depths=(2, 2, 2, 2), widths=(32, 64, 128, 256), stem=16)
    assert default.anchor_sizes == [28, 14, 7, 4]
    assert net.get_active_subnet()(torch.rand(2, 1, 28, 28)).shape == (2, 10)
    # same parameter shapes, other layout: the checkpoint is refused, the cache keys differ
    save_checkpoint(net, tmp_path / "s.pt")
    with pytest.raises(CheckpointError, match=r"'strides': \[2, 2, 2, 1\].*this supernet has shape.*'strides': \[1, 2"):
        load_into(default, tmp_path / "s.pt")

    class _Data:
        spec, fingerprint = fm, "f"
    keys = {cache_key("adapta-resnet-s", {}, _Data, {}, 0, arch=architecture_signature(m)) for m in (net, default)}
    assert len(keys) == 2 and cache_key("m", {}, _Data, {}, 0) == cache_key("m", {}, _Data, {}, 0, arch=None)
    assert architecture_signature(torch.nn.Linear(2, 2)) is None


# ---------------------------------------------------------------------------------------- training pieces

def test_the_sandwich_rule_runs_at_least_two_to_the_d_plus_one_subnets():
    rng = np.random.default_rng(0)
    both = sandwich({"rho": WIDTHS, "delta": (False, True)}, rng, random_subnets=1)
    assert len(both) >= 2 ** 2 + 1
    assert both[0] == {"rho": 1.0, "delta": False}  # the largest first
    corners = {(c["rho"], c["delta"]) for c in both[:4]}
    assert corners == {(1.0, False), (1.0, True), (0.25, False), (0.25, True)}
    assert len(sandwich({"rho": WIDTHS}, rng, random_subnets=2)) == 2 + 2


def test_a_cascade_stage_step_runs_the_sandwich_and_lowers_the_anchor_loss(spec, digits):
    torch.manual_seed(0)
    teacher = _trained_a_little(create_model("adapta-resnet-tiny", spec), digits.train.x[:64])
    student = create_model("adapta-resnet-tiny", spec)
    for p in teacher.parameters():
        p.requires_grad_(False)
    x = digits.train.x[:64]
    rng = np.random.default_rng(0)
    params = list(student.stages[1].parameters())
    opt = torch.optim.Adam(params, lr=3e-3)
    losses = []
    for _ in range(25):
        student.eval()
        student.stages[1].train()
        loss, n = stage_step(student, teacher, 1, x, np.random.default_rng(0), v=0.5, random_subnets=1,
                             delta_phase=False)
        assert n == 3  # largest, smallest, one random (one dimension: rho)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0]
    _, n = stage_step(student, teacher, 1, x, rng, v=0.5, random_subnets=1, delta_phase=True)
    assert n == 1 + 3  # the largest (target only), the two δ corners, one random
    assert len(teacher_targets(teacher, x)) == 5  # four anchors and the logits


def test_gate_loss_variance_follows_the_error_only_with_kl_of_g_to_p():
    largest = torch.zeros(2, 3)
    det = torch.tensor([[0.0, 0.0, 0.0], [2.0, 0.0, 0.0]])
    best = {}
    for kl in ("gp", "pg"):
        logvar = torch.zeros(2, 3, requires_grad=True)
        opt = torch.optim.Adam([logvar], lr=0.1)
        for _ in range(400):
            opt.zero_grad()
            gate_loss(det, logvar, largest, lam=1e-2, kl=kl).backward()
            opt.step()
        best[kl] = logvar.detach()
    assert best["gp"][1].mean() > best["gp"][0].mean() + 2  # wrong detection: larger variance
    assert torch.allclose(best["pg"][0], best["pg"][1], atol=0.05)  # KL(P||G): the variance ignores the error


def test_gate_variance_reads_the_error_in_probabilities_not_in_logit_scale():
    # a sure image (large logits, the gate agreeing in probabilities) against an unsure one (small logits, the
    # gate picking another class): the variance must be smaller for the sure one, whatever the logit scale
    largest = torch.tensor([[12.0, 0.0, 0.0], [0.5, 0.0, 0.0]])
    det = torch.tensor([[9.0, 0.0, 0.0], [0.0, 0.6, 0.0]])
    logvar = torch.zeros(2, 3, requires_grad=True)
    opt = torch.optim.Adam([logvar], lr=0.1)
    for _ in range(400):
        opt.zero_grad()
        gate_loss(det, logvar, largest, lam=1e-2).backward()
        opt.step()
    assert logvar[0, 0] < logvar[1, 1] - 1  # at each image's top detection output


def test_a_gate_phase_trains_only_its_gate(spec, digits):
    torch.manual_seed(0)
    teacher = create_model("adapta-resnet-tiny", spec).eval()
    student = create_model("adapta-resnet-tiny", spec)
    before = {k: v.clone() for k, v in student.state_dict().items()}
    small = dataclasses.replace(digits, train=digits.train.subset(range(128)))
    run_phase("gate2", student, teacher, small, SlimmableTraining(batch_size=64, gate_lr=1e-3), log=lambda s: None)
    changed = {k.split(".")[0] + "." + k.split(".")[1] for k, v in student.state_dict().items()
               if not torch.equal(v, before[k])}
    assert changed == {"gates.1"}


def test_training_settings_reject_unknown_keys():
    with pytest.raises(ConfigError, match="unknown"):
        SlimmableTraining.from_dict({"stage_epochs": [1, 1, 1, 1], "epochz": 3})
    with pytest.raises(ConfigError, match="stage_epochs"):
        SlimmableTraining(stage_epochs=(1, 1))
    t = SlimmableTraining.from_dict(SlimmableTraining().to_dict())
    assert t == SlimmableTraining()


# ---------------------------------------------------------------------------------------- the method's parts

def test_supernet_traces_carry_gate_confidences_and_a_budget_sets_the_knob(digits_supernet, tmp_path):
    from dyninfer.methods import create_method
    from dyninfer.trace import Trace

    prep = digits_supernet
    g = prep.calib.aux["gate"]
    P = len(prep.paths.names)
    assert g.shape == (P, prep.calib.n, 3) and np.isfinite(g).all()
    back = Trace.load(prep.calib.save(tmp_path / "t"))
    assert np.array_equal(back.aux["gate"], g) and np.array_equal(back.select(["x1"]).aux["gate"][0], g[-1])
    assert back.meta["gate_flops"] == prep.calib.meta["gate_flops"]
    m = create_method("slimmable", tolerance=0.05).fit(prep.calib)
    full = prep.calib.costs[-1].flops
    for share in (0.5, 0.75, 1.0):
        knob = m.knob_for(budget_flops=share * full)
        assert m.simulate(prep.calib, knob).mean_flops <= share * full * (1 + 1e-9)
    with pytest.raises(ConfigError, match="slimmable"):
        m.runtime(prep.paths.subset(["x1"]))


def test_the_all_path_set_holds_delta_and_the_four_mixed_configurations_cheapest_first(digits_supernet):
    prep = digits_supernet
    names = prep.paths.names
    assert len(names) == 16 and names[-1] == "x1"
    for n in ["x0.75", "x0.25-d", "x1-d", "x0.25-1-1-0.25", "x1-0.25-0.25-1", "x0.25-1-0.25-1", "x1-0.25-1-0.25",
              "x0.25-1-1-0.25-d"]:
        assert n in names
    flops = [c.flops for c in prep.calib.costs]
    assert flops[:-1] == sorted(flops[:-1]) and flops[-1] == max(flops)
    net = prep.paths.supernet
    with pytest.raises(ConfigError, match="unknown supernet path set"):
        net.path_configs("some")
    assert list(net.path_configs("uniform")) == ["x0.25", "x0.5", "x0.75", "x1"]


def test_a_gate_scored_stage_pays_its_gate_and_the_runtime_charges_the_same(digits_supernet):
    from dyninfer.methods import create_method
    from dyninfer.runtime.cost import count_flops

    prep = digits_supernet
    sub = prep.paths.models["x0.25"]
    costs = sub.gate_costs(prep.paths.input_shape)
    assert costs == {"gate": prep.calib.meta["gate_flops"]["gate"],
                     "prefix": prep.calib.meta["gate_flops"]["prefix"]["x0.25"]}
    assert costs["prefix"][-1] < count_flops(sub, prep.paths.input_shape) and min(costs["gate"]) > 0
    for gate in (0, -1):
        m = create_method("slimmable", tolerance=0.05, gate=gate, stages=["x0.25", "x0.5", "x1"]).fit(prep.calib)
        assert m.flops_ == [prep.calib.cost("x0.25").flops + costs["gate"][gate],
                            prep.calib.cost("x0.5").flops + costs["gate"][gate], prep.calib.cost("x1").flops]
        rt = m.runtime(prep.paths)
        rt.force(None)
        for knob in [(-np.inf, -np.inf), (np.inf, -np.inf), m.knob_]:
            rt.knob = knob
            res, sim = rt.run(prep.test.inputs(), 64), m.simulate(prep.test, knob)
            assert np.array_equal(res.path.numpy(), sim.path) and res.mean_flops == pytest.approx(sim.mean_flops)
        rt.knob = (-np.inf, -np.inf)  # everyone stays at x0.25: its subnet and its gate
        assert rt.run(prep.test.inputs()[:8]).mean_flops == pytest.approx(m.flops_[0])
    plain = create_method("slimmable", tolerance=0.05, scores=["max_softmax"], stages=["x0.25", "x1"]).fit(prep.calib)
    assert plain.flops_ == [prep.calib.cost("x0.25").flops, prep.calib.cost("x1").flops]  # no gate runs


@pytest.mark.parametrize("scope", ["rho", "delta", "rho+delta"])
def test_pull_up_and_pull_down_map_bins_to_accuracy_ranks_and_agree_with_the_runtime(digits_supernet, scope):
    from dyninfer.methods import create_method

    prep = digits_supernet
    up = create_method("slimmable-bins", rule="pull-up", scope=scope, tolerance=0.05).fit(prep.calib)
    down = create_method("slimmable-bins", rule="pull-down", scope=scope, tolerance=0.05).fit(prep.calib)
    K = len(up.candidates_)
    assert K == {"rho": 4, "delta": 4, "rho+delta": 8}[scope] and len(up.edges_) == 7
    best, worst = int(np.argmax(up.accuracy_)), int(np.argmin(up.accuracy_))
    assert up.map_[0] == best and up.map_[-1] == worst  # lowest confidence -> the most accurate
    assert down.map_[0] == worst and down.map_[-1] == best
    assert up.decide_flops_ == prep.calib.meta["gate_flops"]["prefix"][up.probe_][0] + \
        prep.calib.meta["gate_flops"]["gate"][0]
    conf = prep.test.aux["gate"][prep.test.index(up.probe_), :, 0]
    sim = up.simulate(prep.test, 0)
    low = conf < up.edges_[0]
    assert (sim.path[low] == best).all()
    assert sim.flops == pytest.approx(np.array(up.flops_)[sim.path] + up.decide_flops_)
    rt = up.runtime(prep.paths)
    rt.force(None)
    for knob in (0.0, 1.0, -2.0, float(K), np.inf):
        rt.knob = knob
        res, s = rt.run(prep.test.inputs(), 64), up.simulate(prep.test, knob)
        assert np.array_equal(res.path.numpy(), s.path) and np.array_equal(res.pred.numpy(), s.pred), knob
    assert (up.simulate(prep.test, np.inf).path == 0).all()
    with pytest.raises(ConfigError, match="integer shift"):
        up.check_knob(0.5)


@pytest.mark.parametrize("recipe, sampling, subnets", [("usnet", "sandwich", 4), ("usnet", "random3", 3),
                                                       ("dsnet", "sandwich", 4), ("dsnet", "random3", 3)])
def test_baseline_steps_and_epochs_train_the_backbone_only(spec, digits, recipe, sampling, subnets):
    import copy

    from dyninfer.train.slimmable import baseline_step, phases

    torch.manual_seed(0)
    net = create_model("adapta-resnet-tiny", spec)
    x, y = digits.train.x[:32], digits.train.y[:32]
    ema = copy.deepcopy(net) if recipe == "dsnet" else None
    loss, n = baseline_step(net, x, y, np.random.default_rng(0), recipe=recipe, sampling=sampling, ema=ema)
    assert n == subnets and loss.requires_grad and torch.isfinite(loss)
    t = SlimmableTraining(recipe=recipe, sampling=sampling, baseline_epochs=2, batch_size=32)
    assert phases(net, t) == [f"{recipe}1", f"{recipe}2"]
    before = {k: v.clone() for k, v in net.state_dict().items()}
    small = dataclasses.replace(digits, train=digits.train.subset(range(96)))
    run_phase(f"{recipe}1", net, None, small, t, log=lambda s: None)
    changed = {k.split(".")[0] for k, v in net.state_dict().items() if not torch.equal(v, before[k])}
    assert changed == {"stem", "stages", "head"}  # no δ substitutes, no gates
    with pytest.raises(ConfigError, match="random3"):
        SlimmableTraining(sampling="random3")


def test_presets_size_the_supernet_and_its_four_baselines():
    from dyninfer.presets import get_preset

    for name in ("quick", "full"):
        p = get_preset(name)
        assert p.supernet_model == "adapta-resnet-s" and p.supernet_paths == "all"
        assert set(p.supernet_baselines) == {"usnet", "usnet*", "dsnet", "dsnet*"}
        assert {(t.recipe, t.sampling) for t in p.supernet_baselines.values()} == {
            (r, s) for r in ("usnet", "dsnet") for s in ("sandwich", "random3")}
    assert get_preset("quick").supernet_training.train_images == 5000


def test_a_checkpoint_written_for_another_layout_under_the_same_name_is_refused(spec, tmp_path):
    from dyninfer.io import read_payload, write_payload
    from dyninfer.train.checkpoint import FORMAT, load_checkpoint

    net = create_model("adapta-resnet-tiny", spec)
    save_checkpoint(net, tmp_path / "net.pt")
    model, _ = load_checkpoint(tmp_path / "net.pt")  # the layout it was written for: loads
    assert model.strides == net.strides
    payload = read_payload(tmp_path / "net.pt", fmt=FORMAT)
    assert payload["arch"]["layout"] == net.shape
    payload["arch"]["layout"] = {**net.shape, "strides": [2, 2, 2, 2]}  # as if the name built another layout then
    write_payload(tmp_path / "old.pt", payload)
    with pytest.raises(CheckpointError, match=r"of layout .*'strides': \[2, 2, 2, 2\].* builds .*'strides': \[1, 2"):
        load_checkpoint(tmp_path / "old.pt")
    with pytest.raises(CheckpointError, match=r"'strides': \[2, 2, 2, 2\].*this supernet has shape"):
        load_into(create_model("adapta-resnet-tiny", spec), tmp_path / "old.pt")
