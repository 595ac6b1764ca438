"""Early-exit networks: RevCol reversibility, threshold exiting (trace == runtime), exits on any backbone."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dyninfer.data.datasets import DataSpec, Split
from dyninfer.errors import CheckpointError, ConfigError, InputError, TraceError
from dyninfer.evaluate.stats import expected_calibration_error, reliability_bins
from dyninfer.methods.early_exit import EarlyExit, forced_exit, uniform
from dyninfer.methods.early_exit.evaluation import params_digest
from dyninfer.models import create_model
from dyninfer.models.attach import attach_exits, load_exit_heads, save_exit_heads
from dyninfer.models.revcol import RevColConfig, RevColNet, saved_activation_bytes
from dyninfer.paths import StagedNetwork, measure_costs
from dyninfer.train.exits import train_exits
from dyninfer.runtime.cost import count_flops
from dyninfer.scores import make_score
from dyninfer.train import Recipe, train

RECIPE = Recipe(epochs=4, batch_size=64, lr=3e-3, hflip=False, shift=1)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def revcol(digits):
    torch.manual_seed(0)
    net = create_model("revcol-tiny", digits.spec)
    train_exits(net, digits.train, RECIPE, seed=0, progress=False)
    return net.eval()


def _spec(h=16, c=1, k=5):
    return DataSpec("synthetic", k, c, (h, h), (0.5,) * c, (0.25,) * c, tuple(str(i) for i in range(k)))


# ------------------------------------------------------------------------------------ RevCol


def test_reversible_backward_matches_autograd():
    torch.manual_seed(0)
    net = RevColNet(_spec(), RevColConfig(widths=(4, 8, 8), columns=3, reversible=True)).double().train()
    plain = RevColNet(_spec(), RevColConfig(widths=(4, 8, 8), columns=3, reversible=False)).double().train()
    plain.load_state_dict(net.state_dict())
    x = torch.rand(5, 1, 16, 16, dtype=torch.double)
    grads = []
    for m in (net, plain):
        m.zero_grad()
        outs = m.forward_exits(x)
        sum((o ** 2).sum() * (i + 1) for i, o in enumerate(outs)).backward()
        grads.append({n: p.grad.clone() for n, p in m.named_parameters()})
    assert grads[0].keys() == grads[1].keys()
    for n in grads[0]:
        torch.testing.assert_close(grads[0][n], grads[1][n], rtol=1e-8, atol=1e-10, msg=n)
    # the recomputation in the backward pass must not update batch-norm statistics a second time
    for (n, a), b in zip(net.state_dict().items(), plain.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-10, msg=n)


def test_column_inverse_rebuilds_previous_column():
    torch.manual_seed(1)
    net = RevColNet(_spec(), RevColConfig(widths=(4, 8, 16), columns=3)).double().eval()
    x0 = net.stem(torch.rand(3, 1, 16, 16, dtype=torch.double))
    cols = net.columns()
    c0 = cols[0](x0, None)
    c1 = cols[1](x0, c0)
    rebuilt = cols[1].inverse(x0, c1)
    for a, b in zip(rebuilt, c0):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)
    with pytest.raises(ConfigError):
        cols[0].inverse(x0, c0)


def _saved_bytes(columns: int, reversible: bool) -> int:
    torch.manual_seed(0)
    net = RevColNet(_spec(32), RevColConfig(widths=(8, 16, 16), columns=columns, reversible=reversible))
    return saved_activation_bytes(net, torch.rand(4, 1, 32, 32))


def test_reversible_training_memory_does_not_grow_with_columns():
    plain_growth = _saved_bytes(6, False) - _saved_bytes(2, False)
    rev_growth = _saved_bytes(6, True) - _saved_bytes(2, True)
    assert plain_growth > 0
    assert rev_growth < 0.05 * plain_growth  # only the heads' small pooled inputs are added per column


def test_revcol_sizes_for_28_and_32_pixels():
    for h, c in ((28, 1), (32, 3)):
        net = create_model("revcol-s", _spec(h, c, 10)).eval()
        outs = net.forward_exits(torch.rand(2, c, h, h))
        assert len(outs) == 4 and all(o.shape == (2, 10) for o in outs)
    with pytest.raises(ConfigError):
        create_model("revcol-s", _spec(), widht=3)


# ------------------------------------------------------------------------------------ exiting


def _traces(net, digits):
    paths = StagedNetwork(net)
    costs = measure_costs(paths, digits.calib.x[:64], batches=(1, 64), rounds=1, repeats=2, warmup=1, min_time_s=0.0,
                          log=None)
    return paths, paths.record(digits.calib, costs=costs), paths.record(digits.test, costs=costs)


@pytest.mark.parametrize("score", ["max_softmax", "energy", "entropy"])
def test_trace_simulation_equals_runtime(revcol, digits, score):
    paths, calib, trace = _traces(revcol, digits)
    policy = EarlyExit(score=score).fit(calib)
    rt = policy.runtime(paths)
    s = make_score(score)(torch.from_numpy(trace.logits[0]))
    for t in np.quantile(s.numpy(), [0.1, 0.5, 0.9]):
        th = uniform(float(t), revcol.n_exits)
        sim = policy.simulate(trace, th)
        rt.knob = th
        res = rt.run(digits.test.x, batch_size=64)
        np.testing.assert_array_equal(res.pred.numpy(), sim.pred)
        np.testing.assert_array_equal(res.path.numpy(), sim.path)
        np.testing.assert_array_equal(res.flops, sim.flops)
    assert len(set(sim.path.tolist())) > 1  # the check covered samples leaving at different exits


def test_incremental_costs_add_up_to_the_full_exit(revcol):
    costs = StagedNetwork(revcol).count()
    inc = [c.flops for c in costs]
    assert all(f > 0 for f in inc)
    shape = revcol.input_shape
    assert sum(inc) == count_flops(revcol.exit_module(revcol.n_exits - 1, all_heads=True), shape)
    # the baseline skips the intermediate heads: every segment plus the last head
    assert count_flops(revcol, shape) == sum(c.skip_flops for c in costs[:-1]) + costs[-1].flops < sum(inc)
    assert not revcol.training  # counting must not switch the network to training mode


def test_threshold_knob_forced_exits_and_force(revcol, digits):
    paths, calib, _ = _traces(revcol, digits)
    policy = EarlyExit().fit(calib)
    rt = policy.runtime(paths)
    x = digits.test.x[:128]
    rt.knob = 0.99
    high = rt(x).path.float().mean()
    rt.knob = uniform(0.5, revcol.n_exits)  # e.g. battery low: accept less confident answers
    low = rt(x).path.float().mean()
    assert low < high
    for p in range(revcol.n_exits):
        rt.knob = forced_exit(p, revcol.n_exits)
        r = rt(x)
        assert (r.path == p).all() and r.path_counts[:p + 1].tolist() == [len(x)] * (p + 1)
    rt.force(revcol.n_exits - 1)  # the last exit without running the earlier heads: the plain network
    r = rt(x)
    with torch.no_grad():
        assert torch.equal(r.pred, revcol(x).argmax(1))
    assert np.allclose(r.flops, count_flops(revcol, revcol.input_shape))
    with pytest.raises(ConfigError):
        rt.knob = [0.5]
    with pytest.raises(TraceError, match="not this policy's network's exits"):
        EarlyExit().fit(calib.select(calib.paths[:2])).simulate(calib)


def test_fit_picks_threshold_within_tolerance(revcol, digits):
    _, calib, _ = _traces(revcol, digits)
    pol = EarlyExit(tolerance=0.02, confidence=0.5).fit(calib)
    o = pol.simulate(calib)
    assert o.accuracy >= calib.accuracy(revcol.n_exits - 1) - 0.02 - 1e-12
    assert o.mean_flops <= sum(c.flops for c in calib.costs)
    strict = EarlyExit(tolerance=0.02, confidence=0.99).fit(calib)
    assert strict.simulate(calib).mean_flops >= o.mean_flops  # more confidence never buys a cheaper point


@pytest.mark.parametrize("bad", [
    torch.full((2, 1, 8, 8), float("nan")), torch.rand(0, 1, 8, 8), torch.rand(2, 1, 9, 9),
    torch.randint(0, 255, (2, 1, 8, 8)), torch.rand(1, 8, 8)])
def test_runtime_refuses_bad_input(revcol, digits, bad):
    paths, calib, _ = _traces(revcol, digits)
    rt = EarlyExit().fit(calib).runtime(paths)
    with pytest.raises(InputError):
        rt(bad)


def test_baseline_is_the_last_exit(revcol, digits):
    x = digits.test.x[:50]
    with torch.no_grad():
        assert torch.equal(revcol(x), revcol.forward_exits(x)[-1])


# ------------------------------------------------------------------------------------ calibration


def test_ece_and_reliability_bins():
    conf = np.array([0.95, 0.95, 0.95, 0.95, 0.55, 0.55])
    corr = np.array([1, 1, 1, 0, 1, 0], bool)
    # bin of 0.95: accuracy 0.75 vs confidence 0.95; bin of 0.55: 0.5 vs 0.55
    assert expected_calibration_error(conf, corr, n_bins=10) == pytest.approx(4 / 6 * 0.2 + 2 / 6 * 0.05)
    r = reliability_bins(conf, corr, n_bins=10)
    assert r["count"].sum() == 6 and r["count"][9] == 4 and r["count"][5] == 2
    assert np.isnan(r["accuracy"][0])
    with pytest.raises(ValueError):
        reliability_bins(np.array([1.5]), np.array([True]))


# ------------------------------------------------------------------------------------ any backbone


@pytest.fixture(scope="module")
def small_cnn(digits):
    torch.manual_seed(0)
    m = create_model("cnn-s", digits.spec)
    train(m, digits.train, Recipe(epochs=3, batch_size=64, hflip=False, shift=1), seed=0, progress=False)
    return m.eval()


def test_exits_on_small_cnn_train_heads_only(small_cnn, digits, tmp_path):
    net = attach_exits(small_cnn, ["stages.0", "stages.1"], head="pool-mlp")
    x = digits.test.x[:64]
    with torch.no_grad():
        ref = small_cnn(x)
        assert torch.equal(net.forward_exits(x)[-1], ref)  # the last exit is the original model, bitwise
    backbone0 = params_digest(net.segments)
    final0 = params_digest(net.heads[-1])
    heads0 = [params_digest(h) for h in net.heads[:-1]]
    train_exits(net, digits.train, Recipe(epochs=2, batch_size=64, hflip=False, shift=1), heads_only=True,
                exits=[0, 1], progress=False)
    assert params_digest(net.segments) == backbone0  # weights and batch-norm statistics
    assert params_digest(net.heads[-1]) == final0
    assert all(params_digest(h) != d for h, d in zip(net.heads[:-1], heads0))
    acc = [(lo.argmax(1) == digits.test.y).float().mean().item() for lo in net.forward_exits(digits.test.x)]
    assert acc[1] > 0.5  # the trained heads classify, far above chance (0.1)
    path = save_exit_heads(net, tmp_path / "heads.pt")
    other = attach_exits(small_cnn, ["stages.0", "stages.1"], head="pool-mlp")
    load_exit_heads(other, path)
    assert [params_digest(h) for h in other.heads] == [params_digest(h) for h in net.heads]
    paths = StagedNetwork(net)
    policy = EarlyExit().fit(paths.record(digits.calib))
    sim = policy.simulate(paths.record(digits.test), uniform(0.8, 3))
    rt = policy.runtime(paths)
    rt.knob = 0.8
    res = rt.run(digits.test.x, batch_size=50)
    np.testing.assert_array_equal(res.pred.numpy(), sim.pred)


def test_exit_heads_file_errors(small_cnn, tmp_path):
    net = attach_exits(small_cnn, ["stages.0", "stages.1"])
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError):
        load_exit_heads(net, bad)
    with pytest.raises(CheckpointError):
        load_exit_heads(net, tmp_path / "missing.pt")
    path = save_exit_heads(attach_exits(small_cnn, ["stages.1"]), tmp_path / "one.pt")
    with pytest.raises(CheckpointError):
        load_exit_heads(net, path)


def test_exit_points_are_checked(small_cnn):
    with pytest.raises(ConfigError):
        attach_exits(small_cnn, ["stages.9"])
    with pytest.raises(ConfigError):
        attach_exits(small_cnn, ["stages.1", "stages.0"])
    with pytest.raises(ConfigError):
        attach_exits(small_cnn, ["stages.2"])  # the last block's exit is the model's own head
    with pytest.raises(ConfigError):
        attach_exits(small_cnn, ["stages.0"], head="no-such-head")
    with pytest.raises(ConfigError):
        attach_exits(torch.nn.Linear(3, 3), ["x"], input_shape=(1, 3, 3))


def test_exits_on_torchvision_resnet():
    spec = _spec(32, 3, 10)
    torch.manual_seed(0)
    model = create_model("tv-resnet18", spec).eval()
    net = attach_exits(model, ["layer1", "layer2", "layer3"], head="linear")
    assert net.exit_names == ["layer1", "layer2", "layer3", "final"]
    x = torch.rand(4, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(net.forward_exits(x)[-1], model(x))
    digest = params_digest(net.segments)
    data = Split(torch.rand(16, 3, 32, 32), torch.randint(0, 10, (16,)))
    train_exits(net, data, Recipe(epochs=1, batch_size=8), heads_only=True, exits=[0, 1, 2], progress=False)
    assert params_digest(net.segments) == digest


def test_fit_early_exit_caches_and_two_stage_keeps_backbone(digits, tmp_path):
    from dyninfer.train import load_checkpoint
    from dyninfer.train.exits import fit_early_exit

    recipe = Recipe(epochs=1, batch_size=128, hflip=False, shift=1)
    logs: list[str] = []
    net, meta = fit_early_exit("revcol-tiny", digits, recipe, root=tmp_path, progress=False, log=logs.append)
    again, meta2 = fit_early_exit("revcol-tiny", digits, recipe, root=tmp_path, progress=False, log=logs.append)
    assert "[cache]" in logs[-1] and meta2["exit_test_accuracy"] == meta["exit_test_accuracy"]
    (path,) = (tmp_path / "digits").glob("revcol-tiny-exits-*.pt")
    path.write_bytes(path.read_bytes()[:100])  # truncated: reported and retrained, never used
    fit_early_exit("revcol-tiny", digits, recipe, root=tmp_path, progress=False, log=logs.append)
    assert any("unreadable" in m and "retraining" in m for m in logs)
    two, tmeta = fit_early_exit("revcol-tiny", digits, recipe, training="two-stage", root=tmp_path, progress=False,
                                log=logs.append)
    (bpath,) = [q for q in (tmp_path / "digits").glob("revcol-tiny-*.pt") if "-exits-" not in q.name]
    backbone, _ = load_checkpoint(bpath)
    assert params_digest(two.segments) == params_digest(backbone.segments)  # heads-only stage left it alone
    assert params_digest(two.heads[-1]) == params_digest(backbone.heads[-1])
    with pytest.raises(ConfigError):
        fit_early_exit("revcol-tiny", digits, recipe, training="sideways", root=tmp_path)
    with pytest.raises(ConfigError):
        fit_early_exit("cnn-s", digits, recipe, root=tmp_path, progress=False, log=logs.append)


def test_paired_overhead_cancels_drift_shared_by_both_calls():
    from dyninfer.runtime.cost import interleaved_latency, paired_overhead

    rng = np.random.default_rng(0)
    drift = np.linspace(1.0, 3.0, 400) * rng.uniform(0.8, 1.2, 400)  # the machine slows down threefold
    lat = {"base": {"times_ms": (2.0 * drift).tolist()},
           "heads": {"times_ms": (2.0 * drift * 1.03 * rng.uniform(0.995, 1.005, 400)).tolist()}}
    o = paired_overhead(lat, "heads", "base")
    assert o["pct"] == pytest.approx(3.0, abs=0.2) and o["ci_low_pct"] < 3.0 < o["ci_high_pct"]
    assert o["ci_high_pct"] - o["ci_low_pct"] < 0.5 and o["rounds"] == 400
    lat_calls = interleaved_latency({"a": lambda: None, "b": lambda: None}, rounds=7, warmup=0)
    assert len(lat_calls["a"]["times_ms"]) == 7 and all(t >= 0 for t in lat_calls["b"]["times_ms"])


def test_first_and_last_exits_are_a_cascade_inside_one_network(digits_staged):
    """EBJR inside one network (supplementary 5.3): the skipped exits' heads do not run, their columns do."""
    calib, test, paths = digits_staged.calib, digits_staged.test, digits_staged.paths
    names = calib.paths
    m = EarlyExit(score="energy", exits=[names[0], names[-1]], tolerance=0.05).fit(calib)
    own = m.own_trace(test)
    assert own.paths == [names[0], names[-1]]
    full = test.costs
    assert own.costs[1].flops == sum(c.skip_flops for c in full[1:-1]) + full[-1].flops  # columns, not heads
    assert own.costs[0].flops + own.costs[1].flops < sum(c.flops for c in full)
    rt = m.runtime(paths)
    x = test.inputs()
    for knob in (m.knob_, (float(np.median(make_score("energy")(test.logits_of(0)).numpy())),)):
        rt.knob = knob
        out, res = m.simulate(test, knob), rt(x)
        assert np.array_equal(res.pred.numpy(), out.pred) and np.array_equal(res.path.numpy(), out.path)
        assert np.allclose(np.asarray(res.flops), out.flops)
    assert set(np.unique(m.simulate(test, (float("-inf"),)).path)) == {0}


@pytest.mark.parametrize("exits, message", [(["column9", "column2"], "unknown exits"),
                                            (["column1", "column0", "column2"], "network's order"),
                                            (["column0", "column1"], "end at its last")])
def test_answering_exits_are_checked(digits_staged, exits, message):
    with pytest.raises(ConfigError, match=message):
        EarlyExit(exits=exits).fit(digits_staged.calib)
    with pytest.raises(ConfigError, match="2 or more distinct"):
        EarlyExit(exits=["column0"])
