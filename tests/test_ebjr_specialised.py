"""Specialised EBJR (section 2.4) and distilled students (Table 4) on scikit-learn's digits."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dyninfer import DyninferError
from dyninfer.data.streams import popular_classes, skewed_indices, skewed_stream
from dyninfer.errors import ConfigError
from dyninfer.methods import load_method
from dyninfer.methods.cascade.specialised import SpecialisedCascade, energy_gap
from dyninfer.train.specialised import fit_specialised
from dyninfer.models import create_model
from dyninfer.models.specialised import SpecialisedStudent, remap_labels
from dyninfer.paths import ModulePool, PathSet
from dyninfer.scores import make_score
from dyninfer.train.distill import distillation_loss, distillation_targets
from dyninfer.train.recipe import Recipe

pytestmark = pytest.mark.usefixtures("one_thread")
K = 10


class _Fixed(torch.nn.Module):
    """Returns the logits it was given (ignores the images)."""

    def __init__(self, z):
        super().__init__()
        self.z = z

    def forward(self, x):
        return self.z[: x.shape[0]]


def test_wrapper_keeps_subset_logits_and_spreads_other():
    torch.manual_seed(0)
    classes = [7, 2, 4]
    inner = torch.randn(64, 4) * 3  # (N, C̄ + 1): classes in order, then other
    z = SpecialisedStudent(_Fixed(inner), classes, K)(torch.zeros(64, 1, 8, 8))
    assert z.shape == (64, K)
    assert torch.equal(z[:, classes], inner[:, :3])
    others = [c for c in range(K) if c not in classes]
    assert torch.allclose(torch.logsumexp(z[:, others], -1), inner[:, 3], atol=1e-5)
    # the K-class softmax gives the others together the "other" probability
    assert torch.allclose(z.softmax(-1)[:, others].sum(-1), inner.softmax(-1)[:, 3], atol=1e-6)
    # cross-entropy on K logits = cross-entropy on remapped labels + log m on out-of-subset samples
    y = torch.randint(0, K, (64,))
    yr = remap_labels(y, classes, K)
    lhs = F.cross_entropy(z, y, reduction="none")
    rhs = F.cross_entropy(inner, yr, reduction="none") + np.log(len(others)) * (yr == 3)
    assert torch.allclose(lhs, rhs, atol=1e-5)


def _router(z, classes):
    """Eq. 16-17 written out per sample."""
    out = []
    others = [c for c in range(z.shape[1]) if c not in classes]
    for row in z.double().numpy():
        neg_f = np.log(np.exp(row[classes]).sum())  # -F̄ over the subset
        other = np.log(np.exp(row[others]).sum())
        out.append(neg_f if row[classes].max() >= other else -np.inf)
    return np.array(out)


def test_router_matches_eq_17_on_random_logits():
    g = torch.Generator().manual_seed(1)
    classes = [0, 5, 9]
    score = make_score("specialised", classes=classes)
    z = torch.randn(500, K, generator=g) * 2
    got = score(z).numpy()
    want = _router(z, classes)
    assert np.array_equal(np.isinf(got), np.isinf(want)) and 0 < np.isinf(got).sum() < 500
    assert np.allclose(got[np.isfinite(got)], want[np.isfinite(want)], atol=1e-5)
    # on a wrapper's logits the rule is "argmax of the C̄ + 1 logits is not other"
    inner = torch.randn(300, 4, generator=g) * 2
    wz = SpecialisedStudent(_Fixed(inner), classes, K)(torch.zeros(300, 1, 8, 8))
    forwarded = np.isinf(score(wz).numpy())
    assert np.array_equal(forwarded, (inner.argmax(-1) == 3).numpy())


def test_label_remapping_and_popular_classes_from_calibration(digits):
    y = torch.tensor([3, 1, 3, 0, 9, 1])
    assert remap_labels(y, [1, 3], K).tolist() == [1, 0, 1, 2, 2, 0]
    calib = skewed_stream(digits.calib, [4, 8], 75, num_classes=K, seed=0)
    assert popular_classes(calib.y, 2, K) == [4, 8]
    assert popular_classes(np.array([2, 2, 5, 5, 1]), 2, K) == [2, 5]  # ties: lower index first
    assert popular_classes(np.array([0, 0, 1]), 1, K) == [0]


@pytest.mark.parametrize("p", [50, 60, 75, 90])
@pytest.mark.parametrize("classes", [[1, 2], [0, 3, 6], [1, 2, 3, 4, 5]])
def test_skewed_stream_proportions(digits, p, classes):
    idx = skewed_indices(digits.test.y, classes, p, num_classes=K, seed=3)
    y = digits.test.y.numpy()[idx]
    assert len(set(idx.tolist())) == len(idx)
    assert np.isin(y, classes).sum() == round(p / 100 * len(idx))
    counts = np.bincount(y, minlength=K)
    assert counts[classes].max() - counts[classes].min() <= 1
    other = [c for c in range(K) if c not in classes]
    assert counts[other].max() - counts[other].min() <= 1
    again = skewed_indices(digits.test.y, classes, p, num_classes=K, seed=3, n=50)
    assert len(again) == 50 and np.isin(digits.test.y.numpy()[again], classes).sum() == round(p / 2)


@pytest.fixture(scope="module")
def spec_case(digits_prepared):
    """A specialised cnn-s for the calibration data's 3 most frequent classes, before the tiny pool's cnn-m."""
    prep = digits_prepared
    classes = popular_classes(skewed_stream(prep.data.calib, [1, 4, 7], 75, num_classes=K, seed=0).y, 3, K)
    torch.manual_seed(0)
    student, meta = fit_specialised("cnn-s", prep.data, classes, prep.preset.models["cnn-s"], progress=False,
                                    log=lambda s: None)
    pool = ModulePool({"spec": student, "cnn-m": prep.paths.models["cnn-m"]}, input_shape=prep.data.spec.input_shape)
    calib, test = (pool.record(prep.data.split(s)).with_inputs(prep.data.split(s).x) for s in ("calib", "test"))
    method = SpecialisedCascade(tolerance=0.05)
    method.fit(calib, **method.fit_options(pool))
    return classes, student, meta, pool, calib, test, method


def test_specialised_student_trains_on_its_classes(spec_case, digits_prepared):
    classes, student, meta, *_ = spec_case
    assert classes == [1, 4, 7] and student.classes == classes
    test = digits_prepared.data.test
    inner = student.model(test.x).argmax(-1)
    acc = (inner == remap_labels(test.y, classes, K)).float().mean()
    assert acc > 0.8, acc  # C̄ + 1-way accuracy on all test digits


def test_fitted_cascade_runtime_equals_simulate_and_round_trips(spec_case, tmp_path):
    classes, student, _, pool, calib, test, method = spec_case
    assert method.classes_ == classes and method.score_.params == {"classes": classes}
    assert method.operating_point_.certified
    rt = method.runtime(pool)
    res, sim = rt.run(test.inputs(), batch_size=64), method.simulate(test)
    assert np.array_equal(res.pred.numpy(), sim.pred) and np.array_equal(res.path.numpy(), sim.path)
    assert res.mean_flops == pytest.approx(sim.mean_flops, rel=1e-9)
    # out-of-subset predictions are never kept by the student at a finite threshold
    kept = sim.path == 0
    assert np.isfinite(method.knob_[0]) and not np.isin(sim.pred[kept], [c for c in range(K) if c not in classes]).any()
    method.save(tmp_path / "m")
    pool.save(tmp_path / "paths")
    back, pool2 = load_method(tmp_path / "m"), PathSet.load(tmp_path / "paths")
    assert type(back) is SpecialisedCascade and back.score_.params == {"classes": classes}
    assert isinstance(pool2.models["spec"], SpecialisedStudent) and pool2.models["spec"].classes == classes
    ra, rb = rt.run(test.inputs(), 128), back.runtime(pool2).run(test.inputs(), 128)
    assert torch.equal(ra.pred, rb.pred) and torch.equal(ra.path, rb.path)


def test_energy_gap_measures_in_and_out(spec_case, digits_prepared):
    classes, _, _, _, _, test, _ = spec_case
    spec = energy_gap(test.logits[0], test.labels, classes, specialised=True)
    assert spec["n_in"] == np.isin(test.labels, classes).sum() and spec["mean_in"] < spec["mean_out"]
    assert spec["auroc"] > 0.9
    gen = energy_gap(digits_prepared.test.logits[0], digits_prepared.test.labels, classes, specialised=False)
    assert gen["gap"] >= 0 and 0 <= gen["auroc"] <= 1


def test_distillation_targets_and_loss(digits_prepared):
    teacher = digits_prepared.paths.models["cnn-m"]
    x = digits_prepared.data.train.x[:50]
    z = teacher(x).detach()
    hard = distillation_targets(teacher, x, mode="hard")
    soft = distillation_targets(teacher, x, mode="soft", temperature=2.0)
    assert torch.equal(hard, z.argmax(-1)) and torch.allclose(soft, (z / 2).softmax(-1), atol=1e-6)
    assert distillation_loss(z / 1.0, soft * 0 + (z / 2).softmax(-1), temperature=2.0).abs() < 1e-5  # own targets
    assert torch.isclose(distillation_loss(z, hard), F.cross_entropy(z, hard))
    with pytest.raises(ConfigError):
        distillation_targets(teacher, x, mode="medium")


def test_bad_inputs_raise_the_library_errors(digits):
    with pytest.raises(ConfigError, match="not classes"):
        create_model("specialised", digits.spec, base="cnn-s", classes=[3, 12])
    with pytest.raises(ConfigError, match="C̄"):
        SpecialisedStudent(create_model("cnn-s", digits.spec), list(range(K)), K)
    with pytest.raises(ConfigError):
        make_score("specialised", classes=[])
    with pytest.raises(ConfigError):
        make_score("specialised", classes=[1, 12])(torch.zeros(2, K))
    for p in (-1, 101, float("nan")):
        with pytest.raises(ConfigError, match="percent"):
            skewed_indices(digits.test.y, [1, 2], p, num_classes=K)
    with pytest.raises(ConfigError, match="at most"):
        skewed_indices(digits.test.y, [1, 2], 90, num_classes=K, n=10_000)
    with pytest.raises(ConfigError):
        popular_classes(digits.calib.y, K, K)
    with pytest.raises(ConfigError, match="label_smoothing"):
        fit_specialised("cnn-s", digits, [1, 2], Recipe(label_smoothing=0.1), progress=False, log=lambda s: None)
    with pytest.raises(DyninferError, match="classes"):
        SpecialisedCascade().fit(_tiny_trace())


def _tiny_trace():
    from dyninfer.runtime.cost import PathCost
    from dyninfer.trace import Trace

    z = np.random.default_rng(0).normal(size=(2, 20, K)).astype(np.float32)
    return Trace(["a", "b"], z, np.arange(20) % K, [PathCost(name="a", flops=1, params=1, bytes=1), PathCost(name="b", flops=10, params=1, bytes=1)])


def test_energy_gap_terms_split_the_free_energy():
    """Eq. (28): F = -S_y + F̂; in-subset samples with a confident true logit move the two terms apart (eq. 29)."""
    from dyninfer.methods.cascade.specialised import energy_gap_terms, free_energy

    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(4), 50)
    z = rng.normal(size=(200, 4))
    z[np.arange(200), y] += np.where(y < 2, 4.0, 1.0)  # popular classes {0, 1} answered with more confidence
    t = energy_gap_terms(z, y, [0, 1])
    f = free_energy(z)
    inside = y < 2
    assert t["f"]["mean_in"] == pytest.approx(f[inside].mean())
    assert t["minus_s_y"]["mean_in"] + t["f_hat"]["mean_in"] == pytest.approx(t["f"]["mean_in"])
    assert t["minus_s_y"]["change"] > 0 > t["f_hat"]["change"]  # opposite directions: the terms partly cancel
    assert 0 < t["cancelled"] < 1
    with pytest.raises(ConfigError, match="popular classes and of the others"):
        energy_gap_terms(z[:50], y[:50], [0, 1])


@pytest.mark.parametrize("method, params, first", [
    ("cascade", {"student": "distilled-soft", "tolerance": 0.05}, "cnn-s-distilled-soft"),
    ("cascade-specialised", {"classes": [1, 4, 7], "tolerance": 0.05}, "cnn-s-specialised"),
])
def test_a_pool_student_of_another_kind_runs_end_to_end(method, params, first, digits_prepared, tmp_path):
    """`dyninfer run cascade --set student=...` and `dyninfer run cascade-specialised --set classes=[...]` train the
    student in place of the pool's cheapest model and run the whole pipeline on it; the policy reloads with it."""
    import json

    from dyninfer.pipeline import RunConfig, run
    from dyninfer.policy import load_policy

    folder = run(RunConfig(method=method, preset="tiny", dataset="digits", params=params, threads=1, progress=False),
                 tmp_path / "run", log=lambda s: None)
    res = json.loads((folder / "results.json").read_text())
    assert res["paths"] == [first, "cnn-m"] and res["agreement"]["pred_mismatch"] == 0
    policy = load_policy(folder)
    assert policy.paths.names == [first, "cnn-m"]
    # soft targets (temperature 4) are never the one-hot labels the general student learned from: other weights
    # (hard targets can equal the labels where the teacher fits the training split exactly)
    student, general = policy.paths.models[first], digits_prepared.paths.models["cnn-s"]
    assert any(not torch.equal(a, b) for a, b in zip(student.state_dict().values(), general.state_dict().values()))
    if method == "cascade-specialised":
        assert isinstance(student, SpecialisedStudent) and policy.method.classes_ == [1, 4, 7]
    x = digits_prepared.test.x[:64]
    np.testing.assert_array_equal(policy.runtime().run(x, 32).pred.numpy(),
                                  load_policy(folder).runtime().run(x, 32).pred.numpy())


def test_a_pool_student_is_refused_where_it_cannot_be_made():
    from dyninfer.harness import prepare
    from dyninfer.methods.cascade import Cascade

    with pytest.raises(ConfigError, match="cascade-specialised"):
        Cascade(student="specialised")
    with pytest.raises(ConfigError, match="distilled-soft"):
        prepare("digits", "tiny", kind="staged", student="distilled-soft", log=lambda s: None)
    with pytest.raises(ConfigError, match="popular classes"):
        prepare("digits", "tiny", kind="pool", student="specialised", log=lambda s: None)
    with pytest.raises(ConfigError, match="student='specialised'"):
        prepare("digits", "tiny", kind="pool", classes=[1, 2], log=lambda s: None)
