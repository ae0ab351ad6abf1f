"""
The HTTP server's own limits, through real sockets: a request head and body must arrive in time, and one
address (or everyone together) can hold only so many connections (ADR 0011).

The server is the runtime's app behind uvicorn with ``devicecloud.httpserver``'s protocol on the injected
``FakeClock``, so deadlines pass when the test moves the clock, never by waiting.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

import pytest
from tests.support.api import make_account
from tests.support.clock import FakeClock
from tests.support.devices import wait_until
from tests.support.sse import Served, serve_app, stream

from devicecloud.httpserver import GuardedHttpProtocol, HttpLimits, guarded_protocol
from devicecloud.runtime import Runtime

HEAD = 10.0
BODY = 30.0
LIMITS = HttpLimits(head_timeout=HEAD, body_timeout=BODY, max_connections=8, max_connections_per_ip=3)
PARTIAL_HEAD = b"GET /healthz HTTP/1.1\r\nHost: x\r\n"
REQUEST = PARTIAL_HEAD + b"\r\n"


@pytest.fixture
def protocol(clock: FakeClock) -> type[GuardedHttpProtocol]:
    return guarded_protocol(LIMITS, clock)


@pytest.fixture
async def served(runtime: Runtime, protocol: type[GuardedHttpProtocol]) -> AsyncIterator[Served]:
    # uvicorn's own idle timeout (real time) out of the way: only our deadlines, on the fake clock, close.
    async with serve_app(runtime, http=protocol, ws="none", timeout_keep_alive=3600) as running:
        yield running


async def accepted(protocol: type[GuardedHttpProtocol], count: int) -> None:
    """
    Wait until the server has taken ``count`` connections in (and so armed their head deadlines).
    """

    async def enough() -> bool:
        return protocol.book.total >= count

    await wait_until(enough, timeout=5)


class Raw:
    """
    A plain socket to the server, for what HTTP clients never do (stop halfway, drip bytes).
    """

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def response(self) -> tuple[int, bytes]:
        """
        The next final response (interim ones skipped): its status and body (always with a Content-Length).
        """
        lines = ["HTTP/1.1 100"]
        while lines[0].split()[1] == "100":
            head = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), 5)
            lines = head.decode().split("\r\n")
        headers = dict(line.lower().split(": ", 1) for line in lines[1:] if line)
        body = await asyncio.wait_for(self.reader.readexactly(int(headers["content-length"])), 5)
        return int(lines[0].split()[1]), body

    async def closed_by_server(self) -> bool:
        """
        Whether the server ends the connection (EOF or reset) within 5 s of real time.
        """
        try:
            rest = await asyncio.wait_for(self.reader.read(), 5)
        except ConnectionResetError:
            return True
        except TimeoutError:
            return False
        return b"" == rest

    def close(self) -> None:
        self.writer.close()


@asynccontextmanager
async def connect(served: Served, source: str = "127.0.0.1") -> AsyncIterator[Raw]:
    port = int(served.url.rsplit(":", 1)[1])
    reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
    raw = Raw(reader, writer)
    try:
        yield raw
    finally:
        raw.close()


async def settled(served: Served) -> None:
    """
    Return once the server has read what was already sent: the bytes were in its socket before this request.
    """
    assert 200 == (await served.http.get("/healthz")).status_code


async def test_a_request_head_must_be_complete_within_the_head_timeout(
    served: Served, protocol: type[GuardedHttpProtocol], clock: FakeClock
) -> None:
    """Partial headers get the whole head timeout and not a moment more, however often bytes drip in."""
    async with connect(served) as in_time, connect(served) as dripping:
        await accepted(protocol, 2)
        await in_time.send(PARTIAL_HEAD)
        await dripping.send(b"GET /healthz HTTP/1.1\r\n")
        for _ in range(3):
            clock.advance(HEAD / 4)
            await dripping.send(b"X-Drip: 1\r\n")
            await settled(served)
        clock.advance(HEAD / 4 - 0.1)
        await in_time.send(b"\r\n")
        assert 200 == (await in_time.response())[0]
        clock.advance(0.1)
        assert await dripping.closed_by_server()


async def test_a_silent_connection_is_closed_after_the_head_timeout(
    served: Served, protocol: type[GuardedHttpProtocol], clock: FakeClock
) -> None:
    """A socket that never sends a byte goes too, as does a kept-alive one idle past the deadline."""
    async with connect(served) as silent, connect(served) as kept:
        await accepted(protocol, 2)
        await kept.send(REQUEST)
        assert 200 == (await kept.response())[0]
        clock.advance(HEAD)
        assert await silent.closed_by_server()
        assert await kept.closed_by_server()


async def test_the_head_deadline_counts_from_the_previous_response(served: Served, clock: FakeClock) -> None:
    """On a kept-alive connection each request gets its own head deadline, however long it lives."""
    async with connect(served) as raw:
        for _ in range(4):
            await raw.send(REQUEST)
            assert 200 == (await raw.response())[0]
            clock.advance(HEAD * 0.8)
        await raw.send(REQUEST)
        assert 200 == (await raw.response())[0]


async def test_a_body_must_arrive_within_the_body_timeout(served: Served, clock: FakeClock) -> None:
    """Once the head is in, the body has its own deadline; a body that makes it is answered as usual."""
    ada = await make_account(served.http, "ada@example.com")
    body = json.dumps({"name": "slow"}).encode()
    head = (
        f"POST /v1/devices/events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ada.token}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\nExpect: 100-continue\r\n\r\n"
    ).encode()
    async with connect(served) as in_time, connect(served) as stalled:
        for raw in (in_time, stalled):
            # "100 Continue" says the head is in and the route is reading the body: the body deadline runs.
            await raw.send(head)
            assert b"HTTP/1.1 100 Continue\r\n\r\n" == await raw.reader.readuntil(b"\r\n\r\n")
            await raw.send(body[:4])
        clock.advance(BODY - 0.1)
        await in_time.send(body[4:])
        assert 200 == (await in_time.response())[0]
        clock.advance(0.1)
        assert await stalled.closed_by_server()


async def test_an_event_stream_outlives_the_timeouts(
    served: Served, runtime: Runtime, clock: FakeClock
) -> None:
    """The deadlines cover reading a request, never a response in progress: a stream keeps flowing."""
    ada = await make_account(served.http, "ada@example.com")
    async with stream(served, "/v1/devices/events/slow", ada) as reader:
        clock.advance(HEAD + BODY + 60)
        published = await served.http.post(
            "/v1/devices/events", json={"name": "slow/still-here"}, headers=ada.auth
        )
        assert 200 == published.status_code
        assert "slow/still-here" == (await reader.event())[0]


async def status_of_a_new_request(served: Served, source: str) -> int:
    """
    The status a new connection from ``source`` gets for a plain request (429/503 if it was refused).
    """
    async with connect(served, source) as raw:
        await raw.send(REQUEST)
        return (await raw.response())[0]


async def eventually_served(served: Served, source: str) -> None:
    """
    Wait until a new connection from ``source`` is served (the server sees our close a moment after we close).
    """

    async def ok() -> bool:
        return 200 == await status_of_a_new_request(served, source)

    await wait_until(ok, timeout=5)


async def test_one_address_holds_only_so_many_connections(served: Served) -> None:
    """Past the per-address cap a connection is answered 429 and closed; other addresses are not affected,
    and a closed connection gives its slot back."""
    async with (
        connect(served, "127.0.0.2") as first,
        connect(served, "127.0.0.2"),
        connect(served, "127.0.0.2"),
    ):
        async with connect(served, "127.0.0.2") as over:
            status, body = await over.response()
            assert (429, "rate_limit_exceeded") == (status, json.loads(body)["error"])
            assert await over.closed_by_server()
        assert 200 == await status_of_a_new_request(served, "127.0.0.3")
        first.close()
        await eventually_served(served, "127.0.0.2")


async def test_the_server_holds_only_so_many_connections(served: Served) -> None:
    """Past the global cap a connection is answered 503 in the API's error shape and closed at once."""
    async with AsyncExitStack() as holders:
        raws = [
            await holders.enter_async_context(connect(served, f"127.0.0.{10 + n}"))
            for n in range(LIMITS.max_connections)
        ]
        async with connect(served, "127.0.0.99") as over:
            status, body = await over.response()
            assert 503 == status
            assert {"ok": False, "error": "server_error"}.items() <= json.loads(body).items()
            assert await over.closed_by_server()
        raws[0].close()
        await eventually_served(served, "127.0.0.99")
