"""Search strategies of the big/little NAS method (NAS-for-dynamic-inference paper, 3.5): each looks for a
little/big *pair* of an already-trained :class:`~dyninfer.models.bigsmall.BigSmallSupernet` under a router,
scored by the dynamic system's accuracy and expected cost.

* :mod:`~dyninfer.search.fitness` — :class:`PairEvaluator` (a pair's dynamic accuracy, exit rate, expected FLOPs
  and predicted latency, cached by encoding, with the search's cost) and :class:`LatencyTable` (measured block
  latencies);
* :mod:`~dyninfer.search.evolution` — multi-objective evolution with Optuna's NSGA-II sampler, resumable from a
  journal file (:func:`evolutionary_search`; needs the ``search`` extra);
* :mod:`~dyninfer.search.predictor` — once-for-all style: an MLP accuracy predictor trained on measured pairs,
  then Pareto-optimal pairs chosen from many sampled ones without further training (:func:`predictor_search`);
* :mod:`~dyninfer.search.darts` — DARTS style (first or second order): a continuous relaxation of every choice of
  the pair, architecture weights on the validation split and network weights on the training split, the cost
  term in expected FLOPs or expected latency from the block table, then the argmax pair (:func:`darts_search`,
  resumable per epoch);
* :mod:`~dyninfer.search.compare` — one strategy run as ``dyninfer search`` runs it (:func:`run_strategy`), and
  all of them on one supernet compared at a FLOPs budget (:func:`compare_strategies`, :func:`comparison_table`;
  paper 5.3), their settings in :class:`SearchSettings`.
"""

from .compare import (SMALL, STRATEGIES, SearchSettings, compare_strategies, comparison_table, run_strategy,
                      supernet_fingerprint)
from .darts import ArchParameters, DartsResult, darts_search, expected_flops, expected_latency, relaxed_logits
from .evolution import SearchResult, evolutionary_search
from .fitness import (OBJECTIVES, LatencyTable, PairEvaluator, PairRecord, dominates, hypervolume, json_safe,
                      pareto_indices)
from .predictor import AccuracyPredictor, PredictorResult, one_hot, ordinal, predictor_search, train_predictor

__all__ = ["OBJECTIVES", "SMALL", "STRATEGIES", "AccuracyPredictor", "ArchParameters", "DartsResult", "LatencyTable",
           "PairEvaluator", "PairRecord", "PredictorResult", "SearchResult", "SearchSettings", "compare_strategies",
           "comparison_table", "darts_search", "dominates", "evolutionary_search", "expected_flops", "expected_latency",
           "hypervolume",
           "json_safe", "one_hot", "ordinal", "pareto_indices", "predictor_search", "relaxed_logits", "run_strategy",
           "supernet_fingerprint", "train_predictor"]
