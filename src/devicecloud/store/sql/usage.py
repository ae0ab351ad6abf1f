"""
SQL repository of usage (decision 0026): per device, day and writer counters; usage report jobs; the
notifications of crossed limits.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date, datetime
from typing import Any

from sqlalchemy import Integer, and_, bindparam, cast, delete, func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from devicecloud.domain.timestamps import iso
from devicecloud.domain.usage import Account, CounterRow, DeviceDay, UsageNotification, UsageReport
from devicecloud.store.tables import (
    devices,
    product_devices,
    usage_counters,
    usage_notifications,
    usage_reports,
)

_c = usage_counters.c

_DELETE_ROW = delete(usage_counters).where(
    _c.device_id == bindparam("k_device"), _c.day == bindparam("k_day"), _c.writer == bindparam("k_writer")
)


def _of(account: Account) -> Any:
    return _c.owner_id == account.id if account.kind == "user" else _c.product_id == account.id


def _report(row: Any) -> UsageReport:
    return UsageReport(
        id=row.id,
        account=Account(row.account_kind, row.account_id),
        state=row.state,
        report_type=row.report_type,
        date_period_start=row.date_period_start,
        date_period_end=row.date_period_end,
        devices=tuple(row.devices or ()),
        products=tuple(row.products or ()),
        created_at_iso=iso(row.created_at) or "",
        expires_at_iso=iso(row.expires_at) or "",
        download_key=row.download_key,
    )


def _notification(row: Any) -> UsageNotification:
    return UsageNotification(
        id=row.id,
        account=Account(row.account_kind, row.account_id),
        event_name=row.event_name,
        period_start=row.period_start,
        period_end=row.period_end,
        limit=row.limit_name,
        used=row.used,
        allowed=row.allowed,
        created_at_iso=iso(row.created_at) or "",
    )


class SqlUsage:
    def __init__(self, conn: AsyncConnection) -> None:
        self._conn = conn

    # ------------------------------------------------------------------ counters

    async def write(self, rows: Sequence[CounterRow]) -> None:
        if not rows:
            return
        await self._conn.execute(
            _DELETE_ROW, [{"k_device": r.device_id, "k_day": r.day, "k_writer": r.writer} for r in rows]
        )
        await self._conn.execute(
            insert(usage_counters),
            [
                {
                    "device_id": r.device_id,
                    "day": r.day,
                    "writer": r.writer,
                    "owner_id": r.owner_id,
                    "product_id": r.product_id,
                    "connected": r.connected,
                    "events": r.events,
                    "calls": r.calls,
                    "reads": r.reads,
                    "data_bytes": r.data_bytes,
                }
                for r in rows
            ],
        )

    async def accounts_of(self, device_ids: Sequence[str]) -> dict[str, tuple[int | None, int | None]]:
        if not device_ids:
            return {}
        query = (
            select(devices.c.id, devices.c.owner_id, product_devices.c.product_id)
            .select_from(devices.outerjoin(product_devices, product_devices.c.device_id == devices.c.id))
            .where(devices.c.id.in_(list(device_ids)))
        )
        return {row.id: (row.owner_id, row.product_id) for row in await self._conn.execute(query)}

    async def owned_devices(self, account: Account) -> int:
        if account.kind == "user":
            query = select(func.count()).select_from(devices).where(devices.c.owner_id == account.id)
        else:
            query = (
                select(func.count())
                .select_from(product_devices)
                .where(product_devices.c.product_id == account.id, product_devices.c.denied.is_(False))
            )
        return int((await self._conn.execute(query)).scalar_one())

    async def totals(self, account: Account, start: date, end: date) -> tuple[int, int, int, int, int]:
        """(billable devices, events, calls, reads, data bytes) over ``[start, end]`` days."""
        where = and_(_of(account), _c.day >= start, _c.day <= end)
        sums = (
            await self._conn.execute(
                select(
                    func.coalesce(func.sum(_c.events), 0),
                    func.coalesce(func.sum(_c.calls), 0),
                    func.coalesce(func.sum(_c.reads), 0),
                    func.coalesce(func.sum(_c.data_bytes), 0),
                ).where(where)
            )
        ).one()
        billable = (
            await self._conn.execute(select(func.count(func.distinct(_c.device_id))).where(where))
        ).scalar_one()
        return int(billable), int(sums[0]), int(sums[1]), int(sums[2]), int(sums[3])

    async def days(
        self,
        account: Account,
        start: date,
        end: date,
        *,
        device_ids: Sequence[str] = (),
        product_ids: Sequence[int] = (),
    ) -> list[DeviceDay]:
        query = select(
            _c.day,
            _c.device_id,
            func.max(_c.product_id),
            func.max(cast(_c.connected, Integer)),
            func.sum(_c.events),
            func.sum(_c.calls),
            func.sum(_c.reads),
            func.sum(_c.data_bytes),
        ).where(_of(account), _c.day >= start, _c.day <= end)
        if device_ids:
            query = query.where(_c.device_id.in_(list(device_ids)))
        if product_ids:
            query = query.where(_c.product_id.in_(list(product_ids)))
        query = query.group_by(_c.day, _c.device_id).order_by(_c.day, _c.device_id)
        return [
            DeviceDay(
                day=row[0],
                device_id=row[1],
                product_id=row[2],
                connected=bool(row[3]),
                events=int(row[4]),
                calls=int(row[5]),
                reads=int(row[6]),
                data_bytes=int(row[7]),
            )
            for row in await self._conn.execute(query)
        ]

    # ------------------------------------------------------------------ reports

    async def add_report(self, report: UsageReport, created_at: datetime, expires_at: datetime) -> None:
        await self._conn.execute(
            insert(usage_reports).values(
                id=report.id,
                account_kind=report.account.kind,
                account_id=report.account.id,
                state=report.state,
                report_type=report.report_type,
                date_period_start=report.date_period_start,
                date_period_end=report.date_period_end,
                devices=list(report.devices),
                products=list(report.products),
                created_at=created_at,
                expires_at=expires_at,
            )
        )

    async def report(self, report_id: str) -> UsageReport | None:
        row = (
            await self._conn.execute(
                select(*[c for c in usage_reports.c if c.name != "content"]).where(
                    usage_reports.c.id == report_id
                )
            )
        ).first()
        return _report(row) if row is not None else None

    async def pending_reports(self) -> list[UsageReport]:
        query = select(*[c for c in usage_reports.c if c.name != "content"]).where(
            usage_reports.c.state == "pending"
        )
        return [_report(row) for row in await self._conn.execute(query)]

    async def finish_report(
        self, report_id: str, *, state: str, content: str | None, key: str | None
    ) -> None:
        await self._conn.execute(
            update(usage_reports)
            .where(usage_reports.c.id == report_id)
            .values(state=state, content=content, download_key=key)
        )

    async def report_content(self, report_id: str, key: str, now: datetime) -> str | None:
        row = (
            await self._conn.execute(
                select(usage_reports.c.content).where(
                    usage_reports.c.id == report_id,
                    usage_reports.c.download_key == key,
                    usage_reports.c.state == "available",
                    usage_reports.c.expires_at > now,
                )
            )
        ).first()
        return None if row is None else row[0]

    async def prune_reports(self, now: datetime) -> int:
        result = await self._conn.execute(delete(usage_reports).where(usage_reports.c.expires_at <= now))
        return int(result.rowcount or 0)

    # ------------------------------------------------------------------ notifications

    async def has_notification(self, account: Account, period_start: date, limit: str) -> bool:
        n = usage_notifications.c
        query = select(n.id).where(
            n.account_kind == account.kind,
            n.account_id == account.id,
            n.period_start == period_start,
            n.limit_name == limit,
        )
        return (await self._conn.execute(query)).first() is not None

    async def add_notification(self, notice: UsageNotification, created_at: datetime) -> None:
        await self._conn.execute(
            insert(usage_notifications).values(
                id=notice.id,
                account_kind=notice.account.kind,
                account_id=notice.account.id,
                event_name=notice.event_name,
                period_start=notice.period_start,
                period_end=notice.period_end,
                limit_name=notice.limit,
                used=notice.used,
                allowed=notice.allowed,
                created_at=created_at,
            )
        )

    async def notifications(self, account: Account) -> list[UsageNotification]:
        n = usage_notifications.c
        query = (
            select(usage_notifications)
            .where(n.account_kind == account.kind, n.account_id == account.id)
            .order_by(n.created_at.desc(), n.id)
        )
        return [_notification(row) for row in await self._conn.execute(query)]
