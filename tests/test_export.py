"""ONNX export of every family: graphs checked against torch, an onnxruntime runtime that agrees with the torch
runtime and the trace, quantised paths, the single-graph cascade, and the errors for bad folders and inputs."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime")

from dyninfer import CheckpointError, ConfigError, InputError  # noqa: E402
from dyninfer.evaluate.agreement import agreement  # noqa: E402
from dyninfer.export.onnx import export_policy  # noqa: E402
from dyninfer.export.ort_runtime import OrtRuntime, SingleGraphRuntime  # noqa: E402
from dyninfer.methods import create_method  # noqa: E402
from dyninfer.policy import load_policy, save_policy  # noqa: E402
from dyninfer.scores import make_score  # noqa: E402

from conftest import FAMILIES  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

@pytest.fixture(scope="module")
def exported(saved_policies, tmp_path_factory):
    """Every family's saved policy exported once: name -> (method, prep, export folder, policy folder)."""
    out = {}
    for name, (m, p, policy) in saved_policies.items():
        folder = tmp_path_factory.mktemp(name) / "onnx"
        export_policy(policy, folder, sample=p.data.calib.x[:16], log=None)
        out[name] = (m, p, folder, policy)
    return out


def _knobs(method, trace):
    """The fitted knob and two more from the calibration curve (cheap and dear ends excluded)."""
    cv = method.calib_curve_
    idx = np.linspace(0, len(cv) - 1, 4).round().astype(int)[1:3]
    return [method.knob_] + [method._setting(cv, int(j)) for j in idx]


@pytest.mark.parametrize("name", list(FAMILIES))
def test_onnxruntime_agrees_with_torch_and_the_trace(exported, name):
    method, prep, folder, _ = exported[name]
    spec = json.loads((folder / "spec.json").read_text())
    assert all(p["max_abs_diff"] < 1e-4 for p in spec["paths"])
    ort_rt, torch_rt = OrtRuntime(folder), method.runtime(prep.paths)
    assert ort_rt.paths == torch_rt.paths and ort_rt.knob == torch_rt.knob and ort_rt.forced == torch_rt.forced
    ort_rt.force(None)  # an uncertified policy starts forced to its reference path; the knobs are tried here
    torch_rt.force(None)
    for knob in _knobs(method, prep.test):
        ort_rt.knob = torch_rt.knob = knob
        a, b = ort_rt.run(prep.test.x.numpy(), 64), torch_rt.run(prep.test.x, 64)
        assert isinstance(a.pred, np.ndarray) and a.pred.dtype == np.int64
        differ = (a.pred != b.pred.numpy()) | (a.path != b.path.numpy())
        # against the trace, with the samples within float tolerance of the knob counted
        rep = agreement(ort_rt, method, prep.test, batch_size=64, near=True)
        assert rep["mismatch_outside_near"] == 0, rep
        assert rep["near_threshold"] <= 0.01 * prep.test.n, rep
        assert differ.sum() <= rep["near_threshold"]
        np.testing.assert_allclose(a.prob, b.prob.numpy(), atol=1e-4)
        np.testing.assert_allclose(a.flops[~differ], b.flops[~differ])
        assert a.path_counts.sum() >= len(a) and np.all(a.path_seconds >= 0)
    # forced to the reference path: every sample there, the plain network's answers
    ref = len(ort_rt.paths) - 1 if name != "selection" else int(np.argmax(method.flops_))
    ort_rt.force(ref)
    torch_rt.force(ref)
    a, b = ort_rt.run(prep.test.x.numpy(), 64), torch_rt.run(prep.test.x, 64)
    assert np.all(a.path == ref) and np.array_equal(a.pred, b.pred.numpy())
    np.testing.assert_allclose(a.flops, b.flops)


def test_the_knob_and_batch_size_are_checked_as_in_torch(exported):
    for name in FAMILIES:
        method, prep, folder, _ = exported[name]
        rt = OrtRuntime(folder)
        for bad in ("high", [1.0] * 7, float("nan"), None):
            with pytest.raises(ConfigError) as e:
                rt.knob = bad
            with pytest.raises(ConfigError) as f:
                method.check_knob(bad) if name == "selection" else method.runtime(prep.paths).check_knob(bad)
            assert type(e.value) is type(f.value)
        for bs in (0, -1, 2.5, "8"):
            with pytest.raises(InputError, match="batch_size"):
                rt.run(prep.test.x.numpy()[:4], bs)
        with pytest.raises(ConfigError, match="no path"):
            rt.force("nope")


BAD = [
    ("float64 is converted", lambda x: x.astype(np.float64), None),
    ("uint8", lambda x: (x * 255).astype(np.uint8), "floating-point"),
    ("3-D", lambda x: x[0], "4-D batch"),
    ("channels", lambda x: np.repeat(x, 3, 1), "wrong channels"),
    ("size", lambda x: x[:, :, :6, :6], "wrong image size"),
    ("empty", lambda x: x[:0], "empty batch"),
    ("NaN", lambda x: np.where(np.arange(x.size).reshape(x.shape) == 5, np.nan, x).astype(np.float32), "NaN"),
    ("0-255", lambda x: x * 255, "0-255"),
    ("normalised", lambda x: (x - 0.5) / 0.1, "normalised"),
    ("list", lambda x: x.tolist(), "numpy array"),
]


@pytest.mark.parametrize("what, bad, message", BAD, ids=[b[0] for b in BAD])
def test_bad_batches_get_the_torch_runtimes_errors(exported, what, bad, message):
    method, prep, folder, _ = exported["cascade"]
    rt, trt = OrtRuntime(folder), method.runtime(prep.paths)
    x = prep.test.x[:8].numpy()
    if message is None:
        assert np.array_equal(rt(bad(x)).pred, rt(x).pred)
        return
    for call in (rt, lambda b: rt.run(b, 4)):
        with pytest.raises(InputError, match=message):
            call(bad(x))
    if what != "list":  # the torch runtime says the same about the same tensor
        t = torch.from_numpy(np.ascontiguousarray(bad(x)))
        with pytest.raises(InputError) as e:
            trt(t)
        with pytest.raises(InputError) as f:
            rt(bad(x))
        assert str(e.value).split(": ", 1)[1].split("; convert")[0] == str(f.value).split(": ", 1)[1].split("; convert")[0]


def _copy(folder, tmp_path):
    import shutil

    dst = tmp_path / "copy"
    shutil.copytree(folder, dst)
    return dst


def test_corrupted_missing_and_other_version_exports_name_the_file(exported, tmp_path):
    _, _, folder, _ = exported["early-exit"]
    d = _copy(folder, tmp_path)
    graph = d / "paths" / "column1.onnx"
    data = bytearray(graph.read_bytes())
    data[len(data) // 2] ^= 0xFF
    graph.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"column1\.onnx is corrupt"):
        OrtRuntime(d)
    graph.unlink()
    with pytest.raises(CheckpointError, match=r"column1\.onnx is missing"):
        OrtRuntime(d)
    d2 = _copy(folder, tmp_path / "b")
    text = (d2 / "spec.json").read_text()
    (d2 / "spec.json").write_text(text.replace('"version": 1', '"version": 2'))
    with pytest.raises(CheckpointError, match="checksum"):
        OrtRuntime(d2)
    import hashlib

    new = text.replace('"version": 1', '"version": 2')
    (d2 / "spec.json").write_text(new)
    (d2 / "spec.json.sha256").write_text(hashlib.sha256(new.encode()).hexdigest())
    with pytest.raises(CheckpointError, match="version 2 of the export format"):
        OrtRuntime(d2)
    with pytest.raises(CheckpointError, match="spec.json missing"):
        OrtRuntime(tmp_path / "nowhere")


def test_the_runtime_needs_neither_torch_nor_dyninfers_torch_modules(exported, tmp_path):
    _, prep, folder, _ = exported["cascade"]
    np.save(tmp_path / "x.npy", prep.test.x[:50].numpy())
    code = (
        "import sys; sys.modules['torch'] = None\n"  # any import of torch now fails
        "import numpy as np\n"
        "from dyninfer.export.ort_runtime import OrtRuntime\n"
        f"rt = OrtRuntime({str(folder)!r})\n"
        f"r = rt.run(np.load({str(tmp_path / 'x.npy')!r}), 16)\n"
        "assert 'torch' not in [m for m in sys.modules if sys.modules[m] is not None]\n"
        "print(','.join(map(str, r.pred)))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert out.returncode == 0, out.stderr[-2000:]
    method, *_ = exported["cascade"]
    want = method.runtime(prep.paths).run(prep.test.x[:50], 16).pred.numpy()
    assert [int(v) for v in out.stdout.strip().split(",")] == want.tolist()


def test_single_graph_cascade_agrees_with_the_per_path_runtime(exported):
    method, prep, folder, _ = exported["cascade"]
    single, per_path = SingleGraphRuntime(folder), OrtRuntime(folder)
    for knob in _knobs(method, prep.test):
        single.knob = per_path.knob = knob
        a, b = single.run(prep.test.x.numpy(), 64), per_path.run(prep.test.x.numpy(), 64)
        assert (a.path != b.path).sum() <= 2 and (a.pred != b.pred).sum() <= 2
        assert 0 < a.path_counts[0] == len(a)
    with pytest.raises(CheckpointError, match="no single-graph export"):
        SingleGraphRuntime(exported["early-exit"][2])


@pytest.mark.parametrize("name", ["energy", "max_softmax", "margin", "entropy"])
def test_every_confidence_score_exports_exactly(name, tmp_path):
    from dyninfer.export.onnx import _ScoreGraph, export_graph

    z = torch.randn(64, 10) * 3
    diff = export_graph(_ScoreGraph(make_score(name), 10), (z,), tmp_path / "s.onnx", ["logits"], ["score"])
    assert diff < 1e-5


def test_the_random_router_is_refused_with_a_reason(digits_prepared, tmp_path):
    p = digits_prepared
    c = create_method("cascade", scores=("random",), tolerance=0.05).fit(p.calib)
    save_policy(tmp_path / "policy", c, p.paths)
    with pytest.raises(ConfigError, match="confidence score"):
        export_policy(tmp_path / "policy", tmp_path / "onnx", log=None)
    assert not (tmp_path / "onnx").exists()


def test_quantised_students_are_paths_of_a_cascade(digits_prepared, tmp_path):
    from dyninfer.export.quantize import quantized_pool
    from dyninfer.paths import measure_costs

    p = digits_prepared
    pool = quantized_pool(p.paths, ["cnn-s"], ["int8-dynamic", "int8-static"], tmp_path / "q",
                          calib_images=p.data.calib.x, log=None)
    assert pool.names == ["cnn-s@int8-dynamic", "cnn-s@int8-static", "cnn-s", "cnn-m"]
    costs = measure_costs(pool, p.data.calib.x[:32], batches=(1, 32), rounds=1, repeats=2, min_time_s=0, log=None)
    assert costs[0].flops == costs[2].flops and costs[0].bytes < costs[2].bytes  # same work, fewer bytes
    calib, test = pool.record(p.data.calib, costs=costs), pool.record(p.data.test, costs=costs)
    assert abs(test.accuracy(1) - test.accuracy(2)) < 0.1  # static INT8 close to float32
    c = create_method("cascade", stages=["cnn-s@int8-static", "cnn-m"], scores=("energy",), tolerance=0.03).fit(calib)
    res, sim = c.runtime(pool).run(p.data.test.x, 64), c.simulate(test)
    assert np.array_equal(res.pred.numpy(), sim.pred) and np.array_equal(res.path.numpy(), sim.path)
    # saved with the policy (graph copied, checksummed), reloaded, exported as it was traced
    save_policy(tmp_path / "policy", c, pool)
    back = load_policy(tmp_path / "policy")
    assert type(back.paths.models["cnn-s@int8-static"]).__name__ == "OnnxModule"
    export_policy(back, tmp_path / "onnx", log=None)
    rep = agreement(OrtRuntime(tmp_path / "onnx"), c, test, batch_size=64, near=True)
    assert rep["mismatch_outside_near"] == 0 and rep["path_mismatch"] <= rep["near_threshold"]
    graph = tmp_path / "policy" / "paths" / "cnn-s@int8-static.onnx"
    graph.write_bytes(graph.read_bytes()[:-10])
    with pytest.raises(CheckpointError, match="cnn-s@int8-static.onnx is missing or corrupt"):
        load_policy(tmp_path / "policy")
    with pytest.raises(ConfigError, match="unknown quantisation mode"):
        quantized_pool(p.paths, ["cnn-s"], ["int4"], tmp_path / "q2", log=None)
    with pytest.raises(ConfigError, match="calibration images"):
        quantized_pool(p.paths, ["cnn-s"], ["int8-static"], tmp_path / "q3", log=None)


def test_the_export_command(exported, tmp_path, capsys):
    from dyninfer.cli import main

    _, _, _, policy = exported["selection"]
    assert main(["export", str(policy), "--format", "onnx", "--out", str(tmp_path / "o")]) == 0
    spec = json.loads((tmp_path / "o" / "spec.json").read_text())
    assert spec["executor"] == "upfront" and spec["decision"]["rule"] == "biased_argmax"
    assert set(spec["files"]) == {"decision.onnx", *[f"paths/{n}.onnx" for n in ("cnn-s", "cnn-m")]}
    assert main(["export", str(tmp_path / "missing"), "--out", str(tmp_path / "o2")]) == 2
    assert "no saved policy" in capsys.readouterr().err and not (tmp_path / "o2").exists()


def test_subnets_of_a_supernet_export_as_paths(digits, tmp_path):
    """The static subnets ``get_active_subnet`` returns are what is exported and run."""
    import test_paths  # registers the toy supernet backbone

    from dyninfer.models import create_model
    from dyninfer.paths import SupernetPaths

    torch.manual_seed(0)
    net = create_model("test-toy-supernet", digits.spec).eval()
    paths = SupernetPaths(net, {f"w{w}": {"width": w} for w in test_paths.WIDTHS})
    calib, test = paths.record(digits.calib), paths.record(digits.test)
    c = create_method("cascade", scores=("max_softmax",), tolerance=0.5).fit(calib)
    save_policy(tmp_path / "policy", c, paths)
    export_policy(tmp_path / "policy", tmp_path / "onnx", sample=digits.calib.x[:16], log=None)
    spec = json.loads((tmp_path / "onnx" / "spec.json").read_text())
    assert spec["kind"] == "supernet" and [p["name"] for p in spec["paths"]] == c.stages_
    rt = OrtRuntime(tmp_path / "onnx")
    rt.force(None)
    rep = agreement(rt, c, test, knob=c.knob_, batch_size=64, near=True)
    assert rep["mismatch_outside_near"] == 0 and rep["near_threshold"] <= 0.01 * test.n
