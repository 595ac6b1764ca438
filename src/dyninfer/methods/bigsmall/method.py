"""The big/little method: a two-stage cascade over a co-trained little/big pair of one supernet, with the three
routers of section 3.4 of the NAS-for-dynamic-inference paper.

The paths are :class:`~dyninfer.paths.BigSmallPaths` (``little``, then ``big``, the reference). The little
subnet answers; its answer is kept when the router's score reaches the threshold, otherwise the big subnet runs
from the image. Routers:

* ``confidence`` — the little head's max-softmax (:class:`~dyninfer.scores.MaxSoftmax`);
* ``learned`` — the co-trained MLP router's keep score ``1 - p_forward``, emitted by the little path
  (:class:`LearnedRouterScore`: the trace's ``gate`` aux, ``forward_gated`` at run time); the little stage then
  also pays the router's counted FLOPs;
* ``difficulty`` — a logistic regression on the little head's entropy, logit variance, max-softmax and margin,
  predicting whether it is right (:class:`~dyninfer.scores.DifficultyScore`), fitted on the calibration trace;
  its coefficients are the score's parameters, so they save and load with the method.

Fitting is the cascade's: router and threshold chosen on the calibration trace through the shared guarantee
(:meth:`~dyninfer.methods.base.Method._choose`); the runtime is the shared
:class:`~dyninfer.runtime.sequential.SequentialRuntime`.

The difficulty router is fitted on the same calibration samples that then certify its threshold (as ``energy+T``
chooses its temperature there). With four statistics and one intercept the optimism this adds is small, but it
is not covered by the guarantee's confidence.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from ...check import number
from ...errors import ConfigError, TraceError
from ...paths import BigSmallPaths
from ...runtime.sequential import SequentialRuntime
from ...scores import SCORES, DifficultyScore, EmittedScore, Score, make_score
from ...trace import Trace
from ..base import register_method
from ..cascade.method import Cascade

ROUTERS = ("confidence", "learned", "difficulty")


@SCORES.register("learned_router")
class LearnedRouterScore(EmittedScore):
    """The big/little router's keep score ``1 - p_forward``, emitted by the little path (its only emitter)."""

    name = "learned_router"
    emitter = "the learned big/little router"

    def __init__(self, gate: int = 0) -> None:
        super().__init__(gate)


def read_pair(pair: str | os.PathLike | Mapping | None) -> dict | None:
    """A deployed pair given as a mapping or a JSON file (see :class:`BigSmall`'s ``pair``), as a plain dict
    ``{"little": ..., "big": ...}`` (its choices are checked against the supernet's space when the paths are built).
    """
    if pair is None:
        return None
    where = "the pair"
    if isinstance(pair, (str, os.PathLike)):
        path, where = Path(pair), f"pair file {pair}"
        if not path.is_file():
            raise ConfigError(f"{where} does not exist; give a JSON file with a pair, a scored pair or a "
                              f"`dyninfer search` result (search.json)")
        try:
            pair = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ConfigError(f"{where} is not readable JSON: {e}") from None
    if isinstance(pair, Mapping) and "best" in pair and not {"little", "big"} <= set(pair):
        if pair["best"] is None:
            raise ConfigError(f"{where} is a search result without a best pair (none within its budget); "
                              f"rerun the search with a larger --budget-mflops or pick a pair from its front")
        pair = pair["best"]
    if isinstance(pair, Mapping) and "pair" in pair and not {"little", "big"} <= set(pair):
        pair = pair["pair"]
    if not isinstance(pair, Mapping) or not {"little", "big"} <= set(pair):
        raise ConfigError(f"{where} must hold {{'little': ..., 'big': ...}}, a scored pair {{'pair': ...}} or a "
                          f"search result with 'best'; got {str(pair)[:200]}")
    return json.loads(json.dumps({"little": pair["little"], "big": pair["big"]}, default=_plain))


def _plain(v: Any) -> Any:
    if hasattr(v, "as_dict"):
        return v.as_dict()
    raise ConfigError(f"a pair holds configurations or plain mappings, got {type(v).__name__}")


@register_method("bigsmall")
class BigSmall(Cascade):
    """Little answers, big on demand (see the module doc).

    Args:
        scores: routers to choose among: ``confidence``, ``learned``, ``difficulty``.
        difficulty_c: inverse L2 strength of the difficulty router's logistic regression.
        tolerance, confidence, bound: the shared guarantee (accuracy lost against the big path).
        grid: score quantiles (kept for the cascade's protocol; a pair has one threshold).
        seed: seed of the cascade's calibration split.
        pair: the deployed little/big pair: None (the largest pair), ``{"little": ..., "big": ...}``, or the path of
            a JSON file holding one: a pair, a scored pair (``{"pair": ...}``) or a ``dyninfer search`` result
            (its ``best`` pair). A file is read once, here; the method keeps (and saves) the pair itself.

    Fitted attributes: as :class:`~dyninfer.methods.cascade.Cascade`, and ``difficulty_`` (the fitted
    :class:`~dyninfer.scores.DifficultyScore`, when ``difficulty`` is among ``scores``).
    """

    path_kind = "bigsmall"
    experimental = True  # its co-trained supernet adds half an hour to a first quick run; `dyninfer compare` runs it when named
    routers = ROUTERS

    def __init__(self, *, scores: Sequence[str] = ROUTERS, difficulty_c: float = 1.0, tolerance: float = 0.001,
                 confidence: float = 0.95, bound: str = "clt", grid: int = 40, seed: int = 0,
                 pair: str | dict | None = None) -> None:
        number("difficulty_c", difficulty_c, lo=0, lo_open=True)
        self.difficulty_c = difficulty_c
        self.pair = read_pair(pair)
        super().__init__(stages=("little", "big"), scores=scores, tolerance=tolerance, confidence=confidence,
                         bound=bound, grid=grid, seed=seed)

    def _variants(self, router: str) -> list[Score]:
        if router == "confidence":
            return [make_score("max_softmax")]
        if router == "learned":
            return [LearnedRouterScore()]
        return [self.difficulty_]

    def path_options(self) -> dict:
        """The deployed pair, for :func:`dyninfer.harness.prepare` (checked against the supernet's space there)."""
        return {"pair": self.pair}

    def fit(self, calib: Trace, **kwargs: Any) -> "BigSmall":
        """Fit the difficulty router on the little head's calibration logits (when asked for), then choose router
        and threshold like the cascade."""
        if "little" not in calib.paths or "big" not in calib.paths:
            raise TraceError(f"a big/little method needs the paths 'little' and 'big'; the trace has {calib.paths}")
        if "difficulty" in self.scores:
            p = calib.index("little")
            self.difficulty_ = DifficultyScore.fit(calib.logits_of(p), calib.correct[p], C=float(self.difficulty_c))
        return super().fit(calib, **kwargs)  # type: ignore[return-value]

    def runtime(self, paths: BigSmallPaths, *, device: str | torch.device | None = None) -> SequentialRuntime:
        """The shared :class:`SequentialRuntime` over the little and big subnets (the little one emits the learned
        router's score when that router was chosen)."""
        self.check_fitted()
        if not isinstance(paths, BigSmallPaths):
            raise ConfigError(f"the big/little method runs on a pair's paths (BigSmallPaths), got {type(paths).__name__}")
        return super().runtime(paths, device=device)

    def _state(self) -> tuple[dict, dict]:
        state, tensors = super()._state()
        if hasattr(self, "difficulty_"):
            state["difficulty_"] = dict(self.difficulty_.params)
        return state, tensors

    def _set_state(self, state: dict, tensors: dict) -> None:
        if "difficulty_" in state:
            self.difficulty_ = DifficultyScore(**state["difficulty_"])
        super()._set_state(state, tensors)
