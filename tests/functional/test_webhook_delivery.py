"""
Webhook delivery end to end: events published through the API or by a virtual device reach a real local HTTP
server (pytest-httpserver) as the hosted cloud sends them, and responses come back as hook events on SSE
streams and to subscribed devices. Retries and host sleeps follow the injected clock; hostile targets are
real sockets (tests/support/targets.py) with a short request limit.
"""

from __future__ import annotations

import asyncio
import base64
import json
import ssl
import tracemalloc
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from pytest_httpserver import HTTPServer
from tests.support.api import Account, make_account
from tests.support.clock import FakeClock
from tests.support.devices import connect_device, wait_until
from tests.support.sse import flag, serve_app, stream
from tests.support.targets import drip, huge, never_answer, redirect_loop, target
from tests.support.webhooks import (
    create_hook,
    hook_events,
    next_events,
    outbox_empty,
    publish,
    requests_seen,
    settled_after_poke,
)
from werkzeug import Request, Response

from devicecloud.runtime import Runtime

REQUEST_LIMIT = 1.0


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    # A short request limit keeps the hostile-target cases quick; the hosted cloud's 20 s is the default.
    return {"webhook_timeout": REQUEST_LIMIT, "webhook_max_redirects": 3}


@pytest.fixture
async def ada(client: httpx.AsyncClient) -> Account:
    return await make_account(client, "ada@example.com")


# ------------------------------------------------------------------------------------------------ requests


async def test_default_form_post(client: httpx.AsyncClient, ada: Account, httpserver: HTTPServer) -> None:
    httpserver.expect_request("/hook", method="POST").respond_with_data("ok")
    await create_hook(client, ada, event="temp", url=httpserver.url_for("/hook"))
    await publish(client, ada, "temperature", "21.5")
    (request,) = await requests_seen(httpserver, 1)
    assert "application/x-www-form-urlencoded" == request.headers["Content-Type"]
    assert "ParticleBot/1.1 (https://docs.particle.io/webhooks)" == request.headers["User-Agent"]
    raw = request.get_data(as_text=True)
    assert ["event", "data", "published_at", "coreid"] == [pair.split("=")[0] for pair in raw.split("&")]
    form = parse_qs(raw)
    assert (["temperature"], ["21.5"], ["api"]) == (form["event"], form["data"], form["coreid"])


async def test_templates_reach_the_target_exactly(
    client: httpx.AsyncClient, ada: Account, httpserver: HTTPServer
) -> None:
    httpserver.expect_request("/in/api", method="PUT").respond_with_data("ok")
    await create_hook(
        client,
        ada,
        event="reading",
        url=httpserver.url_for("/in/{{PARTICLE_DEVICE_ID}}"),
        requestType="PUT",
        json={"t": "{{temp}}", "where": "{{{place.name}}}", "first": "{{tags.0}}"},
        query={"unit": "{{unit}}"},
        headers={"X-Key": "k-{{PARTICLE_EVENT_NAME}}"},
        auth={"username": "user", "password": "{{unit}}"},
        noDefaults=True,
    )
    data = {"temp": 21, "unit": "C", "place": {"name": "R&D"}, "tags": ["a", "b"]}
    await publish(client, ada, "reading/1", json.dumps(data))
    (request,) = await requests_seen(httpserver, 1)
    assert ("PUT", "/in/api", {"unit": ["C"]}) == (
        request.method,
        request.path,
        parse_qs(request.query_string.decode()),
    )
    assert "application/json" == request.headers["Content-Type"]
    assert "k-reading/1" == request.headers["X-Key"]
    assert "Basic " + base64.b64encode(b"user:C").decode() == request.headers["Authorization"]
    assert {"t": "21", "where": "R&D", "first": "a"} == json.loads(request.get_data())


async def test_get_with_defaults_in_the_query(
    client: httpx.AsyncClient, ada: Account, httpserver: HTTPServer
) -> None:
    httpserver.expect_request("/q", method="GET").respond_with_data("ok")
    await create_hook(client, ada, event="q", url=httpserver.url_for("/q"), requestType="GET")
    await publish(client, ada, "q", "v")
    (request,) = await requests_seen(httpserver, 1)
    query = parse_qs(request.query_string.decode())
    assert (["q"], ["v"], ["api"]) == (query["event"], query["data"], query["coreid"])
    assert b"" == request.get_data()


async def test_matching_rules(
    client: httpx.AsyncClient, runtime: Runtime, ada: Account, httpserver: HTTPServer
) -> None:
    """
    Prefix match, the device filter, the owner's events only, disabled hooks and hook-* events never fire.
    """
    bob = await make_account(client, "bob@example.com")
    httpserver.expect_request("/m").respond_with_data("ok")
    url = httpserver.url_for("/m")
    await create_hook(
        client, ada, event="m", url=url, json={"n": "{{{PARTICLE_EVENT_NAME}}}"}, noDefaults=True
    )
    await create_hook(client, ada, event="m", url=url, deviceID="0123456789abcdef01234567")
    await create_hook(client, ada, event="m", url=url, disabled=True)
    await create_hook(client, ada, event="hook-", url=url)
    httpserver.expect_request("/end").respond_with_data("ok")
    await create_hook(client, ada, event="end", url=httpserver.url_for("/end"))
    await publish(client, bob, "m/bob")  # another user's event
    await publish(client, ada, "other")  # another prefix
    await publish(client, ada, "hook-sent/m")  # never triggers anything
    await publish(client, ada, "m/1")
    # A marker last: intake and writer keep order, so once it is delivered and the outbox is empty, every
    # event before it was taken in, and whatever it triggered has been sent.
    await publish(client, ada, "end")
    await requests_seen(httpserver, 2)
    await outbox_empty(runtime)
    sent = {request.path: request for request, _response in httpserver.log}
    assert (["/end", "/m"], 2) == (sorted(sent), len(httpserver.log))
    assert {"n": "m/1"} == json.loads(sent["/m"].get_data())


# ------------------------------------------------------------------------------------------------ responses


async def test_a_1300_byte_response_becomes_three_chunks_on_streams_and_devices(
    client: httpx.AsyncClient, runtime: Runtime, ada: Account, httpserver: HTTPServer
) -> None:
    body = ("0123456789abcdefghijklmnopqrstuvwxyz" * 40)[:1300]
    httpserver.expect_request("/big").respond_with_data(body, content_type="text/plain")
    await create_hook(client, ada, event="big", url=httpserver.url_for("/big"))
    device = await connect_device(client, ada, runtime)
    received: list[tuple[str, str | None]] = []
    try:
        await device.subscribe("hook-response/big", lambda name, data: received.append((name, data)))
        await device.ping()
        async with serve_app(runtime) as served, stream(served, "/v1/devices/events/hook-", ada) as sse:
            await publish(client, ada, "big")
            names_and_data = [await sse.event() for _ in range(4)]
            await wait_until(flag(lambda: len(received) == 3))
    finally:
        await device.stop()
    assert ["hook-sent/big", "hook-response/big/0", "hook-response/big/1", "hook-response/big/2"] == [
        name for name, _ in names_and_data
    ]
    chunks = [data["data"] for _, data in names_and_data[1:]]
    assert ([512, 512, 276], body) == ([len(c) for c in chunks], "".join(chunks))
    assert {"particle-internal"} == {data["coreid"] for _, data in names_and_data}
    assert [(f"hook-response/big/{i}", chunk) for i, chunk in enumerate(chunks)] == received


async def test_logs_show_the_last_requests(
    client: httpx.AsyncClient, ada: Account, httpserver: HTTPServer
) -> None:
    httpserver.expect_request("/l").respond_with_data("fine")
    hook_id = await create_hook(client, ada, event="l", url=httpserver.url_for("/l"))
    for i in range(12):
        await publish(client, ada, "l", str(i))
    await requests_seen(httpserver, 12)

    async def twelve_logged() -> bool:
        got = (await client.get(f"/v1/integrations/{hook_id}", headers=ada.auth)).json()["integration"]
        return len(got["logs"]) == 10 and all(log["response"] for log in got["logs"])

    await wait_until(twelve_logged)
    logs = (await client.get(f"/v1/integrations/{hook_id}", headers=ada.auth)).json()["integration"]["logs"]
    assert {(200, "fine", None)} == {
        (log["response"]["status"], log["response"]["body"], log["error"]) for log in logs
    }
    assert {"POST"} == {log["request"]["method"] for log in logs}


async def test_integration_test_endpoint(
    client: httpx.AsyncClient, ada: Account, httpserver: HTTPServer
) -> None:
    httpserver.expect_request("/t").respond_with_data("ok")
    httpserver.expect_request("/missing").respond_with_data("no", status=404)
    good = await create_hook(client, ada, event="t", url=httpserver.url_for("/t"))
    bad = await create_hook(client, ada, event="t", url=httpserver.url_for("/missing"))
    assert {"pass": True, "data": None} == (
        await client.post(f"/v1/integrations/{good}/test", headers=ada.auth)
    ).json()
    failed = (await client.post(f"/v1/integrations/{bad}/test", headers=ada.auth)).json()
    assert {"pass": False, "data": None, "error": "error status 404 from localhost"} == failed


# ------------------------------------------------------------------------------------------------ retries


def flaky(failures: int) -> Any:
    calls = {"n": 0}

    def handler(request: Request) -> Response:
        calls["n"] += 1
        if calls["n"] <= failures:
            return Response("down", status=503)
        return Response("up", status=200)

    return handler


async def test_target_down_then_up_is_retried_after_30_s_and_1_min(
    client: httpx.AsyncClient, runtime: Runtime, clock: FakeClock, ada: Account, httpserver: HTTPServer
) -> None:
    httpserver.expect_request("/r").respond_with_handler(flaky(2))
    await create_hook(client, ada, event="r", url=httpserver.url_for("/r"))
    seen = await hook_events(runtime, ada)
    await publish(client, ada, "r")
    assert ["hook-sent/r", "hook-error/r/0"] == [e.name for e in await next_events(seen, 2)]
    clock.advance(29)
    await settled_after_poke(runtime)
    assert 1 == len(httpserver.log)
    clock.advance(1)
    runtime.dispatcher.poke()
    second = await next_events(seen, 2)
    assert ("hook-error/r/0", "error status 503 from localhost") == (second[1].name, second[1].data)
    clock.advance(60)
    runtime.dispatcher.poke()
    assert [("hook-sent/r", None), ("hook-response/r/0", "up")] == [
        (e.name, e.data) for e in await next_events(seen, 2)
    ]
    assert 3 == len(httpserver.log)
    await outbox_empty(runtime)


async def test_three_failures_give_up_and_4xx_is_not_retried(
    client: httpx.AsyncClient, runtime: Runtime, clock: FakeClock, ada: Account, httpserver: HTTPServer
) -> None:
    httpserver.expect_request("/down").respond_with_data("down", status=500)
    httpserver.expect_request("/gone").respond_with_data("gone", status=404)
    await create_hook(client, ada, event="down", url=httpserver.url_for("/down"))
    await create_hook(client, ada, event="gone", url=httpserver.url_for("/gone"))
    await publish(client, ada, "gone")
    await publish(client, ada, "down")
    await requests_seen(httpserver, 2)
    await settled_after_poke(runtime)  # first attempts booked: each step below makes one retry due
    for _ in range(3):
        clock.advance(60)
        await settled_after_poke(runtime)  # the retry that came due is sent and booked before the next
    await outbox_empty(runtime)
    paths = [request.path for request, _response in httpserver.log]
    assert (3, 1) == (paths.count("/down"), paths.count("/gone"))


async def test_a_failing_host_sleeps_and_events_are_skipped_then_retried(
    client: httpx.AsyncClient, runtime: Runtime, clock: FakeClock, ada: Account, httpserver: HTTPServer
) -> None:
    httpserver.expect_request("/err").respond_with_handler(flaky(5))
    await create_hook(client, ada, event="s", url=httpserver.url_for("/err"))
    seen = await hook_events(runtime, ada)
    for i in range(5):  # one at a time, so each failure is counted before the next attempt
        await publish(client, ada, "s", str(i))
        assert ["hook-sent/s", "hook-error/s/0"] == [e.name for e in await next_events(seen, 2)]
    await publish(client, ada, "s", "skipped")
    (skipped,) = await next_events(seen, 1)
    assert ("hook-error/s/0", "Sleeping, too many errors, please wait and try again") == (
        skipped.name,
        skipped.data,
    )
    assert 5 == len(httpserver.log)
    clock.advance(30)  # the host wakes up; the five failed events and the skipped one are due again
    runtime.dispatcher.poke()
    retried = await requests_seen(httpserver, 11)
    assert ["0", "1", "2", "3", "4", "skipped"] == sorted(
        parse_qs(request.get_data(as_text=True))["data"][0] for request in retried[5:]
    )
    await outbox_empty(runtime)


# ---------------------------------------------------------------------------------------- hostile targets


async def test_hostile_targets_end_within_their_bounds(
    client: httpx.AsyncClient, runtime: Runtime, ada: Account
) -> None:
    seen = await hook_events(runtime, ada)
    async with (
        target(never_answer) as silent,
        target(drip) as dripping,
        target(huge) as big,
        target(redirect_loop) as loop,
    ):
        await create_hook(client, ada, event="silent", url=silent.url())
        await create_hook(client, ada, event="drip", url=dripping.url())
        await create_hook(client, ada, event="huge", url=big.url(), unchunked=True)
        await create_hook(client, ada, event="loop", url=loop.url("/loop"))
        await publish(client, ada, "warm-up")  # the framework's first-request caches are not ours to count
        tracemalloc.start()
        try:
            started = asyncio.get_running_loop().time()
            for name in ("silent", "drip", "huge", "loop"):
                await publish(client, ada, name)
            events = await next_events(seen, 8, timeout=REQUEST_LIMIT * 5)
            elapsed = asyncio.get_running_loop().time() - started
            _current, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    outcome = {
        e.name.split("/")[1]: (e.name.split("/")[0], e.data)
        for e in events
        if not e.name.startswith("hook-sent")
    }
    assert {
        "silent": ("hook-error", f"timeout after {REQUEST_LIMIT:g} s from 127.0.0.1"),
        "drip": ("hook-error", f"timeout after {REQUEST_LIMIT:g} s from 127.0.0.1"),
        "loop": ("hook-error", "too many redirects (more than 3)"),
    } == {k: v for k, v in outcome.items() if k != "huge"}
    kind, data = outcome["huge"]
    assert ("hook-response", 100 * 1024) == (kind, len(data or ""))  # read up to the bound, the rest never
    assert elapsed < REQUEST_LIMIT * 3
    assert 4 == len(loop.requests)  # the first request and 3 redirects
    assert peak < 4 * 1024 * 1024  # 10 MB offered, never held


@pytest.mark.parametrize("settings_overrides", [{"webhook_block_private": True, "webhook_timeout": 1.0}])
async def test_private_addresses_are_refused_when_guarded(
    client: httpx.AsyncClient, runtime: Runtime, ada: Account, httpserver: HTTPServer
) -> None:
    httpserver.expect_request("/private").respond_with_data("should never be reached")
    seen = await hook_events(runtime, ada)
    await create_hook(
        client, ada, event="p1", url=httpserver.url_for("/private").replace("localhost", "127.0.0.1")
    )
    await create_hook(client, ada, event="p2", url=httpserver.url_for("/private"))  # localhost
    await create_hook(client, ada, event="p3", url="http://10.1.2.3/x")
    await create_hook(client, ada, event="p4", url="http://[::1]:9/x")
    # IPv6 forms of 127.0.0.1 and 10.0.0.1: NAT64, local-use NAT64, 6to4, IPv4-compatible
    await create_hook(client, ada, event="p5", url="http://[64:ff9b::7f00:1]:9/x")
    await create_hook(client, ada, event="p6", url="http://[64:ff9b:1::a00:1]:9/x")
    await create_hook(client, ada, event="p7", url="http://[2002:7f00:1::1]:9/x")
    await create_hook(client, ada, event="p8", url="http://[::a00:1]:9/x")
    names = [f"p{i}" for i in range(1, 9)]
    for name in names:
        await publish(client, ada, name)
    events = await next_events(seen, 2 * len(names))
    errors = {e.name: e.data for e in events if e.name.startswith("hook-error")}
    assert len(names) == len(errors)
    assert all("not allowed" in (text or "") for text in errors.values()), errors
    assert [] == httpserver.log


# ---------------------------------------------------------------------------------------- TLS


def self_signed_context(directory: Path) -> ssl.SSLContext:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=1))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = directory / "cert.pem", directory / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert_file, key_file)
    return context


@pytest.fixture
def tls_server(tmp_path: Path) -> Iterator[HTTPServer]:
    server = HTTPServer(ssl_context=self_signed_context(tmp_path))
    server.start()
    try:
        yield server
    finally:
        server.clear()
        server.stop()


async def test_reject_unauthorized(
    client: httpx.AsyncClient, runtime: Runtime, ada: Account, tls_server: HTTPServer
) -> None:
    """
    A certificate nobody vouches for fails by default; ``rejectUnauthorized: false`` accepts it.
    """
    tls_server.expect_request("/tls").respond_with_data("secure enough")
    url = tls_server.url_for("/tls")
    assert url.startswith("https://")
    await create_hook(client, ada, event="strict", url=url)
    await create_hook(client, ada, event="lax", url=url, rejectUnauthorized=False)
    seen = await hook_events(runtime, ada)
    await publish(client, ada, "strict")
    strict = [e for e in await next_events(seen, 2) if e.name.startswith("hook-error")]
    assert 1 == len(strict)
    assert "certificate" in (strict[0].data or "").lower()
    await publish(client, ada, "lax")
    lax = {e.name: e.data for e in await next_events(seen, 2)}
    assert "secure enough" == lax["hook-response/lax/0"]
    assert 1 == len(tls_server.log)


async def test_event_data_cannot_inject_headers(
    client: httpx.AsyncClient, runtime: Runtime, ada: Account, httpserver: HTTPServer
) -> None:
    httpserver.expect_request("/h").respond_with_data("ok")
    await create_hook(
        client, ada, event="inj", url=httpserver.url_for("/h"), headers={"X-V": "{{{PARTICLE_EVENT_VALUE}}}"}
    )
    seen = await hook_events(runtime, ada)
    await publish(client, ada, "inj", "a\r\nInjected: 1")
    errors = [e for e in await next_events(seen, 2) if e.name.startswith("hook-error")]
    assert 1 == len(errors)
    assert "request could not be made" in (errors[0].data or "")
    assert [] == httpserver.log
