"""
What the NATS bus adds to the contract: several nodes. Events cross nodes once each and in order, and the
webhook intake is shared: each event to one node, and to another when the first dies before acknowledging.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack

import pytest
from tests.contract.test_bus_contract import device_feed, drain, event
from tests.support.devices import wait_until
from tests.support.nats import fresh_bus_url, nats_bus

from devicecloud.bus.nats import NatsBus
from devicecloud.domain.events import AllEvents, AnyFilter, CloudEvent, EventFilter

pytestmark = pytest.mark.nats


@pytest.fixture
async def nodes() -> AsyncIterator[tuple[NatsBus, NatsBus]]:
    """Two nodes on one subject root (the intake's ack wait cut to 1 s)."""
    url = fresh_bus_url()
    async with AsyncExitStack() as stack:
        first = await stack.enter_async_context(nats_bus(url, intake_ack_wait=1.0))
        second = await stack.enter_async_context(nats_bus(url, intake_ack_wait=1.0))
        yield first, second


async def test_an_event_reaches_another_nodes_subscribers_once(nodes: tuple[NatsBus, NatsBus]) -> None:
    """
    B's stream wants owner 1's events and public ones, B's device feeds overlap: each event published on A
    arrives once per matching subscription on B, though B's routes bring it several times.
    """
    a, b = nodes
    stream = b.subscribe(EventFilter(owner_id=1, include_public=True))
    narrow = b.subscribe(EventFilter(prefix="temp", owner_id=1))
    feed = b.subscribe(device_feed("d9", 1, "", "t", "te", public=True), lossy=True)
    await b.settle()  # B's subscriptions are in force at the server
    await a.publish(event("temperature", owner=1, public=True, device="d1"))
    await a.publish(event("humidity", owner=2, public=True))
    await a.publish(event("private", owner=2))
    await a.publish(event("last", owner=1))
    assert ["temperature", "humidity", "last"] == await asyncio.wait_for(drain(stream, 3), 5)
    assert ["temperature"] == await asyncio.wait_for(drain(narrow, 1), 5)
    assert ["temperature", "humidity", "last"] == await asyncio.wait_for(drain(feed, 3), 5)
    await b.settle()
    assert 0 == b.statistics()["dropped_events"]
    assert b.statistics()["duplicates"] > 0  # the copies were there, and dropped
    for subscription in (stream, narrow, feed):
        subscription.close()
        assert [] == [item async for item in subscription]


async def test_one_publishers_events_keep_their_order_across_routes(nodes: tuple[NatsBus, NatsBus]) -> None:
    """A subscription whose events come through two disjoint routes gets them in publish order."""
    a, b = nodes
    both = b.subscribe(AnyFilter((EventFilter(prefix="a", owner_id=1), EventFilter(prefix="b", owner_id=1))))
    await b.settle()
    names = [f"{'ab'[n % 3 == 0]}{n}" for n in range(300)]
    for name in names:
        await a.publish(event(name))
    assert names == await asyncio.wait_for(drain(both, len(names)), 10)
    both.close()


async def take(intake: AsyncIterator[CloudEvent], count: int) -> list[CloudEvent]:
    return [await asyncio.wait_for(anext(intake), 10) for _ in range(count)]


async def test_each_event_reaches_one_nodes_intake(nodes: tuple[NatsBus, NatsBus]) -> None:
    """With two nodes' intakes running, 60 events are taken 60 times in all, never twice."""
    a, b = nodes
    intakes = [
        a.intake(AllEvents(exclude="hook-"), max_pending=50),
        b.intake(AllEvents(exclude="hook-"), max_pending=50),
    ]
    taken: list[list[str]] = [[], []]

    async def run(index: int) -> None:
        async for item in intakes[index]:
            taken[index].append(item.name)
            await intakes[index].acknowledge([item])

    readers = [asyncio.create_task(run(0)), asyncio.create_task(run(1))]
    try:
        for n in range(60):
            await (a if n % 2 else b).publish(event(f"e{n}", owner=n % 3 + 1))

        async def all_taken() -> bool:
            return len(taken[0]) + len(taken[1]) >= 60

        await wait_until(all_taken)
        assert sorted(f"e{n}" for n in range(60)) == sorted(taken[0] + taken[1])
    finally:
        for intake in intakes:
            intake.close()
        await asyncio.gather(*readers)


async def test_an_event_a_dead_intake_never_acknowledged_goes_to_another(
    nodes: tuple[NatsBus, NatsBus],
) -> None:
    """A's intake takes an event and dies before writing it: B's intake gets it after the ack wait."""
    a, b = nodes
    first = a.intake(AllEvents(), max_pending=10)
    await b.publish(event("precious", owner=4))
    assert ["precious"] == [item.name for item in await take(first, 1)]
    first.close()  # never acknowledged
    second = b.intake(AllEvents(), max_pending=10)
    redelivered = await take(second, 1)
    assert ("precious", 4) == (redelivered[0].name, redelivered[0].owner_id)
    await second.acknowledge(redelivered)
    second.close()
