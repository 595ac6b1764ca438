"""The slimmable method (AdaptaNet) on the CIFAR-100 data path: a small synthetic ``cifar-100-python`` folder.

The folder holds 100 classes x 6 training and 2 test images whose mean colour depends on the class (plus pixel
noise), so a supernet trained for a few epochs learns something a test can check. The `tiny` preset's supernet
(adapta-resnet-tiny) is prepared through the harness with a shortened training (seconds on one thread).
"""

from __future__ import annotations

import dataclasses
import pickle

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.usefixtures("one_thread")

CLASSES, TRAIN_PER_CLASS, TEST_PER_CLASS = 100, 6, 2
CALIB = 200


def _class_colours() -> np.ndarray:
    """(100, 3) RGB means, one per class: points spread evenly (a Fibonacci lattice) on a sphere of radius 100 around
    mid-grey, so classes differ in the direction of their colour (which per-sample group norms keep), not only in
    its brightness."""
    i = np.arange(CLASSES) + 0.5
    z = 1 - 2 * i / CLASSES
    phi = np.pi * (1 + 5 ** 0.5) * i
    r = np.sqrt(1 - z * z)
    return 128 + 100 * np.stack([r * np.cos(phi), r * np.sin(phi), z], axis=1)


def _images(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """uint8 (N, 3072) rows in CIFAR order (the red plane, then green, then blue, each 32x32 row-major): the class's
    colour plus pixel noise."""
    mean = _class_colours()[labels][:, :, None]  # (N, 3, 1)
    x = mean + rng.normal(0, 4, (len(labels), 3, 1024))
    return np.clip(np.rint(x), 0, 255).astype(np.uint8).reshape(len(labels), 3072)


def _write_cifar100(folder, rng: np.random.Generator) -> dict:
    """The standard ``cifar-100-python`` layout: pickles ``train``, ``test`` and ``meta`` (as unpickled with latin1)."""
    folder.mkdir()
    out = {}
    for part, per in (("train", TRAIN_PER_CLASS), ("test", TEST_PER_CLASS)):
        fine = rng.permutation(np.repeat(np.arange(CLASSES), per))
        d = {"data": _images(fine, rng), "fine_labels": [int(v) for v in fine],
             "coarse_labels": [int(v) // 5 for v in fine], "filenames": [f"{part}_{i}.png" for i in range(len(fine))]}
        (folder / part).write_bytes(pickle.dumps(d))
        out[part] = d
    (folder / "meta").write_bytes(pickle.dumps({"fine_label_names": [f"fine{i}" for i in range(CLASSES)],
                                                "coarse_label_names": [f"coarse{i}" for i in range(20)]}))
    return out


@pytest.fixture(scope="module")
def cifar100_raw(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cifar") / "cifar-100-python"
    return folder, _write_cifar100(folder, np.random.default_rng(0))


@pytest.fixture(scope="module")
def cifar100(cifar100_raw):
    from dyninfer.data import load_dataset

    return load_dataset("cifar100", root=cifar100_raw[0], calib_size=CALIB, seed=0)


@pytest.fixture(scope="module")
def cifar100_supernet(cifar100, one_thread):
    """The `tiny` preset's supernet (adapta-resnet-tiny) prepared on the synthetic CIFAR-100 through the harness,
    with a short training: every AdaptaNet phase (teacher, cascades, lock, δ, gates), the uniform widths with and
    without δ as paths, traced on calib and test (about 25 s, one thread)."""
    from dyninfer.harness import prepare
    from dyninfer.presets import get_preset
    from dyninfer.train import Recipe

    tiny = get_preset("tiny")
    # the teacher on all 400 training images (about 10 s), every later phase one epoch on 200 (about 10 s)
    training = dataclasses.replace(tiny.supernet_training, teacher=Recipe(epochs=10, batch_size=16, shift=1),
                                   stage_epochs=(1, 1, 1, 1), lock_epochs=1, eval_images=50, train_images=200)
    preset = dataclasses.replace(tiny, supernet_training=training, supernet_paths="delta")
    torch.manual_seed(0)
    return prepare("cifar100", preset, kind="supernet", data=cifar100, progress=False, log=lambda s: None)


def test_the_cifar100_pickle_folder_is_read_with_its_100_fine_classes(cifar100, cifar100_raw):
    _, raw = cifar100_raw
    ds = cifar100
    assert ds.spec.name == "cifar100" and ds.spec.num_classes == CLASSES and ds.spec.input_shape == (3, 32, 32)
    assert ds.spec.class_names == tuple(f"fine{i}" for i in range(CLASSES))
    assert len(ds.calib) == CALIB and len(ds.train) == CLASSES * TRAIN_PER_CLASS - CALIB
    assert len(ds.test) == CLASSES * TEST_PER_CLASS
    for split in (ds.train, ds.calib, ds.test):
        assert split.x.dtype == torch.float32 and split.x.shape[1:] == (3, 32, 32)
        assert 0.0 <= float(split.x.min()) and float(split.x.max()) <= 1.0
    # the test part keeps its order: pixels (channel planes) and fine labels exactly as written
    want = torch.from_numpy(raw["test"]["data"].reshape(-1, 3, 32, 32).astype(np.float32) / 255.0)
    assert torch.equal(ds.test.x, want)
    assert ds.test.y.tolist() == raw["test"]["fine_labels"]
    assert sorted(ds.train.y.tolist() + ds.calib.y.tolist()) == sorted(raw["train"]["fine_labels"])


def test_the_supernet_learns_the_synthetic_classes_and_traces_its_gates(cifar100_supernet, cifar100):
    prep = cifar100_supernet
    names = prep.paths.names
    assert names[-1] == "x1" and {"x0.25", "x0.5", "x0.75", "x0.25-d", "x1-d"} <= set(names)
    assert prep.paths.supernet.input_shape == (3, 32, 32)
    P, N = len(names), len(cifar100.test)
    for trace, n in ((prep.calib, CALIB), (prep.test, N)):
        assert list(trace.paths) == names and trace.n == n
        assert trace.logits.shape == (P, n, CLASSES)
        g = trace.aux["gate"]
        assert g.shape == (P, n, 3) and np.isfinite(g).all()
    assert np.array_equal(prep.test.labels, cifar100.test.y.numpy())
    # the full width learned the colours: far above chance (1 %) on unseen test images
    acc = {n: prep.test.accuracy(n) for n in names}
    assert acc["x1"] > 0.1 and acc["x1"] == max(acc.values()), acc
    flops = [c.flops for c in prep.test.costs]
    assert flops[-1] == max(flops) and prep.test.cost("x0.25").flops < prep.test.cost("x1").flops


def test_the_static_x1_subnet_gives_100_logits_as_traced(cifar100_supernet, cifar100):
    prep = cifar100_supernet
    sub = prep.paths.models["x1"]
    x = cifar100.test.x
    with torch.no_grad():
        logits = sub(x)
        scored, gates = sub.forward_scored(x)
    assert logits.shape == (len(x), CLASSES) and gates.shape == (len(x), 3)
    assert torch.equal(logits, scored)
    traced = prep.test.logits[prep.test.index("x1")]
    assert np.allclose(logits.numpy(), traced, atol=1e-4)
    assert np.allclose(gates.numpy(), prep.test.aux["gate"][-1], atol=1e-4)


def test_the_fitted_slimmable_runtime_agrees_with_its_simulation(cifar100_supernet):
    from dyninfer.methods import create_method

    prep = cifar100_supernet
    m = create_method("slimmable", tolerance=0.05).fit(prep.calib)
    assert m.stages_[-1] == "x1" and m.router_ == "gate"
    rt = m.runtime(prep.paths)
    x = prep.test.inputs()
    res, sim = rt.run(x, 64), m.simulate(prep.test)
    assert np.array_equal(res.pred.numpy(), sim.pred) and np.array_equal(res.path.numpy(), sim.path)
    assert res.mean_flops == pytest.approx(sim.mean_flops, rel=1e-9)
    rt.force(None)
    full = prep.test.cost("x1").flops
    for share in (0.5, 0.8, None):
        knob = m.knob_ if share is None else m.knob_for(budget_flops=share * full)
        rt.knob = knob
        res, sim = rt.run(x, 64), m.simulate(prep.test, knob)
        assert np.array_equal(res.pred.numpy(), sim.pred), knob
        assert np.array_equal(res.path.numpy(), sim.path), knob
        assert res.mean_flops == pytest.approx(sim.mean_flops, rel=1e-9), knob
        if share is not None:  # a budget between the cheapest and the full width: both ends of the chain run
            # the knob meets the budget on the calibration split it was mapped through (not promised on test)
            assert m.simulate(prep.calib, knob).mean_flops <= share * full * (1 + 1e-9)
            assert 0 < int((sim.path == len(m.stages_) - 1).sum()) < len(x), knob
