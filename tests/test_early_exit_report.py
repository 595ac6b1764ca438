"""End to end: ``dyninfer early-exit`` on digits writes a complete report folder (slow tier: ~30-60 s)."""

from __future__ import annotations

import json

import pytest

from dyninfer.cli import main


@pytest.mark.slow
def test_cli_writes_report(tmp_path):
    out = tmp_path / "report"
    rc = main(["early-exit", "--preset", "tiny", "--dataset", "digits", "--adapt", "1e-2", "0.1:input-norm:2", "--stream-seeds", "2",
               "--select", "1e-2", "0.3:input-norm", "--select-folds", "3", "--subsets", "round", "--out", str(out), "--no-progress"])
    assert rc == 0
    res = json.loads((out / "results.json").read_text())
    assert res["config"]["seed"] == 0 and res["versions"]["torch"]
    assert all(v == {"pred_mismatch": 0, "exit_mismatch": 0} for v in res["table1"]["runtime_matches_trace"].values())
    plain, normed = res["specialisation"][:2]
    sel = res["selection"]["round"]
    assert [r["label"] for r in sel["rows"]] == ["lr 0.01", "lr 0.3 input-norm"] and sel["folds"] == 3
    chosen = [e for e in res["specialisation"] if e["selected"]]
    assert len(chosen) == (sel["chosen"] is not None) and all(e["label"] == sel["chosen"] for e in chosen)
    assert len(res["specialisation"]) == 2 + (sel["chosen"] == "lr 0.3 input-norm")  # lr 0.01 is already in --adapt
    assert normed["config"]["lr_scale"] == "input-norm" and normed["config"]["passes"] == 2
    for tts in (plain, normed):
        assert tts["checks"] == {"backbone_bitwise_unchanged": True, "final_head_bitwise_unchanged": True,
                                 "final_exit_logits_unchanged": True, "heads_restored_after": True}
        assert len(tts["streams"]) == 2 and len(tts["target"]["latency_reduction_per_stream"]) == 2
    assert normed["adapt_log"]["stream"] == 2 * normed["stream_images"]  # two passes over the stream
    kinds = [r["kind"] for r in res["table1"]["rows"]]
    assert kinds.count("fixed exit") == len(res["exit_names"]) and kinds[-1] == "baseline"
    assert len(res["calibration"]) == len(res["exit_names"])
    for name in res["plots"]:
        assert (out / name).stat().st_size > 1000
    md = (out / "REPORT.md").read_text()
    assert "## Table 1" in md and "| Baseline | no heads |" in md and "ECE" in md
    assert "cross-validation on the calibration split" in md and "## Calibration after adaptation" in md


def test_unknown_subset_is_a_clean_error(tmp_path, capsys):
    rc = main(["early-exit", "--preset", "tiny", "--dataset", "digits", "--subsets", "footwear",
               "--out", str(tmp_path / "r"), "--no-progress"])
    assert rc == 2
    assert "no class subset 'footwear'" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()
