"""Run an exported policy with numpy and onnxruntime alone (this module imports no torch).

:class:`OrtRuntime` reads ``OUT/`` (written by ``dyninfer export``) and does what the torch runtime does:

* ``sequential`` (cascades, early exits): every sample enters stage 0; after each stage the samples whose
  score reaches that stage's threshold leave the batch, only the rest run the next stage (an early-exit
  stage takes the carry of the one before and hands its own on); the last stage answers the rest.
* ``upfront`` (backbone selection): the decision graph gives policy logits, the cost-biased argmax picks
  one path per image, and each path runs once on its images.

It has the same knob (``runtime.knob = ...``, checked the same way), the same :meth:`force`, the same
input checks (:mod:`dyninfer.inputs`) and answers in the same :class:`~dyninfer.result.RuntimeResult`
vocabulary, with numpy arrays.

    from dyninfer.export.ort_runtime import OrtRuntime
    rt = OrtRuntime("out/")
    res = rt(images)            # float32 (N, C, H, W) in [0, 1]
    res.pred, res.path, res.prob, res.flops, res.seconds
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import CheckpointError, ConfigError
from ..inputs import Knobbed, as_bias, as_thresholds, biased_choice, check_array, check_batch_size
from ..result import RuntimeResult
from .spec import read_spec


def make_session(path: str | os.PathLike, *, threads: int | None = None):
    """An onnxruntime CPU session for the graph at ``path`` (quiet; ``threads`` intra-op threads, default ORT's).

    Raises:
        CheckpointError: the file is missing or not a loadable ONNX graph (named).
    """
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    # no busy-waiting between calls: spinning worker threads would take the cores from whatever runs next (torch
    # timed in the same interleaved rounds measured 60x slower at batch 1 beside spinning sessions)
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.add_session_config_entry("session.inter_op.allow_spinning", "0")
    if threads:
        opts.intra_op_num_threads = int(threads)
        opts.inter_op_num_threads = 1
    try:
        return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own exception types for unreadable graphs
        if not Path(path).is_file():
            raise CheckpointError(f"{path} is missing; export the policy again") from None
        raise CheckpointError(f"{path} is not a loadable ONNX graph ({type(e).__name__}: {str(e)[:200]}); "
                              f"export the policy again") from None


def softmax_max(logits: np.ndarray) -> np.ndarray:
    """(N,) probability of the arg-max class under ``logits`` (N, K)."""
    z = logits - logits.max(1, keepdims=True)
    e = np.exp(z)
    return (1.0 / e.sum(1)).astype(np.float32)  # exp(0) / sum


class OrtRuntime(Knobbed):
    """An exported policy on onnxruntime.

    Args:
        folder: the export folder (``spec.json``, ``spec.json.sha256`` and the graphs).
        threads: intra-op threads of every session (default: onnxruntime's).

    Attributes: ``paths`` (names), ``input_shape``, ``spec``, ``knob``, ``forced``.

    Raises:
        CheckpointError: a missing, corrupted or other-version file, named.
    """

    def __init__(self, folder: str | os.PathLike, *, threads: int | None = None) -> None:
        self.folder = Path(folder)
        self.spec = spec = read_spec(self.folder)
        self.executor = spec["executor"]
        self.paths = [p["name"] for p in spec["paths"]]
        self.input_shape = tuple(spec["input"]["shape"])
        self.value_range = tuple(spec["input"]["accepted_range"])
        self._sessions = {p["name"]: make_session(self.folder / p["graph"], threads=threads) for p in spec["paths"]}
        self._advance = {p["name"]: make_session(self.folder / p["advance_graph"], threads=threads)
                         for p in spec["paths"] if p.get("advance_graph")}
        self._inputs = {p["name"]: list(p["inputs"]) for p in spec["paths"]}
        self.stage_flops = np.array([p["flops"] for p in spec["paths"]], float)
        self.skip_flops = np.array([p.get("skip_flops", 0.0) for p in spec["paths"]], float)
        self._emits = {p["name"] for p in spec["paths"] if p.get("emits_score")}  # paths whose first output is the score
        if self.executor == "sequential":
            score = spec["score"]
            self._score = make_session(self.folder / score["graph"], threads=threads) \
                if score and score.get("graph") else None
        else:
            d = spec["decision"]
            self._decision = make_session(self.folder / d["graph"], threads=threads)
            self._cost = np.asarray(d["cost"], np.float32)
            self._decide_flops = float(d["decide_flops"])
        self.knob = spec["knob"]["value"]
        self.forced: int | None = None
        if spec.get("forced") is not None:
            self.force(int(spec["forced"]))

    # ------------------------------------------------------------------ the knob
    def check_knob(self, value: Any) -> Any:
        if self.executor == "sequential":
            return as_thresholds(value, len(self.paths) - 1)
        return as_bias(value)

    # ------------------------------------------------------------------ running
    def check(self, x: object) -> np.ndarray:
        return check_array(x, self.input_shape, where=type(self).__name__, value_range=self.value_range)

    def __call__(self, x: np.ndarray) -> RuntimeResult:
        """Classify one batch of images (N, C, H, W) in [0, 1]."""
        knob, forced = self._knob, self.forced
        return self._execute(self.check(x), knob, forced)

    def run(self, x: np.ndarray, batch_size: int = 256) -> RuntimeResult:
        """Run over many images in batches of ``batch_size``; results concatenated, times summed."""
        batch_size = check_batch_size(batch_size)
        x = self.check(x)
        knob, forced = self._knob, self.forced
        return RuntimeResult.concat([self._execute(x[i:i + batch_size], knob, forced)
                                     for i in range(0, x.shape[0], batch_size)])

    def _execute(self, x: np.ndarray, knob: Any, forced: int | None) -> RuntimeResult:
        if self.executor == "upfront":
            return self._upfront(x, knob, forced)
        if forced is not None:
            return self._forced(x, forced)
        return self._sequential(x, knob)

    def _stage(self, p: int, carry: list[np.ndarray]) -> tuple[list[np.ndarray], np.ndarray, np.ndarray | None]:
        """Run stage ``p`` on the carry: (the carry the next stage reads, logits, the score it emits or None)."""
        name = self.paths[p]
        outs = self._sessions[name].run(None, dict(zip(self._inputs[name], carry)))
        if name in self._emits:  # (score, logits); the carry is the image
            return carry, outs[-1], outs[0]
        return (outs[:-1] if len(outs) > 1 else carry), outs[-1], None

    def _sequential(self, x: np.ndarray, thresholds: tuple[float, ...]) -> RuntimeResult:
        t0 = time.perf_counter()
        n, P = x.shape[0], len(self.paths)
        pred = np.empty(n, np.int64)
        path = np.empty(n, np.int64)
        prob = np.empty(n, np.float32)
        secs = np.zeros(P)
        counts = np.zeros(P, dtype=int)
        alive = np.arange(n)
        carry = [x]
        for p in range(P):
            ts = time.perf_counter()
            last = p == P - 1
            carry, logits, own = self._stage(p, carry)
            counts[p] = alive.size
            if own is None and not last:
                own = self._score.run(None, {"logits": logits})[0]
            keep = None if last else own >= np.float32(thresholds[p])
            n_keep = alive.size if keep is None else int(keep.sum())
            if n_keep:
                kept = logits if keep is None else logits[keep]
                idx = alive if keep is None else alive[keep]
                pred[idx] = kept.argmax(1)
                prob[idx] = softmax_max(kept)
                path[idx] = p
            secs[p] += time.perf_counter() - ts
            if n_keep == alive.size:
                break
            if n_keep:
                go_on = ~keep
                alive = alive[go_on]
                carry = [np.ascontiguousarray(c[go_on]) for c in carry]
        flops = np.cumsum(self.stage_flops)[path]
        return RuntimeResult(pred, path, prob, flops, time.perf_counter() - t0, secs, counts)

    def _forced(self, x: np.ndarray, p: int) -> RuntimeResult:
        t0 = time.perf_counter()
        n, P = x.shape[0], len(self.paths)
        secs = np.zeros(P)
        counts = np.zeros(P, dtype=int)
        carry = [x]
        for q in range(p):
            ts = time.perf_counter()
            name = self.paths[q]
            if name in self._advance:
                carry = self._advance[name].run(None, dict(zip(self._inputs[name], carry)))
            secs[q] = time.perf_counter() - ts
        ts = time.perf_counter()
        _, logits, _ = self._stage(p, carry)
        secs[p] = time.perf_counter() - ts
        counts[p] = n
        flops = np.full(n, float(self.skip_flops[:p].sum() + self.stage_flops[p]))
        return RuntimeResult(logits.argmax(1), np.full(n, p, np.int64), softmax_max(logits), flops,
                             time.perf_counter() - t0, secs, counts)

    def _upfront(self, x: np.ndarray, bias: float, forced: int | None) -> RuntimeResult:
        t0 = time.perf_counter()
        n, P = x.shape[0], len(self.paths)
        if forced is None:
            choice = biased_choice(self._decision.run(None, {"images": x})[0], bias, self._cost).astype(np.int64)
        else:
            choice = np.full(n, forced, np.int64)
        t_dec = time.perf_counter() - t0
        pred = np.empty(n, np.int64)
        prob = np.empty(n, np.float32)
        secs = np.zeros(P)
        counts = np.bincount(choice, minlength=P)
        for p in np.flatnonzero(counts):
            ts = time.perf_counter()
            idx = np.flatnonzero(choice == p)
            logits = self._sessions[self.paths[p]].run(None, {"images": np.ascontiguousarray(x[idx])})[-1]
            pred[idx] = logits.argmax(1)
            prob[idx] = softmax_max(logits)
            secs[p] += time.perf_counter() - ts
        flops = self.stage_flops[choice] + (0.0 if forced is not None else self._decide_flops)
        return RuntimeResult(pred, choice, prob, flops, time.perf_counter() - t0, secs, counts, t_dec)


class SingleGraphRuntime(Knobbed):
    """A cascade exported as one graph (``OUT/single/cascade.onnx``): the thresholds are a graph input, the
    later stages run inside ``If`` branches on the samples that go on. Same checks and result fields; no
    per-path times (the graph is one call).
    """

    def __init__(self, folder: str | os.PathLike, *, threads: int | None = None) -> None:
        self.folder = Path(folder)
        self.spec = read_spec(self.folder)
        single = self.spec.get("single_graph")
        if not single:
            raise CheckpointError(f"{self.folder} has no single-graph export (only cascades over a module pool have "
                                  f"one); use OrtRuntime")
        self.paths = [p["name"] for p in self.spec["paths"]]
        self.input_shape = tuple(self.spec["input"]["shape"])
        self.value_range = tuple(self.spec["input"]["accepted_range"])
        self.stage_flops = np.array([p["flops"] for p in self.spec["paths"]], float)
        if self.spec.get("forced") is not None:
            raise ConfigError(f"{self.folder}: no operating point was certified, so this policy runs its reference "
                              f"path alone; use OrtRuntime, which does")
        self._session = make_session(self.folder / single["graph"], threads=threads)
        self.forced = None  # one graph, one decision rule: no forced mode
        self.knob = self.spec["knob"]["value"]

    def check_knob(self, value: Any) -> tuple[float, ...]:
        return as_thresholds(value, len(self.paths) - 1)

    def __call__(self, x: np.ndarray) -> RuntimeResult:
        t0 = time.perf_counter()
        x = check_array(x, self.input_shape, where=type(self).__name__, value_range=self.value_range)
        logits, path = self._session.run(None, {"images": x, "thresholds": np.asarray(self._knob, np.float32)})
        counts = np.array([(path >= p).sum() for p in range(len(self.paths))])
        return RuntimeResult(logits.argmax(1), path.astype(np.int64), softmax_max(logits),
                             np.cumsum(self.stage_flops)[path], time.perf_counter() - t0,
                             np.zeros(len(self.paths)), counts)

    def run(self, x: np.ndarray, batch_size: int = 256) -> RuntimeResult:
        batch_size = check_batch_size(batch_size)
        return RuntimeResult.concat([self(x[i:i + batch_size]) for i in range(0, len(x), batch_size)])
