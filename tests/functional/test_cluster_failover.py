"""
A node killed with SIGKILL (issue 14, acceptance): node A is a real ``devicecloud serve`` process on
PostgreSQL and NATS, nodes B and C run in the test on the same database, bus and device port (SO_REUSEPORT).
A dies: a device that does not come back is marked offline by B within the keep-alive window and its
``spark/status`` offline is published; a device that reconnects lands on B and is called through C; the
webhook A was sending when it died is delivered by another node.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select
from tests.conftest import FAST_HASH
from tests.support.cluster import api_of, bus_url
from tests.support.devices import wait_until
from tests.support.server import LiveServer, free_port, live_server

from devicecloud.domain.events import EventFilter
from devicecloud.runtime import Runtime, build_runtime
from devicecloud.settings import Settings
from devicecloud.store.tables import devices
from devicecloud.virtualdevice import VirtualDevice, generate_identity
from devicecloud.virtualdevice.support import Backoff

pytestmark = [pytest.mark.nats, pytest.mark.postgres]
__all__ = ["bus_url"]  # fixture
LEASE = 3.0  # node lease: a dead node's devices are offline within 4/3 of it (plus a flush)
WEBHOOK_TIMEOUT = 2  # a delivery's lease is 2 × this + 10 s: how long A's in-flight send stays its own
KEEPALIVE_WINDOW = 35.0


@pytest.fixture
def device_port() -> int:
    return free_port()


@pytest.fixture
def node_a(tmp_path: Path, postgres_url: str, bus_url: str, device_port: int) -> Iterator[LiveServer]:
    """Node A: ``devicecloud serve`` in its own process, the only one on the device port at first."""
    env = {
        "DEVICECLOUD_DATABASE_URL": postgres_url,
        "DEVICECLOUD_BUS_URL": bus_url,
        "DEVICECLOUD_NODE_LEASE": str(LEASE),
        "DEVICECLOUD_REUSE_PORT": "true",
        "DEVICECLOUD_DEMO_DEVICE": "false",
        "DEVICECLOUD_RATE_LIMITS_ENABLED": "false",
        "DEVICECLOUD_WEBHOOK_TIMEOUT": str(WEBHOOK_TIMEOUT),
        "DEVICECLOUD_WEBHOOK_BLOCK_PRIVATE": "false",
        "DEVICECLOUD_LOG_LEVEL": "error",
    }
    with live_server(tmp_path / "data", device_port=device_port, **env) as server:
        yield server


def node_settings(node_a: LiveServer, postgres_url: str, bus_url: str, device_port: int) -> Settings:
    """B's and C's settings: A's database, bus, data dir (its server key) and device port."""
    return Settings(
        data_dir=node_a.data_dir,
        database_url=postgres_url,
        bus_url=bus_url,
        device_host="0.0.0.0",  # noqa: S104 - A listens on every address; the kernel pairs equal sockets
        device_port=device_port,
        reuse_port=True,
        node_lease=LEASE,
        webhook_timeout=WEBHOOK_TIMEOUT,
        webhook_block_private=False,
        rate_limits_enabled=False,
        **FAST_HASH,
    )


class Sink:
    """A webhook target: the first request never gets an answer (A dies while it waits), the rest get 200."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []
        self.first = asyncio.Event()
        self.answered = 0
        self._never = asyncio.Event()
        self._handlers: set[asyncio.Task[None]] = set()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._handlers.add(asyncio.current_task())  # type: ignore[arg-type]
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.split(b"\r\n")
            length = next(
                (
                    int(line.split(b":", 1)[1])
                    for line in lines
                    if line.lower().startswith(b"content-length:")
                ),
                0,
            )
            self.bodies.append(await reader.readexactly(length))
            if len(self.bodies) == 1:
                self.first.set()
                await self._never.wait()
                return
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            await writer.drain()
            self.answered += 1
        finally:
            writer.close()

    async def close(self) -> None:
        self._never.set()
        await asyncio.gather(*self._handlers, return_exceptions=True)


@contextlib.asynccontextmanager
async def sink_server() -> AsyncIterator[tuple[Sink, int]]:
    sink = Sink()
    server = await asyncio.start_server(sink.handle, "127.0.0.1", 0)
    try:
        yield sink, server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await sink.close()  # the request A never got an answer to ends, and its socket closes
        await server.wait_closed()


async def holder(node: Runtime, device_id: str) -> tuple[bool, str | None]:
    async with node.store.engine.connect() as conn:
        row = (
            await conn.execute(select(devices.c.online, devices.c.node_id).where(devices.c.id == device_id))
        ).one()
    return bool(row.online), row.node_id


def device_for(node_a: LiveServer, device_port: int, *, reconnect: bool) -> tuple[VirtualDevice, str, str]:
    identity = generate_identity()
    device = VirtualDevice(
        "127.0.0.1",
        device_port,
        device_id=identity.device_id,
        device_key=identity.private_key,
        server_public_key=(node_a.data_dir / "server_key.pub.pem").read_bytes(),
        reconnect=reconnect,
        backoff=Backoff(initial=0.05, maximum=0.3, jitter=False),
    )
    device.add_function("double", lambda argument: 2 * len(argument))
    return device, identity.device_id, identity.public_key_pem()


async def test_a_killed_nodes_devices_go_offline_reconnect_elsewhere_and_its_webhook_is_delivered(
    node_a: LiveServer, postgres_url: str, bus_url: str, device_port: int
) -> None:
    settings = node_settings(node_a, postgres_url, bus_url, device_port)
    async with httpx.AsyncClient(base_url=node_a.url, timeout=30) as a:
        login = await a.post(
            "/oauth/token",
            data={"grant_type": "password", "username": node_a.email, "password": node_a.password},
            auth=("particle", "particle"),
        )
        auth = {"Authorization": f"Bearer {login.json()['access_token']}"}
        moving, moving_id, moving_key = device_for(node_a, device_port, reconnect=True)
        gone, gone_id, gone_key = device_for(node_a, device_port, reconnect=False)
        for device_id, key in ((moving_id, moving_key), (gone_id, gone_key)):
            sent = await a.post(
                f"/v1/provisioning/{device_id}",
                json={"deviceID": device_id, "publicKey": key, "algorithm": "rsa"},
                headers=auth,
            )
            assert 200 == sent.status_code, sent.text
            assert 200 == (await a.post("/v1/devices", json={"id": device_id}, headers=auth)).status_code
        await moving.start()
        await gone.start()
        nodes: list[Runtime] = []
        async with sink_server() as (sink, sink_port):
            try:
                await moving.wait_connected(10)
                await gone.wait_connected(10)

                b = build_runtime(settings)  # B listens on the device port only now: the devices are on A
                await b.start_gateway()
                nodes.append(b)
                c = build_runtime(settings)  # C serves the API only
                await c.start()
                nodes.append(c)
                owner = await c.accounts.get_by_username(node_a.email)
                statuses = c.bus.subscribe(EventFilter(prefix="spark/status", owner_id=owner.id))

                async def on_a() -> bool:
                    both = {await holder(b, moving_id), await holder(b, gone_id)}
                    return len(both) == 1 and all(online and node for online, node in both)

                await wait_until(on_a, timeout=10)  # presence is written behind: within a flush
                a_node = (await holder(b, gone_id))[1]
                assert a_node not in (b.node.node_id, c.node.node_id)

                hook = await a.post(
                    "/v1/webhooks",
                    json={"event": "failover", "url": f"http://127.0.0.1:{sink_port}/hook"},
                    headers=auth,
                )
                assert 201 == hook.status_code, hook.text
                await c.bus.settle()
                published = await a.post(
                    "/v1/devices/events", json={"name": "failover", "data": "once"}, headers=auth
                )
                assert 200 == published.status_code, published.text
                await asyncio.wait_for(sink.first.wait(), 15)  # A sends it: B and C deliver nothing yet
                await b.start_webhooks()
                await c.start_webhooks()

                node_a.process.kill()
                killed = time.monotonic()
                node_a.process.wait(10)

                async def swept() -> bool:
                    return not (await holder(b, gone_id))[0]

                await wait_until(swept, timeout=LEASE * 4 / 3 + 5)
                assert time.monotonic() - killed < KEEPALIVE_WINDOW
                seen: list[tuple[str, str]] = []

                async def offline_published() -> bool:
                    with contextlib.suppress(TimeoutError):
                        event = await asyncio.wait_for(anext(aiter(statuses)), 0.2)
                        seen.append((event.coreid or "", event.data or ""))
                    return (gone_id, "offline") in seen

                await wait_until(offline_published, timeout=10)

                async def moved_to_b() -> bool:
                    return await holder(b, moving_id) == (True, b.node.node_id)

                await wait_until(moved_to_b, timeout=KEEPALIVE_WINDOW)
                await b.bus.settle()
                async with api_of(c) as http:
                    called = await http.post(
                        f"/v1/devices/{moving_id}/double", data={"arg": "abcd"}, headers=auth
                    )
                assert 200 == called.status_code, called.text
                assert 8 == called.json()["return_value"]

                async def delivered_again() -> bool:
                    return sink.answered >= 1

                await wait_until(delivered_again, timeout=2 * WEBHOOK_TIMEOUT + 10 + 10)
                assert sink.bodies[1] == sink.bodies[0]  # the same delivery, sent again by B or C
                assert 1 == sink.answered
            finally:
                await moving.stop()
                await gone.stop()
                for node in reversed(nodes):
                    await node.stop()
