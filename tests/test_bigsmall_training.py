"""Co-training of the big/little supernet and its learned router (NAS paper 3.3-3.4): the pair forward, the joint
loss and its weights, the sandwich per progressive-shrinking phase, resumable phases, the independent baseline."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from dyninfer import ConfigError
from dyninfer.models import create_model
from dyninfer.models.bigsmall import FIELDS, PairConfig
from dyninfer.models.bigsmall_router import BigSmallRouter
from dyninfer.train.bigsmall import (PHASES, CoTraining, cotrain_step, fit_bigsmall, fit_independent, load_bigsmall,
                                     released, routing_loss, routing_targets, sandwich_pairs)

pytestmark = pytest.mark.usefixtures("one_thread")

MODEL = "bigsmall-supernet-tiny"
QUICK = CoTraining(epochs=1, batch_size=64, train_images=256, eval_images=200, bn_images=256)


def _net_and_router(digits, seed: int = 0):
    torch.manual_seed(seed)
    net = create_model(MODEL, digits.spec)
    return net, BigSmallRouter(net.heads["little"].fc.in_features, 16)


def _grads(modules, loss: torch.Tensor) -> torch.Tensor:
    params = [p for m in modules for p in m.parameters()]
    for p in params:
        p.grad = None
    loss.backward()
    return torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).flatten() for p in params])


# ---------------------------------------------------------------------------------------- the supernet's pair forward

def test_the_pair_forward_equals_two_forwards_and_the_flops_equal_the_counted_ones(digits):
    net, _ = _net_and_router(digits)
    net.eval()
    x, rng = digits.test.x[:16], np.random.default_rng(0)
    pairs = [PairConfig(net.max_subnet("little"), net.max_subnet("big"))] + [net.sample_pair(rng) for _ in range(3)]
    for pair in pairs:
        little, big, feats = net.forward_pair(x, pair)
        assert net.active == pair.big
        net.set_active_subnet(pair.little)
        ref_little, ref_feats = net.forward_pooled(x)
        net.set_active_subnet(pair.big)
        assert torch.allclose(little, ref_little, atol=1e-6) and torch.allclose(big, net(x), atol=1e-6)
        assert torch.allclose(feats, ref_feats, atol=1e-6) and feats.shape == (16, net.heads["little"].fc.in_features)
        for cfg in (pair.little, pair.big):
            assert net.flops(cfg) == net.subnet_flops(cfg)


# ---------------------------------------------------------------------------------------- the joint loss

def test_every_loss_term_is_finite_and_its_weight_scales_its_gradient(digits):
    net, router = _net_and_router(digits)
    net.train()
    x, y = digits.train.x[:48], digits.train.y[:48]
    pairs = sandwich_pairs(net.space, "width", np.random.default_rng(0), 2)
    assert len(pairs) == 4
    base = CoTraining(alpha=1.0, beta=1.0, gamma=1.0, lam=1.0, eta=1.0, temperature=2.0)

    def run(**changes):
        out = cotrain_step(net, router, x, y, dataclasses.replace(base, **changes), pairs=pairs)
        return out, _grads((net, router), out.loss)

    out, full = run()
    terms = out.floats()
    assert all(np.isfinite(v) for v in terms.values()) and terms["loss"] > 0
    assert terms["little"] == pytest.approx(terms["ce_little"] + terms["distill"], rel=1e-5)
    assert terms["routing"] == pytest.approx(terms["bce"] + terms["cost"], rel=1e-5)
    assert terms["loss"] == pytest.approx(terms["big"] + terms["little"] + terms["routing"] + terms["consistency"],
                                          rel=1e-5)
    assert all(terms[k] > 0 for k in ("big", "ce_little", "distill", "bce", "cost", "consistency"))
    # each weight set to 0 removes that term's gradient: the gradient changes, and is what the rest gives
    for name in ("alpha", "beta", "gamma", "lam", "eta"):
        _, without = run(**{name: 0.0})
        assert not torch.allclose(without, full), name
    _, no_distill = run(distill=False)
    assert not torch.allclose(no_distill, full)
    _, nothing = run(alpha=0.0, beta=0.0, gamma=0.0, lam=0.0)
    assert torch.count_nonzero(nothing) == 0
    # the gradient of all four weighted terms is the sum of each one's gradient alone
    alone = sum(run(**{k: (1.0 if k == name else 0.0) for k in ("alpha", "beta", "gamma", "lam")})[1]
                for name in ("alpha", "beta", "gamma", "lam"))
    assert torch.allclose(alone, full, atol=1e-5)
    # the router learns only from L_routing; the big head only from L_big (its side of the KLs is detached)
    _, only_routing = run(alpha=0.0, beta=0.0, lam=0.0)
    n_net = sum(p.numel() for p in net.parameters())
    assert torch.count_nonzero(only_routing[:n_net]) == 0 and torch.count_nonzero(only_routing[n_net:]) > 0
    big_fc = [p for p in net.heads["big"].parameters()]
    out = cotrain_step(net, router, x, y, dataclasses.replace(base, alpha=0.0), pairs=pairs)
    _grads((net, router), out.loss)
    assert all(p.grad is None or torch.count_nonzero(p.grad) == 0 for p in big_fc)


def test_a_few_steps_lower_the_training_loss_on_a_fixed_batch(digits):
    net, router = _net_and_router(digits)
    x, y = digits.train.x[:64], digits.train.y[:64]
    pairs = sandwich_pairs(net.space, "width", np.random.default_rng(1), 2)
    t = CoTraining()
    opt = torch.optim.AdamW(list(net.parameters()) + list(router.parameters()), lr=t.lr)
    losses = []
    net.train()
    for _ in range(12):
        out = cotrain_step(net, router, x, y, t, pairs=pairs)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        losses.append(float(out.loss.detach()))
    assert losses[-1] < 0.92 * losses[0] and sum(b < a for a, b in zip(losses, losses[1:])) >= 9, losses


def test_the_routing_target_is_the_little_heads_correctness():
    y = torch.tensor([0, 1, 2, 0])
    little = torch.tensor([[3.0, 0, 0], [0, 0, 3.0], [0, 0, 3.0], [0, 3.0, 0]])  # right, wrong, right, wrong
    big = torch.tensor([[0, 3.0, 0], [0, 5.0, 0], [5.0, 0, 0], [5.0, 0, 0]])  # the big head right where little errs
    keep = routing_targets(little, big, y)
    assert keep.tolist() == [1.0, 0.0, 1.0, 0.0]
    # a wrong little head is kept when the big head does no better (within the margin)
    assert routing_targets(little, little, y).tolist() == [1.0, 1.0, 1.0, 1.0]
    assert routing_targets(little, big, y, margin=100.0).tolist() == [1.0, 1.0, 1.0, 1.0]
    # the BCE is the router's keep probability against that target; the penalty its forward probability x cost
    torch.manual_seed(0)
    router = BigSmallRouter(5, 8)
    feats = torch.rand(4, 5)
    p_forward = router.forward_probability(feats, little)
    bce, penalty = routing_loss(router, feats, little, big, y, cost=0.25)
    expected = torch.nn.functional.binary_cross_entropy(1 - p_forward.detach(), keep)
    assert float(bce.detach()) == pytest.approx(float(expected), rel=1e-5)
    assert float(penalty.detach()) == pytest.approx(0.25 * float(p_forward.detach().mean()), rel=1e-5)


# ---------------------------------------------------------------------------------------- progressive shrinking

def test_the_sandwich_samples_only_the_released_dimensions_of_each_phase(digits):
    space = create_model(MODEL, digits.spec).space
    assert [released(p) for p in PHASES] == [(), ("kernel",), ("kernel", "depth"),
                                            ("kernel", "depth", "width", "expand")]
    rng = np.random.default_rng(0)
    assert sandwich_pairs(space, "full", rng, 2) == [PairConfig(space.max_subnet("little"), space.max_subnet("big"))]
    for phase in PHASES[1:]:
        free = released(phase)
        pairs = [p for _ in range(15) for p in sandwich_pairs(space, phase, rng, 2)]
        assert pairs[0] == PairConfig(space.max_subnet("little"), space.max_subnet("big"))
        smallest = pairs[1].big.stages[0]
        seen = {f: set() for f in FIELDS}
        for pair in pairs:
            for st in pair.little.stages + pair.big.stages:
                for f in FIELDS:
                    seen[f].add(getattr(st, f))
        for f in FIELDS:
            if f in free:
                assert getattr(smallest, f) == space.choices(f)[0] and len(seen[f]) > 1, (phase, f)
            else:
                assert seen[f] == {space.choices(f)[-1]}, (phase, f)  # kept at its largest
    # the training step runs that sandwich: in the kernel phase only kernels vary
    net, router = _net_and_router(digits)
    out = cotrain_step(net, router, digits.train.x[:8], digits.train.y[:8], CoTraining(), phase="kernel",
                       rng=np.random.default_rng(3))
    assert len(out.pairs) == 4 and {st.depth for p in out.pairs for st in p.big.stages} == {4}
    assert {st.kernel for p in out.pairs for st in p.big.stages} == {3, 5, 7}


# ---------------------------------------------------------------------------------------- fitting

class Interrupted(Exception):
    pass


def test_an_interrupted_training_resumes_after_its_last_finished_phase(digits, tmp_path):
    def stop_after_full(line: str) -> None:
        first.append(line)
        if line.startswith("[bigsmall] full done"):
            raise Interrupted

    first: list[str] = []
    with pytest.raises(Interrupted):
        fit_bigsmall(MODEL, digits, QUICK, log=stop_after_full, progress=False, root=tmp_path)
    assert sum("full 1/1" in line for line in first) == 1 and not any("kernel" in line for line in first)
    (folder,) = (tmp_path / "digits").iterdir()
    assert sorted(p.name for p in folder.iterdir()) == ["00-full.pt"]

    second: list[str] = []
    net, router, meta = fit_bigsmall(MODEL, digits, QUICK, log=second.append, progress=False, root=tmp_path)
    assert not any("full 1/1" in line for line in second)  # phase 1 is not retrained
    assert any("after phase full" in line for line in second)
    for phase in PHASES[1:]:
        assert sum(line.startswith(f"[bigsmall] {phase} 1/1: loss") for line in second) == 1
    assert list(meta["phases"]) == list(PHASES) and meta["training"] == QUICK.to_dict()
    assert all(np.isfinite(meta["phases"][p]["losses"]["loss"]) for p in PHASES)
    assert meta["bn"]["batch_norms"] > 0 and len(meta["bn"]["configs"]) == 1  # the deployed (largest) pair alone
    assert sorted(p.name for p in folder.iterdir()) == [f"{i:02d}-{p}.pt" for i, p in enumerate(PHASES)]

    # a finished run is reused whole; the router travels in the checkpoint
    third: list[str] = []
    fit_bigsmall(MODEL, digits, QUICK, log=third.append, progress=False, root=tmp_path)
    assert not any(" 1/1: loss" in line for line in third)
    _, loaded, stored = load_bigsmall(meta["checkpoint"])
    feats, logits = torch.rand(5, router.kwargs["in_features"]), torch.randn(5, 10)
    assert torch.equal(loaded(feats, logits), router(feats, logits)) and stored["training"] == QUICK.to_dict()


def test_the_independent_baseline_trains_each_head_in_its_own_supernet(digits, tmp_path):
    t = dataclasses.replace(QUICK, phases=("full", "width"))
    lines: list[str] = []
    little_net, big_net, router, meta = fit_independent(MODEL, digits, t, log=lines.append, progress=False,
                                                        root=tmp_path)
    assert little_net is not big_net and set(meta) >= {"little", "big", "router", "bn"}
    fresh, _ = _net_and_router(digits)
    # each supernet trained its own head only: the other head keeps its initial weights
    assert torch.equal(little_net.heads["big"].fc.weight, fresh.heads["big"].fc.weight)
    assert torch.equal(big_net.heads["little"].fc.weight, fresh.heads["little"].fc.weight)
    assert not torch.equal(little_net.heads["little"].fc.weight, fresh.heads["little"].fc.weight)
    assert any(line.startswith("[bigsmall independent] router 1/1") for line in lines)
    assert {"forward_rate", "dynamic_acc", "routing_acc"} <= set(meta["router"]["calib"])
    assert np.isfinite(meta["little"]["phases"]["width"]["losses"]["ce_little"])
    assert meta["little"]["phases"]["width"]["losses"]["big"] == 0.0


# ---------------------------------------------------------------------------------------- settings

@pytest.mark.parametrize("changes, field", [
    ({"alpha": -1.0}, "alpha"), ({"beta": -0.5}, "beta"), ({"gamma": -1}, "gamma"), ({"lam": -0.1}, "lam"),
    ({"eta": -1.0}, "eta"), ({"temperature": 0.0}, "temperature"), ({"keep_margin": -1.0}, "keep_margin"),
    ({"phases": ("full", "shrink")}, "phases"), ({"phases": ("width", "kernel")}, "phases"), ({"phases": ()}, "phases"),
    ({"random_subnets": -1}, "random_subnets"), ({"epochs": 0}, "epochs"), ({"lr": 0.0}, "lr"),
    ({"distill": 1}, "distill"), ({"batch_size": 1}, "batch_size"),
])
def test_bad_hyper_parameters_are_config_errors_naming_the_field(changes, field):
    with pytest.raises(ConfigError, match=field):
        CoTraining(**changes)


def test_settings_round_trip_and_reject_unknown_keys(digits):
    t = CoTraining(phases=("full", "width"), distill=False)
    assert CoTraining.from_dict(t.to_dict()) == t
    with pytest.raises(ConfigError, match="lambda"):
        CoTraining.from_dict({"lambda": 0.5})
    net, _ = _net_and_router(digits)
    with pytest.raises(ConfigError, match="heads"):
        cotrain_step(net, None, digits.train.x[:4], digits.train.y[:4], t, heads=("big", "little"))
    with pytest.raises(ConfigError, match="router"):
        cotrain_step(net, None, digits.train.x[:4], digits.train.y[:4], t)
