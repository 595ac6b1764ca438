"""Datasets by name, loaded into memory as float tensors in [0, 1] with deterministic splits.

Every loader returns the official train and test parts; :func:`load_dataset` then cuts a
calibration split out of train with a seeded permutation. Thresholds and routers are fitted
on the calibration split; figures are reported on the test split.
"""

from __future__ import annotations

import functools
import os
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..check import number
from ..errors import ConfigError, DataError
from ..registry import Registry
from .idx import read_idx

DATASETS: Registry[Callable[..., "RawData"]] = Registry("dataset")

FASHION_MNIST_DEFAULT = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_ENV = "DYNINFER_FASHION_MNIST"
FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)


@dataclass(frozen=True)
class DataSpec:
    """What a model needs to know about the data it will see."""

    name: str
    num_classes: int
    in_channels: int
    image_size: tuple[int, int]
    mean: tuple[float, ...]  # per channel, of the [0, 1] training pixels
    std: tuple[float, ...]
    class_names: tuple[str, ...] = ()

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (self.in_channels, *self.image_size)


@dataclass
class Split:
    """One split held in memory: images (N, C, H, W) float32 in [0, 1], labels (N,) int64."""

    x: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def subset(self, idx) -> "Split":
        idx = torch.as_tensor(idx, dtype=torch.long)
        return Split(self.x[idx], self.y[idx])


@dataclass
class RawData:
    """What a registered loader returns: the official train and test parts."""

    train: Split
    test: Split
    class_names: tuple[str, ...]
    source: str


@dataclass
class Dataset:
    """Train / calibration / test splits and the spec models are built from."""

    spec: DataSpec
    train: Split
    calib: Split
    test: Split
    meta: dict = field(default_factory=dict)

    @functools.cached_property
    def fingerprint(self) -> str:
        """SHA-256 (first 16 hex digits) of every split's images and labels, computed once per load.

        Caches of checkpoints and traces are keyed by it: the same data in another folder reuses them,
        changed data invalidates them."""
        from ..io import digest

        return digest([[s.x, s.y] for s in (self.train, self.calib, self.test)])[:16]

    def split(self, name: str) -> Split:
        if name not in ("train", "calib", "test"):
            raise ConfigError(f"unknown split {name!r}; use train, calib or test")
        return getattr(self, name)


def load_dataset(name: str, *, root: str | os.PathLike | None = None, seed: int = 0,
                 calib_size: int | float = 0.1, train_limit: int | None = None,
                 test_limit: int | None = None) -> Dataset:
    """Load a registered dataset and cut deterministic splits.

    Args:
        name: registry name (``fashion-mnist``, ``digits``, ``cifar10``, ``cifar100``, ``imagefolder``).
        root: data folder; each loader documents its default and environment variable.
        seed: seed of the permutation that separates calibration from training samples.
        calib_size: calibration samples taken from the official train part (count, or fraction if < 1).
        train_limit: keep at most this many training samples (quick runs); None keeps all.
        test_limit: keep at most this many test samples (a seeded subset); None keeps all.

    Returns:
        a :class:`Dataset` whose splits are disjoint and identical for the same arguments.
    """
    number("seed", seed, integer=True)
    number("calib_size", calib_size, lo=0, lo_open=True, hint=" (a count, or a fraction below 1)")
    number("train_limit", train_limit, lo=1, integer=True, none_ok=True)
    number("test_limit", test_limit, lo=1, integer=True, none_ok=True)
    raw = DATASETS.get(name)(root)
    n = len(raw.train)
    n_calib = int(round(calib_size * n)) if isinstance(calib_size, float) and calib_size < 1 else int(calib_size)
    if not 0 < n_calib < n:
        raise ConfigError(f"calib_size={calib_size} leaves no training or no calibration data ({n} samples)")
    g = np.random.default_rng(seed)
    perm = g.permutation(n)
    calib_idx, train_idx = perm[:n_calib], perm[n_calib:]
    if train_limit is not None:
        train_idx = train_idx[:train_limit]
    test = raw.test
    if test_limit is not None and test_limit < len(test):
        test = test.subset(np.sort(g.permutation(len(test))[:test_limit]))
    train = raw.train.subset(np.sort(train_idx))
    calib = raw.train.subset(np.sort(calib_idx))
    x = train.x
    dims = (0, 2, 3)
    spec = DataSpec(
        name=name,
        num_classes=len(raw.class_names),
        in_channels=int(x.shape[1]),
        image_size=(int(x.shape[2]), int(x.shape[3])),
        mean=tuple(float(v) for v in x.mean(dim=dims)),
        std=tuple(float(v) for v in x.std(dim=dims).clamp_min(1e-6)),
        class_names=raw.class_names,
    )
    meta = {"dataset": name, "source": raw.source, "seed": seed, "train": len(train),
            "calib": len(calib), "test": len(test)}
    return Dataset(spec=spec, train=train, calib=calib, test=test, meta=meta)


def _to_split(images: np.ndarray, labels: np.ndarray) -> Split:
    """uint8 (N, H, W) or (N, H, W, C) -> float32 (N, C, H, W) in [0, 1]."""
    if images.ndim == 3:
        images = images[:, None]
    else:
        images = images.transpose(0, 3, 1, 2)
    x = torch.from_numpy(np.array(images, copy=True)).float().div_(255.0)
    y = torch.from_numpy(np.asarray(labels, dtype=np.int64))
    return Split(x, y)


@DATASETS.register("fashion-mnist")
def fashion_mnist(root: str | os.PathLike | None = None) -> RawData:
    """Fashion-MNIST from the four standard IDX ``.gz`` files.

    Folder: ``root``, else ``$DYNINFER_FASHION_MNIST``, else ``/usr/share/datasets/fashion-mnist``.
    """
    folder = Path(root or os.environ.get(FASHION_MNIST_ENV) or FASHION_MNIST_DEFAULT)
    hint = (f"Install it with `apt-get install -y dataset-fashion-mnist` (puts the files in "
            f"{FASHION_MNIST_DEFAULT}), or point --data-root / ${FASHION_MNIST_ENV} at a folder "
            f"with train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, "
            f"t10k-images-idx3-ubyte.gz and t10k-labels-idx1-ubyte.gz.")
    parts = {}
    for part, count in (("train", 60000), ("t10k", 10000)):
        images = read_idx(folder / f"{part}-images-idx3-ubyte.gz", expect_ndim=3, expect_count=count,
                          expect_shape=(28, 28), hint=hint)
        labels = read_idx(folder / f"{part}-labels-idx1-ubyte.gz", expect_ndim=1, expect_count=count, hint=hint)
        if labels.max() > 9:
            raise DataError(f"{folder / f'{part}-labels-idx1-ubyte.gz'} has label {labels.max()} > 9. {hint}")
        parts[part] = _to_split(images, labels)
    return RawData(parts["train"], parts["t10k"], FASHION_MNIST_CLASSES, str(folder))


@DATASETS.register("digits")
def digits(root: str | os.PathLike | None = None) -> RawData:
    """scikit-learn's 8x8 digits (1797 images, shipped with scikit-learn); a seeded 80/20 train/test cut."""
    from sklearn.datasets import load_digits

    d = load_digits()
    images = (d.images / 16.0 * 255.0).round().astype(np.uint8)  # (1797, 8, 8)
    perm = np.random.default_rng(12345).permutation(len(images))
    n_test = len(images) // 5
    te, tr = perm[:n_test], perm[n_test:]
    names = tuple(str(i) for i in range(10))
    return RawData(_to_split(images[tr], d.target[tr]), _to_split(images[te], d.target[te]), names, "sklearn.datasets.load_digits")


def _unpickle(path: Path, hint: str) -> dict:
    if not path.exists():
        raise DataError(f"missing data file {path}. {hint}")
    try:
        with open(path, "rb") as f:
            return pickle.load(f, encoding="latin1")
    except Exception as e:  # pickle raises many types on corrupt input
        raise DataError(f"cannot unpickle {path} ({type(e).__name__}: {e}); the file is corrupt. {hint}") from e


def _cifar_images(d: dict, path: Path, hint: str) -> np.ndarray:
    data = np.asarray(d.get("data"))
    if data.ndim != 2 or data.shape[1] != 3072:
        raise DataError(f"{path} holds data of shape {data.shape}, expected (N, 3072). {hint}")
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)


def _cifar_labels(d: dict, key: str, n: int, classes: int, path: Path, hint: str) -> np.ndarray:
    """The labels under ``key``: one per image, integers in [0, classes); else a DataError naming the file."""
    if key not in d:
        raise DataError(f"{path} has no {key!r} entry; it is not a CIFAR batch. {hint}")
    y = np.asarray(d[key])
    if y.ndim != 1 or len(y) != n:
        raise DataError(f"{path} holds {n} images but labels of shape {y.shape}; the file is corrupt. {hint}")
    if n and (not np.issubdtype(y.dtype, np.integer) or y.min() < 0 or y.max() >= classes):
        raise DataError(f"{path} has labels outside 0..{classes - 1} (min {y.min()}, max {y.max()}); the file is "
                        f"corrupt or from another dataset. {hint}")
    return y


@DATASETS.register("cifar10")
def cifar10(root: str | os.PathLike | None = None) -> RawData:
    """CIFAR-10 from the standard python-pickle folder ``cifar-10-batches-py`` ($DYNINFER_CIFAR10)."""
    folder = Path(root or os.environ.get("DYNINFER_CIFAR10") or "cifar-10-batches-py")
    hint = ("Download cifar-10-python.tar.gz from the CIFAR-10 site, unpack it, and pass the "
            "cifar-10-batches-py folder as --data-root or $DYNINFER_CIFAR10.")
    xs, ys = [], []
    for i in range(1, 6):
        path = folder / f"data_batch_{i}"
        d = _unpickle(path, hint)
        xs.append(_cifar_images(d, path, hint))
        ys.append(_cifar_labels(d, "labels", len(xs[-1]), 10, path, hint))
    test_path = folder / "test_batch"
    t = _unpickle(test_path, hint)
    meta = _unpickle(folder / "batches.meta", hint)
    tx = _cifar_images(t, test_path, hint)
    return RawData(_to_split(np.concatenate(xs), np.concatenate(ys)),
                   _to_split(tx, _cifar_labels(t, "labels", len(tx), 10, test_path, hint)),
                   tuple(meta["label_names"]), str(folder))


@DATASETS.register("cifar100")
def cifar100(root: str | os.PathLike | None = None) -> RawData:
    """CIFAR-100 (fine labels) from the standard python-pickle folder ``cifar-100-python`` ($DYNINFER_CIFAR100)."""
    folder = Path(root or os.environ.get("DYNINFER_CIFAR100") or "cifar-100-python")
    hint = ("Download cifar-100-python.tar.gz from the CIFAR site, unpack it, and pass the "
            "cifar-100-python folder as --data-root or $DYNINFER_CIFAR100.")
    parts = {}
    for part in ("train", "test"):
        path = folder / part
        d = _unpickle(path, hint)
        x = _cifar_images(d, path, hint)
        parts[part] = _to_split(x, _cifar_labels(d, "fine_labels", len(x), 100, path, hint))
    meta = _unpickle(folder / "meta", hint)
    return RawData(parts["train"], parts["test"], tuple(meta["fine_label_names"]), str(folder))


@DATASETS.register("imagefolder")
def imagefolder(root: str | os.PathLike | None = None, image_size: int = 32) -> RawData:
    """Any torchvision ``ImageFolder`` tree with ``train/`` and ``test/`` (or ``val/``) subfolders.

    Images are resized to ``image_size`` (square, $DYNINFER_IMAGE_SIZE) and held in memory.
    """
    from torchvision import datasets, transforms

    if root is None:
        raise DataError("imagefolder needs --data-root: a folder with train/<class>/*.jpg and test/<class>/*.jpg")
    folder = Path(root)
    size = int(os.environ.get("DYNINFER_IMAGE_SIZE", image_size))
    tf = transforms.Compose([transforms.Resize((size, size)), transforms.PILToTensor()])
    parts = {}
    classes: list[str] | None = None
    for part, alts in (("train", ("train",)), ("test", ("test", "val"))):
        sub = next((folder / a for a in alts if (folder / a).is_dir()), None)
        if sub is None:
            raise DataError(f"{folder} has no {' or '.join(alts)} subfolder; ImageFolder layout is "
                            f"{folder}/train/<class>/<image> and {folder}/test/<class>/<image>")
        try:
            ds = datasets.ImageFolder(str(sub), transform=tf)
        except (FileNotFoundError, OSError) as e:
            raise DataError(f"cannot read image folder {sub}: {e}") from e
        if classes is not None and ds.classes != classes:
            raise DataError(f"{sub} has classes {ds.classes} but train has {classes}")
        classes = ds.classes
        xs, ys = [], []
        for i in range(len(ds)):
            try:
                img, label = ds[i]
            except OSError as e:
                raise DataError(f"cannot decode {ds.samples[i][0]}: {e}") from e
            if img.shape[0] == 1:
                img = img.expand(3, -1, -1)
            xs.append(img[:3])
            ys.append(label)
        if not xs:
            raise DataError(f"{sub} holds no images")
        parts[part] = Split(torch.stack(xs).float().div_(255.0), torch.tensor(ys, dtype=torch.long))
    return RawData(parts["train"], parts["test"], tuple(classes or ()), str(folder))
