"""The early-exit method's own figures (Leroux et al.): Table 1 measured, the paper's targets, test-time
specialisation on class-subset streams (Figure 4), the adaptation setting chosen by cross-validation on
the calibration split, and calibration per exit. Added to the shared report of ``dyninfer run early-exit``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import torch

from ...data.datasets import Dataset
from ...check import number
from ...errors import ConfigError
from ...runtime.cost import CLOCKS, PathCost, paired_overhead, torch_threads
from ...scores import Score
from ..base import FIGURES, Figures
from .adapt import SpecializeConfig, TestTimeSpecializer, parse_adaptation
from .evaluation import (CURVE_THRESHOLDS, FINE_THRESHOLDS, SEARCH_THRESHOLDS, TABLE_THRESHOLDS, ExitBench,
                         calibration, cheapest_point, hull_latency_to_reach, measure_exit_latencies, params_digest,
                         subset_curves, table1, time_runtime_per_sample)
from .method import uniform
from .report import sections
from .select import SelectConfig, record_exit_trace, select_adaptation
from .streams import SUBSETS, class_mask, subset_classes, subset_stream


@dataclass(frozen=True)
class Budget:
    """Measurement budget of the early-exit figures per preset (a data table, see :data:`BUDGETS`)."""

    stream_per_class: int = 800   # stream images per subset class for test-time specialisation (paper: 100)
    latency_repeats: int = 200    # interleaved rounds of the batch-1 latency measurement
    latency_samples: int = 1000   # test images timed one by one per setting


BUDGETS = {"full": Budget(), "quick": Budget(300, 50, 200), "tiny": Budget(30, 5, 20)}


@dataclass
class EarlyExitFigures:
    """Settings of the early-exit figures (unknown keys are errors)."""

    subsets: Sequence[str] = ()                   # class subsets to adapt on (default: all known for the dataset)
    adaptations: Sequence[str] = ("1e-4",)        # LR[:LR_SCALE[:PASSES]] each, side by side (paper: 1e-4)
    select_from: Sequence[str] = ()               # candidates cross-validated on the calibration split
    select_folds: int = 5                         # folds of that cross-validation
    stream_seeds: int = 1                         # streams drawn per adaptation (figures: mean and spread)
    adapt_threshold: float = 0.9                  # exit threshold while adapting
    adapt_batch: int = 1                          # stream images per head update (paper: 1)
    clock: str = "cpu"                            # batch-1 clock: cpu (thread CPU time) or wall
    threads: int = 1                              # torch threads while measuring (restored after)
    budget: dict = field(default_factory=dict)    # overrides of the preset's Budget fields

    def __post_init__(self) -> None:
        if self.clock not in CLOCKS:
            raise ConfigError(f"clock must be one of {sorted(CLOCKS)}, got {self.clock!r}")
        number("stream_seeds", self.stream_seeds, lo=1, integer=True)
        number("select_folds", self.select_folds, lo=2, integer=True)
        number("adapt_batch", self.adapt_batch, lo=1, integer=True)
        number("adapt_threshold", self.adapt_threshold)
        number("threads", self.threads, lo=1, integer=True)
        if isinstance(self.subsets, str) or isinstance(self.adaptations, str) or isinstance(self.select_from, str):
            raise ConfigError("subsets, adaptations and select_from are lists of strings")
        unknown = sorted(set(self.budget) - set(Budget.__dataclass_fields__))
        if unknown:
            raise ConfigError(f"unknown budget keys {unknown}; allowed: {sorted(Budget.__dataclass_fields__)}")


@dataclass
class _Context:
    bench: ExitBench
    data: Dataset
    costs: Sequence[PathCost]
    exit_ms: list[float]
    score: Score
    progress: bool


@dataclass
class _Subset:
    name: str
    mask: np.ndarray
    before_fine: dict
    before_search: dict


def make(ev, cfg: EarlyExitFigures, log: Callable[[str], None]) -> list:
    """Table 1, the targets, specialisation and calibration on the pipeline's network and traces."""
    with torch_threads(cfg.threads):
        return sections(_measure(ev, cfg, log))


def _measure(ev, cfg: EarlyExitFigures, log: Callable[[str], None]) -> dict:
    data, net, method = ev.prep.data, ev.prep.paths.net, ev.method
    budget = Budget(**{**BUDGETS.get(ev.prep.preset.name, Budget()).__dict__, **cfg.budget})
    seed, progress = ev.cfg.seed, ev.cfg.progress
    subsets = list(cfg.subsets) or list(SUBSETS.get(ev.cfg.dataset, {}))
    for sub in subsets:  # fail before any measurement on a bad subset name
        subset_classes(data.spec, sub)
    P = net.n_exits
    score = method.score_
    test_tr, costs = ev.test, ev.test.costs
    bench = ExitBench(net, ev.prep.paths, method, test_tr, data.test.x, latency_samples=budget.latency_samples,
                      batch_size=ev.cfg.serving_batch, clock=cfg.clock)
    log(f"[table1] batch-1 latency, {budget.latency_repeats} interleaved rounds ({cfg.clock} clock, "
        f"{torch.get_num_threads()} thread(s))")
    lat = measure_exit_latencies(bench, data.test.x[:1], rounds=budget.latency_repeats)
    exit_ms = [lat[f"runtime_exit{p}"]["median_ms"] for p in range(P)]
    t1 = table1(bench, lat, thresholds=TABLE_THRESHOLDS, progress=log)
    ctx = _Context(bench, data, costs, exit_ms, score, progress)

    rows = {(r["kind"], str(r["setting"])): r for r in t1["rows"]}
    last, at09 = rows[("fixed exit", str(P - 1))], rows[("threshold", "0.9")]
    med = {k: v["median_ms"] for k, v in lat.items()}
    gap = 100 * (last["accuracy"] - at09["accuracy"])
    targets = {
        "t1_accuracy_at_0.9_vs_final": {
            "accuracy_0.9": at09["accuracy"], "accuracy_final_exit": last["accuracy"], "gap_points": gap,
            "latency_0.9_model_ms": at09["lat1_model_ms"], "latency_final_exit_median_ms": last["lat1_median_ms"],
            "latency_reduction_model": 1 - at09["lat1_model_ms"] / last["lat1_median_ms"],
            "latency_0.9_measured_ms": at09["lat1_ms"], "latency_final_exit_measured_ms": last["per_image_ms"],
            "latency_reduction_measured": 1 - at09["lat1_ms"] / last["per_image_ms"],
            "measured_note": "both timed image by image on the same test images (median of 3 runs per image)",
            "latency_reduction_model_vs_baseline": 1 - at09["lat1_model_ms"] / med["baseline"],
            "judged_on": "exit model (per-exit interleaved medians x exit distribution of the whole test split)",
            "met": bool(gap <= 1.0 and at09["lat1_model_ms"] <= 0.7 * last["lat1_median_ms"]),
        },
        "t2_head_overhead": {
            "runtime_baseline_median_ms": med["runtime_baseline"], "runtime_last_exit_median_ms": med[f"runtime_exit{P - 1}"],
            "overhead_runtime_pct": 100 * (med[f"runtime_exit{P - 1}"] / med["runtime_baseline"] - 1),
            "baseline_median_ms": med["baseline"], "module_last_exit_median_ms": med[f"module_exit{P - 1}"],
            "overhead_heads_only_pct": 100 * (med[f"module_exit{P - 1}"] / med["baseline"] - 1),
            "overhead_runtime_vs_plain_baseline_pct": 100 * (med[f"runtime_exit{P - 1}"] / med["baseline"] - 1),
            "overhead_runtime_means_pct": 100 * (lat[f"runtime_exit{P - 1}"]["mean_ms"] / lat["runtime_baseline"]["mean_ms"] - 1),
            "judged_on": "medians of interleaved batch-1 calls. met_heads: the paper's measurement (fixed last exit "
                         "computing every intermediate head vs the baseline network); met_runtime: the runtime forced "
                         "to the last exit (heads + softmax + threshold decisions) vs the baseline network run as a "
                         "single runtime stage (same input checks); reference: the runtime forced to the last "
                         "exit (Runtime.force: earlier heads not run) vs the plain network",
            "paired_heads_only": paired_overhead(lat, f"module_exit{P - 1}", "baseline"),
            "paired_runtime": paired_overhead(lat, f"runtime_exit{P - 1}", "runtime_baseline"),
            "met_heads": bool(med[f"module_exit{P - 1}"] / med["baseline"] - 1 < 0.05),
            "met_runtime": bool(med[f"runtime_exit{P - 1}"] / med["runtime_baseline"] - 1 < 0.05),
            "runtime_reference_median_ms": med["runtime_reference"],
            "overhead_reference_runtime_vs_plain_pct": 100 * (med["runtime_reference"] / med["baseline"] - 1),
            "paired_reference_runtime_vs_plain": paired_overhead(lat, "runtime_reference", "baseline"),
        },
    }
    a, o = targets["t1_accuracy_at_0.9_vs_final"], targets["t2_head_overhead"]
    log(f"[targets] threshold 0.9: {100 * a['accuracy_0.9']:.2f}% vs {100 * a['accuracy_final_exit']:.2f}%, latency "
        f"{100 * a['latency_reduction_model']:.1f}% lower (exit model), {100 * a['latency_reduction_measured']:.1f}% "
        f"(measured); heads {o['overhead_heads_only_pct']:+.2f}%, runtime forced to the last exit vs plain "
        f"{o['overhead_reference_runtime_vs_plain_pct']:+.2f}%")

    adapt_defaults = dict(batch_size=cfg.adapt_batch, score=method.score, threshold=cfg.adapt_threshold)
    adaptations = [parse_adaptation(a, **adapt_defaults) for a in cfg.adaptations]  # fail early on a bad spec
    candidates = [parse_adaptation(a, **adapt_defaults) for a in cfg.select_from]
    tts, selections = [], {}
    for sub in subsets:
        classes = subset_classes(data.spec, sub)
        mask = class_mask(test_tr.labels, classes)
        before = subset_curves(test_tr, score, mask, exit_ms, CURVE_THRESHOLDS)
        before_fine = subset_curves(test_tr, score, mask, exit_ms, FINE_THRESHOLDS)
        before_search = subset_curves(test_tr, score, mask, exit_ms, SEARCH_THRESHOLDS)
        sub_adaptations, chosen = list(adaptations), None
        if candidates:
            log(f"[select] {sub}: cross-validating {len(candidates)} settings on the calibration split "
                f"({cfg.select_folds} folds)")
            selections[sub] = select_adaptation(net, data.calib, classes, candidates, costs=costs, exit_ms=exit_ms,
                                                score=score, config=SelectConfig(folds=cfg.select_folds, seed=seed),
                                                progress=progress, log=log)
            if selections[sub]["chosen_config"] is not None:
                chosen = SpecializeConfig(**selections[sub]["chosen_config"])
                log(f"[select] {sub}: chose {chosen.label}")
                if chosen not in sub_adaptations:
                    sub_adaptations.append(chosen)
            else:
                log(f"[select] {sub}: no candidate kept the other classes within the bound; nothing chosen")
        for sc in sub_adaptations:
            runs = []
            for k in range(cfg.stream_seeds):
                stream = subset_stream(data.calib, classes, per_class=budget.stream_per_class, seed=seed + k)
                log(f"[adapt] {sub} {classes}, {sc.label}, stream {k + 1}/{cfg.stream_seeds}: {len(stream)} images "
                    f"from the calibration split")
                runs.append(_specialise(ctx, sc, stream, _Subset(sub, mask, before_fine, before_search),
                                        measure=(k == 0)))
            first = runs[0]
            reds = np.array([np.nan if r["target"]["latency_reduction"] is None else r["target"]["latency_reduction"]
                             for r in runs])
            others = np.array([r["target"]["other_accuracy_change_points"] for r in runs])
            target = dict(first["target"])
            target.update({
                "streams": cfg.stream_seeds, "latency_reduction_per_stream": reds.tolist(),
                "other_accuracy_change_points_per_stream": others.tolist(),
                "latency_reduction_mean": float(np.mean(reds)), "latency_reduction_std": float(np.std(reds)),
                "other_accuracy_change_points_mean": float(np.mean(others)),
                "met": bool(np.all(np.isfinite(reds)) and np.mean(reds) >= 0.25 and abs(np.mean(others)) <= 0.5),
                "met_judged_on": "mean over the streams of the hull-interpolated latency reduction (>= 25%) and of the "
                                 "other-class accuracy change at the highest threshold (within 0.5 points)",
            })
            entry = {"subset": sub, "selected": sc == chosen, "classes": classes,
                     "class_names": [data.spec.class_names[c] for c in classes],
                     "stream_images": first["stream_images"], "config": sc.to_dict(), "label": sc.label, "slug": sc.slug,
                     "adapt_log": first["adapt_log"], "ece": first["ece"],
                     "update_flops_worst_case": first["update_flops_worst_case"], "checks": first["checks"],
                     "before": before, "after": first["after"], "target": target, "streams": [r["target"] for r in runs]}
            log(f"[adapt] {sub} {sc.label}: reduction per stream {np.round(reds, 3).tolist()}, other classes "
                f"{np.round(others, 2).tolist()} points, met {target['met']}")
            tts.append(entry)
    calib_info = calibration(test_tr, score)
    return {"exit_names": list(net.exit_names), "clock": cfg.clock, "threads": torch.get_num_threads(),
            "budget": budget.__dict__, "latency_batch1": lat, "table1": t1, "targets": targets, "specialisation": tts,
            "selection": selections, "calibration": calib_info, "calibrated_knob": list(method.knob_),
            "model": {k: v for k, v in ev.prep.model_meta[ev.prep.preset.exit_model].items() if k != "versions"}}


def _specialise(ctx: _Context, sc: SpecializeConfig, stream, sub: _Subset, *, measure: bool) -> dict:
    """Adapt on one stream, measure the test split, then put every head back. Returns the stream's figures."""
    net, test_tr, data, costs, exit_ms, score = ctx.bench.net, ctx.bench.test, ctx.data, ctx.costs, ctx.exit_ms, ctx.score
    mask, before_fine, before_search = sub.mask, sub.before_fine, sub.before_search
    P = net.n_exits
    backbone_digest = params_digest(net.segments)
    final_digest = params_digest(net.heads[P - 1])
    heads_digest = [params_digest(h) for h in net.heads]
    spec = TestTimeSpecializer(net, sc)
    snap = spec.snapshot()
    # the measured stream runs image by image as deployed; the others compute backbone features ahead (same result
    # up to float rounding, see TestTimeSpecializer.adapt)
    spec.adapt(stream.x, progress=ctx.progress, prefetch=1 if measure else 256)
    after_tr = record_exit_trace(net, data.test, costs)
    after = subset_curves(after_tr, score, mask, exit_ms, CURVE_THRESHOLDS)
    after_fine = subset_curves(after_tr, score, mask, exit_ms, FINE_THRESHOLDS)
    after_search = subset_curves(after_tr, score, mask, exit_ms, SEARCH_THRESHOLDS)
    ece = {"subset_before": [c["ece"] for c in calibration(test_tr, score, mask=mask)],
           "subset_after": [c["ece"] for c in calibration(after_tr, score, mask=mask)],
           "other_before": [c["ece"] for c in calibration(test_tr, score, mask=~mask)],
           "other_after": [c["ece"] for c in calibration(after_tr, score, mask=~mask)]}
    hi = FINE_THRESHOLDS[-1]
    target_acc = before_fine["subset"]["accuracy"][-1]  # the subset accuracy at the highest threshold
    lat_before_hi = before_fine["subset"]["latency_ms"][-1]
    # headline: where each curve's upper hull reaches the target (thresholds searched up to 0.995)
    lat_before = hull_latency_to_reach(before_search["subset"], target_acc)
    lat_after = hull_latency_to_reach(after_search["subset"], target_acc)
    # the single cheapest grid threshold reaching it (0.50-0.95), and the measured check at those thresholds
    grid_before, th_before = cheapest_point(before_fine["subset"], target_acc)
    grid_after, th_after = cheapest_point(after_fine["subset"], target_acc)
    meas_before = meas_after = None
    n_chk = min(ctx.bench.latency_samples, int(mask.sum()))
    if measure:
        x_chk = data.test.x[torch.from_numpy(np.flatnonzero(mask)[:n_chk])]
        clock = CLOCKS[ctx.bench.clock]
        if th_after is not None:
            meas_after = float(time_runtime_per_sample(ctx.bench.runtime(uniform(th_after, P)), x_chk, repeats=3,
                                                       clock=clock).mean() * 1e3)
        adapted_state = spec.snapshot()
        spec.restore(snap)
        meas_before = float(time_runtime_per_sample(ctx.bench.runtime(uniform(th_before, P)), x_chk, repeats=3,
                                                    clock=clock).mean() * 1e3)
        spec.restore(adapted_state)
    checks = {"backbone_bitwise_unchanged": params_digest(net.segments) == backbone_digest,
              "final_head_bitwise_unchanged": params_digest(net.heads[P - 1]) == final_digest,
              "final_exit_logits_unchanged": bool(np.array_equal(after_tr.logits[P - 1], test_tr.logits[P - 1]))}
    upd_flops = spec.update_flops()
    summary = spec.log_.summary()
    spec.restore(snap)
    checks["heads_restored_after"] = [params_digest(h) for h in net.heads] == heads_digest
    other_before = before_fine["other"]["accuracy"][-1]
    other_after = after_fine["other"]["accuracy"][-1]
    red = None if lat_after is None or lat_before is None else 1 - lat_after / lat_before
    return {
        "stream_images": len(stream), "adapt_log": summary, "ece": ece, "update_flops_worst_case": upd_flops, "checks": checks,
        "after": after,
        "target": {
            "highest_threshold": hi, "pre_adaptation_subset_accuracy": target_acc,
            "latency_at_highest_threshold_before_ms": lat_before_hi,
            "latency_at_highest_threshold_after_ms": after_fine["subset"]["latency_ms"][-1],
            "latency_before_ms": lat_before, "latency_after_ms": lat_after, "latency_reduction": red,
            "grid_latency_before_ms": grid_before, "threshold_before": th_before,
            "grid_latency_after_ms": grid_after, "threshold_after": th_after,
            "grid_latency_reduction": None if grid_after is None else 1 - grid_after / grid_before,
            "latency_reduction_vs_highest_threshold": None if lat_after is None else 1 - lat_after / lat_before_hi,
            "measured_batch1_before_ms": meas_before, "measured_batch1_after_ms": meas_after,
            "measured_reduction": None if meas_after is None or meas_before is None else 1 - meas_after / meas_before,
            "measured_images": n_chk if measure else 0,
            "other_accuracy_before": other_before, "other_accuracy_after": other_after,
            "other_accuracy_change_points": 100 * (other_after - other_before),
        },
    }


FIGURES.register("early-exit", Figures(EarlyExitFigures, make))
