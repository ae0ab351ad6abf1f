"""The UDP gateway's kept DTLS sessions (ADR 0027): read whole at start, written in batches."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import delete, insert, select
from sqlalchemy.ext.asyncio import AsyncConnection

from devicecloud.store.interfaces import DtlsSessionRow
from devicecloud.store.tables import dtls_sessions


class SqlDtlsSessions:
    def __init__(self, conn: AsyncConnection) -> None:
        self._conn = conn

    async def all(self) -> Sequence[DtlsSessionRow]:
        t = dtls_sessions.c
        rows = await self._conn.execute(select(t.device_id, t.cid, t.state, t.hello, t.reserved))
        return [DtlsSessionRow(r.device_id, r.cid, r.state, r.hello, r.reserved) for r in rows]

    async def put_many(self, rows: Sequence[DtlsSessionRow], at: datetime) -> None:
        if not rows:
            return
        await self.remove([row.device_id for row in rows])  # portable upsert: both dialects, one batch
        await self._conn.execute(
            insert(dtls_sessions),
            [
                {
                    "device_id": row.device_id,
                    "cid": row.cid,
                    "state": row.state,
                    "hello": row.hello,
                    "reserved": row.reserved,
                    "updated_at": at,
                }
                for row in rows
            ],
        )

    async def remove(self, device_ids: Sequence[str]) -> None:
        if device_ids:
            await self._conn.execute(delete(dtls_sessions).where(dtls_sessions.c.device_id.in_(device_ids)))
