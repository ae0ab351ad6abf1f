"""
The events API over a real HTTP server (uvicorn on a free port): streams are read as clients read them, so
keep-alives, disconnects and flow control are the real thing. httpx's ASGI transport would buffer a stream
until it ends, which an event stream never does.
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from tests.support.api import Account, login, make_account
from tests.support.clock import FakeClock
from tests.support.devices import connect_device, wait_until
from tests.support.sse import Reader, Served, flag, serve_app, stream

from devicecloud.api.middleware import RateLimits
from devicecloud.runtime import Runtime
from devicecloud.settings import Settings

# On the injected clock: keep-alives come only when a test moves it.
KEEPALIVE = 9.0
# The promise: a stream ends within this many seconds of its token going.
TOKEN_DEADLINE = 5.0
MAX_STREAMS = 4


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    # A tiny queue bound makes the slow-client test quick; healthy streams never come near it.
    # Webhook delivery off: its bus subscription would count in the subscription figures checked here.
    return {
        "sse_keepalive": KEEPALIVE,
        "max_streams_per_ip": MAX_STREAMS,
        "event_queue_bound": 20,
        "webhooks_enabled": False,
    }


@pytest.fixture
async def served(runtime: Runtime) -> AsyncIterator[Served]:
    """
    The runtime's app behind uvicorn on a free port, and an httpx client on it.
    """
    async with serve_app(runtime) as running:
        yield running


async def publish(client: httpx.AsyncClient, account: Account, name: str, **fields: Any) -> None:
    reply = await client.post("/v1/devices/events", json={"name": name, **fields}, headers=account.auth)
    assert (200, {"ok": True}) == (reply.status_code, reply.json())


async def user_of(runtime: Runtime, account: Account) -> Any:
    return await runtime.accounts.get_by_username(account.email)


# ---------------------------------------------------------------- streams


async def test_wire_format(client: httpx.AsyncClient, served: Served, runtime: Runtime) -> None:
    """`:ok` first, headers as catalogued, then `event:` and a one-line `data:` JSON; nothing else between."""
    ada = await make_account(client, "ada@example.com")
    async with served.http.stream("GET", "/v1/devices/events", headers=ada.auth) as response:
        assert 200 == response.status_code
        assert ("text/event-stream", "no-cache", "no") == (
            response.headers["content-type"],
            response.headers["cache-control"],
            response.headers["x-accel-buffering"],
        )
        reader = Reader(response)
        assert b":ok" == await reader.block()
        await publish(client, ada, "temperature", data="25.34\nline two", ttl=30)
        block = await reader.block()
        while block == b":":
            block = await reader.block()
    published_at = runtime.clock.now().isoformat(timespec="milliseconds").replace("+00:00", "Z")
    data = json.dumps("25.34\nline two")
    expected = (
        f'event: temperature\ndata: {{"data":{data},"ttl":30,"published_at":"{published_at}","coreid":"api"}}'
    )
    assert expected.encode() == block
    assert reader.raw.startswith(b":ok\n\n")
    between = reader.raw.removeprefix(b":ok\n\n").split(block)[0]
    assert b"" == between.replace(b":\n\n", b"")


async def test_prefix_filter(client: httpx.AsyncClient, served: Served) -> None:
    """A prefix is a plain, case-sensitive string prefix of the name, slashes included, raw or URL-encoded."""
    ada = await make_account(client, "ada@example.com")
    async with (
        stream(served, "/v1/events/temp", ada) as public,
        stream(served, "/v1/devices/events/spark%2Fstat", ada) as encoded,
        stream(served, "/v1/devices/events/spark/stat", ada, query_token=True, nonce="123.4") as raw,
    ):
        for name in ("humidity", "tem", "Temperature", "temperature", "temp", "spark/status", "spark/x"):
            await publish(client, ada, name)
        await publish(client, ada, "temp/end")
        await publish(client, ada, "spark/stat/end")
        assert ["temperature", "temp", "temp/end"] == await public.names(3)
        assert ["spark/status", "spark/stat/end"] == await encoded.names(2)
        assert ["spark/status", "spark/stat/end"] == await raw.names(2)


async def test_visibility(client: httpx.AsyncClient, served: Served) -> None:
    """B gets A's public events on /v1/events, not A's private ones nor any of A's on /v1/devices/events."""
    ada = await make_account(client, "ada@example.com")
    bob = await make_account(client, "bob@example.com")
    async with (
        stream(served, "/v1/events/vis", bob) as bob_all,
        stream(served, "/v1/devices/events/vis", bob) as bob_mine,
        stream(served, "/v1/devices/events/vis", ada) as ada_mine,
    ):
        await publish(client, ada, "vis/ada-private", private=True)
        await publish(client, ada, "vis/ada-public", private=False)
        await publish(client, bob, "vis/bob-private", private="true")
        assert ["vis/ada-public", "vis/bob-private"] == await bob_all.names(2)
        assert ["vis/bob-private"] == await bob_mine.names(1)
        assert ["vis/ada-private", "vis/ada-public"] == await ada_mine.names(2)


async def test_order_is_kept(client: httpx.AsyncClient, served: Served) -> None:
    """200 quick publishes arrive in publish order."""
    ada = await make_account(client, "ada@example.com")
    received: list[str] = []
    async with stream(served, "/v1/devices/events/seq", ada) as reader:
        # In bursts of half the queue bound: the in-process client can publish without ever yielding to the
        # loop, and 20 events pending would (rightly) drop the stream as too slow.
        for burst in range(0, 200, 10):
            for number in range(burst, burst + 10):
                await publish(client, ada, "seq", data=str(number))
            received += [(await reader.event())[1]["data"] for _ in range(10)]
    assert [str(n) for n in range(200)] == received


async def test_no_prefix_on_public_stream(client: httpx.AsyncClient, served: Served) -> None:
    """/v1/events without a prefix is refused as catalogued; the stream counter is not left behind."""
    ada = await make_account(client, "ada@example.com")
    reply = await served.http.get("/v1/events", headers=ada.auth)
    assert 400 == reply.status_code
    assert (False, "event prefix filter is required") == (reply.json()["ok"], reply.json()["error"])
    assert 400 == (await served.http.get("/v1/events/", headers=ada.auth)).status_code
    assert 0 == served.streams.open_streams()


async def test_stream_auth(client: httpx.AsyncClient, served: Served) -> None:
    """A stream needs a valid token; refusals are JSON (particle-api-js prints their error_description)."""
    missing = await served.http.get("/v1/devices/events")
    assert (400, "invalid_request") == (missing.status_code, missing.json()["error"])
    bad = await served.http.get("/v1/devices/events", params={"access_token": "0" * 40})
    assert (401, "invalid_token") == (bad.status_code, bad.json()["error"])


async def test_keepalive_when_idle(client: httpx.AsyncClient, served: Served, clock: FakeClock) -> None:
    """
    A `:` comment after KEEPALIVE seconds (injected clock) without a write, and not before; then every
    KEEPALIVE seconds while idle.
    """
    ada = await make_account(client, "ada@example.com")
    async with stream(served, "/v1/devices/events", ada) as reader:
        clock.advance(KEEPALIVE - 0.5)
        await publish(client, ada, "quiet")
        assert ["quiet"] == await reader.names(1)  # no comment came first
        clock.advance(KEEPALIVE)
        assert b":" == await reader.block()
        clock.advance(KEEPALIVE)
        assert b":" == await reader.block()
    assert reader.raw.startswith(b":ok\n\nevent: quiet\n")


async def test_closed_client_is_cleaned_up(
    client: httpx.AsyncClient, served: Served, runtime: Runtime
) -> None:
    """When the client goes away, its subscription and its slot in the per-IP count go at once."""
    ada = await make_account(client, "ada@example.com")
    async with stream(served, "/v1/devices/events", ada), stream(served, "/v1/events/x", ada):
        assert (2, 2) == (runtime.bus.statistics()["subscriptions"], served.streams.open_streams("127.0.0.1"))
    await wait_until(flag(lambda: runtime.bus.statistics()["subscriptions"] == 0), timeout=2)
    assert 0 == served.streams.open_streams()


async def test_streams_per_ip_are_capped(client: httpx.AsyncClient, served: Served) -> None:
    """Past max_streams_per_ip open streams, a new one gets a JSON 429; closing one makes room."""
    ada = await make_account(client, "ada@example.com")
    async with stream(served, "/v1/devices/events", ada) as first:
        async with (
            stream(served, "/v1/devices/events", ada),
            stream(served, "/v1/devices/events", ada),
            stream(served, "/v1/devices/events", ada),
        ):
            refused = await served.http.get("/v1/devices/events", headers=ada.auth)
            assert (429, False, "rate_limit_exceeded") == (
                refused.status_code,
                refused.json()["ok"],
                refused.json()["error"],
            )
        await wait_until(flag(lambda: served.streams.open_streams() == 1), timeout=2)
        async with stream(served, "/v1/devices/events/cap", ada) as again:
            await publish(client, ada, "cap")
            assert ["cap"] == await again.names(1)
            assert ["cap"] == await first.names(1)


def test_stream_opens_are_rate_limited() -> None:
    """Opening a stream counts against rate_limit_events (catalogue §1.5: 100 / 5 min per IP)."""
    limits = RateLimits(Settings(rate_limit_events="7/minute"))
    events = [rule for rule in limits.rules if rule.name == "events"]
    paths = [
        "/v1/events/x",
        "/v1/events",
        "/v1/devices/events",
        "/v1/devices/events/a/b",
        "/v1/devices/d/events",
    ]
    paths.append("/v1/devices/d/events/spark/status")
    assert all(any(r.method == "GET" and r.path.match(p) for r in events) for p in paths)
    assert not any(r.path.match(p) for r in events for p in ("/v1/devices/d", "/v1/devices/d/temperature"))
    assert {7} == {r.limit.amount for r in events}


async def test_slow_client_is_dropped(
    client: httpx.AsyncClient, served: Served, runtime: Runtime, clock: FakeClock
) -> None:
    """
    A client that never reads: its subscription is closed once the bus bound is reached, its connection is
    dropped, and a healthy stream gets every event meanwhile.
    """
    ada = await make_account(client, "ada@example.com")
    host, port = served.url.removeprefix("http://").split(":")
    slow = socket.socket()
    slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    slow.setblocking(False)
    loop = asyncio.get_running_loop()
    await loop.sock_connect(slow, (host, int(port)))
    request = (
        f"GET /v1/devices/events/big HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {ada.token}\r\n\r\n"
    )
    await loop.sock_sendall(slow, request.encode())
    try:
        await wait_until(flag(lambda: runtime.bus.statistics()["subscriptions"] == 1), timeout=2)
        user = await user_of(runtime, ada)
        payload = "x" * 1000
        sent = 0
        async with stream(served, "/v1/devices/events/big", ada) as healthy:
            while runtime.bus.statistics()["dropped_subscribers"] == 0:
                assert sent < 20_000, "the slow client was never dropped"
                for _ in range(10):
                    await runtime.events.publish_from_api(user, "big", payload, True, 60)
                for _ in range(10):
                    assert "big" == (await healthy.event())[0]
                    sent += 1
            clock.advance(KEEPALIVE)  # a stream stuck writing looks at its subscription by then
            await wait_until(flag(lambda: served.streams.open_streams() == 1), timeout=5)
            assert 1 == runtime.bus.statistics()["subscriptions"]
            await runtime.events.publish_from_api(user, "big", "after", True, 60)
            assert "after" == (await healthy.event())[1]["data"]
        # The server closed the slow connection: draining it ends (what it buffered is bounded).
        slow.setblocking(True)
        slow.settimeout(5)
        received = 0
        while chunk := await loop.run_in_executor(None, slow.recv, 65536):
            received += len(chunk)
        assert received < sent * 1100
    finally:
        slow.close()


# ---------------------------------------------------------------- streams end with their token


async def second_token(client: httpx.AsyncClient, account: Account, **extra: Any) -> Account:
    """The same account logged in again: another token."""
    reply = await login(client, account.email, account.password, **extra)
    assert 200 == reply.status_code, reply.text
    return Account(email=account.email, password=account.password, token=reply.json()["access_token"])


async def revoke(client: httpx.AsyncClient, how: str, doomed: Account, other: Account) -> None:
    if how == "current":
        reply = await client.delete("/v1/access_tokens/current", headers=doomed.auth)
    elif how == "token":  # the token itself is the credential
        reply = await client.delete(f"/v1/access_tokens/{doomed.token}")
    elif how == "all":  # from another of the account's tokens: every one goes
        reply = await client.delete("/v1/access_tokens", headers=other.auth)
    else:  # a new password: every other token of the account goes
        reply = await client.put(
            "/v1/user",
            json={"password": "a brand new password", "current_password": doomed.password},
            headers=other.auth,
        )
    assert 200 == reply.status_code, reply.text


@pytest.mark.parametrize("how", ["current", "token", "all", "password"])
async def test_stream_ends_when_its_token_goes(
    client: httpx.AsyncClient, served: Served, clock: FakeClock, how: str
) -> None:
    """
    Within 5 s (injected clock) of its token being revoked, or of the owner's new password, a stream ends
    cleanly and sends nothing more; streams on live tokens keep going.
    """
    ada = await make_account(client, "ada@example.com")
    ada_again = await second_token(client, ada)
    bob = await make_account(client, "bob@example.com")
    async with (
        stream(served, "/v1/devices/events", ada) as doomed,
        stream(served, "/v1/devices/events", ada_again) as other_token,
        stream(served, "/v1/devices/events", bob) as bobs,
    ):
        await revoke(client, how, ada, ada_again)
        clock.advance(TOKEN_DEADLINE)
        assert b"" == (await doomed.rest()).replace(b":\n\n", b"")
        await publish(client, bob, "still-here", private=True)
        assert ["still-here"] == await bobs.names(1)
        if how == "all":
            assert b"" == (await other_token.rest()).replace(b":\n\n", b"")
        else:  # the token that changed the password or revoked another one stays, and so does its stream
            await publish(client, ada_again, "mine", private=True)
            assert ["mine"] == await other_token.names(1)
    await wait_until(flag(lambda: served.streams.open_streams() == 0), timeout=2)


async def test_stream_ends_when_its_token_expires(
    client: httpx.AsyncClient, served: Served, clock: FakeClock
) -> None:
    """A token that lives 10 s: its stream carries on at 5 s, and has ended by 10 s (+ nothing after)."""
    ada = await make_account(client, "ada@example.com")
    short = await second_token(client, ada, expires_in="10")
    async with stream(served, "/v1/devices/events", short) as reader:
        clock.advance(TOKEN_DEADLINE)
        await wait_until(flag(lambda: served.streams.token_checks >= 1), timeout=5)
        await publish(client, ada, "alive", private=True)
        assert ["alive"] == await reader.names(1)
        clock.advance(10 - TOKEN_DEADLINE)
        assert b"" == (await reader.rest()).replace(b":\n\n", b"")


# ---------------------------------------------------------------- devices


async def test_device_scoped_stream(client: httpx.AsyncClient, served: Served, runtime: Runtime) -> None:
    """
    /v1/devices/:id/events carries only that device's events (by id or name); spark/status online/offline
    reaches the owner when the device connects and goes away; another user's device is refused.
    """
    ada = await make_account(client, "ada@example.com")
    bob = await make_account(client, "bob@example.com")
    async with stream(served, "/v1/devices/events/spark%2Fstatus", ada) as status:
        first = await connect_device(client, ada, runtime)
        other = await connect_device(client, ada, runtime)
        try:
            online = [await status.event() for _ in range(2)]
            assert {
                ("spark/status", "online", first.device_id),
                ("spark/status", "online", other.device_id),
            } == {(name, data["data"], data["coreid"]) for name, data in online}
            async with (
                stream(served, f"/v1/devices/{first.device_id}/events", ada) as by_id,
                stream(served, f"/v1/devices/{first.device_id}/events/note", ada) as by_prefix,
            ):
                for device in (other, first):
                    for name in ("note", "other"):
                        await runtime.events.publish_from_device(
                            device.device_id, name, "x", private=True, ttl=60
                        )
                assert ["note", "other"] == await by_id.names(2)
                event, data = await by_prefix.event()
                assert ("note", first.device_id) == (event, data["coreid"])
            refused = await served.http.get(f"/v1/devices/{first.device_id}/events", headers=bob.auth)
            assert (403, False) == (refused.status_code, refused.json()["ok"])
        finally:
            await other.stop()
            await first.stop()
        offline = [await status.event() for _ in range(2)]
        assert {(other.device_id, "offline"), (first.device_id, "offline")} == {
            (data["coreid"], data["data"]) for _, data in offline
        }
    await wait_until(flag(lambda: served.streams.open_streams() == 0), timeout=2)


# ---------------------------------------------------------------- publishing


@pytest.mark.parametrize("encoding", ["json", "form", "multipart"])
async def test_publish_encodings(client: httpx.AsyncClient, served: Served, encoding: str) -> None:
    """name, data, private and ttl are read from JSON, urlencoded and multipart bodies."""
    ada = await make_account(client, "ada@example.com")
    fields = {"name": "enc", "data": "hello", "private": "true", "ttl": "90"}
    bob = await make_account(client, "bob@example.com")
    async with (
        stream(served, "/v1/devices/events/enc", ada) as mine,
        stream(served, "/v1/events/enc", bob) as other,
    ):
        if encoding == "json":
            reply = await client.post(
                "/v1/devices/events", json={**fields, "ttl": 90, "private": True}, headers=ada.auth
            )
        elif encoding == "form":
            reply = await client.post("/v1/devices/events", data=fields, headers=ada.auth)
        else:
            reply = await client.post(
                "/v1/devices/events", files={k: (None, v) for k, v in fields.items()}, headers=ada.auth
            )
        assert (200, {"ok": True}) == (reply.status_code, reply.json())
        await publish(client, bob, "enc/end", private=False)
        name, data = await mine.event()
        assert ("enc", "hello", 90, "api") == (name, data["data"], data["ttl"], data["coreid"])
        assert ["enc/end"] == await other.names(1)  # private: Bob never saw it


@pytest.mark.parametrize(
    ("body", "error"),
    [
        ({"data": "x"}, "Event name is required"),
        ({"name": ""}, "Event name is required"),
        ({"name": "n" * 65}, "Event name too long"),
        ({"name": "n", "data": "d" * 1025}, "Event data too long"),
        ({"name": "n", "ttl": "soon"}, "invalid_ttl"),
        ({"name": "n", "ttl": -1}, "invalid_ttl"),
        ({"name": "line\nbreak"}, "Invalid event name"),
    ],
)
async def test_publish_validation(client: httpx.AsyncClient, body: dict[str, Any], error: str) -> None:
    """Invalid publishes get 400 {ok: false, error, error_description}."""
    ada = await make_account(client, "ada@example.com")
    reply = await client.post("/v1/devices/events", json=body, headers=ada.auth)
    assert 400 == reply.status_code
    assert {"ok", "error", "error_description"} == set(reply.json())
    assert (False, error) == (reply.json()["ok"], reply.json()["error"])


async def test_publish_limits_are_inclusive(client: httpx.AsyncClient) -> None:
    """A 64-character name and 1,024 bytes of data are accepted."""
    ada = await make_account(client, "ada@example.com")
    reply = await client.post(
        "/v1/devices/events", json={"name": "n" * 64, "data": "d" * 1024}, headers=ada.auth
    )
    assert (200, {"ok": True}) == (reply.status_code, reply.json())
