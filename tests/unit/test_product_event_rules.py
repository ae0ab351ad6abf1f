"""
The product dimension of event filters (issue 11 section 4): a product stream sees its product's events
whoever owns them, nothing else, and the bus evaluates it only for its product's events (decision 0012's
index: a product is one more audience, not a scan).
"""

from __future__ import annotations

from datetime import UTC, datetime

from devicecloud.bus.memory import MemoryBus
from devicecloud.domain.events import CloudEvent, EventFilter, audiences

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def event(
    name: str, *, owner: int | None = 1, product: int | None = None, public: bool = False
) -> CloudEvent:
    return CloudEvent(
        name=name,
        data=None,
        ttl=60,
        published_at=NOW,
        coreid="0123456789abcdef01234567",
        public=public,
        owner_id=owner,
        device_id="0123456789abcdef01234567",
        product_id=product,
    )


def test_a_product_filter_sees_its_products_events_only() -> None:
    product = EventFilter(prefix="temp", product_id=7)
    assert product.matches(event("temp", owner=1, product=7))
    assert product.matches(event("temperature", owner=None, product=7))  # an unowned product device
    assert not product.matches(event("temp", owner=1, product=8))
    assert not product.matches(event("temp", owner=1, public=True))  # public events are not the product's
    assert not product.matches(event("humidity", product=7))
    # The owner's own filter is untouched by the product.
    assert EventFilter(owner_id=1).matches(event("temp", owner=1, product=7))
    assert not EventFilter(owner_id=2).matches(event("temp", owner=1, product=7))


def test_product_events_have_the_product_audience() -> None:
    assert ("product", 7) in audiences(event("x", product=7))
    assert not any(kind == "product" for kind, _ in audiences(event("x")))


async def test_the_bus_evaluates_product_streams_only_for_their_products_events() -> None:
    bus = MemoryBus(max_pending=10)
    streams = [bus.subscribe(EventFilter(product_id=n % 10)) for n in range(1000)]
    owners = [bus.subscribe(EventFilter(owner_id=1)) for _ in range(5)]

    async def evaluated_by(published: CloudEvent) -> int:
        before = bus.statistics()["evaluated"]
        await bus.publish(published)
        return bus.statistics()["evaluated"] - before

    assert 100 + 5 == await evaluated_by(event("x", owner=1, product=3))
    assert 5 == await evaluated_by(event("x", owner=1))
    assert 100 == await evaluated_by(event("x", owner=None, product=4))
    assert [streams[3].pending(), streams[4].pending(), owners[0].pending()] == [1, 1, 2]
    await bus.close()
