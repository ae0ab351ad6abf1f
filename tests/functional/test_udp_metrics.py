"""
/metrics for the UDP/DTLS gateway (issue 13): a Gen3 device's full handshake, its sleep (the session kept),
its resumption without a handshake, datagrams in and out and the ones dropped by reason, and a handshake
that the device abandoned, as Prometheus scrapes them.
"""

from __future__ import annotations

import asyncio
import socket

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from prometheus_client.parser import text_string_to_metric_families
from tests.support.api import Account, make_account
from tests.support.clock import FakeClock
from tests.support.devices import wait_until

from devicecloud.protocol.dtls import ClientConfig, DtlsClient, ecdsa_signer
from devicecloud.protocol.udp import idle_timeout_for
from devicecloud.runtime import Runtime
from devicecloud.store.keyfiles import load_or_create_udp_server_key
from devicecloud.virtualdevice import VirtualDevice

WAIT = 10.0
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


@pytest.fixture
def database_url(tmp_path) -> str:  # type: ignore[no-untyped-def]
    return f"sqlite+aiosqlite:///{tmp_path / 'devicecloud.db'}"


async def scrape(client: httpx.AsyncClient) -> Samples:
    response = await client.get("/metrics")
    assert 200 == response.status_code
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def udp(samples: Samples) -> dict[str, float]:
    """The UDP/DTLS samples as ``name{label=value}`` → value."""
    return {
        name + "".join(f"{{{k}={v}}}" for k, v in labels): value
        for (name, labels), value in samples.items()
        if name.startswith(("devicecloud_udp_", "devicecloud_dtls_"))
    }


def _socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(WAIT)
    return sock


async def _argon(
    client: httpx.AsyncClient, ada: Account, runtime: Runtime, *, register: bool = True
) -> VirtualDevice:
    key = ec.generate_private_key(ec.SECP256R1())
    device_id = "e00fce68" + key.public_key().public_numbers().x.to_bytes(32, "big")[:8].hex()
    pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    if register:
        sent = await client.post(
            f"/v1/provisioning/{device_id}",
            json={"deviceID": device_id, "publicKey": pem.decode(), "algorithm": "ecc"},
            headers=ada.auth,
        )
        assert 200 == sent.status_code, sent.text
    port = runtime.gateway.udp_port
    assert port is not None
    return VirtualDevice(
        "127.0.0.1",
        port,
        device_id=device_id,
        device_key=key,
        server_public_key=load_or_create_udp_server_key(runtime.settings.data_dir).public_key(),
        platform_id=13,
        protocol="udp",
        reconnect=False,
    )


async def test_udp_metrics_follow_a_device_that_connects_sleeps_and_resumes(
    client: httpx.AsyncClient, runtime: Runtime, clock: FakeClock
) -> None:
    ada = await make_account(client, "ada@example.com")
    stats = runtime.gateway.udp_statistics()
    port = runtime.gateway.udp_port
    assert stats is not None
    assert port is not None
    before = udp(await scrape(client))
    assert 0 == before["devicecloud_udp_devices_connected"]
    assert 0 == before["devicecloud_dtls_handshakes_total{kind=full}"]

    boron = await _argon(client, ada, runtime)
    await boron.start()
    try:
        await boron.wait_connected(WAIT)
        await boron.ping()
        up = udp(await scrape(client))
        assert (1, 1, 1) == (
            up["devicecloud_dtls_handshakes_total{kind=full}"],
            up["devicecloud_udp_devices_connected"],
            up["devicecloud_udp_sessions"],
        )
        assert 0 == up["devicecloud_dtls_handshakes_total{kind=resumed}"]
        assert 1 == up["devicecloud_dtls_cookies_sent_total"]  # the first ClientHello's HelloVerifyRequest
        assert up["devicecloud_udp_datagrams_in_total"] >= 4  # two ClientHellos, the flight, Hello, ping
        assert up["devicecloud_udp_datagrams_out_total"] >= 3

        await boron.sleep()
        clock.advance(idle_timeout_for(13) + 1)  # the cloud drops the silent link and keeps its session

        async def asleep() -> bool:
            return stats.sessions == 0

        await wait_until(asleep)
        with _socket() as sock:  # while it sleeps: one record for no session at all, one oversized datagram
            sock.sendto(
                b"\x19\xfe\xfd\x00\x01" + bytes(6) + bytes(8) + (40).to_bytes(2, "big") + bytes(40),
                ("127.0.0.1", port),
            )
            sock.sendto(bytes(4000), ("127.0.0.1", port))

            async def judged() -> bool:
                return stats.dropped >= 2

            await wait_until(judged)
        slept = udp(await scrape(client))
        assert (0, 0, 1) == (
            slept["devicecloud_udp_devices_connected"],
            slept["devicecloud_udp_sessions"],
            slept["devicecloud_dtls_sessions_kept"],
        )
        assert 1 == slept["devicecloud_udp_datagrams_dropped_total{reason=unknown_session}"]
        assert 1 == slept["devicecloud_udp_datagrams_dropped_total{reason=invalid}"]
        assert 0 == sum(v for k, v in slept.items() if k.startswith("devicecloud_dtls_handshakes_failed"))

        await boron.wake()
        await boron.wait_connected(WAIT)
        await boron.ping()
        woke = udp(await scrape(client))
        assert (1, 1, 1, 0) == (
            woke["devicecloud_dtls_handshakes_total{kind=full}"],
            woke["devicecloud_dtls_handshakes_total{kind=resumed}"],
            woke["devicecloud_udp_devices_connected"],
            woke["devicecloud_dtls_sessions_kept"],
        )
        assert 1 == woke["devicecloud_dtls_cookies_sent_total"]  # no new ClientHello
        assert woke["devicecloud_udp_datagrams_in_total"] > slept["devicecloud_udp_datagrams_in_total"]
    finally:
        await boron.stop()


async def test_an_abandoned_handshake_counts_as_failed_by_timeout(
    runtime: Runtime, client: httpx.AsyncClient, clock: FakeClock
) -> None:
    port = runtime.gateway.udp_port
    stats = runtime.gateway.udp_statistics()
    assert port is not None
    assert stats is not None
    key = ec.generate_private_key(ec.SECP256R1())
    device = DtlsClient(
        ClientConfig(
            signer=ecdsa_signer(key), device_public_key=key.public_key(), server_public_key=key.public_key()
        ),
        now=0.0,
    )
    device.start(0.0)
    loop = asyncio.get_running_loop()
    with _socket() as sock:
        sock.setblocking(False)
        (hello,) = device.datagrams_to_send()
        sock.sendto(hello, ("127.0.0.1", port))
        async with asyncio.timeout(WAIT):
            device.receive_datagram(await loop.sock_recv(sock, 2048), 0.0)  # HelloVerifyRequest
        (again,) = device.datagrams_to_send()
        sock.sendto(again, ("127.0.0.1", port))  # with the cookie: a session starts
        async with asyncio.timeout(WAIT):
            await loop.sock_recv(sock, 2048)  # the server's flight; the device says nothing more

        async def started() -> bool:
            return stats.sessions == 1

        await wait_until(started)
        clock.advance(120.0)

        async def ended() -> bool:
            return stats.sessions == 0

        await wait_until(ended)
    metrics = udp(await scrape(client))
    assert 1 == metrics["devicecloud_dtls_handshakes_failed_total{reason=timeout}"]
    assert 0 == metrics["devicecloud_dtls_handshakes_total{kind=full}"]
    assert metrics["devicecloud_udp_retransmissions_total{layer=dtls}"] >= 0


async def test_a_device_refused_at_its_hello_counts_as_failed_by_device(
    client: httpx.AsyncClient, runtime: Runtime
) -> None:
    """The DTLS handshake completes (any P-256 key passes it), but no key is registered for the device."""
    ada = await make_account(client, "ada@example.com")
    stranger = await _argon(client, ada, runtime, register=False)
    stats = runtime.gateway.udp_statistics()
    assert stats is not None
    await stranger.start()
    try:

        async def refused() -> bool:
            return stranger.counters.disconnects > 0 and stats.sessions == 0

        await wait_until(refused)
    finally:
        await stranger.stop()
    metrics = udp(await scrape(client))
    assert (1, 1, 0) == (
        metrics["devicecloud_dtls_handshakes_failed_total{reason=device}"],
        metrics["devicecloud_dtls_handshakes_total{kind=full}"],
        metrics["devicecloud_udp_devices_connected"],
    )
