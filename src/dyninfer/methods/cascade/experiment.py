"""The cascade experiment behind ``dyninfer cascade``: EBJR on a preset's models, end to end.

Train or reuse the preset's models, measure every path's cost, record calibration and test
traces, fit every router on the calibration split, evaluate on the test split, run the best
cascade and the teacher side by side for real, and collect every figure for the report.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import asdict, dataclass
from typing import Callable

import numpy as np
from sklearn.metrics import roc_auc_score

from ...errors import ConfigError
from ...evaluate.stats import mcnemar
from ...harness import prepare
from ...io import versions
from ...runtime.cost import (DEFAULT_CPU_WATTS_PER_THREAD, DEFAULT_GRID_G_PER_KWH, EnergyMeter, co2_grams,
                             interleaved_latency)
from ...runtime.executor import SequentialRuntime, model_stage
from ...scores import make_score
from ...trace import Trace, measure_costs
from .method import Cascade
from .simulate import BatchTimeModel, oracle, sweep

ROUTERS = {  # label -> Cascade settings
    "energy": {"score": "energy"},
    "energy+T": {"score": "energy", "fit_temperature": True},
    "max_softmax": {"score": "max_softmax"},
    "margin": {"score": "margin"},
    "entropy": {"score": "entropy"},
    "random": {"score": "random"},
}


@dataclass
class CascadeExperimentConfig:
    """Settings of one cascade experiment (all defaults are what the README's command runs)."""

    dataset: str = "fashion-mnist"   # dataset registry name
    data_root: str | None = None     # dataset folder override
    preset: str = "quick"            # models and training budget (quick, full, tiny)
    models: tuple[str, ...] | None = None  # subset of the preset's models, cheapest first (None: all)
    seed: int = 0                    # splits, training, random router
    routers: tuple[str, ...] = tuple(ROUTERS)  # routers compared on the same traces
    tolerance: float = 0.001         # accuracy the cascade may lose against the teacher (0.001 = 0.1 points)
    confidence: float = 0.95         # family-wise one-sided confidence that the chosen cascade keeps the tolerance
    serving_batch: int = 256         # batch size of throughput measurements
    timing_samples: int = 5120       # test samples timed per round at the serving batch
    batch1_samples: int = 200        # test samples timed one at a time (batch-1 latency)
    grid_g_per_kwh: float = DEFAULT_GRID_G_PER_KWH  # grid carbon intensity for CO2
    cpu_watts_per_thread: float = DEFAULT_CPU_WATTS_PER_THREAD  # power model where no energy counter exists
    device: str = "cpu"              # torch device
    progress: bool = True            # progress bars

    def __post_init__(self) -> None:
        unknown = set(self.routers) - set(ROUTERS)
        if unknown:
            raise ConfigError(f"unknown routers {sorted(unknown)}; known: {list(ROUTERS)}")


def chains(names: list[str]) -> list[list[str]]:
    """Every cascade of 2+ stages through ``names`` (cheapest first) that ends at the last (the teacher)."""
    *small, teacher = names
    out = []
    for k in range(1, len(small) + 1):
        for combo in itertools.combinations(small, k):
            out.append([*combo, teacher])
    return out


def predicted_time_per_image(trace: Trace, reach: np.ndarray, batch: int) -> np.ndarray:
    """(M,) seconds per image at ``batch`` for operating points with stage reach shares ``reach`` (M, P)."""
    t = np.zeros(reach.shape[0])
    for p, c in enumerate(trace.costs):
        t += c.time_per_batch(np.rint(reach[:, p] * batch)) / batch
    return t


def _auroc(score: np.ndarray, correct: np.ndarray) -> float:
    if correct.all() or not correct.any():
        return float("nan")
    return float(roc_auc_score(correct, score))


def _time_interleaved(runners: dict[str, Callable[[], object]], rounds: int) -> dict[str, list[float]]:
    """Wall seconds of each runner per round, rounds interleaved (:func:`~dyninfer.runtime.cost.interleaved_latency`)."""
    lat = interleaved_latency(runners, rounds=rounds, warmup=0, clock="wall")
    return {k: [t / 1e3 for t in v["times_ms"]] for k, v in lat.items()}


def run_experiment(cfg: CascadeExperimentConfig, log: Callable[[str], None] = print) -> dict:
    """Run the whole experiment; return a dict of every figure plus the arrays the plots need."""
    t_start = time.perf_counter()
    prep = prepare(cfg.dataset, cfg.preset, seed=cfg.seed, data_root=cfg.data_root, device=cfg.device,
                   models=list(cfg.models) if cfg.models else None, progress=cfg.progress, log=log)
    names = list(prep.models)
    if len(names) < 2:
        raise ConfigError(f"a cascade needs at least two models; preset {cfg.preset} has {names}")
    teacher = names[-1]
    log("[cost] measuring every path in this run")
    sample = prep.data.calib.x[:cfg.serving_batch].to(cfg.device)
    costs = measure_costs(prep.models, sample, batches=tuple(sorted({1, 16, 64, cfg.serving_batch})),
                          repeats=prep.preset.latency_repeats, min_time_s=prep.preset.latency_min_s, log=log)
    for tr in (prep.calib, prep.test):
        tr.costs = costs
    calib, test = prep.calib, prep.test
    t_acc_cal, t_acc_test = calib.accuracy(teacher), test.accuracy(teacher)
    t_flops = test.cost(teacher).flops

    # ---- fit every router on every chain (calibration), evaluate on test. The best of K candidates is
    # picked on calibration, so each must hold its bound at 1 - (1 - confidence) / K (Bonferroni).
    n_candidates = len(chains(names)) * max(1, sum(r != "random" for r in cfg.routers))
    per_candidate = 1 - (1 - cfg.confidence) / n_candidates
    fits = []
    for chain in chains(names):
        ctest = test.select(chain)
        orc = oracle(ctest)
        for label in cfg.routers:
            params = dict(ROUTERS[label])
            if params["score"] == "random":
                params["score_params"] = {"seed": cfg.seed}
            c = Cascade(chain, tolerance=cfg.tolerance, confidence=per_candidate, **params).fit(calib)
            out = c.simulate(test)
            curve = c.curve(test)
            j = curve.cheapest_at(t_acc_test - cfg.tolerance)
            s0 = c.scores_on(test)[0]
            fits.append({
                "chain": chain, "router": label, "score": c.score_.label, "thresholds": list(c.thresholds_),
                "calib": c.calib_point_, "target_calib": c.target_,
                "test_accuracy": out.accuracy, "test_flops": out.mean_flops, "flops_saving": t_flops / out.mean_flops,
                "test_share": out.path_share(len(chain)).tolist(),
                "meets_target_test": out.accuracy >= t_acc_test - cfg.tolerance - 1e-12,
                "auroc_first_stage": _auroc(s0, ctest.correct[0]) if c.score_.deterministic else float("nan"),
                "test_optimal_flops": float(curve.cost[j]) if j is not None else float("nan"),
                "oracle_flops": orc.mean_flops, "oracle_accuracy": orc.accuracy,
                "oracle_share_captured": (t_flops - out.mean_flops) / (t_flops - orc.mean_flops),
                "_cascade": c, "_outcome": out, "_curve": curve,
            })
            log(f"[fit] {'>'.join(chain):24s} {label:12s} calib acc {c.calib_point_['accuracy']:.4f} -> test acc "
                f"{out.accuracy:.4f}, {out.mean_flops / 1e6:.2f} MFLOPs ({t_flops / out.mean_flops:.2f}x fewer)")

    candidates = [f for f in fits if f["router"] != "random" and f["calib"]["meets_target"]]
    best = min(candidates, key=lambda f: (f["calib"]["flops"], -f["calib"]["accuracy"]))
    log(f"[best] {'>'.join(best['chain'])} with {best['router']} (chosen on calibration)")

    # ---- sweep speed: the whole energy curve of the best chain on the test trace
    t0 = time.perf_counter()
    sweep(test.select(best["chain"]), make_score("energy"))
    sweep_seconds = time.perf_counter() - t0

    # ---- runtime: best cascade and the teacher, side by side on the same batches
    cascade: Cascade = best["_cascade"]
    rt = cascade.runtime(prep.models, input_shape=prep.data.spec.input_shape, device=cfg.device,
                         stage_flops=[test.cost(s).flops for s in cascade.stages])
    rt_teacher = SequentialRuntime([model_stage(prep.models[teacher])], make_score("energy"), [],
                                   stage_flops=[t_flops], input_shape=prep.data.spec.input_shape, device=cfg.device)
    full = rt.run(prep.data.test.x, cfg.serving_batch)
    sim = best["_outcome"]
    agree_pred = float((full.pred.numpy() == sim.pred).mean())
    agree_exit = float((full.exit.numpy() == sim.path).mean())
    xs = prep.data.test.x[:cfg.timing_samples]
    timing = _time_interleaved({"cascade": lambda: rt.run(xs, cfg.serving_batch),
                                "teacher": lambda: rt_teacher.run(xs, cfg.serving_batch)}, prep.preset.runtime_rounds)
    med = {k: float(np.median(v)) for k, v in timing.items()}
    predicted = BatchTimeModel(test.select(cascade.stages)).predict(sim.path[:len(xs)], cfg.serving_batch)
    predicted_teacher = BatchTimeModel(test.select([teacher])).predict(np.zeros(len(xs), int), cfg.serving_batch)
    x1 = prep.data.test.x[:cfg.batch1_samples]
    b1 = _time_interleaved({"cascade": lambda: [rt(x1[i:i + 1]) for i in range(len(x1))],
                            "teacher": lambda: [rt_teacher(x1[i:i + 1]) for i in range(len(x1))]},
                           max(1, prep.preset.runtime_rounds // 2))
    b1_ms = {k: float(np.median(v)) / len(x1) * 1e3 for k, v in b1.items()}
    energy = {}
    for k, r in (("cascade", rt), ("teacher", rt_teacher)):
        meter = EnergyMeter(cfg.device, cfg.cpu_watts_per_thread)
        with meter:
            r.run(xs, cfg.serving_batch)
        energy[k] = {"joules_per_image": meter.joules / len(xs), "source": meter.source,
                     "co2_g_per_10k_images": co2_grams(meter.joules / len(xs) * 1e4, cfg.grid_g_per_kwh)}

    runtime = {
        "timed_samples": len(xs), "serving_batch": cfg.serving_batch, "rounds": prep.preset.runtime_rounds,
        "seconds": timing, "median_seconds": med,
        "throughput": {k: len(xs) / v for k, v in med.items()},
        "throughput_ratio": med["teacher"] / med["cascade"],
        "predicted_seconds": {"cascade": predicted, "teacher": predicted_teacher},
        "measured_over_predicted": {"cascade": med["cascade"] / predicted, "teacher": med["teacher"] / predicted_teacher},
        "batch1_ms_per_image": b1_ms, "batch1_speedup": b1_ms["teacher"] / b1_ms["cascade"],
        "energy": energy, "energy_ratio": energy["teacher"]["joules_per_image"] / energy["cascade"]["joules_per_image"],
        "agreement_with_trace": {"predictions": agree_pred, "exits": agree_exit, "samples": test.n},
    }
    log(f"[runtime] throughput {runtime['throughput']['cascade']:.0f} vs {runtime['throughput']['teacher']:.0f} img/s "
        f"({runtime['throughput_ratio']:.2f}x); measured/predicted {runtime['measured_over_predicted']['cascade']:.3f}; "
        f"agreement with trace {agree_pred:.4f}")

    # ---- statistics, routers compared on the best chain's trace
    mc = mcnemar(sim.correct, test.correct[test.index(teacher)])
    same_chain = [f for f in fits if f["chain"] == best["chain"]]
    eligible = [f for f in same_chain if f["meets_target_test"]]
    winner = min(eligible, key=lambda f: f["test_flops"])["router"] if eligible else None
    winner_free = min(same_chain, key=lambda f: (np.nan_to_num(f["test_optimal_flops"], nan=np.inf)))["router"]

    static = []
    for name in names:
        c = test.cost(name)
        static.append({"model": name, "test_accuracy": test.accuracy(name), "calib_accuracy": calib.accuracy(name),
                       "flops": c.flops, "params": c.params, "bytes": c.bytes,
                       "batch1_ms": c.latency[1].median_s * 1e3, "batch1_ms_p25": c.latency[1].p25_s * 1e3,
                       "batch1_ms_p75": c.latency[1].p75_s * 1e3,
                       "throughput": c.latency[cfg.serving_batch].throughput,
                       "energy_j_per_image": c.energy_j_per_sample, "energy_source": c.energy_source,
                       "co2_g_per_10k_images": co2_grams(c.energy_j_per_sample * 1e4, cfg.grid_g_per_kwh)})

    public = lambda f: {k: v for k, v in f.items() if not k.startswith("_")}  # noqa: E731
    return {
        "config": asdict(cfg), "versions": versions(), "data": prep.data.meta, "preset": prep.preset.name,
        "models": {k: {kk: v for kk, v in m.items() if kk != "versions"} for k, m in prep.model_meta.items()},
        "teacher": {"name": teacher, "test_accuracy": t_acc_test, "calib_accuracy": t_acc_cal, "flops": t_flops},
        "static": static, "fits": [public(f) for f in fits],
        "best": public(best), "runtime": runtime, "mcnemar_cascade_vs_teacher": mc,
        "router_winner": {"chain": best["chain"], "at_calibrated_threshold": winner, "threshold_free": winner_free},
        "candidates": n_candidates, "candidate_confidence": per_candidate,
        "sweep_seconds": sweep_seconds, "seconds_total": time.perf_counter() - t_start,
        "_fits": fits, "_best": best, "_test": test, "_calib": calib,
    }
