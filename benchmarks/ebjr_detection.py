"""EBJR for object detection (section 2.3, eqs. 12-14): a small and a large detector on Fashion-MNIST canvases.

    python benchmarks/ebjr_detection.py           # full run (~20-25 min on 2 cores) -> reports/ebjr-detection/
    python benchmarks/ebjr_detection.py --quick   # smoke run (<= 3 min)

Data: 64x64 canvases with 0-4 Fashion-MNIST items at 16, 22 or 28 px (training canvases from the training
split's items, calibration and test canvases from held-out items; built once and cached). Models: two GFL-style
anchor-free detectors of :mod:`dyninfer.models.detection` (student and teacher differ in width and depth),
trained here and cached. Routers (energy -F^o, the baseline mean detection score, the count of confident boxes, random) are fitted on the
calibration canvases: the cheapest threshold whose calibration mAP is >= the teacher's calibration mAP x
(1 - tolerance). Every figure is then measured on the test canvases: mAP (torchmetrics MeanAveragePrecision,
pycocotools), FLOPs (FlopCounterMode, forward pass), and the measured time of the real runtime (student on
every image, teacher on the forwarded images only) against the teacher alone on the same batches (CPU time of
one thread, interleaved rounds, median).
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
import torch

from dyninfer.data.canvas import CanvasConfig, load_canvases
from dyninfer.methods.cascade.detection import DetectionCascade, record_pair
from dyninfer.models.detection import DetectorConfig
from dyninfer.report.plots import pyplot, save, tradeoff_plot
from dyninfer.report.tables import markdown_table
from dyninfer.report.writer import Section, provenance, write_report
from dyninfer.runtime.cost import interleaved_latency
from dyninfer.train.detection import DetRecipe, cached_detector

PRESETS = {
    "full": {"canvas": dict(train=6000, calib=1000, test=1000),
             "student": dict(width=8, depth=1, head=24, head_convs=1), "student_epochs": 16,
             "teacher": dict(width=24, depth=2, head=64, head_convs=2), "teacher_epochs": 8,
             "grid": 16, "curve_grid": 8, "rounds": 7},
    "quick": {"canvas": dict(train=1000, calib=200, test=200),
              "student": dict(width=8, depth=1, head=24, head_convs=1), "student_epochs": 3,
              "teacher": dict(width=16, depth=1, head=32, head_convs=2), "teacher_epochs": 3,
              "grid": 8, "curve_grid": 6, "rounds": 3},
}
ROUTERS = ("energy", "confidence", "count", "random")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smoke run: few canvases, tiny models, few epochs")
    ap.add_argument("--tolerance", type=float, default=0.03, help="relative mAP the calibrated point may lose")
    ap.add_argument("--grid", type=int, default=None, help="score quantiles of the calibration sweep (default: the preset's)")
    ap.add_argument("--rounds", type=int, default=None, help="timing rounds (default: the preset's)")
    ap.add_argument("--batch-size", type=int, default=64, help="images per runtime batch")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="reports/ebjr-detection")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    preset = PRESETS["quick" if args.quick else "full"]
    grid = args.grid or preset["grid"]
    rounds = args.rounds or preset["rounds"]

    data = load_canvases(CanvasConfig(**preset["canvas"]), seed=args.seed)
    mean, std = float(data.spec.mean[0]), float(data.spec.std[0])
    models, metas = {}, {}
    for role in ("student", "teacher"):
        cfg = DetectorConfig(**preset[role], num_classes=data.spec.num_classes, image_size=data.spec.image_size[0],
                             mean=mean, std=std)
        models[role], metas[role] = cached_detector(cfg, data, DetRecipe(epochs=preset[f"{role}_epochs"]),
                                                    seed=args.seed, desc=f"det-{role}")
    student, teacher = models["student"], models["teacher"]
    rec = {s: record_pair(student, teacher, data.split(s).x, data.split(s).targets(), batch_size=args.batch_size)
           for s in ("calib", "test")}
    fs, ft = rec["test"].flops
    print(f"[bench] recorded calib and test ({time.perf_counter() - t0:.0f} s); FLOPs student {fs / 1e6:.2f} M, "
          f"teacher {ft / 1e6:.2f} M ({ft / fs:.1f}x)")

    test = rec["test"]
    n = test.n
    none = np.zeros(n, bool)
    t_map, s_map = test.metrics(none), test.metrics(~none)
    # the random router's mAP is about linear in the forwarded share: a coarse grid fits it
    cascades = {r: DetectionCascade(router=r, tolerance=args.tolerance, seed=args.seed,
                                    grid=grid if r != "random" else max(4, grid // 3)).fit(rec["calib"])
                for r in ROUTERS}
    outcomes = {r: c.simulate(test) for r, c in cascades.items()}
    curves = {r: c.curve(test, grid=preset["curve_grid"]) for r, c in cascades.items()}
    print(f"[bench] routers fitted and swept ({time.perf_counter() - t0:.0f} s)")

    # measured time: interleaved rounds over the whole test split in batches
    x = data.test.x
    batches = [x[i:i + args.batch_size] for i in range(0, n, args.batch_size)]
    runtimes = {r: c.runtime(student, teacher) for r, c in cascades.items()}
    calls = {"teacher": lambda: [teacher.detect(b, energy=False) for b in batches],
             "student": lambda: [student.detect(b) for b in batches],
             **{f"cascade-{r}": (lambda rt=rt: [rt(b) for b in batches]) for r, rt in runtimes.items()}}
    lat = interleaved_latency(calls, rounds=rounds, warmup=1, clock="cpu")
    med = {k: v["median_ms"] for k, v in lat.items()}
    per_img = {k: v / 1e3 / n for k, v in med.items()}  # seconds per image
    # runtime == simulation (the same routing and the same detections)
    agree = {}
    for r, rt in runtimes.items():
        if r == "random":  # its seeded draw is per call, so a split cut into batches draws other numbers
            continue
        res = [rt(b) for b in batches]
        keep = np.concatenate([o.keep.numpy() for o in res])
        dets = [d for o in res for d in o.detections]
        same = sum(len(a["boxes"]) == len(b["boxes"]) and torch.allclose(a["boxes"], b["boxes"], atol=1e-3)
                   and torch.equal(a["labels"], b["labels"]) for a, b in zip(dets, outcomes[r].detections))
        agree[r] = {"routes_equal": int((keep == outcomes[r].keep).sum()), "detections_equal": int(same), "images": n}
    print(f"[bench] timed ({time.perf_counter() - t0:.0f} s): " + ", ".join(f"{k} {v:.0f} ms" for k, v in med.items()))

    rows, table = {}, []

    def row(name, m, share, flops, seconds, measured):
        pct = 100 * m["map"] / t_map["map"]
        rows[name] = {"map": m["map"], "map_50": m["map_50"], "pct_teacher_map": pct, "share_forwarded": share,
                      "mean_flops": flops, "flops_ratio": ft / flops, "seconds_per_image": seconds,
                      "speedup_measured": per_img["teacher"] / seconds if measured else None}
        table.append([name, f"{100 * m['map']:.2f}", f"{100 * m['map_50']:.2f}", f"{pct:.1f}",
                      f"{100 * share:.1f}", f"{flops / 1e6:.2f}", f"{ft / flops:.2f}", f"{1e3 * seconds:.3f}",
                      f"{per_img['teacher'] / seconds:.2f}" if measured else "-"])

    row("teacher", t_map, 1.0, ft, per_img["teacher"], True)
    row("student", s_map, 0.0, fs, per_img["student"], True)
    for r, o in outcomes.items():
        row(f"EBJR {r}" if r == "energy" else r, {"map": o.map, "map_50": o.map_50}, o.share_forwarded,
            o.mean_flops, per_img[f"cascade-{r}"], True)
    e = rows["EBJR energy"]
    met = e["pct_teacher_map"] >= 97 and e["speedup_measured"] >= 1.8
    verdict = (f"Energy router at its calibrated threshold: {e['pct_teacher_map']:.1f}% of the teacher's test mAP at a "
               f"measured speed-up of {e['speedup_measured']:.2f}x (target >= 97% at >= 1.8x: "
               f"{'met' if met else 'MISSED'}).")
    others = {k: v for k, v in rows.items() if k not in ("teacher", "student", "random")}
    fastest = max(others, key=lambda k: (others[k]["pct_teacher_map"] >= 97, others[k]["speedup_measured"]))
    verdict += (f" Fastest router at >= 97% of the teacher's mAP: {fastest}, {others[fastest]['speedup_measured']:.2f}x "
                f"({others[fastest]['pct_teacher_map']:.1f}%)." if others[fastest]["pct_teacher_map"] >= 97 else
                " No router reaches 97% of the teacher's test mAP at its calibrated threshold.")
    print("[bench] " + verdict)
    for name, rr in rows.items():
        print(f"[bench] {name}: mAP {100 * rr['map']:.2f} ({rr['pct_teacher_map']:.1f}% of teacher), forwarded "
              f"{100 * rr['share_forwarded']:.1f}%, {rr['mean_flops'] / 1e6:.2f} MFLOPs, speed-up "
              f"{rr['speedup_measured']:.2f}x")

    colors = {"energy": "C3", "confidence": "C0", "count": "C2", "random": "0.5"}

    def curve_plot(path, time_axis: bool):
        cv = []
        for r, c in curves.items():
            share = c.extra["reach"][:, 1]
            xs = per_img["student"] * 1e3 + share * per_img["teacher"] * 1e3 if time_axis else c.cost / 1e6
            cv.append({"label": f"{r} (test sweep)", "x": xs, "y": c.accuracy, "color": colors[r]})
        pts = [{"label": "teacher", "x": (per_img["teacher"] * 1e3 if time_axis else ft / 1e6), "y": t_map["map"],
                "marker": "s", "color": "k"},
               {"label": "student", "x": (per_img["student"] * 1e3 if time_axis else fs / 1e6), "y": s_map["map"],
                "marker": "^", "color": "k"}]
        for r, o in outcomes.items():
            pts.append({"label": f"{r}: calibrated threshold" + (" (measured)" if time_axis else ""),
                        "x": per_img[f"cascade-{r}"] * 1e3 if time_axis else o.mean_flops / 1e6, "y": o.map,
                        "marker": "o", "color": colors[r]})
        tradeoff_plot(path, curves=cv, points=pts, ylabel="test mAP@[.5:.95] (%)",
                      xlabel="ms per image (1 thread; curves: measured per-model time x share)" if time_axis
                      else "MFLOPs per image", title="EBJR detection: mAP against cost on test canvases")

    def hist(path):
        plt = pyplot()
        fig, ax = plt.subplots(figsize=(7, 4))
        s = test.student.neg_energy.numpy()
        k = outcomes["energy"].keep
        bins = np.linspace(s.min(), s.max(), 40)
        ax.hist(s[k], bins=bins, alpha=0.6, label=f"kept by the student ({int(k.sum())})", color="C2")
        ax.hist(s[~k], bins=bins, alpha=0.6, label=f"forwarded to the teacher ({int((~k).sum())})", color="C3")
        ax.axvline(cascades["energy"].threshold_, color="k", ls="--", lw=1, label="calibrated threshold")
        ax.set_xlabel("-F^o (student, test canvases)")
        ax.set_ylabel("images")
        ax.legend(fontsize=8)
        save(fig, path)

    empty = np.array([len(t["boxes"]) == 0 for t in test.targets])
    nob = test.student.n_boxes.numpy() == 0
    head = ["model / router", "mAP %", "mAP@0.5 %", "% of teacher mAP", "forwarded %", "MFLOPs/img",
            "FLOPs ratio (teacher / x)", "ms/img (measured)", "measured speed-up"]
    setup = (f"Canvases: {data.meta['config']} (seed {args.seed}); test: {n} canvases, {int(empty.sum())} empty. "
             f"Student {preset['student']} ({fs / 1e6:.2f} MFLOPs, {metas['student'].get('params')} params, trained "
             f"{metas['student'].get('train_seconds', float('nan')):.0f} s); teacher {preset['teacher']} "
             f"({ft / 1e6:.2f} MFLOPs, {metas['teacher'].get('params')} params, trained "
             f"{metas['teacher'].get('train_seconds', float('nan')):.0f} s); FLOPs ratio {ft / fs:.1f}x. "
             f"B = the student's final detections with score >= 0.3; an image with none ({int(nob.sum())} test images, "
             f"{int((nob & empty).sum())} of them empty) takes its best grid location whatever its score. "
             f"Thresholds fitted on {rec['calib'].n} calibration canvases (tolerance {args.tolerance}); the calibration "
             f"sweep evaluates {grid} score quantiles ({max(4, grid // 3)} for random) plus keep-all and keep-none; "
             f"the test curves {preset['curve_grid']}.")
    timing = (f"Measured: CPU time of one thread, {rounds} interleaved rounds over the {n} test canvases in batches of "
              f"{args.batch_size}, median; decode (NMS) included, the teacher alone decodes without the energy. The random "
              f"router's runtime draws its seeded scores per batch, so it forwards other images (about the same share) "
              f"than its simulation. "
              f"Runtime vs simulation on test: {agree}. FLOPs count the forward passes only (NMS not counted).")
    sections = [
        Section("results", "Test canvases: calibrated operating points",
                setup + "\n\n" + markdown_table(head, table) + f"\n\n{verdict}\n\n{timing}\n",
                {"rows": rows, "thresholds": {r: c.threshold_ for r, c in cascades.items()},
                 "calibration": {r: {"map": c.calib_map_, "teacher_map": c.teacher_calib_map_,
                                     "share_forwarded": c.calib_share_forwarded_} for r, c in cascades.items()},
                 "runtime_equals_simulation": agree, "latency": {k: {kk: vv for kk, vv in v.items() if kk != "times_ms"}
                                                                 for k, v in lat.items()},
                 "empty_test_images": int(empty.sum()), "no_box_test_images": int(nob.sum()),
                 "empty_forwarded_by_energy": int((empty & ~outcomes["energy"].keep).sum()),
                 "target_met": met},
                {"map_flops.png": lambda p: curve_plot(p, False), "map_time.png": lambda p: curve_plot(p, True),
                 "energy_hist.png": hist}),
        Section("curves", "mAP-cost curves (test sweep)",
                "Each router's sweep on the test canvases (for the curve only; operating points come from calibration).\n\n"
                + markdown_table(["router", "threshold", "forwarded %", "MFLOPs/img", "ms/img (from measured)", "mAP %",
                                  "mAP@0.5 %"],
                                 [[r, f"{c.settings[i, 0]:.3f}", f"{100 * c.extra['reach'][i, 1]:.1f}",
                                   f"{c.cost[i] / 1e6:.2f}",
                                   f"{1e3 * (per_img['student'] + c.extra['reach'][i, 1] * per_img['teacher']):.3f}",
                                   f"{100 * c.accuracy[i]:.2f}", f"{100 * c.extra['map_50'][i]:.2f}"]
                                  for r, c in curves.items() for i in range(len(c))]) + "\n",
                {r: {"threshold": c.settings[:, 0].tolist(), "map": c.accuracy.tolist(), "mean_flops": c.cost.tolist(),
                     "share_forwarded": c.extra["reach"][:, 1].tolist(), "map_50": c.extra["map_50"].tolist()}
                 for r, c in curves.items()}),
    ]
    results = {"provenance": provenance({**vars(args), "preset": preset}, args.seed),
               "models": {k: {kk: v.get(kk) for kk in ("config", "recipe", "flops", "params", "train_seconds",
                                                        "checkpoint")} for k, v in metas.items()},
               "seconds": time.perf_counter() - t0}
    write_report(args.out, title="EBJR for object detection (section 2.3)", sections=sections, results=results,
                 extras=[lambda folder: cascades["energy"].save(folder)])
    print(f"[bench] wrote {args.out}/report.md and results.json ({time.perf_counter() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
