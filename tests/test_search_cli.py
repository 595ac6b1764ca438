"""``dyninfer search``: the three strategies from the command line on the tiny preset, resumed from their state."""

from __future__ import annotations

import json

import pytest

from dyninfer.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")

COMMON = ["--preset", "tiny", "--dataset", "digits", "--eval-images", "200", "--bn-images", "256", "--no-progress"]


def test_evolution_writes_its_front_and_cost_and_a_second_call_resumes(digits_bigsmall, tmp_path, capsys):
    out = tmp_path / "evo"
    assert main(["search", "evolution", *COMMON, "--out", str(out), "--population", "4", "--generations", "2"]) == 0
    res = json.loads((out / "search.json").read_text())
    assert res["strategy"] == "evolution" and res["generations_done"] == 2 and len(res["trials"]) == 8
    front = res["front"]
    assert front and all(0 <= r["accuracy"] <= 1 and r["flops"] > 0 for r in front)
    for a in front:  # nothing on the front is dominated by a trial
        assert not any(t["accuracy"] > a["accuracy"] and t["flops"] < a["flops"] for t in res["trials"])
    cost = res["search_cost"]
    assert cost["evaluated"] >= 1 and cost["cpu_seconds"] > 0 and cost["cpu_hours"] == cost["cpu_seconds"] / 3600
    assert int(res["cardinality"]["pairs"]) > int(res["cardinality"]["single"]) > 0
    assert res["best"]["accuracy"] == max(r["accuracy"] for r in front)
    # the same command again: the journal holds both generations, nothing is evaluated again
    assert main(["search", "evolution", *COMMON, "--out", str(out), "--population", "4", "--generations", "2"]) == 0
    again = json.loads((out / "search.json").read_text())
    assert again["search_cost"]["evaluated_this_call"] == 0 and len(again["trials"]) == 8
    assert again["search_cost"]["evaluated"] == cost["evaluated"]  # the total survives the resume
    assert "best accuracy" in capsys.readouterr().out


def test_a_resumed_search_on_other_scoring_images_is_refused(digits_bigsmall, tmp_path, capsys):
    out = tmp_path / "evo"
    args = ["search", "evolution", "--preset", "tiny", "--dataset", "digits", "--bn-images", "256", "--no-progress",
            "--out", str(out), "--population", "2", "--generations", "1"]
    assert main([*args, "--eval-images", "200"]) == 0
    assert main([*args, "--eval-images", "100"]) == 2
    assert "holds a search with" in capsys.readouterr().err


def test_darts_and_predictor_from_the_command_line(digits_bigsmall, tmp_path):
    out = tmp_path / "darts"
    assert main(["search", "darts", *COMMON, "--out", str(out), "--epochs", "1", "--steps-per-epoch", "3"]) == 0
    res = json.loads((out / "search.json").read_text())
    assert res["epochs_done"] == 1 and len(res["trajectory"]) == 1 and res["best"]["flops"] > 0
    assert res["settings"]["first_order"] and res["settings"]["objective"] == "flops"
    # second order, with the latency of measured blocks as its cost: the scored pair carries its latency
    out = tmp_path / "darts2"
    assert main(["search", "darts", *COMMON, "--out", str(out), "--epochs", "1", "--steps-per-epoch", "1",
                 "--darts-order", "2", "--objective", "latency"]) == 0
    res = json.loads((out / "search.json").read_text())
    assert not res["settings"]["first_order"] and res["settings"]["objective"] == "latency"
    assert res["trajectory"][0]["expected_latency"] > 0 and res["best"]["latency_ms"] > 0
    out = tmp_path / "pred"
    assert main(["search", "predictor", *COMMON, "--out", str(out), "--measure", "8", "--candidates", "50",
                 "--remeasure", "2"]) == 0
    res = json.loads((out / "search.json").read_text())
    assert res["best"] is not None and res["search_cost"]["evaluated"] >= 8
    assert res["search_cost"]["cpu_seconds"] >= res["search_cost"]["cpu_seconds_this_call"] > 0
    cheap = min(r["flops"] for r in res["measured"]) / 1e6
    assert main(["search", "predictor", *COMMON, "--out", str(out), "--measure", "8", "--candidates", "50",
                 "--remeasure", "2", "--budget-mflops", str(cheap * 1.0001)]) == 0
    res = json.loads((out / "search.json").read_text())
    assert res["best"]["flops"] / 1e6 <= cheap * 1.0001


def test_bad_search_settings_are_refused(digits_bigsmall, tmp_path, capsys):
    assert main(["search", "evolution", *COMMON[:4], "--eval-images", "0", "--out", str(tmp_path)]) == 2
    assert "--eval-images must be an integer" in capsys.readouterr().err
    assert main(["search", "predictor", *COMMON, "--objective", "latency", "--out", str(tmp_path)]) == 2
    assert "--objective latency is for evolution and darts" in capsys.readouterr().err
    assert main(["search", "darts", *COMMON, "--darts-order", "3", "--out", str(tmp_path)]) == 2
    assert "--darts-order must be 1 (first-order DARTS) or 2" in capsys.readouterr().err
