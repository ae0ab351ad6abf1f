"""
SQL repository of device vitals: one row per recent report, past hours compacted into one row per device and
hour holding the history answer's items already rendered (decision 0023); read by device and by the owner or
product the device had when it reported, over a time range.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime, timedelta
from itertools import groupby
from typing import Any

from sqlalchemy import Text, and_, bindparam, cast, delete, func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from devicecloud.domain.diagnostics import VitalsRecord
from devicecloud.domain.timestamps import iso
from devicecloud.domain.usage import Account
from devicecloud.store.tables import device_vitals, device_vitals_hours

_v = device_vitals.c
_h = device_vitals_hours.c
SEPARATOR = b",\n"  # between the items of an hour: the answer's comma, and a line break no item holds
_STAMP = slice(15, 39)  # an item begins {"updated_at":"2026-01-01T12:00:00.000Z"
HOUR = timedelta(hours=1)
COMPACT_LOCK = 0x7669_7461_6C73  # "vitals": the advisory lock key of compaction on PostgreSQL


def item(device_id: str, at: datetime, payload: str) -> bytes:
    """One report as the history answer lists it (UTF-8), from its stored JSON text."""
    return (
        '{"updated_at":"'
        + (iso(at) or "")
        + '","deviceID":'
        + json.dumps(device_id)
        + ',"payload":'
        + payload
        + "}"
    ).encode()


def _hour(at: datetime) -> datetime:
    return at.replace(minute=0, second=0, microsecond=0)


def _scoped(columns: Any, scope: Account) -> Any:
    return columns.owner_id == scope.id if scope.kind == "user" else columns.product_id == scope.id


def _record(device_id: str, text: bytes) -> VitalsRecord:
    body = json.loads(text)
    return VitalsRecord(
        device_id=device_id,
        updated_at=datetime.fromisoformat(body["updated_at"].replace("Z", "+00:00")),
        payload=body["payload"],
    )


class SqlVitals:
    def __init__(self, conn: AsyncConnection) -> None:
        self._conn = conn

    async def add(
        self,
        device_id: str,
        owner_id: int | None,
        product_id: int | None,
        at: datetime,
        payload: dict[str, Any],
    ) -> None:
        await self._conn.execute(
            insert(device_vitals).values(
                device_id=device_id, owner_id=owner_id, product_id=product_id, created_at=at, payload=payload
            )
        )

    async def add_many(
        self, rows: Sequence[tuple[str, int | None, int | None, datetime, dict[str, Any]]]
    ) -> None:
        if rows:
            await self._conn.execute(
                insert(device_vitals),
                [
                    {"device_id": d, "owner_id": o, "product_id": p, "created_at": at, "payload": payload}
                    for d, o, p, at, payload in rows
                ],
            )

    # ------------------------------------------------------------------ reading

    async def _runs(
        self, device_id: str, scope: Account, start: datetime, end: datetime, limit: int
    ) -> tuple[int, list[bytes | list[bytes]]]:
        """
        (reports, runs): the reports of ``[start, end)`` oldest first, as runs of rendered items — a whole
        compacted hour (its stored body, items already separated) or a list of items; stops counting past
        ``limit``.

        Single reports are read before the hours: a compaction committing between the two reads (PostgreSQL
        reads each statement at its own snapshot) then shows a report twice, never not at all, and the copy
        whose item is already in its hour's body is dropped.
        """
        rows = await self._conn.execute(
            select(_v.created_at, cast(_v.payload, Text))
            .where(_v.device_id == device_id, _scoped(_v, scope), _v.created_at >= start, _v.created_at < end)
            .order_by(_v.created_at, _v.id)
            .limit(limit + 1)
        )
        recent = [(row[0], item(device_id, row[0], row[1])) for row in rows]
        hours = await self._conn.execute(
            select(_h.hour, _h.reports, _h.body)
            .where(_h.device_id == device_id, _scoped(_h, scope), _h.hour > start - HOUR, _h.hour < end)
            .order_by(_h.hour, _h.id)
        )
        low, high = (iso(start) or "").encode(), (iso(end) or "").encode()
        runs: list[bytes | list[bytes]] = []
        bodies: dict[datetime, list[bytes]] = {}
        count = 0
        last_hour: datetime | None = None
        for row in hours:
            hour, reports, body = row[0], int(row[1]), bytes(row[2])
            last_hour = hour
            bodies.setdefault(hour, []).append(body)
            if hour >= start and hour + HOUR <= end:
                runs.append(body)  # the whole hour
                count += reports
            else:
                kept = [i for i in body.split(SEPARATOR) if low <= i[_STAMP] < high]
                runs.append(kept)
                count += len(kept)
            if count > limit:
                return count, runs
        if bodies:
            recent = [(at, i) for at, i in recent if not any(i in b for b in bodies.get(_hour(at), ()))]
        count += len(recent)
        if last_hour is not None and recent and recent[0][0] < last_hour + HOUR:
            # A report stored after its hour was compacted (rare, until the next compaction): sort all.
            every = [i for run in runs for i in _items(run)] + [text for _, text in recent]
            every.sort(key=lambda i: i[_STAMP])
            return count, [every]
        runs.append([text for _, text in recent])
        return count, runs

    async def history_json(
        self, device_id: str, scope: Account, start: datetime, end: datetime, *, limit: int
    ) -> tuple[int, list[bytes]]:
        count, runs = await self._runs(device_id, scope, start, end, limit)
        return count, [run if isinstance(run, bytes) else SEPARATOR.join(run) for run in runs if run]

    async def between(
        self, device_id: str, scope: Account, start: datetime, end: datetime, *, limit: int
    ) -> list[VitalsRecord]:
        _, runs = await self._runs(device_id, scope, start, end, limit)
        records = [_record(device_id, i) for run in runs for i in _items(run)]
        return records[: limit + 1]

    async def latest(self, device_id: str, scope: Account) -> VitalsRecord | None:
        row = (
            await self._conn.execute(
                select(_v.created_at, _v.payload)
                .where(_v.device_id == device_id, _scoped(_v, scope))
                .order_by(_v.created_at.desc(), _v.id.desc())
                .limit(1)
            )
        ).first()
        chunk = (
            await self._conn.execute(
                select(_h.body)
                .where(_h.device_id == device_id, _scoped(_h, scope))
                .order_by(_h.hour.desc(), _h.id.desc())
                .limit(1)
            )
        ).first()
        compacted = (
            _record(device_id, bytes(chunk[0]).rsplit(SEPARATOR, 1)[-1]) if chunk is not None else None
        )
        if row is not None and (compacted is None or row[0] >= compacted.updated_at):
            return VitalsRecord(device_id=device_id, updated_at=row[0], payload=row[1])
        return compacted

    # ------------------------------------------------------------------ compaction and retention

    async def compact(self, before: datetime, *, batch: int = 20_000) -> int:
        """
        Fold up to ``batch`` reports made before ``before`` into their hours' rows; returns how many. One
        compaction at a time in a cluster: SQLite's write lock is held by this transaction from its start;
        on PostgreSQL a transaction-scoped advisory lock is tried, and a node that does not get it folds
        nothing (another one is at it).
        """
        if self._conn.dialect.name == "postgresql":
            locked = (await self._conn.execute(select(func.pg_try_advisory_xact_lock(COMPACT_LOCK)))).scalar()
            if not locked:
                return 0
        rows = (
            await self._conn.execute(
                select(_v.id, _v.device_id, _v.owner_id, _v.product_id, _v.created_at, cast(_v.payload, Text))
                .where(_v.created_at < before)
                .order_by(_v.device_id, _v.owner_id, _v.product_id, _v.created_at, _v.id)
                .limit(batch)
            )
        ).all()
        if not rows:
            return 0
        for (device_id, owner_id, product_id, hour), group in groupby(
            rows, key=lambda r: (r[1], r[2], r[3], _hour(r[4]))
        ):
            items = [item(device_id, r[4], r[5]) for r in group]
            await self._fold(device_id, owner_id, product_id, hour, items)
        await self._conn.execute(
            delete(device_vitals).where(_v.id == bindparam("k_id")), [{"k_id": r[0]} for r in rows]
        )
        return len(rows)

    async def _fold(
        self, device_id: str, owner_id: int | None, product_id: int | None, hour: datetime, items: list[bytes]
    ) -> None:
        key = and_(
            _h.device_id == device_id,
            _h.owner_id.is_not_distinct_from(owner_id),
            _h.product_id.is_not_distinct_from(product_id),
            _h.hour == hour,
        )
        existing = (await self._conn.execute(select(_h.id, _h.body).where(key).limit(1))).first()
        if existing is None:
            await self._conn.execute(
                insert(device_vitals_hours).values(
                    device_id=device_id,
                    owner_id=owner_id,
                    product_id=product_id,
                    hour=hour,
                    reports=len(items),
                    body=SEPARATOR.join(items),
                )
            )
            return
        merged = bytes(existing[1]).split(SEPARATOR) + items
        merged.sort(key=lambda i: i[_STAMP])
        await self._conn.execute(
            update(device_vitals_hours)
            .where(_h.id == existing[0])
            .values(reports=len(merged), body=SEPARATOR.join(merged))
        )

    async def prune(self, before: datetime) -> int:
        result = await self._conn.execute(delete(device_vitals).where(_v.created_at < before))
        hours = await self._conn.execute(delete(device_vitals_hours).where(_h.hour <= before - HOUR))
        return int(result.rowcount or 0) + int(hours.rowcount or 0)


def _items(run: bytes | list[bytes]) -> list[bytes]:
    return run.split(SEPARATOR) if isinstance(run, bytes) else run
