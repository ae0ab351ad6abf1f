"""
Product events over HTTP (issue 11 section 4, catalogue §9.1–9.2 product twins):
``GET /v1/products/:p/events`` streams see the product's devices' events (whoever owns them) and the
product's own publishes; events of a product device carry ``productID``; ``POST /v1/products/:p/events``
publishes for the product.

Product devices arrive over HTTP with issue 11 section 3; until then these tests put a device into the
product through the store's own repository and tell the events service, as that section's import will.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from tests.support.api import Account, make_account
from tests.support.devices import connect_device, wait_until
from tests.support.sse import Served, serve_app, stream

from devicecloud.api.middleware import RateLimits
from devicecloud.runtime import Runtime
from devicecloud.settings import Settings
from devicecloud.virtualdevice import SubscriptionScope, VirtualDevice

EVENTS = "/v1/products/brew-bot/events"


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    return {"webhooks_enabled": False}


@pytest.fixture
async def served(runtime: Runtime) -> AsyncIterator[Served]:
    async with serve_app(runtime) as running:
        yield running


async def product_id(runtime: Runtime, slug: str = "brew-bot") -> int:
    async with runtime.store.transaction(readonly=True) as tx:
        product = await tx.products.get_by_slug(slug)
    assert product is not None
    return product.id


async def join_product(runtime: Runtime, device_id: str, firmware_version: int = 3) -> int:
    """
    Make ``device_id`` a device of ``brew-bot`` (what section 3's import does), and tell the events service.
    """
    pid = await product_id(runtime)
    async with runtime.store.transaction() as tx:
        now = runtime.clock.now()
        await tx.products.add_device(pid, device_id, firmware_version=firmware_version, now=now)
    runtime.events.forget_product(device_id)
    return pid


async def product_device(client: httpx.AsyncClient, runtime: Runtime, account: Account) -> VirtualDevice:
    device = await connect_device(client, account, runtime)
    await join_product(runtime, device.device_id)
    return device


async def test_product_stream_sees_its_devices_events_whoever_owns_them(
    client: httpx.AsyncClient, runtime: Runtime, served: Served, owner: Account
) -> None:
    ada = await make_account(client, "ada@example.com")
    inside = await product_device(client, runtime, ada)
    outside = await connect_device(client, ada, runtime)  # Ada's, not the product's
    pid = await product_id(runtime)
    async with stream(served, EVENTS, owner) as product, stream(served, "/v1/devices/events/t", ada) as mine:
        await outside.publish("t/outside", "1", with_ack=True)
        await inside.publish("t/private", "2", private=True, with_ack=True)
        await inside.publish("t/public", "3", private=False, with_ack=True)
        seen = [await product.event(), await product.event()]
        assert [name for name, _data in seen] == ["t/private", "t/public"]
        assert all(data["coreid"] == inside.device_id for _name, data in seen)
        assert all(data["productID"] == pid for _name, data in seen)
        # The owner's own stream sees all three; the product device's carry productID, the other none.
        by_name = dict([await mine.event() for _ in range(3)])
        assert by_name["t/private"]["productID"] == pid
        assert "productID" not in by_name["t/outside"]
        await inside.stop()
        name, data = await product.event()  # the device's spark/status reaches the product too
        assert (name, data["data"], data["productID"]) == ("spark/status", "offline", pid)
    await outside.stop()


async def test_product_stream_prefix_and_other_products(
    client: httpx.AsyncClient, runtime: Runtime, served: Served, owner: Account
) -> None:
    other = await make_account(client, "other@example.com")
    made = await client.post("/v1/products", json={"name": "Other", "platform_id": 6}, headers=other.auth)
    assert made.status_code == 201
    ada = await make_account(client, "ada@example.com")
    inside = await product_device(client, runtime, ada)
    async with (
        stream(served, f"{EVENTS}/temp", owner) as prefixed,
        stream(served, "/v1/products/other/events", other) as elsewhere,
        stream(served, EVENTS, owner) as everything,
    ):
        await inside.publish("humidity", "40", with_ack=True)
        await inside.publish("temp/inside", "21", with_ack=True)
        reply = await client.post(EVENTS, json={"name": "temp/end"}, headers=owner.auth)
        assert reply.status_code == 200
        assert await prefixed.names(2) == ["temp/inside", "temp/end"]
        assert await everything.names(3) == ["humidity", "temp/inside", "temp/end"]
        published = await client.post("/v1/products/other/events", json={"name": "mark"}, headers=other.auth)
        assert published.status_code == 200
        assert await elsewhere.names(1) == ["mark"]  # nothing of brew-bot's came before it
    await inside.stop()


async def test_publish_for_the_product(
    client: httpx.AsyncClient, runtime: Runtime, served: Served, owner: Account
) -> None:
    pid = await product_id(runtime)
    async with stream(served, EVENTS, owner) as product, stream(served, "/v1/devices/events", owner) as mine:
        reply = await client.post(
            f"/v1/products/{pid}/events",  # the numeric id works as well as the slug
            data={"name": "fleet/notice", "data": "hello", "private": "true", "ttl": "30"},
            headers=owner.auth,
        )
        assert (reply.status_code, reply.json()) == (200, {"ok": True})
        name, data = await product.event()
        assert name == "fleet/notice"
        assert {k: data[k] for k in ("data", "ttl", "coreid", "productID")} == {
            "data": "hello",
            "ttl": 30,
            "coreid": "api",
            "productID": pid,
        }
        # A product's event is not its team member's own: their user stream does not see it.
        await client.post("/v1/devices/events", json={"name": "own"}, headers=owner.auth)
        assert await mine.names(1) == ["own"]


@pytest.mark.parametrize(
    "body",
    [{}, {"name": ""}, {"name": "x" * 65}, {"name": "ok", "data": "d" * 1025}, {"name": "ok", "ttl": "soon"}],
)
async def test_bad_publish_is_refused_and_publishes_nothing(
    client: httpx.AsyncClient, runtime: Runtime, served: Served, owner: Account, body: dict[str, Any]
) -> None:
    async with stream(served, EVENTS, owner) as product:
        reply = await client.post(EVENTS, json=body, headers=owner.auth)
        assert reply.status_code == 400, reply.text
        assert reply.json()["ok"] is False
        await client.post(EVENTS, json={"name": "after"}, headers=owner.auth)
        assert await product.names(1) == ["after"]


async def test_api_user_with_events_scopes_streams_and_publishes(
    client: httpx.AsyncClient, runtime: Runtime, served: Served, owner: Account
) -> None:
    created = await client.post(
        "/v1/products/brew-bot/team",
        json={"friendly_name": "server", "scopes": ["events:get", "events:send"]},
        headers=owner.auth,
    )
    token = created.json()["created"]["tokens"][0]["token"]
    server = Account(email="server", password="", token=token)
    async with stream(served, EVENTS, server) as product:
        reply = await client.post(EVENTS, json={"name": "from-server"}, headers=server.auth)
        assert reply.status_code == 200
        assert await product.names(1) == ["from-server"]
    stranger = await make_account(client, "stranger@example.com")
    refused = await served.http.get(EVENTS, headers=stranger.auth)
    assert (refused.status_code, refused.json()["error"]) == (404, "Not Found")


async def test_one_product_devices_stream(
    client: httpx.AsyncClient, runtime: Runtime, served: Served, owner: Account
) -> None:
    ada = await make_account(client, "ada@example.com")
    first = await product_device(client, runtime, ada)
    second = await product_device(client, runtime, ada)
    outside = await connect_device(client, ada, runtime)
    path = f"/v1/products/brew-bot/devices/{first.device_id.upper()}/events"
    async with stream(served, path, owner) as one, stream(served, f"{path}/t%2Fb", owner) as prefixed:
        await second.publish("t/a", "2", with_ack=True)
        await client.post(EVENTS, json={"name": "t/product"}, headers=owner.auth)
        await first.publish("t/a", "1", with_ack=True)
        await first.publish("t/b", "1", with_ack=True)
        assert [(name, data["coreid"]) for name, data in [await one.event(), await one.event()]] == [
            ("t/a", first.device_id),
            ("t/b", first.device_id),
        ]
        assert await prefixed.names(1) == ["t/b"]
    # A device that is not the product's is not found, like one that does not exist or a name.
    for device in (outside.device_id, "0" * 24, "not-an-id"):
        refused = await served.http.get(f"/v1/products/brew-bot/devices/{device}/events", headers=owner.auth)
        assert (refused.status_code, refused.json()["error"]) == (404, "Not Found"), device
    for device in (first, second, outside):
        await device.stop()


async def test_a_team_member_streams_a_product_device_it_does_not_own(
    client: httpx.AsyncClient, runtime: Runtime, served: Served, owner: Account
) -> None:
    """
    ``/v1/devices/:id/events`` names a product device owned by another account: the product's team sees its
    events there too (as on the product's device stream), and someone outside the team is refused.
    """
    ada = await make_account(client, "ada@example.com")
    inside = await product_device(client, runtime, ada)
    async with stream(served, f"/v1/devices/{inside.device_id}/events", owner) as one:
        await inside.publish("t/private", "1", private=True, with_ack=True)
        name, data = await one.event()
        assert ("t/private", inside.device_id) == (name, data["coreid"])
    stranger = await make_account(client, "stranger@example.com")
    refused = await served.http.get(f"/v1/devices/{inside.device_id}/events", headers=stranger.auth)
    assert 403 == refused.status_code, refused.text
    await inside.stop()


async def test_what_a_product_publishes_reaches_its_subscribed_devices(
    client: httpx.AsyncClient, runtime: Runtime, owner: Account
) -> None:
    """
    ``POST /v1/products/:p/events`` reaches the product's devices that subscribe to its name (the hosted
    cloud's fleet-wide publish), whoever owns them; a device outside the product gets nothing of it.
    """
    ada = await make_account(client, "ada@example.com")
    inside = await product_device(client, runtime, ada)
    outside = await connect_device(client, ada, runtime)
    got: dict[str, list[tuple[str, str | None]]] = {inside.device_id: [], outside.device_id: []}
    for device in (inside, outside):
        await device.subscribe(
            "fleet",
            lambda name, data, d=device.device_id: got[d].append((name, data)),
            scope=SubscriptionScope.MY_DEVICES,
        )
        await device.ping()
    published = await client.post(EVENTS, json={"name": "fleet/config", "data": "v2"}, headers=owner.auth)
    assert 200 == published.status_code, published.text
    await client.post("/v1/devices/events", json={"name": "fleet/own", "data": "1"}, headers=ada.auth)

    async def delivered() -> bool:
        return len(got[inside.device_id]) == 2 and len(got[outside.device_id]) == 1

    await wait_until(delivered)
    assert [("fleet/config", "v2"), ("fleet/own", "1")] == got[inside.device_id]
    assert [("fleet/own", "1")] == got[outside.device_id]
    for device in (inside, outside):
        await device.stop()


def test_product_stream_opens_are_rate_limited() -> None:
    """Opening a product stream counts against rate_limit_events, like the others (catalogue §1.5)."""
    limits = RateLimits(Settings(rate_limit_events="7/minute"))
    events = [rule for rule in limits.rules if rule.name == "events"]
    paths = (
        "/v1/products/brew-bot/events",
        "/v1/products/42/events/temp/x",
        "/v1/products/42/devices/0123456789abcdef01234567/events",
        "/v1/products/42/devices/0123456789abcdef01234567/events/spark/status",
        "/v1/devices/events",
    )
    assert all(any(r.method == "GET" and r.path.match(p) for r in events) for p in paths)
    others = ("/v1/products/42", "/v1/products/42/devices/d/temperature", "/v1/products/42/integrations")
    assert not any(r.path.match(p) for r in events for p in others)


async def test_a_device_imported_while_connected_publishes_with_its_product_at_once(
    client: httpx.AsyncClient, runtime: Runtime, served: Served, owner: Account
) -> None:
    """The import over HTTP makes the events' product cache forget the device: its next event carries it."""
    device = await connect_device(client, owner, runtime)
    pid = await product_id(runtime)
    async with stream(served, "/v1/devices/events/t", owner) as mine:
        await device.publish("t/before", "1", with_ack=True)
        name, data = await mine.event()
        assert (name, "productID" in data) == ("t/before", False)
        imported = await client.post(
            "/v1/products/brew-bot/devices", json={"id": device.device_id}, headers=owner.auth
        )
        assert imported.status_code == 200, imported.text
        assert device.device_id in imported.json()["updatedDeviceIds"]
        await device.publish("t/after", "2", with_ack=True)
        name, data = await mine.event()
        assert (name, data.get("productID")) == ("t/after", pid)
    await device.stop()
