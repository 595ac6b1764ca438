"""One conformance test over every registered classifier method, on the `tiny` preset (scikit-learn's digits).

(The methods of other tasks, EBJR's regression and detection cascades, take their task's record instead of a
trace: ``tests/test_tasks.py`` runs the same checks over them.)

For each method: settings are stored unchanged; using it before ``fit`` raises the library's error;
``fit`` returns self and adds only ``_`` attributes; the runtime equals ``simulate`` (predictions,
paths, mean FLOPs) at several knob values; a cheaper knob never costs more; ``save``/``load``
round-trips to identical predictions; a bad batch raises the library's error with a clear message.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from dyninfer import DyninferError, InputError, NotFittedError
from dyninfer.methods import METHODS, create_method, load_method

# Settings that keep each method fast on digits (and certifiable on its 300 calibration images: with so few,
# no loss below a few points can be certified); every other setting keeps its default.
FAST = {"selection": {"lambdas": (0.6, 0.9), "policy": {"epochs": 5}, "tolerance": 0.05},
        "cascade": {"tolerance": 0.05}, "early-exit": {"tolerance": 0.05}, "slimmable": {"tolerance": 0.05},
        "slimmable-bins": {"tolerance": 0.05}, "cascade-specialised": {"classes": (1, 4, 7), "tolerance": 0.05},
        "bigsmall": {"tolerance": 0.05}}

# further settings that change which code runs: early exits answering only at the first and last exit (EBJR's
# cascade inside one network, supplementary 5.3)
VARIANTS = {"early-exit[first-last]": ("early-exit", {"tolerance": 0.05, "score": "energy",
                                                       "exits": ("column0", "column2")})}

pytestmark = pytest.mark.usefixtures("one_thread")


# the prepared path set of each kind (conftest fixtures, made only when a method of that kind is tested)
PREPARED = {"pool": "digits_prepared", "staged": "digits_staged", "supernet": "digits_supernet",
            "bigsmall": "digits_bigsmall"}


CLASSIFIERS = [n for n in METHODS.names() if METHODS.get(n).task == "classification"]


@pytest.fixture(scope="module", params=[*CLASSIFIERS, *VARIANTS])
def case(request):
    name, params = VARIANTS.get(request.param, (request.param, FAST.get(request.param, {})))
    method = create_method(name, **params)
    prep = request.getfixturevalue(PREPARED[method.path_kind])
    before = copy.deepcopy(vars(method))
    fitted = method.fit(prep.calib, **method.fit_options(prep.paths))
    return name, params, method, before, fitted, prep


def test_every_method_is_covered():
    assert set(FAST) == set(CLASSIFIERS), "give every registered classifier method fast settings in FAST"


def test_settings_are_stored_unchanged(case):
    name, params, method, *_ = case
    fresh = create_method(name, **params)
    for k, v in params.items():
        assert fresh.get_params()[k] is v
    assert set(fresh.get_params()) == set(type(fresh).param_names())


def test_simulate_before_fit_raises_the_library_error(case):
    name, params, _, _, _, prep = case
    fresh = create_method(name, **params)
    with pytest.raises(NotFittedError, match="fit"):
        fresh.simulate(prep.test)
    with pytest.raises(NotFittedError):
        fresh.runtime(prep.paths)
    with pytest.raises(NotFittedError):
        fresh.save("/nonexistent/never-written")


def test_fit_returns_self_and_adds_only_underscore_attributes(case):
    _, _, method, before, fitted, _ = case
    assert fitted is method
    after = vars(method)
    added = set(after) - set(before)
    assert added and all(k.endswith("_") for k in added), sorted(added)
    for k, v in before.items():
        assert after[k] is v or after[k] == v, k


def _knobs(method, trace, count=5):
    """A few knob values along the calibration curve, from expensive to cheap, plus the fitted one."""
    curve = method.calib_curve_
    order = np.argsort(-curve.cost, kind="stable")
    picks = order[np.linspace(0, len(order) - 1, count).astype(int)]
    return [method.check_knob(method._setting(curve, int(j))) for j in picks] + [method.knob_]


def test_runtime_equals_simulate_at_several_knobs(case):
    _, _, method, _, _, prep = case
    rt = method.runtime(prep.paths)
    x = prep.test.inputs()
    res, sim = rt.run(x, batch_size=64), method.simulate(prep.test)  # the fitted operating point
    assert np.array_equal(res.pred.numpy(), sim.pred) and np.array_equal(res.path.numpy(), sim.path)
    assert res.mean_flops == pytest.approx(sim.mean_flops, rel=1e-9)
    op = method.operating_point_
    assert op.certified  # forced to the reference only when no certified point is cheaper than it alone
    assert (rt.forced is None) != op.runs_reference and (not op.not_cheaper or op.calib_flops >= op.reference_flops)
    rt.force(None)
    for knob in _knobs(method, prep.test):
        rt.knob = knob
        res = rt.run(x, batch_size=64)
        sim = method.simulate(prep.test, knob)
        assert np.array_equal(res.pred.numpy(), sim.pred), knob
        assert np.array_equal(res.path.numpy(), sim.path), knob
        assert res.mean_flops == pytest.approx(sim.mean_flops, rel=1e-9), knob


def test_a_cheaper_knob_never_costs_more(case):
    _, _, method, _, _, prep = case
    knobs = _knobs(method, prep.test, count=12)
    costs = [method.simulate(prep.test, k).mean_flops for k in knobs]
    d = method.knob_direction
    for a, ca in zip(knobs, costs):
        for b, cb in zip(knobs, costs):
            ka, kb = np.atleast_1d(a).astype(float), np.atleast_1d(b).astype(float)
            if np.all(d * ka <= d * kb):  # knob a is at most as expensive as b, element by element
                assert ca <= cb + 1e-6, (a, b, ca, cb)


def test_forced_runtime_equals_simulate_forced(case):
    _, _, method, _, _, prep = case
    rt = method.runtime(prep.paths)
    for name in rt.paths:
        rt.force(name)
        res = rt.run(prep.test.inputs(), 128)
        sim = method.simulate_forced(prep.test, name)
        assert np.array_equal(res.pred.numpy(), sim.pred) and np.array_equal(res.path.numpy(), sim.path)
        assert res.mean_flops == pytest.approx(sim.mean_flops)
    rt.force(None)
    assert np.array_equal(rt.run(prep.test.inputs(), 128).path.numpy(), method.simulate(prep.test, method.knob_).path)


def test_save_load_round_trip(case, tmp_path):
    _, _, method, _, _, prep = case
    method.save(tmp_path / "m")
    back = load_method(tmp_path / "m")
    assert type(back) is type(method) and back.knob_ == method.knob_
    a, b = method.simulate(prep.test), back.simulate(prep.test)
    assert np.array_equal(a.pred, b.pred) and np.array_equal(a.path, b.path) and np.allclose(a.flops, b.flops)
    ra = method.runtime(prep.paths).run(prep.test.inputs(), 128)
    rb = back.runtime(prep.paths).run(prep.test.inputs(), 128)
    assert torch.equal(ra.pred, rb.pred) and torch.equal(ra.path, rb.path)
    # a changed byte in the saved settings is refused
    path = tmp_path / "m" / "method.json"
    path.write_text(path.read_text().replace('"tolerance": 0.0', '"tolerance": 0.2'))
    with pytest.raises(DyninferError, match="checksum"):
        load_method(tmp_path / "m")


@pytest.mark.parametrize("bad, message", [
    (lambda x: x.double() * 255, "0-255 pixels"),
    (lambda x: x[:, :, :4], "image size"),
    (lambda x: x[:0], "empty batch"),
    (lambda x: x.masked_fill(torch.zeros_like(x, dtype=torch.bool).index_fill_(0, torch.tensor([0]), True), float("nan")),
     "NaN"),
    (lambda x: (x * 255).to(torch.uint8), "uint8"),
    (lambda x: x[0], "4-D batch"),
    (lambda x: x.numpy(), "torch.Tensor"),
])
def test_bad_batch_raises_the_library_error(case, bad, message):
    _, _, method, _, _, prep = case
    rt = method.runtime(prep.paths)
    x = prep.test.inputs()[:8].clone()
    with pytest.raises(InputError, match=message):
        rt(bad(x))


def test_an_uncertifiable_tolerance_runs_the_reference_path_alone(case):
    name, params, _, _, _, prep = case
    method = create_method(name, **{**params, "tolerance": 0.0001})  # 300 images cannot certify 0.01 points
    method.fit(prep.calib, **method.fit_options(prep.paths))
    op = method.operating_point_
    assert not op.certified and f"runs {op.reference} alone" in op.statement()
    rt = method.runtime(prep.paths)
    assert rt.paths[rt.forced] == op.reference
    res, sim = rt.run(prep.test.inputs(), 64), method.simulate(prep.test)
    assert np.array_equal(res.pred.numpy(), sim.pred) and (sim.path == rt.forced).all()
    assert np.array_equal(sim.pred, prep.test.preds[prep.test.index(op.reference)])
