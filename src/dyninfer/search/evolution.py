"""Evolutionary search for a little/big pair (NAS-for-dynamic-inference paper, 3.5.2), multi-objective.

Optuna's NSGA-II sampler (:class:`optuna.samplers.NSGAIISampler`: non-dominated sorting and crowding distance for
selection, uniform crossover, mutation) evolves a population of pairs of an already-trained supernet. Each trial
suggests every choice of the pair — a categorical per head, stage and field (``little.s1.width``, …,
``big.s4.expand``) — and is scored by a :class:`~dyninfer.search.fitness.PairEvaluator`: maximise the dynamic
system's accuracy, minimise its expected FLOPs (or predicted latency). Where the paper weighs the two objectives
into one fitness, NSGA-II keeps them apart and returns the whole Pareto front; a weighted choice can be made on
the front afterwards.

**Resume.** With ``folder`` the study lives in an Optuna journal file (``study.journal``,
:class:`optuna.storages.JournalStorage` over a file backend) that records each trial as it finishes (its record,
and what evaluating it cost, as user attributes), and after every completed generation ``result.json`` is
written atomically (every record, the front, the search cost). A second call with the same folder reopens the
study, marks trials an interruption left running as failed, puts the finished trials' records into the
evaluator's cache and runs only the trials still missing up to ``generations`` x ``population``: finished trials
are not evaluated again. The sampler is reseeded with the number of trials already done, so a resumed run does
not replay the first run's random draws. A resumed call must ask for the same objective, population and
threshold (a ConfigError otherwise).

Optuna is optional: ``pip install 'dyninfer[search]'``.
"""

from __future__ import annotations

import contextlib
import logging
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from ..check import number
from ..errors import ConfigError
from ..io import write_json
from ..models.bigsmall import FIELDS, HEADS, PairConfig, SearchSpace
from .fitness import OBJECTIVES, PairEvaluator, PairRecord, hypervolume, pareto_indices

RESULT_FORMAT = "dyninfer-bigsmall-evolution-1"
JOURNAL = "study.journal"
RESULT = "result.json"


def _optuna():
    """The optuna module, or a ConfigError saying how to install it."""
    try:
        import optuna
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ConfigError("the evolutionary search needs Optuna: install the search extra, "
                          "pip install 'dyninfer[search]' (optuna>=4.0)") from e
    return optuna


def journal_storage(path: str | Path):
    """An Optuna journal storage over the file ``path`` (the file backend's name differs across versions)."""
    optuna = _optuna()
    journal = getattr(optuna.storages, "journal", None)
    backend = getattr(journal, "JournalFileBackend", None) if journal is not None else None
    if backend is None:  # optuna < 4.0
        backend = optuna.storages.JournalFileStorage
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ExperimentalWarning in some versions
        return optuna.storages.JournalStorage(backend(str(path)))


@contextlib.contextmanager
def _quiet_optuna(verbose: bool) -> Iterator[None]:
    """Optuna's per-trial INFO lines off (unless ``verbose``), restored after."""
    optuna = _optuna()
    old = optuna.logging.get_verbosity()
    if not verbose:
        optuna.logging.set_verbosity(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", category=optuna.exceptions.ExperimentalWarning)
            yield
    finally:
        optuna.logging.set_verbosity(old)


def param_name(head: str, stage: int, field_: str) -> str:
    """The trial parameter of one choice: ``<head>.s<stage, 1-based>.<field>``."""
    return f"{head}.s{stage + 1}.{field_}"


def suggest_pair(trial: Any, space: SearchSpace) -> PairConfig:
    """Every choice of a pair suggested on an Optuna ``trial`` (categorical per head, stage and field), checked
    by the space (a ConfigError naming the field and its allowed values for anything outside it)."""
    subnets = {}
    for head in HEADS:
        stages = []
        for s in range(space.stages_of(head)):
            stages.append({f: trial.suggest_categorical(param_name(head, s, f), list(space.choices(f)))
                           for f in FIELDS})
        subnets[head] = {"head": head, "stages": stages}
    return space.check_pair(subnets)


def pair_from_params(params: dict, space: SearchSpace) -> PairConfig:
    """The pair a trial's parameters stand for (ConfigError for a missing or disallowed one)."""
    subnets = {}
    for head in HEADS:
        stages = []
        for s in range(space.stages_of(head)):
            missing = [param_name(head, s, f) for f in FIELDS if param_name(head, s, f) not in params]
            if missing:
                raise ConfigError(f"trial parameters lack {missing}")
            stages.append({f: params[param_name(head, s, f)] for f in FIELDS})
        subnets[head] = {"head": head, "stages": stages}
    return space.check_pair(subnets)


@dataclass
class SearchResult:
    """What :func:`evolutionary_search` found.

    ``records`` holds every completed trial's :class:`~dyninfer.search.fitness.PairRecord` in trial order, with
    ``generations`` its generation; ``front`` the non-dominated records (accuracy up, cost down; distinct pairs)
    by increasing cost; ``cost`` the search cost summed over the completed trials of every run of a resumed search
    (``evaluated``: pairs actually run, not answered from the cache; ``cpu_seconds``: process CPU time of their
    evaluation; ``trials``).
    """

    objective: str
    population: int
    generations_done: int
    records: list[PairRecord]
    generations: list[int]
    front: list[PairRecord]
    cost: dict = field(default_factory=dict)
    path: Path | None = None

    def costs(self, records: list[PairRecord] | None = None) -> list[float]:
        return [r.cost(self.objective) for r in (self.records if records is None else records)]

    def generation(self, g: int) -> list[PairRecord]:
        """The records of generation ``g`` (0-based)."""
        return [r for r, gen in zip(self.records, self.generations) if gen == g]

    def hypervolume(self, records: list[PairRecord] | None = None, reference_cost: float | None = None) -> float:
        """Hypervolume of ``records`` (default: all) against accuracy 0 and ``reference_cost`` (default: the
        largest cost of all records, times 1.01)."""
        recs = self.records if records is None else records
        ref = reference_cost if reference_cost is not None else 1.01 * max(self.costs())
        return hypervolume([(r.accuracy, r.cost(self.objective)) for r in recs], ref)

    def as_dict(self) -> dict:
        return {"format": RESULT_FORMAT, "objective": self.objective, "population": self.population,
                "generations_done": self.generations_done,
                "trials": [{"generation": g, **r.as_dict()} for r, g in zip(self.records, self.generations)],
                "front": [r.as_dict() for r in self.front], "cost": self.cost}


def _front(records: list[PairRecord], objective: str) -> list[PairRecord]:
    distinct = list({r.encoding: r for r in records}.values())
    return [distinct[i] for i in pareto_indices([(r.accuracy, r.cost(objective)) for r in distinct])]


def evolutionary_search(evaluator: PairEvaluator, *, population: int = 16, generations: int = 5,
                        objective: str = "flops", folder: str | Path | None = None, study_name: str = "bigsmall",
                        seed: int = 0, mutation_prob: float | None = None, crossover_prob: float = 0.9,
                        signature: dict | None = None, log: Callable[[str], None] | None = None,
                        progress: bool = False) -> SearchResult:
    """Search pairs of ``evaluator``'s supernet with NSGA-II (see the module doc).

    Args:
        evaluator: scores a pair (its threshold τ is the router's).
        population: pairs per generation (>= 2).
        generations: generations in total (a resumed search runs only those missing).
        objective: the cost minimised beside maximising accuracy: ``flops`` (expected FLOPs per image) or
            ``latency`` (predicted batch-1 ms per image; needs the evaluator's latency table).
        folder: where the study journal and ``result.json`` live (None: in memory, no resume).
        study_name: the study inside the journal.
        seed: the sampler's seed (plus the number of trials already done, on resume).
        mutation_prob, crossover_prob: NSGA-II's (default mutation: 1 / number of choices).
        signature: what the scores depend on beyond the settings (the supernet's checkpoint, the scoring and
            batch-norm images, the data): stored with the study, and a resumed study with another one is refused,
            so stale scores are never reused.
        log: receives one line per generation.
        progress: Optuna's progress bar and per-trial log lines.

    Returns:
        :class:`SearchResult` (the front, every record, the search cost).
    """
    number("population", population, lo=2, integer=True)
    number("generations", generations, lo=1, integer=True)
    number("seed", seed, lo=0, integer=True)
    number("mutation_prob", mutation_prob, lo=0, hi=1, none_ok=True)
    number("crossover_prob", crossover_prob, lo=0, hi=1)
    if objective not in OBJECTIVES:
        raise ConfigError(f"objective must be one of {OBJECTIVES}, got {objective!r}")
    if objective == "latency" and evaluator.latency_table is None:
        raise ConfigError("the latency objective needs an evaluator with a LatencyTable (latency_table=...)")
    if not isinstance(evaluator, PairEvaluator):
        raise ConfigError(f"evaluator must be a PairEvaluator, got {type(evaluator).__name__}")
    optuna = _optuna()
    from optuna.trial import TrialState

    space = evaluator.space
    folder = Path(folder) if folder is not None else None
    result_path = folder / RESULT if folder is not None else None
    with _quiet_optuna(progress):
        if folder is not None:
            folder.mkdir(parents=True, exist_ok=True)
            storage = journal_storage(folder / JOURNAL)
        else:
            storage = None
        study = optuna.create_study(study_name=study_name, storage=storage, load_if_exists=True,
                                    directions=["maximize", "minimize"])
        attrs = study.user_attrs
        if attrs:  # an existing study: it must be the same search
            want = {"objective": objective, "population": population, "threshold": evaluator.threshold,
                    "signature": signature}
            have = {k: attrs.get(k) for k in want}
            if have != want:
                raise ConfigError(f"{folder / JOURNAL if folder else 'the study'} holds a search with {have}; "
                                  f"this call asks for {want} (use another folder or study_name)")
        else:
            study.set_user_attr("objective", objective)
            study.set_user_attr("population", population)
            study.set_user_attr("threshold", evaluator.threshold)
            study.set_user_attr("signature", signature)
        for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING, TrialState.WAITING)):
            study._storage.set_trial_state_values(t._trial_id, state=TrialState.FAIL)  # left by an interruption
        done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        evaluator.remember(PairRecord.from_dict(t.user_attrs["record"]) for t in done if "record" in t.user_attrs)
        sampler = optuna.samplers.NSGAIISampler(population_size=population, seed=seed + len(done),
                                                mutation_prob=mutation_prob, crossover_prob=crossover_prob)
        study.sampler = sampler
        t_start = time.perf_counter()

        def cost_of(trials: list) -> dict:
            return {"evaluated": sum(int(t.user_attrs.get("ran", 0)) for t in trials),
                    "cpu_seconds": float(sum(t.user_attrs.get("cpu_seconds", 0.0) for t in trials)),
                    "trials": len(trials)}

        def collect() -> SearchResult:
            trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            trials = [t for t in trials if "record" in t.user_attrs]
            records = [PairRecord.from_dict(t.user_attrs["record"]) for t in trials]
            gens = [int(t.system_attrs.get(getattr(sampler, "_get_generation_key", lambda: "nsga2:generation")(), t.number // population)) for t in trials]
            counts = {g: gens.count(g) for g in set(gens)}
            full = sum(1 for g in counts.values() if g >= population)
            return SearchResult(objective, population, full, records, gens, _front(records, objective),
                                cost_of(trials), result_path)

        def objective_fn(trial) -> tuple[float, float]:
            pair = suggest_pair(trial, space)
            ran, cpu = evaluator.evaluated, evaluator.cpu_seconds
            rec = evaluator.evaluate(pair)
            trial.set_user_attr("record", rec.as_dict())
            trial.set_user_attr("ran", evaluator.evaluated - ran)  # 0: answered from the cache
            trial.set_user_attr("cpu_seconds", evaluator.cpu_seconds - cpu)
            return rec.accuracy, rec.cost(objective)

        def after_trial(study_, trial) -> None:
            n = len(study_.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
            if n % population == 0:
                res = collect()
                if result_path is not None:
                    write_json(result_path, res.as_dict())
                if log is not None:
                    best = max(res.generation(res.generations[-1]) or res.records, key=lambda r: r.accuracy)
                    log(f"[search] generation {n // population}/{generations}: {len(res.front)} pairs on the front, "
                        f"generation best accuracy {best.accuracy:.4f} at {best.cost(objective):.4g} {objective}; "
                        f"{res.cost['evaluated']} evaluated, {res.cost['cpu_seconds']:.1f} CPU s, "
                        f"{time.perf_counter() - t_start:.1f} s")

        remaining = generations * population - len(done)
        if remaining > 0:
            study.optimize(objective_fn, n_trials=remaining, callbacks=[after_trial], catch=(),
                           show_progress_bar=progress)
        res = collect()
        if result_path is not None:
            write_json(result_path, res.as_dict())
        return res


__all__ = ["RESULT_FORMAT", "SearchResult", "evolutionary_search", "journal_storage", "pair_from_params",
           "param_name", "suggest_pair"]
