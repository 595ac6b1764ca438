import math

import pytest
import torch

from dyninfer import ConfigError
from dyninfer.runtime.cost import EnergyMeter, LatencyStats, PathCost, co2_grams, count_flops, model_bytes
from dyninfer.scores import SCORES, make_score


def test_flops_of_a_linear_layer_are_two_per_multiply_add():
    assert count_flops(torch.nn.Linear(10, 5), (10,)) == 2 * 10 * 5


def test_model_bytes_counts_params_and_buffers():
    m = torch.nn.BatchNorm1d(4)  # 8 params + running mean/var (8 floats) + num_batches_tracked (int64)
    assert model_bytes(m) == {"cpu": 16 * 4 + 8}


def test_time_per_batch_interpolates_measured_sizes():
    lat = {b: LatencyStats(b, t, t, t, t, 0.0, 1) for b, t in ((1, 1.0), (16, 2.5), (256, 26.5))}
    c = PathCost("p", 1, 1, 1, lat)
    assert c.time_per_batch(0) == 0.0
    assert c.time_per_batch(1) == pytest.approx(1.0)
    assert c.time_per_batch(136) == pytest.approx(14.5)
    assert c.time_per_batch(512) == pytest.approx(26.5 + 0.1 * 256)
    assert PathCost.from_dict(c.to_dict()) == c
    # noise made the largest batch measure faster than the one before: beyond it, time grows in proportion
    noisy = PathCost("q", 1, 1, 1, {b: LatencyStats(b, t, t, t, t, 0.0, 1) for b, t in ((16, 3.0), (64, 2.0))})
    assert noisy.time_per_batch(256) == pytest.approx(2.0 * 256 / 64)
    assert noisy.time_per_batch(32) == pytest.approx(3.0 - 16 / 48)


def test_energy_meter_labels_estimates():
    m = EnergyMeter("cpu", cpu_watts_per_thread=10.0)
    with m:
        sum(range(10000))
    if not m.measured:
        assert m.source.startswith("estimated")
        assert m.joules == pytest.approx(m.seconds * torch.get_num_threads() * 10.0)
    assert co2_grams(3.6e6, 400) == pytest.approx(400.0)


def test_scores_match_their_definitions():
    z = torch.tensor([[2.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
    p = z.softmax(-1)
    assert torch.allclose(make_score("max_softmax")(z), p.max(-1).values)
    assert torch.allclose(make_score("margin")(z), p[:, 0] - p[:, 1])
    assert torch.allclose(make_score("entropy")(z), (p * p.log()).sum(-1))
    assert make_score("entropy")(z)[1] == pytest.approx(-math.log(3))
    assert make_score("energy")(z)[1] == pytest.approx(math.log(3))
    t = 2.0
    assert make_score("energy", temperature=t)(z)[0] == pytest.approx(t * math.log(sum(math.exp(v / t) for v in (2, 1, 0))))
    # confident rows score higher than uniform rows for every input-dependent score
    for name in ("max_softmax", "margin", "entropy", "energy"):
        s = make_score(name)(z)
        assert s[0] > s[1], name


def test_random_score_is_seeded_and_score_settings_checked():
    z = torch.zeros(5, 3)
    assert torch.equal(make_score("random", seed=1)(z), make_score("random", seed=1)(z))
    with pytest.raises(ConfigError, match=r"temperature must be a number in \(0, inf\]"):
        make_score("energy", temperature=0)
    with pytest.raises(ConfigError, match="bad settings"):
        make_score("margin", temperature=2)
    assert set(SCORES.names()) >= {"energy", "max_softmax", "margin", "entropy", "random"}
