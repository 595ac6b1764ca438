"""The Ray Serve deployment on a local Ray instance that the test starts and stops: the same answers as the
in-process runtime at the same knob, the knob API, paths multiplexed onto workers whose path cache stays within
its byte budget (measured)."""

from __future__ import annotations

import socket

import pytest

pytest.importorskip("fastapi")
ray = pytest.importorskip("ray")
pytest.importorskip("ray.serve")
httpx = pytest.importorskip("httpx")

from dyninfer.methods import create_method  # noqa: E402
from dyninfer.policy import load_policy, save_policy  # noqa: E402
from dyninfer.runtime.pool import state_bytes  # noqa: E402
from dyninfer.serve.service import ServeConfig  # noqa: E402


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ray_served(digits_prepared, tmp_path_factory):
    from ray import serve

    from dyninfer.serve.ray_app import build_app

    m = create_method("cascade", scores=("energy",), tolerance=0.02).fit(digits_prepared.calib)
    folder = tmp_path_factory.mktemp("ray") / "policy"
    save_policy(folder, m, digits_prepared.paths, class_names=digits_prepared.data.spec.class_names)
    sizes = {n: state_bytes(mod.state_dict()) for n, mod in digits_prepared.paths.models.items()}
    budget = max(sizes.values())  # room for one path at a time: every switch of path evicts
    port = _free_port()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(build_app(str(folder), config=ServeConfig(max_batch=32), cache_bytes=budget), route_prefix="/",
                  name="dyninfer-test")
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
            yield client, folder, budget, serve
    finally:
        serve.shutdown()
        ray.shutdown()


def test_ray_answers_equal_the_in_process_runtime_and_caches_stay_in_budget(ray_served, digits_prepared):
    client, folder, budget, serve = ray_served
    x = digits_prepared.data.test.x[:48]
    runtime = load_policy(folder).runtime()
    curve = client.get("/v1/curve").json()
    for point in (len(curve["accuracy"]) - 1, 0, None):  # dearest, cheapest, fitted
        body = {"fitted": True} if point is None else {"point": point}
        knob = client.put("/v1/knob", json=body).json()["knob"]
        runtime.knob = [float(v) for v in knob]  # float("inf") reads the service's "inf"
        ref = runtime(x)
        got = []
        for i in range(0, 48, 16):
            r = client.post("/v1/predict", json={"inputs": x[i:i + 16].tolist()})
            assert r.status_code == 200, r.text
            got += r.json()["predictions"]
        assert [g["class"] for g in got] == ref.pred.tolist()
        assert [g["path_index"] for g in got] == ref.path.tolist()
    stats = serve.get_deployment_handle("dyninfer-paths", app_name="dyninfer-test").stats.remote().result()
    assert stats["budget_bytes"] == budget
    assert 0 < stats["max_resident_bytes"] <= budget and stats["peak_bytes"] <= budget
    assert stats["misses"] >= 2  # both paths ran through the one-path cache
    bad = client.post("/v1/predict", json={"inputs": [[1, 2]]})
    assert bad.status_code == 422 and "error" in bad.json()
    assert client.get("/healthz").status_code == 200 and client.get("/readyz").status_code == 200
