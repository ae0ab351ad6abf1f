"""
Device presence on a real runtime (SQLite and PostgreSQL): kept in memory, read through at once, written
behind in batches on the injected clock.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import httpx
from tests.support.api import make_account
from tests.support.clock import FakeClock
from tests.support.devices import connect_device, wait_until

from devicecloud.domain.devices import Device, DeviceHelloInfo
from devicecloud.domain.events import EventFilter
from devicecloud.runtime import Runtime
from devicecloud.services.device_presence import DevicePresenceBook
from devicecloud.store.interfaces import UnitOfWork

DEVICE = "0123456789abcdef01234567"
KEY = b"der-of-the-device-key"
HELLO = DeviceHelloInfo(platform_id=6, product_id=None, product_firmware_version=None)
INTERVAL = 1.0  # SessionPolicy.presence_flush_interval


async def stored(runtime: Runtime, device_id: str = DEVICE) -> Device:
    async with runtime.store.transaction(readonly=True) as tx:
        device = await tx.devices.get(device_id)
    assert device is not None
    return device


async def named_device(runtime: Runtime, device_id: str = DEVICE) -> None:
    async with runtime.store.transaction() as tx:
        await tx.devices.add(device_id, now=runtime.clock.now(), public_key=KEY, name="quiet_otter")


async def connect(runtime: Runtime, device_id: str = DEVICE, ip: str = "10.1.2.3") -> None:
    """What a link reports for one handshake: the key check, then the Hello."""
    assert KEY == await runtime.sessions.check_device_key(device_id, KEY, ip)
    await runtime.sessions.device_connected(device_id, ip, HELLO)


async def flushed(runtime: Runtime, count: int) -> None:
    """Wait (real time, briefly) for the flush task the clock started to finish its write."""

    async def done() -> bool:
        return runtime.sessions.presence.statistics().flushes >= count

    await wait_until(done, timeout=5)


async def test_connect_is_read_at_once_and_written_after_the_interval(
    runtime: Runtime, clock: FakeClock
) -> None:
    """Right after connect the service reads the device online; the store gets it one interval later."""
    await named_device(runtime)
    await connect(runtime)
    seen = runtime.sessions.presence.overlay(await stored(runtime))
    assert (True, "10.1.2.3", clock.now(), clock.now(), 6) == (
        seen.online,
        seen.last_ip_address,
        seen.last_handshake_at,
        seen.last_heard,
        seen.platform_id,
    )
    assert not (await stored(runtime)).online  # not written yet
    connected_at = clock.now()
    clock.advance(INTERVAL)
    await flushed(runtime, 1)
    record = await stored(runtime)
    assert (True, "10.1.2.3", connected_at, connected_at, 6) == (
        record.online,
        record.last_ip_address,
        record.last_handshake_at,
        record.last_heard,
        record.platform_id,
    )


async def test_a_short_visit_is_one_row_and_then_the_record_is_the_truth(
    runtime: Runtime, clock: FakeClock
) -> None:
    """Connect and disconnect within one interval: one row written (offline), and the entry is dropped."""
    await named_device(runtime)
    await connect(runtime)
    connected_at = clock.now()
    clock.advance(0.5)
    await runtime.sessions.device_disconnected(DEVICE)
    clock.advance(INTERVAL)
    await flushed(runtime, 1)
    stats = runtime.sessions.presence.statistics()
    assert (1, 1, 0, 0) == (stats.flushes, stats.rows_written, stats.tracked, stats.dirty)
    record = await stored(runtime)
    assert (False, connected_at, connected_at) == (record.online, record.last_handshake_at, record.last_heard)
    assert record == runtime.sessions.presence.overlay(record)


async def test_many_devices_share_one_flush(runtime: Runtime, clock: FakeClock) -> None:
    """Twenty devices connecting within one interval are written by one transaction."""
    ids = [f"{n:024x}" for n in range(1, 21)]
    for device_id in ids:
        await named_device(runtime, device_id)
        await connect(runtime, device_id)
    clock.advance(INTERVAL)
    await flushed(runtime, 1)
    assert (1, 20) == (
        runtime.sessions.presence.statistics().flushes,
        runtime.sessions.presence.statistics().rows_written,
    )
    assert all([(await stored(runtime, device_id)).online for device_id in ids])


async def test_heard_is_kept_on_every_message_and_written_by_the_next_flush(
    runtime: Runtime, clock: FakeClock
) -> None:
    """Each message sets last heard in memory (read at once); the next flush writes the latest, exact."""
    await named_device(runtime)
    await connect(runtime)
    clock.advance(INTERVAL)
    await flushed(runtime, 1)
    clock.advance(60)
    runtime.sessions.device_heard(DEVICE)
    clock.advance(0.4)
    runtime.sessions.device_heard(DEVICE)
    heard_at = clock.now()
    assert heard_at == runtime.sessions.presence.overlay(await stored(runtime)).last_heard
    assert (1, 1) == (
        runtime.sessions.presence.statistics().dirty,
        runtime.sessions.presence.statistics().flushes,
    )
    clock.advance(INTERVAL)
    await flushed(runtime, 2)
    assert heard_at == (await stored(runtime)).last_heard
    assert (
        2 == runtime.sessions.presence.statistics().rows_written
    )  # one row per flush, however many messages


async def test_close_writes_what_is_left(runtime: Runtime) -> None:
    """Stopping the service writes presence that no flush has taken yet."""
    await named_device(runtime)
    await connect(runtime)
    await runtime.sessions.close()
    assert (await stored(runtime)).online


async def test_first_connection_names_the_device(runtime: Runtime, clock: FakeClock) -> None:
    """A device without a record gets one with a generated name: read at once, written with the next flush."""
    await runtime.sessions.device_connected(DEVICE, "10.1.2.3", HELLO)
    assert runtime.sessions.presence.name(DEVICE)
    async with runtime.store.transaction(readonly=True) as tx:
        assert await tx.devices.get(DEVICE) is None  # nothing written on the device's path
    clock.advance(INTERVAL)
    await flushed(runtime, 1)
    record = await stored(runtime)
    assert (True, runtime.sessions.presence.name(DEVICE)) == (record.online, record.name)


async def test_settling_one_device_writes_its_facts_alone(runtime: Runtime, clock: FakeClock) -> None:
    """
    A claim settles its device: that device's first-connect record is written at once, without the rest of
    the fleet's pending facts (a claim must not wait for a whole fleet's transaction).
    """
    ids = [f"{n:024x}" for n in range(1, 6)]
    for device_id in ids:
        await runtime.sessions.device_connected(device_id, "10.1.2.3", HELLO)
    await runtime.sessions.presence.settle(ids[0])
    async with runtime.store.transaction(readonly=True) as tx:
        written = [await tx.devices.get(device_id) for device_id in ids]
    assert [True, False, False, False, False] == [device is not None for device in written]
    settled = runtime.sessions.presence.statistics()
    assert (1, 2) == (settled.flushes, settled.rows_written)  # one device's record and presence row
    clock.advance(INTERVAL)
    await flushed(runtime, 2)
    assert all([(await stored(runtime, device_id)).online for device_id in ids])


class FailingOnce:
    """A store whose first transaction fails, as a dropped database connection would."""

    def __init__(self, runtime: Runtime) -> None:
        self._store = runtime.store
        self.failed = False

    def transaction(self, *, readonly: bool = False) -> AbstractAsyncContextManager[UnitOfWork]:
        if not self.failed:
            self.failed = True
            return self._fail()
        return self._store.transaction(readonly=readonly)

    @asynccontextmanager
    async def _fail(self) -> AsyncIterator[UnitOfWork]:
        async with self._store.transaction() as tx:
            yield tx
            raise ConnectionError("database went away")  # the commit never happens

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)


async def test_a_failed_flush_is_retried(runtime: Runtime, clock: FakeClock) -> None:
    """When a write fails its devices stay dirty, and the next interval writes them."""
    await named_device(runtime)
    store: Any = FailingOnce(runtime)
    book = DevicePresenceBook(store=store, clock=clock, flush_interval=INTERVAL)
    book.connected(DEVICE, "10.9.9.9", platform_id=None, product_id=None)
    clock.advance(INTERVAL)

    async def failed() -> bool:
        return book.statistics().flush_failures == 1

    await wait_until(failed, timeout=5)
    assert (1, 1) == (book.statistics().flush_failures, book.statistics().dirty)
    clock.advance(INTERVAL)

    async def written() -> bool:
        return book.statistics().flushes == 1

    await wait_until(written, timeout=5)
    assert (1, 0) == (book.statistics().flushes, book.statistics().dirty)
    assert "10.9.9.9" == (await stored(runtime)).last_ip_address
    await book.close()


async def test_api_shows_online_before_the_write_and_status_after_it(
    client: httpx.AsyncClient, runtime: Runtime
) -> None:
    """A real device: the API says online while the store does not yet; spark/status online came before."""
    ada = await make_account(client, "ada@example.com")
    user_id = (await runtime.accounts.get_by_username(ada.email)).id
    status = runtime.bus.subscribe(EventFilter(owner_id=user_id, prefix="spark/status"))
    device = await connect_device(client, ada, runtime)
    try:
        body = (await client.get(f"/v1/devices/{device.device_id}", headers=ada.auth)).json()
        assert (True, True, "127.0.0.1") == (body["online"], body["connected"], body["last_ip_address"])
        assert body["last_heard"].endswith("Z")
        assert not (await stored(runtime, device.device_id)).online
        listed = (await client.get("/v1/devices", headers=ada.auth)).json()
        assert [(device.device_id, True)] == [(d["id"], d["online"]) for d in listed]
        status.close()
        assert ["online"] == [event.data async for event in status]
    finally:
        await device.stop()
