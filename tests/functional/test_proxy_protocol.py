"""
Devices behind a TCP load balancer that sends the PROXY protocol (decision 0031): the address the header
carries is the device's, for the API's ``last_ip_address`` too; a header from a peer that is not a trusted
proxy is not believed, and a malformed, cut or late one from a trusted proxy closes that socket only.

The load balancer is `tests.support.tcp_proxy`, relaying from 127.0.0.2 (trusted here) or 127.0.0.1 (not).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
from tests.support.api import Account, make_account
from tests.support.clock import FakeClock
from tests.support.devices import register_and_claim, wait_until
from tests.support.gateway_fakes import FakeSessions, TestDevice, connected_device, running_gateway, until
from tests.support.tcp_proxy import header_v1, header_v2, tcp_proxy

from devicecloud.gateway import DeviceGateway
from devicecloud.runtime import Runtime
from devicecloud.virtualdevice.device import VirtualDevice
from devicecloud.virtualdevice.identity import generate_identity

PROXY = "127.0.0.2"
CLIENT = ("198.51.100.23", 40123)
HEADERS = [pytest.param(header_v1, id="v1"), pytest.param(header_v2, id="v2")]


@pytest.fixture
def database_url(tmp_path) -> str:  # type: ignore[no-untyped-def]
    """The address travels through the presence book either way; the storage tests cover both backends."""
    return f"sqlite+aiosqlite:///{tmp_path / 'devicecloud.db'}"


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    return {"device_proxy_protocol": [f"{PROXY}/32"], "proxy_protocol_timeout": 5.0}


async def _device(client: httpx.AsyncClient, account: Account, runtime: Runtime, port: int) -> VirtualDevice:
    identity = generate_identity()
    await register_and_claim(client, account, identity.device_id, identity.public_key_pem())
    return VirtualDevice(
        "127.0.0.1",
        port,
        device_id=identity.device_id,
        device_key=identity.private_key,
        server_public_key=runtime.server_key.public_key(),
        reconnect=False,
    )


async def _shown(client: httpx.AsyncClient, account: Account, device_id: str) -> dict[str, Any]:
    reply = await client.get(f"/v1/devices/{device_id}", headers=account.auth)
    assert 200 == reply.status_code, reply.text
    body: dict[str, Any] = reply.json()
    return body


@pytest.mark.parametrize("header", HEADERS)
async def test_a_device_behind_a_trusted_proxy_has_the_address_the_header_carries(
    client: httpx.AsyncClient, runtime: Runtime, header: Callable[[tuple[str, int], tuple[str, int]], bytes]
) -> None:
    ada = await make_account(client, "ada@example.com")
    port = runtime.gateway_port
    async with tcp_proxy(
        port, source_address=PROXY, header=lambda _peer: header(CLIENT, ("10.0.0.1", port))
    ) as lb:
        device = await _device(client, ada, runtime, lb)
        await device.start()
        try:
            await device.wait_connected(10)
            body = await _shown(client, ada, device.device_id)
            assert (True, CLIENT[0]) == (body["online"], body["last_ip_address"])
            assert await runtime.gateway.control.ping(device.device_id, timeout=10.0)
        finally:
            await device.stop()


async def test_a_header_from_an_untrusted_peer_is_not_believed_and_fails_only_that_device(
    client: httpx.AsyncClient, runtime: Runtime
) -> None:
    """A relay at 127.0.0.1 claims an address: its socket is a direct device's, whose handshake it breaks."""
    ada = await make_account(client, "ada@example.com")
    port = runtime.gateway_port
    direct = await _device(client, ada, runtime, port)
    await direct.start()
    await direct.wait_connected(10)
    failed = runtime.gateway.statistics().handshakes_failed
    try:
        header = header_v2(CLIENT, ("10.0.0.1", port))
        async with tcp_proxy(port, source_address="127.0.0.1", header=lambda _peer: header) as lb:
            spoofing = await _device(client, ada, runtime, lb)
            await spoofing.start()
            try:

                async def refused() -> bool:
                    return runtime.gateway.statistics().handshakes_failed > failed

                await wait_until(refused)
                assert not spoofing.connected
            finally:
                await spoofing.stop()
        body = await _shown(client, ada, spoofing.device_id)
        assert (False, None) == (body["online"], body["last_ip_address"])
        assert 0 == runtime.gateway.statistics().proxy_headers_refused
        assert await runtime.gateway.control.ping(direct.device_id, timeout=10.0)
        assert "127.0.0.1" == (await _shown(client, ada, direct.device_id))["last_ip_address"]
    finally:
        await direct.stop()


# The refusals, on a bare gateway whose clock the test moves.


@pytest.fixture
def sessions() -> FakeSessions:
    return FakeSessions()


@pytest.fixture
async def gateway(sessions: FakeSessions, clock: FakeClock) -> AsyncIterator[DeviceGateway]:
    async with running_gateway(sessions, clock, proxy_protocol_from=[PROXY], proxy_header_timeout=5.0) as gw:
        yield gw


async def _from_proxy(gateway: DeviceGateway) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", gateway.port, local_addr=(PROXY, 0))


async def _closed_without_a_nonce(reader: asyncio.StreamReader) -> None:
    """The gateway closed the socket and sent nothing: no nonce, so no handshake work was spent."""
    try:
        data = await asyncio.wait_for(reader.read(), 10)
    except ConnectionResetError:
        data = b""
    assert b"" == data


MALFORMED = [
    pytest.param(b"PROXY TCP4 198.51.100.400 10.0.0.1 1 5683\r\n", id="v1-bad-address"),
    pytest.param(b"PROXY TCP4 198.51.100.4 10.0.0.1 1 5683\n", id="v1-no-cr"),
    pytest.param(b"PROXY UNKNOWN " + b"x" * 120, id="v1-too-long"),
    pytest.param(bytes.fromhex("0d0a0d0a000d0a515549540a2141000c") + bytes(12), id="v2-bad-family"),
    pytest.param(bytes.fromhex("0d0a0d0a000d0a515549540a2111ffff"), id="v2-too-long"),
    pytest.param(b"\x00" * 40, id="no-header"),
]


@pytest.mark.parametrize("data", MALFORMED)
async def test_a_malformed_header_from_a_trusted_proxy_closes_that_socket_only(
    gateway: DeviceGateway, sessions: FakeSessions, data: bytes
) -> None:
    device = await connected_device(gateway, sessions, TestDevice(1))
    try:
        reader, writer = await _from_proxy(gateway)
        writer.write(data)
        await _closed_without_a_nonce(reader)
        writer.close()
        await until(lambda: 1 == gateway.statistics().proxy_headers_refused)
        assert await gateway.control.ping(device.id, timeout=5.0)
        assert 1 == gateway.statistics().online
    finally:
        await device.close()


async def test_a_header_cut_short_closes_that_socket(gateway: DeviceGateway) -> None:
    reader, writer = await _from_proxy(gateway)
    writer.write(b"PROXY TCP4 198.51.100.4 ")
    writer.write_eof()
    await _closed_without_a_nonce(reader)
    await until(lambda: 1 == gateway.statistics().proxy_headers_refused)
    writer.close()


async def test_a_late_header_closes_that_socket_at_the_timeout(
    gateway: DeviceGateway, clock: FakeClock
) -> None:
    idle = clock.pending_timers()
    reader, writer = await _from_proxy(gateway)
    writer.write(b"PROXY TCP4 198.51.100.4")  # and nothing more
    await until(lambda: clock.pending_timers() > idle)  # the header's deadline is armed
    clock.advance(4.9)
    assert 0 == gateway.statistics().proxy_headers_refused
    clock.advance(0.2)
    await _closed_without_a_nonce(reader)
    await until(lambda: 1 == gateway.statistics().proxy_headers_refused)
    writer.close()


@pytest.mark.parametrize("header", HEADERS)
async def test_the_header_names_the_address_sessions_hear(
    gateway: DeviceGateway,
    sessions: FakeSessions,
    header: Callable[[tuple[str, int], tuple[str, int]], bytes],
) -> None:
    """The bare gateway's view: the key check and the connection report carry the header's address."""
    async with tcp_proxy(
        gateway.port, source_address=PROXY, header=lambda _: header(CLIENT, ("10.0.0.1", 1))
    ) as lb:
        device = await connected_device(_Aimed(gateway, lb), sessions, TestDevice(2))  # type: ignore[arg-type]
        try:
            checked = [call for call in sessions.calls if call[0] == "check_device_key"]
            assert [CLIENT[0]] == [call[2] for call in checked]
        finally:
            await device.close()


class _Aimed:
    """A gateway stand-in whose ``port`` is the proxy's: `connected_device` connects there."""

    def __init__(self, gateway: DeviceGateway, port: int) -> None:
        self._gateway, self.port = gateway, port

    def __getattr__(self, name: str) -> Any:
        return getattr(self._gateway, name)
