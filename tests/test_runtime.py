"""The batched runtime against the trace simulation, the threshold knob, and input errors."""

import numpy as np
import pytest
import torch

from dyninfer import ConfigError, InputError
from dyninfer.methods.cascade import Cascade, simulate
from dyninfer.runtime import SequentialRuntime, model_stage
from dyninfer.scores import make_score


@pytest.mark.parametrize("score", ["energy", "max_softmax", "margin", "entropy"])
def test_runtime_predictions_equal_trace_simulation(digits_prepared, score):
    prep = digits_prepared
    names = list(prep.models)
    c = Cascade(names, score=score).fit(prep.calib)
    rt = c.runtime(prep.models, input_shape=prep.data.spec.input_shape,
                   stage_flops=[prep.test.cost(n).flops for n in names])
    trace = prep.test.select(names)
    s0 = c.scores_on(prep.test)[0]
    # the fitted threshold and thresholds lying exactly on test scores (the hardest case), changed between runs
    for thr in [list(c.thresholds_)] + [[float(np.quantile(s0, q, method="nearest"))] for q in (0.1, 0.3, 0.5, 0.9)]:
        rt.thresholds = thr
        sim = simulate(trace, c.score_, thr)
        for batch in (37, 256):
            res = rt.run(prep.data.test.x, batch)
            assert np.array_equal(res.pred.numpy(), sim.pred)
            assert np.array_equal(res.exit.numpy(), sim.path)
            assert np.array_equal(res.flops, sim.flops)


def test_runtime_at_batch_one_equals_trace_away_from_float_noise(digits_prepared):
    """At batch 1 the CPU kernels round differently (~1e-6), so use sweep thresholds clear of every score."""
    prep = digits_prepared
    names = list(prep.models)
    c = Cascade(names).fit(prep.calib)
    rt = c.runtime(prep.models, input_shape=prep.data.spec.input_shape)
    trace = prep.test.select(names)
    s0 = np.sort(c.scores_on(prep.test)[0])
    gaps = np.diff(s0)
    for i in np.flatnonzero(gaps > 1e-3)[:: max(1, len(gaps) // 6)][:6]:
        thr = [float((s0[i] + s0[i + 1]) / 2)]
        rt.thresholds = thr
        res = rt.run(prep.data.test.x[:150], 1)
        sim = simulate(trace, c.score_, thr)
        assert np.array_equal(res.pred.numpy(), sim.pred[:150])
        assert np.array_equal(res.exit.numpy(), sim.path[:150])


def test_threshold_knob_changes_forwarded_share(digits_prepared):
    prep = digits_prepared
    names = list(prep.models)
    c = Cascade(names).fit(prep.calib)
    rt = c.runtime(prep.models, input_shape=prep.data.spec.input_shape)
    x = prep.data.test.x
    rt.thresholds = [float("-inf")]
    assert rt(x).stage_counts.tolist() == [len(x), 0]
    rt.thresholds = [float("inf")]
    r = rt(x)
    assert r.stage_counts.tolist() == [len(x), len(x)] and (r.exit == 1).all()
    with pytest.raises(ConfigError, match="need 1 thresholds"):
        rt.thresholds = [1.0, 2.0]
    with pytest.raises(ConfigError, match="NaN"):
        rt.thresholds = [float("nan")]
    assert rt.thresholds == (float("inf"),)  # a refused change leaves the knob as it was


def test_bad_inputs_are_refused_with_clear_errors(digits_prepared):
    prep = digits_prepared
    rt = Cascade(list(prep.models)).fit(prep.calib).runtime(prep.models, input_shape=(1, 8, 8))
    good = prep.data.test.x[:4]
    with pytest.raises(InputError, match="wrong channels"):
        rt(good.repeat(1, 3, 1, 1))
    with pytest.raises(InputError, match="wrong image size"):
        rt(torch.rand(4, 1, 9, 8))
    with pytest.raises(InputError, match="4-D batch .*unsqueeze"):
        rt(good[0])
    with pytest.raises(InputError, match="dtype torch.uint8"):
        rt((good * 255).to(torch.uint8))
    with pytest.raises(InputError, match="empty batch"):
        rt(good[:0])
    bad = good.clone()
    bad[1, 0, 0, 0] = float("nan")
    bad[2, 0, 1, 1] = float("inf")
    with pytest.raises(InputError, match="2 of 4 images contain NaN or inf"):
        rt(bad)
    with pytest.raises(InputError, match="torch.Tensor"):
        rt(good.numpy())


def test_single_stage_runtime_is_the_plain_model(digits_prepared):
    prep = digits_prepared
    m = prep.models["cnn-m"]
    rt = SequentialRuntime([model_stage(m)], make_score("energy"), [])
    with torch.inference_mode():
        expected = m(prep.data.test.x).argmax(1)
    assert torch.equal(rt.run(prep.data.test.x, 64).pred, expected)


def test_batch_one_decisions_equal_batched_ones_with_thresholds_on_scores():
    """Samples run one at a time exit exactly where they exit in a batch, including at thresholds that lie on a
    score or less than one float32 step away from it (a scalar float64 comparison would decide those differently)."""
    torch.manual_seed(0)
    logits = torch.randn(400, 1, 1, 10) * 3  # the "images" are the logits of stage 0; stage 1 scales them

    def stage0(x):
        return x.flatten(1), x

    def stage1(x):
        return 2 * x.flatten(1), x

    score = make_score("max_softmax")
    s = score(logits.flatten(1))
    rt = SequentialRuntime([stage0, stage1], score, [0.5])
    for t in [float(s[3]), float(s[17]), float(s[3]) + 1e-9, float(s[17]) - 1e-9, 0.5]:
        rt.thresholds = [t]
        batched = rt(logits)
        single = [rt(logits[i:i + 1]) for i in range(len(logits))]
        assert torch.equal(batched.exit, torch.cat([r.exit for r in single]))
        assert torch.equal(batched.pred, torch.cat([r.pred for r in single]))
        for r in single:  # a sample alone reaches stage 1 exactly when it did not leave at stage 0
            assert r.stage_counts.tolist() == [1, int(r.exit[0] > 0)]
