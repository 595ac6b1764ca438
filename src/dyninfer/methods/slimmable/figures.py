"""The slimmable method's own figures (AdaptaNet): Table I (time and energy of the full-width network with
BN, GN and LN, of the AdaptaNet teacher and of its δ substitutes, at batch 1 and at the serving batch), Table II (uniform, mixed and runtime-random subnets of
AdaptaNet, AdaptaNet(δ) and the US-Net / DS-Net baselines), Fig. 3 (validation accuracy after every training
phase), Fig. 4 (accuracy against Var Gate confidence per gate and width), Table III (pull-up / pull-down in
three scopes next to uniform slimming at matched FLOPs, the runtime-random mixture and the confidence
cascade), the load-aware knob at MAdds budgets, and the accuracy-cost frontier of every policy.

FLOPs are counted (2 per multiply-add: MAdds are half of them); times are measured with the runtimes in
this run; accuracies of fixed configurations and runtime-random draws are read from the test trace (the
runtime makes the trace's predictions, which the shared runtime section checks).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from ...errors import ConfigError
from ...models.adapta import config_name
from ...models.elastic import NORMS
from ...models.registry import create_model
from ...runtime.cost import EnergyMeter, count_flops, interleaved_latency
from ...paths import SupernetPaths
from ...report.plots import pyplot, save, tradeoff_plot
from ...report.tables import markdown_table
from ...report.writer import Section
from ...train.slimmable import fit_slimmable
from ..base import FIGURES, Figures
from .bins import RULES, SCOPES, SlimmableBins

UNIFORM_NAMES = ("x1", "x0.75", "x0.5", "x0.25")


@dataclass
class SlimmableFigures:
    """Settings of the slimmable method's own figures."""

    passes: int = 10                           # runtime-random passes over the test split (Table II)
    bins: int = 8                              # equal-frequency confidence bins (Fig. 4, pull-up / pull-down)
    bins_gate: int = 0                         # the Var Gate pull-up / pull-down read
    budgets: tuple[float, ...] = (0.25, 0.5, 0.75)  # load-aware knob: shares of the full network's FLOPs
    baselines: bool = True                     # train and compare the preset's supernet baselines (Table II)

    def __post_init__(self) -> None:
        if not isinstance(self.passes, int) or self.passes < 2:
            raise ConfigError(f"passes must be an integer >= 2, got {self.passes!r}")
        if not isinstance(self.bins, int) or self.bins < 2:
            raise ConfigError(f"bins must be an integer >= 2, got {self.bins!r}")
        if not self.budgets or any(not 0 < b <= 1 for b in self.budgets):
            raise ConfigError(f"budgets must be shares in (0, 1], got {self.budgets!r}")


def _pct(v: float) -> str:
    return f"{100 * v:.2f}"


def _infer(model, x, batch: int) -> Callable[[], None]:
    from ...pipeline import _plain  # the shared timed call of a plain model (waits for the answer on the host)

    run = _plain(model, x.device)
    return lambda: run(x, batch)


def table1(ev, cfg: "SlimmableFigures", log) -> tuple[dict, str]:
    """Time per image at batch 1 and at the serving batch, and energy per image, of the full-width network with
    each normalisation (BN, GN, LN; untrained copies: time does not depend on the weights), of the trained
    AdaptaNet teacher (the supernet's ``x1``) and of its δ substitutes (``x1-d``), timed in interleaved rounds."""
    prep, sb = ev.prep, ev.cfg.serving_batch
    preset = prep.preset
    dev = torch.device(ev.cfg.device)
    nets = {}
    for norm in NORMS:
        sup = create_model(preset.supernet_model, prep.data.spec, norm=norm)
        nets[f"{norm.upper()} (x1, untrained copy)"] = sup.get_active_subnet().eval().to(dev)
    models = prep.paths.models
    teacher_kind = getattr(prep.paths.supernet, "norm_kind", "gn").upper()
    nets[f"{teacher_kind} (AdaptaNet teacher, x1)"] = models["x1"].to(dev)
    if "x1-d" in models:
        nets[f"{teacher_kind} (AdaptaNet δ, x1-d)"] = models["x1-d"].to(dev)
    xs = ev.test.inputs()[:preset.timing_samples].to(dev)
    x1 = ev.test.inputs()[:preset.batch1_samples].to(dev)
    rounds = max(3, preset.runtime_rounds)
    log(f"[table1] {len(nets)} networks, {rounds} interleaved rounds: batch 1 over {len(x1)} images, batch {sb} "
        f"over {len(xs)}")
    lat1 = interleaved_latency({k: _infer(m, x1, 1) for k, m in nets.items()}, rounds=rounds, warmup=1,
                               clock=ev.cfg.clock)
    latb = interleaved_latency({k: _infer(m, xs, sb) for k, m in nets.items()}, rounds=rounds, warmup=1,
                               clock="wall")  # several threads work on a batch: the calling thread's CPU time is not it
    res, rows = {}, []
    for k, m in nets.items():
        meter = EnergyMeter(dev, ev.cfg.cpu_watts_per_thread)
        with meter:
            _infer(m, xs, sb)()
        res[k] = {"batch1_ms": lat1[k]["median_ms"] / len(x1), "serving_ms": latb[k]["median_ms"] / len(xs),
                  "batch1_times_ms": lat1[k]["times_ms"], "serving_times_ms": latb[k]["times_ms"],
                  "energy_mj_per_image": 1e3 * meter.joules / len(xs), "energy_source": meter.source,
                  "flops": float(count_flops(m, prep.paths.input_shape))}
        rows.append([k, f"{res[k]['flops'] / 1e6:.2f}", f"{res[k]['batch1_ms']:.3f}", f"{res[k]['serving_ms']:.4f}",
                     f"{res[k]['energy_mj_per_image']:.3f}"])
    speed = {}
    t, d = f"{teacher_kind} (AdaptaNet teacher, x1)", f"{teacher_kind} (AdaptaNet δ, x1-d)"
    if d in res:
        for where, lat in (("batch1", lat1), ("serving", latb)):
            ratio = np.asarray(lat[t]["times_ms"]) / np.asarray(lat[d]["times_ms"])  # paired rounds
            speed[where] = {"median": float(np.median(ratio)), "min": float(ratio.min()), "max": float(ratio.max())}
    energy_source = next(iter(res.values()))["energy_source"]
    md = (f"Time per image at batch 1 ({len(x1)} images one at a time, {ev.cfg.clock} clock) and at batch {sb} "
          f"({len(xs)} images, wall clock), the median of {rounds} interleaved rounds, and energy per image over one pass at "
          f"batch {sb} ({energy_source}). The BN / GN / LN rows are untrained copies of the full-width network "
          "(time does not depend on the weights); the AdaptaNet rows are the trained supernet's static subnets.\n\n"
          + markdown_table(["network", "MFLOPs", "ms / image, batch 1", f"ms / image, batch {sb}",
                            "energy mJ / image"], rows))
    if speed:
        md += (f"\nδ substitutes against the full-depth network at x1 (per-round ratio, median [min, max] over "
               f"{rounds} rounds): **{speed['batch1']['median']:.2f}×** "
               f"[{speed['batch1']['min']:.2f}, {speed['batch1']['max']:.2f}] at batch 1, "
               f"**{speed['serving']['median']:.2f}×** [{speed['serving']['min']:.2f}, {speed['serving']['max']:.2f}] "
               f"at batch {sb}.\n")
    return res, md


def _column(trace, names: list[str], passes: int, seed: int) -> dict:
    """Table II entries of one supernet: each configuration's accuracy and the runtime-random mean ± std."""
    have = [n for n in names if n in trace.paths]
    sel = trace.select(have)
    acc = {n: float(a) for n, a in zip(have, sel.correct.mean(1))}
    rng = np.random.default_rng(seed)
    runs = [float(sel.correct[rng.integers(len(have), size=sel.n), np.arange(sel.n)].mean()) for _ in range(passes)]
    return {"accuracy": acc, "random_mean": float(np.mean(runs)), "random_std": float(np.std(runs, ddof=1)),
            "random_passes": runs, "random_over": have,
            "flops": {n: float(sel.cost(n).flops) for n in have}}


def _rows(paths: list[str], delta: bool) -> list[str]:
    names = [n for n in paths if n.endswith("-d") == delta]
    uni = [n for u in UNIFORM_NAMES for n in names if n == u + ("-d" if delta else "")]
    return uni + sorted(n for n in names if n not in uni)


def table2(ev, cfg: SlimmableFigures, log) -> tuple[dict, str, dict]:
    prep, test = ev.prep, ev.test
    cols = {"AdaptaNet": _column(test, _rows(test.paths, False), cfg.passes, ev.cfg.seed)}
    delta_rows = _rows(test.paths, True)
    if delta_rows:
        cols["AdaptaNet(δ)"] = _column(test, delta_rows, cfg.passes, ev.cfg.seed)
    metas = {"AdaptaNet": prep.model_meta.get(prep.preset.supernet_model, {})}
    if cfg.baselines:
        for name, training in prep.preset.supernet_baselines.items():
            log(f"[figures] baseline {name}: {training.recipe}, {training.sampling}")
            net, meta = fit_slimmable(prep.preset.supernet_model, prep.data, training, seed=ev.cfg.seed,
                                      device=ev.cfg.device, progress=ev.cfg.progress, log=log)
            configs = {config_name(c): c for c in net.configs() + net.mixed_configs()}
            tr = SupernetPaths(net, configs).record(prep.data.test, meta={"supernet": name})
            cols[name] = _column(tr, _rows(tr.paths, False), cfg.passes, ev.cfg.seed)
            metas[name] = meta
    labels = [r.replace("-d", "") for r in _rows(test.paths, False)]
    md_rows = []
    for label in labels:
        row = [label]
        for c, col in cols.items():
            key = label + ("-d" if c == "AdaptaNet(δ)" else "")
            row.append(_pct(col["accuracy"][key]) if key in col["accuracy"] else "–")
        md_rows.append(row)
    md_rows.append([f"runtime-random (mean ± std, {cfg.passes} passes)"]
                   + [f"{_pct(c['random_mean'])} ± {100 * c['random_std']:.2f}" for c in cols.values()])
    teacher = metas["AdaptaNet"].get("teacher", {}) or {}
    md = ("Test accuracy (%) of each configuration (`x0.25-1-1-0.25`: widths per stage; the δ column runs the δ "
          "substitutes in every stage that has them). Runtime-random: every test image gets a configuration drawn "
          f"uniformly from its column's rows, over {cfg.passes} passes (mean ± standard deviation of the pass "
          "accuracies). Baselines (US-Net, DS-Net; `*`: three random stage-wise subnets per step) are the same "
          "supernet trained by their recipes, without δ substitutes or gates.\n\n"
          + markdown_table(["configuration", *cols], md_rows)
          + (f"\nTeacher (the full-width network trained normally): test accuracy "
             f"{_pct(teacher['test_accuracy'])}%.\n" if teacher.get("test_accuracy") is not None else ""))
    return cols, md, metas


def fig3(metas: dict, path) -> None:
    plt = pyplot()
    named = [(k, m) for k, m in metas.items() if m.get("phases")]
    fig, axes = plt.subplots(1, max(1, len(named)), figsize=(4.2 * max(1, len(named)), 3.4), squeeze=False)
    for ax, (name, meta) in zip(axes[0], named):
        phases = list(meta["phases"])
        widths = sorted({w for p in phases for w in meta["phases"][p]["calib_accuracy"]})
        for w in widths:
            ys = [meta["phases"][p]["calib_accuracy"].get(w, np.nan) for p in phases]
            ax.plot(range(len(phases)), 100 * np.array(ys), marker="o", ms=3, label=w,
                    ls="--" if w.endswith("-d") else "-")
        ax.set_xticks(range(len(phases)))
        ax.set_xticklabels(phases, rotation=60, fontsize=7)
        ax.set_title(name, fontsize=9)
        ax.set_ylabel("validation accuracy (%)")
        ax.legend(fontsize=6)
    save(fig, path)


def fig4_data(trace, bins: int) -> dict:
    """Per gate and uniform width: the mean confidence and the accuracy of each equal-frequency confidence bin."""
    g = trace.aux["gate"]
    out = {}
    for gi in range(g.shape[2]):
        for name in [n for n in UNIFORM_NAMES if n in trace.paths]:
            p = trace.index(name)
            conf = g[p, :, gi]
            edges = np.quantile(conf, np.linspace(0, 1, bins + 1))
            b = np.clip(np.searchsorted(edges[1:-1], conf, side="right"), 0, bins - 1)
            corr = trace.correct[p]
            out[f"gate{gi + 1}/{name}"] = {"confidence": [float(conf[b == k].mean()) for k in range(bins) if (b == k).any()],
                                           "accuracy": [float(corr[b == k].mean()) for k in range(bins) if (b == k).any()]}
    return out


def fig4(data: dict, gates: int, path) -> None:
    plt = pyplot()
    fig, axes = plt.subplots(1, gates, figsize=(3.8 * gates, 3.3), squeeze=False)
    for key, d in data.items():
        gate, name = key.split("/")
        ax = axes[0][int(gate[4:]) - 1]
        ax.plot(d["confidence"], 100 * np.array(d["accuracy"]), marker="o", ms=3, label=name)
        ax.set_title(gate, fontsize=9)
        ax.set_xlabel("Var Gate confidence (bin mean)")
        ax.set_ylabel("accuracy (%)")
        ax.legend(fontsize=7)
    save(fig, path)


def table3(ev, cfg: SlimmableFigures, log) -> tuple[dict, str, dict]:
    calib, test, sb = ev.calib, ev.test, ev.cfg.serving_batch
    xs = test.inputs()
    rounds = max(2, ev.prep.preset.runtime_rounds)
    rows, res, curves = [], {}, {}

    def timed(rt) -> tuple[float, float]:
        secs = []
        for _ in range(rounds):
            t0 = time.perf_counter()
            rt.run(xs, sb)
            secs.append(time.perf_counter() - t0)
        return float(np.mean(secs)), float(np.std(secs, ddof=1))

    for scope in SCOPES:
        names = [n for n in test.paths if SCOPES[scope].fullmatch(n)]
        if len(names) < 2:
            continue
        sel = test.select(names)
        flops = np.array([c.flops for c in sel.costs], float)
        acc = sel.correct.mean(1)
        order = np.argsort(flops)
        for rule in RULES:
            m = SlimmableBins(rule=rule, scope=scope, gate=cfg.bins_gate, bins=cfg.bins,
                              tolerance=ev.method.tolerance).fit(calib)
            out = m.simulate(test, 0)
            rt = m.runtime(ev.prep.paths)
            rt.force(None)
            rt.knob = 0
            mean_s, std_s = timed(rt)
            matched = float(np.interp(out.mean_flops, flops[order], acc[order]))
            key = f"{rule} ({scope})"
            res[key] = {"accuracy": out.accuracy, "flops": out.mean_flops, "seconds_mean": mean_s, "seconds_std": std_s,
                        "uniform_at_matched_flops": matched, "candidates": m.candidates_, "probe": m.probe_,
                        "certified_shift": m.knob_}
            curves[key] = m.curve(test)
            rows.append([key, _pct(out.accuracy), f"{out.mean_flops / 2e6:.3f}", f"{mean_s:.3f} ± {std_s:.3f}",
                         _pct(matched), f"{100 * (out.accuracy - matched):+.2f}"])
            log(f"[table3] {key}: {out.accuracy:.4f} at {out.mean_flops / 1e6:.3f} MFLOPs")
        res[f"runtime-random ({scope})"] = {"accuracy": float(acc.mean()), "flops": float(flops.mean())}
        rows.append([f"runtime-random ({scope})", _pct(acc.mean()), f"{flops.mean() / 2e6:.3f}", "–",
                     _pct(np.interp(flops.mean(), flops[order], acc[order])),
                     f"{100 * (acc.mean() - np.interp(flops.mean(), flops[order], acc[order])):+.2f}"])
    out = ev.outcome
    uni = test.select([n for n in UNIFORM_NAMES[::-1] if n in test.paths])
    uf, ua = np.array([c.flops for c in uni.costs], float), uni.correct.mean(1)
    matched = float(np.interp(out.mean_flops, uf, ua))
    rt_s = ev.results["timing"]["measured_seconds"]["policy"] * len(xs) / ev.results["timing"]["timed_images"]
    res["confidence cascade"] = {"accuracy": out.accuracy, "flops": out.mean_flops, "chain": ev.method.stages_,
                                 "router": ev.method.router_, "uniform_at_matched_flops": matched}
    op = ev.method.operating_point_
    how = (f"runs {op.reference} alone: {'nothing certified' if not op.certified else 'no certified point cheaper'}"
           if op.runs_reference else f"{' → '.join(ev.method.stages_)}, {ev.method.router_}")
    rows.append([f"confidence cascade ({how})", _pct(out.accuracy),
                 f"{out.mean_flops / 2e6:.3f}", f"{rt_s:.3f} (shared runtime section)", _pct(matched),
                 f"{100 * (out.accuracy - matched):+.2f}"])
    md = ("Pull-up / pull-down (shift 0: the paper's heuristic) read Var Gate "
          f"{cfg.bins_gate + 1} of the cheapest candidate in {cfg.bins} equal-frequency bins fitted on the calibration "
          "split. Scopes: ρ only (uniform widths), δ only (uniform widths with δ), ρ and δ (both). MAdds per image "
          "(FLOPs / 2) include the probe and gate. Time: the runtime over the whole test split at batch "
          f"{sb}, mean ± std over {rounds} runs. *Uniform at matched MAdds*: the scope's uniform configurations "
          "mixed to the same mean MAdds (linear between neighbours).\n\n"
          + markdown_table(["policy", "test acc %", "MAdds (M)", "test split (s)", "uniform at matched MAdds %",
                            "gain (points)"], rows))
    return res, md, curves


def load_aware(ev, cfg: SlimmableFigures) -> tuple[dict, str]:
    m, test, sb = ev.method, ev.test, ev.cfg.serving_batch
    full = float(test.cost(m.operating_point_.reference).flops)
    rt = m.runtime(ev.prep.paths)
    rt.force(None)
    uni = test.select([n for n in UNIFORM_NAMES[::-1] if n in test.paths])
    uf, ua = np.array([c.flops for c in uni.costs], float), uni.correct.mean(1)
    rows, res = [], {}
    for b in cfg.budgets:
        try:
            knob = m.knob_for(budget_flops=b * full)
        except ConfigError as e:
            res[str(b)] = {"error": str(e)}
            rows.append([f"{100 * b:.0f}%", f"{b * full / 2e6:.3f}", "–", "–", "–", "–", "–", str(e)])
            continue
        rt.knob = knob
        r = rt.run(test.inputs(), sb)
        acc = float((r.pred.numpy() == test.labels).mean())
        dev = r.mean_flops / (b * full) - 1
        matched = float(np.interp(r.mean_flops, uf, ua))  # uniform widths mixed to the same measured MAdds
        res[str(b)] = {"knob": list(knob), "measured_flops": r.mean_flops, "accuracy": acc, "deviation": dev,
                       "uniform_at_matched_flops": matched}
        rows.append([f"{100 * b:.0f}%", f"{b * full / 2e6:.3f}", f"{r.mean_flops / 2e6:.3f}", f"{100 * dev:+.1f}%",
                     _pct(acc), _pct(matched), f"{100 * (acc - matched):+.2f}",
                     "within 5%" if abs(dev) <= 0.05 else "outside 5%"])
    md = ("The confidence cascade's knob set for a budget in mean MAdds (`knob_for(budget_flops=...)`: the most "
          "accurate calibration point within it), then the runtime run over the test split at that knob. *Uniform "
          "at matched MAdds*: the uniform widths mixed at random to the runtime's measured mean MAdds (linear "
          "between neighbours; the runtime-random mixture of two widths).\n\n"
          + markdown_table(["budget", "budget MAdds (M)", "measured MAdds (M)", "deviation", "test acc %",
                            "uniform at matched MAdds %", "gain (points)", "note"], rows))
    return res, md


def frontier(ev, cols, curves, path, x: str) -> None:
    test, sb = ev.test, ev.cfg.serving_batch
    from ...evaluate.simulate import curve_times

    def xs(trace, curve):
        return curve.cost / 1e6 if x == "flops" else curve_times(trace, curve, sb) * 1e3
    lines = [{"label": f"slimmable cascade ({ev.method.router_})", "x": xs(ev.own_test, ev.test_curve),
              "y": ev.test_curve.accuracy}]
    for key, c in curves.items():
        m_paths = [n for n in test.paths if SCOPES[key.split("(")[1][:-1]].fullmatch(n)]
        tr = test.select(sorted(m_paths, key=lambda n: test.cost(n).flops))
        lines.append({"label": key, "x": xs(tr, c), "y": c.accuracy, "style": ":"})
    pts = []
    for s in ev.results["static"]:
        t = 1e3 / s["throughput"] if s["throughput"] else None
        v = s["flops"] / 1e6 if x == "flops" else t
        if v is not None:
            pts.append({"label": s["path"], "x": v, "y": s["test_accuracy"], "marker": "s" if "-d" not in s["path"]
                        else "^", "legend": False, "annotate": s["path"] if s["path"] in UNIFORM_NAMES else None})
    tradeoff_plot(path, curves=lines, points=pts, title=f"slimmable policies on {ev.prep.data.spec.name} (test)",
                  xlabel="MFLOPs per image" if x == "flops" else f"ms per image at batch {sb} (predicted)")


def make(ev, cfg: SlimmableFigures, log: Callable[[str], None]) -> list[Section]:
    res1, md1 = table1(ev, cfg, log)
    cols, md2, metas = table2(ev, cfg, log)
    data4 = fig4_data(ev.calib, cfg.bins)
    res3, md3, curves = table3(ev, cfg, log)
    res_load, md_load = load_aware(ev, cfg)
    gates = ev.calib.aux["gate"].shape[2]
    phases = {k: m.get("phases", {}) for k, m in metas.items()}
    seconds = {k: {p: v["seconds"] for p, v in ph.items()} for k, ph in phases.items()}
    md_time = "\n".join(f"- {k}: " + ", ".join(f"{p} {s:.1f} s" for p, s in v.items()) for k, v in seconds.items() if v)
    return [
        Section("slimmable_table1", "Table I — normalisation, the AdaptaNet teacher and δ: time and energy", md1,
                res1),
        Section("slimmable_table2", "Table II — uniform, mixed and runtime-random subnets", md2,
                {"columns": cols}),
        Section("slimmable_fig3", "Fig. 3 — validation accuracy after every training phase",
                "Accuracy of the uniform widths on the first calibration images after each phase (δ: dashed). "
                "Seconds per phase (this run or the run that trained the cached supernet):\n\n" + md_time + "\n",
                {"phases": phases}, {"fig3_phases.png": lambda p: fig3(metas, p)}),
        Section("slimmable_fig4", "Fig. 4 — accuracy against Var Gate confidence",
                f"Calibration split; per gate and uniform width, {cfg.bins} equal-frequency bins of the gate's "
                "confidence (bin mean) against the accuracy of that width on the bin.\n",
                {"bins": data4}, {"fig4_gates.png": lambda p: fig4(data4, gates, p)}),
        Section("slimmable_table3", "Table III — pull-up / pull-down, uniform slimming and the confidence cascade",
                md3, {"policies": res3}),
        Section("slimmable_load", "Load-aware knob: MAdds budgets", md_load, {"budgets": res_load}),
        Section("slimmable_frontier", "Frontiers of every policy",
                "Accuracy against FLOPs and against predicted time at the serving batch: the confidence cascade's "
                "test curve, the pull-up / pull-down shift sweeps, and every configuration as a static point "
                "(squares: without δ, triangles: with δ).\n", {},
                {"frontier_flops.png": lambda p: frontier(ev, cols, curves, p, "flops"),
                 "frontier_time.png": lambda p: frontier(ev, cols, curves, p, "time")}),
    ]


FIGURES.register("slimmable", Figures(SlimmableFigures, make))
