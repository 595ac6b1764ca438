"""Load benchmark of `dyninfer serve` on loopback: serving overhead, concurrency, overload, the latency controller.

    .venv/bin/python benchmarks/serve_load.py [--policy reports/cascade-fashion-mnist-full/policy]

Everything runs side by side in one process tree on this machine, one server at a time:

1. Overhead: the in-process runtime's throughput on 64-image batches of the test split, beside the served
   throughput of the same policy when clients send 64-image ``.npy`` batches (the batch-friendly load),
   alternated over five rounds; the median ratio is the figure.
2. Concurrency: 1, 8, 32 and 64 closed-loop clients sending one-image JSON requests: throughput, p50, p99,
   failed requests (anything but 200 or 503) and 503s.
3. Overload: an open-loop burst at 3x the measured capacity: only 503s with Retry-After may fail.
4. Controller: the knob at the most accurate calibrated point; an open-loop load at 1.3x that point's
   capacity, once with the knob fixed and once with ``--slo-p99-ms``; p99 (whole run and its second half),
   503s, the accuracy of the answers on the labelled test images, and the calibrated accuracy traded.

Every load loop is bounded in requests and seconds; servers listen on 127.0.0.1 only. Results go to
``--out``/results.json and report.md.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import random
import socket
import subprocess
import tempfile
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`dyninfer serve` in a subprocess on a free loopback port."""

    def __init__(self, policy: str, threads: int, extra: list[str]) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cmd = [sys.executable, "-c", "import sys; from dyninfer.cli import main; sys.exit(main())", "serve", policy, "--port", str(self.port), "--threads",
               str(threads), *extra]
        self.log = tempfile.TemporaryFile(mode="w+")  # a file, not a pipe: a chatty server never blocks on it
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=self.log, text=True)

    def __enter__(self) -> "Server":
        import httpx

        t0 = time.monotonic()
        while time.monotonic() - t0 < 120:
            if self.proc.poll() is not None:
                self.log.seek(0)
                raise RuntimeError(f"the server exited: {self.log.read()[-2000:]}")
            try:
                if httpx.get(self.url + "/readyz", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError("the server did not become ready in 120 s")

    def __exit__(self, *exc) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def npy(x: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, x.astype(np.float32))
    return buf.getvalue()


async def closed_loop(url: str, clients: int, seconds: float, make, max_requests: int) -> dict:
    """``clients`` workers, each sending a request as soon as its last one is answered."""
    import aiohttp

    lat, server_lat, codes, images, sent = [], [], [], [0], [0]
    stop = time.monotonic() + seconds

    async def worker(session):
        while time.monotonic() < stop and sent[0] < max_requests:
            sent[0] += 1
            body, headers, n, _ = make()
            t0 = time.perf_counter()
            try:
                async with session.post(url + "/v1/predict", data=body, headers=headers) as r:
                    code, payload = r.status, await r.read()
            except aiohttp.ClientError:
                code, payload = -1, b""
            lat.append(time.perf_counter() - t0)
            codes.append(code)
            if code == 200:
                images[0] += n
                server_lat.append(json.loads(payload)["predictions"][0]["latency_ms"] / 1000)

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=clients + 4),
                                     timeout=aiohttp.ClientTimeout(total=60)) as session:
        t0 = time.monotonic()
        await asyncio.gather(*(worker(session) for _ in range(clients)))
        wall = time.monotonic() - t0
    return summarise(lat, codes, images[0], wall, server_lat)


async def open_loop(url: str, rate: float, seconds: float, make, max_requests: int) -> dict:
    """Poisson arrivals at ``rate`` requests/s, whatever the answers; labels checked against the answers."""
    import aiohttp

    rng = random.Random(0)
    lat, server_lat, codes, images, done_at, correct, answered = [], [], [], [0], [], [0], [0]

    async def one(session, body, headers, n, labels):
        t0 = time.perf_counter()
        retry_after = None
        try:
            async with session.post(url + "/v1/predict", data=body, headers=headers) as r:
                code, payload, retry_after = r.status, await r.read(), r.headers.get("Retry-After")
        except aiohttp.ClientError:
            code, payload = -1, b""
        lat.append(time.perf_counter() - t0)
        codes.append(code if code != 503 or retry_after else -503)  # a 503 without Retry-After is a failure
        done_at.append(time.monotonic())
        if code == 200:
            images[0] += n
            preds = json.loads(payload)["predictions"]
            server_lat.append(preds[0]["latency_ms"] / 1000)
            correct[0] += int(np.sum(np.asarray([p["class"] for p in preds]) == labels))
            answered[0] += n

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=4000),
                                     timeout=aiohttp.ClientTimeout(total=120)) as session:
        tasks, t0 = [], time.monotonic()
        next_t = t0
        while next_t < t0 + seconds and len(tasks) < max_requests:
            await asyncio.sleep(max(0.0, next_t - time.monotonic()))
            body, headers, n, labels = make()
            tasks.append(asyncio.create_task(one(session, body, headers, n, labels)))
            next_t += rng.expovariate(rate)
        sent_for = time.monotonic() - t0
        await asyncio.gather(*tasks)
        wall = time.monotonic() - t0
    s = summarise(lat, codes, images[0], wall, server_lat)
    ok_half = [lt for lt, cd, d in zip(lat, codes, done_at) if cd == 200 and d >= t0 + seconds / 2]
    s["p99_ms_second_half"] = float(np.percentile(ok_half, 99) * 1000) if ok_half else None
    s["accuracy_answered"] = correct[0] / answered[0] if answered[0] else None
    s["offered_rate_per_s"] = rate
    s["achieved_send_rate_per_s"] = len(tasks) / sent_for if sent_for else 0.0
    return s


def summarise(lat, codes, images, wall, server_lat) -> dict:
    ok = [lt for lt, c in zip(lat, codes) if c == 200]
    pct = lambda v, q: float(np.percentile(v, q) * 1000) if v else None  # noqa: E731
    return {"requests": len(codes), "ok": len(ok), "rejected_503": sum(c == 503 for c in codes),
            "failed": sum(c not in (200, 503) for c in codes), "images_per_s": images / wall if wall else 0.0,
            "p50_ms": pct(ok, 50), "p99_ms": pct(ok, 99), "server_p50_ms": pct(server_lat, 50),
            "server_p99_ms": pct(server_lat, 99), "seconds": wall}


class InProcess:
    """The policy's own runtime in this process, timed on the same images."""

    def __init__(self, policy: str, x: np.ndarray, batch: int) -> None:
        import torch

        from dyninfer.policy import load_policy

        self.rt = load_policy(policy).runtime()
        self.x = torch.from_numpy(x)
        self.batch = batch
        self.rt.run(self.x[:batch * 2], batch_size=batch)  # warm-up

    def images_per_s(self) -> float:
        t0 = time.perf_counter()
        self.rt.run(self.x, batch_size=self.batch)
        return self.x.shape[0] / (time.perf_counter() - t0)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--policy", default=str(ROOT / "reports/cascade-fashion-mnist-full/policy"))
    ap.add_argument("--out", default=str(ROOT / "reports/serve-load"))
    ap.add_argument("--threads", type=int, default=1, help="torch threads of the server and the in-process runtime")
    ap.add_argument("--seconds", type=float, default=8.0, help="length of each load phase")
    ap.add_argument("--controller-seconds", type=float, default=24.0)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=5, help="alternated in-process/served rounds of the overhead figure")
    ap.add_argument("--controller-loads", type=float, nargs="+", default=[1.1, 1.3],
                    help="offered loads, as multiples of the capacity at the most accurate point")
    ap.add_argument("--slo-p99-ms", type=float, default=None, help="default: 3x the p50 of one client at that point")
    args = ap.parse_args()
    if not (Path(args.policy) / "policy.json").exists() and not (Path(args.policy) / "policy" / "policy.json").exists():
        print(f"no policy at {args.policy}; make one with: .venv/bin/dyninfer cascade --preset full "
              f"--out reports/cascade-fashion-mnist-full", file=sys.stderr)
        return 2
    import torch

    from dyninfer.data import load_dataset

    torch.set_num_threads(args.threads)
    data = load_dataset("fashion-mnist", seed=0)
    x, y = data.test.x.numpy(), data.test.y.numpy()
    out: dict = {"policy": args.policy, "threads": args.threads, "batch": args.batch, "cpu_count": os.cpu_count(),
                 "note": "client and server share this machine's cores; latencies are end to end on loopback"}
    rng = np.random.default_rng(0)
    log = lambda s: print(f"[serve-load] {s}", flush=True)  # noqa: E731

    def batch_req(n):  # bodies encoded before the clock starts, so the client spends its time sending
        bodies = [(npy(x[i:i + n]), y[i:i + n]) for i in range(0, min(x.shape[0], 256 * n), n)]

        def make():
            body, labels = bodies[int(rng.integers(0, len(bodies)))]
            return body, {"content-type": "application/x-npy"}, n, labels
        return make

    one_bodies = [json.dumps({"inputs": x[i:i + 1].tolist()}).encode() for i in range(512)]

    def one_json():
        i = int(rng.integers(0, len(one_bodies)))
        return one_bodies[i], {"content-type": "application/json"}, 1, y[i:i + 1]

    common = ["--max-batch", str(args.batch), "--max-queue", "1024", "--max-wait-ms", "5"]
    inproc = InProcess(args.policy, x[:64 * 64], args.batch)
    with Server(args.policy, args.threads, common) as srv:
        pairs = []  # in-process and served, alternated so that both see the same machine
        for _ in range(args.rounds):
            a = inproc.images_per_s()
            b = asyncio.run(closed_loop(srv.url, 4, args.seconds / 2, batch_req(args.batch), 100_000))
            pairs.append((a, b["images_per_s"], b))
        ratios = [b / a for a, b, _ in pairs]
        k = int(np.argsort(ratios)[len(ratios) // 2])
        out["overhead"] = {"rounds": [{"in_process_images_per_s": a, "served": b} for a, _, b in pairs],
                           "ratios": ratios, "ratio_median": ratios[k]}
        log(f"overhead: served/in-process throughput per round {', '.join(f'{r:.1%}' for r in ratios)} "
            f"(median {ratios[k]:.1%}: {pairs[k][1]:.0f} vs {pairs[k][0]:.0f} img/s; target >= 80%)")
        out["concurrency"] = {}
        for c in (1, 8, 32, 64):
            r = asyncio.run(closed_loop(srv.url, c, args.seconds, one_json, 50_000))
            out["concurrency"][c] = r
            log(f"{c:>2} clients, 1-image JSON: {r['images_per_s']:.0f} img/s, p50 {r['p50_ms']:.1f} ms, "
                f"p99 {r['p99_ms']:.1f} ms (server-side p99 {r['server_p99_ms']:.1f} ms), failed {r['failed']}, "
                f"503 {r['rejected_503']}")
        cap = max(r["images_per_s"] for r in out["concurrency"].values())
        r = asyncio.run(open_loop(srv.url, 3 * cap, args.seconds, one_json, int(3 * cap * args.seconds) + 10))
        out["overload"] = r
        log(f"overload at 3x capacity ({3 * cap:.0f} req/s offered, {r['achieved_send_rate_per_s']:.0f} sent): "
            f"{r['ok']} answered, {r['rejected_503']} x 503 with Retry-After, failed {r['failed']}")

        # the controller: the most accurate calibrated point, loaded past its capacity
        curve = srv_json(srv.url, "/v1/curve")
        best = int(np.argmax(curve["accuracy"]))  # the first (cheapest) of the most accurate points
        put(srv.url, {"point": best})
        n_req = 16
        cap_best = asyncio.run(closed_loop(srv.url, 8, args.seconds, batch_req(n_req), 100_000))["images_per_s"]
        idle = asyncio.run(closed_loop(srv.url, 1, args.seconds / 2, batch_req(n_req), 10_000))
        target = args.slo_p99_ms or 3 * idle["p50_ms"]
        log(f"controller: point {best} (calibrated accuracy {curve['accuracy'][best]:.4f}, "
            f"{curve['cost_flops'][best] / 1e6:.1f} MFLOPs), capacity {cap_best:.0f} img/s, p99 target {target:.0f} ms")
        rates = [m * cap_best / n_req for m in args.controller_loads]
        fixed = []
        for rate in rates:
            r = asyncio.run(open_loop(srv.url, rate, args.controller_seconds, batch_req(n_req),
                                      int(rate * args.controller_seconds) + 10))
            r["knob"] = srv_json(srv.url, "/v1/knob")
            fixed.append(r)
    with Server(args.policy, args.threads, common + ["--slo-p99-ms", f"{target:.1f}"]) as srv:
        controlled = []
        for rate in rates:
            put(srv.url, {"point": best})
            time.sleep(2.5)  # an idle window between loads
            r = asyncio.run(open_loop(srv.url, rate, args.controller_seconds, batch_req(n_req),
                                      int(rate * args.controller_seconds) + 10))
            r["knob"] = srv_json(srv.url, "/v1/knob")
            controlled.append(r)
    out["controller"] = {"target_p99_ms": target, "point": best, "capacity_images_per_s": cap_best,
                         "images_per_request": n_req, "loads": []}
    for m, rate, f, c in zip(args.controller_loads, rates, fixed, controlled):
        out["controller"]["loads"].append({"load_x_capacity": m, "offered_requests_per_s": rate, "fixed": f,
                                           "controlled": c})
        for name, r in (("fixed knob", f), ("controller", c)):
            log(f"{m:.1f}x capacity, {name}: p99 {r['p99_ms']:.0f} ms (second half "
                f"{r['p99_ms_second_half'] or float('nan'):.0f} ms; target {target:.0f}), 503 {r['rejected_503']}, "
                f"failed {r['failed']}, accuracy of answers {r['accuracy_answered']:.4f}, calibrated accuracy traded "
                f"{r['knob']['accuracy_traded']:.4f} (point {r['knob']['point']})")
    folder = Path(args.out)
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / "results.json.tmp"
    tmp.write_text(json.dumps(out, indent=1, default=float))
    tmp.replace(folder / "results.json")
    log(f"wrote {folder / 'results.json'}")
    return 0


def srv_json(url: str, path: str) -> dict:
    import httpx

    return httpx.get(url + path, timeout=30).json()


def put(url: str, body: dict) -> dict:
    import httpx

    r = httpx.put(url + "/v1/knob", json=body, timeout=30)
    r.raise_for_status()
    return r.json()


if __name__ == "__main__":
    sys.exit(main())
