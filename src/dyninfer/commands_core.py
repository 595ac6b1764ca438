"""Core subcommands: ``list``, ``train``, ``run`` (one method), ``compare`` (every method), ``export``, and the short
aliases ``cascade``, ``early-exit`` and ``select`` for ``run METHOD``."""

from __future__ import annotations

import argparse

from .cli import COMMANDS, FIGURE_OPTIONS, Command, add_common, add_measurement, parse_settings
from .errors import ConfigError


def _list_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("kind", nargs="?", default="all",
                   choices=["all", "datasets", "models", "scores", "presets", "methods", "commands"])
    p.add_argument("--pattern", default="*", help="glob filter on names")


def _list_run(args: argparse.Namespace) -> int:
    from .cli import COMMANDS as cmds
    from .data import DATASETS
    from .methods import METHODS
    from .models import BACKBONES
    from .presets import PRESETS
    from .scores import SCORES

    regs = {"datasets": DATASETS, "models": BACKBONES, "scores": SCORES, "presets": PRESETS, "methods": METHODS,
            "commands": cmds}
    for kind, reg in regs.items():
        if args.kind not in ("all", kind):
            continue
        if kind == "methods" and args.kind == "methods":
            for name in reg.names(args.pattern):
                cls = reg.get(name)
                task = "" if cls.task == "classification" else f" ({cls.task}: student and teacher)"
                print(f"{name}: {cls.__name__} on a {cls.path_kind} path set{task}; settings: "
                      f"{', '.join(cls.param_names())}")
        else:
            print(f"{kind}: {', '.join(reg.names(args.pattern))}")
    return 0


def _train_args(p: argparse.ArgumentParser) -> None:
    add_common(p)
    p.add_argument("--kind", choices=["pool", "staged", "all"], default="all",
                   help="which of the preset's path sets to train: its pool of models, its early-exit network, or both")


def _train_run(args: argparse.Namespace) -> int:
    from .harness import load_data, prepare
    from .presets import get_preset

    preset = get_preset(args.preset)
    data = load_data(args.dataset, preset, seed=args.seed, data_root=args.data_root)
    for kind in (["pool", "staged"] if args.kind == "all" else [args.kind]):
        prep = prepare(args.dataset, preset, kind=kind, seed=args.seed, data=data, device=args.device,
                       progress=not args.no_progress)
        for name, acc in zip(prep.test.paths, prep.test.correct.mean(1)):
            print(f"{kind} {name}: test accuracy {acc:.4f}, {prep.test.cost(name).flops / 1e6:.2f} MFLOPs")
    return 0


def _run_options(p: argparse.ArgumentParser, *, method: str | None) -> None:
    if method is None:
        p.add_argument("method", help="registry name (dyninfer list methods)")
    add_common(p)
    add_measurement(p)
    p.add_argument("--out", default=None, help="run folder (default: reports/<method>-<dataset>-<preset>)")
    p.add_argument("--set", dest="params", action="append", metavar="KEY=VALUE",
                   help="a method setting (JSON value), e.g. --set tolerance=0.005 --set 'scores=[\"margin\"]'")
    p.add_argument("--no-figures", action="store_true", help="skip the method's own figures")
    if method is None:
        p.add_argument("--figure", dest="figure_settings", action="append", metavar="KEY=VALUE",
                       help="a setting of the method's own figures (JSON value)")
    elif method in FIGURE_OPTIONS:
        FIGURE_OPTIONS.get(method).add(p)


def _run(args: argparse.Namespace, method: str | None = None) -> int:
    from .pipeline import RunConfig, run

    name = method or args.method
    if args.no_figures:
        figures = None
    elif method is not None and method in FIGURE_OPTIONS:
        figures = FIGURE_OPTIONS.get(method).read(args)
    else:
        figures = parse_settings(getattr(args, "figure_settings", None), "--figure")
    cfg = RunConfig(method=name, preset=args.preset, dataset=args.dataset, data_root=args.data_root, seed=args.seed,
                    device=args.device, params=parse_settings(args.params), figures=figures,
                    serving_batch=args.serving_batch, threads=args.threads, clock=args.clock,
                    grid_g_per_kwh=args.grid_intensity, cpu_watts_per_thread=args.cpu_watts_per_thread,
                    progress=not args.no_progress)
    run(cfg, args.out or f"reports/{name}-{args.dataset}-{args.preset}", command=args.command_line)
    return 0


def _compare_args(p: argparse.ArgumentParser) -> None:
    add_common(p)
    add_measurement(p)
    p.add_argument("--out", default=None, help="report folder (default: reports/compare-<dataset>-<preset>)")
    p.add_argument("--methods", nargs="+", default=None, help="methods to compare (default: every registered one)")
    p.add_argument("--set", dest="params", action="append", metavar="METHOD.KEY=VALUE",
                   help="a method setting (JSON value), e.g. --set cascade.scores='[\"margin\"]'")
    p.add_argument("--tolerance", type=float, default=0.005,
                   help="accuracy every method may lose against its reference path (default 0.005 = half a point; "
                        "a method's own --set METHOD.tolerance=... wins)")


def _compare_run(args: argparse.Namespace) -> int:
    from .compare import CompareConfig, compare
    from .errors import ConfigError

    params: dict[str, dict] = {}
    for key, value in parse_settings(args.params).items():
        method, dot, setting = key.partition(".")
        if not dot:
            raise ConfigError(f"--set takes METHOD.KEY=VALUE in compare, got {key!r}")
        params.setdefault(method, {})[setting] = value
    cfg = CompareConfig(preset=args.preset, dataset=args.dataset, data_root=args.data_root, seed=args.seed,
                        device=args.device, methods=tuple(args.methods) if args.methods else None, params=params,
                        tolerance=args.tolerance,
                        serving_batch=args.serving_batch, threads=args.threads, clock=args.clock,
                        grid_g_per_kwh=args.grid_intensity, cpu_watts_per_thread=args.cpu_watts_per_thread,
                        progress=not args.no_progress)
    compare(cfg, args.out or f"reports/compare-{args.dataset}-{args.preset}", command=args.command_line)
    return 0


COMMANDS.register("list", Command("list registered datasets, models, scores, presets, methods", _list_args, _list_run))
COMMANDS.register("train", Command("train (or reuse cached) paths of a preset and record their traces",
                                   _train_args, _train_run))
COMMANDS.register("run", Command("run one method end to end: paths, costs, fit, runtime, report and saved policy",
                                 lambda p: _run_options(p, method=None), _run))
COMMANDS.register("compare", Command("every method on the same data, splits and test trace: one table, one set of plots",
                                     _compare_args, _compare_run))


def alias(command: str, method: str, help: str) -> None:
    """Register ``dyninfer COMMAND`` as ``dyninfer run METHOD`` (with the method's figure options)."""
    COMMANDS.register(command, Command(help, lambda p: _run_options(p, method=method),
                                       lambda a: _run(a, method=method)))


alias("cascade", "cascade", "= run cascade: EBJR cascades, routers compared, the best run for real")


def _export_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("policy", help="a saved policy: DIR (from `dyninfer run METHOD --out DIR`) or DIR/policy")
    p.add_argument("--format", default="onnx", choices=["onnx"], help="export format (default onnx)")
    p.add_argument("--out", required=True, help="export folder (replaced whole)")
    p.add_argument("--no-single-graph", action="store_true", help="skip the one-graph export of a cascade")
    p.add_argument("--atol", type=float, default=1e-3, help="largest torch/onnxruntime difference accepted")


def _export_run(args: argparse.Namespace) -> int:
    try:
        from .export.onnx import export_policy
    except ImportError as e:
        raise ConfigError(f"export needs the onnx extra ({e.name} is missing): pip install 'dyninfer[onnx]'") from None
    export_policy(args.policy, args.out, fmt=args.format, single_graph=not args.no_single_graph, atol=args.atol)
    return 0


COMMANDS.register("export", Command("export a saved policy (every path, its score or decision, the knob) to ONNX",
                                    _export_args, _export_run))
