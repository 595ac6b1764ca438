"""The method protocol every family implements, and the :data:`METHODS` registry.

A method is an estimator in the scikit-learn sense:

* the constructor is keyword-only, checks its settings and stores them unchanged;
* ``fit(calib_trace)`` learns everything (thresholds, temperatures, routers, the operating point)
  and returns ``self``; learned state ends in ``_`` and is never set in the constructor;
* ``simulate(trace, knob=None)`` says what the policy does on a trace (an :class:`Outcome`);
* ``curve(trace)`` sweeps the knob (a :class:`Curve` with the paired disagreements against the
  reference path that the shared guarantee needs);
* ``runtime(paths, device=...)`` returns a :class:`~dyninfer.runtime.base.Runtime` that makes the same
  decisions on real batches;
* ``get_params()``, ``save(folder)`` and :func:`load_method` (``Method.load``) come from this base.

The operating point is chosen the same way for every family (:meth:`Method._choose`, Learn-then-Test
with fixed-sequence testing, :mod:`dyninfer.evaluate.guarantee`); a family adds only what is its own.
"""

from __future__ import annotations

import inspect
import json
import os
from dataclasses import asdict, dataclass, is_dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar, TypeVar

import numpy as np
import torch

from ..check import number
from ..errors import CheckpointError, ConfigError, NotFittedError
from ..evaluate.frontier import Curve
from ..evaluate.guarantee import OperatingPoint, choose_operating_point
from ..evaluate.outcome import Outcome
from ..io import atomic_dir, digest, read_payload, write_payload
from ..registry import Registry
from ..trace import Trace

FORMAT = "dyninfer-policy-1"
M = TypeVar("M", bound="Method")


class Method:
    """Base class of every dynamic-inference method (see the module doc).

    Class attributes a family sets:
        name: registry name (set by :func:`register_method`).
        path_kind: the path set it runs on: ``pool``, ``staged`` or ``supernet``.
        knob_direction: +1 if a larger knob costs more (thresholds), -1 if it costs less (a cost bias).
        experimental: True while a family lacks its report or presets; ``dyninfer compare`` then runs it only
            when named (``--methods``).
        task: what an answer is: ``classification`` (traces of logits; every family above) or another task whose
            steps :mod:`dyninfer.tasks` holds (``regression``, ``detection``: the method takes that task's record of
            its models' outputs where a classifier takes a trace).
    """

    name: ClassVar[str] = ""
    task: ClassVar[str] = "classification"
    path_kind: ClassVar[str] = "pool"
    experimental: ClassVar[bool] = False
    knob_direction: ClassVar[int] = 1

    # ------------------------------------------------------------------ settings
    @classmethod
    def param_names(cls) -> list[str]:
        """The constructor's settings, in order."""
        sig = inspect.signature(cls.__init__)
        return [p.name for p in sig.parameters.values() if p.kind is inspect.Parameter.KEYWORD_ONLY]

    def get_params(self) -> dict[str, Any]:
        """The settings exactly as given to the constructor."""
        return {k: getattr(self, k) for k in self.param_names()}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in self.get_params().items())})"

    # ------------------------------------------------------------------ protocol
    def fit(self: M, calib: Trace, **kwargs: Any) -> M:  # pragma: no cover - every family implements it
        raise NotImplementedError

    def simulate(self, trace: Trace, knob: Any = None) -> Outcome:  # pragma: no cover
        raise NotImplementedError

    def curve(self, trace: Trace) -> Curve:  # pragma: no cover
        raise NotImplementedError

    def runtime(self, paths, *, device: str | torch.device | None = None):  # pragma: no cover
        raise NotImplementedError

    def check_knob(self, value: Any) -> Any:  # pragma: no cover
        """A knob value in canonical form, or ConfigError."""
        raise NotImplementedError

    def simulate_forced(self, trace: Trace, path: str) -> Outcome:  # pragma: no cover
        """What a runtime forced to ``path`` (:meth:`Runtime.force`) does on ``trace``."""
        raise NotImplementedError

    def oracle(self, trace: Trace) -> Outcome:  # pragma: no cover
        """The best any router could do on ``trace`` with this method's paths (an upper bound)."""
        raise NotImplementedError

    def fit_options(self, paths) -> dict:
        """Extra ``fit`` arguments the pipeline takes from the path set (default: none)."""
        return {}

    def path_options(self) -> dict:
        """Settings of the path set this method runs on, passed to :func:`dyninfer.harness.prepare` with its
        ``kind`` (default: none; the big/little method names its deployed pair)."""
        return {}

    def own_trace(self, trace: Trace) -> Trace:
        """The trace over the paths this policy runs, with the costs its stages pay (default: ``trace``; a
        cascade's chain, an early exit's answering exits); outcomes index its paths."""
        return trace

    # ------------------------------------------------------------------ shared
    def check_fitted(self) -> None:
        """Raise :class:`NotFittedError` unless ``fit`` or ``load`` ran."""
        if not hasattr(self, "knob_"):
            raise NotFittedError(f"{type(self).__name__} is not fitted; call fit(calibration_trace) first "
                                 f"(or load a saved policy with dyninfer.load_policy)")

    def _knob(self, knob: Any) -> Any:
        """The fitted knob if ``knob`` is None, else ``knob`` checked."""
        self.check_fitted()
        return self.knob_ if knob is None else self.check_knob(knob)

    def _uncertified(self, trace: Trace, knob: Any) -> Outcome | None:
        """When no knob value could be certified, or the certified one costs no less than the reference alone,
        the fitted policy is the reference path alone: its outcome on ``trace`` (for ``knob=None``); None
        otherwise."""
        self.check_fitted()
        if knob is None and self.operating_point_.runs_reference:
            return self.simulate_forced(trace, self.operating_point_.reference)
        return None

    def _start(self, runtime):
        """A new runtime at the fitted operating point (forced to the reference path when it runs the reference
        alone: nothing certified, or nothing cheaper)."""
        if self.operating_point_.runs_reference:
            runtime.force(self.operating_point_.reference)
        return runtime

    def _choose(self, curve: Curve, n: int, *, reference: str, configurations: int = 1,
                order: np.ndarray | None = None) -> OperatingPoint:
        """The shared operating-point rule: Learn-then-Test over ``curve`` with this method's settings."""
        return choose_operating_point(curve, n, tolerance=self.tolerance, confidence=self.confidence,  # type: ignore[attr-defined]
                                      bound=self.bound, reference=reference,  # type: ignore[attr-defined]
                                      configurations=configurations, direction=self.knob_direction, order=order)

    def knob_for(self, *, budget_flops: float | None = None, target_accuracy: float | None = None,
                 budget_seconds: float | None = None, costs_from: Trace | None = None, batch: int = 256) -> Any:
        """Map a budget (mean FLOPs, or predicted seconds, per image) or a target accuracy through the calibration
        curve to a knob.

        A budget gives the most accurate calibration point within it; a target gives the cheapest point
        reaching it on calibration (without a confidence bound: use ``tolerance`` for a guarantee). A budget in
        seconds is read through the paths' measured latencies at ``batch`` (``costs_from``: a trace of this
        method's paths whose costs were measured, e.g. by :func:`dyninfer.paths.measure_costs`; a cost model,
        so a server meeting a time budget checks its measured times too).

        Raises:
            ConfigError: not exactly one of the three given, no costs for a time budget, or no calibration point
                meets it.
        """
        self.check_fitted()
        if sum(v is not None for v in (budget_flops, target_accuracy, budget_seconds)) != 1:
            raise ConfigError("give exactly one of budget_flops, budget_seconds and target_accuracy")
        number("budget_flops", budget_flops, lo=0, lo_open=True, none_ok=True, hint=" (mean FLOPs per image)")
        number("budget_seconds", budget_seconds, lo=0, lo_open=True, none_ok=True, hint=" (seconds per image)")
        number("target_accuracy", target_accuracy, lo=0, hi=1, none_ok=True)
        number("batch", batch, lo=1, integer=True)
        c = self.calib_curve_
        if budget_seconds is not None:
            if costs_from is None:
                raise ConfigError("a budget in seconds needs costs_from=: a trace of this method's paths with "
                                  "measured latencies (dyninfer.paths.measure_costs)")
            from ..evaluate.simulate import curve_times

            spend, budget, unit = curve_times(self.own_trace(costs_from), c, batch), budget_seconds, "seconds"
        else:
            spend, budget, unit = c.cost, budget_flops, "FLOPs"
        if budget is not None:
            ok = np.flatnonzero(spend <= budget * (1 + 1e-9))
            if ok.size == 0:
                raise ConfigError(f"no operating point within {budget:.4g} {unit} per image; the cheapest "
                                  f"costs {spend.min():.4g}")
            j = int(ok[np.lexsort((spend[ok], -c.accuracy[ok]))[0]])
        else:
            j = c.cheapest_at(float(target_accuracy))  # type: ignore[arg-type]
            if j is None:
                raise ConfigError(f"no operating point reaches accuracy {target_accuracy} on calibration; the best "
                                  f"reaches {c.accuracy.max():.4f}")
        return self.check_knob(self._setting(c, j))

    def _setting(self, curve: Curve, j: int) -> Any:
        """The knob value of point ``j`` of one of this method's curves."""
        return tuple(float(v) for v in curve.settings[j])

    # ------------------------------------------------------------------ storage
    def _state(self) -> tuple[dict, dict]:
        """(JSON-able fitted state, tensors) to save; families with more state extend it."""
        return ({"knob_": _jsonable(self.knob_), "operating_point_": asdict(self.operating_point_),
                 "calib_curve_": _curve_dict(self.calib_curve_)}, {})

    def _set_state(self, state: dict, tensors: dict) -> None:
        self.knob_ = self.check_knob(_num(state["knob_"]))
        self.operating_point_ = OperatingPoint(**_num(state["operating_point_"]))
        self.calib_curve_ = _curve_from(state["calib_curve_"])

    def save(self, folder: str | os.PathLike) -> Path:
        """Write the fitted method to ``folder`` (replaced whole): ``method.json`` (settings, fitted state,
        SHA-256 of both) and ``state.pt`` (tensors, checksummed) when it has any."""
        self.check_fitted()
        state, tensors = self._state()
        body = {"format": FORMAT, "method": self.name, "params": _jsonable(self.get_params()), "state": _jsonable(state),
                "tensors_sha256": digest(tensors) if tensors else None}
        folder = Path(folder)
        with atomic_dir(folder) as tmp:
            if tensors:
                write_payload(tmp / "state.pt", {"format": FORMAT + "-state", "tensors": tensors})
            (tmp / "method.json").write_text(json.dumps({**body, "sha256": digest(body)}, indent=1) + "\n")
        return folder

    @classmethod
    def load(cls, folder: str | os.PathLike) -> "Method":
        """Read a method written by :meth:`save`; see :func:`load_method`."""
        m = load_method(folder)
        if cls is not Method and not isinstance(m, cls):
            raise CheckpointError(f"{folder} holds a {type(m).__name__}, not a {cls.__name__}")
        return m


METHODS: Registry[type[Method]] = Registry("method")


@dataclass(frozen=True)
class Figures:
    """A family's own figures, added to the shared report of ``dyninfer run``.

    Attributes:
        config: dataclass of their settings (unknown keys are errors).
        make: ``(evaluation, config, log) -> list of report Sections``; the evaluation is the pipeline's
            (:class:`dyninfer.pipeline.Evaluation`: data, paths, traces, fitted method, runtime, measured costs).
    """

    config: type
    make: Callable[[Any, Any, Callable[[str], None]], list]


FIGURES: Registry[Figures] = Registry("method figures")


def register_method(name: str):
    """Class decorator: register a :class:`Method` subclass under ``name``."""
    def add(cls: type[Method]) -> type[Method]:
        cls.name = name
        return METHODS.register(name, cls)
    return add


def create_method(name: str, **params: Any) -> Method:
    """Build the registered method ``name`` with settings ``params`` (unknown settings are errors)."""
    cls = METHODS.get(name)
    unknown = sorted(set(params) - set(cls.param_names()))
    if unknown:
        raise ConfigError(f"unknown settings {unknown} for method {name!r}; it takes {cls.param_names()}")
    return cls(**params)


def load_method(folder: str | os.PathLike) -> Method:
    """Read any fitted method written by :meth:`Method.save`.

    Raises:
        CheckpointError: missing or corrupt files, a checksum mismatch, or an unknown method.
    """
    folder = Path(folder)
    path = folder / "method.json"
    try:
        info = json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"no saved policy at {folder} ({path.name} missing); fit and save one first") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path} is corrupt ({e}); save the policy again") from None
    if not isinstance(info, dict) or info.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a {FORMAT} file; save the policy again")
    stored = info.pop("sha256", None)
    if stored != digest(info):
        raise CheckpointError(f"{path} does not match its SHA-256 checksum: it was changed after it was saved. "
                              f"Save the policy again.")
    try:
        cls = METHODS.get(info["method"])
    except ConfigError as e:
        raise CheckpointError(f"{path}: {e}") from None
    tensors = {}
    if info.get("tensors_sha256") is not None:
        tensors = read_payload(folder / "state.pt", fmt=FORMAT + "-state", what="policy state")["tensors"]
        if digest(tensors) != info["tensors_sha256"]:
            raise CheckpointError(f"{folder / 'state.pt'} is not the state saved with {path.name}; save the policy again")
    try:
        m = cls(**_num(info["params"]))
        m._set_state(info["state"], tensors)
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{path} does not hold a loadable {info['method']} ({type(e).__name__}: {e}); it was "
                              f"written by another version of dyninfer. Fit and save the policy again.") from None
    return m


# ---------------------------------------------------------------------------------------- helpers

def _jsonable(v: Any) -> Any:
    if is_dataclass(v) and not isinstance(v, type):
        return _jsonable(asdict(v))
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, np.ndarray):
        return _jsonable(v.tolist())
    if isinstance(v, (np.floating, np.integer, np.bool_)):
        v = v.item()
    if isinstance(v, float) and not np.isfinite(v):
        return str(v)  # "inf", "-inf", "nan": JSON has no literal for them
    return v


def _num(v: Any) -> Any:
    """Undo :func:`_jsonable` for numbers written as strings, at any depth."""
    if isinstance(v, str) and v in ("inf", "-inf", "nan"):
        return float(v)
    if isinstance(v, list):
        return [_num(x) for x in v]
    if isinstance(v, dict):
        return {k: _num(x) for k, x in v.items()}
    return v


def _curve_dict(c: Curve) -> dict:
    return {"label": c.label, "settings": _jsonable(c.settings), "accuracy": c.accuracy.tolist(),
            "cost": c.cost.tolist(), "extra": {k: _jsonable(v) for k, v in c.extra.items()}}


def _curve_from(d: dict) -> Curve:
    return Curve(d["label"], np.asarray(_num(d["settings"]), float), np.asarray(d["accuracy"], float),
                 np.asarray(d["cost"], float), {k: np.asarray(_num(v), float) for k, v in d["extra"].items()})
