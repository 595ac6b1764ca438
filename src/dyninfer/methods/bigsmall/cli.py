"""``dyninfer search``: search a little/big pair of the preset's co-trained big/little supernet.

One command for the three strategies of :mod:`dyninfer.search` (``evolution``: Optuna's NSGA-II; ``predictor``:
a once-for-all accuracy predictor; ``darts``: first-order DARTS). The supernet is the one ``dyninfer run
bigsmall`` trains (cached); pairs are scored on the calibration split under the confidence router at
``--threshold``, their batch norms re-estimated on training images. State goes to ``OUT/state/<strategy>/``
so an interrupted search resumes (a resumed search must score on the same supernet, data and images: a changed
one is refused, never mixed in); ``OUT/search.json`` (written atomically) holds every scored pair, the Pareto
front or the chosen pair, the best pair within ``--budget-mflops`` and the search cost (CPU seconds and hours,
architectures evaluated, in total and in this call).
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

from ...cli import COMMANDS, Command, add_common
from ...errors import ConfigError
from ...io import write_json

STRATEGIES = ("evolution", "predictor", "darts")


def _add(p: argparse.ArgumentParser) -> None:
    add_common(p)
    p.add_argument("strategy", choices=STRATEGIES, help="evolution (NSGA-II), predictor (once-for-all) or darts")
    p.add_argument("--out", default=None,
                   help="output folder (default reports/search-<strategy>-<dataset>-<preset>-seed<seed>)")
    p.add_argument("--threshold", type=float, default=0.9, help="the confidence router's τ (default 0.9)")
    p.add_argument("--objective", choices=["flops", "latency"], default="flops",
                   help="evolution's cost: counted FLOPs or latency from a table of measured blocks")
    p.add_argument("--budget-mflops", type=float, default=None,
                   help="the reported best pair: the most accurate with expected MFLOPs within this (default: any)")
    p.add_argument("--eval-images", type=int, default=2000, help="calibration images that score a pair")
    p.add_argument("--bn-images", type=int, default=1024, help="training images that re-estimate a pair's norms")
    p.add_argument("--population", type=int, default=16, help="evolution: pairs per generation")
    p.add_argument("--generations", type=int, default=5, help="evolution: generations")
    p.add_argument("--measure", type=int, default=64, help="predictor: measured pairs that train the predictor")
    p.add_argument("--candidates", type=int, default=2000, help="predictor: sampled pairs ranked by prediction")
    p.add_argument("--remeasure", type=int, default=8, help="predictor: chosen pairs measured afterwards")
    p.add_argument("--epochs", type=int, default=3, help="darts: epochs")
    p.add_argument("--steps-per-epoch", type=int, default=None, help="darts: steps per epoch (default: one pass)")
    p.add_argument("--eta", type=float, default=1.0, help="darts: weight of the expected-cost term")


def run_search(args: argparse.Namespace) -> dict:
    """Run one strategy as ``args`` says; returns the JSON written to ``OUT/search.json``."""
    from ...harness import load_data
    from ...presets import get_preset
    from ...search import LatencyTable, PairEvaluator, darts_search, evolutionary_search, predictor_search
    from ...train.bigsmall import fit_bigsmall

    from ...check import number

    for name in ("eval_images", "bn_images", "population", "generations", "measure", "candidates", "epochs"):
        number(f"--{name.replace('_', '-')}", getattr(args, name), lo=1, integer=True)
    number("--remeasure", args.remeasure, lo=0, integer=True)
    number("--budget-mflops", args.budget_mflops, lo=0, lo_open=True, none_ok=True)
    number("--threshold", args.threshold, lo=0)
    if args.objective == "latency" and args.strategy != "evolution":
        raise ConfigError(f"--objective latency is the evolutionary search's; {args.strategy} minimises FLOPs")
    preset = get_preset(args.preset)
    out = Path(args.out or f"reports/search-{args.strategy}-{args.dataset}-{preset.name}-seed{args.seed}")
    log = print
    data = load_data(args.dataset, preset, seed=args.seed, data_root=args.data_root, log=log)
    net, _, meta = fit_bigsmall(preset.bigsmall_model, data, preset.bigsmall_training, seed=args.seed,
                                device=args.device, progress=not args.no_progress, log=log)
    calib = data.calib.subset(range(min(args.eval_images, len(data.calib))))
    bn = data.train.x[:args.bn_images]
    table = None
    if args.objective == "latency":
        table = LatencyTable(net, batches=(1, 32), clock="wall" if str(args.device).startswith("cuda") else "cpu")
    ev = PairEvaluator(net, calib.x, calib.y, bn, threshold=args.threshold, latency_table=table)
    signature = {"supernet": meta.get("checkpoint"), "data": data.fingerprint, "eval_images": len(calib),
                 "bn_images": int(bn.shape[0]), "seed": args.seed, "preset": preset.name}
    state = out / "state" / args.strategy
    t0 = time.perf_counter()
    res: dict = {"strategy": args.strategy, "dataset": args.dataset, "preset": preset.name, "seed": args.seed,
                 "threshold": args.threshold, "eval_images": len(calib), "supernet": meta.get("checkpoint"),
                 "cardinality": {k: str(v) for k, v in dataclasses.asdict(net.cardinality()).items()}}
    if args.strategy == "evolution":
        r = evolutionary_search(ev, population=args.population, generations=args.generations,
                                objective=args.objective, folder=state, seed=args.seed, signature=signature, log=log)
        res.update(r.as_dict())
        pool = list(r.front)
    elif args.strategy == "predictor":
        r = predictor_search(ev, measure=args.measure, candidates=args.candidates, remeasure=args.remeasure,
                             seed=args.seed, log=log)
        res.update(r.as_dict())
        pool = [c.measured for c in r.front if c.measured is not None] + list(r.measured)
    else:
        r = darts_search(net, data.train, calib, epochs=args.epochs, eta=args.eta, threshold=args.threshold,
                         evaluator=ev, folder=state, seed=args.seed, steps_per_epoch=args.steps_per_epoch,
                         signature=signature, log=log, progress=not args.no_progress)
        res.update(r.as_dict())
        pool = [r.record] if r.record is not None else []
    within = [p for p in pool if args.budget_mflops is None or p.flops <= args.budget_mflops * 1e6]
    best = max(within, key=lambda x: x.accuracy) if within else None
    cost = dict(res.get("cost") or {})
    cpu_now = ev.cpu_seconds
    cpu = float(cost.get("cpu_seconds", cpu_now))
    if args.strategy == "predictor":  # the predictor's own training besides measuring pairs
        cpu = cpu_now + float(res.get("report", {}).get("seconds", 0.0))
    res["search_cost"] = {"evaluated": int(cost.get("evaluated", ev.evaluated)), "cpu_seconds": cpu,
                          "cpu_hours": cpu / 3600, "evaluated_this_call": ev.evaluated,
                          "cpu_seconds_this_call": cpu_now, "cache_hits_this_call": ev.cache_hits,
                          "wall_seconds_this_call": time.perf_counter() - t0}
    res["budget_mflops"] = args.budget_mflops
    res["best"] = best.as_dict() if best is not None else None
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "search.json", res)
    if best is not None:
        log(f"[search] {args.strategy}: best accuracy {100 * best.accuracy:.2f}% at {best.flops / 1e6:.3f} MFLOPs "
            f"(exit rate {best.exit_rate:.2f}); {res['search_cost']['evaluated']} pairs evaluated, "
            f"{cpu / 3600:.4f} CPU-hours; {out / 'search.json'}")
    else:
        log(f"[search] {args.strategy}: no scored pair within {args.budget_mflops} MFLOPs; {out / 'search.json'}")
    return res


def _run(args: argparse.Namespace) -> int:
    run_search(args)
    return 0


COMMANDS.register("search", Command(
    "search a little/big pair of the co-trained big/little supernet (evolution, predictor or darts)", _add, _run))
