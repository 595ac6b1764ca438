"""API fuzzing against the service's own OpenAPI schema (schemathesis): no 5xx for any generated request,
and the server still healthy and answering afterwards."""

from __future__ import annotations

import pytest

pytest.importorskip("fastapi")
schemathesis = pytest.importorskip("schemathesis")
httpx = pytest.importorskip("httpx")
from hypothesis import HealthCheck, given, settings  # noqa: E402

from dyninfer.methods import create_method  # noqa: E402
from dyninfer.policy import load_policy, save_policy  # noqa: E402
from dyninfer.serve.app import create_app, running  # noqa: E402
from dyninfer.serve.controller import ControllerConfig  # noqa: E402
from dyninfer.serve.service import PolicyService, ServeConfig  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def api_url(digits_prepared, tmp_path_factory):
    m = create_method("cascade", scores=("energy",), tolerance=0.02)
    m.fit(digits_prepared.calib)
    folder = tmp_path_factory.mktemp("fuzz") / "policy"
    save_policy(folder, m, digits_prepared.paths, class_names=digits_prepared.data.spec.class_names)
    service = PolicyService(load_policy(folder), ServeConfig(max_body_bytes=256_000))
    with running(create_app(service, slo=ControllerConfig(target_p99_ms=100))) as url:
        yield url


def test_no_request_gets_a_5xx(api_url):
    """Every operation of the schema, 40 generated requests each (bodies, parameters, content types)."""
    schema = schemathesis.openapi.from_url(api_url + "/openapi.json")
    seen = 0
    for result in schema.get_all_operations():
        operation = result.ok()

        @given(case=operation.as_strategy())
        @settings(max_examples=40, deadline=None, database=None, suppress_health_check=list(HealthCheck))
        def check(case):
            response = case.call(base_url=api_url, timeout=30)
            assert response.status_code < 500, (case.method, case.path, response.status_code, response.text[:300])
            if response.status_code >= 400:
                assert "error" in response.json()

        check()
        seen += 1
    assert seen >= 8  # every endpoint of the schema was fuzzed


def test_still_healthy_after_fuzzing(api_url, digits_prepared):
    with httpx.Client(base_url=api_url, timeout=30) as c:
        assert c.get("/healthz").status_code == 200 and c.get("/readyz").json()["ready"]
        r = c.post("/v1/predict", json={"inputs": digits_prepared.data.test.x[:3].tolist()})
        assert r.status_code == 200 and len(r.json()["predictions"]) == 3
