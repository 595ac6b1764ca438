"""The early-exit figures as report sections: Table 1 in the paper's shape, targets, specialisation,
calibration and exit distribution, with their PNG plots (written by the shared report writer)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ...report.plots import pyplot, save
from ...report.writer import Section


def _pct(v: float | None) -> str:
    return "n/a" if v is None or v != v else f"{100 * v:.1f}%"


def _ms(m: float | None, s: float | None = None) -> str:
    if m is None:
        return "n/a"
    return f"{m:.3f}" if s is None else f"{m:.3f} ± {s:.3f}"


def sections(res: dict) -> list[Section]:
    """The figures of :func:`dyninfer.methods.early_exit.figures.make` as report sections."""
    body = markdown(res)
    head, rest = body.split("\n## Test-time specialisation\n", 1)
    plots = {name: (lambda path, draw=draw: draw(res, path)) for name, draw in _plot_writers(res).items()}
    return [Section("early_exit", "Early exits: Table 1 and targets", head, res,
                    {k: v for k, v in plots.items() if not k.startswith("figure4")}),
            Section("specialisation", "Test-time specialisation", rest, {},
                    {k: v for k, v in plots.items() if k.startswith("figure4")})]


def markdown(res: dict) -> str:
    """The Markdown of the early-exit figures (Table 1 first; specialisation after its own heading)."""
    m = res["model"]
    P = len(res["exit_names"])
    lines = [f"Model `{m['model']}` ({m['training']} training, {m['flops'] / 1e6:.2f} MFLOPs, {m['params']} parameters, "
              f"trained in {m['train_seconds']:.0f} s); exit test accuracies "
              f"{', '.join(f'{a:.4f}' for a in m['exit_test_accuracy'])}. Timed with {res['threads']} torch thread(s).",
              "", "### Table 1 (test split)", "",
              "Batch-1 latency: *measured* — fixed exits and thresholds: mean ± std over the first "
              f"{res['budget']['latency_samples']} test images, each run alone through the runtime "
              "(median of 3 runs per image); baseline: mean ± std over interleaved timed calls on one image. "
              "*Exit model*: every test image charged the median batch-1 latency of its exit from interleaved calls "
              f"(± spread from the inter-quartile range). Clock: {res['clock']} "
              "(cpu = CPU time of the one timing thread). "
              "Batched: the runtime over the whole test split, ms per image.", "",
              "| Model | Setting | Latency batch 1 (ms) | Exit model (ms) | Batched (ms/img) | MFLOPs | Accuracy |",
              "|---|---|---|---|---|---|---|"]
    for r in res["table1"]["rows"]:
        kind = {"fixed exit": "Fixed exit", "threshold": "Threshold", "baseline": "Baseline"}[r["kind"]]
        model_lat = _ms(r.get("lat1_model_ms"), r.get("lat1_model_std_ms"))
        if r["kind"] == "fixed exit":  # per image on the timed test images, as the threshold rows
            r = dict(r, lat1_ms=r["per_image_ms"], lat1_std_ms=r["per_image_std_ms"])
        mf = "" if r.get("mflops") is None else f"{r['mflops']:.2f}"
        lines.append(f"| {kind} | {r['setting']} | {_ms(r['lat1_ms'], r['lat1_std_ms'])} | {model_lat} | "
                     f"{r['batched_ms_per_image']:.4f} | {mf} | {100 * r['accuracy']:.2f}% |")
    mism = {k: [v["pred_mismatch"], v["path_mismatch"]] for k, v in res["table1"]["runtime_matches_trace"].items()}
    lines += ["", f"Trace simulation vs batched runtime (mismatching predictions / exits per threshold): "
              f"{json.dumps(mism)}. The calibrated row is the operating point of the shared guarantee: thresholds "
              f"{[round(v, 4) for v in res['calibrated_knob']]}.", ""]
    t = res["targets"]
    a, o = t["t1_accuracy_at_0.9_vs_final"], t["t2_head_overhead"]
    lines += ["### Targets", "",
              "| Target | Measured | Met |", "|---|---|---|",
              f"| Threshold 0.9 within 1 point of the final exit at >= 30% lower latency | accuracy {100 * a['accuracy_0.9']:.2f}% vs "
              f"{100 * a['accuracy_final_exit']:.2f}% (gap {a['gap_points']:.2f} points); latency (exit model) "
              f"{a['latency_0.9_model_ms']:.3f} ms vs {a['latency_final_exit_median_ms']:.3f} ms ({_pct(a['latency_reduction_model'])} "
              f"lower; {_pct(a['latency_reduction_model_vs_baseline'])} vs baseline); measured per image "
              f"{a['latency_0.9_measured_ms']:.3f} ms vs {a['latency_final_exit_measured_ms']:.3f} ms "
              f"({_pct(a['latency_reduction_measured'])} lower) | {'yes' if a['met'] else 'no'} |",
              f"| Head overhead on samples reaching the last exit < 5% of baseline | medians: fixed last exit computing all "
              f"heads {o['module_last_exit_median_ms']:.3f} ms vs baseline {o['baseline_median_ms']:.3f} ms: "
              f"{o['overhead_heads_only_pct']:+.2f}% (the paper's measurement); runtime at last exit (heads + exit decisions) "
              f"{o['runtime_last_exit_median_ms']:.3f} ms vs baseline as one runtime stage {o['runtime_baseline_median_ms']:.3f} ms: "
              f"{o['overhead_runtime_pct']:+.2f}% (means {o['overhead_runtime_means_pct']:+.2f}%); runtime vs plain baseline "
              f"{o['overhead_runtime_vs_plain_baseline_pct']:+.2f}%{_paired(o)} | heads: {'yes' if o['met_heads'] else 'no'}; "
              f"with runtime decisions: {'yes' if o['met_runtime'] else 'no'} |",
              f"| The runtime forced to the last exit (earlier heads not run) costs at most 3% more than the plain network | "
              f"{o['runtime_reference_median_ms']:.3f} vs {o['baseline_median_ms']:.3f} ms: "
              f"{o['overhead_reference_runtime_vs_plain_pct']:+.2f}%; paired "
              f"{o['paired_reference_runtime_vs_plain']['pct']:+.2f}% [{o['paired_reference_runtime_vs_plain']['ci_low_pct']:+.2f}, "
              f"{o['paired_reference_runtime_vs_plain']['ci_high_pct']:+.2f}] | "
              f"{'yes' if o['overhead_reference_runtime_vs_plain_pct'] <= 3 else 'no'} |"]
    for e in res["specialisation"]:
        tg = e["target"]
        per = ", ".join(_pct(v) if v == v else "not reached" for v in tg.get("latency_reduction_per_stream", []))
        lines.append(
            f"| {e['subset']} ({_label(e)}): latency to reach the pre-adaptation subset accuracy drops >= 25%, "
            f"other classes within 0.5 points at the highest threshold | target: subset accuracy "
            f"{100 * tg['pre_adaptation_subset_accuracy']:.2f}% (before adaptation, threshold {tg['highest_threshold']}, "
            f"{_ms(tg['latency_at_highest_threshold_before_ms'])} ms). Latency where the accuracy-latency hull reaches it: "
            f"{_ms(tg['latency_before_ms'])} ms before, {_ms(tg['latency_after_ms'])} ms after "
            f"({_pct(tg['latency_reduction'])} lower, first stream); over {tg.get('streams', 1)} streams: "
            f"mean {_pct(tg.get('latency_reduction_mean'))} ± {_pct(tg.get('latency_reduction_std'))} ({per}). "
            f"Cheapest single grid threshold: {tg['threshold_before']} -> {tg['threshold_after']} "
            f"({_pct(tg['grid_latency_reduction'])} lower); measured batch 1 on {tg['measured_images']} subset test "
            f"images at those thresholds: {_ms(tg['measured_batch1_before_ms'])} -> {_ms(tg['measured_batch1_after_ms'])} ms "
            f"({_pct(tg['measured_reduction'])} lower). Other classes {100 * tg['other_accuracy_before']:.2f}% -> "
            f"{100 * tg['other_accuracy_after']:.2f}% ({tg['other_accuracy_change_points']:+.2f} points; mean over "
            f"streams {tg.get('other_accuracy_change_points_mean', tg['other_accuracy_change_points']):+.2f}) | "
            f"{'yes' if tg['met'] else 'no'} |")
    lines += ["", "## Test-time specialisation", "",
              "Stream: subset-class images of the calibration split (never used for training or evaluation), in random "
              "order; after each prediction the heads before the answering exit take one SGD step towards its answer "
              "(input-norm: each head's learning rate divided by the running mean squared norm of its classifier input). "
              "Figure 4 latencies use the exit model; tables and plots show the first stream.", "",
              "| Subset | Setting | Stream | Updates | Update ms wall (median / worst-case median) | Update ms CPU "
              "(median / worst case) | Update MFLOPs (worst case) | "
              "Backbone unchanged | Final head unchanged | Heads restored |", "|---|---|---|---|---|---|---|---|---|---|"]
    for e in res["specialisation"]:
        s, c = e["adapt_log"], e["checks"]
        lines.append(f"| {e['subset']} {e['class_names']} | {_label(e)} | {e['stream_images']} | {s['updates']} | "
                     f"{s['update_ms_median']:.3f} / {s['update_ms_worst_case_median']:.3f} | "
                     f"{s.get('update_cpu_ms_median', float('nan')):.3f} / {s.get('update_cpu_ms_worst_case_median', float('nan')):.3f} | "
                     f"{e['update_flops_worst_case'] / 1e6:.4f} | {c['backbone_bitwise_unchanged']} | "
                     f"{c['final_head_bitwise_unchanged']} | {c['heads_restored_after']} |")
    for e in res["specialisation"]:
        lines += ["", f"Figure 4 data, {e['subset']} ({_label(e)}):", "",
                  "| Threshold | Subset acc before | after | Subset ms before | after | Other acc before | after | Other ms before | after |",
                  "|---|---|---|---|---|---|---|---|---|"]
        b, a2 = e["before"], e["after"]
        for i, th in enumerate(b["subset"]["threshold"]):
            lines.append(f"| {th:.2f} | {100 * b['subset']['accuracy'][i]:.2f} | {100 * a2['subset']['accuracy'][i]:.2f} | "
                         f"{b['subset']['latency_ms'][i]:.3f} | {a2['subset']['latency_ms'][i]:.3f} | "
                         f"{100 * b['other']['accuracy'][i]:.2f} | {100 * a2['other']['accuracy'][i]:.2f} | "
                         f"{b['other']['latency_ms'][i]:.3f} | {a2['other']['latency_ms'][i]:.3f} |")
    for sub, sel in (res.get("selection") or {}).items():
        lines += ["", f"### Choosing the setting for {sub}: {sel['folds']}-fold cross-validation on the calibration split",
                  "", f"The test split is not used. Each fold adapts on {min(sel['stream_images_per_fold'])}-"
                  f"{max(sel['stream_images_per_fold'])} subset calibration images and holds out the rest; the "
                  f"{sel['held_out_images']} held-out images are pooled (each judged once, by heads that never saw it) "
                  f"and {sel['other_images']} calibration images of other classes check the rest. Criterion: "
                  f"{sel['criterion']}. Pre-adaptation subset accuracy on the pooled hold-out: "
                  f"{100 * sel['pre_adaptation_subset_accuracy']:.2f}%.", "",
                  "| Candidate | Held-out latency to reach (ms) | Reduction | Other classes (points, mean over folds) | "
                  "Eligible | Chosen |", "|---|---|---|---|---|---|"]
        for r in sel["rows"]:
            lines.append(f"| {r['label']} | {_ms(r['latency_before_ms'])} -> {_ms(r['latency_after_ms'])} | "
                         f"{_pct(r['latency_reduction'])} | {r['other_accuracy_change_points']:+.2f} | "
                         f"{'yes' if r['eligible'] else 'no'} | {'**yes**' if r['label'] == sel['chosen'] else ''} |")
    with_ece = [e for e in res["specialisation"] if "ece" in e]
    if with_ece:
        lines += ["", "### Calibration after adaptation (ECE per exit, test split, first stream)", "",
                  "| Subset | Setting | Subset images before | after | Other classes before | after |", "|---|---|---|---|---|---|"]
        for e in with_ece:
            f = lambda v: " / ".join(f"{x:.3f}" for x in v)  # noqa: E731
            lines.append(f"| {e['subset']} | {_label(e)} | {f(e['ece']['subset_before'])} | {f(e['ece']['subset_after'])} | "
                         f"{f(e['ece']['other_before'])} | {f(e['ece']['other_after'])} |")
    lines += ["", "### Calibration per exit (test split, max softmax)", "", "| Exit | Accuracy | Mean confidence | ECE |",
              "|---|---|---|---|"]
    for c in res["calibration"]:
        lines.append(f"| {c['exit']} | {100 * c['accuracy']:.2f}% | {100 * c['mean_confidence']:.2f}% | {c['ece']:.4f} |")
    lines += ["", "### Exit distribution (share of test images per exit)", "",
              "| Setting | " + " | ".join(res["exit_names"]) + " |", "|---|" + "---|" * P]
    for r in res["table1"]["rows"]:
        if r["kind"] == "threshold":
            lines.append(f"| threshold {r['setting']} | " + " | ".join(f"{100 * v:.1f}%" for v in r["exit_share"]) + " |")
    return "\n".join(lines)


def _paired(o: dict) -> str:
    """Per-round paired overheads with their bootstrap intervals, when the run recorded them."""
    if "paired_heads_only" not in o:
        return ""
    h, r = o["paired_heads_only"], o["paired_runtime"]
    return (f". Paired per round (median ratio, {100 * h['level']:.0f}% bootstrap interval, {h['rounds']} rounds): heads "
            f"{h['pct']:+.2f}% [{h['ci_low_pct']:+.2f}, {h['ci_high_pct']:+.2f}]; runtime {r['pct']:+.2f}% "
            f"[{r['ci_low_pct']:+.2f}, {r['ci_high_pct']:+.2f}]")


def _label(e: dict) -> str:
    label = e.get("label") or f"lr {e['config']['lr']:g}"
    return label + (", chosen by cross-validation" if e.get("selected") else "")


def _plot_writers(res: dict) -> dict:
    """File name -> ``draw(res, path)`` for every plot of the early-exit figures."""
    out = {f"figure4_{e['subset']}_{e.get('slug') or 'lr' + format(e['config']['lr'], 'g')}.png":
           (lambda r, path, e=e: _figure4(e, path)) for e in res["specialisation"]}
    out.update({"exit_distribution.png": _exit_distribution, "reliability.png": _reliability,
                "table1_tradeoff.png": _table1_tradeoff})
    return out


def _figure4(e: dict, path: Path) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for g, colour in (("subset", "tab:green"), ("other", "tab:red")):
        for phase, style in (("before", "-"), ("after", ":")):
            c = e[phase][g]
            ax.plot(c["latency_ms"], 100 * np.asarray(c["accuracy"]), style, color=colour, marker="o", ms=3,
                    label=f"{'subset' if g == 'subset' else 'other classes'}, {phase}")
    ax.set_xlabel("mean latency, batch 1 (ms; exit model)")
    ax.set_ylabel("accuracy (%)")
    ax.set_title(f"{e['subset']} {e['class_names']}, {_label(e)}\nthresholds 0.50-0.95", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    save(fig, path)


def _exit_distribution(res: dict, path: Path) -> None:
    plt = pyplot()
    rows = [r for r in res["table1"]["rows"] if r["kind"] == "threshold"]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    bottom = np.zeros(len(rows))
    for p, en in enumerate(res["exit_names"]):
        share = np.array([r["exit_share"][p] for r in rows])
        ax.bar([str(r["setting"]) for r in rows], 100 * share, bottom=100 * bottom, label=en)
        bottom += share
    ax.set_xlabel("threshold")
    ax.set_ylabel("share of test images (%)")
    ax.legend(fontsize=8)
    ax.set_title("exit distribution")
    save(fig, path)


def _reliability(res: dict, path: Path) -> None:
    plt = pyplot()
    cal = res["calibration"]
    fig, axes = plt.subplots(1, len(cal), figsize=(3 * len(cal), 3.2), squeeze=False)
    for ax, c in zip(axes[0], cal):
        b = c["bins"]
        edges = np.asarray(b["edges"])
        acc = np.asarray(b["accuracy"], float)
        ax.bar(edges[:-1], np.nan_to_num(acc), width=np.diff(edges), align="edge", alpha=0.7, edgecolor="k", lw=0.3)
        ax.plot([0, 1], [0, 1], "k--", lw=0.8)
        ax.set_title(f"{c['exit']}: ECE {c['ece']:.3f}", fontsize=9)
        ax.set_xlabel("confidence")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
    axes[0][0].set_ylabel("accuracy")
    save(fig, path)


def _table1_tradeoff(res: dict, path: Path) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for kind, mk in (("fixed exit", "s"), ("threshold", "o"), ("baseline", "*")):
        rr = [r for r in res["table1"]["rows"] if r["kind"] == kind]
        ax.errorbar([r["lat1_ms"] for r in rr], [100 * r["accuracy"] for r in rr], xerr=[r["lat1_std_ms"] for r in rr],
                    fmt=mk, label=kind, capsize=2)
        for r in rr:
            ax.annotate(str(r["setting"]), (r["lat1_ms"], 100 * r["accuracy"]), fontsize=7)
    ax.set_xlabel("latency, batch 1 (ms, measured)")
    ax.set_ylabel("test accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    save(fig, path)
