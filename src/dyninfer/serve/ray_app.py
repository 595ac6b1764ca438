"""A saved policy on Ray Serve (``dyninfer serve POLICY_DIR --ray``; extra ``dyninfer[ray]``).

Two deployments:

* :class:`PathWorker` replicas run the policy's paths. Each keeps its paths in a byte-budgeted LRU cache
  (the project's :class:`~dyninfer.runtime.manager.BackboneManager`, loading checkpoints on a miss and
  evicting the least recently used path), requests are multiplexed by path (Ray routes a path's requests to
  replicas that already hold it), calls are batched (``serve.batch``) and the replica count autoscales on
  ongoing requests.
* :class:`PolicyIngress` serves the same HTTP API as ``dyninfer serve`` (the same FastAPI application, knob,
  curve, metrics and page) with the same dynamic batcher; its policy's pool paths are proxies that call the
  workers. The decision (the score after each cascade stage, the backbone chooser) runs in the ingress; only
  paths run on the workers, so every family's decisions are those of its in-process runtime. A network whose
  paths are the exits of one network (early exits) runs whole in the ingress.

One ingress replica holds the knob; workers scale out.
"""

from __future__ import annotations

import asyncio
import io
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import ConfigError


def _to_bytes(x: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, x, allow_pickle=False)
    return buf.getvalue()


def _from_bytes(b: bytes) -> np.ndarray:
    return np.load(io.BytesIO(b), allow_pickle=False)


class RemotePath(nn.Module):
    """A path whose forward runs on a :class:`PathWorker` replica chosen by Ray's multiplexing on the path name."""

    def __init__(self, name: str, handle) -> None:
        super().__init__()
        self.name = name
        self.handle = handle

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ref = self.handle.options(multiplexed_model_id=self.name).run.remote(self.name, _to_bytes(x.cpu().numpy()))
        return torch.from_numpy(_from_bytes(ref.result()))


def deployments():
    """The two deployment classes (Ray is imported here, not when the module loads)."""
    from ray import serve

    @serve.deployment(name="dyninfer-paths")
    class PathWorker:
        """Runs paths of one pool within a byte budget; see the module doc."""

        def __init__(self, policy_dir: str, cache_bytes: int, max_batch: int, max_wait_ms: float) -> None:
            from ..policy import load_policy
            from ..runtime.manager import BackboneManager

            torch.set_num_threads(1)
            paths = load_policy(policy_dir).paths
            self.names = list(paths.names)
            self.manager = BackboneManager(paths.backbone_pool(), cache_bytes)  # loads checkpoints on a miss
            del paths
            self._run_batch.set_max_batch_size(max_batch)
            self._run_batch.set_batch_wait_timeout_s(max_wait_ms / 1000)
            self.calls = 0
            self.max_resident_bytes = 0

        @serve.multiplexed(max_num_models_per_replica=64)
        async def get_path(self, name: str) -> str:
            if name not in self.names:
                raise ConfigError(f"no path {name!r}; this pool has {self.names}")
            return name

        async def run(self, name: str, x: bytes) -> bytes:
            await self.get_path(serve.get_multiplexed_model_id() or name)
            return await self._run_batch((name, x))

        @serve.batch(max_batch_size=64, batch_wait_timeout_s=0.005)
        async def _run_batch(self, items: list[tuple[str, bytes]]) -> list[bytes]:
            return await asyncio.get_running_loop().run_in_executor(None, self._run_sync, items)

        def _run_sync(self, items: list[tuple[str, bytes]]) -> list[bytes]:
            out: list[Any] = [None] * len(items)
            for name in dict.fromkeys(n for n, _ in items):
                idx = [i for i, (n, _) in enumerate(items) if n == name]
                xs = [_from_bytes(items[i][1]) for i in idx]
                with torch.inference_mode(), self.manager.use(name) as model:
                    self.max_resident_bytes = max(self.max_resident_bytes, self.manager.used_bytes)
                    logits = model(torch.from_numpy(np.concatenate(xs))).float().numpy()
                start = 0
                for i, x in zip(idx, xs):
                    out[i] = _to_bytes(logits[start:start + x.shape[0]])
                    start += x.shape[0]
            self.calls += 1
            return out

        def stats(self) -> dict:
            return {**self.manager.stats().to_dict(), "used_bytes": self.manager.used_bytes,
                    "max_resident_bytes": self.max_resident_bytes, "resident": self.manager.resident(),
                    "calls": self.calls}

    @serve.deployment(name="dyninfer-ingress")
    class PolicyIngress:
        """The HTTP API of ``dyninfer serve`` over a policy whose pool paths run on :class:`PathWorker`."""

        def __init__(self, policy_dir: str, workers, config) -> None:
            from ..paths import ModulePool
            from ..policy import load_policy
            from .app import create_app
            from .service import PolicyService

            torch.set_num_threads(1)
            policy = load_policy(policy_dir)
            if isinstance(policy.paths, ModulePool):
                policy.paths.models = {n: RemotePath(n, workers) for n in policy.paths.names}
                policy.paths.files = {}
            self.service = PolicyService(policy, config)
            self.app = create_app(self.service)
            self.app.state.readiness["ready"] = True  # Ray runs no lifespan: ready once the replica is built
            self.workers = workers

        async def __call__(self, request):
            from starlette.responses import Response

            messages: list[dict] = []

            async def send(message):
                messages.append(message)

            await self.app(request.scope, request.receive, send)
            start = next(m for m in messages if m["type"] == "http.response.start")
            body = b"".join(m.get("body", b"") for m in messages if m["type"] == "http.response.body")
            headers = {k.decode(): v.decode() for k, v in start.get("headers", []) if k.lower() != b"content-length"}
            return Response(body, status_code=start["status"], headers=headers)

    return PathWorker, PolicyIngress


def build_app(policy_dir: str, *, config=None, replicas: int = 1, max_replicas: int = 2,
              cache_bytes: int = 64 * 2**20):
    """The Ray Serve application of a saved policy (see the module doc); pass it to ``serve.run``."""
    from .service import ServeConfig

    config = config or ServeConfig()
    if max_replicas < replicas or replicas < 1:
        raise ConfigError(f"need 1 <= replicas ({replicas}) <= max_replicas ({max_replicas})")
    PathWorker, PolicyIngress = deployments()
    workers = PathWorker.options(
        num_replicas="auto", ray_actor_options={"num_cpus": 0.5},
        autoscaling_config={"min_replicas": 1, "initial_replicas": replicas, "max_replicas": max_replicas,
                            "target_ongoing_requests": 4, "upscale_delay_s": 5, "downscale_delay_s": 30},
    ).bind(str(policy_dir), int(cache_bytes), config.max_batch, config.max_wait_ms)
    return PolicyIngress.options(num_replicas=1, ray_actor_options={"num_cpus": 0.5}).bind(
        str(policy_dir), workers, config)


def serve_ray(policy_dir: str, *, host: str = "127.0.0.1", port: int = 8000, config=None, replicas: int = 1,
              max_replicas: int = 2, cache_bytes: int = 64 * 2**20, log=print) -> None:
    """Start a local Ray instance, deploy the policy and serve until interrupted."""
    import time

    import ray
    from ray import serve

    ray.init(include_dashboard=False, log_to_driver=False, configure_logging=False)
    serve.start(http_options={"host": host, "port": port})
    serve.run(build_app(policy_dir, config=config, replicas=replicas, max_replicas=max_replicas,
                        cache_bytes=cache_bytes), route_prefix="/", name="dyninfer")
    log(f"serving {policy_dir} on Ray Serve at http://{host}:{port} ({replicas}-{max_replicas} path replicas, "
        f"{cache_bytes / 2**20:.0f} MiB path cache each)")
    try:
        while True:
            time.sleep(3600)
    finally:
        serve.shutdown()
        ray.shutdown()
