"""
The events service on a real runtime: device rate limit on the injected clock, and owner caching on claims.
"""

from __future__ import annotations

import httpx
from tests.support.api import make_account
from tests.support.clock import FakeClock
from tests.support.devices import connect_device, wait_until

from devicecloud.domain.events import EventFilter
from devicecloud.runtime import Runtime


async def test_device_rate_limit(runtime: Runtime, clock: FakeClock) -> None:
    """A device gets a burst of 4, then 1 event per second of (injected) time."""

    async def accepted() -> bool:
        return await runtime.events.publish_from_device("a" * 24, "x", None, private=True, ttl=60) is not None

    assert [True] * 4 + [False] * 2 == [await accepted() for _ in range(6)]
    clock.advance(1.0)
    assert await accepted()
    assert not await accepted()


async def test_events_follow_the_owner(client: httpx.AsyncClient, runtime: Runtime) -> None:
    """After Ada releases her device and Bob claims it, its private events are Bob's, not Ada's."""
    ada = await make_account(client, "ada@example.com")
    bob = await make_account(client, "bob@example.com")
    device = await connect_device(client, ada, runtime)
    try:
        ada_user = await runtime.accounts.get_by_username(ada.email)
        bob_user = await runtime.accounts.get_by_username(bob.email)
        to_ada = runtime.bus.subscribe(EventFilter(owner_id=ada_user.id, prefix="note"))
        to_bob = runtime.bus.subscribe(EventFilter(owner_id=bob_user.id, prefix="note"))
        await runtime.events.publish_from_device(device.device_id, "note", "1", private=True, ttl=60)
        await client.delete(f"/v1/devices/{device.device_id}", headers=ada.auth)
        await client.post("/v1/devices", json={"id": device.device_id}, headers=bob.auth)
        await runtime.events.publish_from_device(device.device_id, "note", "2", private=True, ttl=60)
        to_ada.close()
        to_bob.close()
        assert ["1"] == [e.data async for e in to_ada]
        assert ["2"] == [e.data async for e in to_bob]
    finally:
        await device.stop()


async def test_offline_when_a_device_vanishes_silently(
    client: httpx.AsyncClient, runtime: Runtime, clock: FakeClock
) -> None:
    """A device that stops talking without closing its socket gets spark/status offline once its keep-alive
    window passes on the injected clock, not before."""
    ada = await make_account(client, "ada@example.com")
    device = await connect_device(client, ada, runtime)
    user = await runtime.accounts.get_by_username(ada.email)
    status = runtime.bus.subscribe(EventFilter(owner_id=user.id, prefix="spark/status"))
    device.go_silent()  # keeps the socket open and answers nothing
    try:
        # The gateway pings; no answer comes. Link timers run inside advance(), so the verdict is already in.
        clock.advance(runtime.settings.device_keepalive)
        assert runtime.gateway.control.is_online(device.device_id)  # still inside the window: still linked
        assert 0 == status.pending()
        clock.advance(runtime.settings.device_keepalive)

        async def offline() -> bool:
            return status.pending() > 0

        await wait_until(offline)
        event = await anext(status)
        assert ("spark/status", "offline", device.device_id) == (event.name, event.data, event.coreid)
    finally:
        status.close()
        await device.stop()


async def test_internal_events(client: httpx.AsyncClient, runtime: Runtime) -> None:
    """Cloud-made events carry coreid particle-internal and reach only their owner."""
    ada = await make_account(client, "ada@example.com")
    user = await runtime.accounts.get_by_username(ada.email)
    mine = runtime.bus.subscribe(EventFilter(owner_id=user.id, prefix="hook-sent/"))
    others = runtime.bus.subscribe(
        EventFilter(owner_id=user.id + 1, include_public=True, prefix="hook-sent/")
    )
    await runtime.events.publish_internal("hook-sent/temp", None, owner_id=user.id)
    mine.close()
    others.close()
    assert [("hook-sent/temp", "particle-internal")] == [(e.name, e.coreid) async for e in mine]
    assert [] == [e async for e in others]


async def test_status_goes_to_the_owner_read_at_the_key_check(
    client: httpx.AsyncClient, runtime: Runtime
) -> None:
    """spark/status online goes to the owner the key check read; after an unclaim, offline goes to nobody."""
    ada = await make_account(client, "ada@example.com")
    user = await runtime.accounts.get_by_username(ada.email)
    status = runtime.bus.subscribe(EventFilter(owner_id=user.id, prefix="spark/status"))
    device = await connect_device(client, ada, runtime)
    try:
        await client.delete(f"/v1/devices/{device.device_id}", headers=ada.auth)  # unclaim: the link closes

        async def link_finished() -> bool:  # a link's task ends after it reported its device offline
            return runtime.gateway.statistics().links == 0

        await wait_until(link_finished)
    finally:
        status.close()
        await device.stop()
    assert ["online"] == [event.data async for event in status]
