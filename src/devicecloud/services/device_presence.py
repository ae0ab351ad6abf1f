"""
Device presence — online, last IP address, last handshake, last heard — held in memory, written behind.

Theory of operation:
    A link reports its device's presence several times per handshake (connected, heard, disconnected).
    Each of those was its own database transaction, ~2 ms of CPU apiece: two thirds of a handshake's cost
    once the RSA work went to OpenSSL. So the presence of the devices linked to this process lives here:

    - this book is the truth for reads made in this process: `overlay(device)` lays it over a record read
      from the store (`DeviceService` does that for everything it returns), so the API shows a device
      online as soon as its link reports it, before anything is written;
    - the store gets it written behind: a change marks the device dirty and, when no flush is already due,
      schedules one ``flush_interval`` seconds later on the injected clock. A flush writes the latest values
      of every dirty device in one transaction (one prebuilt UPDATE, executemany), however many times each
      changed meanwhile. A device that connects and drops within one interval costs one row;
    - an entry lives while its device is online here, and is dropped once its offline state is written (the
      record is the truth again then);
    - a failed flush is logged and its devices stay dirty for the next one; `close()` writes what is left
      (the runtime calls it after the gateway has stopped and its links have reported their devices offline).

    Other processes (``serve --only api``, the CLI) read the store, at most ``flush_interval`` behind (and
    last heard at most the session policy's ``heard_interval`` behind). After a crash, what was not yet
    written is lost the same way: the next start marks every device offline anyway.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

import structlog

from devicecloud.domain.devices import Device, DevicePresence

if TYPE_CHECKING:
    from devicecloud.clock import Clock, TimerHandle
    from devicecloud.store.interfaces import Store

logger = structlog.get_logger("devicecloud.devices")


@dataclass(slots=True)
class _Entry:
    online: bool
    last_ip_address: str | None
    last_handshake_at: datetime | None
    last_heard: datetime | None
    platform_id: int | None
    product_id: int | None
    updated_at: datetime
    version: int = 0  # bumped on every change: a flush drops an offline entry only if nothing changed since


@dataclass(frozen=True, slots=True)
class PresenceStatistics:
    """
    Attributes:
        tracked: devices this book holds (online here, or offline and not yet written).
        dirty: devices changed since their last write.
        flushes: flushes that wrote something.
        rows_written: device rows written, over all flushes.
        flush_failures: flushes that failed (their devices stayed dirty).
    """

    tracked: int
    dirty: int
    flushes: int
    rows_written: int
    flush_failures: int


class DevicePresenceBook:
    """
    The presence of this process's linked devices (see the module docstring).

    Args:
        store: where presence is written behind.
        clock: schedules the flushes.
        flush_interval: seconds from a device's first unwritten change to the flush that writes it.
    """

    def __init__(self, *, store: Store, clock: Clock, flush_interval: float = 1.0) -> None:
        self._store = store
        self._clock = clock
        self._interval = flush_interval
        self._entries: dict[str, _Entry] = {}
        self._dirty: set[str] = set()
        self._timer: TimerHandle | None = None
        self._task: asyncio.Task[None] | None = None
        self._flushing = asyncio.Lock()
        self._closed = False
        self._flushes = 0
        self._rows = 0
        self._failures = 0

    # ------------------------------------------------------------------ what links report

    def connected(
        self, device_id: str, ip_address: str | None, *, platform_id: int | None, product_id: int | None
    ) -> None:
        """
        The device completed a handshake and said Hello: online, this address, handshake and heard now.
        """
        now = self._clock.now()
        entry = self._entries.get(device_id)
        if entry is None:
            self._entries[device_id] = _Entry(True, ip_address, now, now, platform_id, product_id, now)
        else:
            entry.online, entry.last_ip_address, entry.last_handshake_at, entry.last_heard = (
                True,
                ip_address,
                now,
                now,
            )
            entry.platform_id = platform_id if platform_id is not None else entry.platform_id
            entry.product_id = product_id if product_id is not None else entry.product_id
            entry.updated_at = now
            entry.version += 1
        self._mark(device_id)

    def heard(self, device_id: str, *, write: bool) -> None:
        """
        The device sent something: last heard is now; ``write`` asks for it to reach the store too.
        """
        entry = self._entries.get(device_id)
        if entry is None or not entry.online:
            return  # only a connected device is heard from; its entry exists from connected()
        entry.last_heard = self._clock.now()
        entry.version += 1
        if write:
            entry.updated_at = entry.last_heard
            self._mark(device_id)

    def disconnected(self, device_id: str) -> bool:
        """
        The device's link ended: offline, last heard kept.

        Returns:
            False when this book did not know the device (it never connected here).
        """
        entry = self._entries.get(device_id)
        if entry is None:
            return False
        entry.online = False
        entry.updated_at = self._clock.now()
        entry.version += 1
        self._mark(device_id)
        return True

    # ------------------------------------------------------------------ reading

    def overlay(self, device: Device) -> Device:
        """
        ``device`` (read from the store) with the presence this process knows better.
        """
        entry = self._entries.get(device.id)
        if entry is None:
            return device
        return dataclasses.replace(
            device,
            online=entry.online,
            last_ip_address=entry.last_ip_address,
            last_handshake_at=entry.last_handshake_at,
            last_heard=entry.last_heard,
            platform_id=entry.platform_id if entry.platform_id is not None else device.platform_id,
            product_id=entry.product_id if entry.product_id is not None else device.product_id,
        )

    def statistics(self) -> PresenceStatistics:
        """
        Counts for introspection and tests.
        """
        return PresenceStatistics(
            tracked=len(self._entries),
            dirty=len(self._dirty),
            flushes=self._flushes,
            rows_written=self._rows,
            flush_failures=self._failures,
        )

    # ------------------------------------------------------------------ writing behind

    async def flush(self) -> int:
        """
        Write every dirty device now (one transaction).

        Returns:
            The number of devices written (0 when there was nothing to write, or the write failed).
        """
        async with self._flushing:
            if not self._dirty:
                return 0
            batch: list[tuple[str, int, DevicePresence]] = []
            for device_id in self._dirty:
                entry = self._entries[device_id]
                batch.append((device_id, entry.version, _snapshot(device_id, entry)))
            self._dirty.clear()
            try:
                async with self._store.transaction() as tx:
                    await tx.devices.write_presence([row for _, _, row in batch])
            except Exception:
                self._failures += 1
                logger.exception("writing device presence failed; retrying later", devices=len(batch))
                self._dirty.update(device_id for device_id, _, _ in batch)
                self._schedule()
                return 0
            self._flushes += 1
            self._rows += len(batch)
            for device_id, version, row in batch:
                current = self._entries.get(device_id)
                if current is not None and not row.online and current.version == version:
                    del self._entries[
                        device_id
                    ]  # written offline and unchanged since: the record is the truth
            return len(batch)

    async def close(self) -> None:
        """
        Stop scheduling and write what is left. Idempotent.
        """
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        task, self._task = self._task, None
        if task is not None and not task.done():
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.flush()

    def _mark(self, device_id: str) -> None:
        self._dirty.add(device_id)
        self._schedule()

    def _schedule(self) -> None:
        if self._timer is not None or self._closed or (self._task is not None and not self._task.done()):
            return  # a flush is due or running; a running one reschedules itself if anything is left
        self._timer = self._clock.call_at(self._clock.monotonic() + self._interval, self._due)

    def _due(self) -> None:
        self._timer = None
        if not self._closed:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="device-presence-flush")

    async def _run(self) -> None:
        try:
            await self.flush()
        finally:
            self._task = None
            if self._dirty:
                self._schedule()


def _snapshot(device_id: str, entry: _Entry) -> DevicePresence:
    return DevicePresence(
        device_id=device_id,
        online=entry.online,
        last_ip_address=entry.last_ip_address,
        last_handshake_at=entry.last_handshake_at,
        last_heard=entry.last_heard,
        platform_id=entry.platform_id,
        product_id=entry.product_id,
        updated_at=entry.updated_at,
    )
