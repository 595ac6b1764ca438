"""The selection method's own figures (ABS): the lambda sweep against the static hull and the oracle,
the ablations of section 4 (no complexity, complexity only, early-block features, the complexity
heuristic alone, a random policy), routing against the complexity score, the analyser + policy
overhead, Table 1 run for real, and the backbone manager under budgets that hold part of the pool."""

from __future__ import annotations

import dataclasses
import itertools
import tempfile
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ...check import number
from ...errors import ConfigError
from ...evaluate.frontier import hull_accuracy_at, upper_hull
from ...evaluate.simulate import simulate_upfront
from ...evaluate.stats import mcnemar
from ...runtime.cost import EnergyMeter, co2_grams, time_calls
from ...runtime.manager import BackboneManager
from ...runtime.pool import BackbonePool
from ...runtime.upfront import UpfrontRuntime, resident_first
from ...train.trainer import predict_logits
from ..base import FIGURES, Figures
from .method import Selection, biased_choice
from .report import sections
from .selector import BackboneSelector, ScorePolicy, time_per_image

TV_POOL = ("tv-mobilenet_v3_large", "tv-mobilenet_v2", "tv-efficientnet_b0", "tv-resnet18", "tv-densenet121",
           "tv-resnet50", "tv-densenet161")
VARIANTS = {"policy without complexity": {"use_complexity": False},
            "policy on complexity only": {"use_features": False},
            "policy (early-block features)": {"features": "early-block", "grid": 4}}


@dataclass
class SelectionFigures:
    """Settings of the selection figures (unknown keys are errors)."""

    variants: tuple[str, ...] = tuple(VARIANTS)   # ablation policies trained at every lambda
    table_lambdas: tuple[float, ...] = (0.7, 0.9, 0.97)  # run for real in Table 1 (plus the chosen one)
    timing_rounds: int = 3                  # interleaved rounds of the real test-set runs (median kept)
    overhead_repeats: int = 30              # timed calls of analyser+policy vs the cheapest backbone
    heuristic_grid: int = 21                # score quantiles per cut of the complexity-only heuristic
    score_bins: int = 10                    # complexity-score bins of the routing-share figure
    manager_stream: int = 10000             # test images streamed through the manager (0: the whole test set)
    tv_pool: tuple[str, ...] = TV_POOL      # torchvision pool for the half-budget manager figure (() to skip)
    tv_image_size: int = 32                 # images are padded to this side for the torchvision pool
    tv_stream: int = 8192                   # images streamed through the torchvision pool (first batch: cold start)
    tv_batches: tuple[int, ...] = (1024, 2048)  # batches of the torchvision-pool stream (largest: headline figure)

    def __post_init__(self) -> None:
        unknown = sorted(set(self.variants) - set(VARIANTS))
        if unknown:
            raise ConfigError(f"unknown selection variants {unknown}; known: {list(VARIANTS)}")
        for name in ("timing_rounds", "overhead_repeats", "score_bins", "tv_image_size", "tv_stream"):
            number(name, getattr(self, name), lo=1, integer=True)
        number("heuristic_grid", self.heuristic_grid, lo=2, integer=True)
        number("manager_stream", self.manager_stream, lo=0, integer=True, hint=" (0: the whole test split)")
        for lam in self.table_lambdas:
            number("table_lambdas", lam, lo=0, hi=1)
        for b in self.tv_batches:
            number("tv_batches", b, lo=1, integer=True)


class LambdaChooser:
    """The up-front runtime's chooser for one trained lambda of a fitted :class:`Selection` (its cost bias as knob)."""

    def __init__(self, method: Selection, selector: BackboneSelector) -> None:
        self.method, self.selector = method, selector

    def choose(self, x: torch.Tensor, knob: float) -> torch.Tensor:
        return biased_choice(self.selector.logits(x).cpu(), knob, self.method.cost_)

    def check_knob(self, value) -> float:
        return self.method.check_knob(value)


def oracle_points(correct: np.ndarray, times: np.ndarray, grid: int = 400) -> tuple[np.ndarray, np.ndarray]:
    """Upper hull of the oracle router's (time, accuracy) at many trade-offs (it knows which backbones are right)."""
    tn = times / times.max()
    accs, ts = [], []
    for w in np.linspace(0, 1, grid):
        a = np.argmax(w * correct.T - (1 - w) * tn[None] - 1e-9 * np.arange(len(times))[None], 1)
        accs.append(correct[a, np.arange(correct.shape[1])].mean())
        ts.append(times[a].mean())
    return upper_hull(np.array(ts), np.array(accs))


def point(outcome, times: np.ndarray, overhead_s: float, static_a: np.ndarray, oracle_xy=None) -> dict:
    """Accuracy, mean time per image, margin above the static hull and oracle share of one outcome."""
    t = float(times[outcome.path].mean() + overhead_s)
    hull = float(hull_accuracy_at(times, static_a, t))
    d = {"accuracy": outcome.accuracy, "time_per_image_s": t, "hull_accuracy": hull, "margin": outcome.accuracy - hull,
         "share": outcome.path_share(len(times)).tolist()}
    if oracle_xy is not None:
        orc = float(np.interp(t, *oracle_xy))
        d.update({"oracle_accuracy": orc, "oracle_gain": orc - hull,
                  "oracle_share_captured": (outcome.accuracy - hull) / (orc - hull) if orc - hull > 1e-12 else float("nan")})
    return d


def make(ev, cfg: SelectionFigures, log: Callable[[str], None]) -> list:
    m: Selection = ev.method
    calib, test, paths = ev.calib.select(m.paths_), ev.test.select(m.paths_), ev.prep.paths
    xc, xt = calib.inputs(), test.inputs()
    dev = torch.device(ev.cfg.device)
    sb, names, P = ev.cfg.serving_batch, m.paths_, len(m.paths_)
    times = time_per_image(test, sb)
    static_c, static_t = calib.correct.mean(1), test.correct.mean(1)
    res: dict = {"paths": names, "serving_batch": sb, "timing_rounds": cfg.timing_rounds}
    res["backbones"] = {n: {"flops": c.flops, "params": c.params, "bytes": c.bytes, "time_per_image_s": float(times[i]),
                            "batch1_ms": c.latency[1].median_s * 1e3, "calib_accuracy": float(static_c[i]),
                            "test_accuracy": float(static_t[i])} for i, (n, c) in enumerate(zip(names, test.costs))}
    # ---- ablation policies at every lambda (the main one is the fitted method's)
    fitted = {"policy": m.selectors_}
    for v in cfg.variants:
        log(f"[selection] training '{v}' at {len(m.lambdas)} lambdas")
        params = {**m.get_params(), **VARIANTS[v]}
        vm = Selection(**params)
        fitted[v] = vm.fit(ev.calib, **vm.fit_options(paths)).selectors_
    # ---- overhead: analyser + features + policy vs the cheapest backbone, at the serving batch and at batch 1
    smallest = paths.models[names[0]]
    main_any = m.selector_
    eb = fitted.get("policy (early-block features)", {})
    eb_any = next(iter(eb.values())) if eb else None
    calls = {"cheapest backbone": lambda x: smallest(x),
             "analyser only": lambda x: main_any.analyser_.components(x, validate=False),
             "analyser + policy": lambda x: main_any.logits(x)}
    if eb_any is not None:
        calls["analyser + policy (early-block)"] = lambda x: eb_any.logits(x)
    overhead: dict[str, dict] = {}
    for bname, xx in (("serving_batch", xt[:sb].to(dev)), ("batch1", xt[:1].to(dev))):
        meds: dict[str, list[float]] = {k: [] for k in calls}
        for _ in range(3):
            for k, fn in calls.items():
                def call(fn=fn, xx=xx):
                    with torch.inference_mode():
                        fn(xx)
                meds[k].append(time_calls(call, repeats=cfg.overhead_repeats, warmup=3, batch=xx.shape[0],
                                          device=dev).median_s / xx.shape[0])
        overhead[bname] = {k: float(np.median(v)) for k, v in meds.items()}
        base = overhead[bname]["cheapest backbone"]
        for k in list(overhead[bname]):
            if k != "cheapest backbone":
                overhead[bname][f"{k} / cheapest %"] = 100 * overhead[bname][k] / base
    res["overhead"] = overhead
    res["overhead_flops"] = {"analyser + policy": m.decide_flops_, "cheapest backbone": test.costs[0].flops}
    ov_main = overhead["serving_batch"]["analyser + policy"]
    ov_eb = overhead["serving_batch"].get("analyser + policy (early-block)", ov_main)
    # ---- every policy at every lambda against the static hull and the oracle (at cost bias 0: the trained policy)
    oracle_t = oracle_points(test.correct, times)
    res["oracle"] = {"time_per_image_s": oracle_t[0].tolist(), "accuracy": oracle_t[1].tolist()}
    curves, chosen = {}, {}
    part = calib.subset(m.fit_index_)  # the rows the policies were trained and chosen on (same split for every variant)
    for vname, sels in fitted.items():
        ov = ov_eb if "early-block" in vname else ov_main
        rows = []
        for lam, sel in sels.items():
            vi = sel.history_.val_index if len(sel.history_.val_index) else np.arange(part.n)
            p_val = point(m._outcome(part, sel, 0.0).subset(vi), times, ov, part.correct[:, vi].mean(1))
            p_test = point(m._outcome(test, sel, 0.0), times, ov, static_t, oracle_t)
            rows.append({"lambda": lam, "calib_heldout": p_val, "test": p_test, "best_epoch": sel.history_.best_epoch})
        curves[vname] = rows
        chosen[vname] = max(rows, key=lambda r: r["calib_heldout"]["margin"])
        log(f"[selection] {vname}: lambda {chosen[vname]['lambda']} chosen on calibration -> test margin "
            f"{100 * chosen[vname]['test']['margin']:+.2f} pts, {chosen[vname]['test']['time_per_image_s'] * 1e6:.1f} "
            f"us/image")
    res["curves"], res["chosen"] = curves, chosen
    best_lam = chosen["policy"]["lambda"]
    out_best = m._outcome(test, m.selectors_[best_lam], 0.0)
    # ---- ablation: the complexity heuristic alone (cuts on the score, chosen on calibration)
    analyser = m.selector_.analyser_
    s_c, s_t = analyser.score(xc).numpy(), analyser.score(xt).numpy()
    qs = np.quantile(s_c, np.linspace(0, 1, cfg.heuristic_grid))
    heur = []
    for cuts in itertools.combinations_with_replacement(np.concatenate([[-np.inf], qs, [np.inf]]), P - 1):
        pol = ScorePolicy(analyser, cuts)
        ov_a = overhead["serving_batch"]["analyser only"]
        heur.append({"cuts": [float(c) for c in cuts],
                     "calib": point(simulate_upfront(calib, pol.choose_from_scores(s_c)), times, ov_a, static_c),
                     "test": point(simulate_upfront(test, pol.choose_from_scores(s_t)), times, ov_a, static_t, oracle_t)})
    hbest = max(heur, key=lambda r: r["calib"]["margin"])
    res["heuristic"] = {"chosen": hbest, "test_points": [(r["test"]["time_per_image_s"], r["test"]["accuracy"])
                                                         for r in heur],
                        "max_test_margin": max(r["test"]["margin"] for r in heur)}
    # ---- ablation: a random policy with the chosen policy's shares
    share = out_best.path_share(P)
    oc_r = simulate_upfront(test, np.random.default_rng(ev.cfg.seed).choice(P, size=test.n, p=share))
    res["random"] = {"share": share.tolist(), "draw": point(oc_r, times, 0.0, static_t, oracle_t),
                     "expected_accuracy": float(share @ static_t), "expected_time_per_image_s": float(share @ times)}
    res["mcnemar_policy_vs_random"] = mcnemar(out_best.correct, oc_r.correct)
    # ---- routing against the complexity score (chosen lambda, test split)
    edges = np.quantile(s_c, np.linspace(0, 1, cfg.score_bins + 1))
    bins = np.clip(np.searchsorted(edges, s_t, side="right") - 1, 0, cfg.score_bins - 1)
    from scipy.stats import spearmanr

    routing = [{"bin": b, "score_lo": float(edges[b]), "score_hi": float(edges[b + 1]), "n": int((bins == b).sum()),
                "share": (np.bincount(out_best.path[bins == b], minlength=P) / max((bins == b).sum(), 1)).tolist(),
                "small_model_accuracy": float(test.correct[0, bins == b].mean()) if (bins == b).any() else float("nan")}
               for b in range(cfg.score_bins)]
    varied = np.unique(out_best.path).size > 1
    rho = spearmanr(s_t, out_best.path) if varied else None
    res["routing"] = {"bins": routing, "spearman_score_vs_backbone": float(rho.statistic) if varied else float("nan"),
                      "spearman_pvalue": float(rho.pvalue) if varied else float("nan"),
                      "mean_score_per_backbone": [float(s_t[out_best.path == p].mean()) if (out_best.path == p).any()
                                                  else float("nan") for p in range(P)],
                      "spearman_score_vs_small_model_wrong": float(spearmanr(s_t, ~test.correct[0]).statistic)}
    # ---- Table 1: static backbones and the adaptive system run for real on the whole test split
    pool = paths.subset(names).backbone_pool()
    full_mgr = BackboneManager(pool, pool.total_bytes, device=dev)
    runners: dict[str, Callable[[], tuple[np.ndarray, object]]] = {}
    for n in names:
        mod = paths.models[n].to(dev).eval()
        runners[n] = (lambda mod=mod: (predict_logits(mod, xt, sb).argmax(1).numpy(), None))
    lams = sorted(lam for lam in set(cfg.table_lambdas) | {best_lam} if lam in m.selectors_)
    rts = {f"adaptive lam={lam:g}": (lam, 0.0, UpfrontRuntime(names, LambdaChooser(m, m.selectors_[lam].to(dev)),
                                                              full_mgr, 0.0, path_flops=m.flops_, device=dev))
           for lam in lams}
    rts[f"operating point (lam={m.lambda_:g}, bias {m.knob_:.3g})"] = (m.lambda_, m.knob_, m.runtime(paths, device=dev))
    for k, (_, _, rt) in rts.items():
        runners[k] = (lambda rt=rt: (lambda r: (r.pred.numpy(), r))(rt.run(xt, sb)))
    for n in names:  # warm the manager: every backbone resident (the table measures steady state)
        full_mgr.get(n)
    measured = {k: {"seconds": [], "joules": []} for k in runners}
    preds, extra, source = {}, {}, ""
    for rnd in range(cfg.timing_rounds):
        for k, fn in tqdm(runners.items(), desc=f"test-set runs {rnd + 1}/{cfg.timing_rounds}",
                          disable=not ev.cfg.progress, leave=False):
            meter = EnergyMeter(dev, ev.cfg.cpu_watts_per_thread)
            with meter:
                preds[k], extra[k] = fn()
            measured[k]["seconds"].append(meter.seconds)
            measured[k]["joules"].append(meter.joules)
            source = meter.source
    table = []
    for k in runners:
        sec, j = float(np.median(measured[k]["seconds"])), float(np.median(measured[k]["joules"]))
        row = {"system": k, "accuracy": float((preds[k] == test.labels).mean()), "time_per_image_ms": 1e3 * sec / test.n,
               "energy_j": j, "co2_g": co2_grams(j, ev.cfg.grid_g_per_kwh), "seconds_rounds": measured[k]["seconds"]}
        if k in rts:
            lam, bias, _ = rts[k]
            sim = m._outcome(test, m.selectors_[lam], bias)
            r = extra[k]
            row.update({"lambda": lam, "bias": bias, "path_agreement": float((r.path.numpy() == sim.path).mean()),
                        "pred_agreement_with_simulation": float((preds[k] == sim.pred).mean()),
                        "predicted_time_per_image_ms": 1e3 * (times[sim.path].mean() + ov_main),
                        "decide_share": r.decide_seconds / r.seconds, "share": r.path_counts.tolist()})
        table.append(row)
    st_t = np.array([r["time_per_image_ms"] for r in table if r["system"] in names])
    st_a = np.array([r["accuracy"] for r in table if r["system"] in names])
    for r in table:  # the same comparison with wall times measured for real on the whole test set
        if "lambda" in r:
            r["real_hull_accuracy"] = float(hull_accuracy_at(st_t, st_a, r["time_per_image_ms"]))
            r["real_margin"] = r["accuracy"] - r["real_hull_accuracy"]
    res["table1"] = {"rows": table, "energy_source": source, "n_images": test.n, "grid_g_per_kwh": ev.cfg.grid_g_per_kwh}
    # ---- the manager under budgets that hold only part of the pool
    res["manager"] = _manager(m, pool, xt, cfg, sb, dev, ev, calib, log)
    if cfg.tv_pool:
        res["manager"]["torchvision"] = torchvision_manager(ev, cfg, analyser, log)
    res["figures"] = summarise(res)
    return sections(res)


def _manager(m: Selection, pool: BackbonePool, xt: torch.Tensor, cfg: SelectionFigures, sb: int, dev, ev, calib,
             log: Callable[[str], None]) -> dict:
    out = {"pool_bytes": {e.name: e.bytes for e in pool}, "pool_total_bytes": pool.total_bytes}
    half = pool.total_bytes // 2
    try:
        BackboneManager(pool, half)
        out["half_budget_error"] = None
    except ConfigError as e:
        out["half_budget_error"] = str(e)
        log(f"[manager] half the pool's bytes ({half}) cannot hold the largest backbone")
    stream = xt if cfg.manager_stream <= 0 else xt[: cfg.manager_stream]
    budgets = {"smallest legal (largest backbone)": pool.largest_bytes}
    if half >= pool.largest_bytes:
        budgets["half the pool"] = half

    def entropy(sel: BackboneSelector) -> float:  # the lambda whose calibration routing spreads most: most switching
        sh = m._outcome(calib, sel, 0.0).path_share(len(m.paths_))
        return float(-(sh[sh > 0] * np.log(sh[sh > 0])).sum())

    mixed = max(m.selectors_, key=lambda lam: entropy(m.selectors_[lam]))
    streams = {f"chosen lambda {m.lambda_:g}": m.lambda_, f"most mixed lambda {mixed:g}": mixed}
    out["runs"] = {}
    for bname, budget in budgets.items():
        for sname, lam in streams.items():
            mgr = BackboneManager(pool, budget, device=dev)
            rt = UpfrontRuntime(m.paths_, LambdaChooser(m, m.selectors_[lam]), mgr, 0.0, path_flops=m.flops_, device=dev)
            rt(stream[:sb])  # warm-up batch (first loads are the cold start, not switching)
            cold = mgr.stats().load_seconds
            mgr.reset_stats()
            r = rt.run(stream, sb)
            st = mgr.stats()
            run = {"budget_bytes": budget, "budget_share_of_pool": budget / pool.total_bytes,
                   "switching_overhead": r.load_seconds / r.seconds if r.seconds else 0.0, "total_seconds": r.seconds,
                   "load_seconds": r.load_seconds, "inference_seconds": float(r.path_seconds.sum()),
                   "decide_seconds": r.decide_seconds, "images": int(stream.shape[0]),
                   "within_budget": st.peak_bytes <= budget and st.peak_measured_bytes <= budget,
                   "cold_start_load_seconds": cold, **st.to_dict()}
            out["runs"][f"{bname}, {sname}"] = run
            log(f"[manager] budget {budget} B ({100 * run['budget_share_of_pool']:.0f}% of pool), {sname}: switching "
                f"overhead {100 * run['switching_overhead']:.2f}%, misses {st.misses}, evictions {st.evictions}")
    return out


def torchvision_manager(ev, cfg: SelectionFigures, analyser, log: Callable[[str], None]) -> dict:
    """The paper's torchvision pool (weights=None) under half its bytes, on a mixed stream of the test images.

    Images are padded to ``tv_image_size`` (DenseNets need at least 32x32) and routed by the complexity
    score in equal-mass bins (lightest backbone for the simplest images); backbones load on a miss from
    checkpoints written once to a temporary folder."""
    data, dev = ev.prep.data, torch.device(ev.cfg.device)
    pad = (cfg.tv_image_size - data.spec.image_size[0]) // 2
    spec = dataclasses.replace(data.spec, image_size=(cfg.tv_image_size, cfg.tv_image_size))
    x = data.test.x[: cfg.tv_stream]
    x = F.pad(x, (pad, pad, pad, pad)) if pad > 0 else x
    with tempfile.TemporaryDirectory(prefix="dyninfer-tvpool-") as folder:
        pool = BackbonePool.from_registry(list(cfg.tv_pool), spec, folder, weights=None, progress=log)
        half = pool.total_bytes // 2
        if half < pool.largest_bytes:
            return {"pool": pool.names, "error": f"half the pool ({half} B) < largest backbone ({pool.largest_bytes} B)"}
        cuts = np.quantile(analyser.score(data.calib.x).numpy(), np.linspace(0, 1, len(pool) + 1)[1:-1])
        choice = ScorePolicy(analyser, cuts).choose(data.test.x[: cfg.tv_stream])  # on the unpadded images, as fitted
        runs = [_stream(pool, half, x, choice, b, dev, ev.cfg.progress) for b in sorted(set(cfg.tv_batches))]
    main = runs[-1]  # the largest batch is the headline figure; every batch size is reported
    for r in runs:
        log(f"[manager] torchvision pool ({pool.total_bytes / 1e6:.0f} MB), half budget, batch {r['batch']}: switching "
            f"overhead {100 * r['switching_overhead']:.2f}%, peak {r['peak_measured_bytes'] / 1e6:.1f} MB")
    return {"pool": pool.names, "pool_bytes": {e.name: e.bytes for e in pool}, "pool_total_bytes": pool.total_bytes,
            "image_size": cfg.tv_image_size, "runs": runs, **main}


def _stream(pool: BackbonePool, budget: int, x: torch.Tensor, choice: torch.Tensor, batch: int, dev: torch.device,
            progress: bool) -> dict:
    """Stream ``x`` in batches through a fresh manager, each image to backbone ``choice``; first batch = cold start."""
    mgr = BackboneManager(pool, budget, device=dev)
    order = pool.names
    t_total = inf = cold = 0.0
    first = True
    for i in tqdm(range(0, x.shape[0], batch), desc=f"torchvision pool stream, batch {batch}", disable=not progress,
                  leave=False):
        xb, cb = x[i:i + batch], choice[i:i + batch]
        t0 = time.perf_counter()
        present = resident_first([p for p in range(len(order)) if bool((cb == p).any())], order, mgr)
        t_inf = 0.0
        for p in present:
            idx = (cb == p).nonzero().squeeze(1)
            with mgr.use(order[p]) as model, torch.inference_mode():
                ts = time.perf_counter()
                model(xb[idx].to(dev))
                t_inf += time.perf_counter() - ts
        if first:  # the first batch is the cold start: every backbone it needs loads once
            cold = mgr.stats().load_seconds
            mgr.reset_stats()
            first = False
            continue
        t_total += time.perf_counter() - t0
        inf += t_inf
    st = mgr.stats()
    return {"budget_bytes": budget, "images": int(x.shape[0]), "batch": batch,
            "switching_overhead": st.load_seconds / t_total if t_total else 0.0, "total_seconds": t_total,
            "inference_seconds": inf, "cold_start_load_seconds": cold,
            "within_budget": st.peak_bytes <= budget and st.peak_measured_bytes <= budget, **st.to_dict()}


def summarise(res: dict) -> dict:
    """The paper's target figures, each with whether it was met."""
    ch = res["chosen"]["policy"]
    ov = res["overhead"]["serving_batch"]["analyser + policy / cheapest %"]
    real = [r for r in res["table1"]["rows"] if r.get("lambda") == ch["lambda"] and r.get("bias") == 0.0]
    out = {"chosen_lambda": ch["lambda"], "test_margin_pts": 100 * ch["test"]["margin"],
           "real_run_margin_pts": 100 * real[0]["real_margin"] if real else float("nan"),
           "oracle_share_captured_pct": 100 * ch["test"]["oracle_share_captured"],
           "above_static_hull": ch["test"]["margin"] > 0,
           "max_test_margin_over_lambdas_pts": 100 * max(r["test"]["margin"] for r in res["curves"]["policy"]),
           "overhead_pct_of_cheapest": ov, "overhead_target_met": ov < 5.0}
    runs = res["manager"]["runs"]
    tv = res["manager"].get("torchvision")
    tv = None if tv is not None and "error" in tv else tv
    half_runs = [r for k, r in runs.items() if k.startswith("half the pool")]
    h = max(half_runs, key=lambda r: r["switching_overhead"]) if half_runs else tv
    if h is not None:
        out.update({"half_budget_pool": "trained pool" if half_runs else "torchvision pool",
                    "switching_overhead_pct": 100 * h["switching_overhead"],
                    "half_budget_peak_bytes": h["peak_measured_bytes"], "half_budget_bytes": h["budget_bytes"],
                    "manager_target_met": h["switching_overhead"] < 0.10 and h["within_budget"]})
    return out


FIGURES.register("selection", Figures(SelectionFigures, make))
