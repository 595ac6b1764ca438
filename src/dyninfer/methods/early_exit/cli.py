"""``dyninfer early-exit`` (= ``dyninfer run early-exit``) and the options of the early-exit figures."""

from __future__ import annotations

import argparse

from ...cli import FIGURE_OPTIONS, FigureOptions
from ...commands_core import alias


def _add(p: argparse.ArgumentParser) -> None:
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
    p.add_argument("--figure-clock", choices=["cpu", "wall"], default="cpu",
                   help="clock of the Table 1 batch-1 timings: cpu (default; CPU time of the one timing thread, robust "
                        "when other jobs share the CPU) or wall")


def _read(args: argparse.Namespace) -> dict:
    from .select import DEFAULT_CANDIDATES

    select = () if args.select is None else (tuple(args.select) or DEFAULT_CANDIDATES)
    return {"subsets": tuple(args.subsets), "adaptations": tuple(args.adapt), "select_from": select,
            "select_folds": args.select_folds, "stream_seeds": args.stream_seeds, "adapt_threshold": args.adapt_threshold,
            "adapt_batch": args.adapt_batch, "clock": args.figure_clock}


FIGURE_OPTIONS.register("early-exit", FigureOptions(_add, _read))
alias("early-exit", "early-exit", "= run early-exit: threshold exiting, Table 1, test-time specialisation (Figure 4)")
