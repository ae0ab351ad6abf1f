"""
SQL repositories of webhooks: the hooks, the delivery outbox, and the delivery logs.

The outbox is claimed with a lease: a worker takes due rows by setting ``lease_until``, and a row whose lease
ran out (its worker died) is due again. A row whose event cannot be read is claimed like the others and
returned as an `UnreadableDelivery`, so it never fails the claim of the rows beside it. PostgreSQL takes the
rows with ``FOR UPDATE SKIP LOCKED`` so several processes can share one outbox; SQLite's writer lock (BEGIN
IMMEDIATE) serialises claims anyway.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import and_, bindparam, delete, func, insert, or_, select, update
from sqlalchemy.engine import Row
from sqlalchemy.ext.asyncio import AsyncConnection

from devicecloud.domain.webhooks import (
    Delivery,
    DeliveryLog,
    HookEvent,
    UnreadableDelivery,
    Webhook,
    config_from_fields,
    config_to_fields,
)
from devicecloud.errors import NotFound
from devicecloud.store.tables import webhook_deliveries, webhook_logs, webhooks


def _hook(row: Row[Any]) -> Webhook:
    return Webhook(
        id=row.id,
        owner_id=row.owner_id,
        product_id=row.product_id,
        config=config_from_fields(dict(row.config)),
        created_at=row.created_at,
    )


def event_to_json(event: HookEvent) -> dict[str, Any]:
    return {
        "id": event.id,
        "name": event.name,
        "data": event.data,
        "coreid": event.coreid,
        "published_at": event.published_at.isoformat(),
        "device_id": event.device_id,
        "product_id": event.product_id,
        "product_version": event.product_version,
        "product_user_id": event.product_user_id,
    }


def event_from_json(value: dict[str, Any]) -> HookEvent:
    return HookEvent(**{**value, "published_at": datetime.fromisoformat(value["published_at"])})


def _claimed(row: Row[Any]) -> Delivery | UnreadableDelivery:
    # One damaged row must not fail the claim of the rows beside it: it comes back as what it is.
    try:
        event = event_from_json(dict(row.event))
    except (KeyError, TypeError, ValueError) as exc:
        return UnreadableDelivery(id=row.id, hook_id=row.hook_id, problem=f"{type(exc).__name__}: {exc}")
    return Delivery(
        id=row.id,
        hook_id=row.hook_id,
        owner_id=row.owner_id,
        host=row.host,
        event=event,
        attempt=row.attempt,
        next_attempt_at=row.next_attempt_at,
    )


async def _existing_hooks(conn: AsyncConnection, hook_ids: set[str]) -> set[str]:
    if not hook_ids:
        return set()
    rows = await conn.execute(select(webhooks.c.id).where(webhooks.c.id.in_(hook_ids)))
    return {row.id for row in rows}


class SqlWebhooks:
    def __init__(self, conn: AsyncConnection) -> None:
        self._conn = conn

    async def add(self, hook: Webhook) -> Webhook:
        await self._conn.execute(
            insert(webhooks).values(
                id=hook.id,
                owner_id=hook.owner_id,
                product_id=hook.product_id,
                event=hook.config.event,
                config=config_to_fields(hook.config),
                created_at=hook.created_at,
            )
        )
        return hook

    async def get(self, hook_id: str) -> Webhook | None:
        row = (await self._conn.execute(select(webhooks).where(webhooks.c.id == hook_id))).first()
        return _hook(row) if row else None

    async def list_for_owner(self, owner_id: int) -> Sequence[Webhook]:
        stmt = select(webhooks).where(webhooks.c.owner_id == owner_id).order_by(webhooks.c.created_at)
        return [_hook(row) for row in await self._conn.execute(stmt)]

    async def list_for_product(self, product_id: int) -> Sequence[Webhook]:
        stmt = select(webhooks).where(webhooks.c.product_id == product_id).order_by(webhooks.c.created_at)
        return [_hook(row) for row in await self._conn.execute(stmt)]

    async def list_all(self) -> Sequence[Webhook]:
        return [_hook(row) for row in await self._conn.execute(select(webhooks))]

    async def replace(self, hook: Webhook) -> Webhook:
        result = await self._conn.execute(
            update(webhooks)
            .where(webhooks.c.id == hook.id)
            .values(event=hook.config.event, config=config_to_fields(hook.config))
        )
        if result.rowcount == 0:
            raise NotFound("Integration not found")
        return hook

    async def delete(self, hook_id: str) -> bool:
        await self._conn.execute(delete(webhook_deliveries).where(webhook_deliveries.c.hook_id == hook_id))
        await self._conn.execute(delete(webhook_logs).where(webhook_logs.c.hook_id == hook_id))
        result = await self._conn.execute(delete(webhooks).where(webhooks.c.id == hook_id))
        return bool(result.rowcount)

    async def logs(self, hook_id: str, limit: int) -> Sequence[DeliveryLog]:
        stmt = (
            select(webhook_logs.c.at, webhook_logs.c.entry)
            .where(webhook_logs.c.hook_id == hook_id)
            .order_by(webhook_logs.c.id.desc())
            .limit(limit)
        )
        return [
            DeliveryLog(
                at=row.at,
                request=row.entry.get("request") or {},
                response=row.entry.get("response"),
                error=row.entry.get("error"),
            )
            for row in await self._conn.execute(stmt)
        ]

    async def add_logs(self, entries: Sequence[tuple[str, DeliveryLog]]) -> None:
        live = await _existing_hooks(self._conn, {hook_id for hook_id, _log in entries})
        entries = [entry for entry in entries if entry[0] in live]
        if not entries:
            return
        await self._conn.execute(
            insert(webhook_logs),
            [
                {
                    "hook_id": hook_id,
                    "at": log.at,
                    "entry": {"request": log.request, "response": log.response, "error": log.error},
                }
                for hook_id, log in entries
            ],
        )

    async def prune_logs(self, hook_ids: Iterable[str], keep: int) -> None:
        for hook_id in set(hook_ids):
            newest = (
                select(webhook_logs.c.id)
                .where(webhook_logs.c.hook_id == hook_id)
                .order_by(webhook_logs.c.id.desc())
                .limit(1)
                .offset(keep - 1)
                .scalar_subquery()
            )
            await self._conn.execute(
                delete(webhook_logs).where(webhook_logs.c.hook_id == hook_id, webhook_logs.c.id < newest)
            )


class SqlDeliveries:
    def __init__(self, conn: AsyncConnection) -> None:
        self._conn = conn

    async def enqueue(self, items: Sequence[tuple[Webhook, HookEvent, str]], now: datetime) -> None:
        # A hook deleted since the caller matched it would fail the whole batch on its foreign key.
        live = await _existing_hooks(self._conn, {hook.id for hook, _event, _host in items})
        items = [item for item in items if item[0].id in live]
        if not items:
            return
        await self._conn.execute(
            insert(webhook_deliveries),
            [
                {
                    "hook_id": hook.id,
                    "owner_id": hook.owner_id,
                    "host": host[:255],
                    "event": event_to_json(event),
                    "attempt": 0,
                    "next_attempt_at": now,
                    "lease_until": None,
                    "created_at": now,
                }
                for hook, event, host in items
            ],
        )

    async def claim_due(
        self, now: datetime, lease_until: datetime, limit: int, exclude_hosts: Collection[str] = ()
    ) -> Sequence[Delivery | UnreadableDelivery]:
        due = and_(
            webhook_deliveries.c.next_attempt_at <= now,
            or_(webhook_deliveries.c.lease_until.is_(None), webhook_deliveries.c.lease_until < now),
        )
        if exclude_hosts:
            due = and_(due, webhook_deliveries.c.host.not_in(list(exclude_hosts)))
        stmt = (
            select(webhook_deliveries)
            .where(due)
            .order_by(webhook_deliveries.c.next_attempt_at, webhook_deliveries.c.id)
            .limit(limit)
        )
        if self._conn.dialect.name == "postgresql":
            stmt = stmt.with_for_update(skip_locked=True)
        rows = list(await self._conn.execute(stmt))
        if not rows:
            return []
        await self._conn.execute(
            update(webhook_deliveries)
            .where(webhook_deliveries.c.id.in_([row.id for row in rows]))
            .values(lease_until=lease_until)
        )
        return [_claimed(row) for row in rows]

    async def extend_leases(self, delivery_ids: Sequence[int], lease_until: datetime) -> None:
        for start in range(0, len(delivery_ids), 500):
            held = webhook_deliveries.c.id.in_(delivery_ids[start : start + 500])
            await self._conn.execute(update(webhook_deliveries).where(held).values(lease_until=lease_until))

    async def finish(self, delivery_ids: Sequence[int]) -> None:
        if delivery_ids:
            await self._conn.execute(
                delete(webhook_deliveries).where(webhook_deliveries.c.id.in_(delivery_ids))
            )

    async def reschedule(self, items: Sequence[tuple[int, int, datetime]]) -> None:
        """
        ``(delivery id, attempts made, next attempt at)`` each; the lease is released.
        """
        if not items:
            return
        await self._conn.execute(
            update(webhook_deliveries)
            .where(webhook_deliveries.c.id == bindparam("b_id"))
            .values(attempt=bindparam("b_attempt"), next_attempt_at=bindparam("b_next"), lease_until=None),
            [{"b_id": i, "b_attempt": attempt, "b_next": at} for i, attempt, at in items],
        )

    async def count(self) -> int:
        return int(
            (await self._conn.execute(select(func.count()).select_from(webhook_deliveries))).scalar_one()
        )
