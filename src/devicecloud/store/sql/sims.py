"""
SQL repository of SIM cards and their daily usage (decision 0022).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date
from typing import Any

from sqlalchemy import and_, delete, func, insert, select, update
from sqlalchemy.engine import Row
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.sql import Select

from devicecloud.domain.sims import Sim, SimQuery, SimStatus, UsageDay, UsageRow
from devicecloud.errors import Conflict
from devicecloud.store.tables import devices, sim_usage, sims, users

_COLUMNS = (
    *sims.c,
    users.c.username.label("owner_username"),
    devices.c.name.label("last_device_name"),
)
_FIELDS = (
    "iccid",
    "user_id",
    "product_id",
    "activations_count",
    "deactivations_count",
    "first_activated_on",
    "last_activated_on",
    "last_activated_via",
    "last_status_change_action",
    "last_status_change_action_error",
    "carrier",
    "last_device_id",
    "created_at",
    "updated_at",
)


def _select() -> Select[Any]:
    joined = sims.outerjoin(users, users.c.id == sims.c.user_id).outerjoin(
        devices, devices.c.id == sims.c.last_device_id
    )
    return select(*_COLUMNS).select_from(joined)


def _sim(row: Row[Any]) -> Sim:
    return Sim(
        status=SimStatus(row.status),
        owner_username=row.owner_username,
        last_device_name=row.last_device_name,
        **{name: getattr(row, name) for name in _FIELDS},
    )


def _values(sim: Sim) -> dict[str, Any]:
    return {"status": sim.status.value, **{name: getattr(sim, name) for name in _FIELDS}}


class SqlSims:
    def __init__(self, conn: AsyncConnection) -> None:
        self._conn = conn

    async def get(self, iccid: str) -> Sim | None:
        row = (await self._conn.execute(_select().where(sims.c.iccid == iccid))).first()
        return _sim(row) if row is not None else None

    async def existing(self, iccids: Sequence[str]) -> Sequence[Sim]:
        if not iccids:
            return []
        rows = await self._conn.execute(_select().where(sims.c.iccid.in_(list(iccids))))
        return [_sim(row) for row in rows]

    async def add(self, new: Sequence[Sim]) -> None:
        if not new:
            return
        try:
            await self._conn.execute(insert(sims), [_values(sim) for sim in new])
        except IntegrityError as exc:
            raise Conflict("A SIM card of this list was registered meanwhile; try again") from exc

    async def update(self, iccid: str, **changes: Any) -> None:
        if "status" in changes:
            changes["status"] = SimStatus(changes["status"]).value
        await self._conn.execute(update(sims).where(sims.c.iccid == iccid).values(**changes))

    async def delete(self, iccid: str) -> None:
        await self._conn.execute(delete(sim_usage).where(sim_usage.c.iccid == iccid))
        await self._conn.execute(delete(sims).where(sims.c.iccid == iccid))

    async def list_for_user(self, user_id: int) -> Sequence[Sim]:
        rows = await self._conn.execute(_select().where(sims.c.user_id == user_id).order_by(sims.c.iccid))
        return [_sim(row) for row in rows]

    async def list_for_product(self, product_id: int, query: SimQuery) -> tuple[Sequence[Sim], int]:
        conditions = [sims.c.product_id == product_id]
        if query.iccid:
            conditions.append(sims.c.iccid.contains(query.iccid, autoescape=True))
        if query.device_id:
            conditions.append(sims.c.last_device_id.contains(query.device_id.lower(), autoescape=True))
        if query.device_name:
            conditions.append(func.lower(devices.c.name).contains(query.device_name.lower(), autoescape=True))
        where = and_(*conditions)
        total = (
            await self._conn.execute(
                select(func.count())
                .select_from(sims.outerjoin(devices, devices.c.id == sims.c.last_device_id))
                .where(where)
            )
        ).scalar_one()
        rows = await self._conn.execute(
            _select()
            .where(where)
            .order_by(sims.c.iccid)
            .offset((query.page - 1) * query.per_page)
            .limit(query.per_page)
        )
        return [_sim(row) for row in rows], int(total)

    async def count_active(self, product_id: int) -> int:
        found = await self._conn.execute(
            select(func.count())
            .select_from(sims)
            .where(and_(sims.c.product_id == product_id, sims.c.status == SimStatus.ACTIVE.value))
        )
        return int(found.scalar_one())

    async def usage(
        self, since: date, until: date, *, iccid: str | None = None, product_id: int | None = None
    ) -> Sequence[UsageDay]:
        statement = select(sim_usage.c.day, func.sum(sim_usage.c.bytes_used).label("used")).where(
            and_(sim_usage.c.day >= since, sim_usage.c.day <= until)
        )
        if iccid is not None:
            statement = statement.where(sim_usage.c.iccid == iccid)
        if product_id is not None:
            statement = statement.where(
                sim_usage.c.iccid.in_(select(sims.c.iccid).where(sims.c.product_id == product_id))
            )
        rows = await self._conn.execute(statement.group_by(sim_usage.c.day).order_by(sim_usage.c.day))
        return [UsageDay(row.day, int(row.used)) for row in rows]

    async def record_usage(self, rows: Sequence[UsageRow]) -> int:
        known = {
            row.iccid
            for row in await self._conn.execute(
                select(sims.c.iccid).where(sims.c.iccid.in_(sorted({r.iccid for r in rows})))
            )
        }
        stored = 0
        latest_device: dict[str, tuple[date, str]] = {}
        for row in rows:
            if row.iccid not in known:
                continue
            key = and_(sim_usage.c.iccid == row.iccid, sim_usage.c.day == row.day)
            await self._conn.execute(delete(sim_usage).where(key))
            await self._conn.execute(
                insert(sim_usage).values(iccid=row.iccid, day=row.day, bytes_used=row.bytes_used)
            )
            stored += 1
            if row.device_id is not None:
                seen = latest_device.get(row.iccid)
                if seen is None or seen[0] <= row.day:
                    latest_device[row.iccid] = (row.day, row.device_id)
        for iccid, (_day, device_id) in latest_device.items():
            await self._conn.execute(
                update(sims).where(sims.c.iccid == iccid).values(last_device_id=device_id)
            )
        return stored
