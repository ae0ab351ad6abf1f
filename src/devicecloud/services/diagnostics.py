"""
Device vitals (catalogue §5): ask a device for them, keep each report, read them back over time.

Rules kept here:
- Every route goes through `DeviceService.access_device` with its catalogue scope; a report is stored under
  the device's owner at that moment and read back only by that owner (a transferred device's history stays
  with whoever owned it then).
- ``refresh`` asks the device through `ports.DeviceControl` and, in the API request's own task, stores the
  report and publishes ``spark/device/diagnostics/update`` (private, as the device's own event). Nothing is
  written on a device's path (decision 0013): vitals a device volunteers (``volunteered``) wait in memory
  for a flush, once per ``flush_interval``, that stores them all in one transaction and then publishes them.
- History answers ``[start_date, end_date)``; a start older than the retention is refused with the
  catalogue's text; reports older than the retention are deleted by `prune`, which `start` runs every
  ``prune_interval`` on the clock.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import structlog

from devicecloud.domain.accounts import User
from devicecloud.domain.diagnostics import VITALS_METADATA, VitalsRecord, summarise, to_csv
from devicecloud.domain.usage import Account
from devicecloud.errors import InvalidInput, NotFound, PermissionDenied

if TYPE_CHECKING:
    from devicecloud.clock import Clock, TimerHandle
    from devicecloud.domain.access import AnyPrincipal
    from devicecloud.domain.devices import Device
    from devicecloud.services.devices import DeviceService
    from devicecloud.services.events import EventService
    from devicecloud.services.ports import DeviceControl
    from devicecloud.services.product_devices import ProductDeviceService
    from devicecloud.store.interfaces import Store

logger = structlog.get_logger("devicecloud.diagnostics")

UPDATE_EVENT = "spark/device/diagnostics/update"
# Reports one answer may hold (30 days of a report a minute fit); a wider range is refused, not cut.
MAX_HISTORY = 50_000
MAX_SUMMARY_BUCKETS = 1000
# Compaction: reports of an hour are folded into one row once the hour ended this long ago, so many a batch.
COMPACT_DELAY = timedelta(minutes=5)
COMPACT_BATCH = 20_000
# Volunteered reports waiting for a flush, at most (a database that does not answer must not fill memory).
MAX_PENDING = 100_000


@dataclass(frozen=True, slots=True)
class DiagnosticsPolicy:
    retention: timedelta = timedelta(days=30)
    prune_interval: float = 3600.0
    request_timeout: float = 20.0
    flush_interval: float = 1.0
    # Seconds between two reports a device sends unasked that are kept (the rest are dropped).
    volunteer_interval: float = 5.0


def _bad_dates(description: str) -> InvalidInput:
    error = InvalidInput(description, code="bad_request")
    error.extra["description"] = description  # the catalogue's shape: {"error", "description"}
    return error


def parse_date(value: str | None) -> datetime | None:
    """An ISO 8601 instant (``Z`` or an offset; none = UTC; a date alone = midnight); None when absent."""
    if value is None or value == "":
        return None
    if len(value) > 64:
        raise _bad_dates("start_date and end_date must be ISO8601 formatted")
    try:
        moment = datetime.fromisoformat(value.strip())
    except ValueError:
        raise _bad_dates("start_date and end_date must be ISO8601 formatted") from None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def history_document(pieces: list[bytes]) -> bytes:
    """The history answer from runs of rendered items, in one copy (a month of reports is ~32 MB)."""
    parts = [b'{"diagnostics":[']
    for index, piece in enumerate(pieces):
        if index:
            parts.append(b",")
        parts.append(piece)
    parts.append(b"]}")
    return b"".join(parts)


def _at_most(records: list[VitalsRecord]) -> list[VitalsRecord]:
    """The range's reports, or a 400 when it holds more than `MAX_HISTORY` (never a silent cut)."""
    if len(records) > MAX_HISTORY:
        raise _too_many()
    return records


def _too_many() -> InvalidInput:
    return _bad_dates(f"More than {MAX_HISTORY} reports in this range: narrow start_date and end_date")


class DiagnosticsService:
    """
    The diagnostics API's business rules.
    """

    def __init__(
        self,
        *,
        store: Store,
        clock: Clock,
        devices: DeviceService,
        control: DeviceControl,
        events: EventService,
        policy: DiagnosticsPolicy,
        product_devices: ProductDeviceService | None = None,
    ) -> None:
        self._store = store
        self._product_devices = product_devices
        self._clock = clock
        self._devices = devices
        self._control = control
        self._events = events
        self._policy = policy
        self._timer: TimerHandle | None = None
        self._task: asyncio.Task[None] | None = None
        self._running = False
        self._closed = False
        self._pending: list[tuple[str, datetime, dict[str, Any]]] = []
        self._volunteered_at: dict[str, float] = {}  # device id → monotonic time of its last kept report
        self._flush_timer: TimerHandle | None = None
        self._flush_task: asyncio.Task[None] | None = None
        #: Volunteered reports dropped because too many waited for a flush.
        self.dropped = 0

    # ------------------------------------------------------------------ whose device, whose reports

    async def _device(
        self, principal: User | AnyPrincipal, ref: str, action: str, product: str | None
    ) -> tuple[Device, Account]:
        """
        The device and the scope its reports are read in: the caller's (user routes: reports made while
        the caller owned it) or the product's (``/v1/products/:p/diagnostics/…``: reports made in it).
        """
        if isinstance(principal, User):
            device = await self._devices.access_device(principal, ref, action)
            return device, Account("user", principal.id)
        if product is None or self._product_devices is None:
            raise PermissionDenied("Only a person's token reads their own devices' vitals")
        found, device = await self._product_devices.device_in_product(principal, product, ref, action)
        return device, Account("product", found.id)

    # ------------------------------------------------------------------ asking the device

    async def refresh(
        self, principal: User | AnyPrincipal, ref: str, product: str | None = None
    ) -> VitalsRecord:
        """
        Ask the device for its vitals now, store the report and publish it as the device's event.
        """
        device, scope = await self._device(principal, ref, "devices.diagnostics:update", product)
        reading = await self._control.read_vitals(device.id, timeout=self._policy.request_timeout)
        payload: dict[str, Any] = {
            "device": dict(reading.device),
            "service": {
                "device": {"status": "ok"},
                "cloud": {"uptime": reading.session_seconds},
                "coap": {"round_trip": reading.round_trip_ms},
            },
        }
        now = self._clock.now()
        owner = scope.id if scope.kind == "user" else device.owner_id
        product_id = device.membership.product_id if device.membership is not None else None
        async with self._store.transaction() as tx:
            await tx.vitals.add(device.id, owner, product_id, now, payload)
        await self._events.publish_device_system(
            device.id,
            UPDATE_EVENT,
            json.dumps(payload, separators=(",", ":")),
            owner_id=owner,
            product_id=product_id,
        )
        return VitalsRecord(device.id, now, payload)

    # ------------------------------------------------------------------ reading back

    async def last(
        self, principal: User | AnyPrincipal, ref: str, product: str | None = None
    ) -> VitalsRecord:
        device, scope = await self._device(principal, ref, "devices.diagnostics:get", product)
        async with self._store.transaction(readonly=True) as tx:
            record = await tx.vitals.latest(device.id, scope)
        if record is None:
            raise NotFound("No vitals have been reported for this device", code="not_found")
        return record

    def _range(
        self, start: str | None, end: str | None, *, default_span: timedelta
    ) -> tuple[datetime, datetime]:
        now = self._clock.now()
        end_at = parse_date(end) or now
        start_at = parse_date(start) or max(end_at - default_span, now - self._policy.retention)
        days = self._policy.retention.days
        if start_at < now - self._policy.retention - timedelta(minutes=1):
            raise _bad_dates(f"start_date must not be more than than {days} days ago")
        if end_at <= start_at:
            raise _bad_dates("end_date must be after start_date")
        return start_at, end_at

    async def history(
        self,
        principal: User | AnyPrincipal,
        ref: str,
        start: str | None,
        end: str | None,
        product: str | None = None,
    ) -> list[VitalsRecord]:
        device, scope = await self._device(principal, ref, "devices.diagnostics:get", product)
        start_at, end_at = self._range(start, end, default_span=self._policy.retention)
        async with self._store.transaction(readonly=True) as tx:
            return _at_most(await tx.vitals.between(device.id, scope, start_at, end_at, limit=MAX_HISTORY))

    async def history_json(
        self,
        principal: User | AnyPrincipal,
        ref: str,
        start: str | None,
        end: str | None,
        product: str | None = None,
    ) -> bytes:
        """
        ``{"diagnostics":[…]}`` as UTF-8, joined once from the items the store keeps rendered (past hours are
        compacted into one text each, copied as they are; recent reports are rendered from their stored
        JSON): the same document `history` renders, without decoding and encoding any report again.
        """
        device, scope = await self._device(principal, ref, "devices.diagnostics:get", product)
        start_at, end_at = self._range(start, end, default_span=self._policy.retention)
        async with self._store.transaction(readonly=True) as tx:
            count, pieces = await tx.vitals.history_json(
                device.id, scope, start_at, end_at, limit=MAX_HISTORY
            )
        if count > MAX_HISTORY:
            raise _too_many()
        return history_document(pieces)

    async def history_csv(
        self,
        principal: User | AnyPrincipal,
        ref: str,
        start: str | None,
        end: str | None,
        product: str | None = None,
    ) -> str:
        return to_csv(await self.history(principal, ref, start, end, product))

    async def summary(
        self,
        principal: User | AnyPrincipal,
        ref: str,
        start: str | None,
        end: str | None,
        limit: str | None,
        product: str | None = None,
    ) -> dict[str, Any]:
        device, scope = await self._device(principal, ref, "devices.diagnostics.summary:get", product)
        try:
            buckets = int(limit) if limit else 30
        except ValueError:
            raise InvalidInput("limit must be a whole number", code="bad_request") from None
        if not 1 <= buckets <= MAX_SUMMARY_BUCKETS:
            raise InvalidInput(f"limit must be between 1 and {MAX_SUMMARY_BUCKETS}", code="bad_request")
        start_at, end_at = self._range(start, end, default_span=self._policy.retention)
        async with self._store.transaction(readonly=True) as tx:
            records = _at_most(await tx.vitals.between(device.id, scope, start_at, end_at, limit=MAX_HISTORY))
        return summarise(records, device_id=device.id, start=start_at, end=end_at, limit=buckets)

    async def metadata(
        self, principal: User | AnyPrincipal, ref: str, product: str | None = None
    ) -> dict[str, Any]:
        await self._device(principal, ref, "devices.diagnostics.metadata:get", product)
        return VITALS_METADATA

    # ------------------------------------------------------------------ vitals devices send unasked

    def volunteered(self, device_id: str, device: Mapping[str, Any]) -> None:
        """
        Vitals a device sent on its own (``Particle.publishVitals()``): kept in memory now (this runs on the
        device's path and never waits), stored and published by the next flush, `flush_interval` later.
        A device is heard at most once per `volunteer_interval`: firmware that reports in a loop must not
        fill the table (the extra reports are counted in `dropped`).
        """
        now = self._clock.monotonic()
        last = self._volunteered_at.get(device_id)
        if (
            self._closed
            or len(self._pending) >= MAX_PENDING
            or (last is not None and now - last < self._policy.volunteer_interval)
        ):
            self.dropped += 1
            return
        self._volunteered_at[device_id] = now
        payload = {"device": dict(device), "service": {"device": {"status": "ok"}}}
        self._pending.append((device_id, self._clock.now(), payload))
        if self._flush_timer is None:  # waiting reports always have a timer: none is ever left behind
            self._flush_timer = self._clock.call_at(now + self._policy.flush_interval, self._flush_due)

    def _flush_due(self) -> None:
        self._flush_timer = None
        if self._flush_task is not None and not self._flush_task.done():  # one flush at a time: come back
            deadline = self._clock.monotonic() + self._policy.flush_interval
            self._flush_timer = self._clock.call_at(deadline, self._flush_due)
            return
        self._flush_task = asyncio.get_running_loop().create_task(self._flush_again(), name="vitals-flush")

    async def _flush_again(self) -> None:
        await self.flush()
        if self._pending and not self._closed and self._flush_timer is None:
            deadline = self._clock.monotonic() + self._policy.flush_interval
            self._flush_timer = self._clock.call_at(deadline, self._flush_due)

    async def flush(self) -> int:
        """
        Store what devices sent since the last flush in one transaction (reports of devices nobody owns are
        dropped), then publish each as ``spark/device/diagnostics/update``. A failed write keeps the batch
        for the next flush; never raises.
        """
        batch, self._pending = self._pending, []
        horizon = self._clock.monotonic() - self._policy.volunteer_interval
        for device_id in [d for d, at in self._volunteered_at.items() if at <= horizon]:
            del self._volunteered_at[device_id]  # only devices heard within the interval are remembered
        if not batch:
            return 0
        try:
            rows: list[tuple[str, int | None, int | None, datetime, dict[str, Any]]] = []
            for device_id, at, payload in batch:
                owner = await self._events.owner_of(device_id)  # cached: read once per device
                product, _ = await self._events.product_of(device_id)  # cached likewise
                if owner is not None or product is not None:
                    rows.append((device_id, owner, product, at, payload))
            async with self._store.transaction() as tx:
                await tx.vitals.add_many(rows)
        except Exception:
            logger.exception("writing vitals failed; the next flush tries again", reports=len(batch))
            self._pending[:0] = batch[: max(0, MAX_PENDING - len(self._pending))]
            return 0
        for device_id, owner, product, _at, payload in rows:
            data = json.dumps(payload, separators=(",", ":"))
            await self._events.publish_device_system(
                device_id, UPDATE_EVENT, data, owner_id=owner, product_id=product
            )
        return len(rows)

    # ------------------------------------------------------------------ retention

    async def prune(self) -> int:
        """Delete reports older than the retention, then compact past hours; returns how many were deleted."""
        async with self._store.transaction() as tx:
            removed = await tx.vitals.prune(self._clock.now() - self._policy.retention)
        if removed:
            logger.info("old vitals pruned", removed=removed)
        await self.compact()
        return removed

    async def compact(self) -> int:
        """
        Fold the reports of hours that ended (``COMPACT_DELAY`` ago: late flushes land first) into one row
        per device and hour, a batch per transaction; returns how many reports were folded.
        """
        before = (self._clock.now() - COMPACT_DELAY).replace(minute=0, second=0, microsecond=0)
        folded = 0
        while True:
            async with self._store.transaction() as tx:
                done = await tx.vitals.compact(before, batch=COMPACT_BATCH)
            folded += done
            if done < COMPACT_BATCH:
                return folded

    def start(self) -> None:
        """Prune now and then every ``prune_interval`` on the clock, until `stop`."""
        self._closed = False
        if not self._running:
            self._running = True
            self._due()

    async def stop(self) -> None:
        """Stop pruning; write what devices sent (after the gateway stopped: nothing comes after)."""
        self._closed = True
        if self._flush_timer is not None:
            self._flush_timer.cancel()
            self._flush_timer = None
        if self._flush_task is not None:
            await asyncio.gather(self._flush_task, return_exceptions=True)
        await self.flush()
        self._running = False
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    def _due(self) -> None:
        self._timer = None
        if self._running:
            self._task = asyncio.get_running_loop().create_task(self._prune_then_wait(), name="vitals-prune")

    async def _prune_then_wait(self) -> None:
        try:
            await self.prune()
        except Exception:  # a database hiccup: the next interval tries again
            logger.exception("pruning vitals failed")
        if self._running:
            self._timer = self._clock.call_at(
                self._clock.monotonic() + self._policy.prune_interval, self._due
            )
