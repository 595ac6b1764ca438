"""``dyninfer search``: search a little/big pair of the preset's co-trained big/little supernet.

One command for the three strategies of :mod:`dyninfer.search` (``evolution``: Optuna's NSGA-II; ``predictor``:
a once-for-all accuracy predictor; ``darts``: DARTS, first or second order). The supernet is the one ``dyninfer run
bigsmall`` trains (cached); pairs are scored on the calibration split under the confidence router at
``--threshold``, their batch norms re-estimated on training images. State goes to ``OUT/state/<strategy>/``
so an interrupted search resumes (a resumed search must score on the same supernet, data and images: a changed
one is refused, never mixed in); ``OUT/search.json`` (written atomically) holds every scored pair, the Pareto
front or the chosen pair, the best pair within ``--budget-mflops`` and the search cost (CPU seconds and hours,
architectures evaluated, in total and in this call). The command is a thin front of
:func:`dyninfer.search.compare.run_strategy` (a report compares the strategies with
:func:`~dyninfer.search.compare.compare_strategies`).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ...cli import COMMANDS, Command, add_common

# dyninfer.search.compare.STRATEGIES, spelled out: the search package (torch, optuna) is imported only to run
STRATEGIES = ("evolution", "predictor", "darts")


def _add(p: argparse.ArgumentParser) -> None:
    add_common(p)
    p.add_argument("strategy", choices=STRATEGIES, help="evolution (NSGA-II), predictor (once-for-all) or darts")
    p.add_argument("--out", default=None,
                   help="output folder (default reports/search-<strategy>-<dataset>-<preset>-seed<seed>)")
    p.add_argument("--threshold", type=float, default=0.9, help="the confidence router's τ (default 0.9)")
    p.add_argument("--objective", choices=["flops", "latency"], default="flops",
                   help="the cost evolution minimises and DARTS weighs: counted FLOPs or latency from a table of "
                        "measured blocks (the predictor ranks by FLOPs)")
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
    p.add_argument("--darts-order", type=int, default=1,
                   help="darts: 1 first-order, 2 second-order (through one unrolled weight step; about 3x the cost)")


def _settings(args: argparse.Namespace):
    from ...search.compare import SearchSettings

    return SearchSettings(threshold=args.threshold, eval_images=args.eval_images, bn_images=args.bn_images,
                          objective=args.objective, population=args.population, generations=args.generations,
                          measure=args.measure, candidates=args.candidates, remeasure=args.remeasure,
                          epochs=args.epochs, steps_per_epoch=args.steps_per_epoch, eta=args.eta,
                          darts_order=args.darts_order)


def run_search(args: argparse.Namespace) -> dict:
    """Run one strategy as ``args`` says (:func:`dyninfer.search.compare.run_strategy` on the preset's co-trained
    supernet); returns the JSON written to ``OUT/search.json``."""
    from ...check import number
    from ...harness import load_data
    from ...presets import get_preset
    from ...search.compare import run_strategy
    from ...train.bigsmall import fit_bigsmall

    settings = _settings(args).check(args.strategy, flags=True)  # before loading or training anything
    number("--budget-mflops", args.budget_mflops, lo=0, lo_open=True, none_ok=True)
    preset = get_preset(args.preset)
    out = Path(args.out or f"reports/search-{args.strategy}-{args.dataset}-{preset.name}-seed{args.seed}")
    log = print
    data = load_data(args.dataset, preset, seed=args.seed, data_root=args.data_root, log=log)
    net, _, meta = fit_bigsmall(preset.bigsmall_model, data, preset.bigsmall_training, seed=args.seed,
                                device=args.device, progress=not args.no_progress, log=log)
    signature = {"supernet": meta.get("checkpoint"), "data": data.fingerprint,
                 "eval_images": min(args.eval_images, len(data.calib)),
                 "bn_images": int(data.train.x[:args.bn_images].shape[0]), "seed": args.seed, "preset": preset.name}
    return run_strategy(args.strategy, net, data, settings=settings,
                        budget_flops=None if args.budget_mflops is None else args.budget_mflops * 1e6,
                        folder=out, seed=args.seed, signature=signature,
                        info={"dataset": args.dataset, "preset": preset.name, "supernet": meta.get("checkpoint")},
                        log=log, progress=not args.no_progress)


def _run(args: argparse.Namespace) -> int:
    run_search(args)
    return 0


COMMANDS.register("search", Command(
    "search a little/big pair of the co-trained big/little supernet (evolution, predictor or darts)", _add, _run))
