"""Search strategies of the big/little NAS method (paper 3.5) on a tiny co-trained digits supernet: the pair
evaluator's numbers, the latency lookup table, NSGA-II evolution (its front, its resume) and the once-for-all
accuracy predictor."""

from __future__ import annotations

import copy
import json
import math
import sys

import numpy as np
import pytest
import torch

from dyninfer import ConfigError
from dyninfer.models.bigsmall import PairConfig
from dyninfer.search import (AccuracyPredictor, LatencyTable, PairEvaluator, dominates, evolutionary_search,
                             hypervolume, one_hot, ordinal, pareto_indices, predictor_search, train_predictor)
from dyninfer.search.evolution import pair_from_params, param_name
from dyninfer.train.bigsmall import pair_metrics, recalibrate_pairs

pytestmark = pytest.mark.usefixtures("one_thread")

# the supernet: conftest's cotrained_bigsmall (trained through the width phase too, once per session)
TAU = 0.3


@pytest.fixture(scope="module")
def trained(cotrained_bigsmall):
    return copy.deepcopy(cotrained_bigsmall)  # scoring re-estimates batch norms: each module gets its own copy


def _evaluator(net, digits, **kw) -> PairEvaluator:
    return PairEvaluator(net, digits.calib.x, digits.calib.y, digits.train.x[:128], **{"threshold": TAU, **kw})


def _corners(net):
    return (PairConfig(net.max_subnet("little"), net.max_subnet("big")),
            PairConfig(net.min_subnet("little"), net.min_subnet("big")))


# ---------------------------------------------------------------------------------------- fitness

def test_the_evaluator_scores_the_router_consistently_and_caches_by_encoding(trained, digits):
    net = trained
    ev = _evaluator(net, digits)
    pair = net.sample_pair(np.random.default_rng(3))
    taus = [0.0, 0.2, 0.4, 0.6, 0.8, 1.0, 1.01]
    recs = [ev.evaluate(pair, t) for t in taus]
    assert ev.evaluated == 1  # one forward serves every threshold
    low, high = recs[0], recs[-1]
    assert low.exit_rate == 1.0 and low.accuracy == low.little_acc and low.flops == low.little_flops
    assert high.exit_rate == 0.0 and high.accuracy == high.big_acc
    assert high.flops == low.little_flops + low.big_flops  # the big subnet runs from the image after the little
    assert all(a.flops <= b.flops and a.exit_rate >= b.exit_rate for a, b in zip(recs, recs[1:]))
    assert all(r.forward_rate == pytest.approx(1 - r.exit_rate) for r in recs)
    assert low.little_flops == net.flops(pair.little) and low.big_flops == net.flops(pair.big)
    # the same figures as the training module's pair_metrics after recalibrating the pair's batch norms
    recalibrate_pairs(net, digits.train.x[:128], [pair], batch_size=512)
    ref = pair_metrics(net, net, None, digits.calib, pair)
    assert low.little_acc == pytest.approx(ref["little_acc"]) and low.big_acc == pytest.approx(ref["big_acc"])
    # cached: by pair, dict form or encoding; no second forward
    enc = net.encode(pair)
    assert ev.evaluate(enc, TAU) == ev.evaluate(pair.as_dict(), TAU) == ev.evaluate(pair)
    assert ev.evaluated == 1 and ev.cache_hits >= 3
    cost = ev.search_cost()
    assert cost["evaluated"] == 1 and cost["cpu_seconds"] > 0
    assert recs[2].as_dict()["encoding"] == enc.tolist()


def test_the_latency_table_predicts_sums_of_measured_blocks(trained, digits, tmp_path):
    net = trained
    table = LatencyTable(net, batches=(1, 8), rounds=3, warmup=1)
    for head in ("little", "big"):
        small, large = net.min_subnet(head), net.max_subnet(head)
        keys = table.keys_of(large)
        assert keys[0] == "stem" and keys[-1].startswith(f"head:{head}:")
        assert len(keys) == 2 + sum(st.depth for st in large.stages)
        for b in (1, 8):
            lo, hi = table.predict(small, b), table.predict(large, b)
            assert 0 < lo < hi
            assert hi == pytest.approx(sum(table.entries[k][b] for k in keys))
    measured = table.measured
    assert measured == len(table.entries) and table.cpu_seconds > 0
    assert set(table.entries) <= set(table.all_keys())
    table.save(tmp_path / "table.json")
    again = LatencyTable.load(tmp_path / "table.json", net)
    assert again.predict(net.max_subnet("big"), 8) == pytest.approx(table.predict(net.max_subnet("big"), 8))
    assert again.measured == 0
    with pytest.raises(ConfigError, match="batches"):
        table.predict(net.max_subnet("big"), 4)
    # the evaluator charges latency like FLOPs: little, plus the big subnet where forwarded
    ev = _evaluator(net, digits, latency_table=table)
    rec = ev.evaluate(_corners(net)[0], 0.0)
    assert rec.latency_ms == pytest.approx(table.predict(net.max_subnet("little"), 1))
    rec = ev.evaluate(_corners(net)[0], 1.01)
    assert rec.latency_ms == pytest.approx(table.predict(net.max_subnet("little"), 1)
                                           + table.predict(net.max_subnet("big"), 1))
    assert rec.latency_ms_batch == pytest.approx((table.predict(net.max_subnet("little"), 8)
                                                  + table.predict(net.max_subnet("big"), 8)) / 8)


def test_pareto_helpers():
    pts = [(0.5, 10.0), (0.6, 20.0), (0.55, 25.0), (0.4, 5.0), (0.6, 20.0), (0.7, 30.0)]
    front = pareto_indices(pts)
    assert front == [3, 0, 1, 5]
    assert dominates((0.6, 20.0), (0.55, 25.0)) and not dominates((0.6, 20.0), (0.6, 20.0))
    assert hypervolume(pts, 40.0) == pytest.approx(0.4 * 5 + 0.5 * 10 + 0.6 * 10 + 0.7 * 10)


# ---------------------------------------------------------------------------------------- evolution

def _non_dominated(front, records, objective="flops") -> bool:
    return not any(dominates((r.accuracy, r.cost(objective)), (f.accuracy, f.cost(objective)))
                   for f in front for r in records)


def test_nsga2_returns_a_non_dominated_front_no_worse_than_its_first_generation(trained, digits):
    ev = _evaluator(trained, digits)
    lines: list[str] = []
    res = evolutionary_search(ev, population=6, generations=3, seed=0, log=lines.append)
    assert len(res.records) == 18 and res.generations_done == 3
    assert sorted(set(res.generations)) == [0, 1, 2] and all(res.generations.count(g) == 6 for g in range(3))
    assert sum(line.startswith("[search] generation") for line in lines) == 3
    front = res.front
    assert front and _non_dominated(front, res.records)
    assert [f.flops for f in front] == sorted(f.flops for f in front)
    assert len({f.encoding for f in front}) == len(front)
    first = res.generation(0)
    assert max(r.accuracy for r in res.records) >= max(r.accuracy for r in first)
    assert res.hypervolume() >= res.hypervolume(first)
    assert res.cost["evaluated"] == ev.evaluated <= 18 and res.cost["trials"] == 18
    assert res.cost["cpu_seconds"] == pytest.approx(ev.cpu_seconds, rel=1e-6)


class Interrupted(Exception):
    pass


def test_an_interrupted_search_resumes_without_reevaluating_finished_trials(trained, digits, tmp_path):
    folder = tmp_path / "search"
    first = evolutionary_search(_evaluator(trained, digits), population=5, generations=1, folder=folder, seed=1)
    stored = json.loads((folder / "result.json").read_text())
    assert stored["generations_done"] == 1 and len(stored["trials"]) == 5 and stored["front"]

    class Stopping(PairEvaluator):  # a crash in the middle of the second generation
        def evaluate(self, pair, threshold=None):
            if self.evaluated + self.cache_hits >= 2:
                raise Interrupted
            return super().evaluate(pair, threshold)

    with pytest.raises(Interrupted):
        evolutionary_search(Stopping(trained, digits.calib.x, digits.calib.y, digits.train.x[:128], threshold=TAU),
                            population=5, generations=2, folder=folder, seed=1)
    assert json.loads((folder / "result.json").read_text())["generations_done"] == 1  # written per generation

    ev = _evaluator(trained, digits)
    second = evolutionary_search(ev, population=5, generations=2, folder=folder, seed=1)
    assert len(second.records) == 10 and second.generations_done == 2
    assert [r.encoding for r in second.records[:5]] == [r.encoding for r in first.records]
    assert second.records[:5] == first.records
    assert ev.evaluated <= 3  # the first generation and the two trials finished before the crash: not re-run
    assert json.loads((folder / "result.json").read_text())["generations_done"] == 2
    assert second.cost["trials"] == 10 and second.cost["evaluated"] <= 10
    # finished: a third call evaluates nothing
    ev3 = _evaluator(trained, digits)
    third = evolutionary_search(ev3, population=5, generations=2, folder=folder, seed=1)
    assert ev3.evaluated == 0 and third.records == second.records
    with pytest.raises(ConfigError, match="population"):
        evolutionary_search(_evaluator(trained, digits), population=4, generations=2, folder=folder)


def test_the_latency_objective_and_search_arguments_are_checked(trained, digits):
    ev = _evaluator(trained, digits)
    with pytest.raises(ConfigError, match="LatencyTable"):
        evolutionary_search(ev, objective="latency")
    with pytest.raises(ConfigError, match="objective must be one of"):
        evolutionary_search(ev, objective="energy")
    with pytest.raises(ConfigError, match="population"):
        evolutionary_search(ev, population=1)
    table = LatencyTable(trained, batches=(1,), rounds=2, warmup=0)
    res = evolutionary_search(_evaluator(trained, digits, latency_table=table), population=3, generations=1,
                              objective="latency")
    assert all(r.latency_ms > 0 for r in res.records) and _non_dominated(res.front, res.records, "latency")


def test_a_missing_optuna_names_the_search_extra(trained, digits, monkeypatch):
    monkeypatch.setitem(sys.modules, "optuna", None)
    with pytest.raises(ConfigError, match=r"dyninfer\[search\]"):
        evolutionary_search(_evaluator(trained, digits), population=2, generations=1)


# ---------------------------------------------------------------------------------------- predictor

def test_the_predictor_learns_measured_pairs_and_picks_a_predicted_pareto_set(trained, digits):
    ev = _evaluator(trained, digits)
    lines: list[str] = []
    res = predictor_search(ev, measure=14, candidates=300, remeasure=3, epochs=300, seed=0, log=lines.append)
    assert len(res.measured) == 16 and res.report["n_holdout"] == round(0.25 * 16)
    assert math.isfinite(res.report["rmse_points"]) and 0 <= res.report["rmse_points"] <= 100
    assert math.isfinite(res.report["train_rmse_points"])
    assert res.candidates == 300
    front = res.front
    assert front
    pts = [(c.predicted_accuracy, c.predicted_flops) for c in front]
    assert not any(dominates(a, b) for a in pts for b in pts)
    assert [c.predicted_flops for c in front] == sorted(c.predicted_flops for c in front)
    for c in front:
        assert c.little_flops == trained.flops(trained.decode(np.array(c.encoding)).little)
        p = res.predictor.predict(np.array(c.encoding), np.array([c.little_flops, c.big_flops]))[0]
        assert c.predicted_accuracy == pytest.approx(p[0], abs=1e-6)
        assert c.predicted_flops == pytest.approx(c.little_flops + (1 - p[1]) * c.big_flops, rel=1e-6)
    rm = res.remeasured
    assert rm["n"] == 3 and math.isfinite(rm["rmse_points"]) and len(rm["measured"]) == 3
    assert res.cost["evaluated"] == ev.evaluated <= 19  # no training: only measured and re-measured pairs ran
    assert any("held-out accuracy RMSE" in line for line in lines)


def test_one_hot_features_and_predictor_training_checks(trained, digits):
    space = trained.space
    enc = np.stack([space.encode(space.sample_pair(np.random.default_rng(i))) for i in range(4)])
    x = one_hot(space, enc)
    assert x.shape == (4, sum(len(space.choices(f)) for f in ("width", "depth", "kernel", "expand"))
                       * (space.little_after + space.n_stages))
    assert torch.equal(x.sum(1), torch.full((4,), float(enc.shape[1])))
    model = AccuracyPredictor(space, hidden=8, layers=1)
    assert model.predict(enc).shape == (4, 2)
    ev = _evaluator(trained, digits)
    recs = ev.evaluate_many(_corners(trained))
    with pytest.raises(ConfigError, match="at least 2 training pairs"):
        train_predictor(recs, space, holdout=0.5)


def _synthetic_records(space, n: int, seed: int):
    """Pairs whose accuracy is a smooth function of their (made-up) FLOPs, as a co-trained supernet's roughly are."""
    from dyninfer.search.fitness import PairRecord

    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        p = space.sample_pair(rng)
        fl, fb = float(rng.uniform(1e6, 2e7)), float(rng.uniform(2e7, 8e7))
        acc = 0.5 + 0.05 * np.log(fl / 1e6) + 0.02 * np.log(fb / 2e7)
        out.append(PairRecord(tuple(int(v) for v in space.encode(p)), p.as_dict(), 0.9, float(acc), float(acc),
                              float(acc), 0.6, 0.4, fl + 0.4 * fb, int(fl), int(fb)))
    return out


def test_the_predictor_reads_flops_and_averages_an_ensemble():
    from dyninfer.models.bigsmall import SearchSpace

    space = SearchSpace()
    recs = _synthetic_records(space, 96, 0)
    rng = (1e6, 8e7)
    plain, rep_plain = train_predictor(recs, space, holdout=0.25, seed=0)
    ens, rep = train_predictor(recs, space, holdout=0.25, flops_range=rng, members=3, encoding="ordinal", seed=0)
    assert len(ens.members) == 3 and rep["members"] == 3 and rep["flops_features"] and rep["encoding"] == "ordinal"
    # accuracy follows FLOPs, which the one-hot encoding of 72 random pairs does not show the MLP (it does no better
    # than the mean); the FLOPs features on the compact ordinal encoding must
    assert rep["rmse_points"] < 0.75 * rep["mean_rmse_points"]
    assert rep["rmse_points"] < 0.75 * rep_plain["rmse_points"]
    enc = np.array([r.encoding for r in recs[:4]])
    fl = np.array([[r.little_flops, r.big_flops] for r in recs[:4]])
    with torch.no_grad():
        members = torch.stack([ens(ens.features(enc, fl), member=i) for i in range(3)]).mean(0).numpy()
    assert np.allclose(ens.predict(enc, fl), members, atol=1e-6)
    with pytest.raises(ConfigError, match="counted FLOPs"):
        ens.predict(enc)
    with pytest.raises(ConfigError, match=r"positive \(n, 2\)"):
        ens.predict(enc, -fl)
    with pytest.raises(ConfigError, match="flops_range"):
        AccuracyPredictor(space, flops_range=(0, 1))
    with pytest.raises(ConfigError, match=r"unknown predictor encoding 'binary'; allowed: \['one-hot', 'ordinal'\]"):
        AccuracyPredictor(space, encoding="binary")
    x = ordinal(space, enc)
    assert x.shape == enc.shape and float(x.min()) >= 0 and float(x.max()) <= 1
    largest = space.encode(PairConfig(space.max_subnet("little"), space.max_subnet("big")))
    smallest = space.encode(PairConfig(space.min_subnet("little"), space.min_subnet("big")))
    assert torch.equal(ordinal(space, largest)[0], torch.ones(enc.shape[1]))
    assert torch.equal(ordinal(space, smallest)[0], torch.zeros(enc.shape[1]))


# ---------------------------------------------------------------------------------------- invalid input

def test_invalid_encodings_and_choices_name_the_allowed_values(trained, digits):
    net = trained
    ev = _evaluator(net, digits)
    enc = net.encode(_corners(net)[0])
    bad = enc.copy()
    bad[0] = 9
    with pytest.raises(ConfigError, match=r"width index 9 .*allowed values \(0.25, 0.5, 0.75, 1.0\)"):
        ev.evaluate(bad)
    with pytest.raises(ConfigError, match="little then big"):
        ev.evaluate(enc[:4 * net.space.little_after])
    pair = _corners(net)[1].as_dict()
    pair["big"]["stages"][1]["kernel"] = 4
    with pytest.raises(ConfigError, match=r"kernel 4 is not one of the allowed values \(3, 5, 7\)"):
        ev.evaluate(pair)
    with pytest.raises(ConfigError, match="allowed values"):
        one_hot(net.space, bad)
    params = {param_name(h, s, f): net.space.choices(f)[0] for h in ("little", "big")
              for s in range(net.space.stages_of(h)) for f in ("width", "depth", "kernel", "expand")}
    assert pair_from_params(params, net.space) == _corners(net)[1]
    params["little.s1.expand"] = 3
    with pytest.raises(ConfigError, match=r"expand 3 is not one of the allowed values \(1, 2, 4, 6\)"):
        pair_from_params(params, net.space)
    with pytest.raises(ConfigError, match="threshold"):
        _evaluator(net, digits, threshold=-0.1)
    with pytest.raises(ConfigError, match="bn_images"):
        PairEvaluator(net, digits.calib.x, digits.calib.y, None)


# ---------------------------------------------------------------------------------------- review fixes

def test_evaluating_pairs_leaves_the_callers_supernet_unchanged(trained, digits):
    net = trained
    before = {k: v.clone() for k, v in net.state_dict().items()}
    active, training = net.active, net.training
    ev = _evaluator(net, digits)
    assert ev.source is net and ev.supernet is not net
    pairs = [*_corners(net), net.sample_pair(np.random.default_rng(11))]
    recs = ev.evaluate_many(pairs)
    after = net.state_dict()
    assert set(after) == set(before)
    assert all(torch.equal(before[k], after[k]) for k in before)  # batch-norm running statistics included
    assert net.active == active and net.training == training
    # the scores are those of re-estimated norms all the same (the copy's): same figures as a fresh evaluator
    assert _evaluator(net, digits).evaluate(pairs[1]) == recs[1]
    assert any(not torch.equal(before[k], v) for k, v in ev.supernet.state_dict().items())


def test_a_latency_table_of_another_layout_is_refused(digits, tmp_path):
    from dyninfer.models import create_model

    net = create_model("bigsmall-supernet-tiny", digits.spec)
    other = create_model("bigsmall-supernet-tiny", digits.spec, strides=(1, 2, 2, 1))
    assert tuple(net.strides) != tuple(other.strides)
    table = LatencyTable(net, batches=(1,), rounds=1, warmup=0)
    table.measure(["stem"])
    path = table.save(tmp_path / "table.json")
    assert LatencyTable.load(path, net).entries == table.entries
    with pytest.raises(ConfigError, match=r"strides \[2, 2, 2, 1\].*this supernet has strides \[1, 2, 2, 1\]"):
        LatencyTable.load(path, other)
    stored = json.loads(path.read_text())
    del stored["strides"]  # a table that does not say which layout it was timed on
    (tmp_path / "old.json").write_text(json.dumps(stored))
    with pytest.raises(ConfigError, match=r"strides \(not recorded\)"):
        LatencyTable.load(tmp_path / "old.json", net)


def test_a_single_subnet_where_a_pair_is_expected_is_a_config_error(trained, digits):
    net = trained
    ev = _evaluator(net, digits)
    little = net.max_subnet("little")
    for given in (little, little.as_dict(), net.max_subnet("big").as_dict(), {"stages": little.as_dict()["stages"]}):
        with pytest.raises(ConfigError, match="expected a little/big pair .*single subnet"):
            ev.evaluate(given)
        with pytest.raises(ConfigError, match="expected a little/big pair"):
            net.space.check_pair(given)
    with pytest.raises(ConfigError, match="exactly the keys 'little' and 'big'"):
        net.space.check_pair({"little": little})
    assert ev.evaluated == 0


def test_an_undefined_predictor_figure_is_written_as_null(trained, digits):
    ev = _evaluator(trained, digits)
    res = predictor_search(ev, measure=3, candidates=20, holdout=0.0, epochs=20, seed=0)
    assert math.isnan(res.report["rmse_points"])  # no held-out pair: undefined
    d = res.as_dict()
    assert d["report"]["rmse_points"] is None and d["report"]["exit_rmse_points"] is None
    text = json.dumps(d, allow_nan=False)  # standard JSON
    assert "NaN" not in text and json.loads(text)["report"]["train_rmse_points"] >= 0
