"""EBJR for object detection: canvases, free energy over boxes (eqs. 12-13), the cascade's trace and runtime."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from dyninfer.data.canvas import CanvasConfig, build_split, check_boxes, load_canvases, tight_box
from dyninfer.data.datasets import load_dataset
from dyninfer.errors import ConfigError, DataError, InputError, NotFittedError
from dyninfer.methods import load_method
from dyninfer.methods.cascade.detection import DetectionCascade, mean_average_precision, record_pair
from dyninfer.models.detection import DetectorConfig, build_detector
from dyninfer.train.detection import DetRecipe, cached_detector

TINY = CanvasConfig(train=48, calib=24, test=24, p_empty=0.2)


@pytest.fixture(scope="module")
def items():
    return load_dataset("fashion-mnist", seed=0).test


@pytest.fixture(scope="module")
def canvases(tmp_path_factory):
    return load_canvases(TINY, seed=0, root=tmp_path_factory.mktemp("canvas"), log=lambda s: None)


@pytest.fixture(scope="module")
def pair(canvases, tmp_path_factory):
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("ckpt")
    rec = DetRecipe(epochs=1, batch_size=16)
    s, _ = cached_detector(DetectorConfig(width=4, depth=0, head=8, head_convs=0), canvases, rec, root=root,
                           log=lambda s: None)
    t, _ = cached_detector(DetectorConfig(width=8, depth=1, head=16, head_convs=1), canvases, rec, root=root,
                           log=lambda s: None)
    return s, t


def test_canvases_deterministic_tight_and_inside(items):
    cfg = CanvasConfig(train=1, calib=1, test=1, max_items=4)
    a, b = build_split(items, 30, cfg, seed=3), build_split(items, 30, cfg, seed=3)
    assert torch.equal(a.x, b.x) and all(torch.equal(u, v) for u, v in zip(a.boxes, b.boxes))
    assert all(torch.equal(u, v) for u, v in zip(a.labels, b.labels))
    assert not torch.equal(a.x, build_split(items, 30, cfg, seed=4).x)
    assert any(len(bx) == 0 for bx in a.boxes) and any(len(bx) > 1 for bx in a.boxes)
    for img, bx in zip(a.x, a.boxes):
        assert ((bx >= 0) & (bx[:, 2:] <= 64).repeat(1, 2)).all()
        cover = torch.zeros(64, 64, dtype=torch.bool)
        for x0, y0, x1, y1 in bx.long().tolist():
            cover[y0:y1, x0:x1] = True
        assert not (img[0] > 0)[~cover].any()  # every item pixel lies in a box
    one = build_split(items, 30, CanvasConfig(train=1, calib=1, test=1, max_items=1, p_empty=0.0), seed=0)
    for img, bx in zip(one.x, one.boxes):  # a lone item: its box is exactly the tight box of its pixels
        assert tight_box(img[0] > 0) == tuple(int(v) for v in bx[0].tolist())


def test_canvas_cache_roundtrip_and_corruption(canvases, tmp_path):
    root = tmp_path / "c"
    d1 = load_canvases(TINY, seed=0, root=root, log=lambda s: None)
    d2 = load_canvases(TINY, seed=0, root=root, log=lambda s: None)
    assert torch.equal(d1.test.x, d2.test.x) and d1.fingerprint == d2.fingerprint == canvases.fingerprint
    path = next(root.glob("*/canvas.pt"))
    p = torch.load(path, weights_only=True)
    p["test"]["x"][0, 0, 0, 0] += 1  # a changed pixel, checksum left as it was
    torch.save(p, path)
    with pytest.raises(DataError, match="delete"):
        load_canvases(TINY, seed=0, root=root, log=lambda s: None)
    path.write_bytes(path.read_bytes()[:100])  # truncated
    with pytest.raises(DataError, match="rebuild"):
        load_canvases(TINY, seed=0, root=root, log=lambda s: None)


def test_boxes_outside_or_degenerate():
    b = torch.tensor([[-5.0, 2, 10, 12], [60, 60, 70, 80], [3, 3, 3, 9], [70, 1, 80, 5]])
    clipped, keep = check_boxes(b, (64, 64))
    assert keep.tolist() == [True, True, False, False]
    assert clipped.tolist() == [[0, 2, 10, 12], [60, 60, 64, 64]]
    with pytest.raises(InputError, match="outside"):
        check_boxes(b, (64, 64), mode="error")
    with pytest.raises(InputError, match="degenerate"):
        check_boxes(b[2:3], (64, 64), mode="error")
    with pytest.raises(InputError, match="NaN"):
        check_boxes(torch.tensor([[0.0, 0, float("nan"), 1]]), (64, 64))
    assert check_boxes(torch.zeros(0, 4), (64, 64))[0].shape == (0, 4)


def _lse(v) -> float:
    m = max(v)
    return m + math.log(sum(math.exp(x - m) for x in v))


def test_free_energy_eqs_12_13_by_hand():
    torch.manual_seed(0)
    C, K = 3, 5
    m = build_detector(DetectorConfig(num_classes=C, bins=K, image_size=16, bin_px=1.0)).eval()
    out = torch.randn(1, C + 4 * K, 4, 4)
    out[:, :C] = -9.0                    # no detection anywhere ...
    out[0, 1, 0, 0] = 2.0                # ... but class 1 at location (0, 0) and class 2 at (3, 3)
    out[0, 2, 3, 3] = 0.5
    o = m.decode(out, energy_score=0.3)
    assert int(o.n_boxes[0]) == 2 and len(o.detections[0]["scores"]) == 2
    flat = out[0].reshape(C + 4 * K, 16)
    fc, fr = [], []
    for loc in (0, 15):
        fc.append(-_lse(flat[:C, loc].tolist()))                                          # eq. 12 term
        fr.append(sum(-_lse(flat[C + j * K:C + (j + 1) * K, loc].tolist()) for j in range(4)))  # eq. 13 terms
    F_c, F_r = sum(fc) / 2, sum(fr) / (4 * 2)
    assert o.neg_energy_cls[0].item() == pytest.approx(-F_c, abs=1e-5)
    assert o.neg_energy_box[0].item() == pytest.approx(-F_r, abs=1e-5)
    assert o.neg_energy[0].item() == pytest.approx(-(F_c + F_r), abs=1e-5)
    assert o.confidence[0].item() == pytest.approx((1 / (1 + math.exp(-2)) + 1 / (1 + math.exp(-0.5))) / 2, abs=1e-6)
    # no box above energy_score: the best location stands in for B (defined -F for an empty image)
    out2 = out.clone()
    out2[0, 1, 0, 0] = -3.0
    out2[0, 2, 3, 3] = -9.0
    e = m.decode(out2, energy_score=0.3)
    assert int(e.n_boxes[0]) == 0
    want = _lse(flat[:C, 0].tolist()[:1] + [-3.0] + flat[2:C, 0].tolist()) + sum(
        _lse(flat[C + j * K:C + (j + 1) * K, 0].tolist()) for j in range(4)) / 4
    assert e.neg_energy[0].item() == pytest.approx(want, abs=1e-5)


def test_empty_images_through_runtime_and_metric(pair, canvases):
    pytest.importorskip("torchmetrics")
    s, t = pair
    casc = DetectionCascade(grid=4).fit(record_pair(s, t, canvases.calib.x, canvases.calib.targets()))
    x = torch.cat([torch.zeros(2, 1, 64, 64), canvases.test.x[:4]])  # two blank canvases
    targets = [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}] * 2 + canvases.test.targets(range(4))
    for knob in (-np.inf, 0.0, np.inf):
        res = casc.runtime(pair, knob=knob)(x)
        assert len(res.detections) == 6 and res.keep.shape == (6,)
        assert all(d["boxes"].shape[1:] == (4,) for d in res.detections)
        mean_average_precision(res.detections, targets)
    nothing = [{"boxes": torch.zeros(0, 4), "scores": torch.zeros(0), "labels": torch.zeros(0, dtype=torch.long)}] * 6
    assert mean_average_precision(nothing, targets)["map"] <= 0  # no detection at all: mAP 0 (or -1), no crash
    with pytest.raises(InputError, match="empty batch"):  # the shared batch rules: an empty batch is refused
        casc.runtime(pair, knob=0.0)(x[:0])
    with pytest.raises(InputError, match="NaN"):
        casc.runtime(pair)(torch.full((1, 1, 64, 64), float("nan")))
    with pytest.raises(InputError):
        s.detect(torch.zeros(2, 3, 64, 64))


def test_runtime_equals_simulate_and_save_load(pair, canvases, tmp_path):
    pytest.importorskip("torchmetrics")
    s, t = pair
    split = canvases.test
    rec = record_pair(s, t, split.x, split.targets(), batch_size=64)
    casc = DetectionCascade(router="energy", grid=4).fit(record_pair(s, t, canvases.calib.x, canvases.calib.targets()))
    sc = np.sort(rec.student.neg_energy.numpy())
    mids = (sc[:-1] + sc[1:]) / 2
    for knob in [-np.inf, float(mids[len(mids) // 3]), float(mids[2 * len(mids) // 3]), np.inf, None]:
        sim = casc.simulate(rec, knob)
        run = casc.runtime(pair, knob=knob)(split.x)
        assert (run.keep.numpy() == sim.keep).all()
        for a, b in zip(run.detections, sim.detections):
            assert torch.allclose(a["boxes"], b["boxes"], atol=1e-4) and torch.equal(a["labels"], b["labels"])
            assert torch.allclose(a["scores"], b["scores"], atol=1e-5)
        assert sim.map == pytest.approx(mean_average_precision(run.detections, split.targets())["map"])
    cv = casc.curve(rec)
    assert cv.cost.min() >= rec.flops[0] and cv.cost.max() == pytest.approx(sum(rec.flops))
    casc.save(tmp_path)
    back = load_method(tmp_path)
    assert isinstance(back, DetectionCascade)
    assert back.knob_ == casc.knob_ and back.router == "energy" and back.calib_map_ == casc.calib_map_
    assert (back.simulate(rec).keep == casc.simulate(rec).keep).all()


def test_bad_settings(pair):
    with pytest.raises(ConfigError, match="router"):
        DetectionCascade(router="entropy")
    with pytest.raises(ConfigError, match="tolerance"):
        DetectionCascade(tolerance=1.5)
    with pytest.raises(NotFittedError):
        DetectionCascade().runtime(pair)
    with pytest.raises(ConfigError):
        DetectorConfig(image_size=30)


def test_detector_cache_reused(canvases, tmp_path):
    logs: list[str] = []
    cfg, rec = DetectorConfig(width=2, depth=0, head=4, head_convs=0), DetRecipe(epochs=1, batch_size=48)
    m1, _ = cached_detector(cfg, canvases, rec, root=tmp_path, log=logs.append)
    m2, meta = cached_detector(cfg, canvases, rec, root=tmp_path, log=logs.append)
    assert any(s.startswith("[cache]") for s in logs) and Path(meta["checkpoint"]).exists()
    assert all(torch.equal(a, b) for a, b in zip(m1.state_dict().values(), m2.state_dict().values()))


def test_count_router_orders_by_boxes_then_energy():
    """Fewer confident boxes keep first; among images with as many boxes, the higher -F^o keeps first."""
    from dyninfer.methods.cascade.detection import router_score
    from dyninfer.models.detection import DetectionOutput

    e = torch.tensor([9.0, 3.0, 12.0, 5.0])
    n_boxes = torch.tensor([2, 0, 2, 4])
    out = DetectionOutput([{}] * 4, e, e, torch.zeros(4), torch.zeros(4), n_boxes)
    s = router_score("count", out)
    assert list(np.argsort(-s)) == [1, 2, 0, 3]
