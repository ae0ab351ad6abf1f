"""
The event bus contract (bus/interfaces.py), run against every backend (today: the in-process bus).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest

from devicecloud.bus.interfaces import EventBus
from devicecloud.bus.memory import MemoryBus
from devicecloud.domain.events import CloudEvent, EventFilter

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def event(name: str, *, owner: int | None = 1, public: bool = False, device: str | None = None) -> CloudEvent:
    return CloudEvent(
        name=name,
        data=name,
        ttl=60,
        published_at=NOW,
        coreid=device or "api",
        public=public,
        owner_id=owner,
        device_id=device,
    )


@pytest.fixture(params=["memory"])
async def bus(request: pytest.FixtureRequest) -> AsyncIterator[EventBus]:
    backend = MemoryBus(max_pending=10)
    yield backend
    await backend.close()


async def drain(subscription: object, count: int) -> list[str]:
    names = []
    async for item in subscription:  # type: ignore[attr-defined]
        names.append(item.name)
        if len(names) == count:
            break
    return names


async def test_order_is_kept(bus: EventBus) -> None:
    """A subscriber gets one publisher's events in publish order."""
    subscription = bus.subscribe(EventFilter(owner_id=1))
    for n in range(8):
        await bus.publish(event(f"e{n}"))
    assert [f"e{n}" for n in range(8)] == await drain(subscription, 8)


async def test_filters(bus: EventBus) -> None:
    """Prefix, owner, public and device rules decide who receives what."""
    mine = bus.subscribe(EventFilter(prefix="temp", owner_id=1))
    public = bus.subscribe(EventFilter(prefix="temp", owner_id=2, include_public=True))
    one_device = bus.subscribe(EventFilter(owner_id=1, device_id="d1"))
    await bus.publish(event("temperature", owner=1, device="d1"))
    await bus.publish(event("temperature", owner=1, public=True, device="d2"))
    await bus.publish(event("humidity", owner=1, device="d1"))
    await bus.publish(event("temperature", owner=3))
    assert ["temperature", "temperature"] == await drain(mine, 2)
    assert ["temperature"] == await drain(public, 1)
    assert ["temperature", "humidity"] == await drain(one_device, 2)


async def test_slow_subscriber_is_closed_and_others_get_everything(bus: EventBus) -> None:
    """Past its bound a subscriber that never reads is closed; a reading one misses nothing."""
    slow = bus.subscribe(EventFilter(owner_id=1))
    healthy = bus.subscribe(EventFilter(owner_id=1))
    received: list[str] = []

    async def read() -> None:
        async for item in healthy:
            received.append(item.name)
            if len(received) == 50:
                return

    reader = asyncio.create_task(read())
    for n in range(50):
        await bus.publish(event(f"e{n}"))
        await asyncio.sleep(0)
    await asyncio.wait_for(reader, 5)
    assert [f"e{n}" for n in range(50)] == received
    assert slow.closed_reason is not None
    assert [] == [item async for item in slow][10:]  # at most its bound was ever held
    assert 1 == bus.statistics()["subscriptions"]


async def test_close_ends_iteration_and_unsubscribes(bus: EventBus) -> None:
    """close() ends the iterator at once and the bus forgets the subscription."""
    subscription = bus.subscribe(EventFilter(owner_id=1))
    subscription.close("client left")
    assert [] == [item async for item in subscription]
    assert ("client left", 0) == (subscription.closed_reason, bus.statistics()["subscriptions"])
