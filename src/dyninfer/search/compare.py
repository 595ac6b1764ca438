"""Running the search strategies on one co-trained supernet, and comparing them (NAS-for-dynamic-inference paper,
5.3 "NAS strategy comparison").

* :func:`run_strategy` — one strategy (``evolution``: Optuna's NSGA-II; ``predictor``: once-for-all accuracy
  predictor; ``darts``: DARTS, first or second order) on a trained :class:`~dyninfer.models.bigsmall.BigSmallSupernet`, its
  pairs scored by a :class:`~dyninfer.search.fitness.PairEvaluator` on the calibration split under the confidence
  router. Returns (and, with ``folder``, writes atomically to ``folder/search.json``) the JSON ``dyninfer search``
  writes: every scored pair, the front or the chosen pair, the best pair within a FLOPs budget, the search cost.
  State goes to ``folder/state/<strategy>/``, so an interrupted search resumes (on the same supernet, data,
  images and settings; anything else is refused).
* :func:`compare_strategies` — all of them on the same supernet, data, router threshold and budget, each with a
  fresh evaluator (its own cache and cost counters): one row per strategy with the best dynamic accuracy within
  the FLOPs budget (its pair, expected FLOPs, exit rate; optionally re-scored on the test split), the
  architectures evaluated, CPU seconds and hours, wall seconds; plus each strategy's scored pairs and their
  Pareto front, for plotting. :func:`comparison_table` renders the rows as Markdown.
* :class:`SearchSettings` — the settings of all three strategies (the CLI's defaults); :data:`SMALL` holds small
  budgets for a quick comparison.

The search cost is process CPU time (``time.process_time``) of scoring pairs (batch-norm re-estimation,
forwards, latency timing), plus the predictor's training or DARTS's steps; ``evaluated`` counts the pairs
actually run (a pair answered from the cache is not counted). For a resumed search ``cpu_seconds`` and
``evaluated`` are totals over every run; ``wall_seconds`` is this call's.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from ..check import number
from ..errors import ConfigError
from ..io import digest, write_json
from ..models.bigsmall import BigSmallSupernet
from ..runtime.cost import model_device
from .fitness import LatencyTable, PairEvaluator, PairRecord, json_safe, pareto_indices

STRATEGIES = ("evolution", "predictor", "darts")
COMPARE_FORMAT = "dyninfer-bigsmall-search-comparison-1"
NAMES = {"evolution": "Evolutionary (NSGA-II)", "predictor": "OFA-style (accuracy predictor)",
         "darts": "DARTS"}


@dataclass(frozen=True)
class SearchSettings:
    """Settings of the three strategies (defaults: those of ``dyninfer search``).

    Attributes:
        threshold: τ of the confidence router (keep the little answer where its max-softmax >= τ).
        eval_images: calibration images that score a pair.
        bn_images: training images that re-estimate a pair's batch norms.
        objective: the cost evolution minimises and DARTS's cost term weighs: ``flops`` or ``latency`` (a table of
            measured blocks); the predictor ranks by FLOPs only.
        population, generations: evolution's pairs per generation and generations.
        measure, candidates, remeasure: the predictor's measured pairs, pairs ranked by prediction, and chosen
            pairs measured afterwards.
        epochs, steps_per_epoch, eta: DARTS's epochs, steps per epoch (None: one pass over the training split)
            and weight of the expected-cost term.
        darts_order: 1 (first-order DARTS) or 2 (second-order: through one unrolled weight step).
    """

    threshold: float = 0.9
    eval_images: int = 2000
    bn_images: int = 1024
    objective: str = "flops"
    population: int = 16
    generations: int = 5
    measure: int = 64
    candidates: int = 2000
    remeasure: int = 8
    epochs: int = 3
    steps_per_epoch: int | None = None
    eta: float = 1.0
    darts_order: int = 1

    def check(self, strategy: str | None = None, *, flags: bool = False) -> "SearchSettings":
        """Raise a ConfigError for a bad setting (named as the CLI flag with ``flags``), or for the latency
        objective with the predictor; returns self."""
        def name(field: str) -> str:
            return f"--{field.replace('_', '-')}" if flags else field

        for f in ("eval_images", "bn_images", "population", "generations", "measure", "candidates", "epochs"):
            number(name(f), getattr(self, f), lo=1, integer=True)
        number(name("remeasure"), self.remeasure, lo=0, integer=True)
        number(name("threshold"), self.threshold, lo=0)
        number(name("steps_per_epoch"), self.steps_per_epoch, lo=1, integer=True, none_ok=True)
        number(name("eta"), self.eta, lo=0)
        if self.darts_order not in (1, 2):
            raise ConfigError(f"{name('darts_order')} must be 1 (first-order DARTS) or 2 (second-order), got "
                              f"{self.darts_order!r}")
        if self.objective not in ("flops", "latency"):
            raise ConfigError(f"{name('objective')} must be one of ['flops', 'latency'], got {self.objective!r}")
        if strategy is not None:
            if strategy not in STRATEGIES:
                raise ConfigError(f"strategy must be one of {list(STRATEGIES)}, got {strategy!r}")
            if self.objective == "latency" and strategy == "predictor":
                raise ConfigError(f"{name('objective')} latency is for evolution and darts; the predictor ranks "
                                  f"pairs by FLOPs")
        return self

    def replace(self, **changes: Any) -> "SearchSettings":
        """A copy with ``changes`` (a ConfigError naming an unknown setting)."""
        unknown = sorted(set(changes) - {f.name for f in dataclasses.fields(self)})
        if unknown:
            raise ConfigError(f"unknown search settings {unknown}; known: {[f.name for f in dataclasses.fields(self)]}")
        return dataclasses.replace(self, **changes)


#: Small budgets for all three strategies: a comparison that runs in minutes on a CPU for a small supernet.
SMALL = SearchSettings(eval_images=1000, bn_images=512, population=8, generations=4, measure=24, candidates=1000,
                       remeasure=4, epochs=1, steps_per_epoch=30)


def supernet_fingerprint(net: BigSmallSupernet) -> str:
    """First 16 hex digits of the SHA-256 of the supernet's state (weights and batch-norm statistics)."""
    return digest({k: v.detach().cpu() for k, v in net.state_dict().items()})[:16]


def _settings(settings: SearchSettings | None, overrides: dict) -> SearchSettings:
    s = settings if settings is not None else SearchSettings()
    if not isinstance(s, SearchSettings):
        raise ConfigError(f"settings must be a SearchSettings, got {type(s).__name__}")
    return s.replace(**overrides) if overrides else s


def _scored(strategy: str, res: dict) -> list[dict]:
    """The pairs a strategy's JSON holds with measured scores (distinct by encoding, first kept)."""
    if strategy == "evolution":
        recs = list(res.get("trials", []))
    elif strategy == "predictor":
        recs = list(res.get("measured", [])) + [c["measured"] for c in res.get("front", []) if c.get("measured")]
    else:
        recs = [res["record"]] if res.get("record") else []
    out: dict[tuple, dict] = {}
    for r in recs:
        out.setdefault(tuple(r["encoding"]), {k: v for k, v in r.items() if k != "generation"})
    return list(out.values())


def _best(records: Sequence[PairRecord], budget_flops: float | None) -> PairRecord | None:
    """The most accurate record with expected FLOPs within the budget (ties: the cheaper)."""
    within = [r for r in records if budget_flops is None or r.flops <= budget_flops]
    return max(within, key=lambda r: (r.accuracy, -r.flops)) if within else None


def run_strategy(strategy: str, net: BigSmallSupernet, data: Any, *, settings: SearchSettings | None = None,
                 budget_flops: float | None = None, folder: str | Path | None = None, seed: int = 0,
                 signature: dict | None = None, info: dict | None = None, result_name: str = "search.json",
                 log: Callable[[str], None] | None = None, progress: bool = False, **overrides: Any) -> dict:
    """Run one search strategy on a trained big/little supernet (see the module doc).

    Args:
        strategy: ``evolution``, ``predictor`` or ``darts``.
        net: the co-trained supernet (never changed: pairs are scored on a copy, DARTS searches a copy).
        data: a :class:`~dyninfer.data.datasets.Dataset` (``train``, ``calib``, ``fingerprint``): pairs are scored
            on the first ``eval_images`` calibration images, batch norms re-estimated on the first ``bn_images``
            training images; DARTS steps its weights on ``train`` and its α on those calibration images.
        settings: the strategies' settings (default :class:`SearchSettings`); ``overrides`` change single fields,
            e.g. ``population=4``.
        budget_flops: the reported ``best`` pair is the most accurate with expected FLOPs per image within this
            (None: any).
        folder: with it, state goes to ``folder/state/<strategy>`` (a second call resumes) and the result to
            ``folder/<result_name>``; None: nothing is written and nothing resumes.
        seed: the strategy's seed (sampler, pairs, α and batches).
        signature: what the scores depend on, stored with the state so that a resumed search on anything else is
            refused; default: the supernet's :func:`supernet_fingerprint`, the data's fingerprint, the image
            counts and the seed.
        info: extra keys put into the result (e.g. ``dataset``, ``preset``, ``supernet``).
        log: receives the strategies' progress lines and a summary line.
        progress: progress bars.

    Returns:
        The result as JSON: ``strategy``, ``seed``, ``threshold``, ``eval_images``, ``cardinality``, the strategy's
        own result (:meth:`SearchResult.as_dict`, :meth:`PredictorResult.as_dict` or :meth:`DartsResult.as_dict`),
        ``search_cost`` (``evaluated``, ``cpu_seconds``, ``cpu_hours`` in total over every run of a resumed search;
        ``evaluated_this_call``, ``cpu_seconds_this_call``, ``cache_hits_this_call``, ``wall_seconds_this_call``),
        ``budget_flops`` and ``budget_mflops``, ``best`` (a pair record, or None when no scored pair fits the
        budget). NaN or infinite figures are None.
    """
    from . import darts_search, evolutionary_search, predictor_search

    s = _settings(settings, overrides).check(strategy)
    if not isinstance(net, BigSmallSupernet):
        raise ConfigError(f"run_strategy needs a BigSmallSupernet, got {type(net).__name__}")
    number("budget_flops", budget_flops, lo=0, lo_open=True, none_ok=True)
    number("seed", seed, lo=0, integer=True)
    say = log or (lambda line: None)
    t0 = time.perf_counter()
    calib = data.calib.subset(range(min(s.eval_images, len(data.calib))))
    bn = data.train.x[:s.bn_images]
    table = None
    if s.objective == "latency":
        table = LatencyTable(net, batches=(1, 32), clock="wall" if model_device(net).type == "cuda" else "cpu")
    ev = PairEvaluator(net, calib.x, calib.y, bn, threshold=s.threshold, latency_table=table)
    if signature is None:
        signature = {"supernet": supernet_fingerprint(net), "data": data.fingerprint, "eval_images": len(calib),
                     "bn_images": int(bn.shape[0]), "seed": seed}
    folder = Path(folder) if folder is not None else None
    state = folder / "state" / strategy if folder is not None else None
    res: dict = {"strategy": strategy, **(info or {}), "seed": seed, "threshold": s.threshold,
                 "eval_images": len(calib),
                 "cardinality": {k: str(v) for k, v in dataclasses.asdict(net.cardinality()).items()}}
    if strategy == "evolution":
        r = evolutionary_search(ev, population=s.population, generations=s.generations, objective=s.objective,
                                folder=state, seed=seed, signature=signature, log=log)
        res.update(r.as_dict())
        pool = list(r.records)
    elif strategy == "predictor":
        r = predictor_search(ev, measure=s.measure, candidates=s.candidates, remeasure=s.remeasure, seed=seed,
                             log=log, progress=progress)
        res.update(r.as_dict())
        pool = [c.measured for c in r.front if c.measured is not None] + list(r.measured)
    else:
        r = darts_search(net, data.train, calib, epochs=s.epochs, eta=s.eta, threshold=s.threshold, evaluator=ev,
                         folder=state, seed=seed, steps_per_epoch=s.steps_per_epoch, signature=signature, log=log,
                         progress=progress, order=s.darts_order, latency_table=table)
        res.update(r.as_dict())
        pool = [r.record] if r.record is not None else []
    best = _best(pool, budget_flops)
    cost = dict(res.get("cost") or {})
    cpu_now = ev.cpu_seconds
    cpu = float(cost.get("cpu_seconds", cpu_now))
    if strategy == "predictor":  # the predictor's own training besides measuring pairs
        cpu = cpu_now + float(res.get("report", {}).get("seconds") or 0.0)
    res["search_cost"] = {"evaluated": int(cost.get("evaluated", ev.evaluated)), "cpu_seconds": cpu,
                          "cpu_hours": cpu / 3600, "evaluated_this_call": ev.evaluated,
                          "cpu_seconds_this_call": cpu_now, "cache_hits_this_call": ev.cache_hits,
                          "wall_seconds_this_call": time.perf_counter() - t0}
    res["budget_flops"] = budget_flops
    res["budget_mflops"] = None if budget_flops is None else budget_flops / 1e6
    res["best"] = best.as_dict() if best is not None else None
    res = json_safe(res)
    where = ""
    if folder is not None:
        folder.mkdir(parents=True, exist_ok=True)
        write_json(folder / result_name, res)
        where = f"; {folder / result_name}"
    if best is not None:
        say(f"[search] {strategy}: best accuracy {100 * best.accuracy:.2f}% at {best.flops / 1e6:.3f} MFLOPs "
            f"(exit rate {best.exit_rate:.2f}); {res['search_cost']['evaluated']} pairs evaluated, "
            f"{cpu / 3600:.4f} CPU-hours{where}")
    else:
        say(f"[search] {strategy}: no scored pair within "
            f"{'any budget' if budget_flops is None else f'{budget_flops / 1e6:g} MFLOPs'}{where}")
    return res


def compare_strategies(net: BigSmallSupernet, data: Any, *, strategies: Sequence[str] = STRATEGIES,
                       budget_flops: float | None, settings: SearchSettings | None = None,
                       folder: str | Path | None = None, seed: int = 0, signature: dict | None = None,
                       test: bool = True, log: Callable[[str], None] | None = None, progress: bool = False,
                       **overrides: Any) -> dict:
    """Run ``strategies`` on the same supernet, data, threshold and FLOPs budget and compare them (paper 5.3).

    Args:
        net: the co-trained supernet (never changed).
        data: the dataset (``train``, ``calib``, ``test``, ``fingerprint``).
        strategies: which strategies, in the order of the rows.
        budget_flops: the fixed cost: each row's best pair is the most accurate (on the calibration images that
            score pairs) whose expected FLOPs per image are within it; None: no budget.
        settings: the strategies' settings (default :data:`SMALL`: small budgets); ``overrides`` change fields.
        folder: with it, strategy ``s`` keeps its state in ``folder/state/<s>`` (resumable; the same state
            ``dyninfer search <s> --out folder`` would resume, given the same signature) and writes
            ``folder/search-<s>.json``; the comparison goes to ``folder/comparison.json``.
        seed: every strategy's seed.
        signature: see :func:`run_strategy` (default: computed once from the supernet and the data).
        test: also score each row's best pair on the test split (``test_accuracy``, ``test_exit_rate``,
            ``test_flops``; its cost is not part of the search cost). Choosing on the calibration split and
            reporting on the test split keeps the reported top-1 unbiased.
        log, progress: as :func:`run_strategy`.

    Returns:
        ``{"format", "budget_flops", "budget_mflops", "threshold", "seed", "settings", "rows", "scored", "fronts",
        "results"}``: ``rows`` one dict per strategy (``strategy``, ``name``, ``best_accuracy``, ``best_pair``,
        ``best_flops``, ``best_mflops``, ``best_exit_rate``, ``best_encoding``, ``evaluated``, ``cpu_seconds``,
        ``cpu_hours``, ``wall_seconds``, ``scored_pairs``, and the ``test_*`` figures; best figures None when no
        scored pair fits the budget); ``scored[s]`` every pair strategy ``s`` measured (pair records as dicts:
        ``flops``, ``accuracy``, ``exit_rate``, ``encoding``, …) and ``fronts[s]`` their Pareto front (accuracy up,
        expected FLOPs down, by increasing FLOPs) — for plotting; ``results[s]`` the full :func:`run_strategy`
        result.
    """
    strategies = list(strategies)
    if not strategies or any(s not in STRATEGIES for s in strategies) or len(set(strategies)) != len(strategies):
        raise ConfigError(f"strategies must be distinct names from {list(STRATEGIES)}, got {strategies}")
    s = _settings(settings if settings is not None else SMALL, overrides).check()
    if s.objective == "latency" and "predictor" in strategies:
        raise ConfigError("objective 'latency' is for evolution and darts; the predictor ranks pairs by FLOPs: "
                          "compare without it, or with objective 'flops'")
    number("budget_flops", budget_flops, lo=0, lo_open=True, none_ok=True)
    if not isinstance(net, BigSmallSupernet):
        raise ConfigError(f"compare_strategies needs a BigSmallSupernet, got {type(net).__name__}")
    say = log or (lambda line: None)
    folder = Path(folder) if folder is not None else None
    if signature is None:
        n_eval, n_bn = min(s.eval_images, len(data.calib)), min(s.bn_images, len(data.train))
        signature = {"supernet": supernet_fingerprint(net), "data": data.fingerprint, "eval_images": n_eval,
                     "bn_images": n_bn, "seed": seed}
    tester = None
    rows, scored, fronts, results = [], {}, {}, {}
    for strategy in strategies:
        t0 = time.perf_counter()
        res = run_strategy(strategy, net, data, settings=s, budget_flops=budget_flops, folder=folder, seed=seed,
                           signature=signature, result_name=f"search-{strategy}.json", log=log, progress=progress)
        wall = time.perf_counter() - t0
        pts = _scored(strategy, res)
        front = [pts[i] for i in pareto_indices([(p["accuracy"], p["flops"]) for p in pts])] if pts else []
        best = res["best"]
        cost = res["search_cost"]
        name = NAMES[strategy] + (f" ({'first' if s.darts_order == 1 else 'second'} order)"
                                  if strategy == "darts" else "")
        row = {"strategy": strategy, "name": name,
               "best_accuracy": best["accuracy"] if best else None,
               "best_flops": best["flops"] if best else None,
               "best_mflops": best["flops"] / 1e6 if best else None,
               "best_exit_rate": best["exit_rate"] if best else None,
               "best_pair": best["pair"] if best else None,
               "best_encoding": best["encoding"] if best else None,
               "evaluated": cost["evaluated"], "cpu_seconds": cost["cpu_seconds"], "cpu_hours": cost["cpu_hours"],
               "wall_seconds": wall, "scored_pairs": len(pts)}
        if test:
            if tester is None:
                tester = PairEvaluator(net, data.test.x, data.test.y, data.train.x[:s.bn_images],
                                       threshold=s.threshold)
            t = tester.evaluate(np.asarray(best["encoding"])) if best else None
            row.update(test_accuracy=t.accuracy if t else None, test_exit_rate=t.exit_rate if t else None,
                       test_flops=t.flops if t else None)
        rows.append(row)
        scored[strategy], fronts[strategy], results[strategy] = pts, front, res
        acc = "none within the budget" if best is None else f"{100 * best['accuracy']:.2f}%"
        say(f"[compare] {strategy}: best {acc}; {cost['evaluated']} evaluated, {cost['cpu_hours']:.4f} CPU-hours, "
            f"{wall:.1f} s")
    out = json_safe({"format": COMPARE_FORMAT, "budget_flops": budget_flops,
                     "budget_mflops": None if budget_flops is None else budget_flops / 1e6,
                     "threshold": s.threshold, "seed": seed, "settings": dataclasses.asdict(s),
                     "signature": signature, "rows": rows, "scored": scored, "fronts": fronts, "results": results})
    if folder is not None:
        write_json(folder / "comparison.json", out)
    return out


def _fmt(v: Any, spec: str, scale: float = 1.0) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "–"
    return format(v * scale, spec)


def comparison_table(comparison: dict, *, test: bool | None = None) -> str:
    """The rows of :func:`compare_strategies` as a Markdown table (paper 5.3; via
    :func:`~dyninfer.report.tables.markdown_table`): strategy, best top-1 (%) of the dynamic system within the
    FLOPs budget — on the test split when the rows have it and ``test`` is not False (the calibration top-1 that
    chose the pair is then in the notes), else on the calibration images — its expected MFLOPs and exit rate,
    search cost in CPU-hours, architectures evaluated, wall seconds, and notes."""
    from ..report.tables import markdown_table

    rows = comparison.get("rows") if isinstance(comparison, dict) else None
    if not isinstance(rows, list):
        raise ConfigError("comparison_table needs the dict compare_strategies returns (with 'rows')")
    use_test = bool(rows) and all("test_accuracy" in r for r in rows) if test is None else bool(test)
    if use_test and not all("test_accuracy" in r for r in rows):
        raise ConfigError("these rows were not scored on the test split (compare_strategies(..., test=True))")
    budget = comparison.get("budget_mflops")
    within = "" if budget is None else f" at ≤ {budget:g} MFLOPs"
    header = ["Strategy", f"Best top-1 (%, {'test' if use_test else 'calib'}){within}", "MFLOPs (expected)",
              "Exit rate", "Search cost (CPU-h)", "Architectures evaluated", "Wall (s)", "Notes"]
    body = []
    for r in rows:
        notes = []
        if r.get("best_accuracy") is None:
            notes.append("no scored pair within the budget")
        elif use_test:
            notes.append(f"calib top-1 {_fmt(r['best_accuracy'], '.2f', 100)}%")
        acc = r.get("test_accuracy") if use_test else r.get("best_accuracy")
        flops = r.get("test_flops") if use_test else r.get("best_flops")
        rate = r.get("test_exit_rate") if use_test else r.get("best_exit_rate")
        body.append([r.get("name", r["strategy"]), _fmt(acc, ".2f", 100), _fmt(flops, ".3f", 1e-6),
                     _fmt(rate, ".2f"), _fmt(r.get("cpu_hours"), ".4f"), r.get("evaluated", "–"),
                     _fmt(r.get("wall_seconds"), ".1f"), "; ".join(notes)])
    return markdown_table(header, body, align="lrrrrrrl")


__all__ = ["COMPARE_FORMAT", "SMALL", "STRATEGIES", "SearchSettings", "compare_strategies", "comparison_table",
           "run_strategy", "supernet_fingerprint"]
