"""EBJR for regression on digits: the rotation task, the energy regressor's Monte Carlo free energy, the routed
cascade's calibration, simulation = runtime, storage, and refused inputs."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from dyninfer.data.rotated import check_targets, rotation_splits, rotation_task
from dyninfer.errors import CheckpointError, ConfigError, DataError, NotFittedError
from dyninfer.methods import load_method
from dyninfer.methods.cascade import RegressionCascade, RegressionOutputs
from dyninfer.models import create_model
from dyninfer.models.regression import EnergyRegressor
from dyninfer.runtime.cost import count_flops
from dyninfer.train.recipe import Recipe
from dyninfer.train.regression import fit_regressor

ANGLE = 45.0


@pytest.fixture(scope="module")
def models(digits, tmp_path_factory):
    """A cnn-s student and a cnn-m teacher trained briefly on the rotation task (a few seconds)."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("ckpt")
    recipe = Recipe(epochs=6, batch_size=64, hflip=False, shift=1)
    kw: dict = {}
    student, _ = fit_regressor("cnn-s", digits, recipe, max_angle=ANGLE, model_kwargs=kw, root=root, log=lambda s: None)
    teacher, _ = fit_regressor("cnn-m", digits, recipe, max_angle=ANGLE, model_kwargs=kw, root=root, log=lambda s: None)
    return student, teacher


@pytest.fixture(scope="module")
def outputs(digits, models):
    splits = rotation_splits(digits, max_angle=ANGLE, seed=0)
    return {k: RegressionOutputs.record(*models, s, batch_size=64) for k, s in splits.items()}, splits


def test_rotation_task_is_deterministic_and_in_range(digits):
    a, b = rotation_task(digits.calib, max_angle=ANGLE, seed=3), rotation_task(digits.calib, max_angle=ANGLE, seed=3)
    assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y)
    assert a.y.dtype == torch.float32 and float(a.y.abs().max()) <= ANGLE
    assert not torch.equal(a.y, rotation_task(digits.calib, max_angle=ANGLE, seed=4).y)
    zero = rotation_task(digits.calib, max_angle=1e-6, seed=0)  # (almost) no rotation: the images are unchanged
    assert torch.allclose(zero.x, digits.calib.x, atol=1e-4)


def test_nan_targets_are_refused_naming_the_rows(outputs):
    with pytest.raises(DataError, match=r"row\(s\) 1, 4"):
        check_targets(np.array([0.0, np.nan, 2.0, 3.0, np.inf]))
    out, _ = outputs
    o = out["calib"]
    y = o.targets.copy()
    y[7] = np.nan
    with pytest.raises(DataError, match=r"row\(s\) 7\b"):
        RegressionOutputs(o.student, o.teacher, y, o.costs)


@pytest.mark.parametrize("trained", [False, True])
def test_free_energy_matches_a_numerical_integral(digits, models, trained):
    torch.manual_seed(1)
    model = models[0] if trained else create_model("energy-regressor", digits.spec, base="cnn-s",
                                                   target_range=(-ANGLE, ANGLE)).eval()
    assert isinstance(model, EnergyRegressor)
    x = rotation_task(digits.test, max_angle=ANGLE, seed=5).x[:16]
    with torch.no_grad():
        out = model(x)
        assert torch.equal(out, model(x))  # fixed draws: deterministic
        grid = torch.linspace(-ANGLE, ANGLE, 20001).expand(x.shape[0], -1)
        s = model.energy(x, grid).double()  # (16, G)
    log_z = torch.logsumexp(s, 1) + math.log(grid[0, 1] - grid[0, 0])  # Riemann sum; the grid is fine enough
    rel = torch.exp(out[:, 1].double() - log_z) - 1  # relative error of the estimated normaliser
    assert float(rel.abs().max()) < 0.05, rel


def test_energy_head_is_counted(digits, models):
    student = models[0]
    backbone = create_model("cnn-s", digits.spec)
    flops = count_flops(student, digits.spec.input_shape)
    head = student.samples * 2 * (student.energy_y.in_features * 32 + 32 * 32 + 32)
    assert flops >= count_flops(backbone, digits.spec.input_shape) - 2 * 48 * 10 + head


def test_fitted_threshold_meets_the_tolerance_on_calibration(outputs):
    out, _ = outputs
    calib = out["calib"]
    for router in ("energy", "variance", "random"):
        c = RegressionCascade(router=router, tolerance=0.02).fit(calib)
        o = c.simulate(calib, c.knob_)  # the routed cascade at the chosen threshold
        assert o.mae <= calib.mae("teacher") * 1.02 + 1e-6
        assert c.teacher_alone_ == (c.calib_flops_ >= calib.costs[1])
        if c.teacher_alone_:  # not cheaper than the teacher: the fitted policy runs the teacher alone
            assert c.simulate(calib).mean_flops == pytest.approx(calib.costs[1])
        assert o.mae == pytest.approx(c.calib_mae_, rel=1e-6)
        assert o.mean_flops == pytest.approx(c.calib_flops_, rel=1e-9)
        curve = c.curve(calib)  # no cheaper point on the curve meets the target
        cheaper = curve.cost < c.calib_flops_ - 1e-6
        assert not np.any(-curve.accuracy[cheaper] <= c.teacher_calib_mae_ * 1.02 - 1e-9)


def test_runtime_predictions_equal_the_simulation(models, outputs):
    out, splits = outputs
    calib, x = out["calib"], splits["calib"].x
    cascade = RegressionCascade(router="energy").fit(calib)
    scores = cascade.scores(calib)
    for t in [cascade.knob_, *np.quantile(scores, [0.0, 0.3, 0.7]).tolist(), math.inf]:
        sim = cascade.simulate(calib, t)
        run = cascade.runtime(models, knob=t, costs=calib.costs)
        parts = [run(x[i:i + 64]) for i in range(0, x.shape[0], 64)]  # the batches the outputs were recorded in
        by = np.concatenate([p.answered_by for p in parts])
        np.testing.assert_array_equal(by, sim.answered_by)
        np.testing.assert_allclose(np.concatenate([p.prediction for p in parts]), sim.prediction, rtol=0, atol=1e-4)
        np.testing.assert_array_equal(np.concatenate([p.flops for p in parts]), sim.flops)


def test_save_load_round_trip(outputs, tmp_path):
    out, _ = outputs
    for router in ("energy", "variance"):
        c = RegressionCascade(router=router, tolerance=0.03, seed=2).fit(out["calib"])
        c.save(tmp_path / router)
        d = load_method(tmp_path / router)
        assert isinstance(d, RegressionCascade)
        assert (d.router, d.tolerance, d.seed, d.knob_) == (router, 0.03, 2, c.knob_)
        assert (d.calib_mae_, d.student_share_) == (c.calib_mae_, c.student_share_)
        np.testing.assert_array_equal(d.calib_curve_.cost, c.calib_curve_.cost)
        np.testing.assert_array_equal(d.simulate(out["test"]).prediction, c.simulate(out["test"]).prediction)
    inf = RegressionCascade().fit(out["calib"])
    inf.knob_ = math.inf
    inf.save(tmp_path / "inf")
    assert RegressionCascade.load(tmp_path / "inf").knob_ == math.inf
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "method.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="corrupt"):
        RegressionCascade.load(tmp_path / "bad")


def test_bad_settings_are_refused(outputs, models):
    with pytest.raises(ConfigError, match="router"):
        RegressionCascade(router="entropy")
    with pytest.raises(ConfigError, match="tolerance"):
        RegressionCascade(tolerance=-0.1)
    with pytest.raises(NotFittedError):
        RegressionCascade().simulate(outputs[0]["calib"])
    with pytest.raises(ConfigError, match="simulation"):
        RegressionCascade(router="random").fit(outputs[0]["calib"]).runtime(models)
    with pytest.raises(ConfigError, match="two models"):
        RegressionCascade().fit(outputs[0]["calib"]).runtime(models[:1])
    with pytest.raises(ConfigError, match="threshold"):
        RegressionCascade().fit(outputs[0]["calib"]).simulate(outputs[0]["calib"], "high")
    with pytest.raises(ConfigError, match="hflip"):
        fit_regressor("cnn-s", None, Recipe(epochs=1), log=lambda s: None)  # type: ignore[arg-type]
