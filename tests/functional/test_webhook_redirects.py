"""
Webhook redirects: the hook's credentials and its own headers go to its target's origin only. A redirect to
another origin (scheme, host or port) drops ``Authorization``, ``Cookie``, ``Proxy-Authorization`` and every
header the hook's templates set, as browsers and ``requests`` do; a redirect within the origin keeps them.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from pytest_httpserver import HTTPServer
from tests.support.api import Account, make_account
from tests.support.webhooks import create_hook, outbox_empty, publish, requests_seen

from devicecloud.runtime import Runtime

HOOK_HEADERS = {
    "X-Api-Key": "secret-key",
    "Cookie": "session=secret",
    "Proxy-Authorization": "Basic c2VjcmV0",
}


@pytest.fixture
def elsewhere() -> Iterator[HTTPServer]:
    """
    A second target: another port, so another origin.
    """
    server = HTTPServer()
    server.start()
    try:
        yield server
    finally:
        server.clear()
        server.stop()


@pytest.fixture
async def ada(client: httpx.AsyncClient) -> Account:
    return await make_account(client, "ada@example.com")


@pytest.mark.parametrize("status", [302, 307])
async def test_a_redirect_to_another_origin_drops_credentials_and_hook_headers(
    client: httpx.AsyncClient,
    runtime: Runtime,
    ada: Account,
    httpserver: HTTPServer,
    elsewhere: HTTPServer,
    status: int,
) -> None:
    httpserver.expect_request("/in").respond_with_data(
        "", status=status, headers={"Location": httpserver.url_for("/same")}
    )
    httpserver.expect_request("/same").respond_with_data(
        "", status=status, headers={"Location": elsewhere.url_for("/away")}
    )
    elsewhere.expect_request("/away").respond_with_data("ok")
    await create_hook(
        client,
        ada,
        event="r",
        url=httpserver.url_for("/in"),
        auth={"username": "user", "password": "pass"},
        headers=HOOK_HEADERS,
    )
    await publish(client, ada, "r", "v")
    (first, same) = await requests_seen(httpserver, 2)
    (away,) = await requests_seen(elsewhere, 1)
    await outbox_empty(runtime)
    for request in (first, same):  # the hook's own origin gets everything the hook set
        assert "Authorization" in request.headers
        assert {name: request.headers.get(name) for name in HOOK_HEADERS} == HOOK_HEADERS
    assert [] == [name for name in (*HOOK_HEADERS, "Authorization") if name in away.headers]
    assert away.headers["User-Agent"].startswith("ParticleBot/")  # the request itself goes on
