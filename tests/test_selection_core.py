"""Adaptive backbone selection: complexity analyser, REINFORCE policy, selector, runtime == simulation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dyninfer.data.datasets import load_dataset
from dyninfer.errors import ConfigError, InputError, TraceError
from dyninfer.methods.selection import (BackboneSelector, ComplexityAnalyser, ComplexityConfig, PolicyConfig,
                                        ScorePolicy, Selection, SelectorConfig, biased_choice, choose, rewards,
                                        train_reinforce)
from dyninfer.models import create_model
from dyninfer.paths import ModulePool, measure_costs
from dyninfer.trace import Trace

# ----------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", calib_size=400, seed=0)


@pytest.fixture(scope="module")
def setup(digits):
    """Three untrained (seeded) CNNs on digits, their costs and calibration/test traces."""
    models = {}
    for i, name in enumerate(("cnn-s", "cnn-m", "cnn-l")):
        torch.manual_seed(i)
        models[name] = create_model(name, digits.spec).eval()
    paths = ModulePool(models, input_shape=digits.spec.input_shape)
    costs = measure_costs(paths, digits.calib.x[:64], batches=(1, 16, 64), rounds=1, repeats=2, min_time_s=0.0,
                          log=None)
    return paths, paths.record(digits.calib, costs=costs), paths.record(digits.test, costs=costs)


# ----------------------------------------------------------------------------------------- analyser


def test_sobel_and_texture_match_reference(digits):
    x = digits.calib.x[:50]  # (50, 1, 8, 8)
    a = ComplexityAnalyser()
    edge, tex = a.raw(x)
    kx = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])
    g = F.conv2d(x, torch.stack([kx, kx.t()]).unsqueeze(1))  # (50, 2, 6, 6) valid interior
    ref_edge = g.pow(2).sum(1).sqrt().mean((1, 2))
    ref_tex = x.flatten(2).var(2, unbiased=False).mean(1)
    assert torch.allclose(edge, ref_edge, atol=1e-5)
    assert torch.allclose(tex, ref_tex, atol=1e-6)


def test_score_range_order_and_storage():
    g = torch.Generator().manual_seed(0)
    flat = torch.full((20, 1, 16, 16), 0.5)
    noise = torch.rand(20, 1, 16, 16, generator=g)
    ramp = torch.linspace(0, 1, 16).view(1, 1, 1, 16).expand(20, 1, 16, 16).clone()
    x = torch.cat([flat, ramp, noise])
    a = ComplexityAnalyser().fit(x)
    s = a.score(x)
    assert s.shape == (60,) and float(s.min()) >= 0.0 and float(s.max()) <= 1.0
    assert float(s[:20].max()) < float(s[20:40].min()) < float(s[40:].min())  # flat < smooth ramp < noise
    b = ComplexityAnalyser.from_state_dict(a.state_dict())
    assert torch.equal(b.score(x), s)
    comps = a.components(x)
    assert torch.allclose(comps[:, 2], 0.6 * comps[:, 0] + 0.4 * comps[:, 1])


def test_rgb_images_and_weights():
    x = torch.rand(8, 3, 12, 12, generator=torch.Generator().manual_seed(1))
    a = ComplexityAnalyser(ComplexityConfig(edge_weight=1.0, texture_weight=0.0)).fit(x)
    comps = a.components(x)
    assert torch.allclose(comps[:, 2], comps[:, 0])
    luma = (x * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True)  # BT.601 grey
    edge, texture = a.raw(x)
    torch.testing.assert_close(edge, a.raw(luma)[0])  # edges: Sobel on the luma image
    assert not torch.allclose(edge, a.raw(x.mean(1, keepdim=True))[0])  # not on a plain channel mean
    torch.testing.assert_close(texture, x.var((2, 3), unbiased=False).mean(1))  # texture: mean per-channel variance


def test_analyser_errors():
    with pytest.raises(ConfigError, match="not fitted"):
        ComplexityAnalyser().score(torch.rand(2, 1, 8, 8))
    a = ComplexityAnalyser().fit(torch.rand(4, 1, 8, 8))
    with pytest.raises(InputError, match="4-D"):
        a.score(torch.rand(1, 8, 8))
    with pytest.raises(InputError, match="floating"):
        a.score(torch.zeros(2, 1, 8, 8, dtype=torch.uint8))
    with pytest.raises(InputError, match="too small"):
        a.score(torch.rand(2, 1, 2, 2))
    with pytest.raises(ConfigError):
        ComplexityConfig(edge_weight=-1.0)
    with pytest.raises(ConfigError):
        ComplexityConfig(low_quantile=0.9, high_quantile=0.1)


# ----------------------------------------------------------------------------------------- policy


def test_rewards_formula():
    correct = np.array([[1, 0], [1, 1]], bool)  # (P=2, N=2)
    r = rewards(correct, np.array([0.2, 1.0]), 0.75)
    np.testing.assert_allclose(r, [[0.75 + 0.25 * 0.8, 0.75], [0.25 * 0.8, 0.75]], rtol=1e-6)
    with pytest.raises(ConfigError):
        rewards(correct, np.array([0.2, 1.0]), 1.5)
    with pytest.raises(ConfigError):
        rewards(correct, np.array([0.2]), 0.5)


def _synthetic(n=2000, seed=0):
    """Two clusters: the cheap backbone is right only on cluster 0, the expensive one always."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randint(0, 2, (n,), generator=g)
    f = torch.randn(n, 4, generator=g) * 0.5 + torch.stack([z * 2.0, -z * 2.0, z * 0.0, z * 0.0], 1)
    correct = np.stack([z.numpy() == 0, np.ones(n, bool)])  # (2, N)
    return f, correct, z.numpy()


@pytest.mark.parametrize("baseline", ["learned", "mean"])
def test_reinforce_learns_known_routing(baseline):
    f, correct, z = _synthetic()
    t_norm = np.array([0.1, 1.0])
    cfg = PolicyConfig(epochs=15, baseline=baseline, seed=0)
    net, hist = train_reinforce(f, rewards(correct, t_norm, 0.9), cfg)
    a = net.logits(f).argmax(1).numpy()
    assert (a == z).mean() > 0.97  # cheap on cluster 0, expensive on cluster 1
    assert hist.val_reward[hist.best_epoch] > 0.9
    # with little weight on accuracy the cheap backbone wins everywhere
    net2, _ = train_reinforce(f, rewards(correct, t_norm, 0.05), cfg)
    assert (net2.logits(f).argmax(1).numpy() == 0).mean() > 0.97


def test_choose_modes():
    logits = torch.log(torch.tensor([[0.7, 0.2, 0.1]])).repeat(4000, 1)
    assert choose(logits, "greedy").eq(0).all()
    a1 = choose(logits, "sampled", torch.Generator().manual_seed(3))
    a2 = choose(logits, "sampled", torch.Generator().manual_seed(3))
    assert torch.equal(a1, a2)
    freq = torch.bincount(a1, minlength=3).float() / 4000
    assert torch.allclose(freq, torch.tensor([0.7, 0.2, 0.1]), atol=0.03)
    with pytest.raises(ConfigError, match="selection mode"):
        choose(logits, "best")


# ----------------------------------------------------------------------------------------- selector and runtime


def test_runtime_equals_trace_simulation_under_a_budget_that_forces_switching(digits, setup):
    paths, calib, test = setup
    m = Selection(lambdas=(0.6, 0.9), grid=4, serving_batch=64, policy=PolicyConfig(epochs=3)).fit(calib)
    budget = paths.backbone_pool().largest_bytes  # holds only part of the pool: forces switching
    rt = m.runtime(paths, memory_budget=budget)
    rt.force(None)  # untrained backbones: nothing is certified, so the runtime starts on the largest alone
    for bias in (m.knob_, 0.0, -0.5, 0.5):
        rt.knob = bias
        res = rt.run(digits.test.x, batch_size=64)
        sim = m.simulate(test, bias)
        assert np.array_equal(res.path.numpy(), sim.path) and np.array_equal(res.pred.numpy(), sim.pred)
        assert res.path_counts.sum() == test.n and np.allclose(res.flops, sim.flops)
    st = rt.modules.stats()
    assert st.peak_bytes <= budget and st.peak_measured_bytes <= budget


def test_the_cost_bias_only_ever_moves_images_to_cheaper_backbones():
    torch.manual_seed(0)
    logits = torch.randn(500, 4)
    cost = torch.tensor([0.1, 0.3, 0.2, 1.0])
    prev = None
    for b in [-np.inf, -10, -1, -0.1, 0, 0.1, 1, 10, np.inf]:
        c = cost[biased_choice(logits, float(b), cost)]
        if prev is not None:
            assert torch.all(c <= prev + 1e-12)  # per image, not just on average
        prev = c
    assert torch.all(biased_choice(logits, np.inf, cost) == 0) and torch.all(biased_choice(logits, -np.inf, cost) == 3)


def test_selection_settings_and_errors(digits, setup):
    paths, calib, test = setup
    with pytest.raises(ConfigError, match="lambdas"):
        Selection(lambdas=(1.5,))
    with pytest.raises(ConfigError, match="lambdas"):
        Selection(lambdas=())
    with pytest.raises(ConfigError, match="unknown features"):
        Selection(features="edges")
    with pytest.raises(ConfigError):
        Selection(use_features=False, use_complexity=False)
    with pytest.raises(ConfigError, match="bias_grid"):
        Selection(bias_grid=1)
    m = Selection(lambdas=(0.9,), grid=4, policy={"epochs": 2}).fit(calib)
    with pytest.raises(ConfigError, match="one number"):
        m.check_knob("cheap")
    with pytest.raises(TraceError, match="with_inputs"):
        m.simulate(Trace(test.paths, test.logits, test.labels, test.costs), 0.0)  # a trace without its images
    rt = m.runtime(paths)
    with pytest.raises(InputError, match="image size|channels"):
        rt(torch.rand(2, 1, 28, 28))
    with pytest.raises(InputError, match="NaN"):
        rt(torch.full((2, 1, 8, 8), float("nan")))
    with pytest.raises(ConfigError, match="budget"):
        m.runtime(paths, memory_budget=10)
    with pytest.raises(TraceError, match="no paths"):
        BackboneSelector(["cnn-s", "nope"]).fit(calib, digits.calib.x)
    with pytest.raises(TraceError, match="images"):
        BackboneSelector(paths.names).fit(calib, digits.calib.x[:10])
    with pytest.raises(ConfigError):
        BackboneSelector(["cnn-s"])


def test_features_variants_and_score_policy(digits, setup):
    paths, calib, test = setup
    models, names = paths.models, paths.names
    eb = BackboneSelector(names, SelectorConfig(features="early-block", grid=2, policy=PolicyConfig(epochs=2)))
    eb.fit(calib, digits.calib.x, feature_model=models["cnn-s"])
    assert eb.in_dim_ == 12 * 2 * 2 + 3  # cnn-s first stage has 12 channels, plus edge/texture/score
    no_c = BackboneSelector(names, SelectorConfig(use_complexity=False, grid=4, policy=PolicyConfig(epochs=2)))
    assert no_c.fit(calib, digits.calib.x).in_dim_ == 16
    with pytest.raises(ConfigError, match="smallest backbone"):
        BackboneSelector(names, SelectorConfig(features="early-block")).fit(calib, digits.calib.x)
    pol = ScorePolicy(eb.analyser_, [0.3, 0.6])
    np.testing.assert_array_equal(pol.choose_from_scores(np.array([0.1, 0.3, 0.5, 0.9])), [0, 1, 1, 2])
    with pytest.raises(ConfigError):
        ScorePolicy(eb.analyser_, [0.6, 0.3])


pytestmark = pytest.mark.usefixtures("one_thread")
