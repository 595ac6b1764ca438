"""Policies on hand-made traces: simulation, sweeps, frontier, oracle, the shared guarantee, cascade fitting."""

import numpy as np
import pytest

from dyninfer import ConfigError, TraceError
from dyninfer.evaluate import pareto_front, upper_hull
from dyninfer.evaluate.guarantee import choose_operating_point, clt_pvalues, wsr_rejects
from dyninfer.evaluate.simulate import oracle, simulate_forced, simulate_sequential as simulate, simulate_upfront
from dyninfer.evaluate.simulate import sweep_sequential as sweep
from dyninfer.methods.cascade import Cascade
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
    # the ends: keep everything at the student / forward everything to the teacher (the student still runs)
    assert cv.accuracy[0] == pytest.approx(tr.accuracy(0)) and cv.cost[0] == pytest.approx(1e6)
    assert cv.accuracy[-1] == pytest.approx(tr.accuracy(1)) and cv.cost[-1] == pytest.approx(1e6 + 1e8)
    assert cv.extra["ref_only"][-1] == cv.extra["method_only"][-1] == 0


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


def test_forced_and_upfront_simulation_by_hand():
    tr = make_trace(n=100)
    tr.costs[0].skip_flops = 7  # an exit's segment: what a runtime forced past it pays
    f = simulate_forced(tr, 2, sequential=True)
    assert (f.path == 2).all() and np.array_equal(f.pred, tr.preds[2]) and np.allclose(f.flops, 7 + 0 + 1e8)
    assert f.ran[0].tolist() == pytest.approx([7 / 1e6, 0.0, 1.0])
    u = simulate_upfront(tr, np.arange(100) % 3, overhead_flops=5)
    assert np.array_equal(u.pred, tr.preds[np.arange(100) % 3, np.arange(100)])
    assert u.flops[:3].tolist() == [1e6 + 5, 1e7 + 5, 1e8 + 5]
    o = oracle(tr, sequential=False)  # up-front: the cheapest correct path alone
    assert np.array_equal(o.correct, tr.correct.any(0))
    assert np.all(o.flops <= np.array([1e6, 1e7, 1e8])[np.where(tr.correct.any(0), tr.correct.argmax(0), 0)])


def test_clt_pvalues_match_the_paired_normal_test():
    cal = make_trace(seed=3).select(["p0", "p2"])
    sc = make_score("margin")
    cv = sweep(cal, sc)
    p = clt_pvalues(cv.extra["ref_only"], cv.extra["method_only"], cal.n, 0.002)
    from scipy.stats import norm

    for i in np.random.default_rng(0).choice(len(cv), 15, replace=False):
        d = cal.correct[-1].astype(float) - simulate(cal, sc, cv.settings[i]).correct.astype(float)
        assert cv.extra["ref_only"][i] - cv.extra["method_only"][i] == pytest.approx(d.mean())
        if d.std() > 0:
            assert p[i] == pytest.approx(norm.sf((0.002 - d.mean()) / (d.std(ddof=1) / np.sqrt(cal.n))), rel=1e-6)


def test_learn_then_test_guarantee_holds_on_fresh_data():
    """Over many calibration draws the chosen point loses more than the tolerance on fresh data (its true
    loss, estimated on a large sample) in about 1 - confidence of the draws or fewer; fixed-sequence testing
    over the whole grid is what makes that hold although the point is picked from hundreds of candidates."""
    tol, conf = 0.01, 0.9
    big = make_trace(n=60000, seed=99).select(["p0", "p2"])  # the population
    sc = make_score("max_softmax")
    s_big = sc(big.logits_of(0)).numpy()
    ref = big.correct[1]
    fails = {"clt": 0, "wsr": 0}
    cost = {"clt": [], "wsr": []}
    runs = 40
    for r in range(runs):
        cal = make_trace(n=1500, seed=1000 + r).select(["p0", "p2"])
        cv = sweep(cal, sc)
        for bound in fails:
            op = choose_operating_point(cv, cal.n, tolerance=tol, confidence=conf, bound=bound)
            t = cv.settings[op.index][0]
            keep = s_big >= t
            true_loss = (ref & ~(np.where(keep, big.correct[0], ref))).mean() - \
                (np.where(keep, big.correct[0], ref) & ~ref).mean()
            fails[bound] += true_loss > tol
            cost[bound].append(op.calib_flops)
    assert fails["clt"] <= 0.1 * runs + 4 and fails["wsr"] <= 0.1 * runs + 4, fails  # binomial slack at 40 draws
    assert np.mean(cost["wsr"]) >= np.mean(cost["clt"])  # the finite-sample bound is the more careful one


def test_guarantee_settings_and_an_uncertifiable_curve():
    cal = make_trace(seed=4).select(["p0", "p2"])
    cv = sweep(cal, make_score("energy"))
    op = choose_operating_point(cv, cal.n, tolerance=0.0, confidence=0.95)
    assert op.certified and op.calib_loss == 0.0  # forwarding everything loses nothing: always certifiable
    from dyninfer.evaluate import Curve

    lossy = Curve("lossy", np.array([[1.0], [0.0]]), np.array([0.8, 0.7]), np.array([10.0, 5.0]),
                  {"ref_only": np.array([0.05, 0.15]), "method_only": np.array([0.0, 0.0])})
    bad = choose_operating_point(lossy, 1000, tolerance=0.01, confidence=0.95)
    assert not bad.certified and bad.index == 0 and bad.tested == 1  # the sequence stops at its first point
    assert "No knob value could be certified" in bad.statement()
    with pytest.raises(ConfigError, match="tolerance"):
        choose_operating_point(cv, cal.n, tolerance=-0.1, confidence=0.95)
    with pytest.raises(ConfigError, match="confidence"):
        choose_operating_point(cv, cal.n, tolerance=0.01, confidence=1.0)
    with pytest.raises(ConfigError, match="bound"):
        choose_operating_point(cv, cal.n, tolerance=0.01, confidence=0.9, bound="hoeffding")
    assert wsr_rejects(0, 0, 1000, 0.01, 0.05)[0]  # no disagreement at all: a 1-point loss is ruled out
    assert not wsr_rejects(30, 0, 1000, 0.01, 0.05)[0]  # 3% lost on calibration: not certifiable at 1%


def test_cascade_fit_picks_the_cheapest_certified_configuration():
    cal, test = make_trace(seed=1), make_trace(seed=2)
    c = Cascade(scores=("energy",), tolerance=0.002, confidence=0.5).fit(cal)
    assert c.stages_[-1] == "p2" and len(c.configurations_) == 3  # every chain ending at the reference
    best = min((r for r in c.configurations_ if r["certified"]), key=lambda r: r["calib_flops"])
    assert c.stages_ == best["chain"] and c.operating_point_.calib_flops == pytest.approx(best["calib_flops"])
    out = c.simulate(test)
    assert 0 < out.path_share(len(c.stages_))[-1] < 1
    # more routers to choose among, and more confidence: each configuration is tested at delta / K
    many = Cascade(scores=("energy", "margin", "max_softmax"), tolerance=0.002, confidence=0.95).fit(cal)
    assert many.operating_point_.configurations == 9
    safe = Cascade(stages=["p0", "p2"], scores=("margin",), tolerance=0.002, confidence=0.99).fit(cal)
    loose = Cascade(stages=["p0", "p2"], scores=("margin",), tolerance=0.002, confidence=0.6).fit(cal)
    assert safe.operating_point_.calib_flops >= loose.operating_point_.calib_flops
    # fitting the temperature: each temperature counts as a configuration
    ct = Cascade(stages=["p0", "p2"], scores=("energy+T",), temperatures=(0.5, 1.0, 2.0), tolerance=0.002,
                 confidence=0.5).fit(cal)
    assert ct.operating_point_.configurations == 3 and ct.score_.params["temperature"] in (0.5, 1.0, 2.0)
    # a budget through the calibration curve
    k = c.knob_for(budget_flops=2e7)
    assert c.simulate(cal, k).mean_flops <= 2e7 * (1 + 1e-9)
    with pytest.raises(ConfigError, match="no operating point within"):
        c.knob_for(budget_flops=1.0)


def test_three_stage_cascade_orders_on_one_part_and_tests_on_the_rest():
    cal = make_trace(n=3000, seed=3)
    c = Cascade(stages=["p0", "p1", "p2"], scores=("margin",), tolerance=0.01, confidence=0.9,
                order_share=0.3, grid=12).fit(cal)
    row = c.configurations_[0]
    # the tested curve is the frontier of the ordering part, evaluated on the other 70% of the rows
    held = cal.subset(np.sort(np.random.default_rng(0).permutation(cal.n)[900:]))
    assert c.calib_curve_.extra["ref_only"].shape == c.calib_curve_.accuracy.shape
    costs = c.calib_curve_.cost
    assert np.all(np.diff(costs) <= 1e-6)  # most expensive first: the fixed sequence
    assert row["certified"] and c.operating_point_.calib_accuracy == pytest.approx(c.simulate(held, c.knob_).accuracy)
    assert c.operating_point_.candidates == len(c.calib_curve_) and c.calib_curve_.cost[0] == pytest.approx(
        c.simulate(held, c.calib_curve_.settings[0]).mean_flops)
    with pytest.raises(ConfigError, match="order_share"):
        Cascade(order_share=1.0)


@pytest.mark.parametrize("kwargs, message", [
    ({"stages": ["a"]}, "2 or more distinct"),
    ({"stages": "ab"}, "2 or more distinct"),
    ({"scores": ("nope",)}, "routers from"),
    ({"scores": "energy"}, "list of routers"),
    ({"confidence": 1.0}, "confidence must be"),
    ({"confidence": "high"}, "confidence must be"),
    ({"tolerance": -0.01}, "tolerance must be"),
    ({"tolerance": 1.5}, "tolerance must be"),
    ({"bound": "exact"}, "unknown bound"),
    ({"grid": 1}, "grid must be"),
    ({"scores": ("energy+T",), "temperatures": (0.0,)}, "temperatures must be"),
])
def test_cascade_settings_are_checked(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        Cascade(**kwargs)


def test_cascade_errors_on_traces():
    with pytest.raises(TraceError, match="no paths"):
        Cascade(stages=["a", "b"]).fit(make_trace())
    from dyninfer import NotFittedError

    with pytest.raises(NotFittedError, match="fit"):
        Cascade().simulate(make_trace())


def test_trace_round_trip_and_corruption(tmp_path):
    tr = make_trace(n=50)
    tr.save(tmp_path / "t")
    back = Trace.load(tmp_path / "t")
    assert back.paths == tr.paths and np.array_equal(back.logits, tr.logits) and back.costs == tr.costs
    (tmp_path / "t" / "logits.npz").write_bytes(b"broken")
    with pytest.raises(TraceError, match="corrupt"):
        Trace.load(tmp_path / "t")
    tr.save(tmp_path / "t")
    info = (tmp_path / "t" / "trace.json").read_text()
    np.savez(tmp_path / "t" / "logits.npz", logits=tr.logits + 1, labels=tr.labels)  # other logits, same file name
    with pytest.raises(TraceError, match="checksum"):
        Trace.load(tmp_path / "t")
    assert "sha256" in info
    with pytest.raises(TraceError, match="no trace"):
        Trace.load(tmp_path / "none")
    with pytest.raises(TraceError, match="do not fit"):
        Trace(["a"], np.zeros((2, 3, 4), np.float32), np.zeros(3, int), [PathCost("a", 1, 1, 1)])


def test_sweep_cuts_agree_with_simulation_on_neighbouring_float32_scores():
    """Scores one float32 step apart (max-softmax near 1.0 bunches like this): every sweep point must be what
    the simulation (and the runtime, which compares in float32) does at that threshold."""
    tr = make_trace(n=6).select(["p0", "p2"])
    base = np.float32(0.5)
    s = np.array([[base, np.nextafter(base, np.float32(1)), base, np.float32(0.75),
                   np.nextafter(np.float32(0.75), np.float32(0)), np.float32(0.9)]], np.float32)
    cv = sweep(tr, None, scores=s)
    for i in range(len(cv)):
        out = simulate(tr, make_score("max_softmax"), cv.settings[i], scores=s)
        assert out.accuracy == pytest.approx(cv.accuracy[i]) and out.mean_flops == pytest.approx(cv.cost[i]), i
        keep = s[0] >= np.float32(cv.settings[i][0])  # the runtime's comparison
        assert np.array_equal(out.path == 0, keep)


def test_knob_order_uses_knob_values_not_labels():
    from dyninfer.evaluate.guarantee import knob_order

    assert knob_order(np.array([[0.2], [0.9], [0.5]])).tolist() == [1, 2, 0]  # thresholds: larger costs more
    assert knob_order(np.array([[0.2], [0.9], [0.5]]), direction=-1).tolist() == [0, 2, 1]  # a cost bias
    grid = np.array([[a, b] for a in (0.1, 0.5, np.inf) for b in (0.2, 0.8)])
    order = knob_order(grid)
    assert order[0] == 5 and order[-1] == 0  # (inf, 0.8) first, (0.1, 0.2) last
    tr = make_trace(n=300, seed=5)
    cv = sweep(tr, make_score("margin"), grid=5)
    shuffled = Trace(tr.paths, tr.logits, np.random.default_rng(0).permutation(tr.labels), tr.costs)
    assert np.array_equal(knob_order(cv.settings), knob_order(sweep(shuffled, make_score("margin"), grid=5).settings))


def test_a_few_disagreements_cannot_certify_a_point_alone():
    # 2 ref-only disagreements in 5000 samples at a 0.1-point tolerance: the exact binomial p-value is 0.125
    p = clt_pvalues(np.array([2 / 5000]), np.array([0.0]), 5000, 0.001)
    assert p[0] > 0.05
    # even none at all certifies 0.1 points only with enough samples (exact: P(Bin(n, 0.001) = 0) = e^(-n/1000))
    assert 0.005 < clt_pvalues(np.array([0.0]), np.array([0.0]), 5000, 0.001)[0] < 0.05
    assert clt_pvalues(np.array([0.0]), np.array([0.0]), 20000, 0.001)[0] < 1e-4


def test_sweep_routed_exact_and_set_level_agree():
    """The shared two-stage sweep: per-sample quality (exact, one point per score) and a set-level metric at the
    same thresholds give the same quality and cost; scores with NaN and ambiguous inputs are refused."""
    from dyninfer.errors import ConfigError
    from dyninfer.evaluate.simulate import sweep_routed

    rng = np.random.default_rng(0)
    s, q0, q1 = rng.normal(size=200), -rng.random(200), -0.2 * rng.random(200)
    exact = sweep_routed(s, (1.0, 10.0), quality=(q0, q1))
    metric = sweep_routed(s, (1.0, 10.0), metric=lambda keep: float(np.where(keep, q0, q1).mean()), grid=30)
    s32 = s.astype(np.float32)
    for curve in (exact, metric):  # every point: the student keeps score >= t (float32), the rest pay both models
        for t, acc, cost in zip(curve.settings[:, 0], curve.accuracy, curve.cost):
            keep = s32 >= np.float32(t)
            assert acc == pytest.approx(np.where(keep, q0, q1).mean())
            assert cost == pytest.approx(1.0 + 10.0 * (~keep).mean())
    assert len(exact) == 201 and len(metric) <= 32  # one point per distinct score (plus keep-none); grid + 2
    assert exact.cost[0] == 1.0 and exact.cost[-1] == 11.0  # keep-all pays the student; keep-none both
    with pytest.raises(ConfigError, match="NaN"):
        sweep_routed(np.array([0.1, np.nan]), (1, 2), quality=(np.zeros(2), np.zeros(2)))
    with pytest.raises(ConfigError, match="exactly one"):
        sweep_routed(s, (1, 2))


def test_a_certified_cascade_that_costs_more_than_its_reference_runs_the_reference_alone():
    # the first stage is as expensive as the reference and no better: every point pays more than p1 alone
    cal, test = make_trace(flops=(9e6, 1e7), skill=(1.0, 3.0)), make_trace(flops=(9e6, 1e7), skill=(1.0, 3.0), seed=1)
    c = Cascade(scores=("max_softmax",), tolerance=0.05, confidence=0.9).fit(cal)
    op = c.operating_point_
    assert op.certified and op.not_cheaper and op.runs_reference and op.reference_flops == 1e7
    assert op.calib_flops >= 1e7 and "runs p1 alone" in op.statement()
    out = c.simulate(test)
    assert (out.path == 1).all() and out.mean_flops == 1e7 and out.accuracy == test.accuracy(1)
    # a cheap first stage pays for itself: the cascade stays
    cheap = Cascade(scores=("max_softmax",), tolerance=0.05, confidence=0.9).fit(
        make_trace(flops=(1e5, 1e7), skill=(2.5, 3.0)))
    assert cheap.operating_point_.certified and not cheap.operating_point_.runs_reference
