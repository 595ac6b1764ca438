"""The cascade's own figures (EBJR): routers compared on the same trace, every chain and router, the
energy histograms of the paper's Fig. 4, and the speed of a full sweep."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
from sklearn.metrics import roc_auc_score

from ...evaluate.simulate import oracle, simulate_sequential, sweep_sequential
from ...report.plots import pyplot, save
from ...report.tables import markdown_table
from ...report.writer import Section
from ...scores import make_score
from ..base import FIGURES, Figures
from ...errors import ConfigError
from .method import ROUTERS, Cascade

COLORS = {"energy": "C0", "energy+T": "C9", "max_softmax": "C1", "margin": "C2", "entropy": "C3", "random": "C7"}


@dataclass
class CascadeFigures:
    """Settings of the cascade's own figures."""

    routers: tuple[str, ...] = ("energy", "energy+T", "max_softmax", "margin", "entropy", "random")  # compared

    def __post_init__(self) -> None:
        if isinstance(self.routers, str) or not self.routers or any(r not in ROUTERS for r in self.routers):
            raise ConfigError(f"routers must be a non-empty list from {list(ROUTERS)}, got {self.routers!r}")


def _auroc(score: np.ndarray, correct: np.ndarray) -> float:
    if correct.all() or not correct.any():
        return float("nan")
    return float(roc_auc_score(correct, score))


def _correlation(score: np.ndarray, correct: np.ndarray) -> float:
    """Point-biserial correlation of a score with the student's correctness (supplementary 5.4)."""
    from scipy.stats import pointbiserialr

    finite = np.isfinite(score)
    if correct[finite].all() or not correct[finite].any() or np.ptp(score[finite]) == 0:
        return float("nan")
    return float(pointbiserialr(correct[finite], score[finite]).statistic)


def make(ev, cfg: CascadeFigures, log: Callable[[str], None]) -> list[Section]:
    m: Cascade = ev.method
    calib, test = ev.calib, ev.test
    chain = m.stages_
    ctest = test.select(chain)
    ref_acc = ctest.accuracy(len(chain) - 1)
    ref_flops = ev.results["operating_point"]["reference_flops"]
    orc = oracle(ctest)
    rows = []
    fitted = {}
    for router in cfg.routers:  # each router alone on the chosen chain, same settings otherwise
        params = {**m.get_params(), "stages": chain, "scores": (router,)}
        c = Cascade(**params).fit(calib)
        out, curve = c.simulate(test), c.curve(test)
        j = curve.cheapest_at(ref_acc - m.tolerance)
        s0 = c.scores_on(test)[0]
        fitted[router] = (c, curve)
        rows.append({"router": router, "score": c.score_.label, "thresholds": list(c.knob_),
                     "certified": c.operating_point_.certified, "test_accuracy": out.accuracy,
                     "test_flops": out.mean_flops, "flops_saving": ref_flops / out.mean_flops,
                     "meets_tolerance_test": out.accuracy >= ref_acc - m.tolerance - 1e-12,
                     "auroc_first_stage": _auroc(s0, ctest.correct[0]) if c.score_.deterministic else float("nan"),
                     "correlation_first_stage": _correlation(s0, ctest.correct[0]) if c.score_.deterministic
                     else float("nan"),
                     "test_optimal_flops": float(curve.cost[j]) if j is not None else float("nan"),
                     "oracle_share_captured": (ref_flops - out.mean_flops) / (ref_flops - orc.mean_flops)})
        log(f"[routers] {router:12s} test acc {out.accuracy:.4f}, {out.mean_flops / 1e6:.2f} MFLOPs")
    eligible = [r for r in rows if r["meets_tolerance_test"] and r["router"] != "random"]
    winner = min(eligible, key=lambda r: r["test_flops"])["router"] if eligible else None
    winner_free = min(rows, key=lambda r: np.nan_to_num(r["test_optimal_flops"], nan=np.inf))["router"]
    configs = []
    for row in m.configurations_:  # every configuration the fit chose among, now on test too
        score = make_score(row["score_name"], **row["score_params"])
        out = simulate_sequential(test.select(row["chain"]), score, row["thresholds"])
        configs.append({**row, "test_accuracy": out.accuracy, "test_flops": out.mean_flops})
    t0 = time.perf_counter()
    sweep_sequential(ctest, m.score_)
    sweep_ms = (time.perf_counter() - t0) * 1e3
    res = {"chain": chain, "routers": rows, "winner_at_calibrated_threshold": winner, "winner_threshold_free": winner_free,
           "configurations": configs, "sweep_ms": sweep_ms, "oracle_flops": orc.mean_flops,
           "oracle_accuracy": orc.accuracy}
    md = [f"Chain {' > '.join(chain)} (chosen on calibration). Each router alone, with the same tolerance, confidence "
          f"and bound; 'test-optimal' is the cheapest point of the router's test curve reaching the reference's test "
          f"accuracy minus the tolerance (threshold-free: it measures how well the score ranks samples). AUROC: how "
          f"well the first stage's score separates its correct from its wrong answers; r: its point-biserial "
          f"correlation with the first stage's correctness.", "",
          markdown_table(["router", "score", "certified", "test acc %", "within tolerance", "MFLOPs/img", "fewer FLOPs",
                          "test-optimal MFLOPs", "AUROC", "r", "oracle saving captured"],
                         [[r["router"], r["score"], "yes" if r["certified"] else "no", f"{100 * r['test_accuracy']:.2f}",
                           "yes" if r["meets_tolerance_test"] else "no", f"{r['test_flops'] / 1e6:.2f}",
                           f"{r['flops_saving']:.2f}x", f"{r['test_optimal_flops'] / 1e6:.2f}",
                           f"{r['auroc_first_stage']:.4f}", f"{r['correlation_first_stage']:.3f}",
                           f"{100 * r['oracle_share_captured']:.1f}%"] for r in rows]
                         + [["oracle", "—", "—", f"{100 * orc.accuracy:.2f}", "—", f"{orc.mean_flops / 1e6:.2f}",
                             f"{ref_flops / orc.mean_flops:.2f}x", "—", "—", "—", "100%"]]),
          "", "**Winner:** at the calibrated thresholds, "
          + (f"**{winner}** is the cheapest router within the tolerance on test" if winner else
             "no router stays within the tolerance on test")
          + f"; threshold-free, **{winner_free}** ranks samples best"
          + (" — the paper's claim that energy wins holds here." if winner_free in ("energy", "energy+T") else
             " — the paper's claim that energy wins does not hold on this data (see energy_hist.png, score_hist.png)."),
          "", f"A full sweep of the chosen score on the {ctest.n} test samples took {sweep_ms:.1f} ms.", "",
          "Every configuration the fit chose among (its thresholds certified on calibration at delta / "
          f"{len(configs)}):", "",
          markdown_table(["chain", "router", "certified", "calib acc %", "calib MFLOPs", "test acc %", "test MFLOPs"],
                         [[" > ".join(r["chain"]), r["score"], "yes" if r["certified"] else "no",
                           f"{100 * r['calib_accuracy']:.2f}", f"{r['calib_flops'] / 1e6:.2f}",
                           f"{100 * r['test_accuracy']:.2f}", f"{r['test_flops'] / 1e6:.2f}"] for r in configs])]
    plots = {"routers_vs_flops.png": lambda p: _routers_plot(ev, fitted, orc, p),
             "energy_hist.png": lambda p: _energy_hist(ev, fitted, p),
             "score_hist.png": lambda p: _score_hist(ev, fitted, rows, p)}
    return [Section("cascade", "Routers on the same trace (EBJR)", "\n".join(md), res, plots)]


def _routers_plot(ev, fitted, orc, path) -> None:
    from ...report.plots import tradeoff_plot

    ctest = ev.test.select(ev.method.stages_)
    curves = [{"label": r, "x": cv.frontier().cost / 1e6, "y": cv.frontier().accuracy, "color": COLORS.get(r)}
              for r, (_, cv) in fitted.items()]
    if len(ctest.paths) == 2:  # the ideal router: forward exactly the student's mistakes first
        s = ctest.correct[0][None].astype(np.float32) + np.linspace(0, 1e-3, ctest.n, dtype=np.float32)[None]
        ideal = sweep_sequential(ctest, None, scores=s, label="oracle router").frontier()
        curves.append({"label": "oracle router", "x": ideal.cost / 1e6, "y": ideal.accuracy, "style": "--", "color": "k"})
    pts = [{"label": "oracle (cheapest correct stage)", "x": orc.mean_flops / 1e6, "y": orc.accuracy, "marker": "*",
            "color": "k", "ms": 11}]
    pts += [{"label": n, "x": ctest.cost(n).flops / 1e6, "y": ctest.accuracy(n), "marker": "s", "legend": False,
             "annotate": n} for n in ctest.paths]
    tradeoff_plot(path, curves=curves, points=pts, xlabel="MFLOPs per image",
                  title=f"routers on {' > '.join(ev.method.stages_)} (test, Pareto fronts)")


def _energy_hist(ev, fitted, path) -> None:
    """Fig. 4: the energy score of kept vs forwarded samples, and of the student's correct vs wrong answers."""
    plt = pyplot()
    c = fitted["energy"][0] if "energy" in fitted else None
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    if c is not None:
        ctest = ev.test.select(c.stages_)
        s0, thr, corr = c.scores_on(ev.test)[0], c.knob_[0], ctest.correct[0]
        bins = np.linspace(np.percentile(s0, 0.5), np.percentile(s0, 99.5), 60)
        axes[0].hist(s0[s0 >= thr], bins=bins, alpha=0.6, label=f"kept by {c.stages_[0]} ({(s0 >= thr).mean():.0%})")
        axes[0].hist(s0[s0 < thr], bins=bins, alpha=0.6, label=f"forwarded ({(s0 < thr).mean():.0%})")
        axes[0].axvline(thr, color="k", ls="--", lw=1, label=f"threshold {thr:.3g}")
        axes[1].hist(s0[corr], bins=bins, alpha=0.6, label=f"{c.stages_[0]} correct")
        axes[1].hist(s0[~corr], bins=bins, alpha=0.6, label=f"{c.stages_[0]} wrong")
        axes[1].axvline(thr, color="k", ls="--", lw=1)
    for ax, t in zip(axes, ("kept vs forwarded", "correct vs wrong (student)")):
        ax.set_xlabel("energy score  -F(x) = logsumexp(logits)")
        ax.set_ylabel("test images")
        ax.set_title(t)
        ax.legend(fontsize=8)
    save(fig, path)


def _score_hist(ev, fitted, rows, path) -> None:
    plt = pyplot()
    det = [(r, fitted[r["router"]][0]) for r in rows if fitted[r["router"]][0].score_.deterministic]
    fig, axes = plt.subplots(1, max(len(det), 1), figsize=(3.2 * max(len(det), 1), 3.2))
    for ax, (r, c) in zip(np.atleast_1d(axes), det):
        s = c.scores_on(ev.test)[0]
        corr = ev.test.select(c.stages_).correct[0]
        b = np.linspace(np.percentile(s, 0.5), np.percentile(s, 99.5), 40)
        ax.hist(s[corr], bins=b, alpha=0.6, density=True, label="correct")
        ax.hist(s[~corr], bins=b, alpha=0.6, density=True, label="wrong")
        ax.axvline(c.knob_[0], color="k", ls="--", lw=1)
        ax.set_title(f"{r['router']} (AUROC {r['auroc_first_stage']:.3f})", fontsize=9)
        ax.set_yticks([])
    np.atleast_1d(axes)[0].legend(fontsize=7)
    save(fig, path)


FIGURES.register("cascade", Figures(CascadeFigures, make))
