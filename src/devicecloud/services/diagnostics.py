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

from devicecloud.domain.diagnostics import VITALS_METADATA, VitalsRecord, summarise, to_csv
from devicecloud.domain.timestamps import iso
from devicecloud.errors import InvalidInput, NotFound

if TYPE_CHECKING:
    from devicecloud.clock import Clock, TimerHandle
    from devicecloud.domain.accounts import User
    from devicecloud.services.devices import DeviceService
    from devicecloud.services.events import EventService
    from devicecloud.services.ports import DeviceControl
    from devicecloud.store.interfaces import Store

logger = structlog.get_logger("devicecloud.diagnostics")

UPDATE_EVENT = "spark/device/diagnostics/update"
# Reports one answer may hold (30 days of a report a minute fit); a wider range is refused, not cut.
MAX_HISTORY = 50_000
MAX_SUMMARY_BUCKETS = 1000
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
    ) -> None:
        self._store = store
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

    # ------------------------------------------------------------------ asking the device

    async def refresh(self, user: User, ref: str) -> VitalsRecord:
        """
        Ask the device for its vitals now, store the report and publish it as the device's event.
        """
        device = await self._devices.access_device(user, ref, "devices.diagnostics:update")
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
        async with self._store.transaction() as tx:
            await tx.vitals.add(device.id, user.id, now, payload)
        await self._events.publish_device_system(
            device.id, UPDATE_EVENT, json.dumps(payload, separators=(",", ":")), owner_id=user.id
        )
        return VitalsRecord(device.id, now, payload)

    # ------------------------------------------------------------------ reading back

    async def last(self, user: User, ref: str) -> VitalsRecord:
        device = await self._devices.access_device(user, ref, "devices.diagnostics:get")
        async with self._store.transaction(readonly=True) as tx:
            record = await tx.vitals.latest(device.id, user.id)
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

    async def history(self, user: User, ref: str, start: str | None, end: str | None) -> list[VitalsRecord]:
        device = await self._devices.access_device(user, ref, "devices.diagnostics:get")
        start_at, end_at = self._range(start, end, default_span=self._policy.retention)
        async with self._store.transaction(readonly=True) as tx:
            return _at_most(
                await tx.vitals.between(device.id, user.id, start_at, end_at, limit=MAX_HISTORY + 1)
            )

    async def history_json(self, user: User, ref: str, start: str | None, end: str | None) -> str:
        """
        ``{"diagnostics":[…]}`` as text, each payload the JSON stored (the same document `history` renders,
        about ten times faster for long ranges: no report is decoded and encoded again).
        """
        device = await self._devices.access_device(user, ref, "devices.diagnostics:get")
        start_at, end_at = self._range(start, end, default_span=self._policy.retention)
        async with self._store.transaction(readonly=True) as tx:
            rows = await tx.vitals.between_json(device.id, user.id, start_at, end_at, limit=MAX_HISTORY + 1)
        if len(rows) > MAX_HISTORY:
            raise _too_many()
        middle = f'","deviceID":{json.dumps(device.id)},"payload":'
        items = ['{"updated_at":"' + (iso(at) or "") + middle + payload + "}" for at, payload in rows]
        return '{"diagnostics":[' + ",".join(items) + "]}"

    async def history_csv(self, user: User, ref: str, start: str | None, end: str | None) -> str:
        return to_csv(await self.history(user, ref, start, end))

    async def summary(
        self, user: User, ref: str, start: str | None, end: str | None, limit: str | None
    ) -> dict[str, Any]:
        device = await self._devices.access_device(user, ref, "devices.diagnostics.summary:get")
        try:
            buckets = int(limit) if limit else 30
        except ValueError:
            raise InvalidInput("limit must be a whole number", code="bad_request") from None
        if not 1 <= buckets <= MAX_SUMMARY_BUCKETS:
            raise InvalidInput(f"limit must be between 1 and {MAX_SUMMARY_BUCKETS}", code="bad_request")
        start_at, end_at = self._range(start, end, default_span=self._policy.retention)
        async with self._store.transaction(readonly=True) as tx:
            records = _at_most(
                await tx.vitals.between(device.id, user.id, start_at, end_at, limit=MAX_HISTORY + 1)
            )
        return summarise(records, device_id=device.id, start=start_at, end=end_at, limit=buckets)

    async def metadata(self, user: User, ref: str) -> dict[str, Any]:
        await self._devices.access_device(user, ref, "devices.diagnostics.metadata:get")
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
            rows = []
            for device_id, at, payload in batch:
                owner = await self._events.owner_of(device_id)  # cached: read once per device
                if owner is not None:
                    rows.append((device_id, owner, at, payload))
            async with self._store.transaction() as tx:
                await tx.vitals.add_many(rows)
        except Exception:
            logger.exception("writing vitals failed; the next flush tries again", reports=len(batch))
            self._pending[:0] = batch[: max(0, MAX_PENDING - len(self._pending))]
            return 0
        for device_id, owner, _at, payload in rows:
            data = json.dumps(payload, separators=(",", ":"))
            await self._events.publish_device_system(device_id, UPDATE_EVENT, data, owner_id=owner)
        return len(rows)

    # ------------------------------------------------------------------ retention

    async def prune(self) -> int:
        """Delete reports older than the retention; returns how many."""
        async with self._store.transaction() as tx:
            removed = await tx.vitals.prune(self._clock.now() - self._policy.retention)
        if removed:
            logger.info("old vitals pruned", removed=removed)
        return removed

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
