"""The HTTP service of a saved policy: answers equal the in-process runtime's, the knob in every form, a bounded
queue that answers 503 with Retry-After, the latency controller, metrics, and a 4xx JSON error for every bad
request (the server keeps serving)."""

from __future__ import annotations

import asyncio
import io
import time

import numpy as np
import pytest
import torch

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")

from dyninfer.policy import load_policy  # noqa: E402
from dyninfer.serve.app import create_app, running  # noqa: E402
from dyninfer.serve.controller import ControllerConfig, LatencyController  # noqa: E402
from dyninfer.serve.service import Batcher, Overloaded, PolicyService, ServeConfig  # noqa: E402

from conftest import FAMILIES  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

@pytest.fixture(scope="module")
def policies(saved_policies):
    """name -> (policy folder, prepared data)."""
    return {name: (folder, p) for name, (_, p, folder) in saved_policies.items()}


@pytest.fixture(scope="module")
def served(policies):
    """The cascade policy served on a free loopback port, with a latency controller (switched off)."""
    folder, prep = policies["cascade"]
    service = PolicyService(load_policy(folder), ServeConfig(max_batch=32, max_wait_ms=2, max_body_bytes=64_000))
    app = create_app(service, slo=ControllerConfig(target_p99_ms=1000))
    app.state.controller.set_enabled(False)
    with running(app) as url, httpx.Client(base_url=url, timeout=30) as client:
        yield client, service, prep


def _png(img: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray((img * 255).round().astype(np.uint8)).save(buf, "PNG")
    return buf.getvalue()


@pytest.mark.parametrize("name", list(FAMILIES))
def test_served_answers_equal_the_in_process_runtime(policies, name):
    """Every family: JSON batches through the HTTP service answer what the policy's own runtime answers."""
    folder, prep = policies[name]
    x = prep.data.test.x[:40]
    ref = load_policy(folder).runtime()(x)
    service = PolicyService(load_policy(folder), ServeConfig(max_batch=16))
    with running(create_app(service)) as url, httpx.Client(base_url=url, timeout=30) as client:
        got = []
        for i in range(0, 40, 7):  # uneven requests, regrouped by the batcher
            r = client.post("/v1/predict", json={"inputs": x[i:i + 7].tolist()})
            assert r.status_code == 200, r.text
            got += r.json()["predictions"]
    assert [g["class"] for g in got] == ref.pred.tolist()
    assert [g["path_index"] for g in got] == ref.path.tolist()
    assert np.allclose([g["flops"] for g in got], ref.flops)
    assert {g["path"] for g in got} <= set(service.paths)


def test_image_upload_is_resized_and_scaled_as_in_training(served):
    client, service, prep = served
    x = prep.data.test.x[:6]
    files = [("file", (f"{i}.png", _png(x[i, 0].numpy()), "image/png")) for i in range(6)]
    r = client.post("/v1/predict", files=files)
    assert r.status_code == 200, r.text
    got = [p["class"] for p in r.json()["predictions"]]
    quantised = (x * 255).round() / 255  # what a PNG holds
    assert got == service.runtime(quantised).pred.tolist()
    big = np.kron(x[0, 0].numpy(), np.ones((4, 4)))  # a 32x32 upload of an 8x8 image
    r = client.post("/v1/predict", files={"file": ("big.png", _png(big), "image/png")})
    assert r.status_code == 200 and r.json()["predictions"][0]["label"] in service.class_names


def test_knob_in_every_form_and_forced_paths(served):
    client, service, prep = served
    x = prep.data.test.x[:64].tolist()
    curve = client.get("/v1/curve").json()
    n = len(curve["accuracy"])
    assert n >= 2 and curve["cost_flops"] == sorted(curve["cost_flops"])
    try:
        cheap = client.put("/v1/knob", json={"point": 0}).json()
        assert cheap["point"] == 0 and cheap["calibrated_flops"] == pytest.approx(curve["cost_flops"][0])
        f_cheap = np.mean([p["flops"] for p in client.post("/v1/predict", json={"inputs": x}).json()["predictions"]])
        client.put("/v1/knob", json={"point": n - 1})
        f_dear = np.mean([p["flops"] for p in client.post("/v1/predict", json={"inputs": x}).json()["predictions"]])
        assert f_dear > f_cheap
        k = client.put("/v1/knob", json={"target_accuracy": curve["accuracy"][1]}).json()
        assert curve["accuracy"][k["point"]] >= curve["accuracy"][1] - 1e-9
        k = client.put("/v1/knob", json={"budget_flops": curve["cost_flops"][1] * 1.0001}).json()
        assert k["calibrated_flops"] <= curve["cost_flops"][1] * 1.0001
        k = client.put("/v1/knob", json={"value": curve["knobs"][2]}).json()
        assert k["point"] == 2
        last = service.paths[-1]
        assert client.put("/v1/knob", json={"path": last}).json()["forced_path"] == last
        preds = client.post("/v1/predict", json={"inputs": x}).json()["predictions"]
        assert {p["path"] for p in preds} == {last}
        assert client.put("/v1/knob", json={"path": None}).json()["forced_path"] is None
    finally:
        fitted = client.put("/v1/knob", json={"fitted": True}).json()
    assert fitted["knob"] == client.get("/v1/knob").json()["knob"]


BAD = [  # (what, request kwargs, expected status)
    ("malformed JSON", dict(content=b'{"inputs": [', headers={"content-type": "application/json"}), 400),
    ("ragged array", dict(json={"inputs": [[[0.1, 0.2], [0.3]]]}), 422),
    ("strings", dict(json={"inputs": [[["a"] * 8] * 8]}), 422),
    ("wrong size", dict(json={"inputs": np.zeros((2, 1, 5, 5)).tolist()}), 422),
    ("wrong channels", dict(json={"inputs": np.zeros((2, 3, 8, 8)).tolist()}), 422),
    ("NaN", dict(content=b'{"inputs": [[' + b",".join([b"[" + b",".join([b"NaN"] * 8) + b"]"] * 8) + b"]]}",
                 headers={"content-type": "application/json"}), 422),
    ("inf", dict(content=b'{"inputs": [[' + b",".join([b"[" + b",".join([b"Infinity"] * 8) + b"]"] * 8) + b"]]}",
                 headers={"content-type": "application/json"}), 422),
    ("0-255 pixels", dict(json={"inputs": (np.ones((1, 1, 8, 8)) * 200).tolist()}), 422),
    ("empty batch", dict(json={"inputs": []}), 422),
    ("extra keys", dict(json={"inputs": np.zeros((1, 1, 8, 8)).tolist(), "x": 1}), 422),
    ("not an image", dict(files={"file": ("a.png", b"this is text", "image/png")}), 422),
    ("truncated image", dict(files={"file": ("a.png", None, "image/png")}), 422),
    ("no file field", dict(files={"other": ("a.png", b"x", "image/png")}), 422),
    ("oversize body", dict(content=b"[" + b"0," * 40_000 + b"0]", headers={"content-type": "application/json"}), 413),
    ("unsupported type", dict(content=b"hello", headers={"content-type": "text/plain"}), 415),
    ("number beyond float range", dict(content=b'{"inputs": [[[[' + b"9" * 400 + b"]]]]}",
                                      headers={"content-type": "application/json"}), 422),
    ("JSON nested too deeply", dict(content=b'{"inputs": ' + b"[" * 20_000 + b"]" * 20_000 + b"}",
                                    headers={"content-type": "application/json"}), 400),
    ("npy header bigger than its body", dict(content=b"", headers={"content-type": "application/x-npy"}), 422),
]


@pytest.mark.parametrize("what,kwargs,status", BAD, ids=[b[0] for b in BAD])
def test_bad_predict_requests_get_a_4xx_json_error_and_the_server_keeps_serving(served, what, kwargs, status):
    client, service, prep = served
    if what == "truncated image":
        kwargs = dict(files={"file": ("a.png", _png(np.random.rand(32, 32))[:60], "image/png")})
    if what == "npy header bigger than its body":
        buf = io.BytesIO()
        np.save(buf, np.zeros((3, 1, 8, 8), np.float32))
        kwargs["content"] = buf.getvalue().replace(b"(3, 1, 8, 8)", b"(999999999, 1, 8, 8)")
    r = client.post("/v1/predict", **kwargs)
    assert r.status_code == status, r.text
    body = r.json()
    assert body["status"] == status and len(body["error"]) > 20  # says what was wrong and what to send
    ok = client.post("/v1/predict", json={"inputs": prep.data.test.x[:2].tolist()})
    assert ok.status_code == 200 and client.get("/healthz").json() == {"ok": True}


@pytest.mark.parametrize("body,status", [
    ({"point": -1}, 422), ({"point": 10**6}, 422), ({"point": 1.5}, 422), ({"value": [1, 2, 3]}, 422),
    ({"value": "high"}, 422), ({"path": "no-such-path"}, 422), ({"path": 99}, 422), ({"budget_flops": 1}, 422),
    ({"target_accuracy": 2}, 422), ({"point": 0, "value": 1}, 422), ({}, 422), ({"knob": 1}, 422),
    ({"value": 10**400}, 422), ({"budget_flops": 10**400}, 422),
    ({"fitted": False}, 422)])
def test_bad_knob_requests(served, body, status):
    client, service, _ = served
    before = client.get("/v1/knob").json()
    r = client.put("/v1/knob", json=body)
    assert r.status_code == status and "error" in r.json()
    assert client.get("/v1/knob").json()["knob"] == before["knob"]  # nothing changed


def test_unknown_routes_and_methods_answer_json(served):
    client, _, _ = served
    assert client.get("/v2/predict").status_code == 404 and "error" in client.get("/v2/predict").json()
    r = client.delete("/v1/knob")
    assert r.status_code == 405 and "error" in r.json()
    assert client.get("/readyz").json()["ready"] is True


def test_metrics_count_requests_paths_batches_and_the_knob(served):
    client, service, prep = served
    client.post("/v1/predict", json={"inputs": prep.data.test.x[:20].tolist()})
    client.post("/v1/predict", content=b"{", headers={"content-type": "application/json"})
    text = client.get("/metrics").text
    for series in ("dyninfer_requests_total", "dyninfer_request_errors_total", "dyninfer_predict_latency_seconds_bucket",
                   "dyninfer_samples_total", "dyninfer_batch_size_bucket", "dyninfer_knob_point",
                   "dyninfer_path_share", "dyninfer_accuracy_traded", "dyninfer_queue_samples"):
        assert series in text, series
    answered = sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith("dyninfer_samples_total{"))
    assert answered >= 20
    assert 'dyninfer_request_errors_total{code="400",endpoint="/v1/predict"}' in text


def test_page_is_served_offline(served):
    client, _, _ = served
    html = client.get("/").text
    assert "curve-marker" in html or "drawCurve" in html
    assert "http://" not in html.replace("http://www.w3.org/2000/svg", "")  # no CDN
    assert client.get("/openapi.json").json()["paths"]["/v1/predict"]["post"]["requestBody"]["content"]


# ------------------------------------------------------------------------------------------ batching
def test_batcher_groups_requests_and_refuses_beyond_its_queue():
    calls = []

    def run(x):
        calls.append(int(x.shape[0]))
        time.sleep(0.05)
        from dyninfer.result import RuntimeResult

        n = x.shape[0]
        return RuntimeResult(x[:, 0, 0, 0].long(), torch.zeros(n, dtype=torch.long), torch.ones(n), np.ones(n), 0.0,
                             np.zeros(1), np.zeros(1))

    async def main():
        b = Batcher(run, max_batch=4, max_wait_ms=20, max_queue=6)
        b.start()
        xs = [torch.full((1, 1, 2, 2), float(i)) for i in range(12)]
        out = await asyncio.gather(*(b.submit(x) for x in xs), return_exceptions=True)
        await b.stop()
        return out

    out = asyncio.run(main())
    refused = [o for o in out if isinstance(o, Overloaded)]
    done = [(i, o) for i, o in enumerate(out) if not isinstance(o, Exception)]
    assert len(refused) + len(done) == 12  # every request answered or refused, none lost
    assert refused and all(o.retry_after >= 1 for o in refused)
    assert all(int(o.pred[0]) == i for i, o in done)  # each got its own sample back
    assert max(calls) <= 4 and max(calls) > 1  # grouped, never above max_batch


def test_a_full_queue_answers_503_with_retry_after(policies):
    folder, prep = policies["cascade"]
    service = PolicyService(load_policy(folder), ServeConfig(max_batch=2, max_queue=2, max_wait_ms=1))
    slow = service.batcher._run
    service.batcher._run = lambda x: (time.sleep(0.1), slow(x))[1]
    x = prep.data.test.x[:1].tolist()

    async def burst(url):
        async with httpx.AsyncClient(base_url=url, timeout=30) as c:
            return await asyncio.gather(*(c.post("/v1/predict", json={"inputs": x}) for _ in range(12)))

    with running(create_app(service)) as url:
        rs = asyncio.run(burst(url))
        assert httpx.get(url + "/healthz").status_code == 200
    codes = [r.status_code for r in rs]
    assert set(codes) <= {200, 503} and 503 in codes and 200 in codes
    assert all(int(r.headers["retry-after"]) >= 1 for r in rs if r.status_code == 503)


# ------------------------------------------------------------------------------------------ controller
def test_controller_moves_down_under_load_holds_in_band_and_returns(policies):
    folder, _ = policies["cascade"]
    service = PolicyService(load_policy(folder), ServeConfig())
    n = len(service.curve)
    service.set_knob({"point": n - 1})
    ctl = LatencyController(service, ControllerConfig(target_p99_ms=10, hold=2, cooldown=0, max_loss=1.0, window_s=60))
    for _ in range(20):
        service.stats.add_request(0.050, 1)  # 50 ms: above the target
    moves = [ctl.tick() for _ in range(n + 2)]
    assert moves[0] == -1 and service.point == 0 and service.knob_state()["accuracy_traded"] >= 0
    assert service.curve.cost[0] < service.curve.cost[n - 1]
    service.stats = type(service.stats)(service.paths, 60)
    for _ in range(20):
        service.stats.add_request(0.008, 1)  # 8 ms: inside the band (between 0.6 and 1 x target)
    assert [ctl.tick() for _ in range(4)] == [0, 0, 0, 0]
    service.stats = type(service.stats)(service.paths, 60)
    for _ in range(20):
        service.stats.add_request(0.001, 1)  # calm: back up, never past the user's point
    for _ in range(4 * n):
        ctl.tick()
    assert service.point == service.user_point == n - 1
    ctl.set_enabled(False)
    service.stats.add_request(1.0, 1)
    assert ctl.tick() == 0 and service.point == n - 1


def test_controller_never_trades_more_than_max_loss(policies):
    folder, _ = policies["cascade"]
    service = PolicyService(load_policy(folder), ServeConfig())
    service.set_knob({"point": len(service.curve) - 1})
    ctl = LatencyController(service, ControllerConfig(target_p99_ms=1, cooldown=0, max_loss=0.0, window_s=60))
    service.stats.add_request(1.0, 1)
    for _ in range(10):
        ctl.tick()
    c = service.curve
    assert c.accuracy[service.point] >= c.accuracy[service.user_point] - 1e-12
    assert service.knob_state()["accuracy_traded"] <= 1e-12


def test_settings_are_checked():
    from dyninfer.errors import ConfigError

    for bad in (dict(max_batch=0), dict(max_queue=4, max_batch=8), dict(max_wait_ms=-1), dict(max_inputs=1.5)):
        with pytest.raises(ConfigError):
            ServeConfig(**bad)
    with pytest.raises(ConfigError):
        ControllerConfig(target_p99_ms=0)


def test_npy_batches_answer_as_json_batches(served):
    client, service, prep = served
    x = prep.data.test.x[:33]
    buf = io.BytesIO()
    np.save(buf, x.numpy())
    r = client.post("/v1/predict", content=buf.getvalue(), headers={"content-type": "application/x-npy"})
    j = client.post("/v1/predict", json={"inputs": x.tolist()})
    assert r.status_code == 200 and [p["class"] for p in r.json()["predictions"]] == [p["class"] for p in
                                                                                      j.json()["predictions"]]
    bad = client.post("/v1/predict", content=b"\x93NUMPY garbage", headers={"content-type": "application/x-npy"})
    assert bad.status_code == 422 and ".npy" in bad.json()["error"]
    buf = io.BytesIO()
    np.save(buf, np.array([["a"]]))
    assert client.post("/v1/predict", content=buf.getvalue(),
                       headers={"content-type": "application/x-npy"}).status_code == 422


def test_serve_command_refuses_missing_policies_and_bad_settings(policies, tmp_path, capsys):
    from dyninfer.cli import main

    assert main(["serve", str(tmp_path / "nothing")]) == 2
    assert "no saved policy" in capsys.readouterr().err
    folder, _ = policies["cascade"]
    assert main(["serve", str(folder), "--max-batch", "0"]) == 2
    assert "max_batch must be an integer in [1, inf]" in capsys.readouterr().err
    assert main(["serve", str(folder), "--slo-p99-ms", "-1"]) == 2
    assert "target_p99_ms" in capsys.readouterr().err


def test_a_failing_batch_answers_its_requests_and_the_batcher_goes_on():
    from dyninfer.result import RuntimeResult

    def run(x):
        n = x.shape[0]
        return RuntimeResult(torch.zeros(n, dtype=torch.long), torch.zeros(n, dtype=torch.long), torch.ones(n),
                             np.ones(n), 0.0, np.zeros(1), np.zeros(1))

    async def main():
        b = Batcher(run, max_batch=8, max_wait_ms=30, max_queue=16)
        mixed = await asyncio.gather(b.submit(torch.zeros(1, 1, 2, 2)), b.submit(torch.zeros(1, 1, 3, 3)),
                                     return_exceptions=True)  # cannot be concatenated into one batch
        after = await b.submit(torch.zeros(2, 1, 2, 2))
        await b.stop()
        return mixed, after

    mixed, after = asyncio.run(main())
    assert all(isinstance(m, RuntimeError) for m in mixed) and len(after) == 2


def test_the_controller_returns_to_the_users_own_knob(policies):
    folder, _ = policies["cascade"]
    service = PolicyService(load_policy(folder), ServeConfig())
    c = service.curve
    off_curve = [float(np.mean([float(c.knobs[-1][0]), float(c.knobs[-2][0])]))]
    if not np.isfinite(off_curve[0]):
        off_curve = [float(c.knobs[-1][0]) + 0.123]
    service.set_knob({"value": off_curve})
    ctl = LatencyController(service, ControllerConfig(target_p99_ms=1, cooldown=0, max_loss=1.0, window_s=60))
    service.stats.add_request(1.0, 1)
    assert ctl.tick() == -1 and service.point < service.user_point
    ctl.set_enabled(False)
    assert list(service.runtime.knob) == off_curve  # the knob the user set, not the nearest point's


def test_a_request_larger_than_the_queue_is_refused_not_retried_forever(policies):
    folder, prep = policies["cascade"]
    service = PolicyService(load_policy(folder), ServeConfig(max_batch=2, max_queue=4))
    with running(create_app(service)) as url, httpx.Client(base_url=url, timeout=30) as c:
        r = c.post("/v1/predict", json={"inputs": prep.data.test.x[:5].tolist()})
        assert r.status_code == 422 and "queues at most 4" in r.json()["error"]
        assert c.post("/v1/predict", json={"inputs": prep.data.test.x[:4].tolist()}).status_code == 200
