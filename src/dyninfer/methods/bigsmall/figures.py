"""The big/little method's own figures: the tables and plots of section 5 of the NAS-for-dynamic-inference paper,
filled with what this run measures.

* **5.1** — the little and big subnets, the dynamic system at τ = 0.5 / 0.7 / 0.9 (confidence router) and at the
  fitted operating point, and the baselines of 4.3: static torchvision networks trained here, the fixed
  MobileNetV3-Small → Large cascade, the project's best independently trained cascade (the ``cascade`` method on
  the preset's pool), BranchyNet-style early exits (the ``early-exit`` method) and once-for-all single subnets.
  Top-1, top-5, FLOPs, parameters, median batch-1 latency after warm-up, throughput, peak memory and energy,
  every system timed side by side in one interleaved session. With extra ``seeds`` the headline rows also give
  mean ± std over co-training seeds.
* **co-training vs independent** — the co-trained dynamic system at the accuracy of the independently trained
  cascade: its FLOPs and measured throughput next to the cascade's.
* **5.2** — accuracy against FLOPs, latency and energy.
* **5.3** — the three search strategies on the co-trained supernet (:func:`dyninfer.search.compare_strategies`).
* **5.4.1** — the three routers; **5.4.2** — independent vs co-trained vs co-trained + distillation at equal
  FLOPs, with McNemar's test; **5.4.3** — width-only, depth-only, kernel-only and the full space; **5.4.4** —
  each loss term removed.
* **4.6** — the deployed pair exported to ONNX, FP16 and INT8 (:func:`dyninfer.methods.bigsmall.deploy.deploy_pair`).
* **5.6** — exit histogram, reliability diagram, threshold sensitivity and example images routed right and wrong.

Every knob (thresholds, the τ giving equal FLOPs, a searched pair) is chosen on the calibration split; every
figure is reported on the test split. Times are measured in this run; curves of time and energy against
accuracy are predicted from the measured path latencies and labelled so.
"""

from __future__ import annotations

import copy
import dataclasses
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from ...errors import ConfigError
from ...evaluate.simulate import curve_times, simulate_sequential
from ...evaluate.stats import mcnemar
from ...paths import BigSmallPaths
from ...report.plots import pyplot, save, tradeoff_plot
from ...report.tables import markdown_table
from ...report.writer import Section
from ...runtime.cost import EnergyMeter, count_params, interleaved_latency
from ...scores import make_score
from ...train.bigsmall import fit_bigsmall, fit_independent, phase_subnet, released
from ..base import FIGURES, Figures

# the ablation arms: name -> what changes in the co-training (``independent``: two supernets, see fit_independent)
ARM_CHANGES: dict[str, dict] = {
    "no-distill": {"distill": False},
    "width-only": {"phases": ("full", "width")},
    "depth-only": {"phases": ("full", "depth")},
    "kernel-only": {"phases": ("full", "kernel")},
    "no-big": {"alpha": 0.0},
    "no-little": {"beta": 0.0},
    "no-routing": {"gamma": 0.0},
    "no-consistency": {"lam": 0.0},
    "no-efficiency": {"eta": 0.0},
}
ARMS = ("independent", *ARM_CHANGES)
DEFAULT_ARMS = ("independent", "no-distill", "width-only", "depth-only", "kernel-only", "no-routing",
                "no-consistency", "no-efficiency")
SPACE_ARMS = ("width-only", "depth-only", "kernel-only")
LOSS_ARMS = ("no-big", "no-little", "no-routing", "no-consistency", "no-efficiency")


@dataclass
class BigSmallFigures:
    """Settings of the big/little method's own figures (``--figures key=value``)."""

    thresholds: tuple[float, ...] = (0.5, 0.7, 0.9)  # τ of the dynamic rows of 5.1
    baselines: bool = True          # static torchvision networks (the preset's ``bigsmall_baselines``) + fixed cascade
    fixed_threshold: float = 0.9    # τ of the fixed MobileNetV3-Small -> Large cascade
    cascade: bool = True            # the project's best independently trained cascade (``cascade`` on the pool)
    early_exit: bool = True         # BranchyNet-style early exits (``early-exit`` on the preset's exit network)
    singles: int = 5                # once-for-all single big subnets: uniform ones from the smallest to the largest
    search: bool = True             # 5.3: the three strategies compared
    search_settings: dict = field(default_factory=dict)  # overrides of dyninfer.search.CompareSettings
    budget_mflops: float | None = None  # 5.3 / 5.4.3 fixed cost (None: the operating point's calibration FLOPs)
    ablations: tuple[str, ...] = DEFAULT_ARMS  # 5.4.2-5.4.4 arms (see ARMS)
    space_pairs: int = 24           # 5.4.3: random pairs scored per space (plus its smallest and largest)
    deploy: bool = True             # 4.6: ONNX / FP16 / INT8 of the deployed pair
    seeds: tuple[int, ...] = ()     # extra co-training seeds for mean ± std of the headline rows
    examples: int = 6               # 5.6: images per routing outcome
    eval_images: int = 2000         # calibration images scoring a pair (5.3, 5.4.3)

    def __post_init__(self) -> None:
        self.thresholds = tuple(float(t) for t in self.thresholds)
        if not self.thresholds or any(not 0 <= t <= 1 for t in self.thresholds):
            raise ConfigError(f"thresholds must be max-softmax values in [0, 1], got {self.thresholds!r}")
        unknown = [a for a in self.ablations if a not in ARMS]
        if unknown:
            raise ConfigError(f"unknown ablation arms {unknown}; use some of {list(ARMS)}")
        self.ablations, self.seeds = tuple(self.ablations), tuple(int(s) for s in self.seeds)
        for name in ("singles", "space_pairs", "examples", "eval_images"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < (1 if name == "eval_images" else 0):
                raise ConfigError(f"{name} must be a non-negative integer, got {v!r}")
        if self.budget_mflops is not None and not self.budget_mflops > 0:
            raise ConfigError(f"budget_mflops must be positive or None, got {self.budget_mflops!r}")


def _pct(v: float) -> str:
    return f"{100 * v:.2f}"


def _mf(v: float) -> str:
    return f"{v / 1e6:.3f}"


# ---------------------------------------------------------------------------------------- dynamic systems

def _best_within(curve, flops: float) -> int:
    """Index of the most accurate point of ``curve`` whose cost stays within ``flops`` (the cheapest if none does)."""
    ok = np.flatnonzero(curve.cost <= flops * (1 + 1e-9))
    return int(ok[np.argmax(curve.accuracy[ok])]) if ok.size else int(np.argmin(curve.cost))


class _Pair:
    """One co-trained (or independent) big/little system on this run's data: paths, traces, the confidence-router
    method fitted on its calibration trace (same guarantee as the run's), and its test curve."""

    def __init__(self, ev, paths: BigSmallPaths, name: str) -> None:
        from .method import BigSmall

        self.name, self.paths = name, paths
        if paths is ev.prep.paths:
            self.calib, self.test = ev.calib, ev.test
        else:
            costs = paths.count()
            self.calib = paths.record(ev.prep.data.calib, costs=costs)
            self.test = paths.record(ev.prep.data.test, costs=costs)
        m = ev.method
        self.method = BigSmall(scores=("confidence",), tolerance=m.tolerance, confidence=m.confidence, bound=m.bound,
                               grid=m.grid, seed=m.seed).fit(self.calib)
        self.score = make_score("max_softmax")
        self.calib_curve = self.method.curve(self.calib)
        self.test_curve = self.method.curve(self.test)

    def at(self, trace, tau: float):
        """The outcome at threshold ``tau`` (keep the little answer where max-softmax >= tau)."""
        return simulate_sequential(self.method.own_trace(trace), self.score, [tau])

    def tau_for_flops(self, flops: float) -> float:
        """The most accurate threshold on calibration whose mean FLOPs stay within ``flops`` (the cheapest point
        when none does)."""
        c = self.calib_curve
        return float(c.settings[_best_within(c, flops)][0])

    def tau_for_accuracy(self, accuracy: float) -> float | None:
        """The cheapest threshold on calibration reaching ``accuracy`` (None if none does)."""
        c = self.calib_curve
        ok = np.flatnonzero(c.accuracy >= accuracy)
        return None if not ok.size else float(c.settings[ok[np.argmin(c.cost[ok])]][0])

    def learned_at_flops(self, flops: float) -> dict | None:
        """The learned router alone: its most accurate threshold on calibration within ``flops`` (the cheapest
        when none is), and that threshold on test (``top1``, ``flops``, ``tau``); None when the system has no
        learned router."""
        from .method import BigSmall

        if self.paths.router is None:
            return None
        m = self.method
        learned = BigSmall(scores=("learned",), tolerance=m.tolerance, confidence=m.confidence, bound=m.bound,
                           grid=m.grid, seed=m.seed).fit(self.calib)
        c = learned.curve(self.calib)
        j = _best_within(c, flops)
        o = learned.simulate(self.test, c.settings[j])
        return {"tau": float(c.settings[j][0]), "top1": o.accuracy, "flops": o.mean_flops}

    def runtime(self, tau: float, device):
        rt = self.method.runtime(self.paths, device=device)
        rt.knob = (tau,)
        return rt


def _topk(logits: np.ndarray, labels: np.ndarray, k: int = 5) -> float:
    k = min(k, logits.shape[-1])
    top = np.argpartition(-logits, k - 1, axis=-1)[..., :k]
    return float((top == labels[:, None]).any(1).mean())


def _outcome_topk(trace, outcome) -> float:
    logits = trace.logits[outcome.path, np.arange(trace.n)]
    return _topk(logits, trace.labels)


def _peak_memory(fn: Callable[[], object]) -> tuple[int, str]:
    """Peak live bytes allocated during one call, after a warm-up call (see
    :func:`~dyninfer.methods.bigsmall.baselines.call_activation_peak`)."""
    from .baselines import call_activation_peak

    with torch.inference_mode():
        fn()
        return call_activation_peak(fn)


# ---------------------------------------------------------------------------------------- 5.1 and 5.2

def _systems(ev, cfg: BigSmallFigures, main: _Pair, log) -> tuple[list[dict], dict]:
    """Every row of 5.1 with a callable to time: (rows, extras for other sections)."""
    from ...harness import prepare
    from ...pipeline import RunConfig, _plain, evaluate
    from ...train.trainer import predict_logits
    from .. import create_method

    dev = torch.device(ev.cfg.device)
    test = ev.prep.data.test
    rows: list[dict] = []
    paths = ev.prep.paths
    net = paths.supernet
    extras: dict = {}

    def static(name: str, kind: str, model, flops: float, note: str = "") -> None:
        logits = predict_logits(model, test.x).numpy()
        labels = test.y.numpy()
        rows.append({"system": name, "kind": kind, "top1": float((logits.argmax(1) == labels).mean()),
                     "top5": _topk(logits, labels), "flops": float(flops), "params": count_params(model),
                     "call": _plain(model, dev), "model": model, "note": note})

    # the deployed pair's subnets, alone
    for p in ("little", "big"):
        static(f"{p} subnet", "static", paths.models[p], ev.test.cost(p).flops)
    # the dynamic system at fixed thresholds and at the fitted operating point
    for tau in cfg.thresholds:
        o = main.at(ev.test, tau)
        rt = main.runtime(tau, dev)
        rows.append({"system": f"dynamic τ={tau:g}", "kind": "dynamic", "top1": o.accuracy,
                     "top5": _outcome_topk(main.method.own_trace(ev.test), o), "flops": o.mean_flops,
                     "params": count_params(paths.models["little"]) + count_params(paths.models["big"]),
                     "exit_rate": float((o.path == 0).mean()), "call": _runtime_call(rt), "runtime": rt})
    op = ev.outcome
    rows.append({"system": f"dynamic, operating point ({ev.method.router_})", "kind": "dynamic",
                 "top1": op.accuracy, "top5": _outcome_topk(ev.own_test, op), "flops": op.mean_flops,
                 "params": count_params(paths.models["little"]) + count_params(paths.models["big"]),
                 "exit_rate": float((op.path == 0).mean()), "call": _runtime_call(ev.runtime), "runtime": ev.runtime})
    # once-for-all single subnets: uniform big subnets from the smallest to the largest
    if cfg.singles:  # on a copy: re-estimating a single subnet's norms must leave the deployed pair's alone
        net = copy.deepcopy(net)
        sp = net.space
        for j in np.unique(np.linspace(0, len(sp.widths) - 1, cfg.singles).round().astype(int)):
            k = lambda ch: ch[min(len(ch) - 1, int(round(j * (len(ch) - 1) / max(1, len(sp.widths) - 1))))]
            sub = sp.uniform("big", width=k(sp.widths), depth=k(sp.depths), kernel=k(sp.kernels), expand=k(sp.expands))
            model = _static_subnet(net, sub, ev.prep.data.train.x[:1024])
            static(f"OFA single w{sub.stages[0].width:g} d{sub.stages[0].depth} k{sub.stages[0].kernel} "
                   f"e{sub.stages[0].expand:g}", "OFA single", model, net.flops(sub))
    # torchvision static networks trained here and the fixed MobileNetV3 cascade
    preset = ev.prep.preset
    if cfg.baselines and preset.bigsmall_baselines:
        from .baselines import CASCADE_MODELS, cascade_runtime, fixed_cascade, train_static

        trained = {}
        for name, recipe in preset.bigsmall_baselines.items():
            trained.update(train_static([name], ev.prep.data, recipe, seed=ev.cfg.seed, device=ev.cfg.device,
                                        progress=ev.cfg.progress, log=log))
        for name, (model, meta) in trained.items():
            static(name, "static baseline", model.eval(), _count(model, ev))
        small, large = CASCADE_MODELS
        if small in trained and large in trained:
            fc = fixed_cascade(trained[small][0], trained[large][0], test, threshold=cfg.fixed_threshold,
                               device=ev.cfg.device, log=log)
            rt = cascade_runtime(trained[small][0], trained[large][0], cfg.fixed_threshold,
                                 input_shape=ev.prep.data.spec.input_shape, device=ev.cfg.device)
            rows.append({"system": f"MobileNetV3-S → L, fixed τ={cfg.fixed_threshold:g}", "kind": "fixed cascade",
                         "top1": fc["top1"], "top5": fc["top5"], "flops": fc["mean_flops"],
                         "params": count_params(trained[small][0]) + count_params(trained[large][0]),
                         "exit_rate": fc["exit_rate"], "call": _runtime_call(rt), "runtime": rt})
    # the project's best independent cascade and BranchyNet-style early exits, through the shared pipeline
    for flag, method_name in ((cfg.cascade, "cascade"), (cfg.early_exit, "early-exit")):
        if not flag:
            continue
        log(f"[figures] bigsmall: baseline {method_name} through the shared pipeline (timed in 5.1, beside the others)")
        method = create_method(method_name)
        prep = prepare(ev.cfg.dataset, preset, kind=method.path_kind, seed=ev.cfg.seed, data=ev.prep.data,
                       device=ev.cfg.device, progress=ev.cfg.progress, log=log)
        b = evaluate(prep, method, RunConfig(method=method_name, **ev.cfg.settings()), log, time_runtime=False)
        o, own = b.outcome, b.own_test
        models = list(prep.paths.models.values()) if hasattr(prep.paths, "models") else [prep.paths.net]
        label = " > ".join(getattr(b.method, "stages_", [])) if method_name == "cascade" else prep.paths.names[-1]
        rows.append({"system": f"{method_name} ({label})", "kind": "independent cascade" if method_name == "cascade"
                     else "early exits", "top1": o.accuracy, "top5": _outcome_topk(own, o), "flops": o.mean_flops,
                     "params": sum(count_params(m) for m in models),
                     "exit_rate": float((o.path == 0).mean()), "call": _runtime_call(b.runtime), "runtime": b.runtime})
        extras[method_name] = b
    return rows, extras


def _count(model, ev) -> int:
    from ...runtime.cost import count_flops

    return count_flops(model, ev.prep.data.spec.input_shape)


def _runtime_call(rt) -> Callable[[torch.Tensor, int], None]:
    return lambda x, b: rt.run(x, b)


def _static_subnet(net, sub, bn_x: torch.Tensor):
    """A static copy of one single subnet with its switchable batch norms re-estimated (the supernet's other
    subnets keep theirs)."""
    from ...train.bigsmall import recalibrate_pairs

    if net.norm_kind == "bn":
        recalibrate_pairs(net, bn_x.to(next(net.parameters()).device), [sub])
    net.set_active_subnet(sub)
    return net.get_active_subnet().eval()


def _measure(rows: list[dict], ev, log) -> dict:
    """Time every row side by side (interleaved rounds): batch-1 median after warm-up, throughput at the serving
    batch, energy per image, peak memory of one batch-1 call."""
    sb, pre = ev.cfg.serving_batch, ev.prep.preset
    xs = ev.test.inputs()[:pre.timing_samples]
    x1 = ev.test.inputs()[:max(1, min(pre.batch1_samples, 50))]
    rounds = pre.runtime_rounds
    log(f"[figures] bigsmall: timing {len(rows)} systems side by side ({rounds} rounds, {len(xs)} images at batch "
        f"{sb}, {len(x1)} at batch 1)")
    serving = interleaved_latency({r["system"]: (lambda f=r["call"]: f(xs, sb)) for r in rows}, rounds=rounds,
                                  clock="wall", warmup=1)
    batch1 = interleaved_latency({r["system"]: (lambda f=r["call"]: [f(x1[i:i + 1], 1) for i in range(len(x1))])
                                  for r in rows}, rounds=rounds, clock=ev.cfg.clock, warmup=1)
    source = None
    for r in rows:
        name = r["system"]
        r["param_bytes"] = 4 * r["params"]  # float32 weights
        r["throughput"] = len(xs) / (serving[name]["median_ms"] / 1e3)
        r["batch1_ms"] = batch1[name]["median_ms"] / len(x1)
        r["batch1_count"] = rounds * len(x1)
        meter = EnergyMeter(ev.cfg.device, ev.cfg.cpu_watts_per_thread)
        with meter:
            r["call"](xs, sb)
        r["energy_j"] = meter.joules / len(xs)
        source = meter.source
        r["activation_peak_bytes"], method = _peak_memory(lambda f=r["call"]: f(x1[:1], 1))
        r["peak_bytes"] = r["activation_peak_bytes"] + r["param_bytes"]
    return {"energy_source": source, "rounds": rounds, "timed_images": len(xs), "batch1_images": len(x1),
            "memory_method": method}


def _rows_md(rows: list[dict], sb: int, seeds: dict | None = None) -> str:
    def cell(r, k, fmt):
        s = fmt(r[k])
        if seeds and r["system"] in seeds and k in seeds[r["system"]]:
            v = np.asarray(seeds[r["system"]][k])
            s = f"{100 * v.mean():.2f} ± {100 * v.std(ddof=1):.2f}" if len(v) > 1 else s
        return s
    head = ["system", "kind", "top-1 %", "top-5 %", "MFLOPs", "k params", "exit rate", "batch 1 (ms, median)",
            f"img/s at {sb}", "peak MiB (batch 1)", "energy (mJ/img)*"]
    body = [[r["system"], r["kind"], cell(r, "top1", _pct), cell(r, "top5", _pct), _mf(r["flops"]),
             f"{r['params'] / 1e3:.1f}", "—" if r.get("exit_rate") is None else f"{r['exit_rate']:.3f}",
             f"{r['batch1_ms']:.3f}", f"{r['throughput']:.0f}", f"{r['peak_bytes'] / 2 ** 20:.2f}",
             f"{r['energy_j'] * 1e3:.4f}"] for r in rows]
    return markdown_table(head, body)


def _public(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in ("call", "model", "runtime")} for r in rows]


def _pareto_plot(path, ev, main: _Pair, rows: list[dict], x: str, timing: dict) -> None:
    sb = ev.cfg.serving_batch
    c = main.test_curve
    big = next(r for r in rows if r["system"] == "big subnet")
    if x == "flops":
        xs, xl = c.cost / 1e6, "MFLOPs per image"
    elif x == "latency":
        xs, xl = curve_times(main.method.own_trace(ev.test), c, 1) * 1e3, "ms per image at batch 1"
    else:  # energy: predicted time at the serving batch x the big subnet's measured joules per second
        t = curve_times(main.method.own_trace(ev.test), c, sb)
        xs, xl = t * big["energy_j"] * big["throughput"] * 1e3, f"mJ per image at batch {sb}"
    key = {"flops": lambda r: r["flops"] / 1e6, "latency": lambda r: r["batch1_ms"],
           "energy": lambda r: r["energy_j"] * 1e3}[x]
    markers = {"static": "s", "dynamic": "o", "OFA single": "^", "static baseline": "D", "fixed cascade": "v",
               "independent cascade": "P", "early exits": "X"}
    pts = [{"label": r["system"], "x": key(r), "y": r["top1"], "marker": markers.get(r["kind"], "o"),
            "legend": r["kind"] != "dynamic" or "operating" in r["system"], "annotate": None} for r in rows]
    tradeoff_plot(path, curves=[{"label": "co-trained dynamic (test" + ("" if x == "flops" else ", predicted") + ")",
                                 "x": xs, "y": c.accuracy}],
                  points=pts, xlabel=xl, title=f"5.2 — accuracy against {x} ({ev.prep.data.spec.name}, test)")


# ---------------------------------------------------------------------------------------- co-training vs independent

def _vs_cascade(ev, main: _Pair, rows: list[dict], extras: dict, log) -> tuple[dict, str]:
    """The co-trained system at the independent cascade's accuracy: τ chosen on calibration to reach the
    cascade's calibration accuracy; FLOPs and measured throughput side by side on the test split."""
    b = extras.get("cascade")
    if b is None:
        return {}, "Not run (`cascade=false`).\n"
    target_calib = float(b.method.simulate(b.calib).accuracy)  # what it achieves there (its reference alone if uncertified)
    tau = main.tau_for_accuracy(target_calib)
    if tau is None:
        best = float(main.calib_curve.accuracy.max())
        return ({"reached": False, "cascade_calib_accuracy": target_calib, "best_calib_accuracy": best},
                f"The co-trained system never reaches the cascade's calibration accuracy "
                f"({_pct(target_calib)}%): its best is {_pct(best)}% (the big subnet alone is "
                f"{_pct(ev.test.accuracy('big'))}% on test).\n")
    o = main.at(ev.test, tau)
    rt = main.runtime(tau, torch.device(ev.cfg.device))
    xs, sb = ev.test.inputs()[:ev.prep.preset.timing_samples], ev.cfg.serving_batch
    lat = interleaved_latency({"co-trained": lambda: rt.run(xs, sb), "cascade": lambda: b.runtime.run(xs, sb)},
                              rounds=ev.prep.preset.runtime_rounds, clock="wall", warmup=1)
    co = b.outcome
    res = {"reached": True, "tau": tau, "cascade": {"system": " > ".join(b.method.stages_),
                                                    "test_accuracy": co.accuracy, "flops": co.mean_flops,
                                                    "calib_accuracy": target_calib},
           "cotrained": {"test_accuracy": o.accuracy, "flops": o.mean_flops},
           "flops_saving_pct": 100 * (1 - o.mean_flops / co.mean_flops),
           "throughput": {k: len(xs) / (v["median_ms"] / 1e3) for k, v in lat.items()},
           "mcnemar": mcnemar(o.correct, co.correct)}
    res["throughput_ratio"] = res["throughput"]["co-trained"] / res["throughput"]["cascade"]
    md = (f"Target: the independent cascade `{res['cascade']['system']}` at its operating point, "
          f"{_pct(co.accuracy)}% on test ({_pct(target_calib)}% on calibration), {_mf(co.mean_flops)} MFLOPs. "
          f"The co-trained system's τ = {tau:.4g} is the cheapest reaching that calibration accuracy.\n\n"
          + markdown_table(["system", "test top-1 %", "MFLOPs", f"img/s at {sb} (measured)"],
                           [[res["cascade"]["system"], _pct(co.accuracy), _mf(co.mean_flops),
                             f"{res['throughput']['cascade']:.0f}"],
                            [f"co-trained dynamic τ={tau:.4g}", _pct(o.accuracy), _mf(o.mean_flops),
                             f"{res['throughput']['co-trained']:.0f}"]])
          + f"\n**{res['flops_saving_pct']:+.1f}% fewer FLOPs** (target ≥ 30%), throughput ratio "
            f"**{res['throughput_ratio']:.2f}x** at batch {sb}; McNemar co-trained vs cascade: "
            f"{res['mcnemar']['a_only']} vs {res['mcnemar']['b_only']} discordant, p = {res['mcnemar']['pvalue']:.3g}.\n")
    log(f"[figures] bigsmall: vs cascade {res['flops_saving_pct']:+.1f}% FLOPs, {res['throughput_ratio']:.2f}x throughput")
    return res, md


def _predictor_md(res: dict) -> str:
    """The once-for-all predictor's accuracy RMSE on held-out measured pairs and on the chosen pairs re-measured."""
    r = (res.get("results") or {}).get("predictor")
    if not r:
        return ""
    rep, rem = r.get("report") or {}, r.get("remeasured") or {}
    fmt = lambda v: "—" if v is None else f"{v:.2f}"
    return (f"\nOnce-for-all predictor: accuracy RMSE **{fmt(rep.get('rmse_points'))} points** on "
            f"{rep.get('n_holdout', 0)} held-out measured pairs (target ≤ 1), {fmt(rep.get('train_rmse_points'))} on "
            f"its {rep.get('n_train', 0)} training pairs; {fmt(rem.get('rmse_points'))} points on the "
            f"{rem.get('n', 0)} predicted-Pareto pairs re-measured.\n")


def _fronts_plot(path, res: dict, budget: float) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for k, recs in res.get("scored", {}).items():
        if recs:
            ax.scatter([r["flops"] / 1e6 for r in recs], [100 * r["accuracy"] for r in recs], s=10, alpha=0.5, label=k)
    ax.axvline(budget / 1e6, color="k", ls="--", lw=0.8, label="budget")
    ax.set_xscale("log")
    ax.set_xlabel("expected MFLOPs per image")
    ax.set_ylabel("calibration top-1 %")
    ax.legend(fontsize=8)
    ax.set_title("5.3 — pairs scored by each strategy")
    save(fig, path)


# ---------------------------------------------------------------------------------------- 5.4.1 routers

def _routers(ev, log) -> tuple[list[dict], str]:
    from .method import BigSmall

    m = ev.method
    rows = []
    sb = ev.cfg.serving_batch
    little_correct = ev.test.correct[ev.test.index("little")]
    big_correct = ev.test.correct[ev.test.index("big")]
    optimal_keep = little_correct | ~big_correct  # forwarding helps only where little is wrong and big right
    for router in m.routers:
        r = BigSmall(scores=(router,), difficulty_c=m.difficulty_c, tolerance=m.tolerance, confidence=m.confidence,
                     bound=m.bound, grid=m.grid, seed=m.seed, pair=m.pair).fit(ev.calib)
        o = r.simulate(ev.test)
        own = r.own_trace(ev.test)
        from ...evaluate.simulate import predicted_seconds

        keep = o.path == 0
        rows.append({"router": router, "threshold": float(r.knob_[0]), "certified": bool(r.operating_point_.certified),
                     "top1": o.accuracy, "flops": o.mean_flops, "exit_rate": float(keep.mean()),
                     "routing_accuracy": float((keep == optimal_keep).mean()),
                     "ms_per_image": 1e3 * predicted_seconds(own, o.ran, sb) / own.n})
    md = ("Each router alone, threshold chosen on calibration by the run's guarantee; test split. Routing accuracy: "
          "share of images where the router's keep/forward decision equals the optimal one (forward exactly where "
          "the little subnet is wrong and the big one right). Time per image predicted from the measured path "
          f"latencies at batch {sb}.\n\n"
          + markdown_table(["router", "τ", "certified", "top-1 %", "MFLOPs", "exit rate", "routing accuracy %",
                            f"ms/img at {sb} (predicted)"],
                           [[r["router"], f"{r['threshold']:.4g}", "yes" if r["certified"] else "no", _pct(r["top1"]),
                             _mf(r["flops"]), f"{r['exit_rate']:.3f}", _pct(r["routing_accuracy"]),
                             f"{r['ms_per_image']:.4f}"] for r in rows]))
    return rows, md


# ---------------------------------------------------------------------------------------- 5.4.2-5.4.4 ablations

def _arm_training(ev, arm: str):
    pre = ev.prep.preset
    base = pre.bigsmall_ablation or pre.bigsmall_training
    return dataclasses.replace(base, **ARM_CHANGES.get(arm, {}))


def _arm_pair(ev, arm: str, log) -> BigSmallPaths:
    pre, data = ev.prep.preset, ev.prep.data
    kw = dict(seed=ev.cfg.seed, device=ev.cfg.device, progress=ev.cfg.progress, log=log)
    t = _arm_training(ev, arm)
    if arm == "independent":
        little, big, router, _ = fit_independent(pre.bigsmall_model, data, t, **kw)
        return BigSmallPaths(little, router, big_supernet=big)
    net, router, _ = fit_bigsmall(pre.bigsmall_model, data, t, **kw)
    return BigSmallPaths(net, router)


def _ablations(ev, cfg: BigSmallFigures, main: _Pair, budget: float, log) -> tuple[dict, dict[str, str], dict]:
    """Train (or reuse) every arm, fit its confidence router on calibration and compare at the main system's
    calibration FLOPs; the space arms also search their own space for the best pair within ``budget``."""
    from ...search import PairEvaluator

    pre = ev.prep.preset
    smaller = pre.bigsmall_ablation is not None and pre.bigsmall_ablation != pre.bigsmall_training
    ref_name = "co-trained + distillation (reference recipe at the arms' budget)" if smaller else \
        "co-trained + distillation (this run)"
    ref = _Pair(ev, _arm_pair(ev, "full", log), "reference") if smaller else main
    target = float(ref.method.simulate(ref.calib).mean_flops)  # what it spends (the reference alone if uncertified)
    tau_ref = ref.tau_for_flops(target)
    o_ref = ref.at(ref.test, tau_ref)
    results: dict = {"reference": ref_name, "target_calib_flops": target, "arms": {}}
    curves = {ref_name: ref.test_curve}
    rows = {"reference": _arm_row(ref, tau_ref, o_ref, None)}
    for arm in cfg.ablations:
        t0 = time.perf_counter()
        log(f"[figures] bigsmall: ablation arm {arm}")
        a = _Pair(ev, _arm_pair(ev, arm, log), arm)
        tau = a.tau_for_flops(target)
        o = a.at(a.test, tau)
        rows[arm] = _arm_row(a, tau, o, mcnemar(o.correct, o_ref.correct))
        if arm in LOSS_ARMS:
            rows[arm]["learned"] = a.learned_at_flops(target)
        rows[arm]["seconds"] = time.perf_counter() - t0
        curves[arm] = a.test_curve
        if arm in SPACE_ARMS:
            rows[arm]["space"] = _space_search(ev, cfg, a, arm, budget, PairEvaluator)
    if any(a in SPACE_ARMS for a in cfg.ablations):
        rows["reference"]["space"] = _space_search(ev, cfg, ref, "full", budget, PairEvaluator)
    if any(a in LOSS_ARMS for a in cfg.ablations):
        rows["reference"]["learned"] = ref.learned_at_flops(target)
    results["arms"] = rows

    def learned_table(names: list[str]) -> str:
        names = ["reference"] + [n for n in names if n in rows]
        return markdown_table(
            ["arm", "learned router τ (calib)", "top-1 % at equal FLOPs", "MFLOPs", "Δ vs reference (pts)"],
            [[ref_name if n == "reference" else n]
             + (["—"] * 4 if not rows[n].get("learned") or not rows["reference"].get("learned") else
                [f"{rows[n]['learned']['tau']:.4g}", _pct(rows[n]["learned"]["top1"]), _mf(rows[n]["learned"]["flops"]),
                 "—" if n == "reference" else
                 f"{100 * (rows[n]['learned']['top1'] - rows['reference']['learned']['top1']):+.2f}"])
             for n in names]) if len(names) > 1 else ""

    def table(names: list[str]) -> str:
        names = ["reference"] + [n for n in names if n in rows]
        if len(names) == 1:
            return f"No arm of this section was run (`ablations` holds {list(cfg.ablations)}).\n"
        return markdown_table(
            ["arm", "little %", "big %", "τ (calib)", "top-1 % at equal FLOPs", "MFLOPs", "Δ vs reference (pts)",
             "McNemar p (vs reference)"],
            [[ref_name if n == "reference" else n, _pct(rows[n]["little_acc"]), _pct(rows[n]["big_acc"]),
              f"{rows[n]['tau']:.4g}", _pct(rows[n]["top1"]), _mf(rows[n]["flops"]),
              "—" if n == "reference" else f"{100 * (rows[n]['top1'] - rows['reference']['top1']):+.2f}",
              "—" if rows[n]["mcnemar"] is None else f"{rows[n]['mcnemar']['pvalue']:.3g}"] for n in names])

    intro = (f"Every arm is the largest pair of its own supernet, trained with "
             f"{'the preset’s ablation budget' if smaller else 'this run’s recipe'}; its confidence threshold is "
             f"chosen on calibration as the most accurate within the reference's calibration FLOPs "
             f"({_mf(target)} MFLOPs); accuracies on test. McNemar: arm vs reference on the same test images.\n\n")
    mds = {"5.4.2": intro + table(["independent", "no-distill"]),
           "5.4.4": intro + table(list(LOSS_ARMS))}
    if any(a in LOSS_ARMS for a in cfg.ablations):
        mds["5.4.4"] += ("\nThe router's inputs are detached during co-training (`router_grad=False`), so L_routing "
                         "and its efficiency term η train the learned router alone: without them the supernet's "
                         "weights, and the confidence-router rows above, can equal the reference's. Their effect is "
                         "on the learned router, compared here at the same FLOPs:\n\n"
                         + learned_table(list(LOSS_ARMS)))
    space = [n for n in ["reference", *SPACE_ARMS] if n in rows and "space" in rows[n]]
    mds["5.4.3"] = intro + table(list(SPACE_ARMS))
    if space:
        mds["5.4.3"] += ("\nSearched within each space: " f"{cfg.space_pairs} random pairs plus its smallest and "
                         f"largest, scored on {cfg.eval_images} calibration images (τ = 0.9); the most accurate within "
                         f"{_mf(budget)} MFLOPs on calibration, then measured on test.\n\n"
                         + markdown_table(["space", "pairs scored", "best calib %", "its MFLOPs", "its test %"],
                                          [["full" if n == "reference" else n, str(rows[n]["space"]["scored"]),
                                            "—" if rows[n]["space"]["best"] is None else _pct(rows[n]["space"]["best"]["accuracy"]),
                                            "—" if rows[n]["space"]["best"] is None else _mf(rows[n]["space"]["best"]["flops"]),
                                            "—" if rows[n]["space"]["test"] is None else _pct(rows[n]["space"]["test"]["accuracy"])]
                                           for n in space]))
    return results, mds, curves


def _arm_row(a: _Pair, tau: float, o, mc) -> dict:
    return {"little_acc": a.test.accuracy("little"), "big_acc": a.test.accuracy("big"), "tau": tau,
            "top1": o.accuracy, "flops": o.mean_flops, "exit_rate": float((o.path == 0).mean()), "mcnemar": mc,
            "operating_point": {"test_accuracy": a.method.simulate(a.test).accuracy,
                                "test_flops": a.method.simulate(a.test).mean_flops}}


def _space_search(ev, cfg: BigSmallFigures, a: _Pair, arm: str, budget: float, evaluator_cls) -> dict:
    """Random pairs within the arm's released dimensions (plus its corners), the best within ``budget`` on
    calibration, and that pair on test."""
    net = a.paths.supernet
    if a.paths.big_supernet is not None:
        return {"scored": 0, "best": None, "test": None}
    data = ev.prep.data
    calib = data.calib.subset(range(min(cfg.eval_images, len(data.calib))))
    bn = data.train.x[:1024]
    phases = _arm_training(ev, arm).phases  # the reference ("full"): the preset's own curriculum
    free = released(phases[-1], phases)
    rng = np.random.default_rng(ev.cfg.seed)
    from ...models.bigsmall import PairConfig

    pairs = [PairConfig(phase_subnet(net.space, "little", free), phase_subnet(net.space, "big", free)),
             PairConfig(phase_subnet(net.space, "little", free, smallest=True),
                        phase_subnet(net.space, "big", free, smallest=True))]
    pairs += [PairConfig(phase_subnet(net.space, "little", free, rng=rng), phase_subnet(net.space, "big", free, rng=rng))
              for _ in range(cfg.space_pairs)]
    pairs = list(dict.fromkeys(pairs))
    ev_c = evaluator_cls(net, calib.x, calib.y, bn, threshold=0.9)
    recs = ev_c.evaluate_many(pairs)
    within = [r for r in recs if r.flops <= budget]
    best = max(within, key=lambda r: r.accuracy) if within else None
    test = None
    if best is not None:
        ev_t = evaluator_cls(net, data.test.x, data.test.y, bn, threshold=0.9)
        test = ev_t.evaluate(best.pair).as_dict()
    return {"scored": len(recs), "best": None if best is None else best.as_dict(), "test": test}


# ---------------------------------------------------------------------------------------- 5.6

def _reliability(trace, path: str, bins: int = 10) -> dict:
    logits = trace.logits_of(path).double()
    conf = torch.softmax(logits, 1).max(1).values.numpy()
    correct = trace.correct[trace.index(path)]
    edges = np.linspace(0, 1, bins + 1)
    idx = np.clip(np.digitize(conf, edges) - 1, 0, bins - 1)
    out = {"confidence": [], "accuracy": [], "count": []}
    for b in range(bins):
        m = idx == b
        out["count"].append(int(m.sum()))
        out["confidence"].append(float(conf[m].mean()) if m.any() else None)
        out["accuracy"].append(float(correct[m].mean()) if m.any() else None)
    n = len(conf)
    out["ece"] = float(sum(c / n * abs(a - f) for c, a, f in zip(out["count"], out["accuracy"], out["confidence"])
                           if c))
    return out


def _fig56(ev, main: _Pair, cfg: BigSmallFigures) -> tuple[dict, str, dict]:
    trace = ev.test
    tau_op = float(ev.method.knob_[0])
    conf = torch.softmax(trace.logits_of("little").double(), 1).max(1).values.numpy()
    lc = trace.correct[trace.index("little")]
    bc = trace.correct[trace.index("big")]
    rel = {p: _reliability(trace, p) for p in ("little", "big")}
    taus = np.linspace(0, 1, 41)
    outs = [main.at(trace, float(t)) for t in taus]
    sens = {"tau": taus.tolist(), "accuracy": [o.accuracy for o in outs], "flops": [o.mean_flops for o in outs],
            "exit_rate": [float((o.path == 0).mean()) for o in outs]}
    # routing outcomes at the confidence router's τ = 0.9 (the paper's default) on test
    keep = conf >= 0.9
    groups = {"kept, little right": keep & lc, "kept, little wrong": keep & ~lc,
              "forwarded, big fixed it": ~keep & ~lc & bc, "forwarded, little was right": ~keep & lc}
    counts = {k: int(v.sum()) for k, v in groups.items()}
    names = ev.prep.data.spec.class_names

    def hist(p):
        plt = pyplot()
        fig, ax = plt.subplots(figsize=(6, 3.6))
        bins = np.linspace(0, 1, 26)
        ax.hist([conf[lc], conf[~lc]], bins=bins, stacked=True, label=["little right", "little wrong"],
                color=["tab:green", "tab:red"])
        ax.axvline(tau_op, color="k", ls="--", label=f"operating τ {tau_op:.3g}" if ev.method.router_ == "confidence"
                   else "τ (confidence router)")
        ax.set_xlabel("little head's max-softmax")
        ax.set_ylabel("test images")
        ax.legend(fontsize=8)
        ax.set_title("Exit histogram: images right of τ exit at the little head")
        save(fig, p)

    def reliability(p):
        plt = pyplot()
        fig, ax = plt.subplots(figsize=(4.5, 4.2))
        ax.plot([0, 1], [0, 1], color="0.6", ls=":")
        for h, r in rel.items():
            xs = [c for c, n in zip(r["confidence"], r["count"]) if n]
            ys = [a for a, n in zip(r["accuracy"], r["count"]) if n]
            ax.plot(xs, ys, marker="o", label=f"{h} (ECE {r['ece']:.3f})")
        ax.set_xlabel("confidence (bin mean)")
        ax.set_ylabel("accuracy")
        ax.legend(fontsize=8)
        ax.set_title("Reliability diagram (test)")
        save(fig, p)

    def sensitivity(p):
        plt = pyplot()
        fig, ax = plt.subplots(figsize=(6, 3.6))
        ax.plot(taus, 100 * np.asarray(sens["accuracy"]), color="tab:blue", label="top-1 %")
        ax.set_xlabel("τ (confidence router)")
        ax.set_ylabel("test top-1 %", color="tab:blue")
        ax2 = ax.twinx()
        ax2.plot(taus, np.asarray(sens["flops"]) / 1e6, color="tab:orange", label="MFLOPs")
        ax2.set_ylabel("MFLOPs per image", color="tab:orange")
        ax.set_title("Threshold sensitivity (test)")
        save(fig, p)

    def examples(p):
        plt = pyplot()
        k = cfg.examples
        fig, axes = plt.subplots(len(groups), max(1, k), figsize=(1.3 * max(1, k), 1.6 * len(groups)), squeeze=False)
        x = ev.test.inputs()
        lp, bp = trace.preds[trace.index("little")], trace.preds[trace.index("big")]
        for row, (g, m) in enumerate(groups.items()):
            idx = np.flatnonzero(m)[:k]
            for col in range(max(1, k)):
                ax = axes[row][col]
                ax.axis("off")
                if col < len(idx):
                    i = idx[col]
                    img = x[i].permute(1, 2, 0).numpy()
                    ax.imshow(img.squeeze(-1) if img.shape[-1] == 1 else img, cmap="gray")
                    lab = lambda c: names[c] if names else str(c)
                    ax.set_title(f"y {lab(trace.labels[i])}\nL {lab(lp[i])} B {lab(bp[i])}\nc {conf[i]:.2f}",
                                 fontsize=6)
            axes[row][0].text(-0.1, 0.5, g, transform=axes[row][0].transAxes, ha="right", va="center", fontsize=7)
        fig.suptitle("Routed right and wrong at τ = 0.9 (y: label, L: little, B: big, c: confidence)", fontsize=8)
        save(fig, p)

    res = {"reliability": rel, "sensitivity": sens, "routing_outcomes_tau_0.9": counts}
    md = ("Test split. Routing outcomes at τ = 0.9: " + ", ".join(f"{k} {v}" for k, v in counts.items())
          + f". Expected calibration error: little {rel['little']['ece']:.4f}, big {rel['big']['ece']:.4f}.\n")
    return res, md, {"fig56_exit_histogram.png": hist, "fig56_reliability.png": reliability,
                     "fig56_threshold_sensitivity.png": sensitivity, "fig56_examples.png": examples}


# ---------------------------------------------------------------------------------------- seeds

def _seed_rows(ev, cfg: BigSmallFigures, log) -> dict:
    """Little, big and the dynamic rows for every extra co-training seed (the data split stays this run's)."""
    out: dict[str, dict[str, list]] = {}
    pre = ev.prep.preset

    def add(name, top1, top5):
        d = out.setdefault(name, {"top1": [], "top5": []})
        d["top1"].append(top1)
        d["top5"].append(top5)

    def collect(pair: _Pair, trace):
        for p in ("little", "big"):
            lo = trace.logits[trace.index(p)]
            add(f"{p} subnet", trace.accuracy(p), _topk(lo, trace.labels))
        for tau in cfg.thresholds:
            o = pair.at(trace, tau)
            add(f"dynamic τ={tau:g}", o.accuracy, _outcome_topk(pair.method.own_trace(trace), o))

    collect(_Pair(ev, ev.prep.paths, "main"), ev.test)
    for s in cfg.seeds:
        log(f"[figures] bigsmall: co-training seed {s}")
        net, router, _ = fit_bigsmall(pre.bigsmall_model, ev.prep.data, pre.bigsmall_training, seed=s,
                                      device=ev.cfg.device, progress=ev.cfg.progress, log=log,
                                      pair=ev.prep.paths.pair)
        pair = _Pair(ev, BigSmallPaths(net, router, ev.prep.paths.pair), f"seed {s}")
        collect(pair, pair.test)
    return out


# ---------------------------------------------------------------------------------------- make

def make(ev, cfg: BigSmallFigures, log: Callable[[str], None]) -> list[Section]:
    main = _Pair(ev, ev.prep.paths, "co-trained")
    sb = ev.cfg.serving_batch
    budget = cfg.budget_mflops * 1e6 if cfg.budget_mflops is not None else float(ev.method.simulate(ev.calib).mean_flops)
    net = ev.prep.paths.supernet
    card = net.cardinality()
    sections: list[Section] = []

    rows, extras = _systems(ev, cfg, main, log)
    timing = _measure(rows, ev, log)
    seeds = _seed_rows(ev, cfg, log) if cfg.seeds else None
    md51 = (f"Search space: {card.little} little subnets, {card.single} big ones, {card.pairs} pairs "
            f"(`cardinality` in the results). Deployed pair: {'searched (`pair`)' if ev.method.pair else 'the largest'}"
            f". Every system timed side by side in this run: batch-1 median over {timing['rounds']} interleaved "
            f"rounds of {timing['batch1_images']} images one at a time ({timing['rounds'] * timing['batch1_images']} "
            f"timed calls after warm-up), throughput over {timing['timed_images']} test images at batch {sb}. "
            f"Peak memory: float32 parameters plus the peak of live bytes allocated during one batch-1 call "
            f"({timing['memory_method']}). "
            + (f"Headline rows: mean ± std over seeds {[ev.cfg.seed, *cfg.seeds]} of co-training (same data split)."
               if seeds else "One co-training seed (extra seeds: `--figures seeds=[1,2]`).")
            + "\n\n" + _rows_md(rows, sb, seeds)
            + f"\n\\* {timing['energy_source']}.\n")
    sections.append(Section("bigsmall_5_1", "5.1 — little, big, dynamic and the baselines", md51,
                            {"rows": _public(rows), "timing": timing, "seeds": seeds,
                             "cardinality": {k: str(v) for k, v in dataclasses.asdict(card).items()}}))
    res_vs, md_vs = _vs_cascade(ev, main, rows, extras, log)
    sections.append(Section("bigsmall_vs_cascade", "Co-training against the independent cascade", md_vs, res_vs))
    sections.append(Section(
        "bigsmall_5_2", "5.2 — Pareto plots",
        "The co-trained system's test curve over τ (FLOPs counted; latency and energy predicted from the measured "
        "path latencies, energy scaled by the big subnet's measured joules per second) and every system of 5.1 as "
        "measured.\n", {},
        {f"pareto_{x}.png": (lambda p, x=x: _pareto_plot(p, ev, main, rows, x, timing))
         for x in ("flops", "latency", "energy")}))
    if cfg.deploy:
        from .deploy import deploy_pair

        log("[figures] bigsmall: 4.6 deployment (ONNX, FP16, INT8)")
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            dep = deploy_pair(ev.method, ev.prep.paths, ev.prep.data.test, tmp, calib_images=ev.prep.data.calib.x[:256],
                              serving_batch=sb, rounds=ev.prep.preset.runtime_rounds,
                              batch1_samples=min(50, ev.prep.preset.batch1_samples),
                              class_names=ev.prep.data.spec.class_names, log=log)
        chk = dep.get("fp32_check", {})
        sections.append(Section(
            "bigsmall_4_6", "4.6 — deployment: ONNX, FP16, INT8",
            f"The deployed pair at the fitted operating point ({ev.method.router_} router) as static subnets in ONNX "
            f"(`dyninfer export`), then FP16 and INT8 (dynamic; static with 256 calibration images) copies of both "
            f"graphs, each run through the shared onnxruntime runtime on the test split. The fp32 graphs against "
            f"the torch runtime: {chk.get('pred_mismatch')} predictions and {chk.get('path_mismatch')} routes differ of {chk.get('n')}. "
            f"Times interleaved in this run.\n\n" + dep["table"], {k: v for k, v in dep.items() if k != "table"}))
    if cfg.search:
        from ...io import cache_dir, digest
        from ...search import SMALL, compare_strategies, comparison_table, supernet_fingerprint

        settings = SMALL.replace(**cfg.search_settings)
        log("[figures] bigsmall: 5.3 the search strategies")
        key = digest(dataclasses.asdict(settings))[:8]  # other settings: another study, never mixed
        folder = cache_dir() / "search" / ev.prep.data.spec.name / \
            f"{supernet_fingerprint(net)}-{ev.prep.data.fingerprint}-{key}"
        res53 = compare_strategies(net, ev.prep.data, budget_flops=budget, settings=settings, folder=folder,
                                   seed=ev.cfg.seed, log=log, progress=ev.cfg.progress)
        sections.append(Section("bigsmall_5_3", "5.3 — search strategies",
                                f"Each strategy searches little/big pairs of this run's supernet under the confidence "
                                f"router (τ = {settings.threshold:g}), scoring pairs on {settings.eval_images} "
                                f"calibration images; its best pair within {_mf(budget)} MFLOPs is chosen there and "
                                f"measured on test. Search state is cached in `{folder}` (a rerun resumes).\n\n"
                                + comparison_table(res53) + _predictor_md(res53),
                                {k: v for k, v in res53.items() if k != "results"}
                                | {"predictor": {k: (res53.get("results", {}).get("predictor") or {}).get(k)
                                                 for k in ("report", "remeasured")}},
                                {"search_fronts.png": lambda p: _fronts_plot(p, res53, budget)}))
    rr, md_r = _routers(ev, log)
    sections.append(Section("bigsmall_5_4_1", "5.4.1 — routers", md_r, {"routers": rr}))
    res56, md56, plots56 = _fig56(ev, main, cfg)
    sections.append(Section("bigsmall_5_6", "5.6 — exits, reliability, sensitivity, examples", md56, res56,
                            {k: v for k, v in plots56.items()}))
    # the ablation arms last: they only train (a long run's timings above are not shared with them)
    if cfg.ablations:
        res_ab, mds, curves = _ablations(ev, cfg, main, budget, log)

        def plot(p):
            tradeoff_plot(p, curves=[{"label": k, "x": c.cost / 1e6, "y": c.accuracy} for k, c in curves.items()],
                          points=[], xlabel="MFLOPs per image", title="Ablation arms (test, confidence router)")
        sections.append(Section("bigsmall_5_4_2", "5.4.2 — independent vs co-trained vs co-trained + distillation",
                                mds["5.4.2"], res_ab, {"ablation_curves.png": plot}))
        sections.append(Section("bigsmall_5_4_3", "5.4.3 — the search space's dimensions", mds["5.4.3"], {}))
        sections.append(Section("bigsmall_5_4_4", "5.4.4 — each loss term removed", mds["5.4.4"], {}))
    order = ["bigsmall_5_1", "bigsmall_vs_cascade", "bigsmall_5_2", "bigsmall_5_3", "bigsmall_5_4_1",
             "bigsmall_5_4_2", "bigsmall_5_4_3", "bigsmall_5_4_4", "bigsmall_4_6", "bigsmall_5_6"]
    sections.sort(key=lambda sec: order.index(sec.key))
    return sections


FIGURES.register("bigsmall", Figures(BigSmallFigures, make))
