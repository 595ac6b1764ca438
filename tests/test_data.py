import gzip
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from dyninfer import ConfigError, DataError
from dyninfer.data import load_dataset
from dyninfer.data.datasets import FASHION_MNIST_DEFAULT
from dyninfer.data.idx import read_idx, write_idx

FMNIST_PRESENT = os.path.exists(os.path.join(FASHION_MNIST_DEFAULT, "train-images-idx3-ubyte.gz"))


def test_idx_round_trip(tmp_path):
    a = np.random.default_rng(0).integers(0, 256, (7, 28, 28), dtype=np.uint8)
    write_idx(tmp_path / "x.gz", a)
    assert np.array_equal(read_idx(tmp_path / "x.gz", expect_ndim=3, expect_count=7, expect_shape=(28, 28)), a)


def test_idx_errors_name_the_file(tmp_path):
    with pytest.raises(DataError, match="missing data file .*nope.gz.*apt-get"):
        read_idx(tmp_path / "nope.gz", expect_ndim=3, hint="apt-get install it")
    a = np.zeros((5, 28, 28), np.uint8)
    write_idx(tmp_path / "x.gz", a)
    with pytest.raises(DataError, match="holds 5 items, expected 60000"):
        read_idx(tmp_path / "x.gz", expect_ndim=3, expect_count=60000)
    with pytest.raises(DataError, match="bad IDX magic"):
        read_idx(tmp_path / "x.gz", expect_ndim=1)
    raw = gzip.decompress((tmp_path / "x.gz").read_bytes())
    (tmp_path / "t.gz").write_bytes(gzip.compress(raw[:-100]))
    with pytest.raises(DataError, match="t.gz holds .* data bytes .* truncated"):
        read_idx(tmp_path / "t.gz", expect_ndim=3)
    (tmp_path / "c.gz").write_bytes((tmp_path / "x.gz").read_bytes()[:40])
    with pytest.raises(DataError, match="c.gz.*corrupt"):
        read_idx(tmp_path / "c.gz", expect_ndim=3)


def test_fashion_mnist_folder_from_env_and_missing_file_message(tmp_path, monkeypatch):
    monkeypatch.setenv("DYNINFER_FASHION_MNIST", str(tmp_path))
    with pytest.raises(DataError, match=f"missing data file {tmp_path}/train-images-idx3-ubyte.gz.*dataset-fashion-mnist"):
        load_dataset("fashion-mnist")


@pytest.mark.skipif(not FMNIST_PRESENT, reason="apt-get install dataset-fashion-mnist")
def test_real_fashion_mnist_splits_are_deterministic_and_disjoint():
    a = load_dataset("fashion-mnist", seed=3, calib_size=10000)
    b = load_dataset("fashion-mnist", seed=3, calib_size=10000)
    assert (len(a.train), len(a.calib), len(a.test)) == (50000, 10000, 10000)
    assert a.train.x.shape[1:] == (1, 28, 28) and a.train.x.dtype == torch.float32
    assert 0.0 <= float(a.train.x.min()) and float(a.train.x.max()) <= 1.0
    assert torch.equal(a.calib.y, b.calib.y) and torch.equal(a.calib.x[:50], b.calib.x[:50])
    assert set(a.test.y.tolist()) == set(range(10))
    c = load_dataset("fashion-mnist", seed=4, calib_size=10000)
    assert not torch.equal(a.calib.x[:50], c.calib.x[:50])
    # calibration and training images are disjoint draws of the 60k training part
    assert len(a.train) + len(a.calib) == 60000
    assert a.spec.class_names[9] == "Ankle boot"


def test_digits_splits(digits):
    assert digits.spec.input_shape == (1, 8, 8)
    assert len(digits.calib) == 300 and len(digits.train) + 300 + len(digits.test) == 1797
    with pytest.raises(ConfigError, match="unknown split"):
        digits.split("val")


def test_bad_calib_size():
    with pytest.raises(ConfigError, match="calib_size"):
        load_dataset("digits", calib_size=100000)


def _write_cifar10(folder, n=20):
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        d = {"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), "labels": list(rng.integers(0, 10, n))}
        (folder / name).write_bytes(pickle.dumps(d))
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": [f"c{i}" for i in range(10)]}))


def test_cifar10_pickle_folder(tmp_path):
    _write_cifar10(tmp_path / "cifar-10-batches-py")
    ds = load_dataset("cifar10", root=tmp_path / "cifar-10-batches-py", calib_size=10)
    assert ds.spec.input_shape == (3, 32, 32) and len(ds.train) == 90 and len(ds.test) == 20
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").write_bytes(b"garbage")
    with pytest.raises(DataError, match="data_batch_3.*corrupt"):
        load_dataset("cifar10", root=tmp_path / "cifar-10-batches-py")


@pytest.mark.parametrize("labels, message", [
    (list(range(10)) * 1 + [0] * 9, r"holds 20 images but labels of shape \(19,\)"),
    ([10] * 20, r"labels outside 0..9 \(min 10, max 10\)"),
    (None, "no 'labels' entry"),
])
def test_cifar_labels_that_do_not_fit_the_images_are_refused(tmp_path, labels, message):
    folder = tmp_path / "cifar-10-batches-py"
    _write_cifar10(folder)
    d = pickle.loads((folder / "test_batch").read_bytes())
    if labels is None:
        del d["labels"]
    else:
        d["labels"] = labels
    (folder / "test_batch").write_bytes(pickle.dumps(d))
    with pytest.raises(DataError, match="test_batch.*" + message if labels is None else message):
        load_dataset("cifar10", root=folder)


def test_cifar100_missing_folder_says_how_to_get_it(tmp_path):
    with pytest.raises(DataError, match="missing data file .*train.*cifar-100-python"):
        load_dataset("cifar100", root=tmp_path)


def test_imagefolder(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for part in ("train", "test"):
        for cls in ("cat", "dog"):
            (tmp_path / part / cls).mkdir(parents=True)
            for i in range(4):
                Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(tmp_path / part / cls / f"{i}.png")
    ds = load_dataset("imagefolder", root=tmp_path, calib_size=2)
    assert ds.spec.input_shape == (3, 32, 32) and ds.spec.class_names == ("cat", "dog")
    assert len(ds.train) == 6 and len(ds.test) == 8


FM_FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz",
            "t10k-labels-idx1-ubyte.gz")


def test_caches_are_keyed_by_data_content_not_folder(tmp_path):
    """The same Fashion-MNIST files in another folder reuse the cached model; changed test images retrain."""
    import shutil

    from dyninfer.data.idx import read_idx, write_idx
    from dyninfer.train import Recipe, cached_model

    src = Path("/usr/share/datasets/fashion-mnist")
    a, b = tmp_path / "a", tmp_path / "b"
    for folder in (a, b):
        folder.mkdir()
        for name in FM_FILES:
            shutil.copyfile(src / name, folder / name)
    kw = dict(calib_size=200, train_limit=300, test_limit=200)
    da, db = load_dataset("fashion-mnist", root=a, **kw), load_dataset("fashion-mnist", root=b, **kw)
    assert da.meta["source"] != db.meta["source"] and da.fingerprint == db.fingerprint
    logs: list[str] = []
    recipe = Recipe(epochs=1, batch_size=64)
    root = tmp_path / "ckpt"
    cached_model("cnn-s", da, recipe, root=root, progress=False, log=logs.append)
    cached_model("cnn-s", db, recipe, root=root, progress=False, log=logs.append)
    assert logs[0].startswith("[train]") and logs[1].startswith("[cache]")  # moved data: reused
    images = read_idx(b / FM_FILES[2], expect_ndim=3).copy()
    images[:, 0, 0] ^= 1  # one pixel of every test image
    write_idx(b / FM_FILES[2], images)
    dc = load_dataset("fashion-mnist", root=b, **kw)
    assert dc.fingerprint != da.fingerprint
    cached_model("cnn-s", dc, recipe, root=root, progress=False, log=logs.append)
    assert logs[2].startswith("[train]")  # changed data: the stale checkpoint is not reused
