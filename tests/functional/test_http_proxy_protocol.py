"""
The HTTP port behind a load balancer that sends the PROXY protocol (decision 0031): the client address in the
header is the connection's for the per-address connection cap and the request's for the per-IP protections
(login lockout here); a malformed or late header from a trusted proxy closes that connection, unanswered.

Real sockets to uvicorn with ``devicecloud.httpserver``'s protocol on the injected ``FakeClock``; the proxy
is a socket bound to 127.0.0.2 writing the header itself.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any
from urllib.parse import urlencode

import pytest
from tests.support.api import make_account
from tests.support.clock import FakeClock
from tests.support.devices import wait_until
from tests.support.sse import Served, serve_app
from tests.support.tcp_proxy import header_v1, header_v2

from devicecloud.httpserver import GuardedHttpProtocol, HttpLimits, guarded_protocol
from devicecloud.runtime import Runtime

PROXY = "127.0.0.2"
LIMITS = HttpLimits(
    head_timeout=10.0,
    body_timeout=30.0,
    max_connections=20,
    max_connections_per_ip=3,
    proxy_protocol_from=(PROXY,),
    proxy_header_timeout=5.0,
)
REQUEST = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
ALICE, BOB = ("198.51.100.1", 40001), ("198.51.100.2", 40002)
HERE = ("10.0.0.1", 8080)


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    return {
        "rate_limits_enabled": True,
        "rate_limit_all": "1000/minute",
        "rate_limit_token": "1000/minute",
        "rate_limit_account": "1000/minute",
        "login_failure_limit": 2,
        "login_account_failure_limit": 50,
    }


@pytest.fixture
def protocol(clock: FakeClock) -> type[GuardedHttpProtocol]:
    return guarded_protocol(LIMITS, clock)


@pytest.fixture
async def served(runtime: Runtime, protocol: type[GuardedHttpProtocol]) -> AsyncIterator[Served]:
    async with serve_app(runtime, http=protocol, ws="none", timeout_keep_alive=3600) as running:
        yield running


@asynccontextmanager
async def connect(
    served: Served, source: str, header: bytes = b""
) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    port = int(served.url.rsplit(":", 1)[1])
    reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
    writer.write(header)
    try:
        yield reader, writer
    finally:
        writer.close()


async def response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    lines = head.decode().split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in lines[1:] if line)
    body = await asyncio.wait_for(reader.readexactly(int(headers["content-length"])), 5)
    return int(lines[0].split()[1]), body


async def request(served: Served, source: str, header: bytes, data: bytes = REQUEST) -> tuple[int, bytes]:
    async with connect(served, source, header) as (reader, writer):
        writer.write(data)
        return await response(reader)


async def closed_unanswered(reader: asyncio.StreamReader) -> bool:
    try:
        rest = await asyncio.wait_for(reader.read(), 5)
    except ConnectionResetError:
        return True
    return b"" == rest


@pytest.mark.parametrize("make", [header_v1, header_v2], ids=["v1", "v2"])
async def test_the_connection_cap_counts_the_client_the_header_names(served: Served, make: Any) -> None:
    async with AsyncExitStack() as held:
        for _ in range(LIMITS.max_connections_per_ip):
            reader, writer = await held.enter_async_context(connect(served, PROXY, make(ALICE, HERE)))
            writer.write(REQUEST)
            assert 200 == (await response(reader))[0]
        status, body = await request(served, PROXY, make(ALICE, HERE))
        assert (429, "rate_limit_exceeded") == (status, json.loads(body)["error"])
        assert 200 == (await request(served, PROXY, make(BOB, HERE)))[0]  # same proxy, another client


async def test_login_protection_locks_out_the_client_not_the_proxy(served: Served) -> None:
    ada = await make_account(served.http, "ada@example.com")
    form = urlencode({"grant_type": "password", "username": ada.email, "password": "wrong"}).encode()
    login = (
        b"POST /oauth/token HTTP/1.1\r\nHost: x\r\nAuthorization: Basic cGFydGljbGU6cGFydGljbGU=\r\n"
        b"Content-Type: application/x-www-form-urlencoded\r\nContent-Length: "
        + str(len(form)).encode()
        + b"\r\n\r\n"
        + form
    )
    for _ in range(2):
        assert 400 == (await request(served, PROXY, header_v2(ALICE, HERE), login))[0]
    assert 429 == (await request(served, PROXY, header_v2(ALICE, HERE), login))[0]
    assert 400 == (await request(served, PROXY, header_v2(BOB, HERE), login))[0]


@pytest.mark.parametrize(
    "header",
    [
        pytest.param(b"PROXY TCP4 198.51.100.1 10.0.0.1 99999 80\r\n", id="v1-bad-port"),
        pytest.param(bytes.fromhex("0d0a0d0a000d0a515549540a2311000c") + bytes(12), id="v2-bad-command"),
        pytest.param(b"", id="no-header"),  # the request line itself is not a header
    ],
)
async def test_a_malformed_header_from_the_proxy_closes_that_connection_only(
    served: Served, runtime: Runtime, protocol: type[GuardedHttpProtocol], header: bytes
) -> None:
    runtime.metrics.watch_http(protocol.book)  # what `devicecloud serve` does with its server's book
    async with connect(served, PROXY, header + REQUEST) as (reader, _):
        assert await closed_unanswered(reader)
    assert 1 == protocol.book.proxy_headers_refused
    exposed = (await served.http.get("/metrics")).text
    assert 'devicecloud_proxy_headers_refused_total{port="http"} 1.0' in exposed
    assert 'devicecloud_proxy_headers_refused_total{port="device"} 0.0' in exposed
    assert "devicecloud_http_connections 1.0" in exposed  # the scrape's own
    assert 200 == (await request(served, PROXY, header_v1(ALICE, HERE)))[0]
    assert 200 == (await served.http.get("/healthz")).status_code  # 127.0.0.1: not a proxy, no header


async def test_a_late_header_closes_the_connection_at_the_timeout(
    served: Served, protocol: type[GuardedHttpProtocol], clock: FakeClock
) -> None:
    idle = clock.pending_timers()
    async with connect(served, PROXY, b"PROXY TCP4 198.51") as (reader, _):

        async def armed() -> bool:
            return clock.pending_timers() > idle

        await wait_until(armed, timeout=5)
        clock.advance(4.9)
        assert 0 == protocol.book.proxy_headers_refused
        clock.advance(0.2)
        assert await closed_unanswered(reader)
    assert (1, 0) == (protocol.book.proxy_headers_refused, protocol.book.total)
