"""
Device events obey the API's limits (names 1–64 characters without control characters, data at most 1,024
bytes, both UTF-8): what is over is refused as the protocol allows, counted, and reaches no subscriber. And
one bad event never cuts a stream or a device link that did not publish it.

Sync points as in `test_gateway_events`: a WITH_ACK publish is answered after its own hook and all before it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime

import httpx
import pytest
from tests.functional.test_gateway_events import Inbox, settle, user_of
from tests.support.api import Account, make_account
from tests.support.clock import FakeClock
from tests.support.devices import connect_device
from tests.support.gateway_fakes import DeviceApp, FakeSessions, TestDevice, connected_device, running_gateway
from tests.support.sse import serve_app, stream

from devicecloud.bus.memory import MemoryBus
from devicecloud.domain.events import MAX_DATA_LENGTH, MAX_NAME_LENGTH, CloudEvent, EventFilter
from devicecloud.gateway.context import DeviceSubscription, EventFeed
from devicecloud.protocol import Code, EventReceived, RequestCompleted, Subscribe
from devicecloud.runtime import Runtime
from devicecloud.virtualdevice import VirtualDevice
from devicecloud.virtualdevice.support import RequestError

# (name, data) a device may not publish, each for its own reason.
OVER_THE_LIMITS: list[tuple[str | bytes, str | bytes | None]] = [
    ("n" * (MAX_NAME_LENGTH + 1), None),
    ("n" * 3009, "x"),  # what reached subscribers before
    ("big", "x" * (MAX_DATA_LENGTH + 1)),
    ("huge", "x" * 60_000),  # likewise
    (b"name-\xff", None),  # not UTF-8
    ("data", b"\xed\xa0\x80"),  # an encoded lone surrogate: not UTF-8 either
    ("bell\x07", None),  # a control character, as the API refuses it
]


@pytest.fixture
async def ada(client: httpx.AsyncClient) -> Account:
    return await make_account(client, "ada@example.com")


@pytest.fixture
async def bob(client: httpx.AsyncClient) -> Account:
    return await make_account(client, "bob@example.com")


@pytest.fixture
async def devices() -> AsyncIterator[list[VirtualDevice]]:
    started: list[VirtualDevice] = []
    yield started
    for device in started:
        await device.stop()


async def test_a_con_event_over_the_limits_is_refused_with_4_00(
    client: httpx.AsyncClient,
    runtime: Runtime,
    clock: FakeClock,
    ada: Account,
    devices: list[VirtualDevice],
) -> None:
    """Each over-limit WITH_ACK publish gets ACK 4.00; one exactly at the limits passes; the link stays."""
    device = await connect_device(client, ada, runtime)
    devices.append(device)
    seen = runtime.bus.subscribe(EventFilter(owner_id=(await user_of(runtime, ada)).id))

    async def outcome(name: str | bytes, data: str | bytes | None) -> int | None:
        clock.advance(1.0)  # never the rate limit
        try:
            await device.publish(name, data, with_ack=True, check_limits=False)
        except RequestError as refused:
            return refused.code
        return None

    outcomes = [await outcome(name, data) for name, data in OVER_THE_LIMITS]
    assert [Code.BAD_REQUEST] * len(OVER_THE_LIMITS) == outcomes
    at_limits = ("n" * MAX_NAME_LENGTH, "é" * (MAX_DATA_LENGTH // 2))
    assert await outcome(*at_limits) is None
    assert device.connected

    seen.close()
    assert [at_limits] == [(e.name, e.data) async for e in seen]
    stats = runtime.gateway.statistics()
    refused = len(OVER_THE_LIMITS)
    assert (refused + 1, refused, refused) == (
        stats.events_received,
        stats.events_refused,
        stats.events_invalid,
    )


async def test_a_non_event_over_the_limits_is_dropped(
    client: httpx.AsyncClient,
    runtime: Runtime,
    clock: FakeClock,
    ada: Account,
    devices: list[VirtualDevice],
) -> None:
    """Without an ACK to refuse, what is over the limits is dropped and counted; the link stays up."""
    device = await connect_device(client, ada, runtime)
    devices.append(device)
    seen = runtime.bus.subscribe(EventFilter(owner_id=(await user_of(runtime, ada)).id))
    for name, data in OVER_THE_LIMITS:
        clock.advance(1.0)
        await device.publish(name, data, check_limits=False)
    await device.publish("after", "ok", with_ack=True)  # answered once everything before was handled

    seen.close()
    assert ["after"] == [e.name async for e in seen]
    assert len(OVER_THE_LIMITS) == runtime.gateway.statistics().events_invalid
    assert device.connected


async def test_a_bad_event_cuts_no_stream_and_no_link(
    client: httpx.AsyncClient,
    runtime: Runtime,
    ada: Account,
    bob: Account,
    devices: list[VirtualDevice],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """
    An event that cannot be encoded (a lone surrogate in its name, made below the API's door) reaches
    nobody: Bob's public stream and Ada's subscribed device keep their connection and get the next event.
    """
    listener = await connect_device(client, ada, runtime)
    devices.append(listener)
    inbox = Inbox(listener, monkeypatch)
    await listener.subscribe("poison", lambda name, data: None)
    await settle(listener)
    ada_user = await user_of(runtime, ada)
    async with serve_app(runtime) as served, stream(served, "/v1/events/poison", bob) as bobs:
        await runtime.events.publish_internal("poison/\ud800", "x", owner_id=ada_user.id, public=True)
        await runtime.events.publish_internal("poison/\udfff", "\ud800", owner_id=ada_user.id, public=True)
        await runtime.events.publish_from_api(ada_user, "poison/after", "ok", private=False, ttl=60)

        name, body = await bobs.event()  # the first thing on Bob's stream, which is still open
        assert ("poison/after", "ok") == (name, body["data"])
        assert "poison/after" == (await inbox.next()).name
    assert listener.connected
    assert 2 == runtime.events.statistics()["dropped"]


async def test_an_event_a_device_cannot_be_sent_is_skipped_not_the_link(clock: FakeClock) -> None:
    """
    Below the events service (straight onto a bus): the forwarder skips an event it cannot encode for the
    device, counts it, and delivers the next one on the same link.
    """
    bus = MemoryBus()

    async def feed(device_id: str, wanted: tuple[DeviceSubscription, ...]) -> EventFeed:
        return bus.subscribe(EventFilter(prefix=wanted[0].prefix, include_public=True))

    sessions = FakeSessions()
    async with running_gateway(sessions, clock, on_subscribe=feed) as gateway:
        device = await connected_device(gateway, sessions, TestDevice(7, DeviceApp()))
        try:
            device.send(Subscribe("bad"))
            await device.wait_event(RequestCompleted)  # the Subscribe's ACK: handled before any event
            await gateway.control.ping(device.id, timeout=5.0)  # and its feed is open
            for name, data in (("bad/\ud800", "x"), ("bad/data", "\udfff"), ("bad/after", "ok")):
                bus.publish_nowait(_event(name, data))
            [received] = await device.wait_event(EventReceived)
            assert EventReceived("bad/after", b"ok", private=False) == received
            assert gateway.control.is_online(device.id)
            assert 2 == gateway.statistics().events_undeliverable
        finally:
            await device.close()


def _event(name: str, data: str) -> CloudEvent:
    return CloudEvent(
        name=name,
        data=data,
        ttl=60,
        published_at=datetime(2026, 1, 1, tzinfo=UTC),
        coreid="particle-internal",
        public=True,
        owner_id=None,
    )
