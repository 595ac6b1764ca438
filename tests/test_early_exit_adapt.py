"""Test-time specialisation: only early heads move, snapshots round-trip, exits move earlier on the subset."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dyninfer.data import load_dataset
from dyninfer.errors import ConfigError, InputError
from dyninfer.methods.early_exit.adapt import SpecializeConfig, TestTimeSpecializer
from dyninfer.methods.early_exit.evaluation import cheapest_point, params_digest, subset_curves
from dyninfer.methods.early_exit.method import EarlyExit
from dyninfer.methods.early_exit.select import SelectConfig, record_exit_trace
from dyninfer.paths import StagedNetwork
from dyninfer.train.exits import train_exits
from dyninfer.methods.early_exit.streams import class_mask, subset_classes, subset_stream
from dyninfer.models import create_model
from dyninfer.scores import make_score
from dyninfer.train import Recipe


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", calib_size=400)


@pytest.fixture(scope="module")
def net(digits):
    torch.manual_seed(0)
    net = create_model("revcol-tiny", digits.spec)
    train_exits(net, digits.train, Recipe(epochs=4, batch_size=64, hflip=False, shift=1), seed=0, progress=False)
    return net.eval()


def test_only_early_heads_change_and_snapshot_restores(net, digits):
    P = net.n_exits
    backbone0 = params_digest(net.segments)
    final0 = params_digest(net.heads[P - 1])
    heads0 = [params_digest(h) for h in net.heads]
    spec = TestTimeSpecializer(net, SpecializeConfig(lr=0.05, momentum=0.9, threshold=0.95))
    snap = spec.snapshot()
    stream = subset_stream(digits.calib, subset_classes(digits.spec, "straight"), per_class=20, seed=0)
    spec.adapt(stream.x, progress=False)
    assert params_digest(net.segments) == backbone0  # backbone weights and batch-norm statistics
    assert params_digest(net.heads[P - 1]) == final0  # the last head never learns
    assert any(params_digest(net.heads[p]) != heads0[p] for p in range(P - 1))
    log = spec.log_
    assert log.exit.shape == (len(stream),) and log.update_s.size == int((log.exit > 0).sum())
    assert (log.update_s > 0).all() and log.update_heads.max() <= P - 1
    assert spec.update_flops() > 0
    adapted = spec.snapshot()
    spec.restore(snap)
    assert [params_digest(h) for h in net.heads] == heads0
    assert spec.n_seen_ == 0 and spec.optimizer_.state_dict()["state"] == {}
    spec.restore(adapted)  # and forward again: the adapted heads and the momentum buffers come back
    assert spec.n_seen_ == len(stream) and spec.optimizer_.state_dict()["state"]
    spec.restore(snap)


def test_answers_during_adaptation_match_the_runtime(net, digits):
    spec = TestTimeSpecializer(net, SpecializeConfig(lr=1e-4, threshold=0.9))
    snap = spec.snapshot()
    x = digits.test.x[:40]
    # with updates this small the heads barely move; the first answer is made before any update
    spec.adapt(x[:1], progress=False)
    paths = StagedNetwork(net)
    rt = EarlyExit().fit(paths.record(digits.calib)).runtime(paths)
    rt.knob = 0.9
    res = rt(x[:1])
    spec.restore(snap)
    assert spec.log_.exit[0] == int(res.path[0]) and spec.log_.pred[0] == int(res.pred[0])


def test_specialisation_makes_subset_exit_earlier(net, digits):
    P = net.n_exits
    classes = subset_classes(digits.spec, "round")
    costs = StagedNetwork(net).count()
    before = record_exit_trace(net, digits.test, costs)
    mask = class_mask(before.labels, classes)
    exit_ms = [1.0 * (p + 1) for p in range(P)]  # cost proportional to depth
    score = make_score("max_softmax")
    ths = [float(t) for t in np.round(np.arange(0.5, 0.951, 0.05), 2)]
    cb = subset_curves(before, score, mask, exit_ms, ths)
    spec = TestTimeSpecializer(net, SpecializeConfig(lr=0.02, threshold=0.95))
    snap = spec.snapshot()
    spec.adapt(subset_stream(digits.calib, classes, per_class=40, seed=1).x, progress=False)
    after = record_exit_trace(net, digits.test, costs)
    spec.restore(snap)
    ca = subset_curves(after, score, mask, exit_ms, ths)
    assert ca["subset"]["latency_ms"][-1] < cb["subset"]["latency_ms"][-1]  # subset leaves earlier
    lat_after, _ = cheapest_point(ca["subset"], cb["subset"]["accuracy"][-1] - 0.02)
    assert lat_after is not None and lat_after < cb["subset"]["latency_ms"][-1]
    np.testing.assert_array_equal(after.logits[P - 1], before.logits[P - 1])  # the last exit is untouched


def test_bad_settings_and_inputs(net, digits):
    with pytest.raises(ConfigError):
        SpecializeConfig(lr=0)
    with pytest.raises(ConfigError):
        SpecializeConfig(batch_size=0)
    with pytest.raises(ConfigError):
        SpecializeConfig(score="no-such-score")
    spec = TestTimeSpecializer(net)
    with pytest.raises(InputError):
        spec.adapt(torch.full((2, 1, 8, 8), float("nan")), progress=False)
    with pytest.raises(InputError):
        spec.adapt(torch.rand(0, 1, 8, 8), progress=False)
    with pytest.raises(ConfigError):
        spec.restore({"heads": {}})
    with pytest.raises(ConfigError):
        subset_classes(digits.spec, "footwear")
    with pytest.raises(ConfigError):
        subset_classes(digits.spec, ["0", "eleven"])


def test_batched_updates(net, digits):
    spec = TestTimeSpecializer(net, SpecializeConfig(lr=0.01, batch_size=8, threshold=0.99))
    snap = spec.snapshot()
    spec.adapt(digits.calib.x[:40], progress=False)
    n_pending = int((spec.log_.exit > 0).sum())
    assert spec.log_.update_s.size == -(-n_pending // 8)  # ceil: one update per 8 images that went deeper
    spec.restore(snap)


def test_input_norm_divides_each_heads_lr_by_its_mean_squared_input(net, digits):
    P = net.n_exits
    x = digits.calib.x[:40]
    spec = TestTimeSpecializer(net, SpecializeConfig(lr=0.1, lr_scale="input-norm", threshold=1.01, passes=2))
    snap = spec.snapshot()
    spec.adapt(x, progress=False)
    # threshold above 1: every image reaches the last exit, so every early head saw each image once per pass
    assert spec.input_n_.tolist() == [2 * len(x)] * (P - 1)
    with torch.no_grad():
        carry, mean_sq = x, []
        for p in range(P - 1):
            carry = net.segments[p](carry)
            pooled = carry[-1].mean((2, 3)) if isinstance(carry, tuple) else carry.mean((2, 3))
            mean_sq.append(float((pooled ** 2).sum(1).mean()))
    for group, m in zip(spec.optimizer_.param_groups, mean_sq):
        assert group["lr"] == pytest.approx(0.1 / m, rel=1e-4)
    assert len(set(round(g["lr"], 12) for g in spec.optimizer_.param_groups)) == P - 1  # one step size per head
    restored = spec.snapshot()["input_n"]
    spec.restore(snap)
    assert spec.input_n_.sum() == 0 and restored.sum() == 2 * len(x) * (P - 1)


def test_adaptation_specs_parse_and_bad_ones_say_the_form():
    from dyninfer.methods.early_exit.adapt import parse_adaptation

    c = parse_adaptation("0.3:input-norm:3", threshold=0.8)
    assert (c.lr, c.lr_scale, c.passes, c.threshold) == (0.3, "input-norm", 3, 0.8)
    assert parse_adaptation("1e-4").label == "lr 0.0001"
    for bad in ("fast", "0.1:sideways", "0.1:none:0", "1:2:3:4"):
        with pytest.raises(ConfigError, match="LR|lr_scale|passes"):
            parse_adaptation(bad)


def test_input_norm_needs_a_linear_classifier_in_each_head(net):
    import copy

    other = copy.deepcopy(net)
    other.heads[0] = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Identity())
    with pytest.raises(ConfigError, match="nn.Linear"):
        TestTimeSpecializer(other, SpecializeConfig(lr_scale="input-norm"))


def test_hull_latency_to_reach_interpolates_and_ignores_dominated_points():
    from dyninfer.methods.early_exit.evaluation import hull_latency_to_reach

    curve = {"latency_ms": [1.0, 2.0, 2.5, 3.0], "accuracy": [0.80, 0.90, 0.85, 0.92]}
    assert hull_latency_to_reach(curve, 0.85) == pytest.approx(1.5)  # halfway between 1 ms and 2 ms
    assert hull_latency_to_reach(curve, 0.80) == pytest.approx(1.0)
    assert hull_latency_to_reach(curve, 0.92) == pytest.approx(3.0)
    assert hull_latency_to_reach(curve, 0.93) is None


@pytest.mark.parametrize("lr_scale", ["none", "input-norm"])
def test_prefetched_features_adapt_like_one_image_at_a_time(net, digits, lr_scale):
    cfg = SpecializeConfig(lr=0.05 if lr_scale == "none" else 0.3, lr_scale=lr_scale, threshold=0.95, passes=2)
    x = subset_stream(digits.calib, subset_classes(digits.spec, "round"), per_class=15, seed=2).x
    spec = TestTimeSpecializer(net, cfg)
    snap = spec.snapshot()
    spec.adapt(x, progress=False)
    one = spec.snapshot()
    log1 = spec.log_
    spec.restore(snap)
    spec.adapt(x, progress=False, prefetch=16)  # chunks straddle the pass boundary (2 x 60 images)
    many = spec.snapshot()
    spec.restore(snap)
    assert spec.log_.exit.tolist() == log1.exit.tolist() and spec.log_.pred.tolist() == log1.pred.tolist()
    assert spec.log_.infer_s.shape == log1.infer_s.shape and (spec.log_.infer_s > 0).all()
    for p, sd in one["heads"].items():
        for k, v in sd.items():
            torch.testing.assert_close(many["heads"][p][k], v, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(many["input_sq"], one["input_sq"], rtol=1e-5)
    with pytest.raises(ConfigError, match="prefetch"):
        spec.adapt(x, progress=False, prefetch=0)


def test_fold_indices_are_disjoint_stratified_and_cover_the_subset(digits):
    from dyninfer.methods.early_exit.select import fold_indices

    y = digits.calib.y.numpy()
    classes = subset_classes(digits.spec, "round")
    parts = fold_indices(y, classes, 4, seed=3)
    joined = np.concatenate(parts)
    assert sorted(joined.tolist()) == np.flatnonzero(np.isin(y, classes)).tolist()  # each image exactly once
    for c in classes:  # every fold holds about a quarter of each class
        counts = [int((y[p] == c).sum()) for p in parts]
        assert max(counts) - min(counts) <= 1
    with pytest.raises(ConfigError, match="folds"):
        fold_indices(y, classes, 1)
    with pytest.raises(ConfigError, match="fewer than"):
        fold_indices(y, classes, 10_000)


def test_cross_validated_selection_judges_held_out_images_and_restores_heads(net, digits):
    from dyninfer.methods.early_exit.select import select_adaptation

    classes = subset_classes(digits.spec, "round")
    costs = StagedNetwork(net).count()
    exit_ms = [1.0 * (p + 1) for p in range(net.n_exits)]
    heads0 = [params_digest(h) for h in net.heads]
    kw = dict(costs=costs, exit_ms=exit_ms, score=make_score("max_softmax"), threshold=0.95, log=lambda s: None)
    res = select_adaptation(net, digits.calib, classes, ["1e-4", "0.3:input-norm:2"], config=SelectConfig(folds=4), **kw)
    assert [params_digest(h) for h in net.heads] == heads0
    n_sub = int(np.isin(digits.calib.y.numpy(), classes).sum())
    assert res["held_out_images"] == n_sub
    assert sum(res["stream_images_per_fold"]) == 3 * n_sub  # each image streams in the 3 folds that do not hold it out
    paper, big = res["rows"]
    assert abs(paper["latency_reduction"]) < 0.05  # lr 1e-4 barely moves the heads in a stream this short
    assert big["latency_reduction"] > paper["latency_reduction"]  # a larger step makes the held-out subset leave sooner
    eligible = [r for r in res["rows"] if r["eligible"]]
    assert res["chosen"] == max(eligible, key=lambda r: r["latency_reduction"])["label"]
    none = select_adaptation(net, digits.calib, classes, ["1e-4"], config=SelectConfig(folds=4, max_other_drop=-100.0),
                             **kw)
    assert none["chosen"] is None and not none["rows"][0]["eligible"]  # nothing can gain 100 points
    with pytest.raises(ConfigError, match="candidates"):
        select_adaptation(net, digits.calib, classes, [], **kw)
