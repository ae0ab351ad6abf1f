"""
Migration 0024 (customers) on a database that already holds a product with a device in a group, a user's
token and claim code: all survive (SQLite gets ``product_devices.customer_id`` without a rebuild, whose drop
would cascade into the group memberships), and the new columns start empty.
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import func, insert, select

from devicecloud.store.migrate import upgrade
from devicecloud.store.sql import SqlStore
from devicecloud.store.tables import (
    access_tokens,
    claim_codes,
    device_group_members,
    device_groups,
    devices,
    product_devices,
    products,
    users,
)

NOW = datetime(2026, 12, 4, tzinfo=UTC)


async def test_memberships_tokens_and_codes_survive(database_url: str) -> None:
    store = SqlStore.from_url(database_url)
    try:
        await upgrade(store.engine, "0023_diagnostics")
        async with store.engine.begin() as conn:
            await conn.execute(
                insert(users).values(
                    id=1, username="a@example.com", password_hash="x", account_info={},
                    mfa_enabled=False, created_at=NOW, updated_at=NOW,
                )
            )  # fmt: skip
            await conn.execute(
                insert(products).values(
                    id=1, slug="p", name="P", platform_id=6, owner_id=1, settings={},
                    created_at=NOW, updated_at=NOW,
                )
            )  # fmt: skip
            await conn.execute(
                insert(devices).values(id="a" * 24, online=False, describe={}, created_at=NOW, updated_at=NOW)
            )
            await conn.execute(
                insert(product_devices).values(device_id="a" * 24, product_id=1, created_at=NOW)
            )
            await conn.execute(
                insert(device_groups).values(id=1, product_id=1, name="g", color="#123456", created_at=NOW)
            )
            await conn.execute(insert(device_group_members).values(group_id=1, device_id="a" * 24))
            await conn.execute(
                insert(access_tokens).values(
                    token_hash="t", hint="t", user_id=1, client_id="particle", scopes=[], created_at=NOW
                )
            )
            await conn.execute(insert(claim_codes).values(code_hash="c", user_id=1, expires_at=NOW))
        await upgrade(store.engine)
        async with store.engine.begin() as conn:
            kept = [
                (await conn.execute(select(func.count()).select_from(table))).scalar()
                for table in (product_devices, device_group_members, access_tokens, claim_codes)
            ]
            assert kept == [1, 1, 1, 1]
            assert (await conn.execute(select(product_devices.c.customer_id))).scalar() is None
            assert (await conn.execute(select(access_tokens.c.customer_id))).scalar() is None
            assert (await conn.execute(select(claim_codes.c.customer_id))).scalar() is None
    finally:
        await store.close()
