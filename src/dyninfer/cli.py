"""The ``dyninfer`` command. Each method contributes subcommands through :data:`COMMANDS`."""

from __future__ import annotations

import argparse
import importlib
import sys
from dataclasses import dataclass
from typing import Callable

from .errors import DyninferError
from .registry import Registry


@dataclass(frozen=True)
class Command:
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int | None]


COMMANDS: Registry[Command] = Registry("command")

# Modules that register subcommands when imported.
COMMAND_MODULES = [
    "dyninfer.commands_core",
    "dyninfer.methods.cascade.cli",
    "dyninfer.methods.early_exit.cli",
    "dyninfer.methods.selection.cli",
]


def add_common(p: argparse.ArgumentParser) -> None:
    """Options shared by commands that train or reuse models."""
    p.add_argument("--dataset", default="fashion-mnist", help="dataset registry name (default: fashion-mnist)")
    p.add_argument("--data-root", default=None, help="dataset folder (default: the dataset's own default)")
    p.add_argument("--preset", default="quick", help="quick (first run, CI), full (benchmark figures) or tiny")
    p.add_argument("--seed", type=int, default=0, help="seed of splits and training")
    p.add_argument("--device", default="cpu", help="torch device (cpu, cuda, cuda:1)")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")


def build_parser() -> argparse.ArgumentParser:
    for mod in COMMAND_MODULES:
        importlib.import_module(mod)
    parser = argparse.ArgumentParser(prog="dyninfer", description="Dynamic inference: spend compute per input.")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in COMMANDS:
        cmd = COMMANDS.get(name)
        p = sub.add_parser(name, help=cmd.help, description=cmd.help)
        cmd.add_arguments(p)
        p.set_defaults(_run=cmd.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args._run(args) or 0)
    except DyninferError as e:
        print(f"dyninfer: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("dyninfer: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
