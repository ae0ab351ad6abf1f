"""
What this process's device links learn — presence (online, last IP, last handshake, last heard), Describes,
generated names, first-connect records, offered keys — held in memory and written behind in batches.

Theory of operation:
    A link reports its device several times per connection (key check, connected, described, every message
    heard, disconnected). Each used to be a write; with a thousand devices connecting at once that was a
    thousand write transactions queueing for SQLite's one writer or the pool, and links failed on
    ``database is locked`` or the pool timeout. So nothing on a device's path writes: it all lands here.

    - this book is the truth for reads made in this process: `overlay(device)` lays it over a record read
      from the store (`DeviceService` does that for everything it returns), so the API shows a device
      online, described and named as soon as its link reports it, before anything is written;
    - the store gets it written behind: a change marks the device dirty and, when no flush is already due,
      schedules one ``flush_interval`` seconds later on the injected clock. A flush writes the latest values
      of every dirty device in ONE transaction — the process's one writer for device facts: first-connect
      records and offered keys, then generated names, then presence (one prebuilt UPDATE, executemany) and
      Describes (another). However many times a device changed meanwhile, it costs one row per kind; last
      heard is recorded on every message, so the store has it exact to the second, a flush interval late;
    - a failed flush (a locked or unreachable database) is logged, keeps its devices dirty and is retried
      the next interval; no link ever waits for it. A generated name that another device of the owner took
      meanwhile is replaced inside the flush, and a record named meanwhile (a claim, a rename) keeps its name;
    - an entry lives while its device is online here, and is dropped once its offline state is written (the
      record is the truth again then); `close()` writes what is left (the runtime calls it after the gateway
      has stopped and its links have reported their devices offline); `settle(device_id)` writes a device's
      pending record and name now, for a claim that must see them.

    Other processes (``serve --only api``, the CLI) read the store, at most ``flush_interval`` behind. A crash
    loses at most the last interval of presence, last heard and Describes (the node's devices are marked
    offline when it starts again with the same id or its lease runs out, see `nodes`, and devices describe
    themselves on every connection); a first-connect record or generated name lost that way is made again
    on the device's next connection. Presence is written with this node's id and the link's session epoch,
    and fenced on them: a link older than the record's latest (the device moved on) writes nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

import structlog

from devicecloud.domain.devices import Device, DeviceDescription, DevicePresence, HeardRow
from devicecloud.domain.product_devices import ProductReport
from devicecloud.errors import Conflict
from devicecloud.services.device_names import free_name, generate_name
from devicecloud.services.write_behind import WriteBehind

if TYPE_CHECKING:
    from devicecloud.clock import Clock
    from devicecloud.store.interfaces import Store, UnitOfWork

logger = structlog.get_logger("devicecloud.devices")

_DESCRIBE_PARTS = ("functions", "variables", "modules")


@dataclass(slots=True)
class _Entry:
    online: bool
    last_ip_address: str | None
    last_handshake_at: datetime | None
    last_heard: datetime | None
    platform_id: int | None
    product_id: int | None
    updated_at: datetime
    epoch: int = 0  # this link's session epoch (see `session_epoch`): presence writes are fenced on it
    version: int = 0  # bumped on every change: a flush drops an offline entry only if nothing changed since
    presence_dirty: bool = True
    heard_dirty: bool = False  # only last_heard changed since the last flush (a keep-alive): a narrow row
    # The parts of the device's Describes seen here (functions, variables, modules) and its system firmware.
    describe: dict[str, Any] = field(default_factory=dict)
    firmware: str | None = None
    describe_dirty: bool = False
    # A generated name until the record has one; the owner it was chosen for (names are unique per owner).
    name: str | None = None
    name_owner: int | None = None
    name_dirty: bool = False


@dataclass(slots=True)
class _FirstConnect:
    """
    A device record this process made on a first handshake (``accept_unknown_devices``), not yet written.
    """

    public_key_der: bytes | None
    at: datetime
    dirty: bool = True


@dataclass(frozen=True, slots=True)
class _Offer:
    device_id: str
    public_key_der: bytes
    ip_address: str | None
    at: datetime


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


@dataclass(slots=True)
class _Batch:
    """
    What one flush writes, taken from the book at its start (the book goes on changing meanwhile).
    """

    versions: dict[str, int] = field(default_factory=dict)
    presence: list[DevicePresence] = field(default_factory=list)
    heard: list[HeardRow] = field(default_factory=list)  # devices whose last_heard alone changed
    describes: dict[str, tuple[dict[str, Any], str | None, datetime]] = field(default_factory=dict)
    names: dict[str, str] = field(default_factory=dict)
    records: dict[str, _FirstConnect] = field(default_factory=dict)
    offers: list[_Offer] = field(default_factory=list)
    reports: list[ProductReport] = field(default_factory=list)  # Hellos naming a product
    renamed: dict[str, str | None] = field(default_factory=dict)  # the flush's verdict on generated names

    def __len__(self) -> int:
        return len(self.versions) + len(self.records) + len(self.offers) + len(self.reports)


class DevicePresenceBook:
    """
    What this process's links learned about their devices (see the module docstring).

    Args:
        store: where it is written behind.
        clock: schedules the flushes.
        flush_interval: seconds from a device's first unwritten change to the flush that writes it.
        node_id: this process's node: presence is written with it, fenced on (node, epoch).
    """

    def __init__(
        self, *, store: Store, clock: Clock, flush_interval: float = 1.0, node_id: str | None = None
    ) -> None:
        self._store = store
        self._node_id = node_id
        self._clock = clock
        self._interval = flush_interval
        self._entries: dict[str, _Entry] = {}
        self._records: dict[str, _FirstConnect] = {}
        self._offers: list[_Offer] = []
        self._reports: dict[str, ProductReport] = {}  # device id → what its latest Hello said of its product
        # What the store held of a connecting device's Describe at its key check (describe, system firmware),
        # until its Describe arrives: the same Describe again is nothing to write.
        self._stored: dict[str, tuple[Mapping[str, Any], str | None]] = {}
        self._dirty: set[str] = set()
        self._flushing = asyncio.Lock()
        self._writer = WriteBehind(
            clock=clock,
            interval=flush_interval,
            flush=self.flush,
            pending=self._pending,
            name="device-presence-flush",
        )
        self._flushes = 0
        self._rows = 0
        self._failures = 0

    # ------------------------------------------------------------------ what links report

    def first_connect(self, device_id: str, public_key_der: bytes | None) -> None:
        """
        The device has no record (or one without a key): this process makes it, with ``public_key_der``.
        """
        if device_id not in self._records:
            self._records[device_id] = _FirstConnect(public_key_der, self._clock.now())
            self._schedule()

    def first_connect_key(self, device_id: str) -> bytes | None:
        """
        The key of a first-connect record made here and not yet known to be written (None: none made).
        """
        record = self._records.get(device_id)
        return record.public_key_der if record is not None else None

    def offered_key(self, device_id: str, public_key_der: bytes, ip_address: str | None) -> None:
        """
        An unknown device offered a key that waits for an operator (``devicecloud keys pending``).
        """
        self._offers.append(_Offer(device_id, public_key_der, ip_address, self._clock.now()))
        self._schedule()

    def product_reported(self, report: ProductReport) -> None:
        """
        A Hello named a product: the device joins it if it is in none, its product firmware is recorded.
        """
        self._reports[report.device_id] = report
        self._schedule()

    def connected(
        self,
        device_id: str,
        ip_address: str | None,
        *,
        platform_id: int | None,
        product_id: int | None,
        after_epoch: int | None = None,
    ) -> None:
        """
        The device completed a handshake and said Hello: online, this address, handshake and heard now.
        ``after_epoch`` is the session epoch its record had at the key check: this link's is later.
        """
        now = self._clock.now()
        epoch = session_epoch(now, after_epoch)
        entry = self._entries.get(device_id)
        if entry is None:
            self._entries[device_id] = _Entry(True, ip_address, now, now, platform_id, product_id, now, epoch)
        else:
            entry.epoch = epoch
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
            entry.presence_dirty = True
        self._mark(device_id)

    def heard(self, device_id: str) -> None:
        """
        The device sent something: last heard is now, written by the next flush (no statement of its own).
        """
        entry = self._entries.get(device_id)
        if entry is None or not entry.online:
            return  # only a connected device is heard from; its entry exists from connected()
        entry.last_heard = self._clock.now()
        entry.version += 1
        entry.heard_dirty = True
        self._mark(device_id)

    def stored_describe(self, device_id: str, describe: Mapping[str, Any], firmware: str | None) -> None:
        """
        What the store holds of the device's Describe, as its key check read it (the one read of a connect).
        """
        self._stored[device_id] = (describe, firmware)

    def described(self, device_id: str, description: DeviceDescription) -> None:
        """
        The device sent (part of) its Describe; parts that are None stay as they were. A device that
        reconnects with the Describe the store already holds costs no write.
        """
        stored = self._stored.pop(device_id, None)
        entry = self._entries.get(device_id)
        if entry is None:
            return  # a Describe comes only from a connected device
        if description.functions is not None:
            entry.describe["functions"] = list(description.functions)
        if description.variables is not None:
            entry.describe["variables"] = dict(description.variables)
        if description.modules is not None:
            entry.describe["modules"] = description.modules
        if description.system_firmware_version is not None:
            entry.firmware = description.system_firmware_version
        if stored is not None and not entry.describe_dirty and stored == (entry.describe, entry.firmware):
            return
        entry.updated_at = self._clock.now()
        entry.version += 1
        entry.describe_dirty = True
        self._mark(device_id)

    def name(self, device_id: str) -> str | None:
        """
        The name generated here for the device and not yet known to be superseded (None: none generated).
        """
        entry = self._entries.get(device_id)
        return entry.name if entry is not None else None

    def give_name(self, device_id: str, owner_id: int | None) -> str:
        """
        Generate a name for a connected device whose record has none (free among the names this book gave
        the owner's devices; the flush checks the store's).
        """
        entry = self._entries[device_id]
        taken = {e.name for e in self._entries.values() if e.name_owner == owner_id and e.name}
        name = generate_name()
        while owner_id is not None and name in taken:
            name = generate_name()
        entry.name, entry.name_owner, entry.name_dirty = name, owner_id, True
        entry.version += 1
        self._mark(device_id)
        return name

    def disconnected(self, device_id: str) -> bool:
        """
        The device's link ended: offline, last heard kept.

        Returns:
            False when this book did not know the device (it never connected here).
        """
        self._stored.pop(device_id, None)
        entry = self._entries.get(device_id)
        if entry is None:
            return False
        entry.online = False
        entry.updated_at = self._clock.now()
        entry.version += 1
        entry.presence_dirty = True
        self._mark(device_id)
        return True

    def rewrite(self) -> None:
        """
        Write every device's presence again at the next flush (another node took this one for dead and
        marked its devices offline; the fence lets these writes through, as their links are the latest).
        """
        for device_id, entry in self._entries.items():
            entry.version += 1
            entry.presence_dirty = True
            self._dirty.add(device_id)
        if self._dirty:
            self._schedule()

    # ------------------------------------------------------------------ reading

    def overlay(self, device: Device) -> Device:
        """
        ``device`` (read from the store) with what this process knows better.
        """
        entry = self._entries.get(device.id)
        if entry is None:
            return device
        changes: dict[str, Any] = {
            "online": entry.online,
            "last_ip_address": entry.last_ip_address,
            "last_handshake_at": entry.last_handshake_at,
            "last_heard": entry.last_heard,
        }
        if entry.platform_id is not None:
            changes["platform_id"] = entry.platform_id
        if entry.product_id is not None:
            changes["product_id"] = entry.product_id
        if entry.describe:
            describe = {**device.describe, **entry.describe}
            changes["describe"] = describe
            changes["functions"] = tuple(describe.get("functions") or ())
            changes["variables"] = dict(describe.get("variables") or {})
        if entry.firmware is not None:
            changes["system_firmware_version"] = entry.firmware
        if device.name is None and entry.name is not None:  # a name given meanwhile (claim, rename) wins
            changes["name"] = entry.name
        return dataclasses.replace(device, **changes)

    def statistics(self) -> PresenceStatistics:
        """
        Counts for introspection and tests.
        """
        return PresenceStatistics(
            tracked=len(self._entries),
            dirty=len(self._dirty)
            + sum(1 for r in self._records.values() if r.dirty)
            + len(self._offers)
            + len(self._reports),
            flushes=self._flushes,
            rows_written=self._rows,
            flush_failures=self._failures,
        )

    # ------------------------------------------------------------------ writing behind

    async def settle(self, device_id: str) -> None:
        """
        Write now if the device's record or generated name is still only here (a claim must see them).
        """
        entry = self._entries.get(device_id)
        pending = device_id in self._records or device_id in self._reports
        if pending or (entry is not None and entry.name_dirty):
            await self.flush(device_id)

    async def flush(self, only: str | None = None) -> int:
        """
        Write everything dirty now (one transaction), or only what is dirty of device ``only``: a claim
        waits for its device's facts, not for a whole fleet's (10,000 first connects made a claim wait for
        one 10,000-row transaction).

        Returns:
            The number of rows written (0 when there was nothing to write, or the write failed).
        """
        async with self._flushing:
            batch = self._take(only)
            if not len(batch):
                return 0
            try:
                async with self._store.transaction() as tx:
                    await self._write(tx, batch)
            except Exception:
                self._failures += 1
                logger.exception("writing device facts failed; retrying later", devices=len(batch))
                self._give_back(batch)
                self._schedule()
                return 0
            self._written(batch)
            return len(batch)

    async def close(self) -> None:
        """
        Stop scheduling and write what is left. Idempotent.
        """
        await self._writer.close()

    def _take(self, only: str | None = None) -> _Batch:
        if only is not None:
            return self._take_one(only)
        batch = _Batch()
        for device_id in self._dirty:
            self._take_entry(batch, device_id, self._entries[device_id])
        self._dirty.clear()
        for device_id, record in self._records.items():
            if record.dirty:
                batch.records[device_id] = record
                record.dirty = False
        batch.offers, self._offers = self._offers, []
        batch.reports, self._reports = list(self._reports.values()), {}
        return batch

    def _take_entry(self, batch: _Batch, device_id: str, entry: _Entry) -> None:
        batch.versions[device_id] = entry.version
        if entry.presence_dirty:
            batch.presence.append(_snapshot(device_id, entry, self._node_id))  # carries last_heard too
        elif entry.heard_dirty and entry.last_heard is not None:
            batch.heard.append(HeardRow(device_id, entry.last_heard, entry.epoch, self._node_id))
        if entry.describe_dirty:
            batch.describes[device_id] = (dict(entry.describe), entry.firmware, entry.updated_at)
        if entry.name_dirty and entry.name is not None:
            batch.names[device_id] = entry.name
        entry.presence_dirty = entry.heard_dirty = entry.describe_dirty = entry.name_dirty = False

    def _take_one(self, device_id: str) -> _Batch:
        """
        `_take` for one device: its entry, first-connect record and product report (the offered keys wait).
        """
        batch = _Batch()
        entry = self._entries.get(device_id)
        if device_id in self._dirty and entry is not None:
            self._dirty.discard(device_id)
            self._take_entry(batch, device_id, entry)
        record = self._records.get(device_id)
        if record is not None and record.dirty:
            batch.records[device_id] = record
            record.dirty = False
        report = self._reports.pop(device_id, None)
        if report is not None:
            batch.reports.append(report)
        return batch

    def _give_back(self, batch: _Batch) -> None:
        """
        A failed flush: mark what it held dirty again (the entries hold the latest values anyway).
        """
        for row in batch.presence:
            self._entries[row.device_id].presence_dirty = True
        for heard_row in batch.heard:
            self._entries[heard_row.device_id].heard_dirty = True
        for device_id in batch.describes:
            self._entries[device_id].describe_dirty = True
        for device_id in batch.names:
            self._entries[device_id].name_dirty = True
        self._dirty.update(batch.versions)
        for record in batch.records.values():
            record.dirty = True
        self._offers[:0] = batch.offers
        for report in batch.reports:
            self._reports.setdefault(report.device_id, report)  # a newer Hello's report wins

    def _written(self, batch: _Batch) -> None:
        self._flushes += 1
        self._rows += len(batch)
        for device_id, record in batch.records.items():
            if self._records.get(device_id) is record and not record.dirty:
                del self._records[device_id]  # written: the store answers the key check now
        for device_id, verdict in batch.renamed.items():
            entry = self._entries.get(device_id)
            if entry is not None and entry.name == batch.names[device_id]:
                entry.name = verdict  # None: the record had a name already, which stands
        for device_id, version in batch.versions.items():
            current = self._entries.get(device_id)
            if current is not None and not current.online and current.version == version:
                del self._entries[device_id]  # written offline and unchanged since: the record is the truth

    async def _write(self, tx: UnitOfWork, batch: _Batch) -> None:
        # Records first: the rows below update them.
        for device_id, record in batch.records.items():
            await _write_first_connect(tx, device_id, record)
        for offer in batch.offers:
            await _write_offer(tx, offer)
        await tx.product_devices.report(batch.reports, self._clock.now())  # after the records it refers to
        for device_id, name in batch.names.items():
            given = await _write_name(tx, device_id, name, self._clock.now())
            if given != name:
                batch.renamed[device_id] = given
        await tx.devices.write_presence(batch.presence)
        await tx.devices.write_heard(batch.heard)
        if batch.describes:
            partial = [i for i, (parts, _, _) in batch.describes.items() if set(_DESCRIBE_PARTS) - set(parts)]
            stored = await tx.devices.describes(partial) if partial else {}
            await tx.devices.write_describes(
                [
                    (device_id, {**stored.get(device_id, {}), **parts}, firmware, at)
                    for device_id, (parts, firmware, at) in batch.describes.items()
                ]
            )

    def _mark(self, device_id: str) -> None:
        self._dirty.add(device_id)
        self._schedule()

    def _schedule(self) -> None:
        self._writer.schedule()

    def _pending(self) -> bool:
        return bool(
            self._dirty or self._offers or self._reports or any(r.dirty for r in self._records.values())
        )


async def _write_first_connect(tx: UnitOfWork, device_id: str, record: _FirstConnect) -> None:
    """
    Insert the record a first handshake made; one made meanwhile (an operator's ``keys add``) keeps its key
    unless it has none.
    """
    existing = await tx.devices.get(device_id)
    if existing is None:
        with contextlib.suppress(Conflict):  # another node made it between the read and the insert
            await tx.devices.add(device_id, now=record.at, public_key=record.public_key_der)
    elif existing.public_key_der is None and record.public_key_der is not None:
        await tx.devices.update(device_id, public_key=record.public_key_der, updated_at=record.at)
    if record.public_key_der is not None:
        await tx.pending_keys.delete(device_id)


async def _write_offer(tx: UnitOfWork, offer: _Offer) -> None:
    """
    Record an offered key, unless an operator registered the device's key since (its offer is settled).
    """
    device = await tx.devices.get(offer.device_id)
    if device is None or device.public_key_der is None:
        await tx.pending_keys.record(offer.device_id, offer.public_key_der, offer.ip_address, offer.at)


async def _write_name(tx: UnitOfWork, device_id: str, name: str, now: datetime) -> str | None:
    """
    Give the record the generated name if it still has none; the name given (None: it had one already).
    """
    try:
        return name if await tx.devices.name_if_unnamed(device_id, name, now=now) else None
    except Conflict:  # another device of the owner took it meanwhile: a free one, checked in this transaction
        device = await tx.devices.get(device_id)
        if device is None or device.name is not None:
            return None
        owner = device.owner_id
        if owner is None:
            fresh = generate_name()
        else:
            fresh = await free_name(lambda candidate: tx.devices.name_taken(owner, candidate))
        return fresh if await tx.devices.name_if_unnamed(device_id, fresh, now=now) else None


def session_epoch(now: datetime, after: int | None) -> int:
    """
    A link's session epoch: its handshake time in microseconds, made later than ``after`` (the epoch the
    record had when the link's key check read it), so a newer link of a device orders after every older
    one it could know of, whichever node holds it. Clocks between nodes only matter for two handshakes
    within one flush interval, before the first is written.
    """
    epoch = int(now.timestamp() * 1_000_000)
    return epoch if after is None or epoch > after else after + 1


def _snapshot(device_id: str, entry: _Entry, self_node: str | None) -> DevicePresence:
    return DevicePresence(
        device_id=device_id,
        online=entry.online,
        last_ip_address=entry.last_ip_address,
        last_handshake_at=entry.last_handshake_at,
        last_heard=entry.last_heard,
        platform_id=entry.platform_id,
        product_id=entry.product_id,
        updated_at=entry.updated_at,
        node_id=self_node,
        session_epoch=entry.epoch,
    )
