"""``dyninfer compare``: every registered family on the same data, the same splits and the same test images.

Each method runs the shared pipeline (:func:`dyninfer.pipeline.evaluate`: costs measured once per
run, fit and operating point on calibration, runtime checked against the trace and timed side by
side with its plain reference model, energy). The report puts them in one table and one set of
plots — accuracy against FLOPs, against measured time per image at batch 1 and at the serving
batch, and against energy — with each family's curve, its oracle, the static models and the
operating points chosen on calibration. Curves on the time and energy axes are predicted from the
measured path costs; the operating points and the static models there are measured.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from .check import number
from .errors import ConfigError
from .harness import load_data, prepare
from .methods import METHODS, create_method
from .methods.base import _jsonable as jsonable
from .evaluate.simulate import curve_times
from .pipeline import Evaluation, RunConfig, RunSettings, evaluate
from .presets import get_preset
from .report.plots import tradeoff_plot
from .report.tables import markdown_table
from .report.writer import Section, provenance, write_report
from .runtime.cost import torch_threads

COLORS = {"cascade": "C0", "early-exit": "C1", "selection": "C2"}


@dataclass(kw_only=True)
class CompareConfig(RunSettings):
    """Settings of ``dyninfer compare`` (the shared ones: :class:`~dyninfer.pipeline.RunSettings`).

    Attributes:
        methods: methods to compare (None: every registered one that is not experimental).
        params: method name -> its settings.
        tolerance: the accuracy every method may lose against its reference path (0.005 = half a point), so that
            the operating points are chosen alike; a method's own ``tolerance`` in ``params`` wins.
    """

    methods: tuple[str, ...] | None = None
    params: dict = field(default_factory=dict)
    tolerance: float | None = 0.005

    def __post_init__(self) -> None:
        if self.methods is not None and (not isinstance(self.methods, (list, tuple))
                                         or not all(isinstance(m, str) for m in self.methods)):
            raise ConfigError(f"methods must be a list of method names, got {self.methods!r}")
        if not isinstance(self.params, dict) or not all(isinstance(v, dict) for v in self.params.values()):
            raise ConfigError(f"params must map method names to dicts of settings, got {self.params!r}")
        for m in list(self.methods or ()) + list(self.params):
            if METHODS.get(m).task != "classification":
                raise ConfigError(f"{m} answers a {METHODS.get(m).task} task, not the classifiers' one that compare "
                                  f"runs on; run it alone with: dyninfer run {m}")
        number("tolerance", self.tolerance, lo=0, hi=1, hi_open=True, none_ok=True)
        super().__post_init__()

    def run_config(self, method: str) -> RunConfig:
        params = dict(self.params.get(method, {}))
        if self.tolerance is not None:
            params.setdefault("tolerance", self.tolerance)
        return RunConfig(**self.settings(), method=method, params=params, figures=None)


def compare(cfg: CompareConfig, out: str | Path, *, log: Callable[[str], None] = print,
            command: str | None = None) -> Path:
    """Run every method through the shared pipeline on one dataset and write the comparison report."""
    t0 = time.perf_counter()
    names = list(cfg.methods or [n for n in METHODS.names()
                                 if not METHODS.get(n).experimental and METHODS.get(n).task == "classification"])
    if not names:
        raise ConfigError("no methods to compare")
    preset = get_preset(cfg.preset)
    evals: dict[str, Evaluation] = {}
    with torch_threads(cfg.threads):
        data = load_data(cfg.dataset, preset, seed=cfg.seed, data_root=cfg.data_root, log=log)
        prepared = {}
        for name in names:
            method = create_method(name, **cfg.run_config(name).params)
            options = method.path_options()
            kind = (method.path_kind, json.dumps(jsonable(options), sort_keys=True))
            if kind not in prepared:
                prepared[kind] = prepare(cfg.dataset, preset, kind=method.path_kind, seed=cfg.seed, data=data,
                                         device=cfg.device, progress=cfg.progress, log=log, **options)
            log(f"[compare] {name}")
            evals[name] = evaluate(prepared[kind], method, cfg.run_config(name), log)
    rows, static = _table(evals)
    results = {"provenance": provenance(asdict(cfg), cfg.seed, command), "data": data.meta, "content": data.fingerprint,
               "preset": preset.name, "methods": {n: e.results for n, e in evals.items()}, "table": rows,
               "static": static, "seconds_total": time.perf_counter() - t0}
    sb = cfg.serving_batch
    md = [markdown_table(["system", "kind", "test acc %", "MFLOPs/img", "fewer FLOPs than its reference",
                          "batch 1 (ms/img)", f"batch {sb} (ms/img)", "energy (mJ/img)*", "guarantee held"],
                         [[r["system"], r["kind"], f"{100 * r['accuracy']:.2f}", f"{r['flops'] / 1e6:.3f}",
                           r["saving"], _ms(r["batch1_ms"]), _ms(r["serving_ms"], 4),
                           f"{1e3 * r['energy_j']:.4f}" if r["energy_j"] is not None else "—", r["held"]]
                          for r in rows + static]),
          f"\nMethods: the operating point chosen on the calibration split, run by the runtime and measured (median "
          f"of interleaved rounds beside the plain reference model). Static rows: every path alone, latency measured "
          f"in this run (an exit network's row is the plain network). \\* "
          f"{next(iter(evals.values())).results['energy']['policy']['source']}.\n"]
    for n, e in evals.items():
        op = e.results["operating_point"]
        md.append(f"- **{n}**: {op['statement']} Test loss {100 * op['test_loss']:+.2f} points: "
                  f"{'held' if op['held_on_test'] else 'did not hold'}.")
    plots = {f"accuracy_vs_{x}.png": (lambda p, x=x: _plot(evals, static, p, x, sb))
             for x in ("flops", "batch1", "serving", "energy")}
    intro = (f"{cfg.dataset} (train {data.meta['train']}, calibration {data.meta['calib']}, test {data.meta['test']} "
             f"images; content {data.fingerprint}), preset `{preset.name}`, seed {cfg.seed}; every method on the same "
             f"splits and the same test images.\n\nCommand: `{results['provenance']['command']}` · commit "
             f"{results['provenance']['git_commit']} · {results['seconds_total']:.0f} s.")
    sections = [Section("comparison", "Every family side by side", "\n".join(md), {}, plots)]
    folder = write_report(out, title=f"dyninfer compare — {cfg.dataset}, preset {preset.name}", sections=sections,
                          results=results, intro=intro)
    log(f"[done] comparison of {', '.join(names)}: {folder}/report.md ({time.perf_counter() - t0:.0f} s)")
    return folder


def _ms(v: float | None, digits: int = 3) -> str:
    return "—" if v is None else f"{v:.{digits}f}"


def _table(evals: dict[str, Evaluation]) -> tuple[list[dict], list[dict]]:
    rows, static, seen = [], [], set()
    for n, e in evals.items():
        r = e.results
        op, tm = r["operating_point"], r["timing"]
        rows.append({"system": n, "kind": r["kind"], "accuracy": op["test_accuracy"], "flops": op["test_flops"],
                     "saving": f"{op['flops_saving']:.2f}x", "batch1_ms": tm["batch1_ms_per_image"]["policy"],
                     "serving_ms": 1e3 / tm["throughput"]["policy"],
                     "energy_j": r["energy"]["policy"]["joules_per_image"], "held": "yes" if op["held_on_test"] else "no",
                     "method": n})
        if r["kind"] == "staged":  # the exit network as a plain model
            key = ("staged", r["paths"][-1])
            if key not in seen:
                seen.add(key)
                static.append({"system": f"{e.prep.preset.exit_model} (plain)", "kind": "static", "accuracy":
                               op["reference_test_accuracy"], "flops": op["reference_flops"], "saving": "—",
                               "batch1_ms": tm["batch1_ms_per_image"]["plain"], "serving_ms": 1e3 / tm["throughput"]["plain"],
                               "energy_j": r["energy"]["plain"]["joules_per_image"], "held": "—"})
            continue
        for s in r["static"]:
            if ("pool", s["path"]) in seen:
                continue
            seen.add(("pool", s["path"]))
            static.append({"system": s["path"], "kind": "static", "accuracy": s["test_accuracy"], "flops": s["flops"],
                           "saving": "—", "batch1_ms": s["batch1_ms"],
                           "serving_ms": 1e3 / s["throughput"] if s["throughput"] else None,
                           "energy_j": s["energy_j_per_image"], "held": "—"})
    return rows, static


def _plot(evals: dict[str, Evaluation], static: list[dict], path: Path, x: str, sb: int) -> None:
    curves, points = [], []
    for n, e in evals.items():
        c, col = e.test_curve, COLORS.get(n)
        if x == "flops":
            xs = c.cost / 1e6
        elif x == "energy":
            energy = np.array([cost.energy_j_per_sample for cost in e.own_test.costs])
            xs = 1e3 * (c.extra["reach"] @ energy)
        else:
            xs = curve_times(e.own_test, c, 1 if x == "batch1" else sb) * 1e3
        curves.append({"label": f"{n} (predicted)" if x != "flops" else n, "x": xs, "y": c.accuracy, "color": col})
        op, tm = e.results["operating_point"], e.results["timing"]
        px = {"flops": op["test_flops"] / 1e6, "batch1": tm["batch1_ms_per_image"]["policy"],
              "serving": 1e3 / tm["throughput"]["policy"],
              "energy": 1e3 * e.results["energy"]["policy"]["joules_per_image"]}[x]
        points.append({"label": f"{n} operating point" + (" (measured)" if x != "flops" else ""), "x": px,
                       "y": op["test_accuracy"], "marker": "o", "color": col, "ms": 10})
        if x == "flops":
            points.append({"label": f"{n} oracle", "x": e.oracle.mean_flops / 1e6, "y": e.oracle.accuracy,
                           "marker": "*", "color": col, "ms": 11})
    for s in static:
        px = {"flops": s["flops"] / 1e6, "batch1": s["batch1_ms"], "serving": s["serving_ms"],
              "energy": None if s["energy_j"] is None else 1e3 * s["energy_j"]}[x]
        if px:
            points.append({"label": s["system"], "x": px, "y": s["accuracy"], "marker": "s", "color": "0.3",
                           "legend": False, "annotate": s["system"]})
    label = {"flops": "MFLOPs per image", "batch1": "ms per image at batch 1 (measured points, predicted curves)",
             "serving": f"ms per image at batch {sb} (measured points, predicted curves)",
             "energy": "mJ per image (estimated unless a counter exists)"}[x]
    tradeoff_plot(path, curves=curves, points=points, xlabel=label, title="every family on the same test images")
