"""``dyninfer run cascade-detection``: EBJR for object detection (paper section 2.3, eqs. 12-14) on canvases of the
run's images.

Data: square canvases holding 0 to ``max_items`` items of the run's dataset at a few scales, with tight boxes
and their classes (training canvases from the training split's items, calibration and test canvases from
held-out items; written once with the seed, checksummed; :mod:`dyninfer.data.canvas`). Models: the preset's two
GFL-style anchor-free detectors (:class:`~dyninfer.train.detection.DetectionTask`), trained here and cached.
The method's router is fitted on calibration canvases only (the cheapest threshold whose calibration mAP is at
least the teacher's x (1 - tolerance)); mAP comes from torchmetrics' ``MeanAveragePrecision`` (COCO
mAP@[.5:.95], pycocotools). Measured time: the real runtime (student on every image, teacher on the forwarded
images only, NMS included) against the teacher alone and the student alone on the same batches, interleaved
rounds, median CPU time.

The method's own figures (:class:`DetectionFigures`) compare the routers (energy, confidence, count, random) at
their calibrated points with their test mAP-cost curves, and show the free energy of the kept and forwarded
images.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace

import numpy as np
import torch

from ..errors import ConfigError
from ..methods.base import FIGURES, Figures
from ..methods.cascade.detection import ROUTER_NAMES, DetectionCascade, record_pair
from ..report.plots import pyplot, save, tradeoff_plot
from ..report.tables import markdown_table
from ..report.writer import Section
from . import TASKS, TaskEvaluation, batches_of, check_routers, time_beside_teacher

TARGET_MAP, TARGET_SPEEDUP = 0.97, 1.8  # the paper's EfficientDet-D0/D4 figure
COLORS = {"energy": "C3", "confidence": "C0", "count": "C2", "random": "0.5"}


@TASKS.register("detection")
def evaluate_detection(cfg, method: DetectionCascade, log=print) -> TaskEvaluation:
    """Steps 1-5 of :mod:`dyninfer.tasks` for a :class:`DetectionCascade` (see the module doc)."""
    from ..data.canvas import load_canvases
    from ..paths import ModulePool
    from ..presets import get_preset
    from ..train.detection import cached_detector

    if method.router == "random":
        raise ConfigError("router 'random' draws its scores per call, so its runtime cannot agree with its simulation; "
                          "run cascade-detection with router 'energy', 'confidence' or 'count' (the report compares "
                          "'random' beside them)")
    t0 = time.perf_counter()
    preset = get_preset(cfg.preset)
    task = preset.detection
    log(f"[data] canvases of {cfg.dataset} items: {task.canvas}")
    data = load_canvases(replace(task.canvas, source=cfg.dataset), seed=cfg.seed, data_root=cfg.data_root, log=log)
    models, metas = {}, {}
    for role in ("student", "teacher"):
        models[role], metas[role] = cached_detector(task.detector(role, data), data, getattr(task, f"{role}_recipe"),
                                                    seed=cfg.seed, desc=f"det-{role}", log=log)
    student, teacher = models["student"].eval(), models["teacher"].eval()
    rec = {s: record_pair(student, teacher, data.split(s).x, data.split(s).targets(), batch_size=task.batch)
           for s in ("calib", "test")}
    calib, test = rec["calib"], rec["test"]
    fs, ft = test.flops
    n = test.n
    none = np.zeros(n, bool)
    t_map, s_map = test.metrics(none, method.backend), test.metrics(~none, method.backend)
    log(f"[detection] recorded: student {fs / 1e6:.2f} MFLOPs, test mAP {100 * s_map['map']:.2f}; teacher "
        f"{ft / 1e6:.2f} MFLOPs, test mAP {100 * t_map['map']:.2f}")

    method.fit(calib)
    out = method.simulate(test)
    paths = ModulePool(models, input_shape=(1, *data.spec.image_size))
    rt = method.runtime(paths)
    batches = batches_of(data.test.x, task.batch)
    res = [rt(b) for b in batches]
    keep = np.concatenate([o.keep.numpy() for o in res])
    dets = [d for o in res for d in o.detections]
    same = sum(len(a["boxes"]) == len(b["boxes"]) and torch.allclose(a["boxes"], b["boxes"], atol=1e-3)
               and torch.equal(a["labels"], b["labels"]) for a, b in zip(dets, out.detections))
    agree = {"images": n, "batch_size": task.batch, "route_mismatch": int((keep != out.keep).sum()),
             "detections_mismatch": int(n - same)}
    log(f"[runtime] agreement on {n} test canvases: {agree['route_mismatch']} routes and "
        f"{agree['detections_mismatch']} detection lists differ")
    measured = time_beside_teacher(rt, lambda b: teacher.detect(b, energy=False), batches,
                                   rounds=preset.runtime_rounds, clock=cfg.clock, cpu_watts=cfg.cpu_watts_per_thread,
                                   grid_g_per_kwh=cfg.grid_g_per_kwh,
                                   extra={"student": lambda: [student.detect(b) for b in batches]})
    tm = measured["timing"]
    pct = _of(out.map, t_map["map"])
    op = {"router": method.router, "threshold": method.knob_, "tolerance": method.tolerance,
          "calib_map": method.calib_map_, "calib_teacher_map": method.teacher_calib_map_,
          "calib_share_forwarded": method.calib_share_forwarded_, "test_map": out.map, "test_map_50": out.map_50,
          "test_teacher_map": t_map["map"], "test_student_map": s_map["map"], "share_of_teacher_map": pct,
          "test_share_forwarded": out.share_forwarded, "teacher_alone": method.teacher_alone_,
          "test_mean_flops": out.mean_flops, "teacher_flops": ft, "student_flops": fs, "flops_saving": ft / out.mean_flops, "speedup_measured": tm["speedup"],
          "held_on_test": bool(out.map >= t_map["map"] * (1 - method.tolerance) - 1e-12),
          "target": {"share_of_teacher_map": TARGET_MAP, "speedup": TARGET_SPEEDUP,
                     "met": bool(pct >= TARGET_MAP and tm["speedup"] >= TARGET_SPEEDUP)}}
    log(f"[fit] cascade-detection ({method.router}): threshold {method.knob_:.4g}; test mAP {100 * out.map:.2f} "
        f"({100 * pct:.1f}% of the teacher), {100 * out.share_forwarded:.1f}% forwarded, {ft / out.mean_flops:.2f}x "
        f"fewer FLOPs, measured {tm['speedup']:.2f}x the teacher's speed")
    empty = np.array([len(t["boxes"]) == 0 for t in test.targets])
    results = {"method": method.name, "params": method.get_params(), "knob": method.knob_, "task": "detection",
               "task_settings": task, "operating_point": op, "agreement": agree, **measured,
               "canvases": {"config": data.meta.get("config"), "empty_test_images": int(empty.sum()),
                            "no_box_test_images": int((test.student.n_boxes.numpy() == 0).sum()),
                            "empty_forwarded": int((empty & ~out.keep).sum())},
               "models": {r: {k: v.get(k) for k in ("config", "recipe", "flops", "params", "train_seconds", "checkpoint")}
                          for r, v in metas.items()},
               "seconds_evaluate": time.perf_counter() - t0}
    meta = {"data": {"dataset": f"canvases of {cfg.dataset} items", "train": len(data.train), "calib": len(data.calib),
                     "test": len(data.test), "task": f"detection on {data.spec.image_size[0]}-pixel canvases"},
            "content": data.fingerprint, "preset": preset.name,
            "title": f"cascade-detection — canvases of {cfg.dataset} items, preset {preset.name}"}
    ev = TaskEvaluation(cfg, method, paths, data, calib, test, results, [], meta,
                        f"test mAP {100 * out.map:.2f} ({100 * pct:.1f}% of the teacher), {ft / out.mean_flops:.2f}x "
                        f"fewer FLOPs, measured {tm['speedup']:.2f}x the teacher's speed", log,
                        {"task": task, "maps": {"teacher": t_map, "student": s_map}, "metas": metas})
    ev.sections = _sections(ev)
    return ev


def _of(a: float, b: float) -> float:
    """a / b, NaN when b is not positive (an untrained teacher's mAP of 0)."""
    return a / b if b > 0 else float("nan")


def _sections(ev: TaskEvaluation) -> list[Section]:
    r, task = ev.results, ev.extra["task"]
    op, ag, tm, en = r["operating_point"], r["agreement"], r["timing"], r["energy"]
    fs, ft = op["student_flops"], op["teacher_flops"]
    met = op["target"]["met"]
    head = (f"- Router `{op['router']}`, threshold `{op['threshold']:.4g}` chosen on {ev.calib.n} calibration canvases: the "
            f"cheapest point whose calibration mAP ({100 * op['calib_map']:.2f}) is at least the teacher's "
            f"({100 * op['calib_teacher_map']:.2f}) x {1 - op['tolerance']:g}.\n"
            f"- Test ({ev.test.n} canvases): mAP **{100 * op['test_map']:.2f}** = **{100 * op['share_of_teacher_map']:.1f}%** "
            f"of the teacher's {100 * op['test_teacher_map']:.2f} (the student alone: {100 * op['test_student_map']:.2f}); "
            f"{100 * op['test_share_forwarded']:.1f}% of the canvases forwarded.\n"
            f"- FLOPs: {op['test_mean_flops'] / 1e6:.2f} M vs the teacher's {ft / 1e6:.2f} M per canvas "
            f"({op['flops_saving']:.2f}x fewer; the student costs {fs / 1e6:.2f} M).\n"
            f"- Measured: **{op['speedup_measured']:.2f}x** the teacher's speed (target >= {100 * TARGET_MAP:g}% of its "
            f"mAP at >= {TARGET_SPEEDUP}x: **{'met' if met else 'MISSED'}**).\n")
    rows = [[k, f"{tm['ms'][k]:.1f}", f"{tm['wall_ms'][k]:.1f}", f"{tm['ms_per_image'][k]:.3f}",
             f"{tm['ms']['teacher'] / tm['ms'][k]:.2f}"] for k in tm["ms"]]
    rt_md = (f"Runtime vs simulation on all {ag['images']} test canvases (batch {ag['batch_size']}): "
             f"**{ag['route_mismatch']}** routes and **{ag['detections_mismatch']}** detection lists differ.\n\n"
             f"The runtime (student on every canvas, teacher on the forwarded ones), the teacher alone and the student "
             f"alone on the same {tm['images']} test canvases in {tm['batches']} batches, decoding (NMS) included, "
             f"{tm['rounds']} interleaved rounds, median ({tm['clock']} clock):\n\n"
             + markdown_table(["system", f"{tm['clock']} ms", "wall ms", "ms/canvas", "speed-up vs teacher"], rows)
             + "\n" + markdown_table(["system", "energy (mJ/canvas)", "CO2 (g / 10k canvases)"],
                                     [[k, f"{en[k]['joules_per_image'] * 1e3:.4f}", f"{en[k]['co2_g_per_10k_images']:.5f}"]
                                      for k in en])
             + f"\nEnergy: {en['runtime']['source']}. FLOPs count the forward passes only (not NMS).\n")
    cv = r["canvases"]
    models_md = (f"Canvases: {cv['config']} (seed {ev.cfg.seed}); {cv['empty_test_images']} of the {ev.test.n} test "
                 f"canvases are empty; {cv['no_box_test_images']} have no student box above the score floor (they take "
                 f"their best grid location), {cv['empty_forwarded']} empty canvases were forwarded.\n\n"
                 + markdown_table(["model", "config", "MFLOPs", "params", "train s", "test mAP %"],
                                  [[k, str(getattr(task, k)), f"{v['flops'] / 1e6:.2f}", v.get("params"),
                                    f"{v.get('train_seconds') or float('nan'):.0f}",
                                    f"{100 * ev.extra['maps'][k]['map']:.2f}"]
                                   for k, v in r["models"].items()]) + "\n")
    if op["teacher_alone"]:
        head += ("- The chosen point costs no fewer FLOPs on calibration than the teacher alone, so the fitted policy "
                 "runs the teacher alone and the student does not run (as every method falls back to its reference).\n")
    return [Section("operating_point", "Operating point", head, {}),
            Section("models", "Canvases and detectors", models_md, {}),
            Section("runtime", "Runtime", rt_md, {})]


# ---------------------------------------------------------------------------------------- own figures

@dataclass
class DetectionFigures:
    """Settings of ``cascade-detection``'s own figures (``--figure key=value``)."""

    routers: tuple[str, ...] = ROUTER_NAMES  # compared at their calibrated points, with the run's tolerance and seed

    def __post_init__(self) -> None:
        self.routers = check_routers(self.routers, ROUTER_NAMES)


def _figures(ev: TaskEvaluation, cfg: DetectionFigures, log) -> list[Section]:
    m, test, task = ev.method, ev.test, ev.extra["task"]
    fs, ft = test.flops
    tm = ev.results["timing"]
    per_img = {k: v / 1e3 for k, v in tm["ms_per_image"].items()}  # seconds per canvas, measured
    t_map, s_map = ev.extra["maps"]["teacher"], ev.extra["maps"]["student"]
    cascades, outcomes, curves = {}, {}, {}
    for r in cfg.routers:  # the random router's mAP is about linear in the forwarded share: a coarse grid fits it
        c = DetectionCascade(router=r, tolerance=m.tolerance, seed=m.seed, backend=m.backend,
                             grid=m.grid if r != "random" else max(4, m.grid // 3)).fit(ev.calib)
        cascades[r], outcomes[r], curves[r] = c, c.simulate(test), c.curve(test, grid=task.curve_grid)
        o = outcomes[r]
        log(f"[figures] {r} router: test mAP {100 * o.map:.2f} ({100 * _of(o.map, t_map['map']):.1f}% of the teacher), "
            f"{100 * o.share_forwarded:.1f}% forwarded")
    # predicted time of a router's point: the measured student time on every canvas (unless the fitted policy runs the
    # teacher alone) plus the teacher's on the forwarded ones
    pred = {r: (0.0 if cascades[r].teacher_alone_ else per_img["student"]) + o.share_forwarded * per_img["teacher"]
            for r, o in outcomes.items()}
    rows = [["teacher", f"{100 * t_map['map']:.2f}", "100.0", "100.0", f"{ft / 1e6:.2f}", "1.00",
             f"{1e3 * per_img['teacher']:.3f}", "1.00"],
            ["student", f"{100 * s_map['map']:.2f}", f"{100 * _of(s_map['map'], t_map['map']):.1f}", "0.0", f"{fs / 1e6:.2f}",
             f"{ft / fs:.2f}", f"{1e3 * per_img['student']:.3f}", f"{per_img['teacher'] / per_img['student']:.2f}"]]
    rows += [[r, f"{100 * o.map:.2f}", f"{100 * _of(o.map, t_map['map']):.1f}", f"{100 * o.share_forwarded:.1f}",
              f"{o.mean_flops / 1e6:.2f}", f"{ft / o.mean_flops:.2f}", f"{1e3 * pred[r]:.3f}",
              f"{per_img['teacher'] / pred[r]:.2f}"] for r, o in outcomes.items()]

    def curve_plot(path, time_axis: bool):
        cv = [{"label": f"{r} (test sweep)", "color": COLORS[r], "y": c.accuracy,
               "x": (per_img["student"] + c.extra["reach"][:, 1] * per_img["teacher"]) * 1e3 if time_axis else c.cost / 1e6}
              for r, c in curves.items()]
        pts = [{"label": "teacher", "x": per_img["teacher"] * 1e3 if time_axis else ft / 1e6, "y": t_map["map"],
                "marker": "s", "color": "k"},
               {"label": "student", "x": per_img["student"] * 1e3 if time_axis else fs / 1e6, "y": s_map["map"],
                "marker": "^", "color": "k"}]
        pts += [{"label": f"{r}: calibrated threshold", "x": pred[r] * 1e3 if time_axis else o.mean_flops / 1e6,
                 "y": o.map, "marker": "o", "color": COLORS[r]} for r, o in outcomes.items()]
        tradeoff_plot(path, curves=cv, points=pts, ylabel="test mAP@[.5:.95]",
                      xlabel="ms per canvas (predicted from the measured times of both detectors)" if time_axis
                      else "MFLOPs per canvas", title="EBJR detection: mAP against cost on test canvases")

    def hist(path):
        plt = pyplot()
        fig, ax = plt.subplots(figsize=(7, 4))
        s = test.student.neg_energy.numpy()
        k = m.simulate(test).keep
        bins = np.linspace(s.min(), s.max(), 40)
        ax.hist(s[k], bins=bins, alpha=0.6, label=f"kept by the student ({int(k.sum())})", color="C2")
        ax.hist(s[~k], bins=bins, alpha=0.6, label=f"forwarded to the teacher ({int((~k).sum())})", color="C3")
        if m.router == "energy":
            ax.axvline(m.knob_, color="k", ls="--", lw=1, label="calibrated threshold")
        ax.set_xlabel("-F^o (student, test canvases)")
        ax.set_ylabel("canvases")
        ax.legend(fontsize=8)
        save(fig, path)

    head = ["model / router", "mAP %", "% of teacher mAP", "forwarded %", "MFLOPs", "FLOPs ratio",
            "ms/canvas (predicted)", "speed-up (predicted)"]
    return [Section("routers", "Routers at their calibrated points",
                    f"Each router fitted on the calibration canvases with the run's tolerance ({m.tolerance:g}); the "
                    f"calibration sweep evaluates {m.grid} score quantiles ({max(4, m.grid // 3)} for random) plus "
                    f"keep-all and keep-none; the test curves {task.curve_grid}. Times are predicted from the measured "
                    f"per-canvas times of the two detectors (the run's own router is measured in the Runtime section).\n\n"
                    + markdown_table(head, rows) + "\n",
                    {r: {"threshold": c.knob_, "calib_map": c.calib_map_, "test_map": outcomes[r].map,
                         "test_share_forwarded": outcomes[r].share_forwarded, "test_mean_flops": outcomes[r].mean_flops,
                         "predicted_seconds_per_image": pred[r],
                         "curve": {"threshold": curves[r].settings[:, 0].tolist(),
                                   "map": curves[r].accuracy.tolist(), "mean_flops": curves[r].cost.tolist(),
                                   "share_forwarded": curves[r].extra["reach"][:, 1].tolist()}}
                     for r, c in cascades.items()},
                    {"map_flops.png": lambda p: curve_plot(p, False), "map_time.png": lambda p: curve_plot(p, True),
                     "energy_hist.png": hist})]


FIGURES.register("cascade-detection", Figures(DetectionFigures, _figures))

__all__ = ["DetectionFigures", "evaluate_detection"]
