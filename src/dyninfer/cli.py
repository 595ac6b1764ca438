"""The ``dyninfer`` command. Subcommands come from :data:`COMMANDS`; a method's own figures may add
options to ``dyninfer run METHOD`` through :data:`FIGURE_OPTIONS`."""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from dataclasses import dataclass
from typing import Any, Callable

from .errors import ConfigError, DyninferError
from .registry import Registry
from .report.writer import command_line


@dataclass(frozen=True)
class Command:
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int | None]


@dataclass(frozen=True)
class FigureOptions:
    """Command-line options of a method's own figures: ``add(parser)`` adds them, ``read(args)`` returns
    the figure settings (a dict for the method's figures config)."""

    add: Callable[[argparse.ArgumentParser], None]
    read: Callable[[argparse.Namespace], dict]


COMMANDS: Registry[Command] = Registry("command")
FIGURE_OPTIONS: Registry[FigureOptions] = Registry("figure options")

# Modules that register subcommands and figure options when imported.
COMMAND_MODULES = [
    "dyninfer.commands_core",
    "dyninfer.methods.bigsmall.cli",
    "dyninfer.methods.early_exit.cli",
    "dyninfer.methods.selection.cli",
    "dyninfer.serve.cli",
]


def add_common(p: argparse.ArgumentParser) -> None:
    """Options shared by commands that train or reuse models."""
    p.add_argument("--dataset", default="fashion-mnist", help="dataset registry name (default: fashion-mnist)")
    p.add_argument("--data-root", default=None, help="dataset folder (default: the dataset's own default)")
    p.add_argument("--preset", default="quick", help="quick (first run, CI), full (benchmark figures) or tiny")
    p.add_argument("--seed", type=int, default=0, help="seed of splits and training")
    p.add_argument("--device", default="cpu", help="torch device (cpu, cuda, cuda:1)")
    p.add_argument("--no-progress", action="store_true",
                   help="hide progress bars (always hidden when standard error is not a terminal)")


def add_measurement(p: argparse.ArgumentParser) -> None:
    """Options of the runs that time and measure."""
    from .runtime.cost import DEFAULT_CPU_WATTS_PER_THREAD, DEFAULT_GRID_G_PER_KWH

    p.add_argument("--serving-batch", type=int, default=256, help="batch size of throughput and energy (default 256)")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads for the run (default: torch's)")
    p.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                   help="batch-1 clock: wall (default) or cpu (CPU time of the timing thread; use with --threads 1)")
    p.add_argument("--grid-intensity", type=float, default=DEFAULT_GRID_G_PER_KWH,
                   help=f"gCO2 per kWh (default {DEFAULT_GRID_G_PER_KWH:g})")
    p.add_argument("--cpu-watts-per-thread", type=float, default=DEFAULT_CPU_WATTS_PER_THREAD,
                   help=f"power model where no energy counter exists (default {DEFAULT_CPU_WATTS_PER_THREAD:g} W per "
                        f"busy thread)")


def parse_settings(items: list[str] | None, what: str = "--set") -> dict[str, Any]:
    """``KEY=VALUE`` strings -> dict; values are JSON when they parse as JSON, else strings."""
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"{what} takes KEY=VALUE, got {item!r} (e.g. {what} tolerance=0.005)")
        try:
            out[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            out[key.strip()] = value
    return out


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
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
    argv = sys.argv[1:] if argv is None else argv
    try:
        args = build_parser().parse_args(argv)
        args.command_line = command_line(["dyninfer", *argv])
        if hasattr(args, "no_progress") and not sys.stderr.isatty():
            args.no_progress = True  # a log file gets the one-line summaries, not redrawn bars
        return int(args._run(args) or 0)
    except DyninferError as e:
        print(f"dyninfer: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("dyninfer: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
