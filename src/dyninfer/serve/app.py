"""The HTTP service of a saved policy: FastAPI on uvicorn (``dyninfer serve POLICY_DIR``).

Endpoints (the OpenAPI schema is at ``/openapi.json``, its pages at ``/docs``):

* ``POST /v1/predict`` — an image upload (multipart field ``file``, PNG or JPEG; several ``file`` fields
  make a batch), a JSON body ``{"inputs": [...]}`` of images (N, C, H, W) or one image (C, H, W), pixel
  values in [0, 1], or the same array as a ``.npy`` body (``application/x-npy``: no JSON parsing, for batches). Each input gets its class, label, probability, the path that answered, its FLOPs and
  the request's server-side latency.
* ``GET /v1/knob``, ``PUT /v1/knob`` — the knob: ``{"value": ...}`` (the method's own: thresholds or a
  cost bias), ``{"point": j}`` (frontier point j), ``{"target_accuracy": a}``, ``{"budget_flops": f}``,
  ``{"path": name}`` (force one path; ``null`` back to the knob) or ``{"fitted": true}``.
* ``GET /v1/curve`` — the calibrated accuracy–cost frontier, the current point and live statistics.
* ``PUT /v1/controller`` — ``{"enabled": bool}`` switches the latency controller (``--slo-p99-ms``).
* ``GET /metrics`` (Prometheus), ``GET /healthz``, ``GET /readyz``, ``GET /`` (the web page).

Every bad request is answered with a 4xx and a JSON body ``{"error": what was wrong and what to send,
"status": code}``; a full queue with 503 and ``Retry-After``. The body size is limited (413).
"""

from __future__ import annotations

import asyncio
import json
from contextlib import asynccontextmanager, contextmanager
from importlib import resources
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from prometheus_client import (CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, disable_created_metrics,
                               generate_latest)
from prometheus_client.core import GaugeMetricFamily
from pydantic import BaseModel, ConfigDict
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..errors import ConfigError, DyninferError, InputError, NotFittedError
from .controller import ControllerConfig, LatencyController
from .service import NPY_TYPES, Overloaded, PolicyService, decode_arrays, decode_image, decode_npy

disable_created_metrics()  # no *_created series beside every counter

ROUTES = ("/", "/v1/predict", "/v1/knob", "/v1/curve", "/v1/controller", "/v1/info", "/metrics", "/healthz",
          "/readyz", "/openapi.json", "/docs")

_PREDICT_BODY = {
    "required": True,
    "content": {
        "application/json": {"schema": {
            "type": "object", "required": ["inputs"], "additionalProperties": False,
            "properties": {"inputs": {"type": "array", "description": "(N, C, H, W) or (C, H, W) numbers in [0, 1]",
                                      "items": {}}}}},
        "application/x-npy": {"schema": {"type": "string", "format": "binary",
                                          "description": "a .npy array (N, C, H, W) of float32 in [0, 1]"}},
        "multipart/form-data": {"schema": {
            "type": "object", "required": ["file"],
            "properties": {"file": {"type": "string", "format": "binary", "description": "a PNG or JPEG image"}}}},
    },
}


class KnobRequest(BaseModel):
    """Exactly one field: how to set the knob."""

    model_config = ConfigDict(extra="forbid")
    value: Any = None
    point: Any = None
    target_accuracy: Any = None
    budget_flops: Any = None
    path: Any = None
    fitted: Any = None


class ControllerRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    enabled: bool


def _error(status: int, message: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": message, "status": status}, status_code=status, headers=headers)


class _Metrics:
    """The service's Prometheus metrics, in a registry of its own."""

    def __init__(self, service: PolicyService) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter("dyninfer_requests", "HTTP requests answered", ["endpoint", "code"], registry=r)
        self.errors = Counter("dyninfer_request_errors", "requests answered with a 4xx or 5xx",
                              ["endpoint", "code"], registry=r)
        self.latency = Histogram("dyninfer_predict_latency_seconds", "server-side latency of /v1/predict",
                                 buckets=(.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10), registry=r)
        self.samples = Counter("dyninfer_samples", "samples answered, by the path that answered", ["path"], registry=r)
        self.batch = Histogram("dyninfer_batch_size", "samples per runtime call",
                               buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512), registry=r)
        r.register(_Live(service))
        self._service = service
        service.listeners.append(self._on_event)

    def _on_event(self, event: str, res) -> None:
        if event != "batch":
            return
        self.batch.observe(len(res))
        counts = np.bincount(np.asarray(res.path, dtype=np.int64), minlength=len(self._service.paths))
        for p, c in zip(self._service.paths, counts):
            if c:
                self.samples.labels(p).inc(int(c))


class _Live:
    """Gauges read at scrape time: the knob's point, its calibrated accuracy and cost, what the controller
    trades, the queue, the path shares over the window."""

    def __init__(self, service: PolicyService) -> None:
        self.s = service

    def describe(self):
        return []

    def collect(self):
        k = self.s.knob_state()
        snap = self.s.stats.snapshot()
        for name, doc, v in (
                ("dyninfer_knob_point", "index of the operating point on the calibrated frontier", k["point"]),
                ("dyninfer_knob_user_point", "the point the user set (the controller moves below it)", k["user_point"]),
                ("dyninfer_knob_calibrated_accuracy", "calibrated accuracy of the point in force",
                 k["calibrated_accuracy"]),
                ("dyninfer_knob_calibrated_flops", "calibrated mean FLOPs per image of the point in force",
                 k["calibrated_flops"]),
                ("dyninfer_accuracy_traded", "calibrated accuracy given up by the latency controller",
                 k["accuracy_traded"]),
                ("dyninfer_queue_samples", "samples waiting for a batch", self.s.batcher.queued),
                ("dyninfer_forced", "1 when every sample is forced to one path", int(k["forced_path"] is not None))):
            yield GaugeMetricFamily(name, doc, value=float(v))
        g = GaugeMetricFamily("dyninfer_path_share", "share of samples answered by each path over the window",
                              labels=["path"])
        for p, v in snap["path_share"].items():
            g.add_metric([p], v)
        yield g
        for q in ("p50_ms", "p99_ms"):
            if snap[q] is not None:
                yield GaugeMetricFamily(f"dyninfer_window_latency_{q}", f"{q[:3]} latency over the window (ms)",
                                        value=snap[q])
        yield GaugeMetricFamily("dyninfer_window_throughput", "samples per second over the window",
                                value=snap["throughput_per_s"])


class _Guard:
    """ASGI middleware: the body-size limit (413) and the request counters, on every route."""

    def __init__(self, app, *, max_body_bytes: int, metrics: _Metrics) -> None:
        self.app = app
        self.limit = max_body_bytes
        self.metrics = metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        endpoint = scope["path"] if scope["path"] in ROUTES else "other"
        status = {"code": 500}

        async def counted_send(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            if scope["method"] in ("POST", "PUT", "PATCH"):
                body = await self._read(receive)
                if body is None:
                    return await _error(413, f"the request body is larger than {self.limit} bytes; send smaller "
                                             f"images or fewer per request")(scope, receive, counted_send)
                sent = False

                async def replay():
                    nonlocal sent
                    if not sent:
                        sent = True
                        return {"type": "http.request", "body": body, "more_body": False}
                    return await receive()

                return await self.app(scope, replay, counted_send)
            return await self.app(scope, receive, counted_send)
        finally:
            code = str(status["code"])
            self.metrics.requests.labels(endpoint, code).inc()
            if status["code"] >= 400:
                self.metrics.errors.labels(endpoint, code).inc()

    async def _read(self, receive) -> bytes | None:
        """The whole body, or None once it passes the limit."""
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return b""  # the client left; the app answers an empty body, which nobody reads
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.limit:
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        return b"".join(chunks)


def create_app(service: PolicyService, *, slo: ControllerConfig | None = None) -> FastAPI:
    """The FastAPI application serving ``service`` (with a latency controller when ``slo`` is given)."""
    controller = LatencyController(service, slo) if slo is not None else None
    metrics = _Metrics(service)
    state = {"ready": False}  # set after the warm-up (or by a host that runs no lifespan, such as Ray Serve)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        service.batcher.start()
        if service.input_shape is not None:  # warm up: the first batch pays for kernel selection
            import torch

            await service.batcher.submit(torch.zeros((1, *service.input_shape)))
        task = asyncio.get_running_loop().create_task(controller.run()) if controller is not None else None
        state["ready"] = True
        yield
        state["ready"] = False
        if task is not None:
            task.cancel()
        await service.batcher.stop()

    app = FastAPI(title="dyninfer policy service", version="1",
                  description=f"A fitted {service.method.name} policy over paths {', '.join(service.paths)}. "
                              "Set the accuracy-cost knob live; every answer says which path answered and its cost.",
                  lifespan=lifespan)
    app.state.service = service
    app.state.controller = controller
    app.state.readiness = state

    # ----------------------------------------------------------------- errors
    @app.exception_handler(InputError)
    async def _input(request: Request, e: InputError):
        return _error(422, str(e))

    @app.exception_handler(ConfigError)
    async def _config(request: Request, e: ConfigError):
        return _error(422, str(e))

    @app.exception_handler(NotFittedError)
    async def _not_fitted(request: Request, e: NotFittedError):
        return _error(409, str(e))

    @app.exception_handler(Overloaded)
    async def _overloaded(request: Request, e: Overloaded):
        return _error(503, str(e), headers={"Retry-After": str(max(1, round(e.retry_after)))})

    @app.exception_handler(DyninferError)
    async def _other(request: Request, e: DyninferError):
        return _error(400, str(e))

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, e: RequestValidationError):
        errs = e.errors()
        if any(err.get("type") == "json_invalid" for err in errs):
            return _error(400, "the body is not valid JSON; send a JSON object, e.g. {\"point\": 3}")
        where = "; ".join(f"{'.'.join(str(p) for p in err.get('loc', ()))}: {err.get('msg', '')}" for err in errs)
        return _error(422, f"the request does not match the schema ({where}); see /openapi.json")

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, e: StarletteHTTPException):
        hint = {404: f"no such endpoint; the service has {', '.join(ROUTES)}",
                405: "this endpoint does not take that method; see /openapi.json"}.get(e.status_code, str(e.detail))
        return _error(e.status_code, hint, headers=getattr(e, "headers", None))

    @app.exception_handler(RecursionError)
    async def _deep(request: Request, e: RecursionError):
        return _error(400, "the JSON body is nested too deeply; send a flat object as /openapi.json describes")

    @app.exception_handler(Exception)
    async def _bug(request: Request, e: Exception):  # answered, logged by uvicorn; the server keeps serving
        return _error(500, f"internal error ({type(e).__name__}: {e}); the request was not processed")

    # ----------------------------------------------------------------- endpoints
    @app.post("/v1/predict", openapi_extra={"requestBody": _PREDICT_BODY},
              summary="classify images; each answer names the path that answered and its cost")
    async def predict(request: Request):
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype == "application/json":
            try:
                body = json.loads(await request.body())
            except (ValueError, RecursionError):  # malformed, undecodable, too deep, or a number too long
                return _error(400, 'the body is not valid JSON; send {"inputs": [[[[...]]]]} (N, C, H, W) in [0, 1]')
            if not isinstance(body, dict) or set(body) != {"inputs"}:
                return _error(422, 'send a JSON object with one key, "inputs": (N, C, H, W) or (C, H, W) numbers '
                                   'in [0, 1]')
            x = await asyncio.to_thread(decode_arrays, body["inputs"], service.input_shape, service.config.max_inputs)
        elif ctype in NPY_TYPES:
            x = await asyncio.to_thread(decode_npy, await request.body(), service.config.max_inputs)
        elif ctype == "multipart/form-data":
            try:
                form = await request.form(max_files=service.config.max_inputs)
            except Exception as e:  # python-multipart's parse errors
                return _error(400, f"the multipart body cannot be parsed ({e}); send the image as form field 'file'")
            files = [f for f in form.getlist("file") if hasattr(f, "read")]
            if not files:
                return _error(422, "no file in form field 'file'; send the image as multipart field 'file'")
            if service.input_shape is None:
                return _error(422, "this policy has no fixed input shape; send a JSON batch of arrays")
            import torch

            datas = [await f.read() for f in files]
            x = torch.cat(await asyncio.to_thread(lambda: [decode_image(d, service.input_shape) for d in datas]))
        else:
            return _error(415, f"content type {ctype or 'none'!r} is not accepted; send multipart/form-data with an "
                               f"image in field 'file', application/json with {{\"inputs\": ...}}, or application/x-npy "
                               f"with a float32 .npy array (N, C, H, W)")
        res, latency = await service.predict(x)
        metrics.latency.observe(latency)
        return {"predictions": service.answers(res, latency), "knob": service.knob_state()["knob"],
                "point": service.point}

    @app.get("/v1/knob", summary="the knob, its point on the calibrated curve, and the controller's state")
    async def get_knob():
        return service.knob_state()

    @app.put("/v1/knob", summary="set the knob (exactly one field)")
    async def put_knob(body: KnobRequest):
        return service.set_knob(body.model_dump(exclude_unset=True))

    @app.get("/v1/curve", summary="the calibrated accuracy-cost frontier, the current point, live statistics")
    async def get_curve():
        return service.curve_state()

    @app.put("/v1/controller", summary="switch the latency controller on or off")
    async def put_controller(body: ControllerRequest):
        if controller is None:
            return _error(409, "no latency controller runs; start the server with --slo-p99-ms MS")
        controller.set_enabled(body.enabled)
        return service.knob_state()

    @app.get("/v1/info", summary="method, paths, input shape, classes, server settings")
    async def info():
        return service.info()

    @app.get("/metrics", summary="Prometheus metrics", response_class=Response)
    async def prometheus():
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/healthz", summary="the process answers")
    async def healthz():
        return {"ok": True}

    @app.get("/readyz", summary="the policy is loaded and warmed up")
    async def readyz():
        if not state["ready"]:
            return _error(503, "warming up; retry shortly", headers={"Retry-After": "1"})
        return {"ready": True, "queued": service.batcher.queued}

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page():
        return HTMLResponse(resources.files("dyninfer.serve").joinpath("static/index.html").read_text())

    app.add_middleware(_Guard, max_body_bytes=service.config.max_body_bytes, metrics=metrics)
    app.state.metrics = metrics
    return app


@contextmanager
def running(app: FastAPI, *, host: str = "127.0.0.1", port: int = 0, timeout_s: float = 60.0):
    """Run ``app`` with uvicorn on a background thread; yields its base URL (``port=0``: a free port).
    For tests, benchmarks and notebooks; stops the server on exit."""
    import threading
    import time

    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, name="dyninfer-serve", daemon=True)
    thread.start()
    t0 = time.monotonic()
    while not server.started:
        if not thread.is_alive() or time.monotonic() - t0 > timeout_s:
            raise RuntimeError(f"the server did not start within {timeout_s:.0f} s")
        time.sleep(0.02)
    bound = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://{host}:{bound}"
    finally:
        server.should_exit = True
        thread.join(timeout_s)


def serve(policy_dir: str, *, host: str = "127.0.0.1", port: int = 8000, config=None,
          slo: ControllerConfig | None = None, log=print) -> None:
    """Load a saved policy and serve it with uvicorn until interrupted."""
    import uvicorn

    from ..policy import load_policy

    service = PolicyService(load_policy(policy_dir, device=(config.device if config else "cpu")), config)
    app = create_app(service, slo=slo)
    log(f"serving {service.method.name} over {', '.join(service.paths)} on http://{host}:{port} "
        f"(page /, API /docs, metrics /metrics)")
    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False)
