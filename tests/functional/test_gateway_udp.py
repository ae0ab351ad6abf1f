"""
Gen3 devices over UDP/DTLS (port 5684) through the real gateway: a virtual Argon registers its EC key with
the API, connects, and its variables, functions and events work as a TCP device's do; hostile datagrams
(garbage, truncated, oversized, a spoofed ClientHello flood) cost the gateway nothing but cookies and close
nothing.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from tests.support.api import Account, make_account
from tests.support.clock import FakeClock
from tests.support.devices import wait_until

from devicecloud.domain.events import EventFilter
from devicecloud.gateway.kept_sessions import PersistentSessionStore
from devicecloud.protocol.codes import DescribeFlags
from devicecloud.protocol.dtls import DtlsClient, ecdsa_signer
from devicecloud.protocol.dtls.client import ClientConfig
from devicecloud.protocol.udp import DESCRIBE_BLOCK, idle_timeout_for
from devicecloud.runtime import Runtime, build_runtime
from devicecloud.store.keyfiles import load_or_create_udp_server_key
from devicecloud.virtualdevice import VirtualDevice

WAIT = 10.0


@pytest.fixture
def database_url(tmp_path) -> str:  # type: ignore[no-untyped-def]
    """Device behaviour does not depend on the database; the storage tests cover both."""
    return f"sqlite+aiosqlite:///{tmp_path / 'devicecloud.db'}"


@pytest.fixture
async def ada(client: httpx.AsyncClient) -> Account:
    return await make_account(client, "ada@example.com")


def _pem(key: ec.EllipticCurvePrivateKey) -> str:
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return public.decode()


async def _argon(
    client: httpx.AsyncClient,
    ada: Account,
    runtime: Runtime,
    key: ec.EllipticCurvePrivateKey,
    *,
    claim: bool = True,
    extra_functions: int = 0,
    **options: Any,
) -> VirtualDevice:
    device_id = "e00fce68" + key.public_key().public_numbers().x.to_bytes(32, "big")[:8].hex()
    sent = await client.post(
        f"/v1/provisioning/{device_id}",
        json={"deviceID": device_id, "publicKey": _pem(key), "algorithm": "ecc"},
        headers=ada.auth,
    )
    assert 200 == sent.status_code, sent.text
    if claim:
        claimed = await client.post("/v1/devices", json={"id": device_id}, headers=ada.auth)
        assert 200 == claimed.status_code, claimed.text
    udp_port = runtime.gateway.udp_port
    assert udp_port is not None
    device = VirtualDevice(
        "127.0.0.1",
        udp_port,
        device_id=device_id,
        device_key=key,
        server_public_key=load_or_create_udp_server_key(runtime.settings.data_dir).public_key(),
        platform_id=12,
        protocol="udp",
        reconnect=False,
        **options,
    )
    device.set_variable("vint", -42)
    device.set_variable("vstring", "hello over DTLS")
    device.add_function("echo_len", lambda arg: len(arg))
    for n in range(extra_functions):
        device.add_function(f"more_function_{n:03d}", lambda arg: 7)
    await device.start()
    await device.wait_connected(WAIT)
    return device


@pytest.fixture
async def argon(client: httpx.AsyncClient, ada: Account, runtime: Runtime) -> AsyncIterator[VirtualDevice]:
    device = await _argon(client, ada, runtime, ec.generate_private_key(ec.SECP256R1()))
    try:
        yield device
    finally:
        await device.stop()


async def _described(client: httpx.AsyncClient, ada: Account, device: VirtualDevice) -> dict[str, object]:
    body: dict[str, object] = {}

    async def ready() -> bool:
        nonlocal body
        body = (await client.get(f"/v1/devices/{device.device_id}", headers=ada.auth)).json()
        return bool(body.get("online")) and "echo_len" in (body.get("functions") or [])

    await wait_until(ready)
    return body


async def test_a_udp_device_works_through_the_api_like_a_tcp_one(
    client: httpx.AsyncClient, ada: Account, runtime: Runtime, argon: VirtualDevice
) -> None:
    body = await _described(client, ada, argon)
    assert (True, 12, "127.0.0.1") == (body["online"], body["platform_id"], body["last_ip_address"])
    assert {"vint": "int32", "vstring": "string"} == body["variables"]

    read = (await client.get(f"/v1/devices/{argon.device_id}/vint", headers=ada.auth)).json()
    assert -42 == read["result"]
    text = (await client.get(f"/v1/devices/{argon.device_id}/vstring", headers=ada.auth)).json()
    assert "hello over DTLS" == text["result"]
    called = await client.post(
        f"/v1/devices/{argon.device_id}/echo_len", json={"args": "twelve chars"}, headers=ada.auth
    )
    assert (200, 12) == (called.status_code, called.json()["return_value"])

    # device → cloud (CON event, ACKed) and cloud → device (a subscription)
    feed = runtime.bus.subscribe(EventFilter(prefix="gen3/", owner_id=None, include_public=True))
    await argon.publish("gen3/temp", "21.5", private=False, with_ack=True)
    async with asyncio.timeout(WAIT):
        event = await anext(feed)
    assert ("gen3/temp", "21.5", argon.device_id) == (event.name, event.data, event.coreid)
    feed.close()
    received: list[tuple[str, str | None]] = []
    await argon.subscribe("to-argon", lambda name, data: received.append((name, data)))
    await argon.ping()
    await argon.ping()
    published = await client.post(
        "/v1/devices/events",
        data={"name": "to-argon/hi", "data": "there", "private": "true"},
        headers=ada.auth,
    )
    assert 200 == published.status_code, published.text

    async def delivered() -> bool:
        return received == [("to-argon/hi", "there")]

    await wait_until(delivered)


async def test_a_device_os_6_device_describes_its_system_in_protobuf(
    client: httpx.AsyncClient, ada: Account, runtime: Runtime
) -> None:
    """
    Device OS ≥ 5.5 sends its system Describe apart, as protobuf (Content-Format 42): the API shows its
    modules and release as from a JSON one, and the link stays up.
    """
    modules = (
        {"s": 49152, "l": "m", "vc": 30, "vv": 30, "f": "b", "n": "0", "v": 2300, "d": []},
        {"s": 1048576, "l": "m", "vc": 30, "vv": 30, "f": "s", "n": "1", "v": 6200,
         "d": [{"f": "b", "n": "0", "v": 2300}]},
        {"s": 262144, "l": "m", "vc": 30, "vv": 30, "u": "ab" * 32, "f": "u", "n": "1", "v": 6,
         "d": [{"f": "s", "n": "1", "v": 6200}]},
    )  # fmt: skip
    key = ec.generate_private_key(ec.SECP256R1())
    device = await _argon(client, ada, runtime, key, system_describe="protobuf", modules=modules)
    try:
        body = await _described(client, ada, device)
        assert ("6.2.0", {"vint": "int32", "vstring": "string"}) == (
            body["system_firmware_version"],
            body["variables"],
        )
        assert device.connected
        assert 2 == device.counters.describes
        called = await client.post(
            f"/v1/devices/{device.device_id}/echo_len", json={"args": "pb"}, headers=ada.auth
        )
        assert (200, 2) == (called.status_code, called.json()["return_value"])
        # A name the stored Describe lacks makes the cloud ask again: for the application part alone, the
        # one request such a device answers (it refuses one without flags, as Device OS ≥ 3.3 does).
        unknown = await client.post(
            f"/v1/devices/{device.device_id}/no_such_function", json={"args": ""}, headers=ada.auth
        )
        assert 404 == unknown.status_code, unknown.text
        assert (3, 0) == (device.counters.describes, device.counters.rejected_requests)
    finally:
        await device.stop()


async def test_a_describe_too_big_for_one_message_is_fetched_block_by_block(
    client: httpx.AsyncClient, ada: Account, runtime: Runtime, argon: VirtualDevice
) -> None:
    """
    A device with many functions answers the cloud's Describe request blockwise (ETag + Block2, 1,024-byte
    blocks, as Device OS ≥ 3.3): the cloud asks for every block and sees the whole application.
    """
    await _described(client, ada, argon)
    for n in range(120):
        argon.add_function(f"late_function_{n:03d}", lambda arg: 7)
    assert len(argon.describe_payload(int(DescribeFlags.APPLICATION))) > 2 * DESCRIBE_BLOCK  # three blocks
    called = await client.post(
        f"/v1/devices/{argon.device_id}/late_function_119", json={"args": ""}, headers=ada.auth
    )
    assert (200, 7) == (called.status_code, called.json().get("return_value")), called.text
    body = (await client.get(f"/v1/devices/{argon.device_id}", headers=ada.auth)).json()
    assert 121 == len(body["functions"])
    assert argon.connected


async def test_a_describe_too_big_for_one_message_arrives_in_block1_parts(
    client: httpx.AsyncClient, ada: Account, runtime: Runtime
) -> None:
    """
    A device with many functions sends its own Describe on connect in Block1 parts (Device OS ≥ 3.3): the
    cloud joins them and stores the whole application.
    """
    device = await _argon(client, ada, runtime, ec.generate_private_key(ec.SECP256R1()), extra_functions=120)
    try:
        assert len(device.describe_payload()) > 2 * DESCRIBE_BLOCK
        body = await _described(client, ada, device)
        assert 121 == len(body["functions"])  # type: ignore[arg-type]
        called = await client.post(
            f"/v1/devices/{device.device_id}/more_function_119", json={"args": ""}, headers=ada.auth
        )
        assert (200, 7) == (called.status_code, called.json().get("return_value")), called.text
    finally:
        await device.stop()


async def test_a_device_claimed_while_connected_receives_its_new_owners_events(
    client: httpx.AsyncClient, ada: Account, runtime: Runtime
) -> None:
    """
    A device that subscribed while nobody owned it gets its new owner's private events once claimed,
    without reconnecting (its feed is opened again for the new owner).
    """
    device = await _argon(client, ada, runtime, ec.generate_private_key(ec.SECP256R1()), claim=False)
    try:
        received: list[tuple[str, str | None]] = []
        await device.subscribe("to-argon", lambda name, data: received.append((name, data)))
        await device.ping()
        await device.ping()  # the Subscribe is handled: the gateway answered what came after it
        claimed = await client.post("/v1/devices", json={"id": device.device_id}, headers=ada.auth)
        assert 200 == claimed.status_code, claimed.text

        async def delivered() -> bool:
            # The feed is reopened in the background: publish until one arrives (events to devices are NON).
            if not received:
                sent = await client.post(
                    "/v1/devices/events",
                    data={"name": "to-argon/mine", "data": "private", "private": "true"},
                    headers=ada.auth,
                )
                assert 200 == sent.status_code, sent.text
            return bool(received)

        await wait_until(delivered)
        assert ("to-argon/mine", "private") == received[0]
        assert device.connected
    finally:
        await device.stop()


async def test_a_session_follows_its_connection_id_to_a_new_address(
    client: httpx.AsyncClient, ada: Account, runtime: Runtime, argon: VirtualDevice
) -> None:
    """NAT rebinding: the same CID from a new port moves the session, without a handshake."""
    await _described(client, ada, argon)
    stats = runtime.gateway.udp_statistics()
    assert stats is not None
    await argon.rebind()
    await argon.ping()  # answered at the new address: the session moved
    called = await client.post(
        f"/v1/devices/{argon.device_id}/echo_len", json={"args": "moved"}, headers=ada.auth
    )
    assert (200, 5) == (called.status_code, called.json()["return_value"])
    assert (1, 1) == (stats.moved, stats.sessions)
    assert 1 == argon.counters.connects


async def test_a_device_resumes_after_sleep_without_a_handshake(
    client: httpx.AsyncClient, ada: Account, runtime: Runtime, clock: FakeClock, argon: VirtualDevice
) -> None:
    """Sleep (silence past the cloud's idle deadline), then wake: the stored session goes on, no handshake."""
    await _described(client, ada, argon)
    stats = runtime.gateway.udp_statistics()
    assert stats is not None
    cookies = stats.cookies_sent
    await argon.sleep()
    clock.advance(idle_timeout_for(12) + 1)  # the cloud drops the silent link and keeps its session

    async def offline() -> bool:
        return stats.sessions == 0

    await wait_until(offline)
    # A forged record with the session's CID does not authenticate: it takes nothing and keeps nothing.
    kept = argon.kept_session
    assert kept is not None
    assert kept.cid is not None
    forged = (
        b"\x19\xfe\xfd\x00\x01" + (10**6).to_bytes(6, "big") + kept.cid + (40).to_bytes(2, "big") + bytes(40)
    )
    with _socket() as sock:
        sock.sendto(forged, ("127.0.0.1", runtime.gateway.udp_port or 0))

        async def judged() -> bool:
            return stats.dropped > 0

        await wait_until(judged)
    assert (0, 0) == (stats.resumed, stats.sessions)
    await argon.wake()
    await argon.wait_connected(WAIT)
    await _described(client, ada, argon)
    called = await client.post(
        f"/v1/devices/{argon.device_id}/echo_len", json={"args": "awake"}, headers=ada.auth
    )
    assert (200, 5) == (called.status_code, called.json()["return_value"])
    assert (1, cookies) == (stats.resumed, stats.cookies_sent)  # no ClientHello at all


@pytest.mark.parametrize("crash", [False, True], ids=["stopped", "crashed"])
async def test_a_device_resumes_after_a_server_restart_and_its_counter_goes_on(
    client: httpx.AsyncClient,
    ada: Account,
    runtime: Runtime,
    clock: FakeClock,
    server_key: rsa.RSAPrivateKey,
    argon: VirtualDevice,
    monkeypatch: pytest.MonkeyPatch,
    crash: bool,
) -> None:
    """
    The session is in the database: the next process resumes it without a handshake, and the device (whose
    replay window drops any sequence number seen before) accepts what the new process sends — also when the
    first process died without writing its last counters (only the reserved block was written).
    """
    await _described(client, ada, argon)
    clock.advance(1.5)  # a flush: the live session and its reserved block are written

    async def written() -> bool:
        async with runtime.store.transaction(readonly=True) as tx:
            rows = await tx.dtls_sessions.all()
        return [argon.device_id] == [row.device_id for row in rows]

    await wait_until(written)
    if crash:  # more records after the flush, then nothing more is written: as if the process died
        for _ in range(5):
            assert await runtime.gateway.control.ping(argon.device_id, timeout=WAIT)
        monkeypatch.setattr(PersistentSessionStore, "save", lambda self, session: None)
        monkeypatch.setattr(PersistentSessionStore, "flush", _nothing)
    await argon.sleep()
    port = runtime.gateway.udp_port
    assert port is not None
    await runtime.gateway.stop()  # the first process's gateway goes (its database stays, for the second)
    runtime.gateway_started = False
    settings = runtime.settings.model_copy(update={"device_udp_port": port})
    monkeypatch.undo()
    second = build_runtime(settings, clock=clock, server_key=server_key)
    await second.start_gateway()
    try:
        await argon.wake()
        await argon.wait_connected(WAIT)
        assert await second.gateway.control.ping(argon.device_id, timeout=WAIT)
        stats = second.gateway.udp_statistics()
        assert stats is not None
        assert (1, 0) == (stats.resumed, stats.cookies_sent)
    finally:
        await argon.stop()
        await second.stop()


async def test_a_device_key_that_does_not_match_is_refused(
    client: httpx.AsyncClient, ada: Account, runtime: Runtime
) -> None:
    registered = ec.generate_private_key(ec.SECP256R1())
    device = await _argon(client, ada, runtime, registered)
    device_id = device.device_id
    await device.stop()
    impostor = VirtualDevice(
        "127.0.0.1",
        runtime.gateway.udp_port or 0,
        device_id=device_id,
        device_key=ec.generate_private_key(ec.SECP256R1()),
        server_public_key=load_or_create_udp_server_key(runtime.settings.data_dir).public_key(),
        platform_id=12,
        protocol="udp",
        reconnect=False,
    )
    await impostor.start()
    with pytest.raises(Exception):  # noqa: B017,PT011 - the session is refused, whatever it says
        await impostor.wait_connected(3)
    await impostor.stop()


async def _nothing(self: object) -> None:
    return None


def _socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(0.2)
    return sock


async def test_hostile_datagrams_close_nothing(
    client: httpx.AsyncClient, ada: Account, runtime: Runtime, argon: VirtualDevice
) -> None:
    await _described(client, ada, argon)
    port = runtime.gateway.udp_port
    assert port is not None
    stats = runtime.gateway.udp_statistics()
    assert stats is not None
    before = stats.dropped
    junk = [
        b"",
        b"\x17",
        b"\x17\xfe\xfd" + bytes(10),  # truncated record header
        b"\x19\xfe\xfd" + bytes(30),  # a CID record with an unknown CID
        b"\x16\xfe\xfd" + bytes(8) + b"\x00\x05abc",  # a handshake record shorter than it says
        bytes(4000),  # oversized
        b"\xff" * 100,
    ]
    with _socket() as sock:
        for datagram in junk * 5:
            sock.sendto(datagram, ("127.0.0.1", port))
    await argon.ping()
    called = await client.post(
        f"/v1/devices/{argon.device_id}/echo_len", json={"args": "ok"}, headers=ada.auth
    )
    assert (200, 2) == (called.status_code, called.json()["return_value"])
    assert stats.dropped > before
    assert 1 == stats.sessions


async def test_a_spoofed_client_hello_flood_costs_only_bounded_cookies(runtime: Runtime) -> None:
    port = runtime.gateway.udp_port
    stats = runtime.gateway.udp_statistics()
    assert port is not None
    assert stats is not None
    key = ec.generate_private_key(ec.SECP256R1())
    client = DtlsClient(
        ClientConfig(
            signer=ecdsa_signer(key), device_public_key=key.public_key(), server_public_key=key.public_key()
        ),
        now=0.0,
    )
    client.start(0.0)
    (hello,) = client.datagrams_to_send()
    flood = 300
    replies = 0
    with _socket() as sock:
        for sent in range(1, flood + 1):
            sock.sendto(hello, ("127.0.0.1", port))
            if sent % 20 == 0:  # in batches the socket buffers hold

                async def seen(count: int = sent) -> bool:
                    return stats.datagrams >= count

                await wait_until(seen)
        sock.setblocking(False)
        while True:
            try:
                sock.recv(2048)
            except BlockingIOError:
                break
            replies += 1
    assert 0 == stats.sessions  # no state for a ClientHello without a cookie
    assert replies == stats.cookies_sent
    assert 0 < stats.cookies_sent <= 20  # the budget's burst per address (the test clock stands still)
    assert stats.over_budget == flood - stats.cookies_sent
