"""
The webhook outbox contract on every backend: leases, renewal, rescheduling, host exclusion, ids never reused.
The runtime's dispatcher is off here (``webhooks_enabled``), so only the test touches the outbox.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import insert

from devicecloud.domain.webhooks import Delivery, HookEvent, UnreadableDelivery, Webhook, WebhookConfig
from devicecloud.runtime import Runtime
from devicecloud.store.tables import webhook_deliveries

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
LEASE = NOW + timedelta(seconds=50)


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    return {"webhooks_enabled": False}


def event(name: str) -> HookEvent:
    return HookEvent(id=name, name=name, data="d", coreid="api", published_at=NOW)


async def hook(runtime: Runtime) -> Webhook:
    async with runtime.store.transaction() as tx:
        user = await tx.users.add(username="ada@example.com", password_hash="h", account_info={}, now=NOW)
        return await tx.webhooks.add(
            Webhook(
                id="0" * 24,
                owner_id=user.id,
                config=WebhookConfig(event="e", url="http://a/"),
                created_at=NOW,
            )
        )


async def test_claims_lease_and_leases_expire(runtime: Runtime) -> None:
    h = await hook(runtime)
    async with runtime.store.transaction() as tx:
        await tx.deliveries.enqueue([(h, event("one"), "a"), (h, event("two"), "b")], NOW)
    async with runtime.store.transaction() as tx:
        first = await tx.deliveries.claim_due(NOW, LEASE, 10, exclude_hosts=["b"])
        assert [("one", "a", 0)] == [(d.event.name, d.host, d.attempt) for d in first]
        assert event("one") == first[0].event  # the event round-trips whole
        again = await tx.deliveries.claim_due(NOW, LEASE, 10)
        assert ["two"] == [d.event.name for d in again]  # "one" is leased
        assert [] == await tx.deliveries.claim_due(LEASE - timedelta(seconds=1), LEASE, 10)
        await tx.deliveries.extend_leases([first[0].id], LEASE + timedelta(seconds=50))
        later = await tx.deliveries.claim_due(LEASE + timedelta(seconds=1), LEASE + timedelta(seconds=60), 10)
        assert ["two"] == [d.event.name for d in later]  # only the lease that was not renewed ran out


async def test_reschedule_releases_and_finish_removes(runtime: Runtime) -> None:
    h = await hook(runtime)
    async with runtime.store.transaction() as tx:
        await tx.deliveries.enqueue([(h, event("one"), "a")], NOW)
        (claimed,) = await tx.deliveries.claim_due(NOW, LEASE, 10)
        await tx.deliveries.reschedule([(claimed.id, 1, NOW + timedelta(seconds=30))])
        assert [] == await tx.deliveries.claim_due(NOW + timedelta(seconds=29), LEASE, 10)
        (retried,) = await tx.deliveries.claim_due(NOW + timedelta(seconds=30), LEASE, 10)
        assert (claimed.id, 1) == (retried.id, retried.attempt)
        await tx.deliveries.finish([retried.id])
        assert 0 == await tx.deliveries.count()


async def test_ids_are_never_reused(runtime: Runtime) -> None:
    """
    The dispatcher tells deliveries apart by id; SQLite without AUTOINCREMENT hands a deleted id out again.
    """
    h = await hook(runtime)
    async with runtime.store.transaction() as tx:
        await tx.deliveries.enqueue([(h, event("one"), "a"), (h, event("two"), "a")], NOW)
        old = await tx.deliveries.claim_due(NOW, LEASE, 10)
        await tx.deliveries.finish([d.id for d in old])
        await tx.deliveries.enqueue([(h, event("three"), "a")], NOW)
        (new,) = await tx.deliveries.claim_due(NOW, LEASE, 10)
    assert new.id > max(d.id for d in old)


async def test_deleted_hooks_are_skipped_not_fatal(runtime: Runtime) -> None:
    h = await hook(runtime)
    gone = Webhook(id="f" * 24, owner_id=h.owner_id, config=h.config, created_at=NOW)
    async with runtime.store.transaction() as tx:
        await tx.deliveries.enqueue([(gone, event("lost"), "a"), (h, event("kept"), "a")], NOW)
        assert ["kept"] == [d.event.name for d in await tx.deliveries.claim_due(NOW, LEASE, 10)]


async def test_a_damaged_row_is_claimed_as_unreadable_beside_the_others(runtime: Runtime) -> None:
    h = await hook(runtime)
    async with runtime.store.transaction() as tx:
        await tx.deliveries.enqueue([(h, event("before"), "a")], NOW)
    async with runtime.store.engine.begin() as conn:  # type: ignore[attr-defined]
        row = {"hook_id": h.id, "owner_id": h.owner_id, "host": "a", "next_attempt_at": NOW}
        await conn.execute(insert(webhook_deliveries), [{**row, "created_at": NOW, "event": {"name": 5}}])
    async with runtime.store.transaction() as tx:
        await tx.deliveries.enqueue([(h, event("after"), "a")], NOW)
        claimed = await tx.deliveries.claim_due(NOW, LEASE, 10)
        assert [] == await tx.deliveries.claim_due(NOW, LEASE, 10)  # the damaged row is leased too
    good = [d.event.name for d in claimed if isinstance(d, Delivery)]
    (damaged,) = [d for d in claimed if isinstance(d, UnreadableDelivery)]
    assert (["before", "after"], h.id) == (good, damaged.hook_id)
    assert damaged.problem.startswith("KeyError")
