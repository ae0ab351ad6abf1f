"""
Property: whatever name and data bytes a device publishes, its event is accepted exactly when the API's rules
(`check_event`, strict UTF-8) allow it, is refused cleanly otherwise (ACK 4.00 to a CON event), and no other
account's event stream or device link is ever cut; the publishing link survives too.

One runtime serves every example: Ada's device publishes public events named ``p…``; Bob watches them on
``/v1/events/p`` and with a device subscribed to ``p``. After each example Ada's device publishes a sentinel
WITH_ACK (answered once everything before it was handled); what Bob got before it is that example's outcome.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from itertools import count

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tests.functional.test_gateway_events import Inbox, settle
from tests.support.api import make_account
from tests.support.clock import FakeClock
from tests.support.devices import connect_device
from tests.support.sse import Reader, serve_app, stream

from devicecloud.errors import InvalidInput
from devicecloud.protocol import Code
from devicecloud.runtime import Runtime
from devicecloud.services.events import check_event
from devicecloud.virtualdevice import VirtualDevice
from devicecloud.virtualdevice.support import RequestError

PREFIX = b"p"
# Noise, and the UTF-8 of arbitrary text (control characters, astral planes), around the limits.
NAMES = st.one_of(st.binary(max_size=80), st.text(max_size=70).map(str.encode)).map(PREFIX.__add__)
DATA = st.one_of(st.none(), st.binary(max_size=1100), st.text(max_size=600).map(str.encode))


def expected(name: bytes, data: bytes | None) -> tuple[str, str | None] | None:
    """What subscribers should see, by the API's own rules; ``None`` when the event must be refused."""
    try:
        text = name.decode("utf-8")
        payload = data.decode("utf-8") if data else None  # the protocol carries no empty payload
        checked_name, checked_data, _ = check_event(text, payload, None)
    except (UnicodeDecodeError, InvalidInput):
        return None
    return checked_name, checked_data


@dataclass
class Scene:
    publisher: VirtualDevice
    listener: VirtualDevice
    inbox: Inbox
    stream: Reader
    sentinels: count[int]


@pytest.fixture
def database_url(tmp_path) -> str:  # type: ignore[no-untyped-def]
    """The rules do not depend on the database."""
    return f"sqlite+aiosqlite:///{tmp_path / 'devicecloud.db'}"


@pytest.fixture
async def scene(
    client: httpx.AsyncClient, runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Scene]:
    ada = await make_account(client, "ada@example.com")
    bob = await make_account(client, "bob@example.com")
    publisher = await connect_device(client, ada, runtime)
    listener = await connect_device(client, bob, runtime)
    inbox = Inbox(listener, monkeypatch)
    await listener.subscribe(PREFIX.decode(), lambda name, data: None)
    await settle(listener)
    try:
        async with serve_app(runtime) as served, stream(served, "/v1/events/p", bob) as reader:
            yield Scene(publisher, listener, inbox, reader, count())
    finally:
        await publisher.stop()
        await listener.stop()


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(name=NAMES, data=DATA, with_ack=st.booleans())
async def test_any_device_event_is_accepted_by_the_rules_and_cuts_nothing(
    scene: Scene, clock: FakeClock, runtime: Runtime, name: bytes, data: bytes | None, with_ack: bool
) -> None:
    want = expected(name, data)
    clock.advance(1.0)  # the publish rate limit never decides here
    try:
        await scene.publisher.publish(name, data, private=False, with_ack=with_ack, check_limits=False)
        answered: int | None = None
    except RequestError as refused:
        answered = refused.code
    if with_ack:
        assert (None if want is not None else Code.BAD_REQUEST) == answered

    clock.advance(1.0)
    sentinel = f"p-sentinel-{next(scene.sentinels)}"
    await scene.publisher.publish(sentinel, None, private=False, with_ack=True)

    streamed = []
    while (event := await scene.stream.event())[0] != sentinel:
        streamed.append((event[0], event[1]["data"]))
    delivered = []
    while (received := await scene.inbox.next()).name != sentinel:
        delivered.append((received.name, received.data.decode() if received.data is not None else None))
    assert ([want] if want else []) == streamed == delivered
    assert scene.publisher.connected
    assert scene.listener.connected
    assert 0 == runtime.gateway.statistics().events_undeliverable
