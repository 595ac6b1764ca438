"""The shared backbone pool and LRU manager: budget, LRU order, pinning, threads, loading from checkpoints."""

from __future__ import annotations

import dataclasses
import random
import threading
import time
from pathlib import Path

import pytest
import torch
from torch import nn

from dyninfer.data.datasets import load_dataset
from dyninfer.errors import CheckpointError, ConfigError, DyninferError
from dyninfer.runtime.manager import BackboneManager
from dyninfer.runtime.pool import BackbonePool, load_backbone
from dyninfer.models import create_model
from dyninfer.runtime.cost import count_flops, model_bytes
from dyninfer.train.checkpoint import save_checkpoint


pytestmark = pytest.mark.usefixtures("one_thread")


def _tagged(name: str, width: int) -> nn.Module:
    m = nn.Linear(width, width)  # (width^2 + width) float32 parameters
    m.tag = name
    return m


def _pool(widths: dict[str, int], delay: float = 0.0) -> BackbonePool:
    def factory(name, w):
        def f():
            if delay:
                time.sleep(delay)
            return _tagged(name, w)
        return f
    return BackbonePool.from_factories({n: factory(n, w) for n, w in widths.items()})


def _size(w: int) -> int:
    return (w * w + w) * 4


def test_lru_order_hits_misses_evictions():
    pool = _pool({"a": 10, "b": 10, "c": 10})
    mgr = BackboneManager(pool, 2 * _size(10))  # holds two of three
    assert mgr.get("a").tag == "a" and mgr.get("b").tag == "b"
    mgr.get("a")  # hit: a becomes most recent, b is now least recent
    assert mgr.resident() == ["b", "a"]
    mgr.get("c")  # miss: evicts b, the least recently used
    assert mgr.resident() == ["a", "c"]
    mgr.get("b")  # miss: evicts a
    assert mgr.resident() == ["c", "b"]
    st = mgr.stats()
    assert (st.hits, st.misses, st.evictions) == (1, 4, 2)
    assert st.loads == {"a": 1, "b": 2, "c": 1}
    assert st.load_seconds > 0
    assert st.peak_bytes == st.peak_measured_bytes == 2 * _size(10)
    assert mgr.resident_bytes() == {"cpu": 2 * _size(10)}
    mgr.reset_stats()
    assert mgr.stats().requests == 0 and mgr.resident() == ["c", "b"]


def test_budget_below_largest_backbone_is_config_error():
    pool = _pool({"small": 4, "big": 32})
    with pytest.raises(ConfigError, match="smaller than the largest backbone 'big'"):
        BackboneManager(pool, _size(32) - 1)
    BackboneManager(pool, _size(32))  # exactly the largest is fine
    with pytest.raises(ConfigError, match="not in the pool"):
        BackboneManager(pool, 10 ** 6).get("huge")


def test_pinned_backbone_is_not_evicted_and_waiting_times_out():
    pool = _pool({"a": 10, "b": 10, "c": 10})
    mgr = BackboneManager(pool, 2 * _size(10), wait_timeout_s=0.3)
    with mgr.use("a"):
        mgr.get("b")
        mgr.get("c")  # must evict b (unpinned), not the pinned a even though a is older
        assert set(mgr.resident()) == {"a", "c"}
    mgr2 = BackboneManager(pool, _size(10), wait_timeout_s=0.2)
    with mgr2.use("a"):
        with pytest.raises(DyninferError, match="fill the budget"):
            mgr2.get("b")  # the only slot is pinned by this very thread
    assert mgr2.get("b").tag == "b"  # released: now it loads


def test_concurrent_use_stays_within_budget():
    widths = {"a": 16, "b": 24, "c": 32, "d": 20, "e": 12}
    pool = _pool(widths, delay=0.002)
    budget = _size(32) + _size(24)  # about half of the pool
    mgr = BackboneManager(pool, budget)
    errors: list[str] = []
    n_threads, per_thread = 6, 40

    def worker(seed: int) -> None:
        rng = random.Random(seed)
        for _ in range(per_thread):
            name = rng.choice(list(widths))
            try:
                with mgr.use(name) as m:
                    if m.tag != name:
                        errors.append(f"got {m.tag} for {name}")
                    if mgr.used_bytes > budget:
                        errors.append(f"used {mgr.used_bytes} > {budget}")
                    if sum(mgr.resident_bytes().values()) > budget:
                        errors.append("resident bytes over budget")
                    m(torch.zeros(1, widths[name]))
            except Exception as e:  # pragma: no cover - reported below
                errors.append(repr(e))

    threads = [threading.Thread(target=worker, args=(s,)) for s in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[:5]
    st = mgr.stats()
    assert st.hits + st.misses == n_threads * per_thread
    assert st.peak_bytes <= budget and st.peak_measured_bytes <= budget
    assert st.evictions > 0


def test_load_failure_releases_reservation():
    def broken():
        raise RuntimeError("disk on fire")

    pool = BackbonePool.from_factories({"ok": lambda: _tagged("ok", 4)})
    pool = BackbonePool([pool["ok"], dataclasses.replace(pool["ok"], name="bad", load=broken)])
    mgr = BackboneManager(pool, 10 ** 6)
    with pytest.raises(CheckpointError, match="disk on fire"):
        mgr.get("bad")
    assert mgr.used_bytes == 0 and mgr.resident() == []
    assert mgr.get("ok").tag == "ok"


def test_pool_from_checkpoints_loads_weights(tmp_path):
    data = load_dataset("digits", calib_size=100)
    torch.manual_seed(0)
    model = create_model("cnn-s", data.spec).eval()
    path = save_checkpoint(model, tmp_path / "cnn-s.pt")
    pool = BackbonePool.from_checkpoints({"small": path})
    assert pool["small"].bytes == sum(model_bytes(model).values())
    mgr = BackboneManager(pool, pool.total_bytes)
    x = data.test.x[:16]
    with torch.no_grad():
        assert torch.equal(mgr.get("small")(x), model(x))
    with pytest.raises(CheckpointError, match="not a 'cnn-m'"):
        load_backbone(path, expect_model="cnn-m")
    with pytest.raises(CheckpointError, match="does not exist"):
        BackbonePool.from_checkpoints({"gone": tmp_path / "missing.pt"})
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError):
        BackbonePool.from_checkpoints({"junk": tmp_path / "junk.pt"})
    with pytest.raises(ConfigError, match="duplicate"):
        BackbonePool([pool["small"], pool["small"]])


def test_torchvision_pool_structure_size_and_cost(tmp_path):
    data = load_dataset("digits", calib_size=100)
    spec = dataclasses.replace(data.spec, image_size=(32, 32))
    pool = BackbonePool.from_registry(["tv-mobilenet_v3_large", "tv-mobilenet_v2"], spec, tmp_path, weights=None)
    ref = create_model("tv-mobilenet_v2", spec)
    assert pool["tv-mobilenet_v2"].bytes == sum(model_bytes(ref).values())
    assert pool["tv-mobilenet_v2"].source.startswith("checkpoint:")
    mgr = BackboneManager(pool, pool.largest_bytes)
    x = torch.rand(2, 1, 32, 32)
    with torch.no_grad(), mgr.use("tv-mobilenet_v2") as m:
        assert m(x).shape == (2, spec.num_classes)
        assert count_flops(m, (1, 32, 32)) == count_flops(ref, (1, 32, 32)) > 1e6
    with torch.no_grad(), mgr.use("tv-mobilenet_v3_large") as m:
        assert m(x).shape == (2, spec.num_classes)
    assert mgr.resident() == ["tv-mobilenet_v3_large"] and mgr.stats().evictions == 1
    # files are reused, not rebuilt: the checkpoint is not written again
    ckpt = Path(pool["tv-mobilenet_v2"].source.removeprefix("checkpoint:"))
    stamp = ckpt.stat().st_mtime_ns
    again = BackbonePool.from_registry(["tv-mobilenet_v2"], spec, tmp_path, weights=None)
    assert again["tv-mobilenet_v2"].source == pool["tv-mobilenet_v2"].source
    assert ckpt.stat().st_mtime_ns == stamp
