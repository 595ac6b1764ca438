"""Path sets: a once-for-all style supernet whose subnetworks are paths, and the pool and staged kinds'
costs, traces and storage."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dyninfer import CheckpointError, ConfigError
from dyninfer.methods.cascade import Cascade
from dyninfer.models import Normalize, register_backbone
from dyninfer.paths import ModulePool, PathSet, SupernetPaths, measure_costs
from dyninfer.runtime.cost import count_flops
from dyninfer.train import Recipe, train

WIDTHS = (4, 8, 16)


class ToySupernet(nn.Module):
    """One conv layer of elastic width and a linear head: the smallest once-for-all style supernet."""

    def __init__(self, spec, widths=WIDTHS) -> None:
        super().__init__()
        self.widths = tuple(widths)
        self.input_shape = spec.input_shape
        self.norm = Normalize(spec.mean, spec.std)
        self.conv = nn.Conv2d(spec.in_channels, max(widths), 3, padding=1)
        self.head = nn.Linear(max(widths), spec.num_classes)
        self.active = max(widths)
        self.rng = np.random.default_rng(0)

    def set_active_subnet(self, cfg: dict) -> None:
        if cfg.get("width") not in self.widths:
            raise ConfigError(f"width must be one of {self.widths}, got {cfg}")
        self.active = cfg["width"]

    def sample_active_subnet(self) -> dict:
        cfg = {"width": int(self.rng.choice(self.widths))}
        self.set_active_subnet(cfg)
        return cfg

    def get_active_subnet(self) -> nn.Module:
        w = self.active
        conv = nn.Conv2d(self.conv.in_channels, w, 3, padding=1)
        head = nn.Linear(w, self.head.out_features)
        with torch.no_grad():
            conv.weight.copy_(self.conv.weight[:w])
            conv.bias.copy_(self.conv.bias[:w])
            head.weight.copy_(self.head.weight[:, :w])
            head.bias.copy_(self.head.bias)
        return nn.Sequential(self.norm, conv, nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), head).eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.active
        h = F.relu(F.conv2d(self.norm(x), self.conv.weight[:w], self.conv.bias[:w], padding=1))
        return F.linear(h.mean((2, 3)), self.head.weight[:, :w], self.head.bias)


@register_backbone("test-toy-supernet")
def _toy(spec, **kwargs) -> ToySupernet:
    return ToySupernet(spec, **kwargs)


@pytest.fixture(scope="module")
def supernet(digits):
    from dyninfer.models import create_model

    torch.manual_seed(0)
    net = create_model("test-toy-supernet", digits.spec)
    recipe = Recipe(epochs=8, batch_size=64, lr=1e-2, hflip=False, shift=1)

    def sandwich_loss(model, x, y):  # the largest and a sampled subnet each step
        model.set_active_subnet({"width": max(WIDTHS)})
        loss = F.cross_entropy(model(x), y)
        model.sample_active_subnet()
        return loss + F.cross_entropy(model(x), y)

    train(net, digits.train, recipe, progress=False, loss_fn=sandwich_loss)
    return net.eval()


def test_static_subnets_compute_what_the_supernet_computes(supernet, digits):
    x = digits.test.x[:32]
    for w in WIDTHS:
        supernet.set_active_subnet({"width": w})
        with torch.no_grad():
            assert torch.allclose(supernet.get_active_subnet()(x), supernet(x), atol=1e-5)
    cfg = supernet.sample_active_subnet()
    assert cfg["width"] in WIDTHS and supernet.active == cfg["width"]


def test_subnets_are_paths_of_every_method(supernet, digits, tmp_path):
    paths = SupernetPaths(supernet, {f"w{w}": {"width": w} for w in WIDTHS})
    assert paths.kind == "supernet" and paths.names == ["w4", "w8", "w16"] and paths.input_shape == (1, 8, 8)
    costs = measure_costs(paths, digits.calib.x[:64], batches=(1, 64), rounds=1, repeats=2, min_time_s=0, log=None)
    flops = [c.flops for c in costs]
    assert flops == sorted(flops) and flops[0] < flops[-1]
    assert flops[-1] == count_flops(paths.reference(), paths.input_shape)
    calib, test = paths.record(digits.calib, costs=costs), paths.record(digits.test, costs=costs)
    assert calib.meta["kind"] == "supernet"
    c = Cascade(scores=("max_softmax",), tolerance=0.02).fit(calib)
    rt = c.runtime(paths)
    res, sim = rt.run(digits.test.x, 64), c.simulate(test)
    assert np.array_equal(res.pred.numpy(), sim.pred) and np.array_equal(res.path.numpy(), sim.path)
    folder = paths.save(tmp_path / "paths")
    back = PathSet.load(folder)
    assert isinstance(back, SupernetPaths) and back.configs == paths.configs
    assert np.allclose(back.logits(digits.test.x), paths.logits(digits.test.x), atol=1e-5)


def test_a_module_without_the_supernet_api_is_refused():
    with pytest.raises(ConfigError, match="supernet API"):
        SupernetPaths(nn.Linear(2, 2), {"a": {}})


def test_pool_paths_save_load_and_their_errors(digits_prepared, tmp_path):
    paths = digits_prepared.paths
    assert paths.input_shape == (1, 8, 8)
    inferred = ModulePool(paths.models)  # the input shape comes from how dyninfer built the models
    assert inferred.input_shape == (1, 8, 8)
    folder = paths.subset(["cnn-s"]).save(tmp_path / "p")
    back = PathSet.load(folder)
    x = digits_prepared.data.test.x[:16]
    with torch.no_grad():
        assert torch.equal(back.models["cnn-s"](x), paths.models["cnn-s"](x))
    with pytest.raises(ConfigError, match="no paths"):
        paths.subset(["cnn-xl"])
    with pytest.raises(ConfigError, match="at least one module"):
        ModulePool({})
    (folder / "paths.json").write_text('{"kind": "forest", "names": []}')
    with pytest.raises(CheckpointError, match="checksum"):
        PathSet.load(folder)
    with pytest.raises(CheckpointError, match="paths.json missing"):
        PathSet.load(tmp_path / "nowhere")
