"""No raw exception escapes a public entry point for input the user controls: data files, checkpoints,
saved policies, batches and settings each get the library's error type with a message that says what
was wrong and what to do. Every case below is one row; the ids group them by entry point."""

from __future__ import annotations

import gzip
import json
import re
import shutil

import numpy as np
import pytest
import torch

from dyninfer import CheckpointError, ConfigError, DataError, DyninferError, InputError, TraceError
from dyninfer.data import load_dataset
from dyninfer.data.idx import read_idx, write_idx
from dyninfer.evaluate.stats import mcnemar, reliability_bins
from dyninfer.methods import create_method, load_method
from dyninfer.methods.cascade import Cascade
from dyninfer.methods.early_exit import EarlyExit
from dyninfer.methods.early_exit.adapt import SpecializeConfig
from dyninfer.methods.selection import ComplexityConfig, PolicyConfig, Selection, SelectorConfig
from dyninfer.pipeline import RunConfig
from dyninfer.policy import load_policy
from dyninfer.presets import Preset
from dyninfer.runtime.cost import EnergyMeter
from dyninfer.scores import make_score
from dyninfer.train import Recipe, load_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")

# ------------------------------------------------------------------------------- settings, at construction
# (constructor, settings, the words the message must contain: the setting and its allowed range)
SETTINGS = [
    ("Cascade", lambda: Cascade(tolerance=-0.001), "tolerance must be a number in [0, 1)"),
    ("Cascade", lambda: Cascade(tolerance=1.5), "tolerance must be a number in [0, 1)"),
    ("Cascade", lambda: Cascade(tolerance="0.1"), "tolerance must be a number"),
    ("Cascade", lambda: Cascade(confidence=0.3), "confidence must be a number in [0.5, 1)"),
    ("Cascade", lambda: Cascade(confidence=float("nan")), "confidence must be a number"),
    ("Cascade", lambda: Cascade(bound="bonferroni"), "unknown bound"),
    ("Cascade", lambda: Cascade(grid=1), "grid must be an integer in [2, inf]"),
    ("Cascade", lambda: Cascade(scores=("energy+T",), temperatures=(-1.0,)), "temperatures must be a non-empty"),
    ("Cascade", lambda: Cascade(scores=()), "scores must be a non-empty"),
    ("Cascade", lambda: Cascade(stages=["a", "a"]), "2 or more distinct"),
    ("Cascade", lambda: Cascade(seed=1.5), "seed must be an integer"),
    ("EarlyExit", lambda: EarlyExit(score="confidence"), "unknown score"),
    ("EarlyExit", lambda: EarlyExit(score="energy", score_params={"temperature": 0}), "temperature must be a number in (0"),
    ("EarlyExit", lambda: EarlyExit(score="random"), "cannot drive exits"),
    ("EarlyExit", lambda: EarlyExit(tolerance=2), "tolerance must be"),
    ("EarlyExit", lambda: EarlyExit(grid=0), "grid must be an integer in [2"),
    ("Selection", lambda: Selection(lambdas=(0.5, 1.2)), "lambdas must be a non-empty list of numbers in [0, 1]"),
    ("Selection", lambda: Selection(lambdas=0.9), "lambdas must be"),
    ("Selection", lambda: Selection(features="sift"), "unknown features"),
    ("Selection", lambda: Selection(grid=0), "grid must be an integer in [1"),
    ("Selection", lambda: Selection(serving_batch=0), "serving_batch must be an integer in [1"),
    ("Selection", lambda: Selection(bias_grid=1), "bias_grid must be an integer in [2"),
    ("Selection", lambda: Selection(policy={"lr": 0}), "lr must be a number in (0"),
    ("Selection", lambda: Selection(policy={"epochs": 0}), "epochs must be an integer in [1"),
    ("Selection", lambda: Selection(policy={"colour": 1}), "bad selection settings"),
    ("Selection", lambda: Selection(confidence=1), "confidence must be"),
    ("PolicyConfig", lambda: PolicyConfig(val_fraction=1.0), "val_fraction must be a number in [0, 1)"),
    ("PolicyConfig", lambda: PolicyConfig(baseline="median"), "baseline must be one of"),
    ("ComplexityConfig", lambda: ComplexityConfig(low_quantile=-0.1), "low_quantile must be a number in [0, 1]"),
    ("ComplexityConfig", lambda: ComplexityConfig(low_quantile=0.9, high_quantile=0.5), "low_quantile < high_quantile"),
    ("SelectorConfig", lambda: SelectorConfig(lam=-1), "lam must be a number in [0, 1]"),
    ("SpecializeConfig", lambda: SpecializeConfig(lr=0), "lr must be a number in (0"),
    ("SpecializeConfig", lambda: SpecializeConfig(lr_scale="adam"), "lr_scale must be one of"),
    ("SpecializeConfig", lambda: SpecializeConfig(passes=0), "passes must be an integer in [1"),
    ("Recipe", lambda: Recipe(epochs=0), "epochs must be an integer in [1"),
    ("Recipe", lambda: Recipe(lr=-1.0), "lr must be a number in (0"),
    ("Recipe", lambda: Recipe(label_smoothing=1.0), "label_smoothing must be a number in [0, 1)"),
    ("Recipe", lambda: Recipe.from_dict({"epochz": 3}), "unknown Recipe keys"),
    ("Preset", lambda: Preset("p", models={"cnn-s": Recipe()}, calib_size=0), "calib_size must be an integer in [1"),
    ("Preset", lambda: Preset("p", models={}), "at least one model"),
    ("RunConfig", lambda: RunConfig(method="cascade", serving_batch=0), "serving_batch must be an integer in [1"),
    ("RunConfig", lambda: RunConfig(method="cascade", clock="sundial"), "clock must be one of"),
    ("RunConfig", lambda: RunConfig(method="cascade", preset="huge"), "unknown preset 'huge'"),
    ("RunConfig", lambda: RunConfig(method="boosting"), "unknown method 'boosting'"),
    ("RunConfig", lambda: RunConfig(method="cascade", grid_g_per_kwh=-1), "grid_g_per_kwh must be a number in [0"),
    ("create_method", lambda: create_method("cascade", tolerence=0.1), "unknown settings ['tolerence']"),
    ("make_score", lambda: make_score("energy", temperature=-2.0), "temperature must be a number in (0"),
    ("make_score", lambda: make_score("random", seed="x"), "seed must be an integer"),
    ("make_score", lambda: make_score("margin", temperature=2), "bad settings"),
    ("EnergyMeter", lambda: EnergyMeter("cpu", cpu_watts_per_thread=-8), "cpu_watts_per_thread must be a number in [0"),
    ("load_dataset", lambda: load_dataset("digits", calib_size=0), "calib_size must be a number in (0"),
    ("load_dataset", lambda: load_dataset("digits", calib_size=5000), "leaves no training"),
    ("load_dataset", lambda: load_dataset("digits", train_limit=0), "train_limit must be an integer in [1"),
    ("load_dataset", lambda: load_dataset("mnist-colour"), "unknown dataset"),
]


@pytest.mark.parametrize("where, make, message", SETTINGS, ids=[f"setting-{w}-{i}" for i, (w, _, _) in enumerate(SETTINGS)])
def test_every_bad_setting_is_refused_at_construction(where, make, message):
    with pytest.raises(ConfigError) as e:
        make()
    assert message in str(e.value), str(e.value)


# ------------------------------------------------------------------------------- batches and knobs of a runtime

@pytest.fixture(scope="module")
def runtime(digits_prepared):
    return Cascade(scores=("energy",)).fit(digits_prepared.calib).runtime(digits_prepared.paths)


def _x():
    return load_dataset("digits", calib_size=300).test.x[:16].clone()


BATCHES = [
    ("float64 is converted", None, None),
    ("0-255 pixels", lambda x: x * 255, "look like 0-255 pixels: divide by 255"),
    ("normalised", lambda x: (x - 0.3) / 0.3, "look normalised"),
    ("uint8", lambda x: (x * 255).to(torch.uint8), "x.float() / 255"),
    ("int64", lambda x: x.long(), "floating-point"),
    ("NaN", lambda x: x.index_fill(0, torch.tensor([3]), float("nan")), "1 of 16 images contain NaN or inf"),
    ("inf", lambda x: x.index_fill(0, torch.tensor([2, 5]), float("inf")), "2 of 16 images contain NaN or inf"),
    ("empty", lambda x: x[:0], "empty batch"),
    ("3-D", lambda x: x[0], "x[None]"),
    ("wrong size", lambda x: torch.nn.functional.pad(x, (1, 1, 1, 1)), "wrong image size"),
    ("wrong channels", lambda x: x.repeat(1, 3, 1, 1), "wrong channels"),
    ("numpy", lambda x: x.numpy(), "torch.Tensor"),
    ("list", lambda x: x.tolist(), "torch.Tensor"),
]


@pytest.mark.parametrize("what, bad, message", BATCHES, ids=[f"batch-{b[0]}" for b in BATCHES])
@pytest.mark.parametrize("entry", ["__call__", "run"])
def test_every_bad_batch_is_refused_by_call_and_run(runtime, what, bad, message, entry):
    x = _x()
    call = runtime if entry == "__call__" else (lambda b: runtime.run(b, 8))
    if bad is None:  # float64 is accepted: converted, same answers
        assert torch.equal(call(x.double()).pred, call(x).pred)
        return
    with pytest.raises(InputError) as e:
        call(bad(x))
    assert message in str(e.value), str(e.value)


@pytest.mark.parametrize("batch_size", [0, -4, 2.5, "64", True, None], ids=lambda v: f"batch_size-{v!r}")
def test_bad_batch_sizes(runtime, batch_size):
    with pytest.raises(InputError, match="batch_size must be a positive integer"):
        runtime.run(_x(), batch_size)


@pytest.mark.parametrize("knob, message", [
    (["high"], "must be numbers"), ([None], "must be numbers"), ([0.5, 0.7], "need 1 thresholds"),
    ([float("nan")], "NaN"), (object(), "a number or a list of numbers"), ([True], "must be numbers")],
    ids=lambda v: f"knob-{v!r}"[:30])
def test_bad_knobs(runtime, knob, message):
    before = runtime.knob
    with pytest.raises(ConfigError, match=message):
        runtime.knob = knob
    assert runtime.knob == before  # a refused change leaves the knob as it was


def test_bad_forced_path(runtime):
    with pytest.raises(ConfigError, match="no path"):
        runtime.force("teacher")
    with pytest.raises(ConfigError, match="no path"):
        runtime.force(7)


# ------------------------------------------------------------------------------- data files

def test_corrupt_deflate_stream_is_a_data_error(tmp_path):
    good = tmp_path / "ok.gz"
    write_idx(good, np.arange(4 * 28 * 28, dtype=np.uint8).reshape(4, 28, 28) % 251)
    data = bytearray(good.read_bytes())
    data[len(data) // 2] ^= 0xFF  # inside the deflate stream: zlib fails, not the gzip header
    bad = tmp_path / "bad.gz"
    bad.write_bytes(bytes(data))
    with pytest.raises(DataError, match=r"bad.gz.*corrupt"):
        read_idx(bad, expect_ndim=3)


@pytest.mark.parametrize("damage, message", [
    (lambda p: p.write_bytes(b""), "truncated|corrupt"),
    (lambda p: p.write_bytes(gzip.compress(b"\x00\x00\x08\x03" + b"\x00" * 12)), "holds|truncated"),
    (lambda p: p.write_bytes(b"not gzip at all"), "corrupt"),
    (lambda p: p.unlink(), "missing data file"),
], ids=["empty", "wrong-header", "not-gzip", "missing"])
def test_damaged_fashion_mnist_files_say_what_to_do(tmp_path, damage, message):
    folder = tmp_path / "fm"
    folder.mkdir()
    for name in ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz",
                 "t10k-labels-idx1-ubyte.gz"):
        (folder / name).write_bytes(b"")
    damage(folder / "train-images-idx3-ubyte.gz")
    with pytest.raises(DataError, match=message) as e:
        load_dataset("fashion-mnist", root=folder)
    assert "apt-get install -y dataset-fashion-mnist" in str(e.value)


# ------------------------------------------------------------------------------- checkpoints, traces, policies

def test_checkpoint_and_policy_files(tmp_path, digits_prepared):
    from dyninfer.policy import save_policy

    c = Cascade(scores=("energy",)).fit(digits_prepared.calib)
    folder = save_policy(tmp_path / "pol", c, digits_prepared.paths)
    assert load_policy(folder).method.knob_ == c.knob_
    cases = []
    for rel, damage in [("policy.json", lambda p: p.write_text("{")),
                        ("policy.json", lambda p: p.write_text(p.read_text().replace("cascade", "cascadf"))),
                        ("method/method.json", lambda p: p.write_text(p.read_text().replace("energy", "margin"))),
                        ("method/method.json", lambda p: p.unlink()),
                        ("paths/paths.json", lambda p: p.write_text("[]")),
                        ("paths/cnn-s.pt", lambda p: p.write_bytes(p.read_bytes()[:200]))]:
        target = tmp_path / f"case{len(cases)}"
        shutil.copytree(folder, target)
        damage(target / rel)
        with pytest.raises(CheckpointError) as e:
            load_policy(target)
        cases.append(str(e.value))
        assert "again" in str(e.value) or "save" in str(e.value) or "train" in str(e.value), str(e.value)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "none.pt")
    with pytest.raises(CheckpointError, match="no saved policy"):
        load_method(tmp_path)


def test_trace_files(tmp_path, digits_prepared):
    from dyninfer.trace import Trace

    digits_prepared.test.save(tmp_path / "t")
    (tmp_path / "t" / "trace.json").write_text("{")
    with pytest.raises(TraceError, match="record it again"):
        Trace.load(tmp_path / "t")


# ------------------------------------------------------------------------------- statistics inputs

@pytest.mark.parametrize("call, message", [
    (lambda: mcnemar(np.ones(5, bool), np.ones(4, bool)), "same length"),
    (lambda: mcnemar(np.ones((2, 2), bool), np.ones((2, 2), bool)), "1-D arrays"),
    (lambda: mcnemar(np.ones(0, bool), np.ones(0, bool)), "at least one sample"),
    (lambda: reliability_bins(np.array([0.5, 1.5]), np.array([True, False])), "in [0, 1]"),
    (lambda: reliability_bins(np.array([np.nan]), np.array([True])), "NaN"),
    (lambda: reliability_bins(np.array([0.5]), np.array([True, False])), "same length"),
], ids=["mcnemar-lengths", "mcnemar-2d", "mcnemar-empty", "reliability-range", "reliability-nan", "reliability-lengths"])
def test_statistics_inputs(call, message):
    with pytest.raises(InputError, match=re.escape(message)):
        call()


# ------------------------------------------------------------------------------- method use before fit, wrong traces

def test_methods_on_wrong_traces(digits_prepared, digits_staged):
    ee = EarlyExit().fit(digits_staged.calib)
    with pytest.raises(TraceError, match="not this policy's network's exits"):
        ee.simulate(digits_prepared.test)
    with pytest.raises(ConfigError, match="staged network"):
        ee.runtime(digits_prepared.paths)
    c = Cascade().fit(digits_prepared.calib)
    with pytest.raises(TraceError, match="no paths"):
        c.simulate(digits_staged.test)
    with pytest.raises(ConfigError, match="module pool"):
        c.runtime(digits_staged.paths)
    with pytest.raises(ConfigError, match="exactly one of"):
        c.knob_for()
    with pytest.raises(ConfigError, match=re.escape("budget_flops must be a number in (0")):
        c.knob_for(budget_flops=-5)


def test_no_raw_exception_escapes_the_cli(tmp_path, capsys):
    from dyninfer.cli import main

    (tmp_path / "policy").mkdir()
    (tmp_path / "policy" / "policy.json").write_text(json.dumps({"format": "x"}))
    for argv in (["run", "cascade", "--preset", "tiny", "--dataset", "digits", "--set", "grid=[1]"],
                 ["run", "cascade", "--dataset", "fashion-mnist", "--data-root", str(tmp_path)],
                 ["compare", "--methods", "cascade", "boosting"]):
        assert main([*argv, "--out", str(tmp_path / "r"), "--no-progress"]) == 2
        err = capsys.readouterr().err
        assert err.startswith("dyninfer: error: ") and "Traceback" not in err
    assert issubclass(InputError, DyninferError) and issubclass(ConfigError, DyninferError)


def test_devices_that_do_not_exist_are_config_errors():
    with pytest.raises(ConfigError, match="device must be cpu, cuda or cuda:N"):
        RunConfig(method="cascade", device="gpu")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="no CUDA device"):
            RunConfig(method="cascade", device="cuda")


def test_a_saved_policy_whose_state_file_was_swapped_is_refused(tmp_path, digits_prepared):
    from dyninfer.methods.selection import Selection

    m = Selection(lambdas=(0.9,), grid=4, policy={"epochs": 2}).fit(digits_prepared.calib)
    other = Selection(lambdas=(0.9,), grid=4, policy={"epochs": 2, "seed": 3}).fit(digits_prepared.calib)
    m.save(tmp_path / "a")
    other.save(tmp_path / "b")
    (tmp_path / "a" / "state.pt").write_bytes((tmp_path / "b" / "state.pt").read_bytes())
    with pytest.raises(CheckpointError, match="not the state saved with"):
        load_method(tmp_path / "a")
