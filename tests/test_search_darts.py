"""The DARTS-style search of the big/little NAS method (paper 3.5.1) on a tiny co-trained digits supernet: the
relaxed forward, the expected FLOPs and the expected latency agree with the discrete subnet at a one-hot α, the
cost term (FLOPs or latency) moves α toward cheaper choices, the second-order gradient is the unrolled one, the
discretised pair is valid and scored, an interrupted search resumes after its last epoch, and bad arguments are
ConfigErrors."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch

from dyninfer import ConfigError
from dyninfer.models import create_model
from dyninfer.models.bigsmall import PairConfig
from dyninfer.io import read_payload, write_payload
from dyninfer.search import LatencyTable, PairEvaluator
from dyninfer.search.darts import (ArchParameters, architecture_gradient, darts_loss, darts_search, expected_flops,
                                   expected_latency, one_hot_probs, relaxed_logits)

pytestmark = pytest.mark.usefixtures("one_thread")

# the supernet: conftest's cotrained_bigsmall (trained through the width phase too, once per session)
TAU = 0.3
FAST = dict(batch_size=32, steps_per_epoch=2)  # a search step runs both relaxed heads twice: ~1 s on one thread
TINY = dict(batch_size=16, steps_per_epoch=1)


@pytest.fixture(scope="module")
def trained(cotrained_bigsmall):
    return copy.deepcopy(cotrained_bigsmall)  # scoring re-estimates batch norms: each module gets its own copy


def _pairs(net) -> list[PairConfig]:
    sp = net.space
    return [PairConfig(sp.max_subnet("little"), sp.max_subnet("big")),
            PairConfig(sp.min_subnet("little"), sp.min_subnet("big"))] + \
        [net.sample_pair(np.random.default_rng(i)) for i in range(3)]


def _state(net) -> dict:
    return {k: v.clone() for k, v in net.state_dict().items()}


@pytest.fixture(scope="module")
def table(trained):
    """Every block of the tiny supernet timed once at batch 1 (a few seconds)."""
    t = LatencyTable(trained, batches=(1,), rounds=2, warmup=0)
    t.fill()
    return t


# ---------------------------------------------------------------------------------------- the relaxation

def test_the_relaxed_forward_at_a_one_hot_alpha_is_the_discrete_subnet(trained, digits):
    """Eval mode, the trained batch-norm state: the relaxed layers normalise a mask of c channels with the
    private norm of c channels — the one the discrete subnet uses — so a peaked α gives the subnet's logits."""
    net = trained
    net.eval()
    x = digits.calib.x[:48]
    arch = ArchParameters(net.space)
    for pair in _pairs(net):
        arch.set_pair(pair, peak=50.0)  # softmax: 1 - O(e^-50) on the chosen choice
        with torch.no_grad():
            for head in ("little", "big"):
                got = relaxed_logits(net, x, arch.probs(head), head)
                cfg = getattr(pair, head)
                net.set_active_subnet(cfg)
                want = net(x)
                assert torch.allclose(got, want, atol=1e-5, rtol=1e-5), (head, cfg)
        assert arch.pair() == pair  # the argmax discretises back to it
    # the relaxed forward leaves the supernet's active subnet alone
    net.set_active_subnet(net.min_subnet("little"))
    relaxed_logits(net, x, one_hot_probs(net.space, net.max_subnet("big")), "big")
    assert net.active == net.min_subnet("little")


def test_with_group_norm_the_one_hot_relaxation_is_exact_in_train_mode_too(digits):
    """Group norm has no running state, so train and eval agree; the per-count normalisation makes it exact."""
    torch.manual_seed(1)
    net = create_model("bigsmall-supernet-tiny", digits.spec, norm="gn").train()
    x = digits.train.x[:16]
    for pair in _pairs(net)[:3]:
        for head in ("little", "big"):
            cfg = getattr(pair, head)
            with torch.no_grad():
                got = relaxed_logits(net, x, one_hot_probs(net.space, cfg), head)
                net.set_active_subnet(cfg)
                assert torch.allclose(got, net(x), atol=1e-6, rtol=1e-5)


def test_expected_flops_at_a_one_hot_alpha_are_the_subnet_flops_and_differentiable(trained):
    net = trained
    arch = ArchParameters(net.space)
    for pair in _pairs(net):
        for head in ("little", "big"):
            cfg = getattr(pair, head)
            assert float(expected_flops(net, one_hot_probs(net.space, cfg), head)) == pytest.approx(
                net.flops(cfg), rel=1e-12)
        arch.set_pair(pair, peak=60.0)
        with torch.no_grad():
            assert float(expected_flops(net, arch.probs("big"), "big")) == pytest.approx(net.flops(pair.big), rel=1e-9)
    # a uniform mixture costs between the smallest and the largest subnet, and has a gradient in every α
    arch = ArchParameters(net.space, init_std=0.0)
    for head in ("little", "big"):
        e = expected_flops(net, arch.probs(head), head)
        assert net.flops(net.min_subnet(head)) < float(e.detach()) < net.flops(net.max_subnet(head))
        grads = torch.autograd.grad(e, [arch.alpha(head, s, f) for s in range(net.space.stages_of(head))
                                        for f in ("width", "depth", "kernel", "expand")])
        assert all(torch.isfinite(g).all() and g.abs().sum() > 0 for g in grads)


def _part_flops(net, key: str) -> float:
    """FLOPs per image of one latency-table entry (stem, block or head)."""
    sizes = net.stage_sizes()
    if key == "stem":
        c, (h, w) = net.input_shape[0], net.input_shape[1:]
        return 2.0 * c * net.stem_channels * net.stem[0].kernel_size[0] ** 2 * h * w
    parts = key.split(":")
    if parts[0] == "head":
        hd = net.heads[parts[1]]
        h, w = sizes[net.space.stages_of(parts[1])]
        return 2.0 * int(parts[2]) * hd.conv.out_channels * h * w + 2.0 * hd.fc.in_features * hd.fc.out_features
    s, j = int(parts[1][1:]), int(parts[2][1:])
    cin, hid, out = (int(v) for v in parts[3].split("-"))
    k = int(parts[4][1:])
    hin = sizes[s][0] * sizes[s][1] if j == 0 else sizes[s + 1][0] * sizes[s + 1][1]
    hw = sizes[s + 1][0] * sizes[s + 1][1]
    return 2.0 * cin * hid * hin + 2.0 * hid * k * k * hw + 2.0 * hid * out * hw


def test_expected_latency_at_a_one_hot_alpha_is_the_tables_prediction_and_differentiable(trained, table):
    net = trained
    for pair in _pairs(net):
        for head in ("little", "big"):
            cfg = getattr(pair, head)
            e = expected_latency(net, one_hot_probs(net.space, cfg), head, table)
            assert float(e) == pytest.approx(table.predict(cfg), rel=1e-9)
    # a table whose every entry is its part's FLOPs: then the expected "latency" of any mixture is its expected
    # FLOPs, which expected_flops computes in closed form
    flops = LatencyTable(net, batches=(1,))
    flops.entries = {k: {1: _part_flops(net, k)} for k in flops.all_keys()}
    for pair in _pairs(net)[:2]:
        assert flops.predict(pair.big) == pytest.approx(net.flops(pair.big), rel=1e-12)
    arch = ArchParameters(net.space, init_std=1.0, seed=4)
    for head in ("little", "big"):
        with torch.no_grad():
            assert float(expected_latency(net, arch.probs(head), head, flops)) == pytest.approx(
                float(expected_flops(net, arch.probs(head), head)), rel=1e-6)  # float32 probabilities
        e = expected_latency(net, arch.probs(head), head, table)
        grads = torch.autograd.grad(e, [arch.alpha(head, s, f) for s in range(net.space.stages_of(head))
                                        for f in ("width", "depth", "kernel", "expand")])
        assert all(torch.isfinite(g).all() and g.abs().sum() > 0 for g in grads)
    with pytest.raises(ConfigError, match="built for this supernet"):
        expected_latency(copy.deepcopy(net), arch.probs("big"), "big", table)
    with pytest.raises(ConfigError, match="was not timed"):
        expected_latency(net, arch.probs("big"), "big", table, batch=32)


def test_the_loss_weights_the_cost_by_eta(trained, digits):
    net = copy.deepcopy(trained).train()  # train mode moves batch-norm statistics: not the shared fixture's
    arch = ArchParameters(net.space, seed=0)
    x, y = digits.calib.x[:32], digits.calib.y[:32]
    a = darts_loss(net, arch, x, y, eta=0.0, threshold=TAU)
    b = darts_loss(net, arch, x, y, eta=2.0, threshold=TAU)
    assert float(b.loss.detach()) - float(a.loss.detach()) == pytest.approx(2.0 * b.cost, rel=1e-4)
    fmax = net.flops(net.max_subnet("big"))
    assert b.cost == pytest.approx((b.flops_little + b.forward_rate * b.flops_big) / fmax, rel=1e-6)
    assert 0 <= b.forward_rate <= 1
    assert b.latency_little is None and b.latency_big is None


def test_with_a_latency_table_the_cost_is_the_expected_latency(trained, digits, table):
    net = copy.deepcopy(trained).train()
    arch = ArchParameters(net.space, seed=0)
    x, y = digits.calib.x[:32], digits.calib.y[:32]
    tab = copy.copy(table)
    tab.supernet = net
    out = darts_loss(net, arch, x, y, eta=1.0, threshold=TAU, latency_table=tab)
    tmax = table.predict(net.max_subnet("big"))
    assert out.cost == pytest.approx((out.latency_little + out.forward_rate * out.latency_big) / tmax, rel=1e-6)
    assert out.latency_little < out.latency_big < tmax


# ---------------------------------------------------------------------------------------- second order

class _Loss(torch.nn.Module):
    """darts_loss as a module's forward, so torch.func.functional_call can run it at other weights."""

    def __init__(self, net, arch):
        super().__init__()
        self.net, self.arch = net, arch

    def forward(self, x, y, kw):
        return darts_loss(self.net, self.arch, x, y, **kw).loss


def test_the_second_order_gradient_is_the_gradient_through_the_unrolled_step(trained, digits):
    """α's second-order gradient against autograd through w' = w − ξ ∇_w L_train(w, α) end to end (train mode, as
    the search runs)."""
    net = copy.deepcopy(trained).train()
    arch = ArchParameters(net.space, seed=1)
    val = (digits.calib.x[:16], digits.calib.y[:16])
    train = (digits.train.x[:16], digits.train.y[:16])
    kw = dict(eta=0.5, threshold=TAU)
    xi = 0.05
    names = [n for n, p in net.named_parameters() if p.requires_grad]
    weights = [p for p in net.parameters() if p.requires_grad]
    _, g1 = architecture_gradient(net, arch, val, order=1, **kw)  # moves the norms' running statistics
    before = _state(net)
    _, g2 = architecture_gradient(net, arch, val, train, order=2, xi=xi, **kw)
    after = net.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # the unrolled step restores weights and norms
    alphas = list(arch.parameters())
    stem = net.stem(net.normalize(train[0]))
    ce = sum(torch.nn.functional.cross_entropy(relaxed_logits(net, train[0], arch.probs(h), h, stem=stem), train[1])
             for h in ("little", "big"))
    gw = torch.autograd.grad(ce, weights, create_graph=True, allow_unused=True)
    unrolled = {f"net.{n}": w - xi * g if g is not None else w for n, w, g in zip(names, weights, gw)}
    lv = torch.func.functional_call(_Loss(net, arch), unrolled, (val[0], val[1], kw), strict=False)
    exact = torch.autograd.grad(lv, alphas, allow_unused=True)
    exact = torch.cat([torch.zeros_like(a) if g is None else g for a, g in zip(alphas, exact)])
    g1, g2 = torch.cat(g1), torch.cat(g2)
    err1, err2 = float((g1 - exact).norm()), float((g2 - exact).norm())
    assert err1 > 0.01 * float(exact.norm())  # the unrolled step matters: first order is off
    assert err2 < 1e-3 * float(exact.norm())
    # first order is the plain gradient of the loss
    assert torch.allclose(g1, torch.cat(torch.autograd.grad(darts_loss(net, arch, *val, **kw).loss, alphas)),
                          rtol=1e-4, atol=1e-7)
    with pytest.raises(ConfigError, match="training batch and xi"):
        architecture_gradient(net, arch, val, order=2, xi=xi, **kw)
    with pytest.raises(ConfigError, match="order must be"):
        architecture_gradient(net, arch, val, train, order=3, xi=xi, **kw)


# ---------------------------------------------------------------------------------------- the search

def test_a_large_eta_moves_alpha_to_cheaper_choices_and_eta_zero_stays_finite(trained, digits):
    net = trained
    before = _state(net)
    start = ArchParameters(net.space, seed=0)
    with torch.no_grad():
        f0 = {h: float(expected_flops(net, start.probs(h), h)) for h in ("little", "big")}
    lines: list[str] = []
    res = darts_search(net, digits.train, digits.calib, epochs=1, arch_lr=0.2, weight_lr=0.0, eta=50.0,
                       threshold=TAU, seed=0, log=lines.append, progress=False, **FAST)
    rec = res.trajectory[-1]
    assert rec["flops_little"] < f0["little"] and rec["flops_big"] < f0["big"]
    assert rec["train_loss"] is None and res.cost["weight_steps"] == 0 and res.cost["arch_steps"] == 2
    assert sum(line.startswith("[darts] epoch 1/1") for line in lines) == 1
    # accuracy only, the weights trained too: finite, and the caller's supernet untouched (a copy was searched)
    res0 = darts_search(net, digits.train, digits.calib, epochs=1, arch_lr=0.05, weight_lr=1e-3, eta=0.0,
                        threshold=TAU, seed=0, **TINY)
    r0 = res0.trajectory[-1]
    assert all(np.isfinite(r0[k]) for k in ("val_loss", "ce_little", "ce_big", "train_loss", "expected_flops"))
    assert all(np.isfinite(p).all() for p in res0.probabilities.values())
    after = net.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert any(not torch.equal(before[k], v) for k, v in res0.supernet.state_dict().items())


def test_the_discretised_pair_is_valid_and_scored(trained, digits):
    net = trained
    ev = PairEvaluator(net, digits.calib.x, digits.calib.y, digits.train.x[:128], threshold=TAU)
    res = darts_search(net, digits.train, digits.calib, epochs=1, arch_lr=0.1, weight_lr=0.0, eta=1.0,
                       threshold=TAU, evaluator=ev, seed=3, **FAST)
    assert net.space.check_pair(res.pair) == res.pair
    assert res.encoding == [int(v) for v in net.encode(res.pair)] == res.trajectory[-1]["encoding"]
    rec = res.record
    assert rec is not None and list(rec.encoding) == res.encoding and rec.threshold == TAU
    assert rec.little_flops == net.flops(res.pair.little) and rec.big_flops == net.flops(res.pair.big)
    assert 0 <= rec.accuracy <= 1
    assert res.cost["evaluated"] == ev.evaluated == 1 and res.cost["cpu_seconds"] > 0 and res.cost["steps"] == 2
    for name, p in res.probabilities.items():
        assert sum(p) == pytest.approx(1.0, abs=1e-6)
        field = name.split(".")[-1]
        head, stage = name.split(".")[0], int(name.split(".")[1][1:]) - 1
        chosen = getattr(getattr(res.pair, head).stages[stage], field)
        assert net.space.choices(field)[int(np.argmax(p))] == chosen
    json.dumps(res.as_dict())


def test_a_latency_search_moves_alpha_to_faster_choices_and_second_order_runs(trained, digits, table):
    net = trained
    start = ArchParameters(net.space, seed=0)
    with torch.no_grad():
        t0 = {h: float(expected_latency(net, start.probs(h), h, table)) for h in ("little", "big")}
    lines: list[str] = []
    res = darts_search(net, digits.train, digits.calib, epochs=1, arch_lr=0.2, weight_lr=0.0, eta=50.0,
                       threshold=TAU, seed=0, latency_table=table, log=lines.append, **FAST)
    rec = res.trajectory[-1]
    assert rec["latency_little"] < t0["little"] and rec["latency_big"] < t0["big"]
    assert rec["expected_latency"] == pytest.approx(rec["latency_little"] + rec["forward_rate"] * rec["latency_big"])
    assert res.settings["objective"] == "latency" and res.settings["latency_batch"] == 1
    assert "E[latency]" in lines[-1]
    # second order: α moves, the weights train, the caller's supernet is untouched
    before = _state(net)
    res2 = darts_search(net, digits.train, digits.calib, epochs=1, arch_lr=0.1, weight_lr=1e-2, eta=1.0,
                        threshold=TAU, seed=0, order=2, **TINY)
    assert res2.settings["first_order"] is False and res2.cost["weight_steps"] == 1
    assert all(np.isfinite(p).all() for p in res2.probabilities.values())
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    with pytest.raises(ConfigError, match="weight_lr=0"):
        darts_search(net, digits.train, digits.calib, epochs=1, weight_lr=0.0, order=2, **TINY)
    with pytest.raises(ConfigError, match="order must be"):
        darts_search(net, digits.train, digits.calib, epochs=1, order=3, **TINY)
    with pytest.raises(ConfigError, match="built for the searched supernet"):
        darts_search(net, digits.train, digits.calib, epochs=1, latency_table=object(), **TINY)


def test_a_state_written_before_the_latency_settings_resumes(trained, digits, tmp_path):
    kw = dict(epochs=1, arch_lr=0.1, weight_lr=0.0, eta=1.0, threshold=TAU, seed=2, **TINY)
    folder = tmp_path / "old"
    darts_search(trained, digits.train, digits.calib, folder=folder, **kw)
    st = read_payload(folder / "state.pt", fmt="dyninfer-bigsmall-darts-state-1")
    for k in ("objective", "latency_batch"):
        del st["settings"][k]
    write_payload(folder / "state.pt", st)
    lines: list[str] = []
    res = darts_search(trained, digits.train, digits.calib, folder=folder, log=lines.append, **{**kw, "epochs": 2})
    assert any("resuming" in line for line in lines) and res.epochs_done == 2
    with pytest.raises(ConfigError, match="objective"):
        darts_search(trained, digits.train, digits.calib, folder=folder, latency_table=LatencyTable(trained),
                     **{**kw, "epochs": 3})


class Interrupted(Exception):
    pass


def test_an_interrupted_search_resumes_after_its_last_epoch(trained, digits, tmp_path):
    kw = dict(epochs=2, arch_lr=0.1, weight_lr=1e-3, eta=1.0, threshold=TAU, seed=5, **TINY)
    straight = darts_search(trained, digits.train, digits.calib, **kw)

    def crash(line: str) -> None:  # after epoch 1's state is written
        if line.startswith("[darts] epoch 1/2"):
            raise Interrupted

    folder = tmp_path / "darts"
    with pytest.raises(Interrupted):
        darts_search(trained, digits.train, digits.calib, folder=folder, log=crash, **kw)
    stored = json.loads((folder / "result.json").read_text())
    assert stored["epochs_done"] == 1 and len(stored["trajectory"]) == 1
    first = stored["trajectory"][0]

    lines: list[str] = []
    resumed = darts_search(trained, digits.train, digits.calib, folder=folder, log=lines.append, **kw)
    assert any("resuming" in line for line in lines)
    assert sum(line.startswith("[darts] epoch") for line in lines) == 1  # epoch 2 only
    assert len(resumed.trajectory) == 2 and [r["epoch"] for r in resumed.trajectory] == [1, 2]
    assert json.loads(json.dumps(resumed.trajectory[0])) == first
    assert resumed.cost["steps"] == 2 and resumed.epochs_done == 2
    # the resumed search is the uninterrupted one (same batches, α, optimiser states and weights)
    for a, b in zip(resumed.trajectory, straight.trajectory):
        assert a["encoding"] == b["encoding"]
        for k in ("val_loss", "train_loss", "flops_little", "flops_big"):
            assert a[k] == pytest.approx(b[k], rel=1e-5)
    for name, p in straight.probabilities.items():
        assert resumed.probabilities[name] == pytest.approx(p, abs=1e-6)
    # finished: a third call runs no step; other settings are refused
    again = darts_search(trained, digits.train, digits.calib, folder=folder, **kw)
    assert again.cost["steps"] == 2 and again.trajectory == resumed.trajectory
    with pytest.raises(ConfigError, match="eta"):
        darts_search(trained, digits.train, digits.calib, folder=folder, **{**kw, "eta": 2.0})
    with pytest.raises(ConfigError, match="at least"):
        darts_search(trained, digits.train, digits.calib, folder=folder, **{**kw, "epochs": 1})


def test_bad_arguments_are_config_errors(trained, digits):
    net = trained
    ok = dict(epochs=1, arch_lr=0.1, weight_lr=0.0, eta=1.0, threshold=TAU, seed=0, **FAST)
    bad = [({"epochs": 0}, "epochs"), ({"arch_lr": 0.0}, "arch_lr"), ({"weight_lr": -1.0}, "weight_lr"),
           ({"eta": float("nan")}, "eta"), ({"threshold": -0.1}, "threshold"), ({"batch_size": 1}, "batch_size"),
           ({"steps_per_epoch": 0}, "steps_per_epoch"), ({"seed": -1}, "seed"), ({"progress": "yes"}, "progress"),
           ({"little_weight": 0.0, "big_weight": 0.0}, "both 0"), ({"evaluator": object()}, "PairEvaluator")]
    for change, match in bad:
        with pytest.raises(ConfigError, match=match):
            darts_search(net, digits.train, digits.calib, **{**ok, **change})
    with pytest.raises(ConfigError, match="BigSmallSupernet"):
        darts_search(torch.nn.Linear(2, 2), digits.train, digits.calib, **ok)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="val"):
        darts_search(net, digits.train, digits.calib.x, **ok)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="train"):
        darts_search(net, digits.train.subset([0]), digits.calib, **ok)
    with pytest.raises(ConfigError, match="stages"):
        relaxed_logits(net, digits.calib.x[:2], ArchParameters(net.space).probs("little"), "big")
    other = create_model("bigsmall-supernet-tiny", digits.spec, kernels=(3, 5))
    ev = PairEvaluator(other, digits.calib.x, digits.calib.y, digits.train.x[:32], threshold=TAU)
    with pytest.raises(ConfigError, match="search space"):
        darts_search(net, digits.train, digits.calib, evaluator=ev, **ok)
