"""The runtimes against the trace simulation, the knob, forcing a path, and input errors."""

import numpy as np
import pytest
import torch

from dyninfer import ConfigError, InputError
from dyninfer.evaluate.simulate import simulate_sequential
from dyninfer.methods.cascade import Cascade
from dyninfer.runtime import SequentialRuntime, Stage, model_stage
from dyninfer.scores import make_score


@pytest.fixture(scope="module")
def cascade(digits_prepared):
    return Cascade(scores=("energy",), tolerance=0.02).fit(digits_prepared.calib)


@pytest.mark.parametrize("score", ["energy", "max_softmax", "margin", "entropy"])
def test_runtime_predictions_equal_trace_simulation(digits_prepared, score):
    prep = digits_prepared
    c = Cascade(scores=(score,), tolerance=0.02).fit(prep.calib)
    rt = c.runtime(prep.paths)
    trace = prep.test.select(c.stages_)
    s0 = c.scores_on(prep.test)[0]
    # the fitted threshold and thresholds lying exactly on test scores (the hardest case), changed between runs
    for thr in [list(c.knob_)] + [[float(np.quantile(s0, q, method="nearest"))] for q in (0.1, 0.3, 0.5, 0.9)]:
        rt.thresholds = thr
        sim = simulate_sequential(trace, c.score_, thr)
        for batch in (37, 256):
            res = rt.run(prep.data.test.x, batch)
            assert np.array_equal(res.pred.numpy(), sim.pred)
            assert np.array_equal(res.path.numpy(), sim.path)
            assert np.array_equal(res.flops, sim.flops)


def test_runtime_at_batch_one_equals_trace_away_from_float_noise(digits_prepared, cascade):
    """At batch 1 the CPU kernels round differently (~1e-6), so use sweep thresholds clear of every score."""
    prep = digits_prepared
    rt = cascade.runtime(prep.paths)
    trace = prep.test.select(cascade.stages_)
    s0 = np.sort(cascade.scores_on(prep.test)[0])
    gaps = np.diff(s0)
    for i in np.flatnonzero(gaps > 1e-3)[:: max(1, len(gaps) // 6)][:6]:
        thr = [float((s0[i] + s0[i + 1]) / 2)]
        rt.thresholds = thr
        res = rt.run(prep.data.test.x[:150], 1)
        sim = simulate_sequential(trace, cascade.score_, thr)
        assert np.array_equal(res.pred.numpy(), sim.pred[:150])
        assert np.array_equal(res.path.numpy(), sim.path[:150])


def test_knob_changes_forwarded_share_and_force_skips_decisions(digits_prepared, cascade):
    prep = digits_prepared
    rt = cascade.runtime(prep.paths)
    x = prep.data.test.x
    rt.knob = [float("-inf")]
    assert rt(x).path_counts.tolist() == [len(x), 0]
    rt.knob = float("inf")  # one number: the same threshold at every stage
    r = rt(x)
    assert r.path_counts.tolist() == [len(x), len(x)] and (r.path == 1).all()
    assert np.allclose(r.flops, sum(cascade.flops_))  # both stages ran on every image
    rt.force("cnn-m")  # every image to the teacher alone: the student does not run
    f = rt(x)
    assert f.path_counts.tolist() == [0, len(x)] and np.allclose(f.flops, cascade.flops_[1])
    assert torch.equal(f.pred, r.pred)
    rt.force(None)
    assert rt(x).path_counts[0] == len(x)
    with pytest.raises(ConfigError, match="need 1 thresholds"):
        rt.knob = [1.0, 2.0]
    with pytest.raises(ConfigError, match="NaN"):
        rt.knob = [float("nan")]
    with pytest.raises(ConfigError, match="numbers"):
        rt.knob = ["0.5"]
    with pytest.raises(ConfigError, match="no path"):
        rt.force("cnn-x")
    assert rt.knob == (float("inf"),)  # a refused change leaves the knob as it was


def test_bad_inputs_are_refused_with_clear_errors(digits_prepared, cascade):
    rt = cascade.runtime(digits_prepared.paths)
    good = digits_prepared.data.test.x[:4]
    with pytest.raises(InputError, match="wrong channels"):
        rt(good.repeat(1, 3, 1, 1))
    with pytest.raises(InputError, match="wrong image size"):
        rt(torch.rand(4, 1, 9, 8))
    with pytest.raises(InputError, match=r"4-D batch .*x\[None\]"):
        rt(good[0])
    with pytest.raises(InputError, match="dtype uint8"):
        rt((good * 255).to(torch.uint8))
    with pytest.raises(InputError, match="empty batch"):
        rt(good[:0])
    with pytest.raises(InputError, match="empty batch"):
        rt.run(good[:0], 16)
    with pytest.raises(InputError, match="batch_size must be a positive integer"):
        rt.run(good, 0)
    with pytest.raises(InputError, match="0-255 pixels: divide by 255"):
        rt(good * 255)
    with pytest.raises(InputError, match="look normalised"):
        rt((good - 0.5) / 0.2)
    bad = good.clone()
    bad[1, 0, 0, 0] = float("nan")
    bad[2, 0, 1, 1] = float("inf")
    with pytest.raises(InputError, match="2 of 4 images contain NaN or inf"):
        rt(bad)
    with pytest.raises(InputError, match="torch.Tensor"):
        rt(good.numpy())
    assert torch.equal(rt(good.double()).pred, rt(good).pred)  # float64 is converted, not refused


def test_single_stage_runtime_is_the_plain_model(digits_prepared):
    m = digits_prepared.paths.models["cnn-m"]
    rt = SequentialRuntime([model_stage(m)], make_score("energy"), [])
    with torch.inference_mode():
        expected = m(digits_prepared.data.test.x).argmax(1)
    assert torch.equal(rt.run(digits_prepared.data.test.x, 64).pred, expected)


def test_batch_one_decisions_equal_batched_ones_with_thresholds_on_scores():
    """Samples run one at a time exit exactly where they exit in a batch, including at thresholds that lie on a
    score or less than one float32 step away from it (a scalar float64 comparison would decide those differently)."""
    torch.manual_seed(0)
    logits = torch.randn(400, 1, 1, 10) * 3  # the "images" are the logits of stage 0; stage 1 scales them
    score = make_score("max_softmax")
    s = score(logits.flatten(1))
    rt = SequentialRuntime([Stage(lambda x: x.flatten(1)), Stage(lambda x: 2 * x.flatten(1))], score, [0.5],
                           value_range=None)
    for t in [float(s[3]), float(s[17]), float(s[3]) + 1e-9, float(s[17]) - 1e-9, 0.5]:
        rt.thresholds = [t]
        batched = rt(logits)
        single = [rt(logits[i:i + 1]) for i in range(len(logits))]
        assert torch.equal(batched.path, torch.cat([r.path for r in single]))
        assert torch.equal(batched.pred, torch.cat([r.pred for r in single]))
        for r in single:  # a sample alone reaches stage 1 exactly when it did not leave at stage 0
            assert r.path_counts.tolist() == [1, int(r.path[0] > 0)]
