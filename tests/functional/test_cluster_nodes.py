"""
Several nodes on one database (SQLite and PostgreSQL): each node marks offline only what it held, and a
link that ended after its device moved to another node writes nothing.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from tests.support.api import Account, make_account
from tests.support.clock import FakeClock
from tests.support.devices import connect_device, register_and_claim, virtual_device, wait_until
from tests.support.notifier import RecordingNotifier

from devicecloud.domain.devices import Device
from devicecloud.runtime import Runtime, build_runtime
from devicecloud.settings import Settings
from devicecloud.virtualdevice.device import VirtualDevice
from devicecloud.virtualdevice.identity import generate_identity

LEASE = 10.0  # shorter than the keep-alive window: moving the clock past it drops no link


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    return {"node_lease": LEASE}


@pytest.fixture
async def node_factory(
    settings: Settings, notifier: RecordingNotifier, server_key: rsa.RSAPrivateKey
) -> AsyncIterator[Callable[..., Awaitable[Runtime]]]:
    """Start more nodes on the test's database (each with its own generated node id), stopped at the end."""
    started: list[Runtime] = []

    async def start(clock: FakeClock, **overrides: object) -> Runtime:
        node_settings = settings.model_copy(update=overrides) if overrides else settings
        node = build_runtime(node_settings, clock=clock, notifier=notifier, server_key=server_key)
        await node.start_gateway()
        started.append(node)
        return node

    yield start
    for node in reversed(started):
        await node.stop()


@asynccontextmanager
async def api(node: Runtime) -> AsyncIterator[httpx.AsyncClient]:
    """The HTTP API of one node."""
    transport = httpx.ASGITransport(app=node.asgi_app(manage_lifecycle=False), client=("203.0.113.8", 40000))
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
        yield http


async def online_through(node: Runtime, account: Account, device_id: str) -> bool:
    async with api(node) as http:
        response = await http.get(f"/v1/devices/{device_id}", headers=account.auth)
    assert 200 == response.status_code, response.text
    return bool(response.json()["online"])


def presence(device: Device) -> tuple[object, ...]:
    """What a presence write sets (Describes, which a device sends alike on every link, are not fenced)."""
    return (
        device.online,
        device.node_id,
        device.session_epoch,
        device.last_ip_address,
        device.last_handshake_at,
        device.last_heard,
    )


async def record(node: Runtime, device_id: str) -> Device:
    async with node.store.transaction(readonly=True) as tx:
        found = await tx.devices.get(device_id)
    assert found is not None
    return found


async def device_on(node: Runtime, client: httpx.AsyncClient, account: Account) -> VirtualDevice:
    """A new device of ``account``, connected to ``node``'s gateway and written behind."""
    identity = generate_identity()
    await register_and_claim(client, account, identity.device_id, identity.public_key_pem())
    device = virtual_device(node, identity)
    await device.start()
    await device.wait_connected(10)
    await node.sessions.presence.flush()
    return device


async def test_restarting_a_node_leaves_the_other_nodes_devices_online(
    client: httpx.AsyncClient,
    runtime: Runtime,
    clock: FakeClock,
    node_factory: Callable[..., Awaitable[Runtime]],
) -> None:
    """
    Node A holds one device, node B another; B restarts (stop, start again): A's device stays online for
    every node's API, B's is offline until it reconnects. Before node ids, B's start marked both offline.
    """
    ada = await make_account(client, "ada@example.com")
    on_a = await connect_device(client, ada, runtime)
    await runtime.sessions.presence.flush()
    node_b = await node_factory(clock)
    on_b = await device_on(node_b, client, ada)
    try:
        assert (runtime.node.node_id, node_b.node.node_id) == (
            (await record(runtime, on_a.device_id)).node_id,
            (await record(runtime, on_b.device_id)).node_id,
        )
        await on_b.stop()
        await node_b.stop()
        assert not await online_through(runtime, ada, on_b.device_id)
        restarted = await node_factory(clock)
        assert restarted.node.node_id != node_b.node.node_id  # generated at each start
        assert 0 == restarted.node.swept
        assert await online_through(restarted, ada, on_a.device_id)
        assert await online_through(runtime, ada, on_a.device_id)
        assert (await record(runtime, on_a.device_id)).online
    finally:
        await on_a.stop()


async def test_a_node_with_a_configured_id_marks_its_own_previous_devices_offline_at_start(
    client: httpx.AsyncClient,
    runtime: Runtime,
    clock: FakeClock,
    node_factory: Callable[..., Awaitable[Runtime]],
) -> None:
    """
    A node that died with its devices written online comes back under the same configured id: it marks
    those devices offline at once (no link of a previous run survives), and leaves node A's alone.
    """
    ada = await make_account(client, "ada@example.com")
    on_a = await connect_device(client, ada, runtime)
    await runtime.sessions.presence.flush()
    node_b = await node_factory(FakeClock(clock.now()), node_id="node-b")  # its own clock: it never renews
    on_b = await device_on(node_b, client, ada)
    try:
        assert (await record(runtime, on_b.device_id)).online
        back = await node_factory(clock, node_id="node-b")  # same id, while the old one still "runs"
        assert 1 == back.node.swept
        assert not (await record(runtime, on_b.device_id)).online
        assert (await record(runtime, on_a.device_id)).online
    finally:
        await on_a.stop()
        await on_b.stop()


async def test_a_node_that_stops_renewing_has_its_devices_marked_offline_and_comes_back(
    client: httpx.AsyncClient,
    runtime: Runtime,
    clock: FakeClock,
    node_factory: Callable[..., Awaitable[Runtime]],
) -> None:
    """
    Node B stops renewing its lease (hung, or killed): past the lease node A marks B's devices offline and
    forgets B, never its own. When B renews again it finds itself forgotten and writes its devices again.
    """
    ada = await make_account(client, "ada@example.com")
    on_a = await connect_device(client, ada, runtime)
    await runtime.sessions.presence.flush()
    b_clock = FakeClock(clock.now())  # B's timers run only when this clock moves
    node_b = await node_factory(b_clock)
    on_b = await device_on(node_b, client, ada)
    try:
        renewals = runtime.node.renewals
        clock.advance(LEASE + 1)

        async def renewed() -> bool:
            return runtime.node.renewals > renewals and not (await record(runtime, on_b.device_id)).online

        await wait_until(renewed, timeout=10)
        assert (await record(runtime, on_a.device_id)).online
        async with runtime.store.transaction(readonly=True) as tx:
            assert [runtime.node.node_id] == list(await tx.nodes.live())

        b_clock.advance(LEASE)  # B wakes up: its renewal finds it was forgotten

        async def rewritten() -> bool:
            await node_b.sessions.presence.flush()
            return (await record(runtime, on_b.device_id)).online

        await wait_until(rewritten, timeout=10)
        assert node_b.node.node_id == (await record(runtime, on_b.device_id)).node_id
    finally:
        await on_a.stop()
        await on_b.stop()


async def test_a_stale_link_ending_after_its_device_moved_writes_nothing(
    client: httpx.AsyncClient,
    runtime: Runtime,
    clock: FakeClock,
    node_factory: Callable[..., Awaitable[Runtime]],
) -> None:
    """
    A device's link on node A goes quiet, the device reconnects to node B, and only then does A's link end:
    the record stays online on B; A's write of that link's offline state (and of its late Hello) is fenced.
    """
    ada = await make_account(client, "ada@example.com")
    identity = generate_identity()
    await register_and_claim(client, ada, identity.device_id, identity.public_key_pem())
    node_b = await node_factory(clock)
    first = virtual_device(runtime, identity)
    await first.start()
    await first.wait_connected(10)
    await runtime.sessions.presence.flush()
    clock.advance(0.25)
    second = virtual_device(node_b, identity)
    await second.start()
    await second.wait_connected(10)
    try:
        await node_b.sessions.presence.flush()
        moved = await record(runtime, identity.device_id)
        assert (True, node_b.node.node_id) == (moved.online, moved.node_id)
        await first.stop()

        async def ended() -> bool:
            return not runtime.gateway.control.is_online(identity.device_id)

        await wait_until(ended)
        clock.advance(0.25)
        assert 0 < await runtime.sessions.presence.flush()  # A writes its link's end: the fence drops it
        # Presence is fenced; a Describe the old link got late is the same device's, and is not.
        assert presence(moved) == presence(await record(runtime, identity.device_id))
        assert await online_through(runtime, ada, identity.device_id)
    finally:
        await first.stop()
        await second.stop()


async def test_an_older_links_late_write_never_overwrites_a_newer_one(
    client: httpx.AsyncClient,
    runtime: Runtime,
    clock: FakeClock,
    node_factory: Callable[..., Awaitable[Runtime]],
) -> None:
    """
    The device connects to A, then to B; B's write lands first, A's (older link: online, then offline)
    after it: both of A's writes are fenced, the record names B.
    """
    ada = await make_account(client, "ada@example.com")
    identity = generate_identity()
    await register_and_claim(client, ada, identity.device_id, identity.public_key_pem())
    node_b = await node_factory(clock)
    first = virtual_device(runtime, identity)
    await first.start()
    await first.wait_connected(10)
    clock.advance(0.25)
    second = virtual_device(node_b, identity)
    await second.start()
    await second.wait_connected(10)
    try:
        await node_b.sessions.presence.flush()
        moved = await record(runtime, identity.device_id)
        await runtime.sessions.presence.flush()  # A's online, older
        assert presence(moved) == presence(await record(runtime, identity.device_id))
        await first.stop()
        await wait_until(lambda: _false_async(runtime.gateway.control.is_online(identity.device_id)))
        await runtime.sessions.presence.flush()  # A's offline
        assert (True, node_b.node.node_id) == (
            (await record(runtime, identity.device_id)).online,
            (await record(runtime, identity.device_id)).node_id,
        )
    finally:
        await first.stop()
        await second.stop()


async def _false_async(value: bool) -> bool:
    return not value
