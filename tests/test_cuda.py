"""The same code paths on a CUDA device: training, traces, the runtimes, adaptation, the manager, the pipeline.

Skipped where no CUDA device is present (the usual CPU machine); run them on a GPU machine with
``python -m pytest tests/test_cuda.py``.
"""

import json

import pytest
import torch

from dyninfer.methods.cascade import Cascade
from dyninfer.paths import measure_costs
from dyninfer.runtime.cost import count_flops, measure_latency

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.fixture(scope="module")
def cuda_prepared():
    from dyninfer.harness import prepare

    torch.manual_seed(0)
    return prepare("digits", "tiny", device="cuda", progress=False, log=lambda s: None)


def test_models_train_and_trace_on_cuda(cuda_prepared):
    prep = cuda_prepared
    for name, model in prep.paths.models.items():
        assert next(model.parameters()).device.type == "cuda"
        assert prep.model_meta[name]["test_accuracy"] > 0.8  # digits: trained, not a broken device path
    costs = measure_costs(prep.paths, prep.data.calib.x[:64].cuda(), batches=(1, 64), rounds=1, repeats=3, log=None)
    assert all(c.device.startswith("cuda") and c.latency[1].median_s > 0 for c in costs)


def test_cuda_runtime_equals_trace_simulation(cuda_prepared):
    prep = cuda_prepared
    c = Cascade().fit(prep.calib)
    rt = c.runtime(prep.paths, device="cuda")
    sim = c.simulate(prep.test)
    res = rt.run(prep.data.test.x, 64)  # CPU inputs are moved to the device; results come back on the CPU
    assert res.pred.device.type == "cpu"
    # cuDNN may pick other kernels than the trace run for other batch sizes: allow float-noise disagreements
    assert (res.pred.numpy() == sim.pred).mean() > 0.995
    assert (res.path.numpy() == sim.path).mean() > 0.995


def test_cuda_flops_and_latency(cuda_prepared):
    model = next(iter(cuda_prepared.paths.models.values()))
    shape = cuda_prepared.data.spec.input_shape
    assert count_flops(model, shape, "cuda") == count_flops(model.cpu(), shape, "cpu")
    model.cuda()
    stats = measure_latency(model, torch.zeros(8, *shape, device="cuda"), repeats=5)
    assert stats.median_s > 0


def test_checkpoint_saved_from_cuda_loads_on_cpu(cuda_prepared, tmp_path):
    from dyninfer.train.checkpoint import load_checkpoint, save_checkpoint

    name, model = next(iter(cuda_prepared.paths.models.items()))
    path = save_checkpoint(model.cuda(), tmp_path / "m.pt", {"model": name})
    loaded, meta = load_checkpoint(path, map_location="cpu")
    assert next(loaded.parameters()).device.type == "cpu"
    x = cuda_prepared.data.test.x[:32]
    with torch.no_grad():
        assert torch.allclose(loaded(x), model(x.cuda()).cpu(), atol=1e-4)


def test_early_exit_runtime_and_adaptation_on_cuda():
    from dyninfer.data import load_dataset
    from dyninfer.methods.early_exit.adapt import SpecializeConfig, TestTimeSpecializer
    from dyninfer.methods.early_exit.evaluation import params_digest
    from dyninfer.methods.early_exit.method import EarlyExit
    from dyninfer.models.registry import create_model
    from dyninfer.paths import StagedNetwork

    data = load_dataset("digits", calib_size=300, seed=0)
    torch.manual_seed(0)
    net = create_model("revcol-tiny", data.spec).cuda().eval()
    paths = StagedNetwork(net)
    rt = EarlyExit().fit(paths.record(data.calib)).runtime(paths, device="cuda")
    rt.knob = 0.5
    res = rt.run(data.test.x, 32)
    with torch.no_grad():
        logits = [lo.cpu() for lo in net.forward_exits(data.test.x.cuda())]
    conf = torch.stack([lo.softmax(-1).amax(-1) for lo in logits])
    ok = conf >= 0.5
    ok[-1] = True
    assert (res.path == ok.float().argmax(0)).float().mean() > 0.995
    final = params_digest(net.heads[-1])
    spec = TestTimeSpecializer(net, SpecializeConfig(lr=1e-2, threshold=0.99))
    spec.adapt(data.calib.x[:50].cuda(), progress=False)
    assert params_digest(net.heads[-1]) == final
    assert spec.log_.update_s.size > 0
    assert spec.update_flops() > 0
    norm = TestTimeSpecializer(net, SpecializeConfig(lr=0.1, lr_scale="input-norm", threshold=0.99, passes=2))
    norm.adapt(data.calib.x[:20].cuda(), progress=False)
    assert norm.input_n_[0] == 40 and norm.log_.exit.size == 40  # head 0 sees every image of both passes


def test_backbone_manager_budget_on_cuda(tmp_path):
    from dyninfer.data import load_dataset
    from dyninfer.models.registry import create_model
    from dyninfer.runtime.manager import BackboneManager
    from dyninfer.runtime.pool import BackbonePool
    from dyninfer.train.checkpoint import save_checkpoint

    spec = load_dataset("digits", calib_size=300, seed=0).spec
    paths = {n: save_checkpoint(create_model(n, spec), tmp_path / f"{n}.pt", {"model": n}) for n in ("cnn-s", "cnn-m")}
    pool = BackbonePool.from_checkpoints(paths)
    mgr = BackboneManager(pool, budget_bytes=pool.largest_bytes, device="cuda")
    x = torch.zeros(4, *spec.input_shape, device="cuda")
    for name in ("cnn-s", "cnn-m", "cnn-s"):
        with mgr.use(name) as model:
            assert next(model.parameters()).device.type == "cuda"
            assert model(x).shape == (4, spec.num_classes)
        assert sum(b for d, b in mgr.resident_bytes().items() if d.startswith("cuda")) <= pool.largest_bytes
    st = mgr.stats()
    assert st.evictions == 2 and st.misses == 3 and st.load_seconds > 0


def test_exits_attached_to_a_cuda_model_train_there(cuda_prepared):
    from dyninfer.methods.early_exit.evaluation import params_digest
    from dyninfer.models.attach import attach_exits
    from dyninfer.train.exits import exit_accuracies, train_exits
    from dyninfer.train.recipe import Recipe

    prep = cuda_prepared
    backbone = prep.paths.models["cnn-s"].cuda()
    net = attach_exits(backbone, ["stages.0", "stages.1"])
    assert all(next(h.parameters()).device.type == "cuda" for h in net.heads)
    before = params_digest(net.segments)
    train_exits(net, prep.data.train, Recipe(epochs=2, hflip=False, shift=1), heads_only=True, device="cuda",
                progress=False)
    assert params_digest(net.segments) == before
    acc = exit_accuracies(net, prep.data.test, device="cuda")
    assert min(acc) > 0.5


@pytest.mark.parametrize("method", ["cascade", "early-exit", "selection"])
def test_every_method_runs_through_the_pipeline_on_cuda(tmp_path, method):
    """The whole run on the GPU: paths, costs, runtime checks, timing and the method's own figures stay on CUDA."""
    from dyninfer.cli import main

    out = tmp_path / method
    extra = {"early-exit": ["--adapt", "0.3:input-norm", "--subsets", "round"],
             "selection": ["--set", "lambdas=[0.6, 0.9]", "--tv-pool"], "cascade": []}[method]
    rc = main(["run", method, "--preset", "tiny", "--dataset", "digits", "--device", "cuda", "--out", str(out),
               "--no-progress", *extra] if method == "cascade" else
              [{"early-exit": "early-exit", "selection": "select"}[method], "--preset", "tiny", "--dataset", "digits",
               "--device", "cuda", "--out", str(out), "--no-progress", *extra])
    assert rc == 0
    res = json.loads((out / "results.json").read_text())
    n = res["data"]["test"]
    ag = res["agreement"]  # cuDNN kernels differ by batch size (runtime/sequential.py docs)
    assert ag["path_mismatch"] <= max(2, n // 200) and ag["pred_mismatch"] <= ag["path_mismatch"]
    assert res["static"][0]["batch1_ms"] > 0
