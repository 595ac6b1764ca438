"""The big/little report (`dyninfer run bigsmall`): every section of the paper's section 5 on the tiny preset, and
the deployed pair chosen by a search result."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from dyninfer.errors import ConfigError

pytestmark = pytest.mark.usefixtures("one_thread")

SEARCH = {"population": 4, "generations": 2, "measure": 8, "candidates": 100, "remeasure": 2, "epochs": 1,
          "steps_per_epoch": 4, "eval_images": 200, "bn_images": 128}


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    """One tiny run with every figure (about 3 min with one thread)."""
    from dyninfer.pipeline import RunConfig, run

    out = tmp_path_factory.mktemp("bigsmall") / "run"
    cfg = RunConfig(method="bigsmall", preset="tiny", dataset="digits", progress=False,
                    figures={"thresholds": (0.0, 0.7, 1.0), "ablations": ("independent", "no-distill", "width-only", "no-routing"),
                             "space_pairs": 3, "eval_images": 200, "examples": 2, "seeds": (1,),
                             "search_settings": SEARCH, "singles": 2})
    folder = run(cfg, out, log=lambda s: None)
    return folder, json.loads((folder / "results.json").read_text())


def _section(res, key):
    return res["sections"][key] if "sections" in res else res[key]


def test_the_report_has_every_section_and_plot(report):
    folder, res = report
    md = (folder / "report.md").read_text()
    for title in ("5.1", "Co-training against the independent cascade", "5.2", "5.3", "5.4.1", "5.4.2", "5.4.3",
                  "5.4.4", "4.6", "5.6"):
        assert title in md, title
    for png in ("pareto_flops.png", "pareto_latency.png", "pareto_energy.png", "search_fronts.png",
                "ablation_curves.png", "fig56_exit_histogram.png", "fig56_reliability.png",
                "fig56_threshold_sensitivity.png", "fig56_examples.png"):
        assert (folder / png).stat().st_size > 1000, png


def test_table_5_1_rows_are_consistent(report):
    _, res = report
    rows = {r["system"]: r for r in _section(res, "bigsmall_5_1")["rows"]}
    little, big = rows["little subnet"], rows["big subnet"]
    # τ = 0 keeps every little answer: the little subnet's accuracy at its FLOPs
    assert rows["dynamic τ=0"]["top1"] == pytest.approx(little["top1"])
    assert rows["dynamic τ=0"]["flops"] == pytest.approx(little["flops"])
    assert rows["dynamic τ=0"]["exit_rate"] == 1.0
    # a larger τ forwards more: FLOPs rise towards little + big
    assert rows["dynamic τ=0"]["flops"] <= rows["dynamic τ=0.7"]["flops"] <= rows["dynamic τ=1"]["flops"]
    assert rows["dynamic τ=1"]["flops"] <= little["flops"] + big["flops"] + 1
    kinds = {r["kind"] for r in rows.values()}
    assert {"static", "dynamic", "OFA single", "static baseline", "fixed cascade", "independent cascade",
            "early exits"} <= kinds
    for r in rows.values():
        assert 0 <= r["top1"] <= r["top5"] <= 1, r["system"]
        assert r["flops"] > 0 and r["params"] > 0 and r["batch1_ms"] > 0 and r["throughput"] > 0
        assert r["peak_bytes"] > r["param_bytes"] > 0 and r["energy_j"] > 0
    assert _section(res, "bigsmall_5_1")["timing"]["rounds"] >= 1
    # mean ± std over the run's seed and one more
    seeds = _section(res, "bigsmall_5_1")["seeds"]
    assert len(seeds["little subnet"]["top1"]) == 2
    assert seeds["little subnet"]["top1"][0] == pytest.approx(little["top1"])


def test_search_comparison_and_routers(report):
    _, res = report
    s53 = _section(res, "bigsmall_5_3")
    assert {r["strategy"] for r in s53["rows"]} == {"evolution", "predictor", "darts"}
    for r in s53["rows"]:
        assert r["evaluated"] >= 1 and r["cpu_hours"] == pytest.approx(r["cpu_seconds"] / 3600)
    routers = {r["router"]: r for r in _section(res, "bigsmall_5_4_1")["routers"]}
    assert set(routers) == {"confidence", "learned", "difficulty"}
    for r in routers.values():
        assert 0 <= r["routing_accuracy"] <= 1 and 0 <= r["exit_rate"] <= 1


def test_ablation_arms_are_compared_at_the_reference_flops(report):
    _, res = report
    ab = _section(res, "bigsmall_5_4_2")
    arms = ab["arms"]
    assert set(arms) == {"reference", "independent", "no-distill", "width-only", "no-routing"}
    for name, a in arms.items():
        assert 0 <= a["top1"] <= 1
        if name != "reference":
            assert 0 <= a["mcnemar"]["pvalue"] <= 1
    # the independent arm's heads come from two other supernets: different accuracies from the reference's
    assert (arms["independent"]["little_acc"], arms["independent"]["big_acc"]) != \
        (arms["reference"]["little_acc"], arms["reference"]["big_acc"])
    # the width-only arm searches width and expansion alone; the tiny reference trained the largest pair only
    assert arms["width-only"]["space"]["scored"] >= 2 and arms["reference"]["space"]["scored"] == 1
    # L_routing trains the router alone (its inputs are detached): without it the supernet trains the same, and
    # the loss arm is also compared on the learned router, at the same calibration FLOPs as the reference
    assert (arms["no-routing"]["little_acc"], arms["no-routing"]["big_acc"]) == \
        (arms["reference"]["little_acc"], arms["reference"]["big_acc"])
    for name in ("reference", "no-routing"):
        learned = arms[name]["learned"]
        assert 0 <= learned["top1"] <= 1 and learned["flops"] > 0
    assert "learned" not in arms["independent"]


def test_deployment_and_fig56(report):
    _, res = report
    dep = _section(res, "bigsmall_4_6")
    names = [r.get("variant", r.get("name")) for r in dep["rows"]]
    assert len(names) == 5
    assert dep["fp32_check"]["mismatch_outside_near"] == 0
    f56 = _section(res, "bigsmall_5_6")
    sens = f56["sensitivity"]
    assert sens["exit_rate"][0] == 1.0 and np.all(np.diff(sens["flops"]) >= -1e-6)
    rows = {r["system"]: r for r in _section(res, "bigsmall_5_1")["rows"]}
    assert sens["accuracy"][0] == pytest.approx(rows["little subnet"]["top1"])
    counts, j = f56["routing_outcomes_tau_0.9"], int(np.argmin(np.abs(np.asarray(sens["tau"]) - 0.9)))
    n = res["data"]["test"]
    assert counts["kept, little right"] + counts["kept, little wrong"] == round(sens["exit_rate"][j] * n)


def test_figure_settings_are_checked():
    from dyninfer.methods.bigsmall.figures import BigSmallFigures

    with pytest.raises(ConfigError, match="unknown ablation arms"):
        BigSmallFigures(ablations=("no-such-arm",))
    with pytest.raises(ConfigError, match="thresholds"):
        BigSmallFigures(thresholds=(1.5,))


# ---------------------------------------------------------------------------------------- the deployed pair

def test_read_pair_accepts_pairs_scored_pairs_and_search_results(tmp_path, cotrained_bigsmall):
    from dyninfer.methods.bigsmall import read_pair
    from dyninfer.models.bigsmall import PairConfig

    net = cotrained_bigsmall
    pair = PairConfig(net.min_subnet("little"), net.max_subnet("big"))
    plain = read_pair(pair.as_dict())
    assert net.space.check_pair(plain) == pair
    assert read_pair({"pair": pair.as_dict(), "accuracy": 0.5}) == plain
    f = tmp_path / "search.json"
    f.write_text(json.dumps({"strategy": "evolution", "best": {"pair": pair.as_dict()}}))
    assert read_pair(str(f)) == plain
    f.write_text(json.dumps({"strategy": "evolution", "best": None}))
    with pytest.raises(ConfigError, match="without a best pair"):
        read_pair(f)
    f.write_text("{not json")
    with pytest.raises(ConfigError, match="not readable JSON"):
        read_pair(f)
    with pytest.raises(ConfigError, match="does not exist"):
        read_pair(tmp_path / "missing.json")
    with pytest.raises(ConfigError, match="must hold"):
        read_pair({"stages": []})


def test_a_searched_pair_is_what_the_method_runs(tmp_path):
    from dyninfer.harness import prepare
    from dyninfer.methods import create_method

    full = prepare("digits", "tiny", kind="bigsmall", progress=False, log=lambda s: None)
    net = full.paths.supernet
    sp = net.space
    pair = {"little": sp.min_subnet("little").as_dict(), "big": sp.max_subnet("big").as_dict()}
    f = tmp_path / "search.json"
    f.write_text(json.dumps({"best": {"pair": pair}}))
    method = create_method("bigsmall", pair=str(f), scores=("confidence",))
    assert method.get_params()["pair"] == pair  # the pair itself is kept (and saved), not the file name
    prep = prepare("digits", "tiny", kind="bigsmall", progress=False, log=lambda s: None, **method.path_options())
    assert prep.paths.pair == sp.check_pair(pair)
    # the little path is the smallest little subnet: cheaper than the largest pair's, and its own trace
    assert prep.test.cost("little").flops < full.test.cost("little").flops
    assert prep.test.cost("big").flops == full.test.cost("big").flops
    assert not np.array_equal(prep.test.logits[0], full.test.logits[0])
    method.fit(prep.calib)
    rt = method.runtime(prep.paths)
    out = rt.run(prep.test.inputs(), 128)
    assert np.array_equal(np.asarray(out.pred), method.simulate(prep.test).pred)
    bad = {"little": {**pair["little"], "stages": [{**pair["little"]["stages"][0], "kernel": 4}]
                      + pair["little"]["stages"][1:]}, "big": pair["big"]}
    with pytest.raises(ConfigError, match="kernel"):
        prepare("digits", "tiny", kind="bigsmall", progress=False, log=lambda s: None, pair=bad)


def test_paths_from_two_supernets(digits_bigsmall, tmp_path):
    import copy

    from dyninfer.paths import BigSmallPaths

    net, router = digits_bigsmall.paths.supernet, digits_bigsmall.paths.router
    other = copy.deepcopy(net)
    with torch.no_grad():
        for p in other.parameters():
            p.mul_(0.5)
    paths = BigSmallPaths(net, router, big_supernet=other)
    x = digits_bigsmall.test.inputs()[:8]
    other.set_active_subnet(other.max_subnet("big"))
    with torch.no_grad():
        assert torch.allclose(paths.models["big"](x), other(x))
    with pytest.raises(ConfigError, match="two supernets"):
        paths.save(tmp_path / "p")
    from dyninfer.data.datasets import DataSpec
    from dyninfer.models.bigsmall import BigSmallSupernet

    three = BigSmallSupernet(DataSpec("digits", 10, 1, (8, 8), (0.5,), (0.5,)), channels=(8, 8, 8), stem=8,
                             head_channels=(8, 8))
    with pytest.raises(ConfigError, match="one search space"):
        BigSmallPaths(net, router, big_supernet=three)
