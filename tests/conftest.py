"""Shared fixtures: a private cache folder and tiny models trained on scikit-learn's digits."""

from __future__ import annotations

import os

import pytest
import torch


@pytest.fixture(scope="session", autouse=True)
def _private_cache(tmp_path_factory):
    """Point the checkpoint/trace cache at a temporary folder for the whole session."""
    old = os.environ.get("DYNINFER_CACHE")
    os.environ["DYNINFER_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    yield
    if old is None:
        os.environ.pop("DYNINFER_CACHE", None)
    else:
        os.environ["DYNINFER_CACHE"] = old


@pytest.fixture(scope="session")
def digits():
    from dyninfer.data import load_dataset

    return load_dataset("digits", calib_size=300, seed=0)


@pytest.fixture(scope="session")
def digits_prepared():
    """The `tiny` preset's pool on digits: cnn-s and cnn-m trained, traced on calib and test (about 10 s)."""
    from dyninfer.harness import prepare

    torch.manual_seed(0)
    return prepare("digits", "tiny", kind="pool", progress=False, log=lambda s: None)


@pytest.fixture(scope="session")
def digits_staged():
    """The `tiny` preset's early-exit network on digits (revcol-tiny), traced on calib and test (about 20 s)."""
    from dyninfer.harness import prepare

    torch.manual_seed(0)
    return prepare("digits", "tiny", kind="staged", progress=False, log=lambda s: None)


def _prepare_one_thread(kind: str):
    """The `tiny` preset's path set of ``kind`` on digits, trained and traced with one torch thread."""
    from dyninfer.harness import prepare

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    try:
        return prepare("digits", "tiny", kind=kind, progress=False, log=lambda s: None)
    finally:
        torch.set_num_threads(n)


@pytest.fixture(scope="session")
def digits_supernet():
    """The `tiny` preset's slimmable supernet on digits (adapta-resnet-tiny: teacher, cascades, δ, gates), its
    uniform widths traced on calib and test (about 40 s, one thread)."""
    return _prepare_one_thread("supernet")


@pytest.fixture(scope="session")
def digits_bigsmall():
    """The `tiny` preset's big/little pair on digits (bigsmall-supernet-tiny co-trained with its router, largest
    pair), traced on calib and test (about 30 s, one thread)."""
    return _prepare_one_thread("bigsmall")


@pytest.fixture(scope="session")
def cotrained_bigsmall(digits):
    """bigsmall-supernet-tiny co-trained on digits through the full and width phases (3 epochs, 512 images), so
    its smaller subnets are trained too (the `tiny` preset trains only the largest pair): what the searches
    need. About 20 s once, one thread."""
    from dyninfer.train.bigsmall import CoTraining, fit_bigsmall

    recipe = CoTraining(epochs=3, batch_size=64, train_images=512, eval_images=200, bn_images=256,
                        phases=("full", "width"), random_subnets=1)
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)
        net, _, _ = fit_bigsmall("bigsmall-supernet-tiny", digits, recipe, log=lambda s: None, progress=False)
    finally:
        torch.set_num_threads(n)
    return net


@pytest.fixture(scope="module")
def one_thread():
    """Small models on a shared 2-core CPU: one torch thread avoids oversubscription."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# One small fitting of every released family, shared by the export and serving tests.
FAMILIES = {
    "cascade": ("pool", {"scores": ("energy",), "tolerance": 0.02}),
    "early-exit": ("staged", {"tolerance": 0.02}),
    "selection": ("pool", {"lambdas": (0.9,), "tolerance": 0.02}),
}


@pytest.fixture(scope="session")
def saved_policies(digits_prepared, digits_staged, tmp_path_factory):
    """Every family of FAMILIES fitted on digits and saved: name -> (method, prepared data, policy folder)."""
    from dyninfer.methods import create_method
    from dyninfer.policy import save_policy

    prep = {"pool": digits_prepared, "staged": digits_staged}
    out = {}
    for name, (kind, params) in FAMILIES.items():
        p = prep[kind]
        m = create_method(name, **params)
        m.fit(p.calib, **m.fit_options(p.paths))
        folder = tmp_path_factory.mktemp(name) / "policy"
        save_policy(folder, m, p.paths, class_names=p.data.spec.class_names)
        out[name] = (m, p, folder)
    return out
