"""The cascade policy on hand-made traces: simulation, sweeps, frontier, oracle, fitting."""

import numpy as np
import pytest

from dyninfer import ConfigError, TraceError
from dyninfer.evaluate import pareto_front, upper_hull
from dyninfer.methods.cascade import Cascade, oracle, paired_loss_bound, simulate, sweep
from dyninfer.runtime.cost import LatencyStats, PathCost
from dyninfer.scores import make_score
from dyninfer.trace import Trace


def make_trace(n=2000, k=5, flops=(1e6, 1e7, 1e8), seed=0, skill=(1.0, 2.0, 3.0)):
    """P paths whose logits favour the label more the larger ``skill`` is."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, k, n)
    logits = []
    for s in skill:
        z = rng.normal(size=(n, k)).astype(np.float32)
        z[np.arange(n), labels] += s * rng.uniform(0, 2, n).astype(np.float32)
        logits.append(z)
    costs = [PathCost(f"p{i}", int(f), 0, 0, {1: LatencyStats(1, f / 1e9, 0, 0, 0, 0, 1)}) for i, f in enumerate(flops)]
    return Trace([f"p{i}" for i in range(len(skill))], np.stack(logits), labels, costs, {"split": "synthetic"})


def test_simulate_by_hand():
    logits = np.array([
        [[3.0, 0.0], [0.0, 0.1], [0.0, 0.2]],   # path 0: confident on sample 0 only
        [[0.0, 1.0], [5.0, 0.0], [0.0, 0.3]],   # path 1
    ], dtype=np.float32)
    tr = Trace(["a", "b"], logits, np.array([0, 0, 1]),
               [PathCost("a", 10, 0, 0), PathCost("b", 100, 0, 0)])
    out = simulate(tr, make_score("max_softmax"), [0.9])
    assert out.path.tolist() == [0, 1, 1]
    assert out.pred.tolist() == [0, 0, 1]
    assert out.flops.tolist() == [10, 110, 110]
    assert out.accuracy == 1.0
    with pytest.raises(ConfigError, match="need 1 thresholds"):
        simulate(tr, make_score("max_softmax"), [0.9, 0.5])


def test_two_stage_sweep_equals_brute_force_simulation():
    tr = make_trace(n=500).select(["p0", "p2"])
    sc = make_score("energy")
    cv = sweep(tr, sc)
    assert len(cv) == len(np.unique(sc(tr.logits_of(0)).numpy())) + 1
    for i in np.random.default_rng(0).choice(len(cv), 40, replace=False):
        out = simulate(tr, sc, cv.settings[i])
        assert out.accuracy == pytest.approx(cv.accuracy[i])
        assert out.mean_flops == pytest.approx(cv.cost[i])
    # the ends: keep everything at the student / forward everything to the teacher
    assert cv.accuracy[0] == pytest.approx(tr.accuracy(0)) and cv.cost[0] == pytest.approx(1e6)
    assert cv.accuracy[-1] == pytest.approx(tr.accuracy(1)) and cv.cost[-1] == pytest.approx(1e6 + 1e8)


def test_three_stage_sweep_equals_simulation():
    tr = make_trace(n=400)
    sc = make_score("margin")
    cv = sweep(tr, sc, grid=8)
    for i in np.random.default_rng(1).choice(len(cv), 25, replace=False):
        out = simulate(tr, sc, cv.settings[i])
        assert out.accuracy == pytest.approx(cv.accuracy[i])
        assert out.mean_flops == pytest.approx(cv.cost[i])
        assert np.allclose(cv.extra["reach"][i], [(out.path >= p).mean() for p in range(3)])


def test_pareto_front_and_hull():
    cost = np.array([1, 2, 3, 4, 5.0])
    acc = np.array([0.5, 0.7, 0.6, 0.8, 0.8])
    assert pareto_front(cost, acc).tolist() == [0, 1, 3]
    hx, hy = upper_hull(np.array([1, 2, 3.0]), np.array([0.5, 0.6, 0.9]))
    assert hx.tolist() == [1, 3]  # (2, 0.6) lies below the chord from (1, .5) to (3, .9)


def test_oracle_is_cheapest_correct_stage_and_bounds_every_router():
    tr = make_trace(n=3000)
    o = oracle(tr)
    corr = tr.correct
    assert o.accuracy == pytest.approx(corr.any(0).mean())
    first = np.where(corr.any(0), corr.argmax(0), 0)
    assert np.array_equal(o.path, first)
    for name in ("energy", "max_softmax", "entropy"):
        cv = sweep(tr, make_score(name), grid=10)
        # no router reaches the oracle's accuracy for less
        assert not np.any((cv.cost < o.mean_flops) & (cv.accuracy >= o.accuracy))


def test_fit_picks_the_cheapest_calibration_point_at_the_target():
    cal, test = make_trace(seed=1).select(["p0", "p2"]), make_trace(seed=2).select(["p0", "p2"])
    c = Cascade(["p0", "p2"], score="energy", tolerance=0.002, confidence=0.5).fit(cal)
    cv = sweep(cal, make_score("energy"))
    ok = cv.accuracy >= cal.accuracy(1) - 0.002 - 1e-12
    assert c.calib_point_["flops"] == pytest.approx(cv.cost[ok].min())
    assert c.target_ == pytest.approx(cal.accuracy(1) - 0.002)
    out = c.simulate(test)
    assert 0 < out.path_share(2)[1] < 1
    # fitting the temperature can only help on the calibration split (T=1 is in the grid)
    ct = Cascade(["p0", "p2"], score="energy", fit_temperature=True, temperatures=(0.5, 1.0, 2.0), tolerance=0.002,
                 confidence=0.5).fit(cal)
    assert ct.calib_point_["flops"] <= c.calib_point_["flops"] + 1e-6
    # a FLOPs budget instead of an accuracy target
    cb = Cascade(["p0", "p2"], budget_flops=2e7).fit(cal)
    assert cb.calib_point_["flops"] <= 2e7


def test_paired_loss_bound_matches_brute_force_and_confidence_is_conservative():
    for chain in (["p0", "p2"], ["p0", "p1", "p2"]):
        cal = make_trace(seed=3).select(chain)
        sc = make_score("margin")
        cv = sweep(cal, sc, grid=8)
        ub = paired_loss_bound(cv, cal.n, 0.95)
        for i in np.random.default_rng(0).choice(len(cv), 15, replace=False):
            d = cal.correct[-1].astype(float) - simulate(cal, sc, cv.settings[i]).correct.astype(float)
            assert cv.extra["ref_only"][i] - cv.extra["cascade_only"][i] == pytest.approx(d.mean())
            assert ub[i] == pytest.approx(d.mean() + 1.6448536 * d.std(ddof=1) / np.sqrt(cal.n), abs=1e-9)
        plain = Cascade(chain, score="margin", grid=8, confidence=0.5).fit(cal)
        safe = Cascade(chain, score="margin", grid=8, confidence=0.95).fit(cal)
        assert safe.calib_point_["flops"] >= plain.calib_point_["flops"]
        assert safe.calib_point_["meets_target"] and safe.calib_point_["loss_bound"] <= 0.001 + 1e-12


def test_cascade_settings_are_checked():
    with pytest.raises(ConfigError, match="at least 2 stages"):
        Cascade(["a"])
    with pytest.raises(ConfigError, match="energy score only"):
        Cascade(["a", "b"], score="margin", fit_temperature=True)
    with pytest.raises(ConfigError, match="confidence must be"):
        Cascade(["a", "b"], confidence=1.0)
    with pytest.raises(ConfigError, match="unknown score"):
        Cascade(["a", "b"], score="nope")
    with pytest.raises(TraceError, match="no paths"):
        Cascade(["a", "b"]).fit(make_trace())
    with pytest.raises(ConfigError, match="fit"):
        Cascade(["p0", "p1"]).simulate(make_trace())


def test_trace_round_trip_and_corruption(tmp_path):
    tr = make_trace(n=50)
    tr.save(tmp_path / "t")
    back = Trace.load(tmp_path / "t")
    assert back.paths == tr.paths and np.array_equal(back.logits, tr.logits) and back.costs == tr.costs
    (tmp_path / "t" / "logits.npz").write_bytes(b"broken")
    with pytest.raises(TraceError, match="corrupt"):
        Trace.load(tmp_path / "t")
    with pytest.raises(TraceError, match="no trace"):
        Trace.load(tmp_path / "none")
    with pytest.raises(TraceError, match="do not fit"):
        Trace(["a"], np.zeros((2, 3, 4), np.float32), np.zeros(3, int), [PathCost("a", 1, 1, 1)])
