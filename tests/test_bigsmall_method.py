"""The big/little method (NAS paper 3.4) on the tiny digits pair: its three routers, the difficulty router's
coefficients through save/load, and the learned router's score in the trace equal to the one emitted at run time."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dyninfer import ConfigError, TraceError
from dyninfer.methods import create_method, load_method
from dyninfer.methods.bigsmall import LearnedRouterScore
from dyninfer.paths import BigSmallPaths, PathSet
from dyninfer.scores import DifficultyScore, make_score

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("router", ["confidence", "learned", "difficulty"])
def test_each_router_fits_and_its_runtime_equals_simulate(digits_bigsmall, router):
    prep = digits_bigsmall
    m = create_method("bigsmall", scores=(router,), tolerance=0.05).fit(prep.calib)
    assert m.router_ == router and m.stages_ == ["little", "big"] and m.operating_point_.certified
    res, sim = m.runtime(prep.paths).run(prep.test.inputs(), 64), m.simulate(prep.test)
    assert np.array_equal(res.pred.numpy(), sim.pred) and np.array_equal(res.path.numpy(), sim.path)
    assert res.mean_flops == pytest.approx(sim.mean_flops, rel=1e-9)
    router_flops = prep.calib.meta["gate_flops"]["gate"][0]
    little = prep.calib.cost("little").flops
    assert m.flops_[0] == (little + router_flops if router == "learned" else little)  # the router is paid by little
    assert m.flops_[1] == prep.calib.cost("big").flops


def test_the_fit_chooses_among_the_three_routers(digits_bigsmall):
    m = create_method("bigsmall", tolerance=0.05).fit(digits_bigsmall.calib)
    assert {r["router"] for r in m.configurations_} == {"confidence", "learned", "difficulty"}
    assert m.router_ in ("confidence", "learned", "difficulty")


def test_difficulty_coefficients_round_trip(digits_bigsmall, tmp_path):
    prep = digits_bigsmall
    m = create_method("bigsmall", scores=("difficulty",), tolerance=0.05).fit(prep.calib)
    coef = m.difficulty_.params["coef"]
    assert len(coef) == 4 and any(c != 0 for c in coef)
    back = load_method(m.save(tmp_path / "m"))
    assert back.difficulty_.params == m.difficulty_.params and back.score_.params == m.score_.params
    logits = prep.test.logits_of("little")
    assert torch.equal(back.score_(logits), m.score_(logits))
    # a higher score means the little head is more likely right
    s, right = m.score_(logits).numpy(), prep.test.correct[prep.test.index("little")]
    assert s[right].mean() > s[~right].mean()
    # the registry rebuilds it from its parameters
    assert torch.equal(make_score("difficulty", **m.score_.params)(logits), m.score_(logits))


def test_difficulty_score_checks_its_parameters():
    with pytest.raises(ConfigError, match="coef"):
        DifficultyScore(coef=(1.0, 2.0))
    with pytest.raises(ConfigError, match="scale"):
        DifficultyScore(scale=(1.0, 0.0, 1.0, 1.0))


def test_learned_score_in_the_trace_is_the_one_emitted_at_run_time(digits_bigsmall):
    prep = digits_bigsmall
    score = LearnedRouterScore()
    in_trace = score.from_trace(prep.test, prep.test.index("little"))
    little = prep.paths.models["little"]
    with torch.inference_mode():
        logits, emitted = score.head(little)(prep.test.inputs()[:128])
    assert np.array_equal(emitted.numpy(), in_trace[:128])
    assert np.array_equal(logits.numpy(), prep.test.logits_of("little")[:128].numpy())
    assert ((in_trace >= 0) & (in_trace <= 1)).all()
    with pytest.raises(TraceError, match="emits no score"):  # the big path has no router
        score.from_trace(prep.test, prep.test.index("big"))
    with pytest.raises(ConfigError, match="emitted"):
        score(logits)


def test_bigsmall_paths_save_and_load(digits_bigsmall, tmp_path):
    paths = digits_bigsmall.paths
    back = PathSet.load(paths.save(tmp_path / "p"))
    assert isinstance(back, BigSmallPaths) and back.names == ["little", "big"] and back.configs == paths.configs
    x = digits_bigsmall.test.inputs()[:32]
    with torch.inference_mode():
        a, b = paths.models["little"].forward_scored(x), back.models["little"].forward_scored(x)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_bigsmall_runs_only_on_bigsmall_paths(digits_bigsmall, digits_prepared):
    m = create_method("bigsmall", scores=("confidence",), tolerance=0.05).fit(digits_bigsmall.calib)
    with pytest.raises(ConfigError, match="BigSmallPaths"):
        m.runtime(digits_prepared.paths)
    with pytest.raises(TraceError, match="little"):
        create_method("bigsmall").fit(digits_prepared.calib)
