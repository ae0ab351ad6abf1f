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


class Bearer:
    """
    A token of the server's account over one kept-alive client: the same token while it still works, a new
    login only after a fuzzed request revoked it (a login per example, an argon2 hash and a fresh TLS
    context each, made the whole run outgrow its timeout).
    """

    def __init__(self, server: LiveServer) -> None:
        self._server = server
        self._http = httpx.Client(base_url=server.url)
        self._token: str | None = None

    def token(self) -> str:
        if self._token is not None:
            check = self._http.get("/v1/user", headers={"Authorization": f"Bearer {self._token}"})
            if check.status_code == 200:
                return self._token
        response = self._http.post(
            "/oauth/token",
            data={
                "grant_type": "password",
                "username": self._server.email,
                "password": self._server.password,
                "expires_in": "0",
            },
            auth=("particle", "particle"),
        )
        self._token = str(response.json()["access_token"])
        return self._token

    def close(self) -> None:
        self._http.close()


@pytest.fixture(scope="module")
def bearer(server: LiveServer) -> Iterator[Bearer]:
    tokens = Bearer(server)
    yield tokens
    tokens.close()


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
def test_no_server_errors(case: schemathesis.Case, server: LiveServer, bearer: Bearer) -> None:
    """Any generated request gets a 2xx/4xx JSON reply, never a 5xx."""
    headers = {"Authorization": f"Bearer {bearer.token()}"} if case.path != "/oauth/token" else None
    response = case.call(base_url=server.url, headers=headers, timeout=10)
    assert response.status_code < 500, (case.as_curl_command(), response.text)
    if response.status_code != 204 and case.path != "/docs":
        content_type = response.headers["content-type"]
        content_type = content_type[0] if isinstance(content_type, list) else content_type
        assert content_type.startswith("application/json"), response.text
