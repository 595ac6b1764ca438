"""The methods of other tasks (EBJR's regression and detection cascades) through the shared protocol and pipeline:
``dyninfer run cascade-regression|cascade-detection`` end to end on the tiny preset, the saved policy reloaded and
run, and the conformance checks every classifier method passes (tests/test_conformance.py), on each task's record."""

from __future__ import annotations

import copy
import json
import math

import numpy as np
import pytest
import torch

from dyninfer import ConfigError, InputError, NotFittedError
from dyninfer.compare import CompareConfig
from dyninfer.methods import METHODS, create_method, load_method
from dyninfer.methods.cascade import DetectionCascade, RegressionCascade, RegressionOutputs
from dyninfer.pipeline import RunConfig, run
from dyninfer.policy import load_policy

pytestmark = pytest.mark.usefixtures("one_thread")

TASK_METHODS = {"cascade-regression": ("regression", "digits"), "cascade-detection": ("detection", "fashion-mnist")}


def _record(name: str, policy):
    """(calibration record, test record, test inputs) of a reloaded policy's two models on the tiny preset's data."""
    from dyninfer.harness import load_data
    from dyninfer.presets import get_preset

    preset = get_preset("tiny")
    if name == "cascade-regression":
        from dyninfer.data.rotated import rotation_splits

        data = load_data("digits", preset, seed=0, log=lambda s: None)
        splits = rotation_splits(data, max_angle=preset.regression.max_angle, seed=0)
        s, t = policy.paths.models["student"], policy.paths.models["teacher"]
        rec = {k: RegressionOutputs.record(s, t, v, batch_size=preset.regression.batch) for k, v in splits.items()}
        return rec["calib"], rec["test"], splits["test"].x
    from dyninfer.data.canvas import load_canvases
    from dyninfer.methods.cascade.detection import record_pair

    data = load_canvases(preset.detection.canvas, seed=0, log=lambda s: None)
    s, t = policy.paths.models["student"], policy.paths.models["teacher"]
    rec = {k: record_pair(s, t, data.split(k).x, data.split(k).targets(), batch_size=16) for k in ("calib", "test")}
    return rec["calib"], rec["test"], data.test.x


@pytest.fixture(scope="module", params=list(TASK_METHODS))
def task_run(request, tmp_path_factory):
    """One ``dyninfer run`` of the method on the tiny preset: (name, run folder, log, reloaded policy, records)."""
    if request.param == "cascade-detection":
        pytest.importorskip("torchmetrics")
    name = request.param
    folder = tmp_path_factory.mktemp(name) / "run"
    logs: list[str] = []
    cfg = RunConfig(method=name, preset="tiny", dataset=TASK_METHODS[name][1], threads=1, progress=False)
    assert run(cfg, folder, log=logs.append, command=f"dyninfer run {name}") == folder
    policy = load_policy(folder)
    return name, folder, logs, policy, _record(name, policy)


def test_task_methods_are_registered_beside_the_classifiers():
    # every method of another task is covered here, as every classifier is by tests/test_conformance.py
    assert set(TASK_METHODS) == {n for n in METHODS.names() if METHODS.get(n).task != "classification"}
    for name, (task, _) in TASK_METHODS.items():
        assert METHODS.get(name).task == task
    assert {n for n in METHODS.names() if METHODS.get(n).task == "classification"} >= {"cascade", "early-exit"}
    with pytest.raises(ConfigError, match="dyninfer run cascade-regression"):
        CompareConfig(methods=["cascade", "cascade-regression"])


def test_the_run_writes_the_shared_report_and_a_policy(task_run):
    name, folder, logs, policy, _ = task_run
    res = json.loads((folder / "results.json").read_text())
    assert res["method"] == name and res["params"] == policy.method.get_params()
    assert res["provenance"]["command"] == f"dyninfer run {name}" and res["preset"] == "tiny"
    op = res["operating_point"]
    assert op["test_mean_flops"] >= op["student_flops"] - 1e-6
    assert op["test_mean_flops"] <= op["student_flops"] + op["teacher_flops"] + 1e-6
    assert res["agreement"]["route_mismatch"] == 0
    tm = res["timing"]
    assert tm["ms"]["runtime"] > 0 and tm["ms"]["teacher"] > 0
    assert tm["speedup"] == pytest.approx(tm["ms"]["teacher"] / tm["ms"]["runtime"])
    assert res["energy"]["runtime"]["joules_per_image"] > 0
    report = (folder / "report.md").read_text()
    for title in ("## Operating point", "## Runtime", "## Routers at their calibrated points"):
        assert title in report
    assert any(p.suffix == ".png" for p in folder.iterdir())
    assert logs[-1].startswith(f"[done] {name}")
    if name == "cascade-detection":  # a router's predicted time: the student (unless the teacher runs alone) + forwarded
        per = {k: v / 1e3 for k, v in tm["ms_per_image"].items()}
        for r, v in res["routers"].items():
            alone = v["test_mean_flops"] == pytest.approx(op["teacher_flops"]) and v["test_share_forwarded"] == 1.0
            student = 0.0 if alone else per["student"]
            assert v["predicted_seconds_per_image"] == pytest.approx(student + v["test_share_forwarded"] * per["teacher"])
    # the saved policy is the fitted method on its two models
    assert type(policy.method).name == name and policy.info["task"] == TASK_METHODS[name][0]
    assert policy.paths.names == ["student", "teacher"]
    thr = op["threshold"]
    assert policy.method.knob_ == (float(thr) if isinstance(thr, str) else pytest.approx(thr))


def test_the_reloaded_policy_runs_as_it_simulates(task_run):
    name, _, _, policy, (calib, test, x) = task_run
    method = policy.method
    knobs = [method.knob_, -math.inf, math.inf]
    if name == "cascade-regression":
        knobs += np.quantile(method.scores(test), [0.25, 0.75]).tolist()
    else:
        s = np.sort(method.score(test))
        knobs += [float((s[len(s) // 3] + s[len(s) // 3 + 1]) / 2)]
    for k in knobs:
        sim = method.simulate(test, k)
        rt = method.runtime(policy.paths, knob=k)
        if name == "cascade-regression":
            parts = [rt(x[i:i + 64]) for i in range(0, x.shape[0], 64)]
            np.testing.assert_array_equal(np.concatenate([p.answered_by for p in parts]), sim.answered_by)
            np.testing.assert_allclose(np.concatenate([p.prediction for p in parts]), sim.prediction, atol=1e-4)
        else:
            parts = [rt(x[i:i + 16]) for i in range(0, x.shape[0], 16)]
            np.testing.assert_array_equal(np.concatenate([p.keep.numpy() for p in parts]), sim.keep)


def test_conformance_on_the_task_record(task_run, tmp_path):
    """The checks of tests/test_conformance.py, on the task's record instead of a trace."""
    name, _, _, policy, (calib, test, x) = task_run
    params = {"tolerance": 0.05, **({"grid": 4} if name == "cascade-detection" else {})}
    fresh = create_method(name, **params)
    assert all(fresh.get_params()[k] is v for k, v in params.items())
    assert set(fresh.get_params()) == set(type(fresh).param_names())
    with pytest.raises(NotFittedError, match="fit"):
        fresh.simulate(test)
    with pytest.raises(NotFittedError):
        fresh.runtime(policy.paths)
    with pytest.raises(NotFittedError):
        fresh.save(tmp_path / "never")
    before = copy.deepcopy(vars(fresh))
    fitted = fresh.fit(calib)
    assert fitted is fresh
    added = set(vars(fresh)) - set(before)
    assert added and all(k.endswith("_") for k in added), sorted(added)
    # a cheaper knob (a lower threshold) never costs more
    scores = fresh.scores(test) if name == "cascade-regression" else fresh.score(test)
    knobs = sorted({-math.inf, *np.quantile(scores, [0.1, 0.5, 0.9]).tolist(), math.inf})
    costs = [fresh.simulate(test, k).mean_flops for k in knobs]
    assert all(a <= b + 1e-6 for a, b in zip(costs, costs[1:])), costs
    # the knob maps from a FLOPs budget through the calibration curve, as for every method
    budget = float(np.median(fresh.calib_curve_.cost))
    k = fresh.knob_for(budget_flops=budget)
    assert fresh.simulate(calib, k).mean_flops <= budget * (1 + 1e-9)
    # save / load: the same decisions
    fresh.save(tmp_path / "m")
    back = load_method(tmp_path / "m")
    assert type(back) is type(fresh) and back.knob_ == fresh.knob_ and back.get_params() == fresh.get_params()
    if name == "cascade-regression":
        np.testing.assert_array_equal(back.simulate(test).prediction, fresh.simulate(test).prediction)
    else:
        np.testing.assert_array_equal(back.simulate(test).keep, fresh.simulate(test).keep)
    with pytest.raises(ConfigError, match="threshold"):
        fresh.simulate(test, "all")


@pytest.mark.parametrize("bad, message", [
    (lambda x: x * 255, "0-255 pixels"),
    (lambda x: x[:0], "empty batch"),
    (lambda x: x.masked_fill(torch.zeros_like(x, dtype=torch.bool).index_fill_(0, torch.tensor([0]), True), float("nan")),
     "NaN"),
    (lambda x: (x * 255).to(torch.uint8), "uint8"),
    (lambda x: x[0], "4-D batch"),
    (lambda x: x.numpy(), "torch.Tensor"),
])
def test_bad_batch_raises_the_library_error(task_run, bad, message):
    _, _, _, policy, (_, _, x) = task_run
    with pytest.raises(InputError, match=message):
        policy.runtime()(bad(x[:4].clone()))


def test_a_router_without_a_runtime_is_refused_before_any_work(tmp_path):
    for name, router in (("cascade-regression", "random"), ("cascade-detection", "random")):
        cfg = RunConfig(method=name, preset="tiny", dataset="digits", params={"router": router}, progress=False)
        with pytest.raises(ConfigError, match="simulation|per call"):
            run(cfg, tmp_path / name, log=lambda s: None)
        assert not (tmp_path / name).exists()


def test_routed_cascades_need_two_models(task_run):
    _, _, _, policy, _ = task_run
    with pytest.raises(ConfigError, match="two models"):
        policy.method.runtime([policy.paths.models["student"]])
    assert isinstance(policy.method, (RegressionCascade, DetectionCascade))


def test_serving_and_onnx_export_refuse_a_task_policy_with_what_to_do(task_run, tmp_path):
    _, folder, _, policy, _ = task_run
    from dyninfer.export.onnx import export_policy
    from dyninfer.serve.service import PolicyService

    with pytest.raises(ConfigError, match="load_policy"):
        PolicyService(policy)
    with pytest.raises(ConfigError, match="torch.onnx.export"):
        export_policy(folder, tmp_path / "onnx")
    assert not (tmp_path / "onnx").exists()


def test_a_fitted_point_not_cheaper_than_the_teacher_runs_the_teacher_alone(task_run):
    name, _, _, policy, (calib, test, x) = task_run
    method = copy.deepcopy(policy.method)
    method.teacher_alone_ = True
    sim = method.simulate(test)
    rt = method.runtime(policy.paths)
    teacher = policy.paths.models["teacher"]
    if name == "cascade-regression":
        assert (sim.answered_by == 1).all() and sim.mean_flops == pytest.approx(test.costs[1])
        np.testing.assert_array_equal(sim.prediction, test.teacher[:, 0])
        out = rt(x[:32])
        assert (out.answered_by == 1).all() and out.flops == pytest.approx(np.full(32, test.costs[1]))
        np.testing.assert_allclose(out.prediction, teacher(x[:32])[:, 0].detach().numpy(), atol=1e-5)
    else:
        assert not sim.keep.any() and sim.mean_flops == pytest.approx(test.flops[1])
        out = rt(x[:8])
        assert not out.keep.any()
        want = teacher.detect(x[:8], energy=False).detections
        assert all(torch.equal(a["boxes"], b["boxes"]) for a, b in zip(out.detections, want))
    # an explicit knob runs the routed cascade: the student runs on every input
    assert method.simulate(test, method.knob_).mean_flops >= (test.costs[0] if name == "cascade-regression"
                                                              else test.flops[0]) - 1e-6


def test_figure_settings_are_checked_before_any_work(tmp_path):
    for name, router in (("cascade-regression", "count"), ("cascade-detection", "variance")):
        cfg = RunConfig(method=name, preset="tiny", dataset="digits", figures={"routers": [router]}, progress=False)
        with pytest.raises(ConfigError, match="unknown routers"):
            run(cfg, tmp_path / name, log=lambda s: None)
        assert not (tmp_path / name).exists()
