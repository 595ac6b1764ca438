"""The shared pipeline end to end on digits (tiny preset): ``dyninfer run``, the aliases, ``compare``, the
saved policy, and the CLI's error handling."""

from __future__ import annotations

import json

import numpy as np
import pytest

from dyninfer import CheckpointError
from dyninfer.cli import main
from dyninfer.policy import load_policy

pytestmark = pytest.mark.usefixtures("one_thread", "digits_prepared", "digits_staged")

FAST = ["--preset", "tiny", "--dataset", "digits", "--no-progress"]


def _check_run(out, method: str) -> dict:
    res = json.loads((out / "results.json").read_text())
    assert res["method"] == method and res["preset"] == "tiny"
    prov = res["provenance"]
    assert prov["command"].startswith("dyninfer") and prov["versions"]["torch"] and prov["git_commit"]
    assert prov["seed"] == 0 and prov["config"]["method"] == method
    ag = res["agreement"]
    assert ag["samples"] == res["data"]["test"] and ag["pred_mismatch"] == ag["path_mismatch"] == ag["flops_mismatch"] == 0
    op = res["operating_point"]
    # a certified point, or (nothing certified is cheaper than the reference) the reference alone, said so
    assert op["test_flops"] <= op["reference_flops"] * 1.2 and ("Learn-then-Test" in op["statement"]
                                                                or "alone" in op["statement"])
    assert set(res["timing"]["throughput"]) == {"policy", "forced", "plain"}
    assert res["energy"]["policy"]["source"]
    md = (out / "report.md").read_text()
    for heading in ("## Operating point", "## Paths", "## Runtime", "## Accuracy against cost"):
        assert heading in md
    for png in ("accuracy_vs_flops.png", "accuracy_vs_time.png"):
        assert (out / png).stat().st_size > 1000
    return res


def test_cascade_run_writes_report_and_a_policy_that_reloads(tmp_path):
    out = tmp_path / "cascade"
    assert main(["cascade", *FAST, "--out", str(out), "--set", "tolerance=0.05"]) == 0
    res = _check_run(out, "cascade")
    assert {r["router"] for r in res["cascade"]["routers"]} >= {"energy", "margin", "random"}
    by = {r["router"]: r for r in res["cascade"]["routers"]}
    assert 0 < by["energy"]["correlation_first_stage"] < 1  # confident answers are the correct ones more often
    assert by["random"]["correlation_first_stage"] is None or np.isnan(by["random"]["correlation_first_stage"])
    assert "Routers on the same trace" in (out / "report.md").read_text()
    assert (out / "energy_hist.png").exists() and (out / "routers_vs_flops.png").exists()
    pol = load_policy(out)  # the run folder, or its policy/ subfolder
    assert pol.method.name == "cascade" and pol.paths.names == ["cnn-s", "cnn-m"] and len(pol.class_names) == 10
    from dyninfer.data import load_dataset

    x = load_dataset("digits", calib_size=300).test.x
    rt = pol.runtime()
    r = rt.run(x, 64)
    sim_share = res["operating_point"]["test_path_share"]
    assert r.path_share().tolist() == pytest.approx(sim_share)  # the reloaded policy routes the test split as fitted
    ckpt = out / "policy" / "paths" / "cnn-m.pt"
    data = bytearray(ckpt.read_bytes())
    data[len(data) // 2] ^= 0x01  # one bit inside the weights
    ckpt.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="cnn-m.pt"):
        load_policy(out)


def test_selection_run_with_its_figures(tmp_path):
    out = tmp_path / "sel"
    rc = main(["select", *FAST, "--out", str(out), "--set", "lambdas=[0.6, 0.9]", "--set", 'policy={"epochs": 5}',
               "--set", "tolerance=0.05",
               "--variants", "policy without complexity", "--tv-pool", "--manager-stream", "200"])
    assert rc == 0
    res = _check_run(out, "selection")
    sel = res["selection"]
    assert set(sel["curves"]) == {"policy", "policy without complexity"}
    rows = {r["system"]: r for r in sel["table1"]["rows"]}
    adaptive = [r for k, r in rows.items() if k.startswith("adaptive")]
    assert adaptive and all(r["path_agreement"] == 1.0 and r["pred_agreement_with_simulation"] == 1.0 for r in adaptive)
    assert sel["manager"]["runs"] and all(r["within_budget"] for r in sel["manager"]["runs"].values())
    assert (out / "routing_vs_complexity.png").exists()


def test_early_exit_run_with_its_figures(tmp_path):
    out = tmp_path / "ee"
    assert main(["early-exit", *FAST, "--out", str(out), "--subsets", "round", "--adapt", "0.1:input-norm",
                 "--set", "tolerance=0.05"]) == 0
    res = _check_run(out, "early-exit")
    ee = res["early_exit"]
    assert all(v["pred_mismatch"] == v["path_mismatch"] == 0 for v in ee["table1"]["runtime_matches_trace"].values())
    kinds = [r["kind"] for r in ee["table1"]["rows"]]
    assert kinds.count("fixed exit") == len(ee["exit_names"]) and kinds[-1] == "baseline"
    (spec,) = ee["specialisation"]
    assert spec["checks"] == {"backbone_bitwise_unchanged": True, "final_head_bitwise_unchanged": True,
                              "final_exit_logits_unchanged": True, "heads_restored_after": True}
    md = (out / "report.md").read_text()
    assert "### Table 1" in md and "| Baseline | no heads |" in md and "## Test-time specialisation" in md


@pytest.mark.slow
def test_early_exit_cross_validated_selection_and_several_streams(tmp_path):
    out = tmp_path / "report"
    rc = main(["early-exit", *FAST, "--adapt", "1e-2", "0.1:input-norm:2", "--stream-seeds", "2",
               "--select", "1e-2", "0.3:input-norm", "--select-folds", "3", "--subsets", "round", "--out", str(out)])
    assert rc == 0
    res = json.loads((out / "results.json").read_text())["early_exit"]
    plain, normed = res["specialisation"][:2]
    sel = res["selection"]["round"]
    assert [r["label"] for r in sel["rows"]] == ["lr 0.01", "lr 0.3 input-norm"] and sel["folds"] == 3
    chosen = [e for e in res["specialisation"] if e["selected"]]
    assert len(chosen) == (sel["chosen"] is not None) and all(e["label"] == sel["chosen"] for e in chosen)
    assert normed["config"]["lr_scale"] == "input-norm" and normed["config"]["passes"] == 2
    assert len(plain["streams"]) == 2 and len(plain["target"]["latency_reduction_per_stream"]) == 2
    assert normed["adapt_log"]["stream"] == 2 * normed["stream_images"]  # two passes over the stream
    assert "cross-validation on the calibration split" in (out / "report.md").read_text()


def test_compare_puts_every_method_in_one_table(tmp_path):
    out = tmp_path / "cmp"
    rc = main(["compare", *FAST, "--out", str(out), "--set", "selection.lambdas=[0.6, 0.9]", "--tolerance", "0.05",
               "--set", 'selection.policy={"epochs": 5}'])
    assert rc == 0
    res = json.loads((out / "results.json").read_text())
    assert [r["system"] for r in res["table"]] == ["cascade", "early-exit", "selection"]
    assert {s["system"] for s in res["static"]} == {"cnn-s", "cnn-m", "revcol-tiny (plain)"}
    for name, r in res["methods"].items():
        assert r["agreement"]["pred_mismatch"] == 0, name
    for x in ("flops", "batch1", "serving", "energy"):
        assert (out / f"accuracy_vs_{x}.png").stat().st_size > 1000
    md = (out / "report.md").read_text()
    assert "| cascade | pool |" in md and "| early-exit | staged |" in md and "Learn-then-Test" in md


def test_cli_reports_missing_data_cleanly(tmp_path, capsys):
    code = main(["run", "cascade", "--data-root", str(tmp_path), "--out", str(tmp_path / "r"), "--no-progress"])
    assert code == 2
    err = capsys.readouterr().err
    assert "dyninfer: error: missing data file" in err and "train-images-idx3-ubyte.gz" in err
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("argv, message", [
    (["run", "nope"], "unknown method 'nope'"),
    (["run", "cascade", "--set", "tolerance"], "KEY=VALUE"),
    (["run", "cascade", "--set", "tolerance=2"], "tolerance must be a number in [0, 1)"),
    (["run", "cascade", "--set", "colour=red"], "unknown settings ['colour']"),
    (["early-exit", "--subsets", "footwear", "--preset", "tiny", "--dataset", "digits"], "no class subset 'footwear'"),
    (["compare", "--set", "tolerance=0.1"], "METHOD.KEY=VALUE"),
])
def test_cli_errors_are_clean(argv, message, capsys, tmp_path):
    assert main([*argv, "--out", str(tmp_path / "r"), "--no-progress"]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_cli_lists_methods_with_their_settings(capsys):
    assert main(["list", "methods"]) == 0
    out = capsys.readouterr().out
    assert "cascade: Cascade on a pool path set" in out and "selection:" in out and "tolerance" in out


def test_loading_a_folder_without_a_policy_says_what_to_do(tmp_path):
    with pytest.raises(CheckpointError, match="dyninfer run METHOD"):
        load_policy(tmp_path)


def test_the_readme_example_runs(digits_prepared, tmp_path, monkeypatch):
    """The README's 'own models' snippet, run as written on the tiny digits models."""
    import re
    from pathlib import Path

    text = (Path(__file__).parent.parent / "README.md").read_text()
    code = re.search(r"## Using it on your own models\n\n```python\n(.*?)```", text, re.S).group(1)
    data = digits_prepared.data
    monkeypatch.chdir(tmp_path)
    env = {"small_model": digits_prepared.paths.models["cnn-s"], "big_model": digits_prepared.paths.models["cnn-m"],
           "calib_images": data.calib.x, "calib_split": data.calib, "batch": data.test.x[:32]}
    exec(compile(code.replace("(3, 32, 32)", "(1, 8, 8)").replace("2e6", "1e6"), "README.md", "exec"), env)
    assert env["result"].pred.shape == (32,) and (tmp_path / "my-policy" / "policy.json").exists()


def test_a_cascade_on_part_of_a_pool_is_timed_and_plotted_on_its_own_paths(digits_prepared, tmp_path):
    """A pool of three paths, a cascade over two of them: predicted times and curves use the chain's paths."""
    from dyninfer.harness import Prepared
    from dyninfer.methods.cascade import Cascade
    from dyninfer.paths import ModulePool
    from dyninfer.pipeline import RunConfig, evaluate, shared_sections

    p = digits_prepared
    models = {"a": p.paths.models["cnn-s"], "b": p.paths.models["cnn-s"], "c": p.paths.models["cnn-m"]}
    paths = ModulePool(models)
    calib, test = (paths.record(s) for s in (p.data.calib, p.data.test))
    prep = Prepared(p.data, p.preset, paths, calib, test, {})
    ev = evaluate(prep, Cascade(stages=["a", "c"], tolerance=0.05), RunConfig(method="cascade", preset="tiny",
                                                                                figures=None, progress=False),
                  log=lambda s: None)
    assert ev.own_test.paths == ["a", "c"] and ev.results["agreement"]["pred_mismatch"] == 0
    assert all(v > 0 for v in ev.results["timing"]["predicted_seconds"].values())
    share = ev.results["operating_point"]["test_path_share"]
    assert ev.results["method_paths"] == ["a", "c"] and len(share) == 2 and sum(share) == pytest.approx(1)
    text = shared_sections(ev)[0].markdown
    assert f"a {100 * share[0]:.1f}%, c {100 * share[1]:.1f}%." in text and "b " not in text.split("per path:")[1][:30]
    for section in shared_sections(ev):
        for name, draw in section.plots.items():
            draw(tmp_path / name)
            assert (tmp_path / name).stat().st_size > 1000


def test_an_untimed_evaluation_keeps_everything_but_the_timing(digits_prepared):
    """time_runtime=False (a caller timing the runtime itself): the same fit, outcome and runtime, no timing."""
    from dyninfer.methods.cascade import Cascade
    from dyninfer.pipeline import RunConfig, evaluate

    lines = []
    cfg = RunConfig(method="cascade", preset="tiny", figures=None, progress=False)
    timed = evaluate(digits_prepared, Cascade(tolerance=0.05), cfg, log=lambda s: None)
    untimed = evaluate(digits_prepared, Cascade(tolerance=0.05), cfg, log=lines.append, time_runtime=False)
    assert untimed.results["timing"] is None and untimed.results["energy"] is None
    assert not any(s.startswith("[time]") for s in lines) and any(s.startswith("[runtime]") for s in lines)
    assert untimed.results["knob"] == timed.results["knob"] and timed.results["timing"]["throughput"]["policy"] > 0
    np.testing.assert_array_equal(untimed.outcome.correct, timed.outcome.correct)
    assert untimed.results["agreement"]["pred_mismatch"] == 0


def test_a_time_budget_maps_through_measured_latencies(digits_prepared):
    """knob_for(budget_seconds=...) picks the most accurate calibration point whose predicted time fits the budget."""
    from dyninfer.errors import ConfigError
    from dyninfer.evaluate.simulate import curve_times
    from dyninfer.methods.cascade import Cascade
    from dyninfer.paths import measure_costs

    calib, paths = digits_prepared.calib, digits_prepared.paths
    costs = measure_costs(paths, calib.inputs()[:64], batches=(1, 16, 64), rounds=1, repeats=2, min_time_s=0.01,
                          log=None)
    timed = calib.with_costs(costs)
    c = Cascade(tolerance=0.05).fit(calib)
    t = curve_times(c.own_trace(timed), c.calib_curve_, 64)
    budget = float(np.median(t))
    knob = c.knob_for(budget_seconds=budget, costs_from=timed, batch=64)
    j = int(np.flatnonzero(np.isclose(c.calib_curve_.settings[:, 0], knob[0]))[0])
    assert t[j] <= budget * (1 + 1e-9)
    assert c.calib_curve_.accuracy[j] == c.calib_curve_.accuracy[t <= budget * (1 + 1e-9)].max()
    with pytest.raises(ConfigError, match="costs_from"):
        c.knob_for(budget_seconds=budget)
    with pytest.raises(ConfigError, match="no operating point within"):
        c.knob_for(budget_seconds=float(t.min()) / 10, costs_from=timed, batch=64)


def test_bigsmall_run_and_its_policy_reloads(tmp_path, digits_bigsmall):
    out = tmp_path / "bigsmall"
    # its own figures have their test (test_bigsmall_figures.py)
    assert main(["run", "bigsmall", *FAST, "--out", str(out), "--set", "tolerance=0.05", "--no-figures"]) == 0
    res = _check_run(out, "bigsmall")
    pol = load_policy(out)
    assert pol.method.name == "bigsmall" and pol.paths.kind == "bigsmall" and pol.paths.names == ["little", "big"]
    r = pol.runtime().run(digits_bigsmall.test.inputs(), 64)
    assert r.path_share().tolist() == pytest.approx(res["operating_point"]["test_path_share"])


def test_progress_bars_stay_out_of_logs(monkeypatch, capsys):
    """With standard error redirected (a log file, CI), a command runs without progress bars."""
    import dyninfer.harness as harness

    seen = {}

    def fake_prepare(*args, progress=True, **kwargs):
        seen["progress"] = progress
        raise harness.ConfigError("stop here")

    monkeypatch.setattr(harness, "prepare", fake_prepare)
    monkeypatch.setattr(harness, "load_data", lambda *a, **k: None)
    assert main(["train", "--preset", "tiny", "--dataset", "digits", "--kind", "pool"]) == 2
    assert seen["progress"] is False and "stop here" in capsys.readouterr().err
