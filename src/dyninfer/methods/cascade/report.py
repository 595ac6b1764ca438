"""Write the cascade experiment's report folder: results.json, report.md and PNG plots."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.ticker import FormatStrFormatter

from ...io import atomic_dir, write_json
from ...report.plots import pyplot, save
from ...report.tables import markdown_table
from .experiment import predicted_time_per_image
from .simulate import oracle, sweep

COLORS = {"energy": "C0", "energy+T": "C9", "max_softmax": "C1", "margin": "C2", "entropy": "C3", "random": "C7",
          "oracle": "k"}


def _pct(x: float) -> str:
    return f"{100 * x:.2f}"


def write_report(res: dict, out: str | Path) -> Path:
    """Write every figure of ``res`` (from :func:`run_experiment`) into ``out``, replacing it whole."""
    with atomic_dir(out) as tmp:
        write_json(tmp / "results.json", {k: v for k, v in res.items() if not k.startswith("_")})
        _plots(res, tmp)
        (tmp / "report.md").write_text(_markdown(res))
    return Path(out)


def _markdown(res: dict) -> str:
    t, best, rt = res["teacher"], res["best"], res["runtime"]
    chain = " > ".join(best["chain"])
    e_src = rt["energy"]["cascade"]["source"]
    lines = [f"# Cascade report — {res['data']['dataset']}, preset `{res['preset']}`", "",
             f"Data: {res['data']}. Thresholds and routers are chosen on the calibration split; every figure below is "
             f"on the test split ({res['data']['test']} images). Versions: {res['versions']}.", "",
             "## Table 1 — student, teacher and cascade", ""]
    rows = []
    for s in res["static"]:
        rows.append([s["model"], _pct(s["test_accuracy"]), f"{s['flops'] / 1e6:.2f}", f"{s['params'] / 1e3:.1f}",
                     f"{s['batch1_ms']:.3f}", f"{s['throughput']:.0f}", f"{s['energy_j_per_image'] * 1e3:.3f}",
                     f"{s['co2_g_per_10k_images']:.4f}"])
    rows.append([f"**cascade** {chain} ({best['router']})", _pct(best["test_accuracy"]), f"{best['test_flops'] / 1e6:.2f}",
                 "—", f"{rt['batch1_ms_per_image']['cascade']:.3f}", f"{rt['throughput']['cascade']:.0f}",
                 f"{rt['energy']['cascade']['joules_per_image'] * 1e3:.3f}",
                 f"{rt['energy']['cascade']['co2_g_per_10k_images']:.4f}"])
    rows.append([f"teacher {t['name']} in the runtime", _pct(t["test_accuracy"]), f"{t['flops'] / 1e6:.2f}", "—",
                 f"{rt['batch1_ms_per_image']['teacher']:.3f}", f"{rt['throughput']['teacher']:.0f}",
                 f"{rt['energy']['teacher']['joules_per_image'] * 1e3:.3f}",
                 f"{rt['energy']['teacher']['co2_g_per_10k_images']:.4f}"])
    lines.append(markdown_table(["model", "accuracy %", "MFLOPs/img", "k params", "latency b=1 (ms/img)",
                                 f"throughput b={rt['serving_batch']} (img/s)", "energy (mJ/img)*", "CO2 (g/10k img)*"],
                                rows))
    lines += [f"\\* energy: {e_src}; CO2 at {res['config']['grid_g_per_kwh']:g} gCO2/kWh. Static rows: measured "
              f"per model; the last two rows: measured through the runtime, side by side.", "",
              "## Headline", "",
              f"- Best cascade (chosen on calibration): **{chain}** routed by **{best['router']}** "
              f"(score {best['score']}, thresholds {['%.4g' % v for v in best['thresholds']]}).",
              f"- Test accuracy {_pct(best['test_accuracy'])}% vs teacher {_pct(t['test_accuracy'])}% "
              f"(difference {100 * (best['test_accuracy'] - t['test_accuracy']):+.2f} points; target: no more than "
              f"{100 * res['config']['tolerance']:.1f} below).",
              f"- FLOPs: {best['test_flops'] / 1e6:.2f} M vs {t['flops'] / 1e6:.2f} M — **{best['flops_saving']:.2f}x fewer**. "
              f"Share answered per stage: {[f'{100 * v:.1f}%' for v in best['test_share']]}.",
              f"- Measured throughput at batch {rt['serving_batch']}: {rt['throughput']['cascade']:.0f} vs "
              f"{rt['throughput']['teacher']:.0f} img/s — **{rt['throughput_ratio']:.2f}x** "
              f"(median of {rt['rounds']} interleaved rounds over {rt['timed_samples']} images).",
              f"- Batch 1: {rt['batch1_ms_per_image']['cascade']:.3f} vs {rt['batch1_ms_per_image']['teacher']:.3f} ms/img "
              f"({rt['batch1_speedup']:.2f}x).",
              f"- Measured cascade time / time predicted from the trace: **{rt['measured_over_predicted']['cascade']:.3f}** "
              f"(teacher alone: {rt['measured_over_predicted']['teacher']:.3f}).",
              f"- Oracle (cheapest correct stage) on this chain: {best['oracle_flops'] / 1e6:.2f} MFLOPs at "
              f"{_pct(best['oracle_accuracy'])}%; the cascade captures **{100 * best['oracle_share_captured']:.1f}%** "
              f"of the oracle's saving, (teacher − cascade) / (teacher − oracle).",
              f"- Runtime vs trace simulation on all {rt['agreement_with_trace']['samples']} test images: predictions agree "
              f"{100 * rt['agreement_with_trace']['predictions']:.2f}%, exits agree {100 * rt['agreement_with_trace']['exits']:.2f}%.",
              f"- McNemar, cascade vs teacher: cascade-only correct {res['mcnemar_cascade_vs_teacher']['a_only']}, "
              f"teacher-only correct {res['mcnemar_cascade_vs_teacher']['b_only']}, p = "
              f"{res['mcnemar_cascade_vs_teacher']['pvalue']:.3g} ({res['mcnemar_cascade_vs_teacher']['method']}); "
              + ("the difference is not significant at 0.05." if res["mcnemar_cascade_vs_teacher"]["pvalue"] > 0.05
                 else "the two differ significantly at 0.05."),
              f"- A full sweep of the energy router's curve on {res['data']['test']} test samples took "
              f"{res['sweep_seconds'] * 1e3:.1f} ms.", ""]
    lines += ["## Routers on the same trace", "",
              f"Chain {chain}. Each router's thresholds are the cheapest whose accuracy loss against the teacher stays "
              f"within {100 * res['config']['tolerance']:.1f} points on the calibration split with "
              f"{100 * res['candidate_confidence']:.2f}% one-sided confidence (paired bound; "
              f"{100 * res['config']['confidence']:.0f}% family-wise over the {res['candidates']} candidates the best "
              f"cascade is picked from, Bonferroni); 'test-optimal' is the cheapest point of the test curve "
              f"itself that reaches the teacher's test accuracy minus the tolerance (threshold-free: it measures how well "
              f"the score ranks samples). AUROC: how well the first stage's score separates its correct from its wrong answers.", ""]
    rows = []
    for f in res["fits"]:
        if f["chain"] != best["chain"]:
            continue
        rows.append([f["router"], f["score"], _pct(f["test_accuracy"]), "yes" if f["meets_target_test"] else "no",
                     f"{f['test_flops'] / 1e6:.2f}", f"{f['flops_saving']:.2f}x",
                     f"{f['test_optimal_flops'] / 1e6:.2f}", f"{f['auroc_first_stage']:.4f}",
                     f"{100 * f['oracle_share_captured']:.1f}%"])
    rows.append(["oracle", "—", _pct(best["oracle_accuracy"]), "—", f"{best['oracle_flops'] / 1e6:.2f}",
                 f"{t['flops'] / best['oracle_flops']:.2f}x", "—", "—", "100%"])
    lines.append(markdown_table(["router", "score", "test acc %", "meets target", "MFLOPs/img", "fewer FLOPs",
                                 "test-optimal MFLOPs", "AUROC", "oracle saving captured"], rows))
    w = res["router_winner"]
    lines += ["", "**Winner:** at the calibrated thresholds, "
              + (f"**{w['at_calibrated_threshold']}** is the cheapest router that keeps the teacher's accuracy on test"
                 if w["at_calibrated_threshold"] else "no router keeps the teacher's accuracy on test")
              + f"; threshold-free (test-optimal), **{w['threshold_free']}** ranks samples best."
              + (" The paper's claim that energy wins holds here." if w["threshold_free"] in ("energy", "energy+T")
                 else " The paper's claim that energy wins does not hold on this data; see energy_hist.png and "
                      "score_hist.png for the score distributions of kept and forwarded samples."), ""]
    lines += ["## Every chain and router", ""]
    rows = [[" > ".join(f["chain"]), f["router"], _pct(f["calib"]["accuracy"]), _pct(f["test_accuracy"]),
             f"{f['test_flops'] / 1e6:.2f}", f"{f['flops_saving']:.2f}x", "yes" if f["meets_target_test"] else "no"]
            for f in res["fits"]]
    lines.append(markdown_table(["chain", "router", "calib acc %", "test acc %", "MFLOPs/img", "fewer FLOPs",
                                 "meets target (test)"], rows))
    lines += ["", "## Plots", "", "- `accuracy_vs_flops.png`: Pareto frontier of every router on the best chain, "
              "the oracle, the static models.",
              "- `accuracy_vs_latency.png`: the same against time per image at the serving batch, predicted from the "
              "measured stage latencies; crosses: the runtime's measured points.",
              "- `energy_hist.png`: the student's energy score (−free energy) of kept vs forwarded test samples at the "
              "chosen threshold, and of its correct vs wrong answers (paper Fig. 4).",
              "- `score_hist.png`: the same split for every score.", ""]
    return "\n".join(lines)


def _plots(res: dict, folder: Path) -> None:
    plt = pyplot()
    test = res["_test"]
    best = res["_best"]
    chain = best["chain"]
    ctest = test.select(chain)
    batch = res["config"]["serving_batch"]
    fits = [f for f in res["_fits"] if f["chain"] == chain]

    fig_f, ax_f = plt.subplots(figsize=(7, 5))
    fig_l, ax_l = plt.subplots(figsize=(7, 5))
    for f in fits:
        cv = f["_curve"].frontier()
        col = COLORS.get(f["router"], None)
        ax_f.plot(cv.cost / 1e6, 100 * cv.accuracy, "-", color=col, label=f["router"], lw=1.2)
        ax_l.plot(predicted_time_per_image(ctest, cv.extra["reach"], batch) * 1e3, 100 * cv.accuracy, "-", color=col,
                  label=f["router"], lw=1.2)
    if len(chain) == 2:  # the ideal router: forward exactly the student's mistakes first
        ideal = sweep(ctest, None, label="oracle router",
                      scores=ctest.correct[0][None].astype(np.float32) + np.linspace(0, 1e-3, ctest.n, dtype=np.float32)[None])
        fr = ideal.frontier()
        ax_f.plot(fr.cost / 1e6, 100 * fr.accuracy, "--", color="k", label="oracle router", lw=1)
        ax_l.plot(predicted_time_per_image(ctest, fr.extra["reach"], batch) * 1e3, 100 * fr.accuracy, "--", color="k",
                  label="oracle router", lw=1)
    orc = oracle(ctest)
    ax_f.plot(orc.mean_flops / 1e6, 100 * orc.accuracy, "k*", ms=10, label="oracle (cheapest correct stage)")
    for s in res["static"]:
        ax_f.plot(s["flops"] / 1e6, 100 * s["test_accuracy"], "s", color="0.3")
        ax_f.annotate(s["model"], (s["flops"] / 1e6, 100 * s["test_accuracy"]), textcoords="offset points", xytext=(4, -10))
        ax_l.plot(1e3 / s["throughput"], 100 * s["test_accuracy"], "s", color="0.3")
        ax_l.annotate(s["model"], (1e3 / s["throughput"], 100 * s["test_accuracy"]), textcoords="offset points", xytext=(4, -10))
    ax_f.plot(best["test_flops"] / 1e6, 100 * best["test_accuracy"], "o", mfc="none", mec="r", ms=12,
              label=f"chosen: {best['router']}")
    rt = res["runtime"]
    for k, acc in (("cascade", best["test_accuracy"]), ("teacher", res["teacher"]["test_accuracy"])):
        ax_l.plot(1e3 / rt["throughput"][k], 100 * acc, "rx", ms=10, mew=2)
        ax_l.annotate(f"measured {k}", (1e3 / rt["throughput"][k], 100 * acc), textcoords="offset points", xytext=(4, 4))
    lo = min(100 * min(s["test_accuracy"] for s in res["static"]) - 0.5, 100 * best["test_accuracy"] - 2)
    hi = 100 * orc.accuracy + 0.5
    for ax, xl in ((ax_f, "MFLOPs per image"), (ax_l, f"ms per image at batch {batch}")):
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(FormatStrFormatter("%g"))
        ax.xaxis.set_minor_formatter(FormatStrFormatter(""))
        ax.set_ylim(lo, hi)
        ax.set_xlabel(xl)
        ax.set_ylabel("test accuracy (%)")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8, loc="lower right")
        ax.set_title(f"{' > '.join(chain)} on {res['data']['dataset']} (test)")
    save(fig_f, folder / "accuracy_vs_flops.png")
    save(fig_l, folder / "accuracy_vs_latency.png")

    # Fig. 4: energy score of kept vs forwarded, and of correct vs wrong student answers
    energy_fit = next(f for f in fits if f["router"] == "energy")
    c = energy_fit["_cascade"]
    s0 = c.scores_on(test)[0]
    thr = c.thresholds_[0]
    corr = ctest.correct[0]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    bins = np.linspace(np.percentile(s0, 0.5), np.percentile(s0, 99.5), 60)
    axes[0].hist(s0[s0 >= thr], bins=bins, alpha=0.6, label=f"kept by {chain[0]} ({(s0 >= thr).mean():.0%})")
    axes[0].hist(s0[s0 < thr], bins=bins, alpha=0.6, label=f"forwarded ({(s0 < thr).mean():.0%})")
    axes[0].axvline(thr, color="k", ls="--", lw=1, label=f"threshold {thr:.3g}")
    axes[1].hist(s0[corr], bins=bins, alpha=0.6, label=f"{chain[0]} correct")
    axes[1].hist(s0[~corr], bins=bins, alpha=0.6, label=f"{chain[0]} wrong")
    axes[1].axvline(thr, color="k", ls="--", lw=1)
    for ax in axes:
        ax.set_xlabel("energy score  −F(x) = logsumexp(logits)")
        ax.set_ylabel("test images")
        ax.legend(fontsize=8)
    axes[0].set_title("kept vs forwarded")
    axes[1].set_title("correct vs wrong (student)")
    save(fig, folder / "energy_hist.png")

    det = [f for f in fits if f["_cascade"].score_.deterministic]
    fig, axes = plt.subplots(1, len(det), figsize=(3.2 * len(det), 3.2))
    for ax, f in zip(np.atleast_1d(axes), det):
        s = f["_cascade"].scores_on(test)[0]
        b = np.linspace(np.percentile(s, 0.5), np.percentile(s, 99.5), 40)
        ax.hist(s[corr], bins=b, alpha=0.6, density=True, label="correct")
        ax.hist(s[~corr], bins=b, alpha=0.6, density=True, label="wrong")
        ax.axvline(f["thresholds"][0], color="k", ls="--", lw=1)
        ax.set_title(f"{f['router']} (AUROC {f['auroc_first_stage']:.3f})", fontsize=9)
        ax.set_yticks([])
    np.atleast_1d(axes)[0].legend(fontsize=7)
    save(fig, folder / "score_hist.png")
