"""Static and fixed-cascade baselines of the big/little report (NAS paper 4.3) on a small digits set: the torchvision
models at 8x8 and 28x28, training through the cache, the measured rows, and the fixed cascade's runtime against a
direct computation at thresholds 0, in between and above 1."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from dyninfer import ConfigError
from dyninfer.data.datasets import DataSpec, Split
from dyninfer.errors import InputError
from dyninfer.methods.bigsmall.baselines import (STATIC_MODELS, call_activation_peak, cascade_runtime,
                                                 fixed_cascade, topk_accuracy, train_static)
from dyninfer.models import create_model, list_models
from dyninfer.runtime.cost import count_flops
from dyninfer.train.recipe import Recipe

pytestmark = pytest.mark.usefixtures("one_thread")

RECIPE = Recipe(epochs=1, batch_size=16, hflip=False, shift=1)  # 8 steps (OneCycleLR fails on 4 or fewer)


@pytest.fixture(scope="module")
def small_digits():
    """Digits with 128 training, 100 calibration and 64 test images (128 = 8 full batches of 16)."""
    from dyninfer.data import load_dataset

    return load_dataset("digits", calib_size=100, seed=0, train_limit=128, test_limit=64)


@pytest.fixture(scope="module")
def trained(small_digits, one_thread):
    """The three static models, one epoch each (a few seconds)."""
    return train_static(None, small_digits, RECIPE, progress=False, log=lambda s: None)


def _grey(hw: int) -> DataSpec:
    return DataSpec(name=f"grey{hw}", num_classes=10, in_channels=1, image_size=(hw, hw), mean=(0.5,), std=(0.25,))


@pytest.mark.parametrize("hw", [8, 28])
def test_torchvision_models_run_on_small_grey_images(hw):
    assert set(STATIC_MODELS) <= set(list_models("tv-*"))
    flops = {}
    for name in STATIC_MODELS:
        m = create_model(name, _grey(hw)).eval()
        with torch.inference_mode():
            assert m(torch.rand(2, 1, hw, hw)).shape == (2, 10)
        flops[name] = count_flops(m, (1, hw, hw))
    assert flops["tv-mobilenet_v3_large"] > flops["tv-mobilenet_v3_small"] > 0
    assert flops["tv-efficientnet_b0"] > flops["tv-mobilenet_v3_small"]


def test_unknown_names_and_bad_training_data_are_refused(small_digits):
    with pytest.raises(ConfigError, match=r"unknown backbone 'tv-nope'.*tv-mobilenet_v3_small"):
        train_static(["tv-mobilenet_v3_small", "tv-nope"], small_digits, RECIPE, progress=False)
    with pytest.raises(ConfigError, match="distinct"):
        train_static(["tv-mobilenet_v3_small"] * 2, small_digits, RECIPE, progress=False)
    empty = Split(small_digits.train.x[:0], small_digits.train.y[:0])
    with pytest.raises(InputError, match="empty"):
        train_static(None, type(small_digits)(small_digits.spec, empty, small_digits.calib, small_digits.test),
                     RECIPE, progress=False)
    with pytest.raises(ConfigError, match="last batch of one"):  # 17 images in batches of 16: BatchNorm at 1x1 fails
        one_left = small_digits.train.subset(range(17))
        train_static(None, type(small_digits)(small_digits.spec, one_left, small_digits.calib, small_digits.test),
                     RECIPE, progress=False)


def test_train_static_trains_once_then_reuses_the_cache(small_digits, trained):
    assert list(trained) == list(STATIC_MODELS)
    for name, (model, meta) in trained.items():
        assert not model.training and meta["model"] == name and 0 <= meta["test_accuracy"] <= 1
    lines = []
    again = train_static(["tv-mobilenet_v3_small"], small_digits, RECIPE, progress=False, log=lines.append)
    assert any(line.startswith("[cache] tv-mobilenet_v3_small") for line in lines)
    a, b = again["tv-mobilenet_v3_small"][0], trained["tv-mobilenet_v3_small"][0]
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))


def test_top5_with_fewer_than_five_classes_is_one():
    logits, labels = torch.randn(20, 3), torch.randint(0, 3, (20,))
    assert topk_accuracy(logits, labels, 5) == 1.0
    assert topk_accuracy(logits, labels, 1) == pytest.approx((logits.argmax(1) == labels).float().mean().item())


def test_peak_memory_counts_the_activations():
    conv = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU())  # output (1, 8, 8, 8) float32: 2048 bytes
    with torch.inference_mode():
        peak, method = call_activation_peak(lambda: conv(torch.rand(1, 1, 8, 8)))
    assert peak >= 8 * 8 * 8 * 4 and "profiler" in method


def _direct(little, big, x, threshold):
    """The cascade computed directly: little's answer where its max-softmax reaches the threshold, else big's."""
    with torch.inference_mode():
        lo, hi = little(x), big(x)  # (N, K) each
    keep = lo.softmax(1).amax(1) >= threshold
    return torch.where(keep, lo.argmax(1), hi.argmax(1)), keep, lo, hi


@pytest.fixture(scope="module")
def pair(small_digits, trained):
    """Copies of the trained little and big models with BatchNorm statistics re-estimated on the training images:
    eight steps leave torchvision's slow running statistics (momentum 0.01) near their initial values, and the
    models then give nearly the same confidence for every image, which would leave no threshold in between."""
    out = []
    for name in ("tv-mobilenet_v3_small", "tv-mobilenet_v3_large"):
        m = copy.deepcopy(trained[name][0])
        torch.optim.swa_utils.update_bn(small_digits.train.x.split(32), m)
        out.append(m.eval())
    return tuple(out)


def test_fixed_cascade_equals_the_direct_computation(small_digits, pair):
    test = small_digits.test
    little, big = pair
    with torch.inference_mode():
        conf = np.sort(little(test.x).softmax(1).amax(1).numpy())
    mid = float((conf[len(conf) // 2] + conf[len(conf) // 2 + 1]) / 2)  # between two scores: no tie at the threshold
    lf, bf = count_flops(little, (1, 8, 8)), count_flops(big, (1, 8, 8))
    for threshold in (0.0, mid, 1.01):
        pred, keep, lo, hi = _direct(little, big, test.x, threshold)
        res = cascade_runtime(little, big, threshold, input_shape=(1, 8, 8)).run(test.x, 32)
        assert torch.equal(res.pred, pred) and torch.equal(res.path == 0, keep)
        out = fixed_cascade(little, big, test, threshold=threshold, batch_size=32, log=lambda s: None)
        exit_rate = keep.float().mean().item()
        assert out["exit_rate"] == pytest.approx(exit_rate) and out["forwarded_share"] == pytest.approx(1 - exit_rate)
        assert out["top1"] == pytest.approx((pred == test.y).float().mean().item())
        assert out["mean_flops"] == pytest.approx(lf + (1 - exit_rate) * bf)
        assert out["simulation_mismatch"] == {"pred": 0, "path": 0}
        assert out["top1"] <= out["top5"]
        if threshold == 0.0:  # little answers everything
            assert out["exit_rate"] == 1 and out["top1"] == pytest.approx(out["little_top1"])
            assert out["mean_flops"] == pytest.approx(lf)
        elif threshold > 1:  # big answers everything
            assert out["exit_rate"] == 0 and out["top1"] == pytest.approx(out["big_top1"])
            assert out["mean_flops"] == pytest.approx(lf + bf)
        else:
            assert 0 < out["exit_rate"] < 1


def test_empty_split_and_bad_threshold_are_refused(small_digits, trained):
    little, big = trained["tv-mobilenet_v3_small"][0], trained["tv-mobilenet_v3_large"][0]
    empty = Split(small_digits.test.x[:0], small_digits.test.y[:0])
    with pytest.raises(InputError, match="empty"):
        fixed_cascade(little, big, empty)
    with pytest.raises(ConfigError, match="threshold"):
        fixed_cascade(little, big, small_digits.test, threshold=float("nan"))

