"""Deployment of the big/little pair (NAS paper 4.6) on the tiny digits pair: the learned-router policy exported to
ONNX agrees with the torch runtime, its FP16/INT8 variants run the dynamic system from their own folders and are
smaller, every variant gets a measured row, and bad settings are refused before anything is written."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("onnxruntime")

from dyninfer import ConfigError, NotFittedError  # noqa: E402
from dyninfer.export.ort_runtime import OrtRuntime  # noqa: E402
from dyninfer.methods import create_method  # noqa: E402
from dyninfer.methods.bigsmall.deploy import MODES, deploy_pair  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

VARIANTS = ["torch", "onnx-fp32", "onnx-fp16", "onnx-int8-dynamic", "onnx-int8-static"]
MAX_NEAR_TIES = 2  # of 359 test images: router scores within 1e-4 of the threshold may route differently


@pytest.fixture(scope="module")
def deployed(digits_bigsmall, tmp_path_factory):
    """The learned router (its keep score is a second output of the little graph) deployed in every mode."""
    prep = digits_bigsmall
    m = create_method("bigsmall", scores=("learned",), tolerance=0.05).fit(prep.calib)
    # the policy under test routes both ways: its threshold is the median keep score on calibration (the fitted
    # one may keep every image, depending on how the tiny co-training came out)
    assert not m.operating_point_.runs_reference
    m.knob_ = m.check_knob((float(np.median(prep.calib.aux["gate"][0, :, 0])),))
    folder = tmp_path_factory.mktemp("deploy")
    out = deploy_pair(m, prep.paths, prep.data.test, folder, calib_images=prep.data.calib.x, serving_batch=128,
                      rounds=1, batch1_samples=8, threads=1, log=None)
    return m, prep, folder, out


def test_fp32_onnx_predicts_what_the_torch_runtime_predicts(deployed):
    m, prep, folder, out = deployed
    check = out["fp32_check"]
    assert check["n"] == prep.data.test.x.shape[0] == 359
    assert check["mismatch_outside_near"] == 0 and check["near_threshold"] <= MAX_NEAR_TIES, check
    # independently: the exported folder on onnxruntime against the method's torch runtime
    rt = OrtRuntime(folder / "onnx" / "fp32")
    assert rt.paths == ["little", "big"] and rt.spec["kind"] == "bigsmall"
    little = rt.spec["paths"][0]
    assert little["emits_score"] and little["outputs"] == ["score", "logits"] and rt.spec["score"]["emitted"]
    a = rt.run(prep.data.test.x.numpy(), 64)
    b = m.runtime(prep.paths).run(prep.data.test.x, 64)
    assert (a.pred != b.pred.numpy()).sum() <= check["near_threshold"]
    assert (a.path != b.path.numpy()).sum() <= check["near_threshold"]
    assert 0 < (a.path == 0).mean() < 1  # both subnets answer some images


def test_every_variant_has_a_measured_row(deployed):
    m, prep, folder, out = deployed
    rows = {r["variant"]: r for r in out["rows"]}
    assert [r["variant"] for r in out["rows"]] == VARIANTS
    y = prep.data.test.y.numpy()
    sim = m.simulate(prep.test)  # the torch row is the fitted operating point
    assert rows["torch"]["top1"] == pytest.approx(float((sim.pred == y).mean()))
    assert rows["torch"]["exit_rate"] == pytest.approx(float((sim.path == 0).mean()))
    near = out["fp32_check"]["near_threshold"] / 359
    assert abs(rows["onnx-fp32"]["top1"] - rows["torch"]["top1"]) <= near
    assert rows["onnx-fp32"]["agreement"] >= 1 - near
    for v in VARIANTS:
        r = rows[v]
        assert r["error"] is None, r
        assert r["batch1_ms"] > 0 and r["throughput_ips"] > 0 and r["clock"] == "cpu"
        assert 0 < r["exit_rate"] < 1 and r["bytes"] > 0
        assert r["agreement"] >= 0.8 and r["top1"] >= rows["torch"]["top1"] - 0.1  # quantised, still close
    # JSON-able, written beside the table; the table has a line per variant
    assert json.loads((folder / "deploy.json").read_text()) == out == json.loads(json.dumps(out))
    lines = out["table"].strip().splitlines()
    assert len(lines) == 2 + len(VARIANTS) and all(f"| {v} |" in out["table"] for v in VARIANTS)
    assert (folder / "deploy.md").read_text() == out["table"]


def test_int8_graphs_are_smaller_and_run_from_their_own_folders(deployed):
    m, prep, folder, out = deployed
    rows = {r["variant"]: r for r in out["rows"]}
    fp32 = rows["onnx-fp32"]
    for mode in ("int8-dynamic", "int8-static"):
        r = rows[f"onnx-{mode}"]
        assert r["bytes"] < fp32["bytes"]
        assert all(r["graph_bytes"][p] < fp32["graph_bytes"][p] for p in ("little", "big"))
    assert rows["onnx-fp16"]["bytes"] < fp32["bytes"]
    # each variant is a complete export: its graphs in its precision, rerun to the row's figures
    rt = OrtRuntime(out["folders"]["int8-static"])
    assert [p["precision"] for p in rt.spec["paths"]] == ["int8-static"] * 2 and rt.knob == tuple(out["knob"])
    res = rt.run(prep.data.test.x.numpy(), 128)
    assert float((res.pred == prep.data.test.y.numpy()).mean()) == pytest.approx(rows["onnx-int8-static"]["top1"])
    assert float((res.path == 0).mean()) == pytest.approx(rows["onnx-int8-static"]["exit_rate"])


def test_bad_modes_calibration_and_unfitted_methods_are_refused(digits_bigsmall, tmp_path):
    prep = digits_bigsmall
    m = create_method("bigsmall", scores=("confidence",), tolerance=0.05).fit(prep.calib)
    test = prep.data.test
    with pytest.raises(ConfigError, match="int4") as e:
        deploy_pair(m, prep.paths, test, tmp_path / "a", modes=("fp32", "int4"), log=None)
    assert all(mode in str(e.value) for mode in MODES)
    with pytest.raises(ConfigError, match="calibration images"):
        deploy_pair(m, prep.paths, test, tmp_path / "b", modes=("int8-static",), log=None)
    with pytest.raises(ConfigError, match="non-empty"):
        deploy_pair(m, prep.paths, test, tmp_path / "c", modes=(), log=None)
    with pytest.raises(ConfigError, match="serving_batch"):
        deploy_pair(m, prep.paths, test, tmp_path / "d", modes=("fp32",), serving_batch=0, log=None)
    with pytest.raises(NotFittedError, match="not fitted"):
        deploy_pair(create_method("bigsmall"), prep.paths, test, tmp_path / "e", log=None)
    assert not any((tmp_path / s).exists() for s in "abcde")  # refused before anything is written
