"""The early-exit report folder: ``results.json``, ``REPORT.md`` (Table 1 in the paper's shape, targets,
specialisation, calibration, exit distribution) and PNG plots, written atomically as one folder."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from ...io import _json_default, atomic_dir


def _pct(v: float | None) -> str:
    return "n/a" if v is None or v != v else f"{100 * v:.1f}%"


def _ms(m: float | None, s: float | None = None) -> str:
    if m is None:
        return "n/a"
    return f"{m:.3f}" if s is None else f"{m:.3f} ± {s:.3f}"


def markdown(res: dict, command: str = "") -> str:
    """The Markdown report of a benchmark result dict."""
    cfg = res["config"]
    m = res["model"]
    P = len(res["exit_names"])
    lines = [f"# Early exits with test-time specialisation — {cfg['dataset']}, preset {cfg['preset']}", ""]
    if command:
        lines += ["Command:", "", f"    {command}", ""]
    lines += [f"Model `{m['model']}` ({m['training']} training, {m['flops'] / 1e6:.2f} MFLOPs, {m['params']} parameters, "
              f"trained in {m['train_seconds']:.0f} s); exit test accuracies "
              f"{', '.join(f'{a:.4f}' for a in m['exit_test_accuracy'])}. Seed {cfg['seed']}. "
              f"Machine: {res['machine_start']['cpu_count']} CPUs, {res['machine_start']['torch_threads']} torch thread(s) "
              f"while timing, load average at start {res['machine_start']['load_average_1_5_15'][0]:.1f} "
              f"(other jobs shared the CPU). Total run {res['seconds']:.0f} s.", "",
              "## Table 1 (test split)", "",
              "Batch-1 latency: *measured* — fixed exits and thresholds: mean ± std over the first "
              f"{res['config']['preset_settings']['latency_samples']} test images, each run alone through the runtime "
              "(median of 3 runs per image); baseline: mean ± std over interleaved timed calls on one image. "
              "*Exit model*: every test image charged the median batch-1 latency of its exit from interleaved calls "
              f"(± spread from the inter-quartile range). Clock: {res['config']['clock']} "
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
    lines += ["", f"Trace simulation vs batched runtime (mismatching predictions / exits per threshold): "
              f"{json.dumps(res['table1']['runtime_matches_trace'])}. Baseline predictions equal the last exit's: "
              f"{res['baseline_equals_last_exit']}. Calibrated threshold (cheapest uniform threshold within 1 point of "
              f"the last exit on the calibration split): {json.dumps(res['calibrated_policy'])}.", ""]
    t = res["targets"]
    a, o = t["t1_accuracy_at_0.9_vs_final"], t["t2_head_overhead"]
    lines += ["## Targets", "",
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
              f"with runtime decisions: {'yes' if o['met_runtime'] else 'no'} |"]
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
        lines += ["", f"## Choosing the setting for {sub}: {sel['folds']}-fold cross-validation on the calibration split",
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
        lines += ["", "## Calibration after adaptation (ECE per exit, test split, first stream)", "",
                  "| Subset | Setting | Subset images before | after | Other classes before | after |", "|---|---|---|---|---|---|"]
        for e in with_ece:
            f = lambda v: " / ".join(f"{x:.3f}" for x in v)  # noqa: E731
            lines.append(f"| {e['subset']} | {_label(e)} | {f(e['ece']['subset_before'])} | {f(e['ece']['subset_after'])} | "
                         f"{f(e['ece']['other_before'])} | {f(e['ece']['other_after'])} |")
    lines += ["", "## Calibration per exit (test split, max softmax)", "", "| Exit | Accuracy | Mean confidence | ECE |",
              "|---|---|---|---|"]
    for c in res["calibration"]:
        lines.append(f"| {c['exit']} | {100 * c['accuracy']:.2f}% | {100 * c['mean_confidence']:.2f}% | {c['ece']:.4f} |")
    lines += ["", "## Exit distribution (share of test images per exit)", "",
              "| Setting | " + " | ".join(res["exit_names"]) + " |", "|---|" + "---|" * P]
    for r in res["table1"]["rows"]:
        if r["kind"] == "threshold":
            lines.append(f"| threshold {r['setting']} | " + " | ".join(f"{100 * v:.1f}%" for v in r["exit_share"]) + " |")
    lines += ["", "Plots: `figure4_<subset>_<setting>.png`, `exit_distribution.png`, `reliability.png`, `table1_tradeoff.png`.", ""]
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


def plots(res: dict, folder: Path) -> list[str]:
    """Write the PNG plots into ``folder``; returns their file names."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = []
    for e in res["specialisation"]:
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
        name = f"figure4_{e['subset']}_{e.get('slug') or 'lr' + format(e['config']['lr'], 'g')}.png"
        fig.tight_layout()
        fig.savefig(folder / name, dpi=120)
        plt.close(fig)
        names.append(name)
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
    fig.tight_layout()
    fig.savefig(folder / "exit_distribution.png", dpi=120)
    plt.close(fig)
    names.append("exit_distribution.png")
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
    fig.tight_layout()
    fig.savefig(folder / "reliability.png", dpi=120)
    plt.close(fig)
    names.append("reliability.png")
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
    fig.tight_layout()
    fig.savefig(folder / "table1_tradeoff.png", dpi=120)
    plt.close(fig)
    names.append("table1_tradeoff.png")
    return names


def write_report(res: dict, folder: str | os.PathLike, command: str = "") -> Path:
    """Write ``results.json``, ``REPORT.md`` and the plots to ``folder`` (replaced whole, atomically)."""
    folder = Path(folder)
    with atomic_dir(folder) as tmp:
        res = dict(res, command=command)
        res["plots"] = plots(res, tmp)
        (tmp / "results.json").write_text(json.dumps(res, indent=1, default=_json_default) + "\n")
        (tmp / "REPORT.md").write_text(markdown(res, command))
    return folder
