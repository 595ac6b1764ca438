"""``dyninfer select``: the adaptive backbone-selection experiment and its report."""

from __future__ import annotations

import argparse
import os
import shlex
import sys

from ...cli import COMMANDS, Command, add_common


def _args(p: argparse.ArgumentParser) -> None:
    add_common(p)
    p.add_argument("--out", default="reports/selection", help="report folder (replaced atomically)")
    p.add_argument("--lambdas", type=float, nargs="+", default=None, help="reward weights to sweep")
    p.add_argument("--table-lambdas", type=float, nargs="*", default=None,
                   help="lambdas run for real in Table 1 (the chosen one is always added)")
    p.add_argument("--features", default="pixels", choices=["pixels", "early-block"],
                   help="shared features of the main policy")
    p.add_argument("--grid", type=int, default=7, help="pooled feature map side")
    p.add_argument("--epochs", type=int, default=None, help="REINFORCE epochs (default: PolicyConfig's)")
    p.add_argument("--serving-batch", type=int, default=256, help="runtime batch size")
    p.add_argument("--timing-rounds", type=int, default=3, help="interleaved rounds of the real test-set runs")
    p.add_argument("--cost-rounds", type=int, default=3, help="interleaved rounds of backbone latency measurements")
    p.add_argument("--manager-stream", type=int, default=10000, help="test images streamed through the manager")
    p.add_argument("--tv-pool", nargs="*", default=None,
                   help="torchvision backbones for the half-budget manager figure (none: skip it)")
    p.add_argument("--tv-stream", type=int, default=8192, help="images streamed through the torchvision pool")
    p.add_argument("--tv-batches", type=int, nargs="+", default=[1024, 2048],
                   help="batch sizes of the torchvision-pool stream (the largest is the headline figure)")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")


def _run(args: argparse.Namespace) -> int:
    from .experiment import SelectionExperimentConfig, run_experiment
    from .policy import PolicyConfig
    from .report import write_report

    kw = {}
    if args.lambdas:
        kw["lambdas"] = tuple(args.lambdas)
    if args.table_lambdas is not None:
        kw["table_lambdas"] = tuple(args.table_lambdas)
    if args.tv_pool is not None:
        kw["tv_pool"] = tuple(args.tv_pool)
    policy = PolicyConfig(seed=args.seed, **({"epochs": args.epochs} if args.epochs else {}))
    cfg = SelectionExperimentConfig(
        dataset=args.dataset, data_root=args.data_root, preset=args.preset, seed=args.seed, features=args.features,
        grid=args.grid, policy=policy, serving_batch=args.serving_batch, timing_rounds=args.timing_rounds,
        cost_rounds=args.cost_rounds,
        manager_stream=args.manager_stream, tv_stream=args.tv_stream, tv_batches=tuple(args.tv_batches),
        device=args.device, threads=args.threads,
        progress=not args.no_progress, **kw)
    res = run_experiment(cfg)
    prog = sys.argv[0] if sys.argv else "dyninfer"
    head = "dyninfer" if prog.endswith("dyninfer") else f"python {os.path.relpath(prog)}"
    command = " ".join([head] + [shlex.quote(a) for a in sys.argv[1:]])
    folder = write_report(res, args.out, command)
    f = res["figures"]
    print(f"[report] {folder}/report.md")
    for k, v in f.items():
        print(f"  {k}: {v}")
    return 0


COMMANDS.register("select", Command("adaptive backbone selection (ABS): train the policy, evaluate, report",
                                    _args, _run))
