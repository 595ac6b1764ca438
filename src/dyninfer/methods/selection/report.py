"""The selection figures as report sections: target figures, Table 1 run for real, the lambda sweep,
ablations, routing, overhead and the backbone manager, with their PNG plots."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ...evaluate.frontier import upper_hull
from ...report.plots import pyplot, save
from ...report.writer import Section


def _pct(v: float) -> str:
    return f"{100 * v:.2f}"


def plot_accuracy_latency(res: dict, path: Path) -> None:
    """Accuracy vs mean time per image on the test split: static points and hull, oracle, policies, ablations."""
    plt = pyplot()
    names = res["paths"]
    st = np.array([res["backbones"][n]["time_per_image_s"] for n in names]) * 1e6
    sa = np.array([res["backbones"][n]["test_accuracy"] for n in names]) * 100
    fig, ax = plt.subplots(figsize=(8, 5.5))
    hx, hy = upper_hull(st, sa)
    ax.plot(hx, hy, "k--", lw=1, label="static hull (random mixing)")
    ax.scatter(st, sa, c="k", marker="s", zorder=5, label="static backbones")
    for n, x, y in zip(names, st, sa):
        ax.annotate(n, (x, y), textcoords="offset points", xytext=(5, -12), fontsize=8)
    ox, oy = np.array(res["oracle"]["time_per_image_s"]) * 1e6, np.array(res["oracle"]["accuracy"]) * 100
    ax.plot(ox, oy, ":", c="tab:green", label="oracle router")
    colors = {"policy": "tab:red", "policy without complexity": "tab:orange", "policy on complexity only": "tab:purple",
              "policy (early-block features)": "tab:blue"}
    for v, rows in res["curves"].items():
        t = np.array([r["test"]["time_per_image_s"] for r in rows]) * 1e6
        a = np.array([r["test"]["accuracy"] for r in rows]) * 100
        o = np.argsort(t)
        ax.plot(t[o], a[o], "o-" if v == "policy" else ".-", c=colors.get(v, None), ms=4, lw=1,
                label=f"{v} (lambda sweep)", alpha=1.0 if v == "policy" else 0.6)
    ch = res["chosen"]["policy"]["test"]
    ax.scatter([ch["time_per_image_s"] * 1e6], [ch["accuracy"] * 100], marker="*", s=250, c="tab:red", zorder=6,
               label=f"ABS, lambda={res['chosen']['policy']['lambda']:g} (chosen on calibration)")
    hp = np.array(res["heuristic"]["test_points"])
    hxp, hyp = upper_hull(hp[:, 0] * 1e6, hp[:, 1] * 100)
    ax.plot(hxp, hyp, "-", c="tab:gray", lw=1, label="complexity heuristic alone (frontier)")
    rd = res["random"]["draw"]
    ax.scatter([rd["time_per_image_s"] * 1e6], [rd["accuracy"] * 100], marker="x", c="tab:brown", zorder=6,
               label="random policy (same shares)")
    ax.set_xscale("log")
    ax.set_xlabel("mean time per image (us, batch %d, log scale)" % res["serving_batch"])
    ax.set_ylabel("test accuracy (%)")
    lo = min(sa.min(), min(r["test"]["accuracy"] for rows in res["curves"].values() for r in rows) * 100)
    ax.set_ylim(lo - 0.5, max(oy.max(), sa.max()) + 0.5)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    ax.set_title("adaptive backbone selection vs static backbones (test)")
    save(fig, path)


def plot_routing(res: dict, path: Path) -> None:
    """Share of test images sent to each backbone per complexity-score bin (chosen policy)."""
    plt = pyplot()
    bins = res["routing"]["bins"]
    names = res["paths"]
    share = np.array([b["share"] for b in bins])  # (B, P)
    labels = [f"{b['score_lo']:.2f}-{b['score_hi']:.2f}" for b in bins]
    fig, ax = plt.subplots(figsize=(8, 4.5))
    bottom = np.zeros(len(bins))
    for p, n in enumerate(names):
        ax.bar(range(len(bins)), share[:, p] * 100, bottom=bottom, label=n)
        bottom += share[:, p] * 100
    ax2 = ax.twinx()
    ax2.plot(range(len(bins)), [100 * (1 - b["small_model_accuracy"]) for b in bins], "k.-",
             label=f"{names[0]} error rate")
    ax2.set_ylabel(f"{names[0]} error rate (%)")
    ax.set_xticks(range(len(bins)), labels, rotation=45, fontsize=7)
    ax.set_xlabel("complexity score bin (equal calibration mass)")
    ax.set_ylabel("share routed (%)")
    ax.set_title(f"routing vs complexity (lambda={res['chosen']['policy']['lambda']:g}, test split; "
                 f"Spearman {res['routing']['spearman_score_vs_backbone']:+.2f})")
    h1, l1 = ax.get_legend_handles_labels()
    h2, l2 = ax2.get_legend_handles_labels()
    ax.legend(h1 + h2, l1 + l2, fontsize=7, loc="upper left")
    save(fig, path)


def sections(res: dict) -> list[Section]:
    """The selection figures as one report section with its plots."""
    return [Section("selection", "Adaptive backbone selection (ABS)", markdown(res), res,
                    {"selection_accuracy_latency.png": lambda p: plot_accuracy_latency(res, p),
                     "routing_vs_complexity.png": lambda p: plot_routing(res, p)})]


def markdown(res: dict) -> str:
    """The section's text: target figures, Table 1, lambda sweep, ablations, routing, overhead, manager."""
    f = res["figures"]
    names = res["paths"]
    t1 = res["table1"]
    L = ["Policy and lambda are chosen on the calibration split (lambda: the largest margin above the static hull "
         "on calibration rows held out from policy training); every figure below is on the test split unless "
         "labelled, at cost bias 0 (the trained policy) unless labelled. Times per image come from the path latencies "
         "measured in this run at the serving batch; they also set T_norm in the reward. The adaptive points include "
         "the measured analyser+policy overhead.", "",
         "### Target figures", "",
          "| figure | value | target | met |", "|---|---|---|---|",
          f"| margin above the static hull at the chosen lambda ({f['chosen_lambda']:g}) | {f['test_margin_pts']:+.2f} "
          f"points | > 0 | {'yes' if f['above_static_hull'] else 'no'} |",
          f"| same, with wall times of the real test-set runs (Table 1) | {f['real_run_margin_pts']:+.2f} points | "
          f"reported | - |",
          f"| share of the oracle's gain captured (same time per image) | {f['oracle_share_captured_pct']:.1f}% | "
          f"reported | - |",
          f"| largest test margin over all lambdas (not chosen on test) | {f['max_test_margin_over_lambdas_pts']:+.2f} "
          f"points | reported | - |",
          f"| analyser + policy time / cheapest backbone time per image (batch {res['serving_batch']}) | "
          f"{f['overhead_pct_of_cheapest']:.2f}% | < 5% | {'yes' if f['overhead_target_met'] else 'no'} |"]
    if "switching_overhead_pct" in f:
        L.append(f"| manager switching overhead, budget = half the pool's bytes ({f['half_budget_pool']}) | "
                 f"{f['switching_overhead_pct']:.2f}% | < 10% | {'yes' if f['manager_target_met'] else 'no'} |")
        L.append(f"| peak measured bytes vs budget (same run) | {f['half_budget_peak_bytes']} / "
                 f"{f['half_budget_bytes']} "
                 f"| <= budget | {'yes' if f['half_budget_peak_bytes'] <= f['half_budget_bytes'] else 'no'} |")
    L += ["", f"### Table 1: static backbones and the adaptive system, {t1['n_images']} test images, measured for real",
          "", f"Energy: {t1['energy_source']}. CO2 at {t1['grid_g_per_kwh']:g} gCO2/kWh. Times: median of "
          f"{res['timing_rounds']} interleaved rounds over the whole test set at batch "
          f"{res['serving_batch']} (runtime: analyse + choose + group + run via the manager).", "",
          "| system | accuracy (%) | time/image (ms) | energy (J) | CO2 (g) | shares | runtime = simulation | "
          "trace-predicted time/image (ms) | margin above the measured static hull (pts) |",
          "|---|---|---|---|---|---|---|---|---|"]
    for r in t1["rows"]:
        sh = "/".join(str(v) for v in r.get("share", [])) or "-"
        agree = (f"preds {100 * r['pred_agreement_with_simulation']:.2f}%, paths {100 * r['path_agreement']:.2f}%"
                 if "path_agreement" in r else "-")
        pred = f"{r['predicted_time_per_image_ms']:.4f}" if "predicted_time_per_image_ms" in r else "-"
        marg = f"{100 * r['real_margin']:+.2f}" if "real_margin" in r else "-"
        L.append(f"| {r['system']} | {_pct(r['accuracy'])} | {r['time_per_image_ms']:.4f} | {r['energy_j']:.3f} | "
                 f"{r['co2_g']:.2e} | {sh} | {agree} | {pred} | {marg} |")
    L += ["", "### Backbones", "", "| backbone | MFLOPs | params | bytes | time/image (us, batch) | batch-1 (ms) | "
          "calib acc (%) | test acc (%) |", "|---|---|---|---|---|---|---|---|"]
    for n in names:
        b = res["backbones"][n]
        L.append(f"| {n} | {b['flops'] / 1e6:.2f} | {b['params']} | {b['bytes']} | {b['time_per_image_s'] * 1e6:.2f} | "
                 f"{b['batch1_ms']:.3f} | {_pct(b['calib_accuracy'])} | {_pct(b['test_accuracy'])} |")
    L += ["", "### Lambda sweep (trace simulation)", "",
          "| variant | lambda | held-out calib margin (pts) | test acc (%) | test time/image (us) | "
          "test margin (pts) | "
          "oracle share (%) | shares |", "|---|---|---|---|---|---|---|---|"]
    for v, rows in res["curves"].items():
        for r in rows:
            t = r["test"]
            mark = " **(chosen)**" if r["lambda"] == res["chosen"][v]["lambda"] else ""
            L.append(f"| {v} | {r['lambda']:g}{mark} | {100 * r['calib_heldout']['margin']:+.2f} | "
                     f"{_pct(t['accuracy'])} "
                     f"| {t['time_per_image_s'] * 1e6:.2f} | {100 * t['margin']:+.2f} | "
                     f"{100 * t['oracle_share_captured']:.1f} | {'/'.join(f'{s:.2f}' for s in t['share'])} |")
    h = res["heuristic"]["chosen"]
    rd = res["random"]
    L += ["", "### Ablations (section 4), test split, each chosen on calibration", "",
          "| system | accuracy (%) | time/image (us) | margin above static hull (pts) | oracle share (%) |",
          "|---|---|---|---|---|"]
    for v in res["chosen"]:
        t = res["chosen"][v]["test"]
        L.append(f"| {v} (lambda {res['chosen'][v]['lambda']:g}) | {_pct(t['accuracy'])} | "
                 f"{t['time_per_image_s'] * 1e6:.2f} | {100 * t['margin']:+.2f} | "
                 f"{100 * t['oracle_share_captured']:.1f} |")
    L.append(f"| complexity heuristic alone (cuts {', '.join(f'{c:.3f}' for c in h['cuts'])}) | "
             f"{_pct(h['test']['accuracy'])} | {h['test']['time_per_image_s'] * 1e6:.2f} | "
             f"{100 * h['test']['margin']:+.2f} | {100 * h['test']['oracle_share_captured']:.1f} |")
    L.append(f"| random policy, chosen policy's shares (one draw) | {_pct(rd['draw']['accuracy'])} | "
             f"{rd['draw']['time_per_image_s'] * 1e6:.2f} | {100 * rd['draw']['margin']:+.2f} | "
             f"{100 * rd['draw']['oracle_share_captured']:.1f} |")
    m = res["mcnemar_policy_vs_random"]
    L += ["", f"Best test margin of any heuristic cut (not chosen on test): "
          f"{100 * res['heuristic']['max_test_margin']:+.2f} pts. Random policy's expected accuracy "
          f"{_pct(rd['expected_accuracy'])}% (on the hull's chords by construction). McNemar, chosen policy vs "
          f"random draw: policy-only right {m['a_only']}, random-only right {m['b_only']}, p = {m['pvalue']:.2g}.", "",
          "### Routing vs complexity score (chosen policy, test split)", "",
          "| score bin | images | " + " | ".join(f"share {n} (%)" for n in names) + f" | {names[0]} error (%) |",
          "|---|---|" + "---|" * len(names) + "---|"]
    for b in res["routing"]["bins"]:
        L.append(f"| {b['score_lo']:.3f}-{b['score_hi']:.3f} | {b['n']} | " +
                 " | ".join(f"{100 * s:.1f}" for s in b["share"]) + f" | {100 * (1 - b['small_model_accuracy']):.1f} |")
    ro = res["routing"]
    L += ["", f"Spearman correlation of complexity score with chosen backbone index: "
          f"{ro['spearman_score_vs_backbone']:+.3f} (p = {ro['spearman_pvalue']:.2g}); of score with "
          f"{names[0]} being wrong: {ro['spearman_score_vs_small_model_wrong']:+.3f}. Mean score per chosen backbone: "
          + ", ".join(f"{n} {s:.3f}" for n, s in zip(names, ro["mean_score_per_backbone"])) + ".", "",
          "### Overhead (seconds per image, median of 3 interleaved rounds)", "",
          "| measured | batch " + str(res["serving_batch"]) + " | batch 1 |", "|---|---|---|"]
    ob, o1 = res["overhead"]["serving_batch"], res["overhead"]["batch1"]
    for k in ob:
        if k.endswith("%"):
            L.append(f"| {k} | {ob[k]:.2f}% | {o1[k]:.2f}% |")
        else:
            L.append(f"| {k} | {ob[k] * 1e6:.3f} us | {o1[k] * 1e6:.3f} us |")
    L += ["", f"FLOPs counted by torch (convolutions and matmuls): analyser + policy "
          f"{res['overhead_flops']['analyser + policy']}, cheapest backbone "
          f"{res['overhead_flops']['cheapest backbone']}.",
          "", "### Backbone manager", "", f"Pool bytes: {res['manager']['pool_bytes']} "
          f"(total {res['manager']['pool_total_bytes']})."]
    if res["manager"].get("half_budget_error"):
        L += ["", f"Half the trained pool's bytes is below its largest backbone, so that budget is refused: "
              f"`{res['manager']['half_budget_error']}`"]
    L += ["", "| pool | budget (bytes) | share of pool | images | switching overhead | load s | total s | hits | "
          "misses | evictions | peak measured bytes | within budget | cold-start load s (excluded) |",
          "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for bname, r in res["manager"]["runs"].items():
        L.append(f"| trained pool, budget {bname} | {r['budget_bytes']} | "
                 f"{100 * r['budget_share_of_pool']:.0f}% | {r['images']} | {100 * r['switching_overhead']:.2f}% | "
                 f"{r['load_seconds']:.3f} | {r['total_seconds']:.2f} | {r['hits']} | {r['misses']} | "
                 f"{r['evictions']} | "
                 f"{r['peak_measured_bytes']} | {r['within_budget']} | {r['cold_start_load_seconds']:.3f} |")
    tv = res["manager"].get("torchvision")
    if tv and "error" not in tv:
        for r in tv["runs"]:
            L.append(f"| torchvision pool ({len(tv['pool'])}, weights=None), half budget, complexity-binned stream, "
                     f"batch {r['batch']} | {r['budget_bytes']} | 50% | {r['images']} | "
                     f"{100 * r['switching_overhead']:.2f}% | {r['load_seconds']:.3f} | {r['total_seconds']:.2f} | "
                     f"{r['hits']} | {r['misses']} | {r['evictions']} | {r['peak_measured_bytes']} | "
                     f"{r['within_budget']} | {r['cold_start_load_seconds']:.3f} |")
        L += ["", f"Torchvision pool bytes: {tv['pool_bytes']}; images padded to "
              f"{tv['image_size']}x{tv['image_size']}; "
              f"the first (cold-start) batch of each stream is excluded; the headline figure is the largest batch."]
    L += ["", "Switching overhead = time the manager spent loading backbones / total wall time of the stream "
          "(first warm-up batch excluded). Peak measured bytes = largest sum of parameter and buffer bytes of "
          "resident backbones after any load."]
    return "\n".join(L)
