"""The strategies compared (NAS-for-dynamic-inference paper, 5.3): ``run_strategy`` and ``compare_strategies``
on a tiny co-trained digits supernet at a FLOPs budget — one row per strategy with the best pair within the
budget, its cost and the pairs scored, resumable, the caller's supernet untouched — and the Markdown table."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from dyninfer import ConfigError
from dyninfer.models.bigsmall import PairConfig
from dyninfer.search import (SMALL, STRATEGIES, SearchSettings, compare_strategies, comparison_table, dominates,
                             run_strategy)

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = SearchSettings(threshold=0.3, eval_images=150, bn_images=128, population=3, generations=2, measure=5,
                      candidates=40, remeasure=2, epochs=1, steps_per_epoch=2)


@pytest.fixture(scope="module")
def trained(cotrained_bigsmall):
    return copy.deepcopy(cotrained_bigsmall)


def _budget(net) -> float:
    big = PairConfig(net.max_subnet("little"), net.max_subnet("big"))
    return 0.6 * (net.flops(big.little) + net.flops(big.big))


def test_the_strategies_compared_at_a_flops_budget_and_resumed(trained, digits, tmp_path):
    net = trained
    before = {k: v.clone() for k, v in net.state_dict().items()}
    budget = _budget(net)
    lines: list[str] = []
    cmp = compare_strategies(net, digits, budget_flops=budget, settings=TINY, folder=tmp_path, seed=0,
                             log=lines.append)
    assert [r["strategy"] for r in cmp["rows"]] == list(STRATEGIES)
    assert cmp["budget_mflops"] == pytest.approx(budget / 1e6) and cmp["settings"]["population"] == 3
    for row in cmp["rows"]:
        s = row["strategy"]
        pts, front = cmp["scored"][s], cmp["fronts"][s]
        assert row["scored_pairs"] == len(pts) >= 1 and front
        within = [p for p in pts if p["flops"] <= budget]
        if within:  # the most accurate measured pair within the budget
            assert row["best_flops"] <= budget and row["best_accuracy"] == max(p["accuracy"] for p in within)
            assert row["best_mflops"] == pytest.approx(row["best_flops"] / 1e6)
            assert 0 <= row["best_exit_rate"] <= 1 and set(row["best_pair"]) == {"little", "big"}
            assert 0 <= row["test_accuracy"] <= 1 and 0 <= row["test_exit_rate"] <= 1 and row["test_flops"] > 0
        else:
            assert row["best_accuracy"] is None and row["test_accuracy"] is None
        assert not any(dominates((p["accuracy"], p["flops"]), (f["accuracy"], f["flops"])) for f in front for p in pts)
        assert row["evaluated"] >= 1 and row["cpu_seconds"] > 0 and row["wall_seconds"] > 0
        assert row["cpu_hours"] == pytest.approx(row["cpu_seconds"] / 3600)
        res = cmp["results"][s]
        assert res["strategy"] == s and res["search_cost"]["evaluated"] == row["evaluated"]
        assert json.loads((tmp_path / f"search-{s}.json").read_text())["best"] == res["best"]
        assert (tmp_path / "state" / s).is_dir() or s == "predictor"  # the predictor keeps no state
    evo = cmp["results"]["evolution"]
    assert len(evo["trials"]) == 6 and cmp["rows"][0]["scored_pairs"] == len({tuple(t["encoding"])
                                                                               for t in evo["trials"]})
    assert cmp["results"]["predictor"]["search_cost"]["evaluated"] >= 7  # 5 measured + the 2 corners
    assert cmp["results"]["darts"]["epochs_done"] == 1
    stored = json.loads((tmp_path / "comparison.json").read_text(), parse_constant=lambda c: pytest.fail(c))
    assert stored["rows"] == json.loads(json.dumps(cmp["rows"]))
    assert sum(line.startswith("[compare]") for line in lines) == 3
    after = net.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # the caller's supernet is untouched
    # the Markdown table: one line per strategy, the test top-1 with the calibration one in the notes
    table = comparison_table(cmp)
    body = table.strip().splitlines()
    assert len(body) == 2 + 3 and body[0].startswith("| Strategy | Best top-1 (%, test) at ≤")
    assert "DARTS" in table and "NSGA-II" in table and "OFA-style" in table
    calib = comparison_table(cmp, test=False)
    assert "(%, calib)" in calib
    # again: evolution and DARTS resume from their state and run nothing more
    again = compare_strategies(net, digits, budget_flops=budget, settings=TINY, folder=tmp_path, seed=0,
                               strategies=("evolution", "darts"), test=False)
    assert again["results"]["evolution"]["search_cost"]["evaluated_this_call"] == 0
    assert again["results"]["evolution"]["trials"] == evo["trials"]
    assert again["results"]["darts"]["cost"]["steps"] == cmp["results"]["darts"]["cost"]["steps"]
    assert "test_accuracy" not in again["rows"][0]
    with pytest.raises(ConfigError, match="test split"):
        comparison_table(again, test=True)


def test_run_strategy_is_the_cli_core_and_checks_its_settings(trained, digits, tmp_path):
    net = trained
    res = run_strategy("predictor", net, digits, settings=TINY, measure=3, candidates=20, remeasure=0)
    assert res["strategy"] == "predictor" and len(res["measured"]) == 5 and res["budget_flops"] is None
    assert res["best"]["accuracy"] == max(r["accuracy"] for r in res["measured"])
    assert set(res["search_cost"]) >= {"evaluated", "cpu_seconds", "cpu_hours", "evaluated_this_call",
                                       "wall_seconds_this_call"}
    json.dumps(res, allow_nan=False)
    assert not list(tmp_path.iterdir())  # no folder: nothing written
    cheap = min(r["flops"] for r in res["measured"])
    tight = run_strategy("predictor", net, digits, settings=TINY, measure=3, candidates=20, remeasure=0,
                         budget_flops=cheap, folder=tmp_path, info={"dataset": "digits"})
    assert tight["best"]["flops"] <= cheap and tight["dataset"] == "digits" and tight["budget_mflops"] == cheap / 1e6
    assert json.loads((tmp_path / "search.json").read_text())["best"] == tight["best"]
    with pytest.raises(ConfigError, match="unknown search settings"):
        run_strategy("darts", net, digits, settings=TINY, populaton=3)
    with pytest.raises(ConfigError, match="objective latency is for evolution and darts"):
        run_strategy("predictor", net, digits, settings=TINY, objective="latency")
    with pytest.raises(ConfigError, match="strategy must be one of"):
        run_strategy("random", net, digits, settings=TINY)
    with pytest.raises(ConfigError, match="eval_images"):
        run_strategy("darts", net, digits, settings=TINY, eval_images=0)
    with pytest.raises(ConfigError, match="budget_flops"):
        run_strategy("darts", net, digits, settings=TINY, budget_flops=0)
    with pytest.raises(ConfigError, match="strategies must be"):
        compare_strategies(net, digits, budget_flops=None, strategies=("darts", "darts"))
    with pytest.raises(ConfigError, match="--eval-images must be an integer"):
        TINY.replace(eval_images=0.5).check(flags=True)
    assert SMALL.check() is SMALL and SMALL.population < SearchSettings().population


def test_the_cli_names_the_same_strategies():
    from dyninfer.methods.bigsmall import cli

    assert cli.STRATEGIES == STRATEGIES
