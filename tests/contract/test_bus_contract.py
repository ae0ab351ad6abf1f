"""
The event bus contract (bus/interfaces.py), run against every backend: the in-process bus, and NATS (the
server at DEVICECLOUD_TEST_NATS_URL, default nats://127.0.0.1:4222; skipped, with the reason, when it does
not answer), each test on a subject root and JetStream stream of its own.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest
from tests.support.nats import nats_bus

from devicecloud.bus.interfaces import EventBus
from devicecloud.bus.memory import MemoryBus
from devicecloud.domain.events import AllEvents, AnyFilter, CloudEvent, DeviceFilter, EventFilter

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def event(
    name: str,
    *,
    owner: int | None = 1,
    public: bool = False,
    device: str | None = None,
    to_device: str | None = None,
    product: int | None = None,
    customer: int | None = None,
    version: int | None = None,
) -> CloudEvent:
    return CloudEvent(
        name=name,
        data=name,
        ttl=60,
        published_at=NOW,
        coreid=device or "api",
        public=public,
        owner_id=owner,
        device_id=device,
        to_device=to_device,
        product_id=product,
        customer_id=customer,
        product_version=version,
    )


@pytest.fixture(params=["memory", pytest.param("nats", marks=pytest.mark.nats)])
async def bus(request: pytest.FixtureRequest) -> AsyncIterator[EventBus]:
    if request.param == "memory":
        backend: EventBus = MemoryBus(max_pending=10)
        yield backend
        await backend.close()
        return
    async with nats_bus(max_pending=10) as started:
        yield started


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
    await bus.settle()
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
    await bus.settle()
    assert ["temperature", "temperature"] == await drain(mine, 2)
    assert ["temperature"] == await drain(public, 1)
    assert ["temperature", "humidity"] == await drain(one_device, 2)


async def test_a_products_stream_gets_its_events_whoever_owns_the_device(bus: EventBus) -> None:
    """A product filter takes the product's events of every owner (and the owner's stream still its own)."""
    product = bus.subscribe(EventFilter(prefix="t", product_id=5))
    owner = bus.subscribe(EventFilter(prefix="t", owner_id=2))
    await bus.publish(event("temp", owner=1, device="d1", product=5))
    await bus.publish(event("temp", owner=2, device="d2", product=5))
    await bus.publish(event("temp", owner=2, device="d3", product=6))
    await bus.publish(event("humidity", owner=1, device="d1", product=5))
    await bus.settle()
    assert ["d1", "d2"] == [e.device_id for e in [await anext(aiter(product)) for _ in range(2)]]
    assert ["d2", "d3"] == [e.device_id for e in [await anext(aiter(owner)) for _ in range(2)]]


async def test_a_customers_stream_gets_only_its_own_devices_events(bus: EventBus) -> None:
    """
    A customer filter takes the events of the product's devices that customer owns: never another
    customer's, the product's other devices', another product's, nor anyone's public ones; and it is a
    candidate only for its own customer's events (the product's stream still sees them all, with the
    customer and product version across the bus).
    """
    jane = bus.subscribe(EventFilter(prefix="t", product_id=5, customer_id=7, include_public=True))
    one = bus.subscribe(EventFilter(product_id=5, customer_id=7, device_id="d2"))
    product = bus.subscribe(EventFilter(prefix="t", product_id=5))
    before = bus.statistics()["evaluated"]
    await bus.publish(event("temp", owner=None, device="d1", product=5, customer=7, version=3))
    await bus.publish(event("temp", owner=None, device="d9", product=5, customer=8))  # another customer's
    await bus.publish(event("temp", owner=1, device="d8", product=5))  # the product's, nobody's customer
    await bus.publish(event("temp", owner=2, device="d7", product=6, customer=7))  # not its product
    await bus.publish(event("temp", owner=3, public=True))  # someone's public event
    await bus.publish(event("humidity", owner=None, device="d2", product=5, customer=7))
    await bus.publish(event("temp", owner=None, device="d2", product=5, customer=7))
    await bus.settle()
    # Candidates: jane for customer 7's "t…" events (3), "one" for all of customer 7's (4), the product's
    # stream for its "t…" events (4); never a customer's filter for another customer's or public events.
    assert bus.statistics()["evaluated"] - before == 3 + 4 + 4
    received = [await anext(aiter(jane)) for _ in range(2)]
    assert [("d1", 7, 3), ("d2", 7, None)] == [
        (e.device_id, e.customer_id, e.product_version) for e in received
    ]
    assert ["humidity", "temp"] == await drain(one, 2)
    assert ["d1", "d9", "d8", "d2"] == [e.device_id for e in [await anext(aiter(product)) for _ in range(4)]]


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
    await bus.settle()
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


def device_feed(device_id: str, owner: int, *prefixes: str, public: bool = False) -> AnyFilter:
    """A device's feed as the events service builds it: one part per Subscribe."""
    return AnyFilter(
        tuple(
            DeviceFilter(device_id, EventFilter(prefix=prefix, owner_id=owner, include_public=public))
            for prefix in prefixes
        )
    )


async def test_publishing_costs_the_matching_subscribers_not_all(bus: EventBus) -> None:
    """
    With 1,000 device feeds of one owner subscribed to ``spark``, ``particle`` and ``fleet/``, a
    ``spark/status`` evaluates only the stream's filter; an owner's ordinary event, only its matching feeds.
    """
    feeds = [
        bus.subscribe(device_feed(f"d{n}", 1, "spark", "particle", "fleet/", public=bool(n % 2)), lossy=True)
        for n in range(1000)
    ]
    stream = bus.subscribe(EventFilter(prefix="spark", owner_id=1))

    async def evaluated_by(published: CloudEvent) -> int:
        before = bus.statistics()["evaluated"]
        await bus.publish(published)
        await bus.settle()
        return bus.statistics()["evaluated"] - before

    assert 1 == await evaluated_by(event("spark/status", device="d1"))  # the stream; never a device feed
    assert 0 == await evaluated_by(event("particle/device/updates/forced", device="d1"))
    assert 1000 == await evaluated_by(event("fleet/ready"))  # the owner's feeds
    assert 500 == await evaluated_by(event("fleet/ready", owner=2, public=True))  # those taking public ones
    assert 0 == await evaluated_by(event("other", owner=2, public=True))
    assert 2 == await evaluated_by(event("spark/device/claim/ok", device="d7", to_device="d7"))  # d7, stream
    assert ["spark/status", "spark/device/claim/ok"] == await drain(stream, 2)
    assert ["fleet/ready", "fleet/ready", "spark/device/claim/ok"] == await drain(feeds[7], 3)
    assert ["fleet/ready"] == await drain(feeds[8], 1)
    for feed in feeds:
        feed.close()
    stream.close()


async def test_devices_receive_system_events_only_when_addressed_to_them(bus: EventBus) -> None:
    """
    A device's ``spark``/``particle`` subscription (any scope, short prefixes too) gets no system event of
    its siblings, its own or the cloud's unless addressed to it; streams and the cloud's consumers see all.
    """
    listener = bus.subscribe(device_feed("d1", 1, "sp", "particle", "", public=True), lossy=True)
    everything = bus.subscribe(AllEvents())
    for published in (
        event("spark/status", device="d2"),
        event("spark/status", device="d1"),
        event("SPARK/anything", public=True),
        event("particle/device/updates/forced", device="d2"),
        event("particle/device/updates/pending", device="d2", to_device="d2"),
        event("particle/device/updates/pending", device="d1", to_device="d1"),
        event("sports", owner=2, public=True),
        event("hello", device="d2"),
    ):
        await bus.publish(published)
    await bus.settle()
    assert ["particle/device/updates/pending", "sports", "hello"] == await drain(listener, 3)
    assert 8 == len(await drain(everything, 8))
    listener.close()
    everything.close()


async def test_product_devices_get_their_products_publishes_and_their_customers_devices_events(
    bus: EventBus,
) -> None:
    """
    A product device's subscription, claimed or not, gets what its product publishes to the fleet (hosted
    cloud since 2023); a customer's device gets the events of that customer's other devices. Nothing of
    another product or customer, nor an unclaimed sibling's events; a subscription naming one device gets
    none of the product's publishes.
    """
    mine = EventFilter(prefix="fleet", owner_id=None)  # an unclaimed device's MY_DEVICES subscription
    unclaimed = bus.subscribe(DeviceFilter("d1", mine, product_id=7), lossy=True)
    customers = bus.subscribe(DeviceFilter("d2", mine, product_id=7, customer_id=3), lossy=True)
    one_device = bus.subscribe(
        DeviceFilter("d3", EventFilter(prefix="fleet", device_id="d9"), product_id=7), lossy=True
    )
    for published in (
        event("fleet/update", owner=None, product=7),  # POST /v1/products/7/events
        event("fleet/other-product", owner=None, product=8),
        event("fleet/sibling", owner=None, product=7, device="d9"),  # an unclaimed sibling's publish
        event("fleet/customer", owner=None, product=7, customer=3, device="d4"),
        event("fleet/other-customer", owner=None, product=7, customer=4, device="d5"),
        event("fleet/particle-made", owner=None, product=7, to_device="d6"),
        event("fleet/last", owner=None, product=7),
        event("fleet/to-d3", owner=None, product=7, to_device="d3"),
    ):
        await bus.publish(published)
    await bus.settle()
    assert ["fleet/update", "fleet/last"] == await drain(unclaimed, 2)
    assert ["fleet/update", "fleet/customer", "fleet/last"] == await drain(customers, 3)
    assert ["fleet/to-d3"] == await drain(one_device, 1)
    for feed in (unclaimed, customers, one_device):
        feed.close()


async def test_a_lossy_subscriber_loses_events_and_stays_open(bus: EventBus) -> None:
    """Past its bound a lossy subscriber loses what does not fit, counted, and receives later events."""
    lossy = bus.subscribe(EventFilter(owner_id=1), lossy=True)
    for n in range(15):
        await bus.publish(event(f"e{n}"))
    await bus.settle()
    assert (None, 5) == (lossy.closed_reason, lossy.dropped)
    assert 5 == bus.statistics()["dropped_events"]
    assert [f"e{n}" for n in range(10)] == await drain(lossy, 10)
    await bus.publish(event("after"))
    await bus.settle()
    assert ["after"] == await drain(lossy, 1)
    assert 1 == bus.statistics()["subscriptions"]
    lossy.close()


async def test_any_name_routes_by_its_exact_prefix(bus: EventBus) -> None:
    """
    Names are any text up to 64 characters (``.``, ``*``, ``>``, ``_``, spaces, any script): a prefix
    matches exactly the names that start with it, never by wildcard or token boundary.
    """
    names = ["a.b", "a_b", "a*", "a*x", "ab", "a>", "a b", "a", "été/°C", "x" * 64, "_", "_2e", "."]
    prefixes = ["a.", "a_", "a*", "a>", "a ", "a", "été", "x" * 63, "_", "_2", ".", "*", ">"]
    subscriptions = {prefix: bus.subscribe(EventFilter(prefix=prefix, owner_id=1)) for prefix in prefixes}
    for name in names:
        await bus.publish(event(name))
    await bus.publish(event("end"))
    await bus.settle()
    for prefix, subscription in subscriptions.items():
        expected = [name for name in names if name.startswith(prefix)]
        assert expected == await drain(subscription, len(expected)) if expected else True, prefix
        subscription.close()
        assert [] == [item.name async for item in subscription], prefix  # nothing else arrived


async def test_the_intake_takes_every_event_but_the_excluded(bus: EventBus) -> None:
    """The intake (webhooks) receives every owner's events, ``hook-…`` excluded, and acknowledges them."""
    intake = bus.intake(AllEvents(exclude="hook-"), max_pending=100)
    for published in (event("a", owner=1), event("hook-sent/a", owner=1), event("b", owner=2, public=True)):
        await bus.publish(published)
    taken = [await anext(intake), await anext(intake)]
    assert ["a", "b"] == [item.name for item in taken]
    await intake.acknowledge(taken)
    intake.close()


class Listener:
    def __init__(self) -> None:
        self.names: list[str] = []
        self.ended: list[str] = []

    def on_event(self, item: CloudEvent) -> None:
        self.names.append(item.name)

    def on_end(self, reason: str) -> None:
        self.ended.append(reason)


async def turn() -> None:
    await asyncio.sleep(0)  # one turn of the loop: the listener's drain is scheduled with call_soon


async def test_a_listener_gets_events_in_order_after_the_publish_never_inside_it(bus: EventBus) -> None:
    listener = Listener()
    subscription = bus.subscribe(EventFilter(owner_id=1), lossy=True)
    assert subscription.listen(listener.on_event, listener.on_end)
    assert not subscription.listen(listener.on_event, listener.on_end), "one listener per subscription"
    for n in range(3):
        await bus.publish(event(f"e{n}"))
        if n == 0 and type(bus) is MemoryBus:  # NATS's publish awaits the server: the loop turns inside it
            assert [] == listener.names, "handed over on the loop, not in the publisher's call"
    await bus.settle()
    await turn()
    assert ["e0", "e1", "e2"] == listener.names
    subscription.close()
    await bus.publish(event("after close"))
    await bus.settle()
    await turn()
    assert ["e0", "e1", "e2"] == listener.names
    assert [] == listener.ended, "closing it ourselves is not an end to be told about"
    assert 0 == bus.statistics()["subscriptions"]


async def test_a_lossy_listener_keeps_the_bound_and_gets_what_came_before_close(bus: EventBus) -> None:
    listener = Listener()
    subscription = bus.subscribe(EventFilter(owner_id=1), lossy=True)
    assert subscription.listen(listener.on_event, listener.on_end)
    for n in range(15):  # no turn of the loop in between when the bus is in-process
        await bus.publish(event(f"e{n}"))
    await bus.settle()
    subscription.close()  # what was handed over already still arrives
    await turn()
    assert len(listener.names) + subscription.dropped == 15
    assert listener.names == [f"e{n}" for n in range(len(listener.names))]
    if type(bus) is MemoryBus:  # NATS's publishes let the loop turn: the drain keeps up
        assert (10, 5) == (len(listener.names), subscription.dropped)


async def test_a_listener_hears_when_the_bus_ends_it(bus: EventBus) -> None:
    listener = Listener()
    subscription = bus.subscribe(EventFilter(owner_id=1), lossy=True)
    assert subscription.listen(listener.on_event, listener.on_end)
    await bus.close()
    await turn()
    assert ["bus closed"] == listener.ended
    assert "bus closed" == subscription.closed_reason


async def test_a_subscription_with_queued_events_cannot_be_listened_to(bus: EventBus) -> None:
    subscription = bus.subscribe(EventFilter(owner_id=1), lossy=True)
    await bus.publish(event("queued"))
    await bus.settle()
    assert not subscription.listen(Listener().on_event, Listener().on_end)
    assert ["queued"] == await drain(subscription, 1)
    subscription.close()
