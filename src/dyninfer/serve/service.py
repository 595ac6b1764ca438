"""The serving core, free of any web framework: a saved policy's runtime behind a dynamic batcher.

:class:`PolicyService` owns

* the policy's :class:`~dyninfer.runtime.base.Runtime` (the same one ``dyninfer run`` checks against the
  trace), run on one worker thread so that batches never compete for the cores;
* a :class:`Batcher`: requests wait at most ``max_wait_ms`` to be grouped into batches of up to
  ``max_batch`` samples; the queue holds at most ``max_queue`` samples, and a request that would overflow
  it is refused at once with :class:`Overloaded` (HTTP 503 with ``Retry-After``) instead of waiting
  without bound. Every accepted request gets its answer or an error; none is dropped;
* the knob and its :class:`KnobCurve`, the calibrated accuracy–cost frontier the fitted method recorded;
  the knob is set as a raw value, a frontier point, a target accuracy or a FLOPs budget, or a path is forced;
* :class:`WindowStats`: latency percentiles, throughput, batch sizes and the measured share of each path
  over a sliding window (the web page, ``/metrics`` and the latency controller read them).
"""

from __future__ import annotations

import asyncio
import io
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from ..check import number
from ..errors import ConfigError, DyninferError, InputError
from ..inputs import path_index
from ..result import RuntimeResult


class Overloaded(DyninferError):
    """The queue is full: the request was not accepted; retry after ``retry_after`` seconds."""

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


@dataclass
class ServeConfig:
    """Settings of a served policy.

    Attributes:
        max_batch: most samples the runtime gets in one call.
        max_wait_ms: longest a request waits for batch mates.
        max_queue: most samples waiting; beyond it requests are refused with 503.
        max_inputs: most inputs in one request.
        max_body_bytes: largest request body accepted (413 beyond).
        window_s: the sliding window of the statistics.
        device: torch device of the runtime.
    """

    max_batch: int = 64
    max_wait_ms: float = 5.0
    max_queue: int = 512
    max_inputs: int = 256
    max_body_bytes: int = 8 * 2**20
    window_s: float = 10.0
    device: str = "cpu"

    def __post_init__(self) -> None:
        for name in ("max_batch", "max_queue", "max_inputs", "max_body_bytes"):
            number(name, getattr(self, name), lo=1, integer=True)
        number("max_wait_ms", self.max_wait_ms, lo=0)
        number("window_s", self.window_s, lo=0, lo_open=True)
        if self.max_queue < self.max_batch:
            raise ConfigError(f"max_queue ({self.max_queue}) must be at least max_batch ({self.max_batch})")


# ---------------------------------------------------------------------------------------------- curve
class KnobCurve:
    """The calibrated accuracy–cost frontier of a fitted method, cheapest point first.

    Point ``j`` has ``accuracy[j]`` and ``cost[j]`` (mean FLOPs per image on the calibration split) and
    the knob value ``knobs[j]`` that reaches it.
    """

    def __init__(self, method) -> None:
        front = method.calib_curve_.frontier()
        self.label = front.label
        self.accuracy = np.asarray(front.accuracy, float)
        self.cost = np.asarray(front.cost, float)
        self.knobs = [method._setting(front, j) for j in range(len(front))]
        raw = np.asarray([np.ravel(np.asarray(k, float)) for k in self.knobs])
        finite = np.where(np.isfinite(raw), raw, np.nan)
        self._lo = np.nan_to_num(np.nanmin(finite, axis=0), nan=0.0) - 1  # +-inf sit one unit past the finite ends
        self._hi = np.nan_to_num(np.nanmax(finite, axis=0), nan=0.0) + 1
        self._vectors = self._clip(raw)
        span = self._hi - self._lo
        self._scale = np.where(span > 0, span, 1.0)

    def _clip(self, v: np.ndarray) -> np.ndarray:
        return np.clip(np.nan_to_num(v, posinf=np.inf, neginf=-np.inf), self._lo, self._hi)

    def __len__(self) -> int:
        return len(self.knobs)

    def nearest(self, knob: Any) -> int:
        """The frontier point whose knob value is nearest ``knob`` (scaled per coordinate)."""
        v = np.ravel(np.asarray(knob, float))
        if v.shape != self._vectors.shape[1:]:
            return len(self) - 1
        d = np.abs((self._vectors - self._clip(v)) / self._scale).sum(axis=1)
        return int(np.argmin(d))

    def to_dict(self) -> dict:
        return {"label": self.label, "accuracy": self.accuracy.tolist(), "cost_flops": self.cost.tolist(),
                "knobs": [_plain(k) for k in self.knobs]}


def _plain(v: Any) -> Any:
    """JSON-able: arrays as lists, numpy scalars as numbers, +-inf as the strings "inf" and "-inf"."""
    if isinstance(v, (tuple, list, np.ndarray)):
        return [_plain(x) for x in v]
    if isinstance(v, (np.floating, np.integer)):
        v = v.item()
    if isinstance(v, float) and not np.isfinite(v):
        return "inf" if v > 0 else "-inf" if v < 0 else "nan"
    return v


_INF = {"inf": np.inf, "+inf": np.inf, "infinity": np.inf, "-inf": -np.inf, "-infinity": -np.inf}


def _from_json(v: Any) -> Any:
    """The inverse of :func:`_plain` for knob values: "inf"/"-inf" strings back to floats."""
    if isinstance(v, list):
        return [_from_json(x) for x in v]
    if isinstance(v, str) and v.strip().lower() in _INF:
        return _INF[v.strip().lower()]
    return v


# ---------------------------------------------------------------------------------------------- stats
class WindowStats:
    """Per-request latencies, per-batch sizes and per-path sample counts over the last ``window_s`` seconds."""

    def __init__(self, paths: list[str], window_s: float) -> None:
        self.paths = paths
        self.window_s = window_s
        self._requests: deque[tuple[float, float, int]] = deque()  # (done time, latency s, samples)
        self._batches: deque[tuple[float, int, np.ndarray]] = deque()  # (done time, size, samples per path)
        self._lock = threading.Lock()
        self._since = time.monotonic()

    def _trim(self, now: float) -> None:
        for q in (self._requests, self._batches):
            while q and q[0][0] < now - self.window_s:
                q.popleft()

    def add_request(self, latency_s: float, samples: int) -> None:
        with self._lock:
            now = time.monotonic()
            self._requests.append((now, latency_s, samples))
            self._trim(now)

    def add_batch(self, size: int, per_path: np.ndarray) -> None:
        with self._lock:
            now = time.monotonic()
            self._batches.append((now, size, per_path))
            self._trim(now)

    def latency_ms(self, q: float, last_s: float | None = None) -> float | None:
        """The ``q``-th percentile of request latency (ms) over the window (or its last ``last_s`` seconds)."""
        with self._lock:
            now = time.monotonic()
            self._trim(now)
            lat = [r[1] for r in self._requests if last_s is None or r[0] >= now - last_s]
        return float(np.percentile(lat, q) * 1000) if lat else None

    def snapshot(self) -> dict:
        with self._lock:
            now = time.monotonic()
            self._trim(now)
            lat = np.array([r[1] for r in self._requests])
            samples = sum(r[2] for r in self._requests)
            span = min(self.window_s, now - self._since)
            counts = np.sum([b[2] for b in self._batches], axis=0) if self._batches else np.zeros(len(self.paths))
            sizes = [b[1] for b in self._batches]
        total = float(np.sum(counts))
        return {"window_s": self.window_s, "requests": int(lat.size),
                "p50_ms": float(np.percentile(lat, 50) * 1000) if lat.size else None,
                "p99_ms": float(np.percentile(lat, 99) * 1000) if lat.size else None,
                "throughput_per_s": samples / span if span > 0 else 0.0,
                "mean_batch": float(np.mean(sizes)) if sizes else None,
                "path_share": {p: (float(c) / total if total else 0.0) for p, c in zip(self.paths, counts)}}


# ---------------------------------------------------------------------------------------------- batching
@dataclass
class Answers:
    """One request's share of a batch's :class:`~dyninfer.result.RuntimeResult`, as numpy arrays."""

    pred: np.ndarray
    path: np.ndarray
    prob: np.ndarray
    flops: np.ndarray

    def __len__(self) -> int:
        return int(self.pred.shape[0])

    @classmethod
    def split(cls, res: RuntimeResult, sizes: list[int]) -> list["Answers"]:
        cols = [np.asarray(getattr(res, f)) for f in ("pred", "path", "prob", "flops")]
        edges = np.cumsum([0, *sizes])
        return [cls(*(c[a:b] for c in cols)) for a, b in zip(edges[:-1], edges[1:])]


@dataclass
class _Pending:
    x: torch.Tensor
    future: asyncio.Future
    enqueued: float


class Batcher:
    """Groups requests into batches for ``run`` (a blocking ``tensor -> RuntimeResult``) on one worker thread.

    ``submit`` must be awaited on the event loop that ``start`` ran on. A request larger than ``max_batch``
    runs as its own batch.
    """

    def __init__(self, run, *, max_batch: int, max_wait_ms: float, max_queue: int,
                 on_batch=None) -> None:
        self._run = run
        self.max_batch = max_batch
        self.max_wait = max_wait_ms / 1000
        self.max_queue = max_queue
        self._on_batch = on_batch
        self._queue: deque[_Pending] = deque()
        self._queued = 0  # samples waiting
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dyninfer-runtime")
        self._batch_seconds = 0.01  # running estimate, for Retry-After
        self._current: list[_Pending] = []  # the batch in flight

    @property
    def queued(self) -> int:
        return self._queued

    def start(self) -> None:
        if self._task is None or self._task.done():
            self._wake = asyncio.Event()
            self._task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        shutting = Overloaded("the server is shutting down; send the request again", 1.0)
        for p in [*self._current, *self._queue]:  # nothing accepted is dropped silently
            if not p.future.done():
                p.future.set_exception(shutting)
        self._queue.clear()
        self._current = []
        self._pool.shutdown(wait=True)

    async def submit(self, x: torch.Tensor) -> Answers:
        """Queue ``x`` (N, C, H, W) and wait for its result; :class:`Overloaded` at once if the queue is full.

        Raises:
            InputError: ``x`` holds more samples than the queue can ever hold.
        """
        n = int(x.shape[0])
        if n > self.max_queue:
            raise InputError(f"the request holds {n} images; this server queues at most {self.max_queue}; send fewer")
        if self._queued + n > self.max_queue:
            wait = max(1.0, (self._queued / max(self.max_batch, 1)) * self._batch_seconds)
            raise Overloaded(f"the queue is full ({self._queued} samples waiting, at most {self.max_queue}); "
                             f"retry after {wait:.0f} s", retry_after=wait)
        self.start()  # (re)starts the loop when it is not running
        fut = asyncio.get_running_loop().create_future()
        self._queue.append(_Pending(x, fut, time.monotonic()))
        self._queued += n
        self._wake.set()  # type: ignore[union-attr]
        return await fut

    async def _loop(self) -> None:
        while True:
            if not self._queue:
                self._wake.clear()  # type: ignore[union-attr]
                await self._wake.wait()  # type: ignore[union-attr]
                continue
            deadline = self._queue[0].enqueued + self.max_wait
            while self._queued < self.max_batch and time.monotonic() < deadline:
                self._wake.clear()  # type: ignore[union-attr]
                try:
                    await asyncio.wait_for(self._wake.wait(), deadline - time.monotonic())  # type: ignore[union-attr]
                except asyncio.TimeoutError:
                    break
            batch = [self._queue.popleft()]
            size = int(batch[0].x.shape[0])
            while self._queue and size + int(self._queue[0].x.shape[0]) <= self.max_batch:
                p = self._queue.popleft()
                batch.append(p)
                size += int(p.x.shape[0])
            self._queued -= size
            self._current = [p for p in batch if not p.future.cancelled()]  # the client went away
            try:
                await self._run_batch(self._current)
            except Exception as e:  # anything that fails answers every request of the batch with the error
                for p in self._current:
                    if not p.future.done():
                        p.future.set_exception(e)
            self._current = []

    async def _run_batch(self, batch: list[_Pending]) -> None:
        if not batch:
            return
        x = batch[0].x if len(batch) == 1 else torch.cat([p.x for p in batch])
        t0 = time.monotonic()
        res = await asyncio.get_running_loop().run_in_executor(self._pool, self._run, x)
        self._batch_seconds = 0.8 * self._batch_seconds + 0.2 * (time.monotonic() - t0)
        if self._on_batch is not None:
            self._on_batch(res)
        for p, a in zip(batch, Answers.split(res, [int(p.x.shape[0]) for p in batch])):
            if not p.future.done():
                p.future.set_result(a)


# ---------------------------------------------------------------------------------------------- images
MAX_PIXELS = 16 * 10**6


def decode_image(data: bytes, input_shape: tuple[int, ...]) -> torch.Tensor:
    """A PNG/JPEG (any format Pillow reads) -> (1, C, H, W) in [0, 1], converted and resized as the
    image-folder datasets are (``Resize((H, W))`` then ``PILToTensor() / 255``).

    Raises:
        InputError: not an image, truncated, or an unusable size.
    """
    from PIL import Image, UnidentifiedImageError
    from torchvision import transforms

    if not data:
        raise InputError("the upload is empty; send a PNG or JPEG file")
    try:
        img = Image.open(io.BytesIO(data))
        if img.width * img.height > MAX_PIXELS:
            raise InputError(f"the image is {img.width}x{img.height}; send one of at most {MAX_PIXELS // 10**6} "
                             f"megapixels (it is resized to the model's input anyway)")
        img.load()
    except UnidentifiedImageError:
        raise InputError("the upload is not an image Pillow can read; send a PNG or JPEG file") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise InputError(f"the image is truncated or corrupt ({e}); send the whole file") from None
    except Image.DecompressionBombError as e:
        raise InputError(f"the image is too large ({e}); send one of at most a few megapixels") from None
    C, H, W = input_shape
    if img.width < 1 or img.height < 1:
        raise InputError(f"the image is {img.width}x{img.height}; send a non-empty image")
    if C not in (1, 3):
        raise InputError(f"this policy takes {C}-channel inputs; send them as a JSON batch of arrays")
    img = img.convert("L" if C == 1 else "RGB")
    x = transforms.PILToTensor()(transforms.Resize((H, W))(img)).float().div_(255.0)
    return x.unsqueeze(0)


def decode_arrays(inputs: Any, input_shape: tuple[int, ...] | None, max_inputs: int) -> torch.Tensor:
    """A JSON batch (N, C, H, W) or one input (C, H, W) of numbers in [0, 1] -> float32 tensor.

    Raises:
        InputError: not numbers, ragged, the wrong rank, too many inputs.
    """
    if not isinstance(inputs, list):
        raise InputError('"inputs" must be an array of images: (N, C, H, W) nested lists of numbers in [0, 1]')
    try:
        a = np.asarray(inputs, dtype=np.float64)
    except (ValueError, TypeError, OverflowError):
        raise InputError('"inputs" must be a rectangular array of numbers (N, C, H, W); it is ragged or holds '
                         'something other than numbers') from None
    if input_shape is not None and a.ndim == len(input_shape):
        a = a[None]
    if a.ndim != 4:
        want = f"(N, {', '.join(map(str, input_shape))})" if input_shape is not None else "(N, C, H, W)"
        raise InputError(f'"inputs" has shape {a.shape}; send {want} or a single image without N')
    if a.shape[0] == 0:
        raise InputError('"inputs" is empty; send at least one image')
    if a.shape[0] > max_inputs:
        raise InputError(f'"inputs" holds {a.shape[0]} images; send at most {max_inputs} per request')
    return torch.from_numpy(a.astype(np.float32))


NPY_TYPES = ("application/x-npy", "application/octet-stream")


def decode_npy(data: bytes, max_inputs: int) -> torch.Tensor:
    """A ``.npy`` body (``numpy.save`` of a float array (N, C, H, W)) -> float32 tensor; no pickles are read.

    Raises:
        InputError: not a .npy file, an object array, the wrong rank, too many inputs.
    """
    try:
        f = io.BytesIO(data)
        version = np.lib.format.read_magic(f)
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, _, dtype = read(f)
        if dtype.hasobject or int(np.prod(shape, dtype=object)) * dtype.itemsize != len(data) - f.tell():
            raise ValueError(f"its header declares {dtype} {shape}, which is not what the body holds")
        a = np.load(io.BytesIO(data), allow_pickle=False)
    except (ValueError, OSError, EOFError, SyntaxError) as e:
        raise InputError(f"the body is not a .npy array ({e}); send numpy.save(buffer, x) of float32 (N, C, H, W) "
                         f"in [0, 1]") from None
    if not isinstance(a, np.ndarray) or a.dtype.kind not in "fiu":
        raise InputError(f"the .npy array holds {getattr(a, 'dtype', type(a).__name__)}; send float32 numbers")
    if a.ndim != 4 or a.shape[0] == 0:
        raise InputError(f"the .npy array has shape {a.shape}; send (N, C, H, W) with N >= 1")
    if a.shape[0] > max_inputs:
        raise InputError(f"the .npy array holds {a.shape[0]} images; send at most {max_inputs} per request")
    return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))


# ---------------------------------------------------------------------------------------------- service
class PolicyService:
    """A saved policy's runtime with a dynamic batcher, a settable knob and windowed statistics.

    Args:
        policy: a :class:`~dyninfer.policy.Policy` (``load_policy(DIR)``).
        config: :class:`ServeConfig`.
    """

    def __init__(self, policy, config: ServeConfig | None = None) -> None:
        if policy.method.task != "classification":
            raise ConfigError(f"the service answers classifier policies; this one ({policy.method.name}) answers a "
                              f"{policy.method.task} task: run it in Python with dyninfer.load_policy(DIR).runtime()")
        self.policy = policy
        self.config = config or ServeConfig()
        self.method = policy.method
        self.runtime = policy.runtime(device=self.config.device)
        self.paths = list(self.runtime.paths)
        self.input_shape = tuple(self.runtime.input_shape) if self.runtime.input_shape else None
        self.class_names = policy.class_names
        self.curve = KnobCurve(self.method)
        self.fitted_knob = self.runtime.knob
        self.fitted_forced = self.runtime.forced
        self.user_knob = self.fitted_knob  # the knob the user asked for (the controller returns to it)
        self.user_point = self.curve.nearest(self.fitted_knob)  # its point on the frontier
        self.point = self.user_point  # the point in force (the controller may move it)
        self.stats = WindowStats(self.paths, self.config.window_s)
        self.batcher = Batcher(self._run, max_batch=self.config.max_batch, max_wait_ms=self.config.max_wait_ms,
                               max_queue=self.config.max_queue, on_batch=self._count)
        self.controller = None  # set by serve.controller.LatencyController
        self._lock = threading.Lock()
        self.listeners: list = []  # callables(event: str) after a knob change

    # ---------------------------------------------------------------- running
    def _run(self, x: torch.Tensor) -> RuntimeResult:
        return self.runtime(x)

    def _count(self, res: RuntimeResult) -> None:
        per_path = np.bincount(np.asarray(res.path, dtype=np.int64), minlength=len(self.paths))
        self.stats.add_batch(len(res), per_path)
        for f in self.listeners:
            f("batch", res)

    def check(self, x: torch.Tensor) -> torch.Tensor:
        """The runtime's own input checks (shape, dtype, NaN/inf, pixel range), before the request is queued."""
        if x.shape[0] > self.config.max_inputs:
            raise InputError(f"{x.shape[0]} inputs in one request; send at most {self.config.max_inputs}")
        return self.runtime.check(x)

    async def predict(self, x: torch.Tensor) -> tuple[Answers, float]:
        """Check, queue and run ``x``; (its result, the server-side latency in seconds)."""
        t0 = time.monotonic()
        x = self.check(x)
        res = await self.batcher.submit(x)
        latency = time.monotonic() - t0
        self.stats.add_request(latency, len(res))
        return res, latency

    def answers(self, res: Answers, latency_s: float) -> list[dict]:
        """One JSON-able answer per sample."""
        names = self.class_names
        return [{"class": int(k), "label": names[k] if k < len(names) else str(k), "probability": float(q),
                 "path": self.paths[int(p)], "path_index": int(p), "flops": float(f), "latency_ms": latency_s * 1000}
                for k, p, q, f in zip(res.pred.tolist(), res.path.tolist(), res.prob.tolist(), res.flops.tolist())]

    # ---------------------------------------------------------------- knob
    def knob_state(self) -> dict:
        c = self.curve
        forced = self.runtime.forced
        return {"method": self.method.name, "knob": _plain(self.runtime.knob),
                "forced_path": self.paths[forced] if forced is not None else None,
                "point": self.point, "user_point": self.user_point, "points": len(c),
                "calibrated_accuracy": float(c.accuracy[self.point]), "calibrated_flops": float(c.cost[self.point]),
                "user_accuracy": float(c.accuracy[self.user_point]),
                "accuracy_traded": float(c.accuracy[self.user_point] - c.accuracy[self.point]),
                "controller": self.controller.state() if self.controller is not None else None,
                "paths": self.paths}

    def set_knob(self, body: dict) -> dict:
        """Set the knob from one of ``value`` (the method's raw knob: thresholds, a cost bias),
        ``point`` (an index on the calibrated frontier), ``target_accuracy``, ``budget_flops``, ``path``
        (force one path; null: back to the knob) or ``fitted: true`` (the fitted operating point).

        Raises:
            ConfigError: none or several of them, or a value the method refuses (with its range).
        """
        keys = [k for k in ("value", "point", "target_accuracy", "budget_flops", "path", "fitted") if k in body]
        unknown = sorted(set(body) - {"value", "point", "target_accuracy", "budget_flops", "path", "fitted"})
        if unknown or len(keys) != 1:
            raise ConfigError("send exactly one of value, point, target_accuracy, budget_flops, path, fitted"
                              + (f" (unknown: {', '.join(unknown)})" if unknown else f" (got {len(keys)})"))
        key, v = keys[0], body[keys[0]]
        with self._lock:
            if key == "path":
                self.runtime.force(None if v is None else _path_name(self.paths, v))
            elif key == "fitted":
                if v is not True:
                    raise ConfigError('"fitted" takes true')
                self.runtime.knob = self.user_knob = self.fitted_knob
                self.runtime.force(self.fitted_forced)
                self.user_point = self.point = self.curve.nearest(self.fitted_knob)
            else:
                try:
                    knob = self._knob_from(key, v)
                except ConfigError:
                    raise
                except (OverflowError, TypeError, ValueError) as e:  # e.g. a number beyond float range
                    raise ConfigError(f"{key} {str(v)[:40]!r} cannot be used ({type(e).__name__}); send a number in "
                                      f"range") from None
                self.runtime.knob = self.user_knob = knob
                self.runtime.force(None)
                self.user_point = self.point = v if key == "point" else self.curve.nearest(knob)
            if self.controller is not None:
                self.controller.reset()
        for f in self.listeners:
            f("knob", None)
        return self.knob_state()

    def _knob_from(self, key: str, v: Any) -> Any:
        """The method's knob for ``point``, ``value``, ``target_accuracy`` or ``budget_flops`` = ``v``."""
        if key == "point":
            if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < len(self.curve):
                raise ConfigError(f'"point" must be an integer in [0, {len(self.curve) - 1}], got {v!r}')
            return self.curve.knobs[v]
        if key == "value":
            return self.method.check_knob(_from_json(v))
        if key == "target_accuracy":
            return self.method.knob_for(target_accuracy=v)
        return self.method.knob_for(budget_flops=v)

    def move_to(self, point: int) -> None:
        """Put the runtime at frontier ``point`` without changing the user's setting (the controller's move);
        at the user's point, the user's own knob. A forced runtime keeps running its path."""
        with self._lock:
            self.runtime.knob = self.user_knob if point == self.user_point else self.curve.knobs[point]
            self.point = point
        for f in self.listeners:
            f("knob", None)

    def curve_state(self) -> dict:
        return {**self.curve.to_dict(), "point": self.point, "user_point": self.user_point,
                "stats": self.stats.snapshot()}

    def info(self) -> dict:
        return {"method": self.method.name, "paths": self.paths, "input_shape": list(self.input_shape or []),
                "class_names": self.class_names, "config": asdict(self.config),
                "pixel_range": [0.0, 1.0]}


def _path_name(paths: list[str], v: Any) -> str:
    if isinstance(v, bool) or not isinstance(v, (str, int)):
        raise ConfigError(f'"path" must be a path name ({", ".join(paths)}), its index, or null')
    return paths[path_index(paths, v)]  # type: ignore[index]
