"""``dyninfer early-exit``: the early-exit benchmark (Table 1, Figure 4, targets) into one report folder."""

from __future__ import annotations

import argparse
import shlex

from ...cli import COMMANDS, Command


def _args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", default="quick", help="quick (smoke run, < 2 min), full (the issue's figures) or tiny")
    p.add_argument("--dataset", default="fashion-mnist", help="dataset registry name (default: fashion-mnist)")
    p.add_argument("--data-root", default=None, help="dataset folder (default: the dataset's own default)")
    p.add_argument("--seed", type=int, default=0, help="seed of splits, training and streams")
    p.add_argument("--score", default="max_softmax", help="exit score (max_softmax, energy, entropy, margin)")
    p.add_argument("--subsets", nargs="*", default=[], help="class subsets to adapt on (default: all known for the dataset)")
    p.add_argument("--adapt", nargs="+", default=["1e-4"], metavar="LR[:LR_SCALE[:PASSES]]",
                   help="head-update settings, run side by side: SGD learning rate (paper: 1e-4), optionally "
                        "lr_scale (none, or input-norm: lr divided by each head's mean squared input norm) and "
                        "passes over the stream, e.g. 1e-4 0.3:input-norm:3")
    p.add_argument("--select", nargs="*", default=None, metavar="LR[:LR_SCALE[:PASSES]]",
                   help="choose the head-update setting per subset by cross-validation on the calibration split "
                        "(never the test split) among these candidates (none given: a default grid of plain and "
                        "input-norm steps); the chosen one is then evaluated on the test split beside --adapt")
    p.add_argument("--select-folds", type=int, default=5, help="folds of that cross-validation (default 5)")
    p.add_argument("--stream-seeds", type=int, default=1,
                   help="streams drawn (other images and order) per setting; figures report mean and spread")
    p.add_argument("--adapt-threshold", type=float, default=0.9, help="exit threshold while adapting (default 0.9)")
    p.add_argument("--adapt-batch", type=int, default=1, help="stream images per head update (paper: 1)")
    p.add_argument("--training", choices=["joint", "two-stage"], default=None, help="override the preset's training mode")
    p.add_argument("--clock", choices=["cpu", "wall"], default="cpu",
                   help="batch-1 latency clock: cpu = CPU time of the timing thread (default; robust when other jobs "
                        "share the CPU), wall = wall clock")
    p.add_argument("--device", default="cpu", help="torch device")
    p.add_argument("--out", default=None, help="report folder (default: reports/early-exit-<preset>)")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")


def _command(args: argparse.Namespace, out: str) -> str:
    """The equivalent ``dyninfer early-exit`` command line, from the parsed options (for the report)."""
    parts = ["dyninfer", "early-exit", "--preset", args.preset, "--dataset", args.dataset, "--seed", str(args.seed),
             "--score", args.score, "--adapt", *args.adapt, "--stream-seeds", str(args.stream_seeds),
             "--adapt-threshold", f"{args.adapt_threshold:g}", "--adapt-batch", str(args.adapt_batch),
             "--clock", args.clock, "--out", out]
    if args.select is not None:
        parts += ["--select", *args.select, "--select-folds", str(args.select_folds)]
    if args.subsets:
        parts += ["--subsets", *args.subsets]
    if args.training:
        parts += ["--training", args.training]
    if args.data_root:
        parts += ["--data-root", args.data_root]
    return " ".join(shlex.quote(p) for p in parts)


def _candidates(select: list[str] | None) -> tuple[str, ...]:
    from .select import DEFAULT_CANDIDATES

    if select is None:
        return ()
    return tuple(select) or DEFAULT_CANDIDATES


def _run(args: argparse.Namespace) -> int:
    from .benchmark import BenchmarkConfig, run
    from .report import write_report

    cfg = BenchmarkConfig(preset=args.preset, dataset=args.dataset, data_root=args.data_root, seed=args.seed,
                          score=args.score, subsets=tuple(args.subsets), adaptations=tuple(args.adapt),
                          stream_seeds=args.stream_seeds, select_from=_candidates(args.select),
                          select_folds=args.select_folds,
                          adapt_threshold=args.adapt_threshold, adapt_batch=args.adapt_batch, training=args.training,
                          clock=args.clock, device=args.device, progress=not args.no_progress)
    res = run(cfg)
    out = args.out or f"reports/early-exit-{args.preset}"
    command = _command(args, out)
    write_report(res, out, command=command)
    print(f"[report] {out}/REPORT.md")
    return 0


COMMANDS.register("early-exit", Command("early-exit network with test-time specialisation: Table 1, Figure 4, targets",
                                        _args, _run))
