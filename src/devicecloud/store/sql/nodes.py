"""
SQL repository of nodes: the processes holding device links, and their leases.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import delete, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from devicecloud.store.tables import nodes


class SqlNodes:
    def __init__(self, conn: AsyncConnection) -> None:
        self._conn = conn

    async def register(self, node_id: str, now: datetime) -> None:
        if not await self.renew(node_id, now):
            try:
                async with self._conn.begin_nested():
                    await self._conn.execute(insert(nodes).values(id=node_id, started_at=now, seen_at=now))
            except IntegrityError:  # registered meanwhile by a process with the same (configured) id
                await self.renew(node_id, now)

    async def renew(self, node_id: str, now: datetime) -> bool:
        result = await self._conn.execute(update(nodes).where(nodes.c.id == node_id).values(seen_at=now))
        return bool(result.rowcount)

    async def expired(self, seen_before: datetime) -> Sequence[str]:
        stmt = select(nodes.c.id).where(nodes.c.seen_at < seen_before).order_by(nodes.c.id)
        return [row.id for row in await self._conn.execute(stmt)]

    async def remove(self, node_ids: Sequence[str]) -> None:
        if node_ids:
            await self._conn.execute(delete(nodes).where(nodes.c.id.in_(node_ids)))

    async def remove_expired(self, seen_before: datetime) -> None:
        await self._conn.execute(delete(nodes).where(nodes.c.seen_at < seen_before))

    async def live(self) -> Sequence[str]:
        return [row.id for row in await self._conn.execute(select(nodes.c.id).order_by(nodes.c.id))]
