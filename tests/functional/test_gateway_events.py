"""
Events through the real gateway: virtual devices publish into the bus (with the device publish limit) and
receive what they subscribed to, under the services' visibility rules.

Sync points: a link awaits its hooks before it reads on. The answer to a first ping proves the gateway has
read everything sent before it; a second ping, sent after that answer, comes in a later read, so its answer
proves all of it was handled (`settle`). A WITH_ACK publish is answered after its own hook, and all before.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from tests.support.api import Account, make_account
from tests.support.clock import FakeClock
from tests.support.devices import connect_device, wait_until

from devicecloud.domain.accounts import User
from devicecloud.domain.events import CloudEvent, EventFilter
from devicecloud.protocol import Code, Event, EventReceived, SubscriptionScope
from devicecloud.runtime import Runtime
from devicecloud.virtualdevice import VirtualDevice
from devicecloud.virtualdevice.link import DeviceLink
from devicecloud.virtualdevice.support import RequestError

WAIT = 5.0


class Inbox:
    """
    What a virtual device receives, as the protocol delivered it (one entry per message on the wire).
    """

    def __init__(self, device: VirtualDevice, monkeypatch: pytest.MonkeyPatch) -> None:
        self.queue: asyncio.Queue[EventReceived] = asyncio.Queue()
        forward = device.link_event

        def spy(link: DeviceLink, event: Event) -> None:
            if isinstance(event, EventReceived):
                self.queue.put_nowait(event)
            forward(link, event)

        monkeypatch.setattr(device, "link_event", spy)

    async def next(self) -> EventReceived:
        async with asyncio.timeout(WAIT):
            return await self.queue.get()

    async def names_until(self, sentinel: str) -> list[str]:
        """
        Names received up to and including ``sentinel`` (published last, so nothing else is in flight).
        """
        names: list[str] = []
        while not names or names[-1] != sentinel:
            names.append((await self.next()).name)
        return names


async def settle(device: VirtualDevice) -> None:
    """Return once the gateway has handled everything the device sent so far (see the module doc)."""
    await device.ping()
    await device.ping()


def ignore(name: str, data: str | None) -> None:
    """A subscription handler that does nothing: the tests read the `Inbox`."""


async def next_event(subscription: AsyncIterator[CloudEvent]) -> CloudEvent:
    async with asyncio.timeout(WAIT):
        return await anext(subscription)


@pytest.fixture
async def ada(client: httpx.AsyncClient) -> Account:
    return await make_account(client, "ada@example.com")


@pytest.fixture
async def bob(client: httpx.AsyncClient) -> Account:
    return await make_account(client, "bob@example.com")


async def user_of(runtime: Runtime, account: Account) -> User:
    return await runtime.accounts.get_by_username(account.email)


@pytest.fixture
async def devices(client: httpx.AsyncClient, runtime: Runtime) -> AsyncIterator[list[VirtualDevice]]:
    """Devices a test connects; stopped at the end whatever happens."""
    started: list[VirtualDevice] = []
    yield started
    for device in started:
        await device.stop()


async def connect(
    client: httpx.AsyncClient,
    runtime: Runtime,
    account: Account | None,
    devices: list[VirtualDevice],
    **options: Any,
) -> VirtualDevice:
    device = await connect_device(client, account, runtime, **options)
    devices.append(device)
    return device


# ------------------------------------------------------------------ device → cloud


async def test_device_events_reach_the_bus(
    client: httpx.AsyncClient,
    runtime: Runtime,
    clock: FakeClock,
    ada: Account,
    bob: Account,
    devices: list[VirtualDevice],
) -> None:
    """A device's events carry its id as coreid, its owner, public/private and ttl; others see only public."""
    device = await connect(client, runtime, ada, devices)
    ada_user, bob_user = await user_of(runtime, ada), await user_of(runtime, bob)
    to_ada = runtime.bus.subscribe(EventFilter(prefix="conf/", owner_id=ada_user.id, include_public=True))
    to_bob = runtime.bus.subscribe(EventFilter(prefix="conf/", owner_id=bob_user.id, include_public=True))
    await device.publish("conf/temp", "21.5", private=False, ttl=3600)
    await device.publish("conf/secret", None, with_ack=True)

    public, private = await next_event(to_ada), await next_event(to_ada)
    assert ("conf/temp", "21.5", 3600, True) == (public.name, public.data, public.ttl, public.public)
    assert ("conf/secret", None, 60, False) == (private.name, private.data, private.ttl, private.public)
    for event in (public, private):
        assert (device.device_id, device.device_id) == (event.coreid, event.device_id)
        assert ada_user.id == event.owner_id
        assert clock.now() == event.published_at
    assert "conf/temp" == (await next_event(to_bob)).name
    to_bob.close()
    assert [] == [e async for e in to_bob]  # never Ada's private event
    to_ada.close()


async def test_publish_burst_is_limited_and_refused_per_protocol(
    client: httpx.AsyncClient,
    runtime: Runtime,
    clock: FakeClock,
    ada: Account,
    devices: list[VirtualDevice],
) -> None:
    """10 WITH_ACK publishes at once: 4 accepted, 6 refused with ACK 4.00; time refills the bucket."""
    device = await connect(client, runtime, ada, devices)
    seen = runtime.bus.subscribe(EventFilter(prefix="burst", owner_id=(await user_of(runtime, ada)).id))

    async def publish(n: int) -> int | None:
        try:
            await device.publish(f"burst/{n}", str(n), with_ack=True)
        except RequestError as refused:
            return refused.code
        return None

    outcomes = [await publish(n) for n in range(10)]
    assert [None] * 4 + [Code.BAD_REQUEST] * 6 == outcomes
    assert device.connected  # a refusal is no protocol error
    clock.advance(1.0)
    assert [None, Code.BAD_REQUEST] == [await publish(10), await publish(11)]
    clock.advance(4.0)
    assert [None] * 4 + [Code.BAD_REQUEST] == [await publish(n) for n in range(12, 17)]

    seen.close()
    assert [f"burst/{n}" for n in (0, 1, 2, 3, 10, 12, 13, 14, 15)] == [e.name async for e in seen]
    stats = runtime.gateway.statistics()
    assert (17, 8) == (stats.events_received, stats.events_refused)


async def test_non_events_over_the_limit_are_dropped(
    client: httpx.AsyncClient, runtime: Runtime, ada: Account, devices: list[VirtualDevice]
) -> None:
    """Without an ACK to refuse, what exceeds the limit is dropped silently; the link stays up."""
    device = await connect(client, runtime, ada, devices)
    seen = runtime.bus.subscribe(EventFilter(prefix="fast", owner_id=(await user_of(runtime, ada)).id))
    for n in range(7):
        await device.publish(f"fast/{n}", None)
    with pytest.raises(RequestError):  # answered after every event before it was handled
        await device.publish("fast/sync", None, with_ack=True)
    seen.close()
    assert ["fast/0", "fast/1", "fast/2", "fast/3"] == [e.name async for e in seen]
    assert device.connected


# ------------------------------------------------------------------ cloud → device


async def test_api_publish_reaches_a_subscribed_device(
    client: httpx.AsyncClient,
    runtime: Runtime,
    ada: Account,
    bob: Account,
    devices: list[VirtualDevice],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """
    All-devices scope: public events of anyone plus the owner's own; slashes, data, privacy and ttl intact.
    """
    device = await connect(client, runtime, ada, devices)
    inbox = Inbox(device, monkeypatch)
    received: list[tuple[str, str | None]] = []
    await device.subscribe("conf/in", lambda name, data: received.append((name, data)))
    await settle(device)
    ada_user, bob_user = await user_of(runtime, ada), await user_of(runtime, bob)

    await runtime.events.publish_from_api(ada_user, "conf/in/a/b/c", "hello", private=False, ttl=3600)
    first = await inbox.next()
    assert EventReceived("conf/in/a/b/c", b"hello", private=False, ttl=3600) == first
    assert [("conf/in/a/b/c", "hello")] == received  # the device's handler got the whole name

    await runtime.events.publish_from_api(ada_user, "conf/in/mine", None, private=True, ttl=60)
    assert EventReceived("conf/in/mine", None, private=True, ttl=60) == await inbox.next()

    await runtime.events.publish_from_api(bob_user, "conf/in/bob-private", "x", private=True, ttl=60)
    await runtime.events.publish_from_api(bob_user, "conf/other", "x", private=False, ttl=60)
    await runtime.events.publish_from_api(bob_user, "conf/in/bob-public", "y", private=False, ttl=7)
    last = await inbox.next()
    assert EventReceived("conf/in/bob-public", b"y", private=False, ttl=7) == last
    assert inbox.queue.empty()


async def test_my_devices_scope_sees_only_the_owners_events(
    client: httpx.AsyncClient,
    runtime: Runtime,
    ada: Account,
    bob: Account,
    devices: list[VirtualDevice],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """MY_DEVICES: the owner's private events (API and her other devices), never others' — public or not."""
    listener = await connect(client, runtime, ada, devices)
    sibling = await connect(client, runtime, ada, devices)
    stranger = await connect(client, runtime, bob, devices)
    inbox = Inbox(listener, monkeypatch)
    await listener.subscribe("note", ignore, scope=SubscriptionScope.MY_DEVICES)
    await settle(listener)
    ada_user, bob_user = await user_of(runtime, ada), await user_of(runtime, bob)

    await runtime.events.publish_from_api(bob_user, "note/bob-private", "x", private=True, ttl=60)
    await runtime.events.publish_from_api(bob_user, "note/bob-public", "x", private=False, ttl=60)
    await stranger.publish("note/bob-device", "x", private=True, with_ack=True)
    await stranger.publish("note/bob-device-public", "x", private=False, with_ack=True)
    await runtime.events.publish_from_api(ada_user, "note/ada-api", "1", private=True, ttl=60)
    await sibling.publish("note/ada-device", "2", private=True, with_ack=True)
    assert ["note/ada-api", "note/ada-device"] == await inbox.names_until("note/ada-device")


async def test_device_scope_receives_only_that_devices_events(
    client: httpx.AsyncClient,
    runtime: Runtime,
    ada: Account,
    bob: Account,
    devices: list[VirtualDevice],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A device-scoped subscription gets that one device's events; another's device only if public."""
    listener = await connect(client, runtime, ada, devices)
    watched = await connect(client, runtime, ada, devices)
    other = await connect(client, runtime, ada, devices)
    foreign = await connect(client, runtime, bob, devices)
    inbox = Inbox(listener, monkeypatch)
    await listener.subscribe("t", ignore, scope=SubscriptionScope.DEVICE, device_id=watched.device_id)
    await listener.subscribe("f", ignore, scope=SubscriptionScope.DEVICE, device_id=foreign.device_id)
    await settle(listener)

    await other.publish("t/other", "x", with_ack=True)
    await runtime.events.publish_from_api(await user_of(runtime, ada), "t/api", "x", private=True, ttl=60)
    await watched.publish("t/watched", "1", with_ack=True)
    await foreign.publish("f/private", "x", private=True, with_ack=True)
    await foreign.publish("f/public", "2", private=False, with_ack=True)
    assert ["t/watched", "f/public"] == await inbox.names_until("f/public")  # not the API's "t/api"


async def test_duplicate_subscriptions_deliver_once(
    client: httpx.AsyncClient,
    runtime: Runtime,
    ada: Account,
    devices: list[VirtualDevice],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A repeated Subscribe (and an overlapping one) adds no second copy: one message per event, one feed."""
    device = await connect(client, runtime, ada, devices)
    baseline = runtime.bus.statistics()["subscriptions"]
    inbox = Inbox(device, monkeypatch)
    for prefix in ("dup", "dup", "du", "dup"):
        await device.subscribe(prefix, ignore)
    await settle(device)
    assert baseline + 1 == runtime.bus.statistics()["subscriptions"]  # one merged feed for the link

    ada_user = await user_of(runtime, ada)
    await runtime.events.publish_from_api(ada_user, "dup/1", "x", private=True, ttl=60)
    await runtime.events.publish_from_api(ada_user, "dup/2", "x", private=True, ttl=60)
    assert ["dup/1", "dup/2"] == await inbox.names_until("dup/2")
    await settle(device)
    assert inbox.queue.empty()
    assert 2 == device.statistics().events_received


async def test_subscriptions_end_with_the_link(
    client: httpx.AsyncClient,
    runtime: Runtime,
    ada: Account,
    devices: list[VirtualDevice],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A link that ends closes its feed; the device's next link (subscriptions re-sent) receives again."""
    baseline = runtime.bus.statistics()["subscriptions"]
    device = await connect(client, runtime, ada, devices)
    inbox = Inbox(device, monkeypatch)
    await device.subscribe("a", ignore)
    await device.subscribe("b", ignore, scope=SubscriptionScope.MY_DEVICES)
    await settle(device)
    assert baseline + 1 == runtime.bus.statistics()["subscriptions"]

    async def feeds_closed() -> bool:
        return bool(runtime.bus.statistics()["subscriptions"] == baseline)

    async def feed_open() -> bool:
        return bool(runtime.bus.statistics()["subscriptions"] == baseline + 1)

    await runtime.gateway.control.disconnect(device.device_id)
    await wait_until(feeds_closed, WAIT)
    await device.stop()

    await device.start()  # a new link: the device sends its subscriptions again after the Hello
    await device.wait_connected(WAIT)
    await wait_until(feed_open, WAIT)
    await settle(device)  # the second Subscribe is handled too (the feed count cannot tell)
    await runtime.events.publish_from_api(await user_of(runtime, ada), "b/again", "x", private=True, ttl=60)
    assert "b/again" == (await inbox.next()).name

    await device.stop()
    await wait_until(feeds_closed, WAIT)
