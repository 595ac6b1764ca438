"""One experiment pipeline for every method: ``dyninfer run METHOD [--preset P] [--dataset D] [--out DIR]``.

In this order:

1. prepare the data and the method's paths (trained or reused from the cache) and their traces;
2. measure every path's cost once, as a median over interleaved rounds;
3. fit on the calibration split (the operating point comes with the shared guarantee) and simulate
   on the test split; say whether the guarantee held there;
4. build the runtime, check that it agrees with the trace (:func:`~dyninfer.evaluate.agreement.agreement`),
   and time it side by side with the runtime forced to the reference path and the plain reference model;
5. estimate energy and CO2;
6. add the method's own figures, then write DIR: ``results.json``, ``report.md``, PNG plots and
   ``DIR/policy/`` (the fitted method and its paths, for :func:`dyninfer.policy.load_policy` and the server).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable

import torch

from .check import choice, number
from .check import device as check_device
from .errors import ConfigError
from .evaluate.agreement import agreement
from .evaluate.frontier import Curve
from .evaluate.outcome import Outcome
from .evaluate.simulate import curve_times, predicted_seconds
from .evaluate.stats import mcnemar
from .harness import Prepared, load_data, prepare
from .methods import FIGURES, METHODS, Method, create_method
from .methods.base import _jsonable as jsonable
from .paths import measure_costs
from .policy import save_policy
from .presets import get_preset
from .report.plots import tradeoff_plot
from .report.tables import markdown_table
from .report.writer import Section, provenance, write_report
from .runtime.cost import (CLOCKS, DEFAULT_CPU_WATTS_PER_THREAD, DEFAULT_GRID_G_PER_KWH, count_flops,
                           energy_per_sample, interleaved_latency, paired_overhead, torch_threads)
from .tasks import detection as _detection, regression as _regression  # noqa: F401  (task figures)
from .tasks import run_task
from .trace import Trace


@dataclass(kw_only=True)
class RunSettings:
    """What every run and comparison sets (unknown keys are errors).

    Attributes:
        preset: data, paths and measurement budget (``tiny``, ``quick``, ``full``).
        dataset, data_root: the data.
        seed: splits, training, the methods' randomness.
        device: torch device.
        serving_batch: batch size of throughput and energy measurements.
        threads: torch intra-op threads for the whole run (None: torch's default); restored after.
        clock: clock of the batch-1 timings, ``wall`` or ``cpu`` (CPU time of the timing thread).
        grid_g_per_kwh: grid carbon intensity for CO2.
        cpu_watts_per_thread: stated power model where no energy counter exists.
        progress: progress bars.
    """

    preset: str = "quick"
    dataset: str = "fashion-mnist"
    data_root: str | None = None
    seed: int = 0
    device: str = "cpu"
    serving_batch: int = 256
    threads: int | None = None
    clock: str = "wall"
    grid_g_per_kwh: float = DEFAULT_GRID_G_PER_KWH
    cpu_watts_per_thread: float = DEFAULT_CPU_WATTS_PER_THREAD
    progress: bool = True

    def __post_init__(self) -> None:
        get_preset(self.preset)
        check_device(self.device)
        number("seed", self.seed, integer=True)
        number("serving_batch", self.serving_batch, lo=1, integer=True)
        number("threads", self.threads, lo=1, integer=True, none_ok=True)
        choice("clock", self.clock, sorted(CLOCKS))
        number("grid_g_per_kwh", self.grid_g_per_kwh, lo=0)
        number("cpu_watts_per_thread", self.cpu_watts_per_thread, lo=0)

    def settings(self) -> dict:
        """The shared settings alone (to build another config from them)."""
        return {f.name: getattr(self, f.name) for f in fields(RunSettings)}


@dataclass(kw_only=True)
class RunConfig(RunSettings):
    """One run of one method (what ``dyninfer run`` does).

    Attributes:
        method: registry name (``dyninfer list methods``).
        params: the method's settings (``dyninfer list methods`` shows them).
        figures: settings of the method's own figures; None skips them.
        (the rest: :class:`RunSettings`)
    """

    method: str
    params: dict = field(default_factory=dict)
    figures: dict | None = field(default_factory=dict)

    def __post_init__(self) -> None:
        METHODS.get(self.method)  # unknown method: ConfigError naming the known ones
        super().__post_init__()
        if not isinstance(self.params, dict) or not (self.figures is None or isinstance(self.figures, dict)):
            raise ConfigError("params must be a dict of method settings, figures a dict or None")


@dataclass
class Evaluation:
    """Everything one method's run produced (what a family's own figures read).

    Attributes:
        cfg: the run's config.
        prep: data, paths, traces (with counted costs).
        method: the fitted method.
        calib, test: the traces with the costs measured in this run (every path of the path set).
        own_test: the test trace over the method's own paths, in its runtime's order (a cascade may use a subset).
        outcome: the method on the test split at its operating point.
        calib_curve, test_curve: its knob swept on each split.
        oracle: the cheapest correct path per test sample.
        runtime: the runtime at the operating point.
        results: every shared figure (JSON-able).
        log: where progress goes.
    """

    cfg: RunConfig
    prep: Prepared
    method: Method
    calib: Trace
    test: Trace
    own_test: Trace
    outcome: Outcome
    calib_curve: Curve
    test_curve: Curve
    oracle: Outcome
    runtime: Any
    results: dict
    log: Callable[[str], None] = print


def _plain(model: torch.nn.Module, device: torch.device) -> Callable[[torch.Tensor, int], None]:
    """The reference path as a plain model, in batches (inputs moved to its device, answers back)."""
    def run(x: torch.Tensor, batch: int) -> None:
        with torch.inference_mode():
            for i in range(0, x.shape[0], batch):
                model(x[i:i + batch].to(device)).argmax(1).cpu()
    return run


def _time_runtime(method: Method, paths, rt, test: Trace, own: Trace, outcome: Outcome, preset, cfg: RunConfig,
                  dev: torch.device, log: Callable[[str], None]) -> tuple[dict, dict]:
    """Step 5's measurements: the runtime at the operating point side by side with the runtime forced onto the
    reference path and the plain reference model (interleaved rounds at the serving batch and at batch 1), then
    energy per image; returns (timing, energy)."""
    op, sb = method.operating_point_, cfg.serving_batch
    forced = method.runtime(paths, device=dev)
    forced.force(op.reference)
    plain = _plain(paths.reference(), dev)
    xs, x1 = test.inputs()[:preset.timing_samples], test.inputs()[:preset.batch1_samples]
    log(f"[time] {preset.runtime_rounds} interleaved rounds over {len(xs)} images at batch {sb}")
    serving = interleaved_latency({"policy": lambda: rt.run(xs, sb), "forced": lambda: forced.run(xs, sb),
                                   "plain": lambda: plain(xs, sb)}, rounds=preset.runtime_rounds, warmup=1,
                                  clock="wall")
    log(f"[time] batch 1 over {len(x1)} images ({cfg.clock} clock)")
    batch1 = interleaved_latency({"policy": lambda: [rt(x1[i:i + 1]) for i in range(len(x1))],
                                  "forced": lambda: [forced(x1[i:i + 1]) for i in range(len(x1))],
                                  "plain": lambda: plain(x1, 1)}, rounds=max(1, preset.runtime_rounds), warmup=1,
                                 clock=cfg.clock)
    n_ref = len(xs)
    forced_ran = method.simulate_forced(test, op.reference).ran[:n_ref]
    predicted = {"policy": predicted_seconds(own, outcome.ran[:n_ref], sb),
                 "forced": predicted_seconds(own, forced_ran, sb),
                 "plain": predicted_seconds(own, forced_ran, sb)}  # the plain model runs what the forced runtime runs
    sec = {k: v["median_ms"] / 1e3 for k, v in serving.items()}
    ms1 = {k: v["median_ms"] / len(x1) for k, v in batch1.items()}
    timing = {
        "serving_batch": sb, "timed_images": n_ref, "batch1_images": len(x1), "rounds": preset.runtime_rounds,
        "batch1_clock": cfg.clock,
        "throughput": {k: n_ref / v for k, v in sec.items()},
        "throughput_ratio_vs_plain": sec["plain"] / sec["policy"],
        "batch1_ms_per_image": ms1, "batch1_speedup_vs_plain": ms1["plain"] / ms1["policy"],
        "forced_overhead_serving_pct": paired_overhead(serving, "forced", "plain"),
        "forced_overhead_batch1_pct": paired_overhead(batch1, "forced", "plain"),
        "predicted_seconds": predicted, "measured_seconds": sec,
        "measured_over_predicted": {k: sec[k] / predicted[k] if predicted[k] > 0 else float("nan") for k in sec},
        "rounds_ms": {"serving": {k: v["times_ms"] for k, v in serving.items()},
                      "batch1": {k: v["times_ms"] for k, v in batch1.items()}},
    }
    log(f"[time] throughput {timing['throughput']['policy']:.0f} vs plain {timing['throughput']['plain']:.0f} img/s "
        f"({timing['throughput_ratio_vs_plain']:.2f}x); batch 1 {ms1['policy']:.3f} vs {ms1['plain']:.3f} ms/img; "
        f"forced runtime vs plain {timing['forced_overhead_serving_pct']['pct']:+.1f}% at batch {sb}, "
        f"{timing['forced_overhead_batch1_pct']['pct']:+.1f}% at batch 1")
    # ---- energy and CO2 (measured where a counter exists, otherwise estimated and labelled so)
    energy = energy_per_sample({"policy": lambda: rt.run(xs, sb), "plain": lambda: plain(xs, sb)}, n_ref, device=dev,
                               cpu_watts_per_thread=cfg.cpu_watts_per_thread, grid_g_per_kwh=cfg.grid_g_per_kwh)
    return timing, energy


def evaluate(prep: Prepared, method: Method, cfg: RunConfig, log: Callable[[str], None] = print, *,
             time_runtime: bool = True) -> Evaluation:
    """Steps 2-5 of the module doc for one method on prepared paths. ``time_runtime=False`` skips step 5's
    timing and energy (``results["timing"]`` and ``["energy"]`` are None): for a caller that times the runtime
    itself, side by side with other systems (the big/little report's baselines)."""
    paths, preset = prep.paths, prep.preset
    dev = torch.device(cfg.device)
    sb = cfg.serving_batch
    # ---- costs, once per run
    log("[cost] measuring every path (median of interleaved rounds)")
    sample = prep.data.calib.x[:max(sb, 256)].to(dev)
    costs = measure_costs(paths, sample, batches=sorted({1, 16, 64, sb}), rounds=preset.cost_rounds,
                          repeats=preset.latency_repeats, min_time_s=preset.latency_min_s,
                          cpu_watts_per_thread=cfg.cpu_watts_per_thread, log=log)
    calib, test = prep.calib.with_costs(costs), prep.test.with_costs(costs)
    # ---- fit on calibration, simulate on test
    t0 = time.perf_counter()
    method.fit(calib, **method.fit_options(paths))
    fit_seconds = time.perf_counter() - t0
    op = method.operating_point_
    rt = method.runtime(paths, device=dev)  # first: it may move the policy's own modules to the device
    outcome = method.simulate(test)
    calib_curve, test_curve = method.calib_curve_, method.curve(test)
    orc = method.oracle(test)
    ref = test.index(op.reference)
    ref_acc = test.accuracy(ref)
    ref_flops = float(count_flops(paths.reference(), paths.input_shape))  # the plain reference model
    loss = ref_acc - outcome.accuracy
    log(f"[fit] {method.name}: knob {method.knob_} in {fit_seconds:.1f} s; test accuracy {outcome.accuracy:.4f} "
        f"(reference {op.reference} {ref_acc:.4f}), {outcome.mean_flops / 1e6:.3f} MFLOPs "
        f"({ref_flops / outcome.mean_flops:.2f}x fewer than the reference)")
    # ---- runtime: agreement with the trace, then side by side with the forced runtime and the plain model
    agree = agreement(rt, method, test, batch_size=sb)
    log(f"[runtime] agreement with the trace on {agree['samples']} test images: {agree['pred_mismatch']} predictions, "
        f"{agree['path_mismatch']} paths, {agree['flops_mismatch']} FLOPs differ")
    own = method.own_trace(test)  # outcomes index the method's own paths, at the costs its stages pay
    own = own if own.paths == list(rt.paths) else own.select(list(rt.paths))
    timing = energy = None
    if time_runtime:
        timing, energy = _time_runtime(method, paths, rt, test, own, outcome, preset, cfg, dev, log)
    static = []
    for p, name in enumerate(test.paths):
        c = test.cost(p)
        static.append({"path": name, "calib_accuracy": calib.accuracy(p), "test_accuracy": test.accuracy(p),
                       "flops": float(c.flops), "params": c.params, "bytes": c.bytes,
                       "batch1_ms": c.latency[1].median_s * 1e3 if 1 in c.latency else None,
                       "throughput": c.latency[sb].throughput if sb in c.latency else None,
                       "energy_j_per_image": c.energy_j_per_sample, "energy_source": c.energy_source})
    results = {
        "method": method.name, "params": jsonable(method.get_params()), "knob": jsonable(method.knob_),
        "fit_seconds": fit_seconds, "kind": paths.kind, "paths": list(test.paths), "method_paths": list(own.paths),
        "operating_point": {**op.to_dict(), "test_accuracy": outcome.accuracy, "test_flops": outcome.mean_flops,
                            "reference_test_accuracy": ref_acc, "reference_flops": ref_flops,
                            "flops_saving": ref_flops / outcome.mean_flops, "test_loss": loss,
                            "held_on_test": bool(loss <= op.tolerance + 1e-12),
                            "reference_calib_accuracy": calib.accuracy(calib.index(op.reference)),
                            "test_path_share": outcome.path_share(len(own.paths)).tolist()},  # method_paths order
        "oracle": {"test_accuracy": orc.accuracy, "test_flops": orc.mean_flops,
                   "saving_captured": (ref_flops - outcome.mean_flops) / (ref_flops - orc.mean_flops)
                   if ref_flops > orc.mean_flops else float("nan")},
        "static": static, "agreement": agree, "timing": timing, "energy": energy,
        "mcnemar_vs_reference": mcnemar(outcome.correct, test.correct[ref]),
    }
    return Evaluation(cfg, prep, method, calib, test, own, outcome, calib_curve, test_curve, orc, rt, results, log)


# ----------------------------------------------------------------------------------------- report

def _pct(v: float) -> str:
    return f"{100 * v:.2f}"


def shared_sections(ev: Evaluation) -> list[Section]:
    """The sections every method's report has: operating point, paths, runtime, trade-off plots."""
    r = ev.results
    op, tm, en = r["operating_point"], r["timing"], r["energy"]
    sb = tm["serving_batch"]
    head = [f"- Operating point (chosen on the calibration split): knob `{_fmt_knob(r['knob'])}`.",
            f"- Test accuracy **{_pct(op['test_accuracy'])}%** vs the reference path {op['reference']} "
            f"{_pct(op['reference_test_accuracy'])}% (loss {100 * op['test_loss']:+.2f} points; tolerance "
            f"{100 * op['tolerance']:.2f}).",
            f"- FLOPs: {op['test_flops'] / 1e6:.3f} M vs {op['reference_flops'] / 1e6:.3f} M per image — "
            f"**{op['flops_saving']:.2f}x fewer**. Share answered per path: "
            + ", ".join(f"{n} {100 * s:.1f}%" for n, s in zip(r["method_paths"], op["test_path_share"])) + ".",
            f"- Guarantee: {op['statement']} On the test split it **{'held' if op['held_on_test'] else 'did not hold'}**. "
            f"It assumes the calibration and test images come from one distribution: the reference path is "
            f"{_pct(op['reference_calib_accuracy'])}% accurate on calibration and "
            f"{_pct(op['reference_test_accuracy'])}% on test.",
            f"- Measured at batch {sb}: **{tm['throughput_ratio_vs_plain']:.2f}x** the plain reference model's "
            f"throughput ({tm['throughput']['policy']:.0f} vs {tm['throughput']['plain']:.0f} img/s); at batch 1 "
            f"**{tm['batch1_speedup_vs_plain']:.2f}x** ({tm['batch1_ms_per_image']['policy']:.3f} vs "
            f"{tm['batch1_ms_per_image']['plain']:.3f} ms/img, {tm['batch1_clock']} clock).",
            f"- Measured / predicted time at batch {sb} (the cost model from the path latencies): "
            f"{tm['measured_over_predicted']['policy']:.3f}.",
            f"- Oracle (cheapest correct path per image): {r['oracle']['test_flops'] / 1e6:.3f} MFLOPs at "
            f"{_pct(r['oracle']['test_accuracy'])}%; the policy captures {100 * r['oracle']['saving_captured']:.1f}% "
            f"of its FLOP saving.",
            f"- McNemar vs the reference: policy-only correct {r['mcnemar_vs_reference']['a_only']}, reference-only "
            f"{r['mcnemar_vs_reference']['b_only']}, p = {r['mcnemar_vs_reference']['pvalue']:.3g}."]
    rows = [[s["path"], _pct(s["calib_accuracy"]), _pct(s["test_accuracy"]), f"{s['flops'] / 1e6:.3f}",
             f"{s['params'] / 1e3:.1f}", "—" if s["batch1_ms"] is None else f"{s['batch1_ms']:.3f}",
             "—" if s["throughput"] is None else f"{s['throughput']:.0f}", f"{s['energy_j_per_image'] * 1e3:.4f}"]
            for s in r["static"]]
    paths_md = (("Costs are incremental: a sample leaving at path p pays paths 0..p.\n\n" if r["kind"] == "staged" else "")
                + markdown_table(["path", "calib acc %", "test acc %", "MFLOPs", "k params", "batch 1 (ms)",
                                  f"batch {sb} (img/s)", "energy (mJ/img)*"], rows)
                + f"\n\\* {r['static'][0]['energy_source']}. Latency and energy: median of interleaved rounds in "
                  f"this run.\n")
    ag = r["agreement"]
    fo_s, fo_1 = tm["forced_overhead_serving_pct"], tm["forced_overhead_batch1_pct"]
    rows = [[k, f"{tm['throughput'][k]:.0f}", f"{tm['batch1_ms_per_image'][k]:.3f}",
             f"{tm['predicted_seconds'][k] * 1e3 / tm['timed_images']:.4f}",
             f"{tm['measured_seconds'][k] * 1e3 / tm['timed_images']:.4f}",
             f"{tm['measured_over_predicted'][k]:.3f}"] for k in ("policy", "forced", "plain")]
    rt_md = (f"Runtime vs trace on all {ag['samples']} test images (batch {ag['batch_size']}): **{ag['pred_mismatch']}** "
             f"predictions, **{ag['path_mismatch']}** paths and **{ag['flops_mismatch']}** FLOP counts differ.\n\n"
             f"`policy`: the runtime at the operating point; `forced`: the same runtime with the knob sending every "
             f"image to the reference path without running any decision; `plain`: the reference model alone, no runtime. Median of "
             f"{tm['rounds']} interleaved rounds over {tm['timed_images']} test images (batch {sb}) and "
             f"{tm['batch1_images']} images one at a time.\n\n"
             + markdown_table(["system", f"throughput b={sb} (img/s)", "batch 1 (ms/img)",
                               f"predicted b={sb} (ms/img)", f"measured b={sb} (ms/img)", "measured/predicted"], rows)
             + f"\nForced runtime vs plain model: {fo_s['pct']:+.2f}% at batch {sb} "
               f"[{fo_s['ci_low_pct']:+.2f}, {fo_s['ci_high_pct']:+.2f}], {fo_1['pct']:+.2f}% at batch 1 "
               f"[{fo_1['ci_low_pct']:+.2f}, {fo_1['ci_high_pct']:+.2f}] (median per-round ratio, 95% bootstrap "
               f"interval).\n\n"
             + markdown_table(["system", "energy (mJ/img)", "CO2 (g / 10k img)"],
                              [[k, f"{en[k]['joules_per_image'] * 1e3:.4f}", f"{en[k]['co2_g_per_10k_images']:.5f}"]
                               for k in en])
             + f"\nEnergy: {en['policy']['source']}; CO2 at {ev.cfg.grid_g_per_kwh:g} gCO2/kWh.\n")
    plots = {"accuracy_vs_flops.png": lambda p: _plot(ev, p, "flops"),
             "accuracy_vs_time.png": lambda p: _plot(ev, p, "time")}
    return [Section("operating_point", "Operating point", "\n".join(head), {}),
            Section("paths_table", "Paths", paths_md, {}),
            Section("runtime", "Runtime", rt_md, {}),
            Section("tradeoff", "Accuracy against cost",
                    "Test curve of the knob (line), its calibration curve (dashed), the static paths, the oracle and the "
                    f"operating point. Times per image on the curves are predicted from the measured path latencies at "
                    f"batch {sb}; the crosses are the runtime measured.", {}, plots)]


def _fmt_knob(k: Any) -> str:
    vals = k if isinstance(k, list) else [k]
    return "[" + ", ".join(v if isinstance(v, str) else f"{v:.4g}" for v in vals) + "]"


def _plot(ev: Evaluation, path: Path, x: str) -> None:
    r, sb = ev.results, ev.cfg.serving_batch
    scale = (lambda c, curve: curve.cost / 1e6) if x == "flops" else \
        (lambda c, curve: curve_times(ev.own_test, curve, sb) * 1e3)
    curves = [{"label": f"{ev.method.name} (test)", "x": scale(None, ev.test_curve), "y": ev.test_curve.accuracy},
              {"label": f"{ev.method.name} (calibration)", "x": scale(None, ev.calib_curve), "y": ev.calib_curve.accuracy,
               "style": "--", "color": "0.6"}]
    op = r["operating_point"]
    pts = []
    for s in r["static"]:
        cum = s["flops"] if r["kind"] != "staged" else sum(t["flops"] for t in r["static"][:r["static"].index(s) + 1])
        t = (s["throughput"] and 1e3 / s["throughput"]) if r["kind"] != "staged" else None
        if x == "flops":
            pts.append({"label": s["path"], "x": cum / 1e6, "y": s["test_accuracy"], "marker": "s", "legend": False,
                        "annotate": s["path"]})
        elif t:
            pts.append({"label": s["path"], "x": t, "y": s["test_accuracy"], "marker": "s", "legend": False,
                        "annotate": s["path"]})
    if x == "flops":
        pts.append({"label": "oracle", "x": r["oracle"]["test_flops"] / 1e6, "y": r["oracle"]["test_accuracy"],
                    "marker": "*", "color": "k", "ms": 11})
        pts.append({"label": "operating point", "x": op["test_flops"] / 1e6, "y": op["test_accuracy"], "marker": "o",
                    "color": "r", "mfc": "none", "ms": 12})
    else:
        tm = r["timing"]
        for k, acc in (("policy", op["test_accuracy"]), ("plain", op["reference_test_accuracy"])):
            pts.append({"label": f"measured {k}", "x": 1e3 / tm["throughput"][k], "y": acc, "marker": "x", "color": "r",
                        "ms": 10})
    tradeoff_plot(path, curves=curves, points=pts, title=f"{ev.method.name} on {ev.prep.data.spec.name} (test)",
                  xlabel="MFLOPs per image" if x == "flops" else f"ms per image at batch {sb}")


# ----------------------------------------------------------------------------------------- run

def run(cfg: RunConfig, out: str | Path, *, log: Callable[[str], None] = print, command: str | None = None) -> Path:
    """Run one method end to end and write its folder (see the module doc). Returns the folder.

    ``command``: the command line recorded in the report (default: this process's)."""
    t_start = time.perf_counter()
    method = create_method(cfg.method, **cfg.params)
    fig = FIGURES.get(cfg.method) if cfg.method in FIGURES else None
    fig_cfg = None
    if fig is not None and cfg.figures is not None:
        try:
            fig_cfg = fig.config(**cfg.figures)
        except TypeError as e:
            raise ConfigError(f"bad figure settings for {cfg.method}: {e}") from None
    with torch_threads(cfg.threads):
        if method.task != "classification":  # regression, detection: the task's own data, models and records
            return _run_task(cfg, method, fig, fig_cfg, out, log=log, command=command, t_start=t_start)
        prep = prepare(cfg.dataset, cfg.preset, kind=method.path_kind, seed=cfg.seed, data_root=cfg.data_root,
                       **method.path_options(),
                       device=cfg.device, progress=cfg.progress, log=log)
        ev = evaluate(prep, method, cfg, log)
        sections = shared_sections(ev)
        if fig_cfg is not None:
            log(f"[figures] {cfg.method}: the method's own figures")
            sections += fig.make(ev, fig_cfg, log)
    op = ev.results["operating_point"]
    folder = _write(cfg, out, title=f"{cfg.method} — {prep.data.spec.name}, preset {prep.preset.name}",
                    data_meta=prep.data.meta, content=prep.data.fingerprint, preset=prep.preset.name,
                    results=ev.results, sections=sections, fig_cfg=fig_cfg, command=command, t_start=t_start,
                    policy=lambda tmp: save_policy(tmp / "policy", ev.method, prep.paths,
                                                   class_names=prep.data.spec.class_names,
                                                   extra={"dataset": prep.data.meta, "content": prep.data.fingerprint}))
    log(f"[done] {cfg.method}: test accuracy {100 * op['test_accuracy']:.2f}% (reference "
        f"{100 * op['reference_test_accuracy']:.2f}%), {op['flops_saving']:.2f}x fewer FLOPs, "
        f"{ev.results['timing']['throughput_ratio_vs_plain']:.2f}x throughput at batch {cfg.serving_batch}; "
        f"report {folder}/report.md ({time.perf_counter() - t_start:.0f} s)")
    return folder


def _run_task(cfg: RunConfig, method: Method, fig, fig_cfg, out, *, log, command, t_start) -> Path:
    """:func:`run` for a method whose answer is not a class (:mod:`dyninfer.tasks`)."""
    ev = run_task(method.task, cfg, method, log)
    sections = list(ev.sections)
    if fig_cfg is not None:
        log(f"[figures] {cfg.method}: the method's own figures")
        sections += fig.make(ev, fig_cfg, log)
    folder = _write(cfg, out, title=ev.meta["title"], data_meta=ev.meta["data"], content=ev.meta["content"],
                    preset=ev.meta["preset"], results=jsonable(ev.results), sections=sections, fig_cfg=fig_cfg,
                    command=command, t_start=t_start, policy=lambda tmp: save_policy(tmp / "policy", ev.method, ev.paths,
                                                                    extra={"task": method.task,
                                                                           "dataset": ev.meta["data"],
                                                                           "content": ev.meta["content"]}))
    log(f"[done] {cfg.method}: {ev.summary}; report {folder}/report.md ({time.perf_counter() - t_start:.0f} s)")
    return folder


def _write(cfg: RunConfig, out, *, title: str, data_meta: dict, content: str, preset: str, results: dict,
           sections: list, fig_cfg, command, t_start: float, policy: Callable[[Path], Any]) -> Path:
    """The run folder of any method: ``results.json`` with provenance, ``report.md`` and plots, ``policy/``."""
    results = {"provenance": provenance(asdict(cfg), cfg.seed, command), "data": data_meta, "content": content,
               "preset": preset, **results, "figures_config": asdict(fig_cfg) if fig_cfg is not None else None,
               "seconds_total": time.perf_counter() - t_start}
    intro = (f"Method `{cfg.method}` on {data_meta['dataset']} (train {data_meta['train']}, calibration "
             f"{data_meta['calib']}, test {data_meta['test']} images; content {content}"
             + (f"; task: {data_meta['task']}" if "task" in data_meta else "") + f"), preset "
             f"`{preset}`, seed {cfg.seed}. Everything is fitted on the calibration split and reported on the "
             f"test split.\n\nCommand: `{results['provenance']['command']}` · commit "
             f"{results['provenance']['git_commit']} · {results['provenance']['versions']['torch']} torch · "
             f"{results['seconds_total']:.0f} s.")
    return write_report(out, title=title, sections=sections, results=results, intro=intro, extras=[policy])


__all__ = ["Evaluation", "RunConfig", "RunSettings", "evaluate", "load_data", "run", "shared_sections"]
