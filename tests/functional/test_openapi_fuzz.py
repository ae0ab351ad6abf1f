"""
Property-based fuzzing of every documented endpoint (schemathesis over /openapi.json): no input, however odd,
makes the server answer 5xx. It runs against a real server process so that every request takes the same
path as a client's.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from tests.support.server import LiveServer, live_server

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    data: Path = tmp_path_factory.mktemp("fuzz")
    with live_server(data, DEVICECLOUD_RATE_LIMITS_ENABLED="false") as running:
        yield running


def bearer(server: LiveServer) -> str:
    response = httpx.post(
        f"{server.url}/oauth/token",
        data={
            "grant_type": "password",
            "username": server.email,
            "password": server.password,
            "expires_in": "0",
        },
        auth=("particle", "particle"),
    )
    return str(response.json()["access_token"])


# Event streams (GET …/events…) never end, so the fuzzer cannot read them (test_events_api.py covers them);
# publishing (POST /v1/devices/events) is fuzzed like everything else.
schema = schemathesis.pytest.from_fixture("api_schema").exclude(
    method="GET", path_regex=r"/events(/\{prefix\})?$"
)


@pytest.fixture(scope="module")
def api_schema(server: LiveServer) -> schemathesis.BaseSchema:
    return schemathesis.openapi.from_url(f"{server.url}/openapi.json")


@schema.parametrize()
@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_server_errors(case: schemathesis.Case, server: LiveServer) -> None:
    """Any generated request gets a 2xx/4xx JSON reply, never a 5xx."""
    headers = {"Authorization": f"Bearer {bearer(server)}"} if case.path != "/oauth/token" else None
    response = case.call(base_url=server.url, headers=headers, timeout=10)
    assert response.status_code < 500, (case.as_curl_command(), response.text)
    if response.status_code != 204 and case.path != "/docs":
        content_type = response.headers["content-type"]
        content_type = content_type[0] if isinstance(content_type, list) else content_type
        assert content_type.startswith("application/json"), response.text
