"""Core subcommands: list registries, train a backbone, record traces."""

from __future__ import annotations

import argparse

from .cli import COMMANDS, Command, add_common


def _list_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("kind", nargs="?", default="all", choices=["all", "datasets", "models", "scores", "presets", "commands"])
    p.add_argument("--pattern", default="*", help="glob filter on names")


def _list_run(args: argparse.Namespace) -> int:
    from .cli import COMMANDS as cmds
    from .data import DATASETS
    from .models import BACKBONES
    from .presets import PRESETS
    from .scores import SCORES

    regs = {"datasets": DATASETS, "models": BACKBONES, "scores": SCORES, "presets": PRESETS, "commands": cmds}
    for kind, reg in regs.items():
        if args.kind in ("all", kind):
            print(f"{kind}: {', '.join(reg.names(args.pattern))}")
    return 0


def _train_args(p: argparse.ArgumentParser) -> None:
    add_common(p)
    p.add_argument("--models", nargs="*", default=None, help="models of the preset to train (default: all)")


def _train_run(args: argparse.Namespace) -> int:
    from .harness import prepare

    prep = prepare(args.dataset, args.preset, seed=args.seed, data_root=args.data_root, models=args.models,
                   device=args.device, progress=not args.no_progress)
    for name, meta in prep.model_meta.items():
        print(f"{name}: test accuracy {meta['test_accuracy']:.4f}, {meta['flops'] / 1e6:.2f} MFLOPs, "
              f"{meta['params']} parameters")
    return 0


COMMANDS.register("list", Command("list registered datasets, models, scores, presets", _list_args, _list_run))
COMMANDS.register("train", Command("train (or reuse cached) models of a preset and record their traces",
                                   _train_args, _train_run))
