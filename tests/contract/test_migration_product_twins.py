"""
Migration 0021 (product-owned webhooks) on a database that already holds a user's hook with queued
deliveries and logs: they survive (SQLite rebuilds ``webhooks``, whose drop would cascade into them).
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import func, insert, select

from devicecloud.store.migrate import upgrade
from devicecloud.store.sql import SqlStore
from devicecloud.store.tables import users, webhook_deliveries, webhook_logs, webhooks

NOW = datetime(2026, 12, 4, tzinfo=UTC)


async def test_queued_deliveries_and_logs_survive(database_url: str) -> None:
    store = SqlStore.from_url(database_url)
    try:
        await upgrade(store.engine, "0019")
        async with store.engine.begin() as conn:
            await conn.execute(
                insert(users).values(
                    id=1, username="a@example.com", password_hash="x", created_at=NOW, updated_at=NOW
                )
            )
            await conn.execute(
                insert(webhooks).values(
                    id="h" * 24, owner_id=1, event="temp", config={"url": "http://x"}, created_at=NOW
                )
            )
            for _ in range(2):
                await conn.execute(
                    insert(webhook_deliveries).values(
                        hook_id="h" * 24, owner_id=1, host="x", event={}, attempt=1,
                        next_attempt_at=NOW, created_at=NOW,
                    )
                )  # fmt: skip
            last = (await conn.execute(select(func.max(webhook_deliveries.c.id)))).scalar()
            await conn.execute(insert(webhook_logs).values(hook_id="h" * 24, at=NOW, entry={}))
        await upgrade(store.engine)
        async with store.engine.begin() as conn:
            kept = [(await conn.execute(select(func.count()).select_from(t))).scalar() for t in (
                webhooks, webhook_deliveries, webhook_logs
            )]  # fmt: skip
            assert kept == [1, 2, 1]
            # Ids are still never reused: a delivery after the last one's removal gets a new id.
            await conn.execute(webhook_deliveries.delete().where(webhook_deliveries.c.id == last))
            await conn.execute(
                insert(webhook_deliveries).values(
                    hook_id="h" * 24, owner_id=None, host="x", event={}, attempt=0,
                    next_attempt_at=NOW, created_at=NOW,
                )
            )  # fmt: skip
            assert (await conn.execute(select(func.max(webhook_deliveries.c.id)))).scalar() > last
    finally:
        await store.close()
