"""``dyninfer cascade``: the EBJR experiment end to end, written to a report folder."""

from __future__ import annotations

import argparse

from ...cli import COMMANDS, Command, add_common
from ...runtime.cost import DEFAULT_CPU_WATTS_PER_THREAD, DEFAULT_GRID_G_PER_KWH


def _args(p: argparse.ArgumentParser) -> None:
    from .experiment import ROUTERS

    add_common(p)
    p.add_argument("--out", default=None, help="report folder (default: reports/cascade-<dataset>-<preset>)")
    p.add_argument("--models", nargs="+", default=None,
                   help="subset of the preset's models, cheapest first; the last is the teacher (default: all)")
    p.add_argument("--routers", nargs="+", default=list(ROUTERS), choices=list(ROUTERS), help="routers to compare")
    p.add_argument("--tolerance", type=float, default=0.001,
                   help="accuracy the cascade may lose against the teacher, as a fraction (default 0.001 = 0.1 points)")
    p.add_argument("--confidence", type=float, default=0.95,
                   help="family-wise one-sided confidence that the chosen cascade keeps the tolerance on "
                        "calibration (default 0.95, Bonferroni over the candidates compared)")
    p.add_argument("--serving-batch", type=int, default=256, help="batch size for throughput (default 256)")
    p.add_argument("--grid-intensity", type=float, default=DEFAULT_GRID_G_PER_KWH,
                   help=f"gCO2 per kWh (default {DEFAULT_GRID_G_PER_KWH:g})")
    p.add_argument("--cpu-watts-per-thread", type=float, default=DEFAULT_CPU_WATTS_PER_THREAD,
                   help=f"power model used where no energy counter exists (default {DEFAULT_CPU_WATTS_PER_THREAD:g} W "
                        f"per busy thread)")


def _run(args: argparse.Namespace) -> int:
    from .experiment import CascadeExperimentConfig, run_experiment
    from .report import write_report

    cfg = CascadeExperimentConfig(dataset=args.dataset, data_root=args.data_root, preset=args.preset, seed=args.seed,
                                  models=tuple(args.models) if args.models else None,
                                  routers=tuple(args.routers), tolerance=args.tolerance,
                                  confidence=args.confidence,
                                  serving_batch=args.serving_batch, grid_g_per_kwh=args.grid_intensity,
                                  cpu_watts_per_thread=args.cpu_watts_per_thread, device=args.device,
                                  progress=not args.no_progress)
    out = args.out or f"reports/cascade-{args.dataset}-{args.preset}"
    res = run_experiment(cfg)
    write_report(res, out)
    b, t, rt = res["best"], res["teacher"], res["runtime"]
    print(f"\nbest cascade {' > '.join(b['chain'])} ({b['router']}): test accuracy {100 * b['test_accuracy']:.2f}% "
          f"(teacher {100 * t['test_accuracy']:.2f}%), {b['flops_saving']:.2f}x fewer FLOPs, "
          f"{rt['throughput_ratio']:.2f}x teacher throughput at batch {rt['serving_batch']}, "
          f"measured/predicted time {rt['measured_over_predicted']['cascade']:.3f}")
    print(f"report: {out}/report.md ({res['seconds_total']:.0f} s)")
    return 0


COMMANDS.register("cascade", Command("train/reuse models, trace, sweep routers, run the best cascade, write a report",
                                     _args, _run))
