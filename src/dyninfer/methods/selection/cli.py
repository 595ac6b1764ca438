"""``dyninfer select`` (= ``dyninfer run selection``) and the options of the selection figures."""

from __future__ import annotations

import argparse

from ...cli import FIGURE_OPTIONS, FigureOptions
from ...commands_core import alias


def _add(p: argparse.ArgumentParser) -> None:
    p.add_argument("--variants", nargs="*", default=None,
                   help="ablation policies trained beside the main one (default: without complexity, complexity only, "
                        "early-block features)")
    p.add_argument("--manager-stream", type=int, default=10000, help="test images streamed through the manager")
    p.add_argument("--tv-pool", nargs="*", default=None,
                   help="torchvision backbones for the half-budget manager figure (given with no names: skip it)")
    p.add_argument("--tv-stream", type=int, default=8192, help="images streamed through the torchvision pool")
    p.add_argument("--tv-batches", type=int, nargs="+", default=[1024, 2048],
                   help="batch sizes of the torchvision-pool stream (the largest is the headline figure)")


def _read(args: argparse.Namespace) -> dict:
    out = {"manager_stream": args.manager_stream, "tv_stream": args.tv_stream, "tv_batches": tuple(args.tv_batches)}
    if args.tv_pool is not None:
        out["tv_pool"] = tuple(args.tv_pool)
    if args.variants is not None:
        out["variants"] = tuple(args.variants)
    return out


FIGURE_OPTIONS.register("selection", FigureOptions(_add, _read))
alias("select", "selection", "= run selection: adaptive backbone selection, ablations, the backbone manager")
