"""The `dyninfer cascade` pipeline end to end on digits (tiny preset), and the CLI's error handling."""

import json

import pytest

from dyninfer.cli import main
from dyninfer.methods.cascade.experiment import CascadeExperimentConfig, chains, run_experiment
from dyninfer.methods.cascade.report import write_report


def test_chains_end_at_the_teacher():
    assert chains(["s", "m", "l"]) == [["s", "l"], ["m", "l"], ["s", "m", "l"]]


def test_experiment_writes_a_complete_report(tmp_path, digits_prepared):
    cfg = CascadeExperimentConfig(dataset="digits", preset="tiny", progress=False, timing_samples=359,
                                  batch1_samples=20, routers=("energy", "energy+T", "max_softmax", "random"))
    res = run_experiment(cfg, log=lambda s: None)
    out = write_report(res, tmp_path / "rep")
    files = sorted(p.name for p in out.iterdir())
    assert files == ["accuracy_vs_flops.png", "accuracy_vs_latency.png", "energy_hist.png", "report.md",
                     "results.json", "score_hist.png"]
    data = json.loads((out / "results.json").read_text())
    assert data["config"]["preset"] == "tiny" and "torch" in data["versions"]
    rt = data["runtime"]
    assert rt["agreement_with_trace"]["predictions"] == 1.0 and rt["agreement_with_trace"]["exits"] == 1.0
    best = data["best"]
    assert best["chain"][-1] == "cnn-m"
    assert best["test_flops"] < data["teacher"]["flops"]
    assert {f["router"] for f in data["fits"]} == {"energy", "energy+T", "max_softmax", "random"}
    assert 0 <= data["mcnemar_cascade_vs_teacher"]["pvalue"] <= 1
    md = (out / "report.md").read_text()
    assert "Table 1" in md and "McNemar" in md and "Winner" in md


def test_cli_reports_missing_data_cleanly(tmp_path, capsys):
    code = main(["cascade", "--data-root", str(tmp_path), "--out", str(tmp_path / "r"), "--no-progress"])
    assert code == 2
    err = capsys.readouterr().err
    assert "dyninfer: error: missing data file" in err and "train-images-idx3-ubyte.gz" in err
    assert not (tmp_path / "r").exists()


def test_cli_list(capsys):
    assert main(["list", "scores"]) == 0
    assert "energy" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["cascade", "--routers", "nope"])


def test_prepare_rejects_models_outside_the_preset():
    from dyninfer import ConfigError
    from dyninfer.harness import prepare

    with pytest.raises(ConfigError, match=r"preset 'tiny' has no models \['cnn-l'\]"):
        prepare("digits", "tiny", models=["cnn-s", "cnn-l"], progress=False, log=lambda s: None)
