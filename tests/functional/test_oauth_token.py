"""
``POST /oauth/token``: the grants and every error row of catalogue §2.1.
"""

from __future__ import annotations

import re

import httpx
import pytest
from tests.support.api import login, make_account
from tests.support.clock import FakeClock

from devicecloud.runtime import Runtime

HEX40 = re.compile(r"^[0-9a-f]{40}$")
EMAIL = "ada@example.com"
PASSWORD = "correct horse battery"


@pytest.fixture
async def ada(client: httpx.AsyncClient) -> None:
    await make_account(client, EMAIL, PASSWORD)


async def test_password_grant_returns_the_documented_body(client: httpx.AsyncClient, ada: None) -> None:
    """The acceptance line: bearer type, 40-hex access and refresh tokens, 90-day expires_in."""
    response = await login(client, EMAIL, PASSWORD)
    body = response.json()
    assert 200 == response.status_code
    assert ["token_type", "access_token", "expires_in", "refresh_token"] == list(body)
    assert "bearer" == body["token_type"]
    assert HEX40.match(body["access_token"])
    assert HEX40.match(body["refresh_token"])
    assert 7776000 == body["expires_in"]
    assert "no-store" == response.headers["cache-control"]
    assert "no-cache" == response.headers["pragma"]


async def test_client_credentials_in_form_fields_work_like_basic(
    client: httpx.AsyncClient, ada: None
) -> None:
    """particle-api-js sends client_id/client_secret in the form instead of HTTP Basic."""
    data = {
        "grant_type": "password",
        "username": EMAIL,
        "password": PASSWORD,
        "client_id": "particle-api",
        "client_secret": "particle-api",
        "expires_in": "3600",
    }
    response = await client.post("/oauth/token", data=data)
    assert 200 == response.status_code
    assert 3600 == response.json()["expires_in"]


async def test_username_is_case_insensitive(client: httpx.AsyncClient, ada: None) -> None:
    """Emails differing only in case name the same account."""
    assert 200 == (await login(client, EMAIL.upper(), PASSWORD)).status_code


async def test_expires_in_zero_never_expires_and_has_no_refresh_token(
    client: httpx.AsyncClient, ada: None, clock: FakeClock
) -> None:
    """expires_in=0 gives a token without expires_in or refresh_token that still works years later."""
    response = await login(client, EMAIL, PASSWORD, expires_in="0")
    body = response.json()
    assert {"token_type", "access_token"} == set(body)
    clock.advance(10 * 365 * 86400)
    me = await client.get("/v1/user", headers={"Authorization": f"Bearer {body['access_token']}"})
    assert 200 == me.status_code


async def test_expires_at_sets_the_lifetime(client: httpx.AsyncClient, ada: None, clock: FakeClock) -> None:
    """expires_at (ISO-8601) is turned into expires_in from the server's clock."""
    response = await login(client, EMAIL, PASSWORD, expires_at="2026-01-01T13:00:00Z")
    assert 3600 == response.json()["expires_in"]


async def test_expired_token_is_refused(client: httpx.AsyncClient, ada: None, clock: FakeClock) -> None:
    """Past its lifetime a token gets 401 invalid_token 'has expired', and never works again."""
    token = (await login(client, EMAIL, PASSWORD, expires_in="60")).json()["access_token"]
    headers = {"Authorization": f"Bearer {token}"}
    assert 200 == (await client.get("/v1/user", headers=headers)).status_code
    clock.advance(61)
    response = await client.get("/v1/user", headers=headers)
    assert 401 == response.status_code
    assert {
        "error": "invalid_token",
        "error_description": "The access token provided has expired.",
    } == response.json()


async def test_refresh_grant_rotates_both_tokens(client: httpx.AsyncClient, ada: None) -> None:
    """A refresh token yields a new pair; the old access and refresh tokens stop working."""
    first = (await login(client, EMAIL, PASSWORD)).json()
    response = await client.post(
        "/oauth/token",
        data={"grant_type": "refresh_token", "refresh_token": first["refresh_token"]},
        auth=("particle", "particle"),
    )
    second = response.json()
    assert 200 == response.status_code
    assert first["access_token"] != second["access_token"]
    old = await client.get("/v1/user", headers={"Authorization": f"Bearer {first['access_token']}"})
    assert 401 == old.status_code
    new = await client.get("/v1/user", headers={"Authorization": f"Bearer {second['access_token']}"})
    assert 200 == new.status_code
    again = await client.post(
        "/oauth/token",
        data={"grant_type": "refresh_token", "refresh_token": first["refresh_token"]},
        auth=("particle", "particle"),
    )
    assert (400, "invalid_grant") == (again.status_code, again.json()["error"])


async def test_refresh_token_expires(client: httpx.AsyncClient, ada: None, clock: FakeClock) -> None:
    """Refresh tokens live 14 days past the access token's expiry."""
    first = (await login(client, EMAIL, PASSWORD, expires_in="60")).json()
    clock.advance(60 + 1_209_600 + 1)
    response = await client.post(
        "/oauth/token",
        data={"grant_type": "refresh_token", "refresh_token": first["refresh_token"]},
        auth=("particle", "particle"),
    )
    assert 400 == response.status_code
    assert {"error": "invalid_grant", "error_description": "Refresh token has expired"} == response.json()


async def test_refresh_token_of_another_client_is_refused(client: httpx.AsyncClient, ada: None) -> None:
    """A refresh token only works for the client it was issued to."""
    first = (await login(client, EMAIL, PASSWORD)).json()
    response = await client.post(
        "/oauth/token",
        data={"grant_type": "refresh_token", "refresh_token": first["refresh_token"]},
        auth=("particle-cli", "particle-cli"),
    )
    assert {"error": "invalid_grant", "error_description": "Invalid refresh token"} == response.json()


ERROR_ROWS = [
    pytest.param(
        {"json": {"grant_type": "password", "username": EMAIL, "password": PASSWORD}},
        400,
        "invalid_request",
        "Method must be POST with application/x-www-form-urlencoded encoding",
        id="json-body",
    ),
    pytest.param(
        {"data": {"username": EMAIL, "password": PASSWORD}},
        400,
        "invalid_request",
        "Invalid or missing grant_type parameter",
        id="no-grant-type",
    ),
    pytest.param(
        {"data": {"grant_type": "authorization_magic"}},
        400,
        "invalid_request",
        "Invalid grant_type parameter or parameter missing",
        id="unknown-grant-type",
    ),
    pytest.param(
        {"data": {"grant_type": "password", "client_id": "x!", "client_secret": "s"}, "auth": None},
        400,
        "invalid_client",
        "Invalid or missing client_id parameter",
        id="bad-client-id",
    ),
    pytest.param(
        {"data": {"grant_type": "password"}, "auth": None},
        400,
        "invalid_client",
        "Invalid or missing client_id parameter",
        id="no-client-id",
    ),
    pytest.param(
        {"data": {"grant_type": "password", "client_id": "particle"}, "auth": None},
        400,
        "invalid_client",
        "Missing client_secret parameter",
        id="no-client-secret",
    ),
    pytest.param(
        {
            "data": {"grant_type": "password", "username": EMAIL, "password": PASSWORD},
            "auth": ("myapp-1234", "no"),
        },
        400,
        "invalid_client",
        "Client credentials are invalid",
        id="unknown-client",
    ),
    pytest.param(
        {"data": {"grant_type": "password", "username": EMAIL}},
        400,
        "invalid_client",
        'Missing parameters. "username" and "password" are required',
        id="no-password",
    ),
    pytest.param(
        {"data": {"grant_type": "password", "username": EMAIL, "password": "wrong password"}},
        400,
        "invalid_grant",
        "User credentials are invalid",
        id="wrong-password",
    ),
    pytest.param(
        {"data": {"grant_type": "password", "username": "nobody@example.com", "password": PASSWORD}},
        400,
        "invalid_grant",
        "User credentials are invalid",
        id="unknown-user",
    ),
    pytest.param(
        {"data": {"grant_type": "refresh_token"}},
        400,
        "invalid_request",
        'No "refresh_token" parameter',
        id="refresh-missing",
    ),
    pytest.param(
        {"data": {"grant_type": "refresh_token", "refresh_token": "0" * 40}},
        400,
        "invalid_grant",
        "Invalid refresh token",
        id="refresh-unknown",
    ),
    pytest.param(
        {"data": {"grant_type": "client_credentials"}},
        400,
        "invalid_grant",
        "Client credentials are invalid",
        id="client-credentials-without-owner",
    ),
    pytest.param(
        {"data": {"grant_type": "urn:custom:mfa-otp", "otp": "123456"}},
        400,
        "invalid_request",
        "You must provide otp and mfa token.",
        id="mfa-missing-token",
    ),
]


@pytest.mark.parametrize(("request_kwargs", "status", "error", "description"), ERROR_ROWS)
async def test_error_rows(
    client: httpx.AsyncClient,
    ada: None,
    request_kwargs: dict[str, object],
    status: int,
    error: str,
    description: str,
) -> None:
    """Each documented failure answers its status and exact OAuth body, with the no-store headers."""
    kwargs = {"auth": ("particle", "particle"), **request_kwargs}
    if kwargs["auth"] is None:
        del kwargs["auth"]
    response = await client.post("/oauth/token", **kwargs)  # type: ignore[arg-type]
    assert (status, {"error": error, "error_description": description}) == (
        response.status_code,
        response.json(),
    )
    assert "no-store" == response.headers["cache-control"]


async def test_invalid_client_announces_basic_auth(client: httpx.AsyncClient) -> None:
    """invalid_client replies carry WWW-Authenticate: Basic realm="Service"."""
    response = await client.post("/oauth/token", data={"grant_type": "password"})
    assert 'Basic realm="Service"' == response.headers["www-authenticate"]


async def test_get_on_token_endpoint_is_an_oauth_error(client: httpx.AsyncClient) -> None:
    """Only POST is accepted, with the OAuth server's wording."""
    response = await client.get("/oauth/token")
    assert 400 == response.status_code
    assert "invalid_request" == response.json()["error"]


async def test_pyparticleio_login_alias(client: httpx.AsyncClient, ada: None) -> None:
    """pyparticleio posts to /v1/devices/oauth/token; the alias answers like /oauth/token."""
    response = await client.post(
        "/v1/devices/oauth/token",
        data={"grant_type": "password", "username": EMAIL, "password": PASSWORD},
        auth=("particle", "particle"),
    )
    assert 200 == response.status_code
    assert HEX40.match(response.json()["access_token"])


async def test_tokens_are_stored_only_as_hashes(
    client: httpx.AsyncClient, ada: None, runtime: Runtime
) -> None:
    """Neither the access nor the refresh token appears anywhere in the database."""
    body = (await login(client, EMAIL, PASSWORD)).json()
    from sqlalchemy import text

    async with runtime.store.engine.connect() as conn:
        rows = (await conn.execute(text("SELECT * FROM access_tokens"))).all()
    dumped = repr(rows)
    assert body["access_token"] not in dumped
    assert body["refresh_token"] not in dumped
    assert body["access_token"][:8] in dumped
