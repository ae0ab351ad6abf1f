"""
SQL repository of device vitals: one row per report, read by device and owner over a time range.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Text, cast, delete, insert, select
from sqlalchemy.ext.asyncio import AsyncConnection

from devicecloud.domain.diagnostics import VitalsRecord
from devicecloud.store.tables import device_vitals

_COLUMNS = (device_vitals.c.device_id, device_vitals.c.created_at, device_vitals.c.payload)


def _record(row: Any) -> VitalsRecord:
    return VitalsRecord(device_id=row.device_id, updated_at=row.created_at, payload=row.payload)


class SqlVitals:
    def __init__(self, conn: AsyncConnection) -> None:
        self._conn = conn

    async def add(self, device_id: str, owner_id: int, at: datetime, payload: dict[str, Any]) -> None:
        await self._conn.execute(
            insert(device_vitals).values(
                device_id=device_id, owner_id=owner_id, created_at=at, payload=payload
            )
        )

    async def add_many(self, rows: Sequence[tuple[str, int, datetime, dict[str, Any]]]) -> None:
        if rows:
            await self._conn.execute(
                insert(device_vitals),
                [{"device_id": d, "owner_id": o, "created_at": at, "payload": p} for d, o, at, p in rows],
            )

    def _of(self, device_id: str, owner_id: int) -> Any:
        return select(*_COLUMNS).where(
            device_vitals.c.device_id == device_id, device_vitals.c.owner_id == owner_id
        )

    async def latest(self, device_id: str, owner_id: int) -> VitalsRecord | None:
        query = self._of(device_id, owner_id).order_by(
            device_vitals.c.created_at.desc(), device_vitals.c.id.desc()
        )
        row = (await self._conn.execute(query.limit(1))).first()
        return _record(row) if row is not None else None

    async def between(
        self, device_id: str, owner_id: int, start: datetime, end: datetime, *, limit: int
    ) -> list[VitalsRecord]:
        query = (
            self._of(device_id, owner_id)
            .where(device_vitals.c.created_at >= start, device_vitals.c.created_at < end)
            .order_by(device_vitals.c.created_at, device_vitals.c.id)
            .limit(limit)
        )
        return [_record(row) for row in await self._conn.execute(query)]

    async def between_json(
        self, device_id: str, owner_id: int, start: datetime, end: datetime, *, limit: int
    ) -> list[tuple[datetime, str]]:
        query = (
            select(device_vitals.c.created_at, cast(device_vitals.c.payload, Text))
            .where(
                device_vitals.c.device_id == device_id,
                device_vitals.c.owner_id == owner_id,
                device_vitals.c.created_at >= start,
                device_vitals.c.created_at < end,
            )
            .order_by(device_vitals.c.created_at, device_vitals.c.id)
            .limit(limit)
        )
        return [(row[0], row[1]) for row in await self._conn.execute(query)]

    async def prune(self, before: datetime) -> int:
        result = await self._conn.execute(delete(device_vitals).where(device_vitals.c.created_at < before))
        return int(result.rowcount or 0)
