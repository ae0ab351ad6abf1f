"""
Conventions every endpoint keeps (catalogue §1): JSON replies, request ids, CORS, rate limits, docs.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from tests.support.api import login, make_account


async def test_unknown_route_is_json_404(client: httpx.AsyncClient) -> None:
    """Unknown paths answer JSON, never HTML (particle-api-js parses every error body)."""
    response = await client.get("/v1/nothing-here")
    assert (404, "application/json") == (response.status_code, response.headers["content-type"])
    assert {"ok": False, "error": "not_found", "error_description": "Unknown route"} == response.json()


async def test_wrong_method_is_json(client: httpx.AsyncClient) -> None:
    """A known path with the wrong method answers JSON 405."""
    response = await client.patch("/v1/users")
    assert (405, False) == (response.status_code, response.json()["ok"])


async def test_request_id_is_minted_or_echoed(client: httpx.AsyncClient) -> None:
    """Every reply carries X-Request-Id; a sane incoming one is echoed, a hostile one replaced."""
    minted = await client.get("/healthz")
    assert 32 == len(minted.headers["x-request-id"])
    echoed = await client.get("/healthz", headers={"X-Request-Id": "abc-123"})
    assert "abc-123" == echoed.headers["x-request-id"]
    hostile = await client.get("/healthz", headers={"X-Request-Id": "x" * 500})
    assert "x" * 500 != hostile.headers["x-request-id"]


async def test_cors_preflight(client: httpx.AsyncClient) -> None:
    """Browsers may call the API from any origin by default."""
    response = await client.options(
        "/v1/user",
        headers={"Origin": "https://console.example.com", "Access-Control-Request-Method": "GET"},
    )
    assert 200 == response.status_code
    assert response.headers["access-control-allow-origin"] in ("*", "https://console.example.com")


async def test_malformed_json_body(client: httpx.AsyncClient) -> None:
    """A broken JSON body is a 400 in the Particle shape."""
    response = await client.post(
        "/v1/users", content=b"{not json", headers={"Content-Type": "application/json"}
    )
    assert (400, False, "invalid_request") == (
        response.status_code,
        response.json()["ok"],
        response.json()["error"],
    )


async def test_openapi_and_docs(client: httpx.AsyncClient) -> None:
    """/openapi.json lists the endpoints and /docs renders them without external assets."""
    spec = (await client.get("/openapi.json")).json()
    assert {"/oauth/token", "/v1/user", "/v1/users", "/v1/access_tokens", "/v1/clients"} <= set(spec["paths"])
    page = await client.get("/docs")
    assert 200 == page.status_code
    assert "/v1/access_tokens/current" in page.text
    assert "cdn" not in page.text.lower()


LIMITED: dict[str, Any] = {
    "rate_limits_enabled": True,
    "rate_limit_all": "1000/minute",
    "rate_limit_account": "3/minute",
    "rate_limit_token": "1000/minute",
}


@pytest.mark.parametrize("settings_overrides", [LIMITED])
async def test_route_rate_limit(client: httpx.AsyncClient) -> None:
    """Past the sign-up limit the API answers 429 with Retry-After, and the refused call changes nothing."""
    statuses = []
    for n in range(4):
        response = await client.post(
            "/v1/users", json={"username": f"u{n}@example.com", "password": "long enough"}
        )
        statuses.append(response.status_code)
    assert [200, 200, 200, 429] == statuses
    assert "rate_limit_exceeded" == response.json()["error"]
    assert int(response.headers["retry-after"]) > 0
    assert 400 == (await login(client, "u3@example.com", "long enough")).status_code


@pytest.mark.parametrize("settings_overrides", [{**LIMITED, "rate_limit_all": "5/minute"}])
async def test_global_rate_limit(client: httpx.AsyncClient) -> None:
    """Every route counts toward the per-IP limit."""
    statuses = [(await client.get("/healthz")).status_code for _ in range(6)]
    assert [200] * 5 + [429] == statuses


@pytest.mark.parametrize("settings_overrides", [{**LIMITED, "login_failure_limit": 3}])
async def test_login_lockout(client: httpx.AsyncClient) -> None:
    """After consecutive failed logins, even the right password is refused for a while (429)."""
    account = await make_account(client, "ada@example.com")
    for _ in range(3):
        assert 400 == (await login(client, account.email, "wrong password")).status_code
    locked = await login(client, account.email, account.password)
    assert (429, "rate_limit_exceeded") == (locked.status_code, locked.json()["error"])


@pytest.mark.parametrize("settings_overrides", [{**LIMITED, "login_failure_limit": 3}])
async def test_success_resets_failure_count(client: httpx.AsyncClient) -> None:
    """Failures must be consecutive: a good login clears the count."""
    account = await make_account(client, "ada@example.com")
    for _ in range(2):
        await login(client, account.email, "wrong password")
    assert 200 == (await login(client, account.email, account.password)).status_code
    for _ in range(2):
        await login(client, account.email, "wrong password")
    assert 200 == (await login(client, account.email, account.password)).status_code
