"""``dyninfer serve POLICY_DIR``: the HTTP service of a saved policy (or its Ray Serve deployment)."""

from __future__ import annotations

import argparse

from ..cli import COMMANDS, Command
from ..errors import ConfigError


def _args(p: argparse.ArgumentParser) -> None:
    p.add_argument("policy", help="a saved policy: DIR (from `dyninfer run METHOD --out DIR`) or DIR/policy")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument("--device", default="cpu", help="torch device of the runtime (default cpu)")
    p.add_argument("--max-batch", type=int, default=64, help="most samples per runtime call (default 64)")
    p.add_argument("--max-wait-ms", type=float, default=5.0, help="longest wait for batch mates (default 5 ms)")
    p.add_argument("--max-queue", type=int, default=512,
                   help="most samples waiting; beyond it requests get 503 with Retry-After (default 512)")
    p.add_argument("--max-inputs", type=int, default=256, help="most inputs per request (default 256)")
    p.add_argument("--max-body-mb", type=float, default=8.0, help="largest request body in MiB (default 8)")
    p.add_argument("--slo-p99-ms", type=float, default=None,
                   help="run the latency controller: keep p99 latency under this many ms by moving the knob along "
                        "the calibrated curve (default: off)")
    p.add_argument("--slo-max-loss", type=float, default=0.01,
                   help="most calibrated accuracy the controller may give up (default 0.01 = 1 point)")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    ray = p.add_argument_group("Ray Serve (extra dyninfer[ray])")
    ray.add_argument("--ray", action="store_true", help="deploy on Ray Serve instead of one uvicorn process")
    ray.add_argument("--replicas", type=int, default=1, help="initial replicas of the path deployment (default 1)")
    ray.add_argument("--max-replicas", type=int, default=2, help="autoscaling ceiling (default 2)")
    ray.add_argument("--cache-mb", type=float, default=64.0,
                     help="byte budget of each replica's cache of paths, MiB (default 64)")


def _run(args: argparse.Namespace) -> int:
    from .service import ServeConfig  # torch only; the web stack is imported below

    config = ServeConfig(max_batch=args.max_batch, max_wait_ms=args.max_wait_ms, max_queue=args.max_queue,
                         max_inputs=args.max_inputs, max_body_bytes=int(args.max_body_mb * 2**20), device=args.device)
    if args.threads is not None:
        import torch

        torch.set_num_threads(args.threads)
    if args.ray:
        try:
            from .ray_app import serve_ray
        except ImportError as e:
            raise ConfigError(f"--ray needs the ray extra ({e.name} is missing): pip install 'dyninfer[ray]'") from None
        serve_ray(args.policy, host=args.host, port=args.port, config=config, replicas=args.replicas,
                  max_replicas=args.max_replicas, cache_bytes=int(args.cache_mb * 2**20))
        return 0
    try:
        from .app import serve
        from .controller import ControllerConfig
    except ImportError as e:
        raise ConfigError(f"serve needs the serve extra ({e.name} is missing): pip install 'dyninfer[serve]'") from None
    slo = ControllerConfig(args.slo_p99_ms, max_loss=args.slo_max_loss) if args.slo_p99_ms is not None else None
    serve(args.policy, host=args.host, port=args.port, config=config, slo=slo)
    return 0


COMMANDS.register("serve", Command("serve a saved policy over HTTP: predictions, a live knob, a web page, metrics",
                                   _args, _run))
