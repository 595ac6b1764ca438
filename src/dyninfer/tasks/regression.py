"""``dyninfer run cascade-regression``: EBJR for regression (paper section 2.2) on the rotation angle of the run's
images.

Every image is rotated by an angle uniform in [-max_angle, max_angle] degrees and the target is the angle
(training draws fresh angles every epoch; calibration and test angles are fixed by the seed). The preset's
:class:`~dyninfer.train.regression.RegressionTask` names the two energy regressors (a small and a large CNN
backbone), trained through the checkpoint cache. The method's router is fitted on calibration outputs only (the
cheapest threshold whose calibration MAE is at most the teacher's x (1 + tolerance)); every figure is measured on
the test split. Measured time: the real runtime (student on each batch, teacher on the samples it forwards)
against the teacher alone on the same batches, interleaved rounds, median CPU time.

The method's own figures (:class:`RegressionFigures`) compare the routers (energy, variance, random) at their
calibrated points, read the MAE-cost curves, and say how well each score ranks the student's errors.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from ..errors import ConfigError
from ..methods.base import FIGURES, Figures
from ..methods.cascade.regression import ROUTERS, SCORES, RegressionCascade, RegressionOutputs, count_costs
from ..report.plots import pyplot, save
from ..report.tables import markdown_table
from ..report.writer import Section
from . import TASKS, TaskEvaluation, batches_of, check_routers, time_beside_teacher

TARGET_SAVING = 1.5  # the paper's figure: at the teacher's MAE + 1%, 1.5x fewer FLOPs than the teacher
COLORS = {"energy": "tab:red", "variance": "tab:blue", "random": "0.5"}


@TASKS.register("regression")
def evaluate_regression(cfg, method: RegressionCascade, log=print) -> TaskEvaluation:
    """Steps 1-5 of :mod:`dyninfer.tasks` for a :class:`RegressionCascade` (see the module doc)."""
    from ..data.rotated import rotation_splits
    from ..harness import load_data
    from ..paths import ModulePool
    from ..presets import get_preset
    from ..train.regression import fit_regressor

    if method.router not in SCORES:
        raise ConfigError(f"router {method.router!r} runs in simulation only; run cascade-regression with one of "
                          f"{sorted(SCORES)} (the report compares 'random' beside them)")
    t0 = time.perf_counter()
    preset = get_preset(cfg.preset)
    task = preset.regression
    data = load_data(cfg.dataset, preset, seed=cfg.seed, data_root=cfg.data_root, log=log)
    if task.train_images is not None and len(data.train) > task.train_images:
        data = replace(data, train=data.train.subset(np.arange(task.train_images)),
                       meta={**data.meta, "train": task.train_images})
    kw = {"samples": task.samples}
    models, metas = {}, {}
    for role in ("student", "teacher"):
        models[role], metas[role] = fit_regressor(getattr(task, role), data, getattr(task, f"{role}_recipe"),
                                                  max_angle=task.max_angle, seed=cfg.seed, model_kwargs=kw,
                                                  device=cfg.device, log=log)
        models[role] = models[role].cpu().eval()
    splits = rotation_splits(data, max_angle=task.max_angle, seed=cfg.seed)
    costs = count_costs(models["student"], models["teacher"], data.spec.input_shape)
    rec = {k: RegressionOutputs.record(models["student"], models["teacher"], s, costs=costs, batch_size=task.batch,
                                       meta={"split": k}) for k, s in splits.items()}
    calib, test = rec["calib"], rec["test"]
    cs, ct = costs
    log(f"[regression] outputs recorded: student {task.student} {cs / 1e6:.2f} MFLOPs, test MAE "
        f"{test.mae('student'):.2f} deg; teacher {task.teacher} {ct / 1e6:.2f} MFLOPs, test MAE "
        f"{test.mae('teacher'):.2f} deg")

    # fit on calibration, simulate on test
    method.fit(calib)
    out = method.simulate(test)
    t_mae = test.mae("teacher")
    saving = ct / out.mean_flops
    op = {"router": method.router, "threshold": method.knob_, "tolerance": method.tolerance,
          "calib_mae": method.calib_mae_, "calib_teacher_mae": method.teacher_calib_mae_,
          "calib_mean_flops": method.calib_flops_, "test_mae": out.mae, "test_teacher_mae": t_mae,
          "test_student_mae": test.mae("student"), "test_mean_flops": out.mean_flops, "teacher_flops": ct,
          "student_flops": cs, "test_student_share": out.student_share, "flops_saving": saving,
          "test_mae_vs_teacher_pct": 100 * (out.mae / t_mae - 1), "teacher_alone": method.teacher_alone_,
          "held_on_test": bool(out.mae <= t_mae * (1 + method.tolerance) + 1e-12),
          "target": {"flops_saving": TARGET_SAVING, "met": bool(saving >= TARGET_SAVING)}}
    log(f"[fit] cascade-regression ({method.router}): threshold {method.knob_:.4g}; test MAE {out.mae:.3f} deg "
        f"({op['test_mae_vs_teacher_pct']:+.2f}% vs the teacher), {out.mean_flops / 1e6:.2f} MFLOPs ({saving:.2f}x "
        f"fewer than the teacher), the student keeps {100 * out.student_share:.1f}%")

    # the runtime: the policy's own modules, checked against the simulation, then timed beside the teacher
    paths = ModulePool(models, input_shape=data.spec.input_shape)
    rt = method.runtime(paths, costs=costs)
    x_test = splits["test"].x
    parts = [rt(b) for b in batches_of(x_test, task.batch)]
    by = np.concatenate([p.answered_by for p in parts])
    diff = float(np.abs(np.concatenate([p.prediction for p in parts]) - out.prediction).max())
    agree = {"samples": len(test), "batch_size": task.batch, "route_mismatch": int((by != out.answered_by).sum()),
             "max_abs_prediction_diff": diff}
    log(f"[runtime] agreement on {len(test)} test images: {agree['route_mismatch']} routes differ, max |prediction "
        f"difference| {diff:.1e} deg")
    timed = batches_of(x_test, task.batch, task.timing_images)
    teacher = models["teacher"]
    with torch.inference_mode():
        measured = time_beside_teacher(rt, teacher, timed, rounds=preset.runtime_rounds,
                                       clock=cfg.clock, cpu_watts=cfg.cpu_watts_per_thread, grid_g_per_kwh=cfg.grid_g_per_kwh)
    tm = measured["timing"]
    log(f"[time] {tm['images']} test images at batch {task.batch}, {tm['rounds']} interleaved rounds: runtime "
        f"{tm['ms']['runtime']:.0f} ms, teacher {tm['ms']['teacher']:.0f} ms ({tm['speedup']:.2f}x)")
    results = {"method": method.name, "params": method.get_params(), "knob": method.knob_, "task": "regression",
               "task_settings": task, "operating_point": op, "agreement": agree, **measured,
               "models": {r: {k: metas[r].get(k) for k in ("model_kwargs", "recipe", "test_mae", "calib_mae", "flops",
                                                          "params", "train_seconds", "checkpoint")} for r in metas},
               "seconds_evaluate": time.perf_counter() - t0}
    ev = TaskEvaluation(cfg, method, paths, data, calib, test, results, [], {
        "data": {**data.meta, "task": f"rotation angle, uniform in ±{task.max_angle:g} degrees"},
        "content": data.fingerprint, "preset": preset.name,
        "title": f"cascade-regression — rotation angles of {data.spec.name}, preset {preset.name}"},
        f"test MAE {out.mae:.3f} deg ({op['test_mae_vs_teacher_pct']:+.2f}% vs the teacher), {saving:.2f}x fewer FLOPs, "
        f"measured {tm['speedup']:.2f}x faster than the teacher", log,
        {"splits": splits, "costs": costs, "task": task, "metas": metas})
    ev.sections = _sections(ev)
    return ev


def _sections(ev: TaskEvaluation) -> list[Section]:
    r, task = ev.results, ev.extra["task"]
    op, ag, tm, en = r["operating_point"], r["agreement"], r["timing"], r["energy"]
    cs, ct = ev.extra["costs"]
    head = (f"- Router `{op['router']}`, threshold `{op['threshold']:.4g}` chosen on {len(ev.calib)} calibration images: "
            f"the cheapest point whose calibration MAE ({op['calib_mae']:.3f} deg) is at most the teacher's "
            f"({op['calib_teacher_mae']:.3f} deg) x {1 + op['tolerance']:g}.\n"
            f"- Test ({len(ev.test)} images): MAE **{op['test_mae']:.3f} deg** vs the teacher's {op['test_teacher_mae']:.3f} "
            f"({op['test_mae_vs_teacher_pct']:+.2f}%; the tolerance {'held' if op['held_on_test'] else 'did not hold'}) "
            f"and the student's {op['test_student_mae']:.3f}; the student keeps {100 * op['test_student_share']:.1f}%.\n"
            f"- FLOPs: {op['test_mean_flops'] / 1e6:.2f} M vs the teacher's {ct / 1e6:.2f} M per image: "
            f"**{op['flops_saving']:.2f}x fewer** (target >= {TARGET_SAVING}x: "
            f"**{'met' if op['target']['met'] else 'MISSED'}**).\n"
            f"- Measured: **{tm['speedup']:.2f}x** the teacher's speed ({tm['clock']} clock; wall clock {tm['wall_speedup']:.2f}x).\n")
    models_md = markdown_table(
        ["model", "backbone", "MFLOPs (energy head incl.)", "test MAE (deg)", "calib MAE (deg)", "recipe"],
        [["student", task.student, f"{cs / 1e6:.2f}", f"{ev.test.mae('student'):.3f}", f"{ev.calib.mae('student'):.3f}",
          f"{task.student_recipe.epochs} epochs"],
         ["teacher", task.teacher, f"{ct / 1e6:.2f}", f"{ev.test.mae('teacher'):.3f}", f"{ev.calib.mae('teacher'):.3f}",
          f"{task.teacher_recipe.epochs} epochs"]])
    rt_md = (f"Runtime vs simulation on all {ag['samples']} test images (batch {ag['batch_size']}): **{ag['route_mismatch']}** "
             f"routes differ, max |prediction difference| {ag['max_abs_prediction_diff']:.1e} deg.\n\n"
             f"The runtime (student on every batch, teacher on the samples it forwards) and the teacher alone on the same "
             f"{tm['images']} test images in {tm['batches']} batches, {tm['rounds']} interleaved rounds, median:\n\n"
             + markdown_table(["system", f"{tm['clock']} ms", "wall ms", "ms/img", "energy (mJ/img)", "CO2 (g / 10k img)"],
                              [[k, f"{tm['ms'][k]:.1f}", f"{tm['wall_ms'][k]:.1f}", f"{tm['ms_per_image'][k]:.4f}",
                                f"{en[k]['joules_per_image'] * 1e3:.4f}", f"{en[k]['co2_g_per_10k_images']:.5f}"]
                               for k in ("runtime", "teacher")])
             + f"\nEnergy: {en['runtime']['source']}.\n")
    curve = ev.method.curve(ev.test)
    pts = [{"label": "student alone", "x": cs, "y": ev.test.mae("student"), "marker": "s", "color": "k"},
           {"label": "teacher alone", "x": ct, "y": op["test_teacher_mae"], "marker": "D", "color": "k"},
           {"label": "operating point", "x": op["test_mean_flops"], "y": op["test_mae"], "marker": "*", "color": "r"}]
    curves = {f"{op['router']} (test)": curve, f"{op['router']} (calibration)": ev.method.calib_curve_}
    plot = {"mae_flops.png": lambda p: mae_plot(p, curves=curves, points=pts,
                                                target=op["test_teacher_mae"] * (1 + op["tolerance"]),
                                                title=ev.meta["title"])}
    if op["teacher_alone"]:
        head += ("- The chosen point costs no fewer FLOPs on calibration than the teacher alone, so the fitted policy "
                 "runs the teacher alone and the student does not run (as every method falls back to its reference).\n")
    return [Section("operating_point", "Operating point", head, {}),
            Section("models", "Models", f"Energy-based regressors (M = {task.samples} importance samples of -F per "
                    f"image, counted in the FLOPs), trained on {len(ev.data.train)} images with fresh angles each "
                    f"epoch.\n\n" + models_md + "\n", {}),
            Section("runtime", "Runtime", rt_md, {}),
            Section("tradeoff", "MAE against FLOPs", "The router's sweep on the test split (line) and on calibration "
                    "(dashed), the two models alone and the operating point.\n", {}, plot)]


def mae_plot(path: Path, *, curves: dict, points: list[dict], target: float, title: str) -> None:
    """Test MAE (degrees) against mean MFLOPs per image: one line per curve, markers for the models and the
    calibrated points, a dashed line at the teacher's MAE + tolerance."""
    from matplotlib.ticker import FormatStrFormatter

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 5))
    for i, (name, c) in enumerate(curves.items()):
        order = np.argsort(c.cost, kind="stable")
        router = name.split(" ")[0]
        ax.plot(c.cost[order] / 1e6, -c.accuracy[order], "--" if "calibration" in name else "-",
                color=COLORS.get(router, f"C{i}"), lw=1.3, label=name)
    for p in points:
        ax.plot(p["x"] / 1e6, p["y"], p.get("marker", "o"), color=p.get("color", "0.3"), ms=8, label=p["label"])
    ax.axhline(target, ls=":", color="0.4", lw=0.8, label="teacher MAE + tolerance")
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(FormatStrFormatter("%g"))
    ax.xaxis.set_minor_formatter(FormatStrFormatter("%g"))
    ax.set_xlabel("mean MFLOPs per image (counted)")
    ax.set_ylabel("MAE (degrees)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7, loc="upper right")
    save(fig, path)


# ---------------------------------------------------------------------------------------- own figures

@dataclass
class RegressionFigures:
    """Settings of ``cascade-regression``'s own figures (``--figure key=value``)."""

    routers: tuple[str, ...] = ROUTERS  # compared at their calibrated points, with the run's tolerance and seed

    def __post_init__(self) -> None:
        self.routers = check_routers(self.routers, ROUTERS)


def _figures(ev: TaskEvaluation, cfg: RegressionFigures, log) -> list[Section]:
    from scipy.stats import pointbiserialr, spearmanr

    m = ev.method
    calib, test = ev.calib, ev.test
    ct, t_mae, tol = ev.extra["costs"][1], test.mae("teacher"), m.tolerance
    fitted, curves, rows, res, hindsight = {}, {}, [], {}, {}
    for r in cfg.routers:
        c = RegressionCascade(router=r, tolerance=tol, seed=m.seed).fit(calib)
        o = c.simulate(test)
        fitted[r], curves[r] = c, c.curve(test)
        res[r] = {"threshold": c.knob_, "calib_mae": c.calib_mae_, "test_mae": o.mae,
                  "test_mean_flops": o.mean_flops, "test_student_share": o.student_share,
                  "flops_ratio_vs_teacher": ct / o.mean_flops, "test_mae_vs_teacher_pct": 100 * (o.mae / t_mae - 1)}
        rows.append([r, f"{c.knob_:.4g}", f"{c.calib_mae_:.3f}", f"{o.mae:.3f}", f"{res[r]['test_mae_vs_teacher_pct']:+.2f}",
                     f"{o.mean_flops / 1e6:.2f}", f"{ct / o.mean_flops:.2f}", f"{100 * o.student_share:.1f}"])
        i = curves[r].cheapest_at(-t_mae * (1 + tol))  # read off the test curve: not a deployable choice
        hindsight[r] = {"mean_flops": float(curves[r].cost[i]), "flops_ratio_vs_teacher": ct / float(curves[r].cost[i])}
        log(f"[figures] {r} router: test MAE {o.mae:.3f} deg ({res[r]['test_mae_vs_teacher_pct']:+.2f}%), "
            f"{ct / o.mean_flops:.2f}x fewer FLOPs")
    es, et = test.abs_errors()
    corr = {}
    for r in (r for r in cfg.routers if r != "random"):
        s = fitted[r].scores(test).astype(np.float64)
        rho, p = spearmanr(s, -es)
        pb, pp = pointbiserialr((es <= et).astype(float), s)
        corr[r] = {"spearman_vs_neg_abs_error": float(rho), "spearman_p": float(p),
                   "pointbiserial_vs_student_not_worse": float(pb), "pointbiserial_p": float(pp)}
    cs = ev.extra["costs"][0]
    pts = [{"label": "student alone", "x": cs, "y": test.mae("student"), "marker": "s", "color": "k"},
           {"label": "teacher alone", "x": ct, "y": t_mae, "marker": "D", "color": "k"}]
    pts += [{"label": f"{r} (calibrated)", "x": res[r]["test_mean_flops"], "y": res[r]["test_mae"], "marker": "*",
             "color": COLORS[r]} for r in cfg.routers]
    head = ["router", "threshold", "calib MAE", "test MAE", "vs teacher %", "MFLOPs", "FLOPs ratio", "student keeps %"]
    return [Section("routers", "Routers at their calibrated points",
                    f"Each router's threshold: the cheapest calibration point with MAE <= teacher calibration MAE x "
                    f"{1 + tol:g}. Test figures on {len(test)} images; FLOPs ratio = teacher FLOPs / the cascade's "
                    f"mean FLOPs.\n\n" + markdown_table(head, rows) + "\n\nFor reference only (chosen on the test "
                    "curve, not deployable): the cheapest test point within the tolerance of the teacher's test MAE "
                    "costs " + ", ".join(f"{r} {v['flops_ratio_vs_teacher']:.2f}x" for r, v in hindsight.items())
                    + " fewer FLOPs than the teacher.\n",
                    {"routers": res, "hindsight_on_test": hindsight},
                    {"mae_flops_routers.png": lambda p: mae_plot(p, curves={f"{r} router": c for r, c in curves.items()},
                                                                 points=pts, target=t_mae * (1 + tol),
                                                                 title=ev.meta["title"])}),
            Section("scores", "How the scores rank the student's errors (test split)",
                    markdown_table(["score", "Spearman vs -abs(error)", "point-biserial vs (student error <= teacher's)"],
                                   [[f"{r} ({'-F' if r == 'energy' else '-log variance'})",
                                     f"{v['spearman_vs_neg_abs_error']:.3f}",
                                     f"{v['pointbiserial_vs_student_not_worse']:.3f}"] for r, v in corr.items()]) + "\n",
                    {"correlation": corr})]


FIGURES.register("cascade-regression", Figures(RegressionFigures, _figures))

__all__ = ["RegressionFigures", "evaluate_regression", "mae_plot"]
