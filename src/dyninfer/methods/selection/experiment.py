"""The backbone-selection experiment behind ``dyninfer select``: ABS on a preset's models, end to end.

Reuse (or train) the preset's backbones and their calibration/test traces, measure every path's
cost and the analyser+policy overhead side by side, train the policy with REINFORCE at several
lambdas on the calibration trace, choose lambda on held-out calibration rows, evaluate on the test
trace against the static hull and the oracle, run the adaptive system for real (predictions
checked against the simulation; time, energy, CO2 measured), run the ablations of section 4, and
measure the backbone manager under budgets that hold only part of the pool.
"""

from __future__ import annotations

import dataclasses
import itertools
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode
from tqdm.auto import tqdm

from ...errors import ConfigError
from ...evaluate.frontier import hull_accuracy_at, upper_hull
from ...evaluate.stats import mcnemar
from ...harness import prepare
from ...io import cache_dir, versions
from ...runtime.cost import EnergyMeter, PathCost, co2_grams, time_calls
from ...trace import Trace, measure_costs
from ...train.checkpoint import cache_key
from ...train.trainer import predict_logits
from .manager import BackboneManager
from .policy import PolicyConfig, torch_threads
from .pool import BackbonePool
from .manager_bench import measure_manager, torchvision_manager
from .runtime import SelectionRuntime
from .selector import BackboneSelector, ScorePolicy, SelectorConfig, time_per_image

DEFAULT_LAMBDAS = (0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9, 0.93, 0.95, 0.97, 0.98, 0.99)
TV_POOL = ("tv-mobilenet_v3_large", "tv-mobilenet_v2", "tv-efficientnet_b0", "tv-resnet18", "tv-densenet121",
           "tv-resnet50", "tv-densenet161")


@dataclass
class SelectionExperimentConfig:
    """Settings of one backbone-selection experiment (defaults are what the benchmark runs)."""

    dataset: str = "fashion-mnist"          # dataset registry name
    data_root: str | None = None            # dataset folder override
    preset: str = "quick"                   # backbones and training budget (quick, full, tiny)
    seed: int = 0                           # splits, training, policy, sampling
    lambdas: tuple[float, ...] = DEFAULT_LAMBDAS  # reward weights swept; the best is chosen on calibration
    table_lambdas: tuple[float, ...] = (0.7, 0.9, 0.97)  # run for real in Table 1 (plus the chosen one)
    features: str = "pixels"                # shared features of the main policy: "pixels" or "early-block"
    grid: int = 7                           # pooled feature map side
    policy: PolicyConfig = field(default_factory=PolicyConfig)  # REINFORCE hyperparameters
    serving_batch: int = 256                # batch of the runtime and of the time-per-image figures
    cost_rounds: int = 3                    # interleaved rounds of PathCost measurements (median round kept)
    cost_repeats: int = 10                  # timed calls per batch size and round
    cost_min_s: float = 0.3                 # minimum timed seconds per batch size and round
    timing_rounds: int = 3                  # interleaved rounds of the real test-set runs (median kept)
    overhead_repeats: int = 30              # timed calls of analyser+policy vs the cheapest backbone
    heuristic_grid: int = 21                # score quantiles per cut of the complexity-only heuristic
    score_bins: int = 10                    # complexity-score bins of the routing-share figure
    manager_stream: int = 10000             # test images streamed through the manager (0: the whole test set)
    tv_pool: tuple[str, ...] = TV_POOL      # torchvision pool for the half-budget manager figure (() to skip)
    tv_image_size: int = 32                 # images are padded to this side for the torchvision pool
    tv_stream: int = 8192                   # images streamed through the torchvision pool (first batch: cold start)
    tv_batches: tuple[int, ...] = (1024, 2048)  # batches of the torchvision-pool stream (largest: headline figure)
    grid_g_per_kwh: float = 400.0           # grid carbon intensity for CO2
    cpu_watts_per_thread: float = 8.0       # power model where no energy counter exists
    device: str = "cpu"                     # torch device
    threads: int | None = None              # torch intra-op threads for the whole run (None: torch's default)
    progress: bool = True                   # progress bars

    def __post_init__(self) -> None:
        if isinstance(self.policy, dict):
            self.policy = PolicyConfig(**self.policy)
        if not self.lambdas or any(not 0 <= v <= 1 for v in self.lambdas):
            raise ConfigError(f"lambdas must be a non-empty list of values in [0, 1], got {self.lambdas}")
        if self.serving_batch < 1 or self.timing_rounds < 1:
            raise ConfigError("serving_batch and timing_rounds must be >= 1")


# ----------------------------------------------------------------------------------------- helpers

def checkpoint_paths(prep, seed: int) -> dict[str, Path]:
    """Where the harness cached each trained backbone of ``prep`` (the manager loads from there)."""
    out = {}
    for name in prep.models:
        key = cache_key(name, {}, prep.data, prep.preset.models[name].to_dict(), seed)
        out[name] = cache_dir() / "checkpoints" / prep.data.spec.name / f"{name}-{key}.pt"
    return out


def median_costs(rounds: list[list[PathCost]]) -> list[PathCost]:
    """Merge cost measurements taken in interleaved rounds: per path and batch size, the round with the median time.

    On a CPU shared with other jobs one round can land on a burst of contention; the median round does not.
    """
    out = []
    for per_path in zip(*rounds):
        base = per_path[0]
        lat = {}
        for b in base.latency:
            stats = sorted((c.latency[b] for c in per_path), key=lambda s: s.median_s)
            lat[b] = stats[len(stats) // 2]
        energy = sorted(per_path, key=lambda c: c.energy_j_per_sample)[len(per_path) // 2]
        out.append(dataclasses.replace(base, latency=lat, energy_j_per_sample=energy.energy_j_per_sample,
                                       energy_source=energy.energy_source))
    return out


def with_costs(trace: Trace, costs) -> Trace:
    return Trace(list(trace.paths), trace.logits, trace.labels, list(costs), dict(trace.meta))


def overhead_flops(selector: BackboneSelector, input_shape: tuple[int, ...]) -> int:
    """FLOPs of features + complexity + policy on one image (convolutions and matmuls, as counted by torch)."""
    x = torch.rand(1, *input_shape)
    with torch.no_grad(), FlopCounterMode(display=False) as c:
        selector.logits(x)
    return int(c.get_total_flops())


def oracle_points(correct: np.ndarray, times: np.ndarray, grid: int = 400) -> tuple[np.ndarray, np.ndarray]:
    """Accuracy and mean time of the oracle router at many trade-offs.

    For each weight w the oracle sends every sample to ``argmax_a w * correct_a - (1 - w) * t_norm_a``
    (it knows which backbones are right); returns the upper hull of those points.
    """
    tn = times / times.max()
    accs, ts = [], []
    for w in np.linspace(0, 1, grid):
        a = np.argmax(w * correct.T - (1 - w) * tn[None] - 1e-9 * np.arange(len(times))[None], 1)
        accs.append(correct[a, np.arange(correct.shape[1])].mean())
        ts.append(times[a].mean())
    hx, hy = upper_hull(np.array(ts), np.array(accs))
    return hx, hy


def point(outcome, times: np.ndarray, overhead_s: float, static_t: np.ndarray, static_a: np.ndarray,
          oracle_xy: tuple[np.ndarray, np.ndarray] | None = None) -> dict:
    """Accuracy, mean time per image, margin above the static hull and oracle share of one outcome."""
    t = float(times[outcome.path].mean() + overhead_s)
    acc = outcome.accuracy
    hull = float(hull_accuracy_at(static_t, static_a, t))
    d = {"accuracy": acc, "time_per_image_s": t, "hull_accuracy": hull, "margin": acc - hull,
         "share": outcome.path_share(len(times))}
    if oracle_xy is not None:
        orc = float(np.interp(t, *oracle_xy))
        d["oracle_accuracy"] = orc
        d["oracle_gain"] = orc - hull
        d["oracle_share_captured"] = (acc - hull) / (orc - hull) if orc - hull > 1e-12 else float("nan")
    return d


# ----------------------------------------------------------------------------------------- experiment

def run_experiment(cfg: SelectionExperimentConfig, log: Callable[[str], None] = print) -> dict:
    """Run every measurement of the report; returns a JSON-serialisable dict of results."""
    with torch_threads(cfg.threads):
        return _run(cfg, log)


def _run(cfg: SelectionExperimentConfig, log: Callable[[str], None]) -> dict:
    t_start = time.perf_counter()
    dev = torch.device(cfg.device)
    prep = prepare(cfg.dataset, cfg.preset, seed=cfg.seed, data_root=cfg.data_root, device=cfg.device,
                   progress=cfg.progress, log=log)
    names = list(prep.models)
    P = len(names)
    xc, xt = prep.data.calib.x, prep.data.test.x
    res: dict = {"config": asdict(cfg), "versions": versions(), "dataset": prep.data.meta, "paths": names,
                 "threads": torch.get_num_threads()}

    # ---- costs of every backbone, measured in this run (PathCost), then the overhead side by side
    log("[cost] measuring every backbone at batches 1..serving batch")
    sample = xc[: max(cfg.serving_batch, 256)].to(dev)
    batches = tuple(sorted({1, 16, 64, cfg.serving_batch}))
    rounds = [measure_costs(prep.models, sample, batches=batches, repeats=cfg.cost_repeats,
                            min_time_s=cfg.cost_min_s, log=log) for _ in range(cfg.cost_rounds)]
    costs = median_costs(rounds)
    calib, test = with_costs(prep.calib, costs), with_costs(prep.test, costs)
    times = time_per_image(test, cfg.serving_batch)  # (P,) seconds per image at the serving batch
    static_acc_c = np.array([calib.accuracy(p) for p in names])
    static_acc_t = np.array([test.accuracy(p) for p in names])
    res["backbones"] = {n: {"flops": c.flops, "params": c.params, "bytes": c.bytes,
                            "time_per_image_s": float(times[i]),
                            "batch1_ms": c.latency[1].median_s * 1e3,
                            "calib_accuracy": float(static_acc_c[i]), "test_accuracy": float(static_acc_t[i]),
                            "energy_j_per_image": c.energy_j_per_sample, "energy_source": c.energy_source}
                        for i, (n, c) in enumerate(zip(names, costs))}

    # ---- policies over the lambda grid (main, without complexity, complexity only, early block)
    variants = {"policy": dict(features=cfg.features, grid=cfg.grid),
                "policy without complexity": dict(features=cfg.features, grid=cfg.grid, use_complexity=False),
                "policy on complexity only": dict(features=cfg.features, grid=cfg.grid, use_features=False)}
    if cfg.features != "early-block":
        variants["policy (early-block features)"] = dict(features="early-block", grid=4)
    smallest = prep.models[names[0]]
    shared_analyser = None
    fitted: dict[str, dict[float, BackboneSelector]] = {}
    for vname, kw in variants.items():
        fitted[vname] = {}
        for lam in tqdm(cfg.lambdas, desc=f"train {vname}", disable=not cfg.progress):
            sc = SelectorConfig(lam=lam, serving_batch=cfg.serving_batch, policy=cfg.policy, **kw)
            sel = BackboneSelector(names, sc).fit(calib, xc, feature_model=smallest, times=times,
                                                  analyser=shared_analyser)
            shared_analyser = sel.analyser_
            fitted[vname][lam] = sel
    analyser = shared_analyser

    # ---- overhead: analyser + features + policy vs the cheapest backbone, interleaved at the serving batch
    log("[cost] analyser + policy overhead vs the cheapest backbone")
    xb = xt[: cfg.serving_batch].to(dev)
    xb1 = xt[:1].to(dev)
    main_any = fitted["policy"][cfg.lambdas[0]]
    eb_any = fitted.get("policy (early-block features)", {}).get(cfg.lambdas[0])
    calls = {"cheapest backbone": lambda x: smallest(x),
             "analyser only": lambda x: analyser.components(x, validate=False),
             "analyser + policy": lambda x: main_any.logits(x)}
    if eb_any is not None:
        calls["analyser + policy (early-block)"] = lambda x: eb_any.logits(x)
    overhead: dict[str, dict] = {}
    for bname, xx in (("serving_batch", xb), ("batch1", xb1)):
        meds: dict[str, list[float]] = {k: [] for k in calls}
        for _ in range(3):
            for k, fn in calls.items():
                def call(fn=fn, xx=xx):
                    with torch.inference_mode():
                        fn(xx)
                st = time_calls(call, repeats=cfg.overhead_repeats, warmup=3, batch=xx.shape[0], device=dev)
                meds[k].append(st.median_s / xx.shape[0])
        overhead[bname] = {k: float(np.median(v)) for k, v in meds.items()}
        base = overhead[bname]["cheapest backbone"]
        for k in list(overhead[bname]):
            if k != "cheapest backbone":
                overhead[bname][f"{k} / cheapest %"] = 100 * overhead[bname][k] / base
    res["overhead"] = overhead
    res["overhead_flops"] = {"analyser + policy": overhead_flops(main_any, tuple(xt.shape[1:])),
                             "cheapest backbone": costs[0].flops}
    ov_main = overhead["serving_batch"]["analyser + policy"]
    ov_eb = overhead["serving_batch"].get("analyser + policy (early-block)", ov_main)
    log(f"[cost] overhead {ov_main * 1e6:.2f} us/image = "
        f"{overhead['serving_batch']['analyser + policy / cheapest %']:.2f}% of {names[0]}")

    # ---- static hull and oracle on both splits; score every policy at every lambda
    corr_c, corr_t = calib.correct, test.correct
    oracle_t = oracle_points(corr_t, times)
    res["oracle"] = {"time_per_image_s": oracle_t[0].tolist(), "accuracy": oracle_t[1].tolist()}
    curves: dict[str, list[dict]] = {}
    chosen: dict[str, dict] = {}
    for vname, sels in fitted.items():
        ov = ov_eb if "early-block" in vname else ov_main
        rows = []
        for lam, sel in sels.items():
            vi = sel.history_.val_index
            cal_val = sel.simulate(calib, xc)
            oc_val = type(cal_val)(cal_val.pred[vi], cal_val.path[vi], cal_val.flops[vi], cal_val.labels[vi])
            acc_v = corr_c[:, vi].mean(1)
            p_val = point(oc_val, times, ov, times, acc_v)
            p_test = point(sel.simulate(test, xt), times, ov, times, static_acc_t, oracle_t)
            rows.append({"lambda": lam, "calib_heldout": p_val, "test": p_test,
                         "best_epoch": sel.history_.best_epoch})
        curves[vname] = rows
        best = max(rows, key=lambda r: r["calib_heldout"]["margin"])
        chosen[vname] = best
        log(f"[select] {vname}: lambda {best['lambda']} chosen on calibration (held-out margin "
            f"{100 * best['calib_heldout']['margin']:+.2f} pts) -> test accuracy "
            f"{100 * best['test']['accuracy']:.2f}%, "
            f"{best['test']['time_per_image_s'] * 1e6:.1f} us/image, margin {100 * best['test']['margin']:+.2f} pts, "
            f"oracle share {100 * best['test']['oracle_share_captured']:.1f}%")
    res["curves"] = curves
    res["chosen"] = chosen
    best_lam = chosen["policy"]["lambda"]
    best_sel = fitted["policy"][best_lam]
    out_best = best_sel.simulate(test, xt)

    # ---- ablation: complexity heuristic alone (cuts on the score; chosen on calibration)
    s_c = analyser.score(xc).numpy()
    s_t = analyser.score(xt).numpy()
    qs = np.quantile(s_c, np.linspace(0, 1, cfg.heuristic_grid))
    cut_sets = [c for c in itertools.combinations_with_replacement(np.concatenate([[-np.inf], qs, [np.inf]]), P - 1)]
    heur_rows = []
    for cuts in cut_sets:
        pol = ScorePolicy(analyser, cuts)
        oc_c = best_sel.simulate(calib, xc, choice=pol.choose_from_scores(s_c))
        oc_t = best_sel.simulate(test, xt, choice=pol.choose_from_scores(s_t))
        heur_rows.append({"cuts": [float(c) for c in cuts],
                          "calib": point(oc_c, times, overhead["serving_batch"]["analyser only"], times, static_acc_c),
                          "test": point(oc_t, times, overhead["serving_batch"]["analyser only"], times,
                                        static_acc_t, oracle_t)})
    hbest = max(heur_rows, key=lambda r: r["calib"]["margin"])
    res["heuristic"] = {"chosen": hbest, "test_points": [(r["test"]["time_per_image_s"], r["test"]["accuracy"])
                                                         for r in heur_rows],
                        "max_test_margin": max(r["test"]["margin"] for r in heur_rows)}
    # ---- ablation: random policy with the chosen policy's shares
    share = out_best.path_share(P)
    rng = np.random.default_rng(cfg.seed)
    rand_choice = rng.choice(P, size=test.n, p=share)
    oc_r = best_sel.simulate(test, xt, choice=rand_choice)
    res["random"] = {"share": share.tolist(), "draw": point(oc_r, times, 0.0, times, static_acc_t, oracle_t),
                     "expected_accuracy": float(share @ static_acc_t),
                     "expected_time_per_image_s": float(share @ times)}
    res["mcnemar_policy_vs_random"] = mcnemar(out_best.correct, oc_r.correct)

    # ---- routing share against complexity score (chosen policy, test split)
    edges = np.quantile(s_c, np.linspace(0, 1, cfg.score_bins + 1))
    bins = np.clip(np.searchsorted(edges, s_t, side="right") - 1, 0, cfg.score_bins - 1)
    routing = []
    for b in range(cfg.score_bins):
        m = bins == b
        routing.append({"bin": b, "score_lo": float(edges[b]), "score_hi": float(edges[b + 1]), "n": int(m.sum()),
                        "share": (np.bincount(out_best.path[m], minlength=P) / max(m.sum(), 1)).tolist(),
                        "small_model_accuracy": float(corr_t[0, m].mean()) if m.any() else float("nan")})
    from scipy.stats import spearmanr
    varied = np.unique(out_best.path).size > 1
    rho = spearmanr(s_t, out_best.path) if varied else None
    res["routing"] = {"bins": routing, "spearman_score_vs_backbone": float(rho.statistic) if varied else float("nan"),
                      "spearman_pvalue": float(rho.pvalue) if varied else float("nan"),
                      "mean_score_per_backbone": [float(s_t[out_best.path == p].mean()) if (out_best.path == p).any()
                                                  else float("nan") for p in range(P)],
                      "spearman_score_vs_small_model_wrong": float(spearmanr(s_t, ~corr_t[0]).statistic)}

    # ---- real runs on the test set: static backbones and the adaptive system (Table 1)
    ckpts = checkpoint_paths(prep, cfg.seed)
    pool = BackbonePool.from_checkpoints(ckpts) if all(p.exists() for p in ckpts.values()) else \
        BackbonePool.from_models(prep.models)
    full_mgr = BackboneManager(pool, pool.total_bytes, device=dev)
    table_lams = sorted(set(cfg.table_lambdas) | {best_lam})
    table_lams = [lam for lam in table_lams if lam in fitted["policy"]]
    runners: dict[str, Callable[[], tuple[np.ndarray, float]]] = {}
    for n in names:
        m = prep.models[n].to(dev).eval()
        runners[n] = (lambda m=m: (predict_logits(m, xt, cfg.serving_batch).argmax(1).numpy(), None))
    for lam in table_lams:
        rt = SelectionRuntime(fitted["policy"][lam], full_mgr, seed=cfg.seed)
        def run_adaptive(rt=rt):
            r = rt.run(xt, cfg.serving_batch)
            return r.pred.numpy(), r
        runners[f"adaptive lam={lam:g}"] = run_adaptive
    for n in names:  # warm the manager: every backbone resident (the table measures steady state)
        full_mgr.get(n)
    measured: dict[str, dict] = {k: {"seconds": [], "joules": []} for k in runners}
    preds: dict[str, np.ndarray] = {}
    extra: dict[str, object] = {}
    for rnd in range(cfg.timing_rounds):
        for k, fn in tqdm(runners.items(), desc=f"test-set runs round {rnd + 1}/{cfg.timing_rounds}",
                          disable=not cfg.progress, leave=False):
            meter = EnergyMeter(dev, cfg.cpu_watts_per_thread)
            with meter:
                pr, info = fn()
            measured[k]["seconds"].append(meter.seconds)
            measured[k]["joules"].append(meter.joules)
            preds[k], extra[k] = pr, info
            energy_source = meter.source
    table = []
    labels = test.labels
    for k in runners:
        sec = float(np.median(measured[k]["seconds"]))
        j = float(np.median(measured[k]["joules"]))
        row = {"system": k, "accuracy": float((preds[k] == labels).mean()), "time_per_image_ms": 1e3 * sec / test.n,
               "energy_j": j, "co2_g": co2_grams(j, cfg.grid_g_per_kwh), "seconds_rounds": measured[k]["seconds"]}
        if k.startswith("adaptive"):
            lam = float(k.split("=")[1])
            sel = fitted["policy"][lam]
            sim = sel.simulate(test, xt, batch_size=cfg.serving_batch)
            r = extra[k]
            row.update({"lambda": lam, "path_agreement": float((r.path.numpy() == sim.path).mean()),
                        "pred_agreement_with_simulation": float((preds[k] == sim.pred).mean()),
                        "predicted_time_per_image_ms": 1e3 * (times[sim.path].mean() + ov_main),
                        "decide_share": r.decide_seconds / r.seconds, "share": r.counts.tolist()})
        table.append(row)
    st_t = np.array([r["time_per_image_ms"] for r in table if r["system"] in names])
    st_a = np.array([r["accuracy"] for r in table if r["system"] in names])
    for r in table:  # the same comparison with wall times measured for real on the whole test set
        if "lambda" in r:
            r["real_hull_accuracy"] = float(hull_accuracy_at(st_t, st_a, r["time_per_image_ms"]))
            r["real_margin"] = r["accuracy"] - r["real_hull_accuracy"]
    res["table1"] = {"rows": table, "energy_source": energy_source, "n_images": test.n,
                     "grid_g_per_kwh": cfg.grid_g_per_kwh}

    # ---- manager under budgets holding only part of the pool (a mixed stream: the chosen policy's routing)
    res["manager"] = {"pool_bytes": {e.name: e.bytes for e in pool}, "pool_total_bytes": pool.total_bytes}
    half = pool.total_bytes // 2
    try:
        BackboneManager(pool, half)
        res["manager"]["half_budget_error"] = None
    except ConfigError as e:
        res["manager"]["half_budget_error"] = str(e)
        log(f"[manager] half the pool's bytes ({half}) cannot hold the largest backbone: {e}")
    stream = xt if cfg.manager_stream <= 0 else xt[: cfg.manager_stream]
    budgets = {"smallest legal (largest backbone)": pool.largest_bytes}
    if half >= pool.largest_bytes:
        budgets["half the pool"] = half
    # the lambda whose calibration routing spreads most evenly over the pool: the most switching
    def entropy(sel: BackboneSelector) -> float:
        sh = sel.simulate(calib, xc).path_share(P)
        return float(-(sh[sh > 0] * np.log(sh[sh > 0])).sum())
    mixed_lam = max(fitted["policy"], key=lambda lam: entropy(fitted["policy"][lam]))
    streams = {f"chosen lambda {best_lam:g}": best_sel, f"most mixed lambda {mixed_lam:g}": fitted["policy"][mixed_lam]}
    res["manager"]["runs"] = {}
    for bname, budget in budgets.items():
        for sname, sel in streams.items():
            res["manager"]["runs"][f"{bname}, {sname}"] = measure_manager(sel, pool, budget, stream, cfg.serving_batch,
                                                                          dev, cfg.seed, log)
    if cfg.tv_pool:
        res["manager"]["torchvision"] = torchvision_manager(cfg, prep, analyser, log)
    res["seconds"] = time.perf_counter() - t_start
    res["figures"] = summarise(res)
    return res


def summarise(res: dict) -> dict:
    """The issue's target figures, each with whether it was met."""
    ch = res["chosen"]["policy"]
    ov = res["overhead"]["serving_batch"]["analyser + policy / cheapest %"]
    real = [r for r in res["table1"]["rows"] if r.get("lambda") == ch["lambda"]]
    out = {"chosen_lambda": ch["lambda"], "test_margin_pts": 100 * ch["test"]["margin"],
           "real_run_margin_pts": 100 * real[0]["real_margin"] if real else float("nan"),
           "oracle_share_captured_pct": 100 * ch["test"]["oracle_share_captured"],
           "above_static_hull": ch["test"]["margin"] > 0,
           "max_test_margin_over_lambdas_pts": 100 * max(r["test"]["margin"] for r in res["curves"]["policy"]),
           "overhead_pct_of_cheapest": ov, "overhead_target_met": ov < 5.0}
    runs = res["manager"]["runs"]
    tv = res["manager"].get("torchvision")
    if tv is not None and "error" in tv:
        tv = None
    half_runs = [r for k, r in runs.items() if k.startswith("half the pool")]
    if half_runs:
        h = max(half_runs, key=lambda r: r["switching_overhead"])
        out.update({"half_budget_pool": "trained pool", "switching_overhead_pct": 100 * h["switching_overhead"]})
    elif tv is not None:
        h = tv
        out.update({"half_budget_pool": "torchvision pool", "switching_overhead_pct": 100 * h["switching_overhead"]})
    else:
        h = None
    if h is not None:
        out.update({"half_budget_peak_bytes": h["peak_measured_bytes"], "half_budget_bytes": h["budget_bytes"],
                    "manager_target_met": h["switching_overhead"] < 0.10 and h["within_budget"]})
    return out
