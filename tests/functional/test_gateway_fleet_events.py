"""
Events to devices at fleet scale, through the real gateway: what a device's system subscriptions (``spark``,
``particle``) receive, and that a device feed that falls behind loses events instead of its link.

The rule (docs/decisions/0012-what-devices-receive.md): an event with a system name reaches a device only
when the cloud addresses it to that device; ``spark/status`` and the other devices' system events go to the
event streams and webhooks only. Ordinary events keep the owner fan-out.

Sync point: events to one device keep their order, so once a device has received an event published last,
everything published before it to that device has arrived too.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import structlog
from tests.support.api import make_account
from tests.support.devices import handled, virtual_device, wait_until

from devicecloud.domain.accounts import User
from devicecloud.domain.events import EventFilter
from devicecloud.protocol import SubscriptionScope
from devicecloud.runtime import Runtime
from devicecloud.virtualdevice import VirtualDevice
from devicecloud.virtualdevice.identity import DeviceIdentity, generate_identity

FLEET = 300
WAIT = 60.0
QUEUE_BOUND = 20  # event_queue_bound here: the events a device feed may fall behind
DROPPED_LOG = "events to the device dropped: its link fell behind"


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    return {"event_queue_bound": QUEUE_BOUND}


class Received:
    """What each device's subscription handlers got, by device id."""

    def __init__(self) -> None:
        self.names: dict[str, list[str]] = {}

    def handler(self, device_id: str) -> Any:
        names = self.names.setdefault(device_id, [])

        def record(name: str, data: str | None) -> None:
            names.append(name)

        return record

    def got(self, device_id: str, name: str) -> bool:
        return name in self.names.get(device_id, [])


@pytest.fixture
async def fleet_devices() -> AsyncIterator[list[VirtualDevice]]:
    started: list[VirtualDevice] = []
    yield started
    await asyncio.gather(*(device.stop() for device in started))


async def make_fleet(
    client: httpx.AsyncClient, runtime: Runtime, count: int, devices: list[VirtualDevice], received: Received
) -> User:
    """
    ``count`` devices of one owner, keys registered and claimed (services, for speed: setup, not the test);
    each subscribes as Device OS does after its Hello: half like 0.7.0 (``spark``, all devices), half like
    1.2+ (``spark`` and ``particle``, my devices), plus an ordinary ``fleet/`` subscription.
    """
    account = await make_account(client, "fleet@example.com")
    owner = await runtime.accounts.get_by_username(account.email)
    key = generate_identity().private_key  # one key for all: RSA generation would dominate the test
    for n in range(count):
        identity = DeviceIdentity(secrets.token_hex(12), key)
        await runtime.device_keys.add(identity.device_id, identity.public_key_pem())
        await runtime.devices.claim(owner, identity.device_id)
        device = virtual_device(runtime, identity)
        handler = received.handler(identity.device_id)
        if n % 2:
            await device.subscribe("spark", handler)
        else:
            await device.subscribe("spark", handler, scope=SubscriptionScope.MY_DEVICES)
            await device.subscribe("particle", handler, scope=SubscriptionScope.MY_DEVICES)
        await device.subscribe("fleet/", handler, scope=SubscriptionScope.MY_DEVICES)
        devices.append(device)
    return owner


async def connect_all(runtime: Runtime, devices: list[VirtualDevice]) -> None:
    """Start every device at once; return once all are linked and their Subscribes handled."""
    await asyncio.gather(*(device.start() for device in devices))
    await asyncio.gather(*(device.wait_connected(WAIT) for device in devices))
    # The Subscribes went right after each Hello: handled once the gateway answered two pings after them.
    await asyncio.gather(*(handled(runtime, device.device_id) for device in devices))


async def test_a_connect_storm_sends_devices_no_system_events(
    client: httpx.AsyncClient, runtime: Runtime, fleet_devices: list[VirtualDevice]
) -> None:
    """
    300 devices of one owner that subscribe to ``spark`` connect at once, then half of them lose their links
    and reconnect at once while the others stay online: no device is dropped, each device's Describe is
    stored, and no device receives another's ``spark/status`` (O(fleet²) events); an ordinary event of the
    owner still reaches every device once.
    """
    received = Received()
    owner = await make_fleet(client, runtime, FLEET, fleet_devices, received)
    await connect_all(runtime, fleet_devices)
    # A reconnect storm while the rest of the fleet is online: half the links drop at once and come back.
    storm = fleet_devices[: FLEET // 2]
    for device in storm:
        await runtime.gateway.control.disconnect(device.device_id)

    async def storm_gone() -> bool:
        return runtime.gateway.statistics().links == FLEET - len(storm)

    await wait_until(storm_gone, WAIT)
    await asyncio.gather(*(device.stop() for device in storm))
    await connect_all(runtime, storm)

    await runtime.events.publish_from_api(owner, "fleet/done", "1", private=True, ttl=60)

    async def all_received() -> bool:
        return all(received.got(device.device_id, "fleet/done") for device in fleet_devices)

    await wait_until(all_received, WAIT)

    per_device = [device.statistics().events_received for device in fleet_devices]
    assert [1] * FLEET == per_device  # the sentinel only: never a sibling's spark/status
    stats = runtime.gateway.statistics()
    assert FLEET == stats.events_sent
    assert (FLEET, FLEET + len(storm), 0, 0) == (
        stats.online,
        stats.handshakes_ok,
        stats.handshakes_failed,
        stats.replaced,
    )
    assert all(device.connected for device in fleet_devices)

    async def all_described() -> bool:
        async with runtime.store.transaction(readonly=True) as tx:
            records = [await tx.devices.get(device.device_id) for device in fleet_devices]
        return all(
            record is not None and "functions" in runtime.sessions.presence.overlay(record).describe
            for record in records
        )

    await wait_until(all_described, WAIT)


async def test_system_events_reach_only_the_device_they_are_addressed_to(
    client: httpx.AsyncClient, runtime: Runtime, fleet_devices: list[VirtualDevice]
) -> None:
    """
    A sibling's ``spark/status`` and its own ``particle/device/updates/forced`` (Device OS would take it as
    its own flag), or the owner's ``spark…`` event from the API, reach no device; an event the cloud
    addresses to one device reaches that one only. The owner's stream sees them all.
    """
    received = Received()
    owner = await make_fleet(client, runtime, 2, fleet_devices, received)
    listener, sibling = fleet_devices  # spark + particle for my devices; spark for all devices
    stream = runtime.bus.subscribe(EventFilter(prefix="particle/", owner_id=owner.id))
    await connect_all(runtime, [listener])
    await connect_all(runtime, [sibling])  # its spark/status online comes after listener subscribed

    await sibling.publish("particle/device/updates/forced", "true", private=True, with_ack=True)
    await runtime.events.publish_from_api(owner, "spark/announcement", "x", private=False, ttl=60)
    await runtime.events.publish_to_device(listener.device_id, "particle/device/updates/pending", "true")
    await runtime.events.publish_from_api(owner, "fleet/done", "1", private=True, ttl=60)

    async def both_done() -> bool:
        return all(received.got(device.device_id, "fleet/done") for device in fleet_devices)

    await wait_until(both_done, WAIT)
    assert ["particle/device/updates/pending", "fleet/done"] == received.names[listener.device_id]
    assert ["fleet/done"] == received.names[sibling.device_id]
    stream.close()
    seen = [(event.name, event.device_id) async for event in stream]
    assert [
        ("particle/device/updates/forced", sibling.device_id),
        ("particle/device/updates/pending", listener.device_id),
    ] == seen


async def test_a_device_feed_that_falls_behind_loses_events_not_its_link(
    client: httpx.AsyncClient, runtime: Runtime, fleet_devices: list[VirtualDevice]
) -> None:
    """
    A burst the link cannot forward in time: past the feed's bound the device loses events, counted and
    logged once per burst at most (and the rest when the link ends), and keeps its link.
    """
    received = Received()
    owner = await make_fleet(client, runtime, 1, fleet_devices, received)
    device = fleet_devices[0]
    await connect_all(runtime, [device])
    link = runtime.gateway.link(device.device_id)

    async def burst(tag: str) -> None:
        # No await yields between these publishes: the link's forwarder cannot run, its feed fills.
        for n in range(100):
            await runtime.events.publish_from_api(owner, f"fleet/{tag}/{n}", None, private=True, ttl=60)
        await runtime.events.publish_from_api(owner, "fleet/done", tag, private=True, ttl=60)

        async def forwarded() -> bool:
            return len(received.names[device.device_id]) == QUEUE_BOUND

        await wait_until(forwarded, WAIT)  # the feed's bound, then the rest was lost (the sentinel too)
        assert [f"fleet/{tag}/{n}" for n in range(QUEUE_BOUND)] == received.names[device.device_id]
        received.names[device.device_id].clear()

    with structlog.testing.capture_logs() as logs:
        await burst("a")
        await burst("b")  # within the same minute: counted, not logged
        await handled(runtime, device.device_id)
        stats = runtime.gateway.statistics()
        assert (2 * QUEUE_BOUND, 2 * (101 - QUEUE_BOUND)) == (stats.events_sent, stats.events_dropped)
        assert 2 * (101 - QUEUE_BOUND) == runtime.bus.statistics()["dropped_events"]
        assert link is runtime.gateway.link(device.device_id)
        assert device.connected
        assert 1 == device.statistics().connects
        await device.stop()

        async def link_ended() -> bool:
            return runtime.gateway.statistics().links == 0

        await wait_until(link_ended, WAIT)
    dropped = [(entry["dropped"], entry["total"]) for entry in logs if entry["event"] == DROPPED_LOG]
    assert [(81, 81), (81, 162)] == dropped


async def test_a_device_that_reads_slowly_loses_events_not_its_link(
    client: httpx.AsyncClient, runtime: Runtime, fleet_devices: list[VirtualDevice]
) -> None:
    """
    A device that stops reading: once its socket's buffers are full the gateway drops events for it
    instead of buffering them until the link must end; the link stays up.
    """
    received = Received()
    owner = await make_fleet(client, runtime, 1, fleet_devices, received)
    device = fleet_devices[0]
    await connect_all(runtime, [device])
    device.go_silent()  # reads nothing more; the socket stays open
    data = "x" * 1024
    for n in range(50_000):  # far more than any socket buffers: ends at the first drop
        await runtime.events.publish_from_api(owner, f"fleet/{n}", data, private=True, ttl=60)
        await asyncio.sleep(0)  # a yield, not a wait: the forwarder writes each event
        if runtime.gateway.statistics().events_dropped or not runtime.gateway.control.is_online(
            device.device_id
        ):
            break
    stats = runtime.gateway.statistics()
    assert stats.events_dropped == 1
    assert runtime.gateway.control.is_online(device.device_id)
    assert (1, 1) == (stats.links, stats.online)
