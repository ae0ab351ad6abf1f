"""
The events service on a real runtime: device rate limit on the injected clock, and owner caching on claims.
"""

from __future__ import annotations

import httpx
from tests.support.api import make_account
from tests.support.clock import FakeClock
from tests.support.devices import connect_device

from devicecloud.domain.events import EventFilter
from devicecloud.runtime import Runtime


async def test_device_rate_limit(runtime: Runtime, clock: FakeClock) -> None:
    """A device gets a burst of 4, then 1 event per second of (injected) time."""
    accepted = [
        await runtime.events.publish_from_device("a" * 24, "x", None, private=True, ttl=60) for _ in range(6)
    ]
    assert [True] * 4 + [False] * 2 == accepted
    clock.advance(1.0)
    assert await runtime.events.publish_from_device("a" * 24, "x", None, private=True, ttl=60)
    assert not await runtime.events.publish_from_device("a" * 24, "x", None, private=True, ttl=60)


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
