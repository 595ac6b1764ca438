import pytest
import torch

from dyninfer import CheckpointError, ConfigError
from dyninfer.data.datasets import DataSpec
from dyninfer.models import create_model, list_models
from dyninfer.runtime.cost import count_flops, count_params
from dyninfer.io import write_payload
from dyninfer.train import Recipe, cached_model, load_checkpoint, read_checkpoint, save_checkpoint

FMNIST = DataSpec("fashion-mnist", 10, 1, (28, 28), (0.286,), (0.353,))


def test_cnn_family_sizes_for_28x28():
    mflops = {n: count_flops(create_model(n, FMNIST), FMNIST.input_shape) / 1e6 for n in ("cnn-s", "cnn-m", "cnn-l")}
    assert 1.5 < mflops["cnn-s"] < 3
    assert 20 < mflops["cnn-m"] < 40
    assert mflops["cnn-l"] > 200
    for n in ("cnn-s", "cnn-m", "cnn-l"):
        assert create_model(n, FMNIST)(torch.rand(2, 1, 28, 28)).shape == (2, 10)


def test_registry_lists_torchvision_builders_and_builds_offline():
    names = list_models("tv-*")
    for n in ("tv-resnet18", "tv-resnet50", "tv-mobilenet_v2", "tv-mobilenet_v3_large", "tv-densenet121",
              "tv-densenet161", "tv-efficientnet_b0"):
        assert n in names
    spec = DataSpec("c", 7, 3, (32, 32), (0.5,) * 3, (0.25,) * 3)
    m = create_model("tv-resnet18", spec)
    assert m(torch.rand(2, 3, 32, 32)).shape == (2, 7)
    assert 11e6 < count_params(m) < 11.3e6
    grey = create_model("tv-mobilenet_v2", FMNIST).eval()
    assert grey(torch.rand(1, 1, 28, 28)).shape == (1, 10)


def test_torchvision_weights_errors(tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match="has no weights 'NOPE'"):
        create_model("tv-resnet18", FMNIST, weights="NOPE")
    monkeypatch.setenv("DYNINFER_OFFLINE", "1")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(CheckpointError, match="not in the torch hub cache"):
        create_model("tv-resnet18", FMNIST, weights="IMAGENET1K_V1")
    bad = tmp_path / "w.pth"
    torch.save({"fc.weight": torch.zeros(3, 3)}, bad)
    with pytest.raises(CheckpointError, match="do not fit torchvision resnet18"):
        create_model("tv-resnet18", FMNIST, weights=str(bad))


def test_real_weight_loading_from_a_local_state_dict(tmp_path):
    import torchvision

    net = torchvision.models.resnet18(weights=None)
    torch.save(net.state_dict(), tmp_path / "r18.pth")
    m = create_model("tv-resnet18", FMNIST, weights=str(tmp_path / "r18.pth"))
    # the backbone weights are the file's; the classifier is resized to the data's 10 classes
    assert torch.equal(m.net.conv1.weight, net.conv1.weight)
    assert m.net.fc.out_features == 10


def test_checkpoint_round_trip_and_errors(tmp_path):
    torch.manual_seed(0)
    m = create_model("cnn-s", FMNIST)
    p = save_checkpoint(m, tmp_path / "a.pt", {"test_accuracy": 0.5})
    m2, meta = load_checkpoint(p, expect_model="cnn-s")
    x = torch.rand(3, 1, 28, 28)
    m.eval()
    assert torch.equal(m(x), m2(x)) and meta["test_accuracy"] == 0.5
    with pytest.raises(CheckpointError, match="holds a 'cnn-s', not a 'cnn-m'"):
        load_checkpoint(p, expect_model="cnn-m")
    data = p.read_bytes()
    (tmp_path / "trunc.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="unreadable .*truncated"):
        load_checkpoint(tmp_path / "trunc.pt")
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pt")
    # a checkpoint whose weights belong to another architecture
    payload = read_checkpoint(p)
    payload["arch"]["name"] = "cnn-m"
    write_payload(tmp_path / "swapped.pt", payload)
    with pytest.raises(CheckpointError, match="another architecture"):
        load_checkpoint(tmp_path / "swapped.pt")
    # one byte changed inside a weight tensor: torch still reads the file, the checksum refuses it
    weight = m.state_dict()["head.3.weight"].numpy().tobytes()
    at = data.index(weight) + len(weight) // 2
    (tmp_path / "flipped.pt").write_bytes(data[:at] + bytes([data[at] ^ 0x01]) + data[at + 1:])
    assert torch.load(tmp_path / "flipped.pt", weights_only=True)["format"] == "dyninfer-checkpoint-2"
    with pytest.raises(CheckpointError, match=r"flipped.pt does not match its SHA-256 checksum.*Delete it"):
        load_checkpoint(tmp_path / "flipped.pt")
    # no stray temporary files next to the checkpoints
    assert not [f for f in tmp_path.iterdir() if f.name.startswith(".")]


def test_model_not_from_registry_cannot_be_saved(tmp_path):
    with pytest.raises(CheckpointError, match="create_model"):
        save_checkpoint(torch.nn.Linear(2, 2), tmp_path / "x.pt")


def test_cached_model_trains_once_then_reuses(digits, tmp_path):
    logs = []
    r = Recipe(epochs=1, hflip=False)
    m1, meta1 = cached_model("cnn-s", digits, r, root=tmp_path, progress=False, log=logs.append)
    m2, meta2 = cached_model("cnn-s", digits, r, root=tmp_path, progress=False, log=logs.append)
    assert logs[0].startswith("[train]") and logs[1].startswith("[cache]")
    assert meta1 == meta2 and set(meta1) >= {"test_accuracy", "flops", "params", "recipe", "versions", "seed"}
    for a, b in zip(m1.state_dict().values(), m2.state_dict().values()):
        assert torch.equal(a, b)
    # a corrupt cache entry is retrained, not used
    path = next(tmp_path.rglob("*.pt"))
    path.write_bytes(b"junk")
    cached_model("cnn-s", digits, r, root=tmp_path, progress=False, log=logs.append)
    assert "unreadable" in logs[2] and logs[3].startswith("[train]")


def test_recipe_rejects_unknown_keys():
    assert Recipe.from_dict({"epochs": 3}).epochs == 3
    with pytest.raises(ConfigError, match="unknown Recipe keys"):
        Recipe.from_dict({"epoch": 3})


def test_early_exit_checkpoint_loads_without_importing_its_method(tmp_path):
    """A fresh interpreter that only imports the checkpoint loader still knows the revcol-* backbones."""
    import subprocess
    import sys

    from dyninfer.data import load_dataset

    spec = load_dataset("digits", calib_size=100).spec
    torch.manual_seed(0)
    net = create_model("revcol-tiny", spec)
    path = save_checkpoint(net, tmp_path / "revcol.pt", {"note": "test"})
    code = ("import sys, torch; from dyninfer.train import load_checkpoint; net, meta = load_checkpoint(sys.argv[1]); "
            "print(type(net).__name__, net.n_exits, meta['note'])")
    out = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["RevColNet", str(net.n_exits), "test"]
