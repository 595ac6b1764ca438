"""The selection experiment end to end on digits (tiny preset): figures, runtime agreement, report files."""

from __future__ import annotations

import json

import pytest
import torch

from dyninfer.methods.selection.experiment import SelectionExperimentConfig, run_experiment
from dyninfer.methods.selection.policy import PolicyConfig
from dyninfer.methods.selection.report import write_report


def test_experiment_on_digits_writes_report(tmp_path, monkeypatch):
    monkeypatch.setenv("DYNINFER_CACHE", str(tmp_path / "cache"))
    cfg = SelectionExperimentConfig(dataset="digits", preset="tiny", lambdas=(0.5, 0.95), table_lambdas=(0.95,),
                                    policy=PolicyConfig(epochs=3), serving_batch=64, timing_rounds=1,
                                    cost_rounds=2, cost_repeats=2, cost_min_s=0.0,
                                    overhead_repeats=3, heuristic_grid=5, score_bins=4, manager_stream=0,
                                    tv_pool=("tv-mobilenet_v3_large", "tv-mobilenet_v2", "tv-efficientnet_b0"),
                                    tv_stream=192, tv_batches=(32, 64), threads=1, progress=False)
    before = torch.get_num_threads()
    torch.set_num_threads(2)  # the run uses cfg.threads (1) and must give the caller's setting back
    try:
        res = run_experiment(cfg, log=lambda s: None)
        assert torch.get_num_threads() == 2 and res["threads"] == 1
    finally:
        torch.set_num_threads(before)
    names = res["paths"]
    assert set(res["curves"]) >= {"policy", "policy without complexity", "policy on complexity only"}
    for row in res["table1"]["rows"]:
        if "lambda" in row:  # the real runtime reproduces the trace simulation
            assert row["pred_agreement_with_simulation"] == 1.0 and row["path_agreement"] == 1.0
    static = {r["system"]: r for r in res["table1"]["rows"] if r["system"] in names}
    assert set(static) == set(names)
    for r in res["manager"]["runs"].values():
        assert r["within_budget"] and r["peak_measured_bytes"] <= r["budget_bytes"]
    tv = res["manager"]["torchvision"]
    assert tv["within_budget"] and tv["peak_measured_bytes"] <= tv["budget_bytes"] == tv["pool_total_bytes"] // 2
    assert tv["misses"] > 0  # half the pool cannot hold every backbone of a mixed stream
    assert [r["batch"] for r in tv["runs"]] == [32, 64]
    assert all(r["within_budget"] and r["peak_measured_bytes"] <= r["budget_bytes"] for r in tv["runs"])
    f = res["figures"]
    assert {"test_margin_pts", "oracle_share_captured_pct", "overhead_pct_of_cheapest"} <= set(f)
    out = write_report(res, tmp_path / "report", command="dyninfer select --dataset digits")
    assert json.loads((out / "results.json").read_text())["paths"] == names
    md = (out / "report.md").read_text()
    assert "Table 1" in md and "Routing vs complexity" in md
    assert (out / "accuracy_latency.png").stat().st_size > 1000
    assert (out / "routing_vs_complexity.png").stat().st_size > 1000


def test_config_errors():
    from dyninfer.errors import ConfigError

    with pytest.raises(ConfigError):
        SelectionExperimentConfig(lambdas=(1.5,))
    with pytest.raises(ConfigError):
        SelectionExperimentConfig(lambdas=())


def test_cli_registers_select_and_benchmark_defaults():
    import importlib.util
    from pathlib import Path

    from dyninfer.cli import build_parser

    args = build_parser().parse_args(["select", "--preset", "tiny", "--lambdas", "0.5", "0.9", "--threads", "1"])
    assert args.lambdas == [0.5, 0.9] and args.threads == 1 and args.preset == "tiny"
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "selection.py"
    spec = importlib.util.spec_from_file_location("bench_selection", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.build_argv([]) == ["select", "--preset", "full", "--out", "reports/selection-full",
                                  "--dataset", "fashion-mnist"]
    argv = mod.build_argv(["--preset", "quick"])
    assert argv[argv.index("--out") + 1] == "reports/selection-quick"


def test_median_costs_picks_the_median_round():
    from dyninfer.methods.selection.experiment import median_costs
    from dyninfer.runtime.cost import LatencyStats, PathCost

    def cost(t: float, e: float) -> PathCost:
        return PathCost("a", 1, 1, 4, {1: LatencyStats(1, t, t, t, t, 0.0, 3)}, e, "estimated")

    merged = median_costs([[cost(1.0, 5.0)], [cost(9.0, 1.0)], [cost(2.0, 3.0)]])  # one contended round: 9 s
    assert merged[0].latency[1].median_s == 2.0 and merged[0].energy_j_per_sample == 3.0
