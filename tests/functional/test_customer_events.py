"""
A product customer's event streams over HTTP (issue 11 section 6, decision 0032): with a customer's token,
``GET /v1/devices/events[/:prefix]``, ``GET /v1/devices/:id/events[/:prefix]`` and ``GET /v1/events/:prefix``
carry the events of the devices that customer claimed in its product, and nothing else: not another
customer's devices, not the product's other devices, not the team's own devices, not anyone's public
events. A device of someone else is refused by id (403, as the customer's other device routes answer), and a
deleted customer's devices stop reaching whoever the store gives its id next.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from tests.functional.test_customers_api import (
    CUSTOMERS,
    PASSWORD,
    bearer,
    claim_with,
    customer_token,
    make_client,
    product_device,
)
from tests.support.api import Account
from tests.support.clock import FakeClock
from tests.support.devices import connect_device, wait_until
from tests.support.sse import Reader, Served, serve_app, stream

from devicecloud.api.sse import TOKEN_CHECK_INTERVAL
from devicecloud.runtime import Runtime
from devicecloud.virtualdevice.device import VirtualDevice


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    return {"webhooks_enabled": False}


@pytest.fixture
async def served(runtime: Runtime) -> AsyncIterator[Served]:
    async with serve_app(runtime) as running:
        yield running


@pytest.fixture
async def app_client(client: httpx.AsyncClient, owner: Account) -> tuple[str, str]:
    return await make_client(client, owner)


async def customer(client: httpx.AsyncClient, app_client: tuple[str, str], email: str) -> Account:
    """A new customer of brew-bot, as an account whose token is its customer-scoped one."""
    made = await client.post(CUSTOMERS, data={"email": email, "password": PASSWORD}, auth=app_client)
    assert made.status_code == 201, made.text
    return Account(email, PASSWORD, await customer_token(client, app_client, email))


async def claimed_by(
    client: httpx.AsyncClient, runtime: Runtime, who: Account, device: VirtualDevice
) -> None:
    """``device`` presents a claim code of ``who``'s; returns once ``who`` lists it."""
    code = await client.post("/v1/products/brew-bot/device_claims", headers=who.auth)
    assert code.status_code == 200, code.text
    await claim_with(device, runtime, code.json()["claim_code"])

    async def listed() -> bool:
        found = (await client.get("/v1/devices", headers=who.auth)).json()
        return device.device_id in [d["id"] for d in found]

    await wait_until(listed)


async def next_event(reader: Reader) -> tuple[str, str]:
    name, data = await reader.event()
    return name, data["coreid"]


async def test_each_customer_streams_only_its_own_devices_events(
    client: httpx.AsyncClient, runtime: Runtime, served: Served, owner: Account, app_client: tuple[str, str]
) -> None:
    jane = await customer(client, app_client, "jane@example.com")
    joe = await customer(client, app_client, "joe@example.com")
    janes = await product_device(client, runtime, owner)
    joes = await product_device(client, runtime, owner)
    nobodys = await product_device(client, runtime, owner)  # the product's, claimed by no customer
    teams = await connect_device(client, owner, runtime)  # the team owner's own device, in no product
    devices = (janes, joes, nobodys, teams)
    try:
        await claimed_by(client, runtime, jane, janes)
        await claimed_by(client, runtime, joe, joes)
        routes = {
            who.email: (
                "/v1/devices/events",
                "/v1/devices/events/t",
                f"/v1/devices/{mine.device_id}/events",
                f"/v1/devices/{mine.device_id}/events/t",
                "/v1/events/t",
            )
            for who, mine in ((jane, janes), (joe, joes))
        }
        async with (
            stream(served, routes[jane.email][0], jane) as jane_all,
            stream(served, routes[jane.email][1], jane) as jane_prefixed,
            stream(served, routes[jane.email][2], jane) as jane_device,
            stream(served, routes[jane.email][3], jane) as jane_device_prefixed,
            stream(served, routes[jane.email][4], jane) as jane_public,
            stream(served, routes[joe.email][0], joe) as joe_all,
            stream(served, routes[joe.email][2], joe) as joe_device,
            stream(served, routes[joe.email][4], joe) as joe_public,
            stream(served, "/v1/products/brew-bot/events/t", owner) as product,
        ):
            # Everyone else publishes first, public and private; then each customer's own device.
            await teams.publish("t/team", "public", private=False, with_ack=True)
            await nobodys.publish("t/product", "public", private=False, with_ack=True)
            await joes.publish("t/joe", "private", private=True, with_ack=True)
            await janes.publish("other", "not t…", private=True, with_ack=True)
            await janes.publish("t/jane", "public", private=False, with_ack=True)
            await joes.publish("t/joe-again", "public", private=False, with_ack=True)
            jane_first = ("other", janes.device_id)
            jane_t = ("t/jane", janes.device_id)
            assert [await next_event(jane_all), await next_event(jane_all)] == [jane_first, jane_t]
            assert [await next_event(jane_device), await next_event(jane_device)] == [jane_first, jane_t]
            for reader in (jane_prefixed, jane_device_prefixed, jane_public):
                assert await next_event(reader) == jane_t
            joe_t = [("t/joe", joes.device_id), ("t/joe-again", joes.device_id)]
            for reader in (joe_all, joe_device, joe_public):
                assert [await next_event(reader), await next_event(reader)] == joe_t
            # The product's stream sees them all (the check that every publish above went through).
            assert await product.names(4) == ["t/product", "t/joe", "t/jane", "t/joe-again"]
            # Jane's device going offline is hers to see; a single later event proves nothing came between.
            await janes.stop()
            assert await next_event(jane_all) == ("spark/status", janes.device_id)
    finally:
        for device in devices:
            await device.stop()


async def test_a_customer_cannot_stream_another_device(
    client: httpx.AsyncClient, runtime: Runtime, served: Served, owner: Account, app_client: tuple[str, str]
) -> None:
    jane = await customer(client, app_client, "jane@example.com")
    joe = await customer(client, app_client, "joe@example.com")
    joes = await product_device(client, runtime, owner)
    nobodys = await product_device(client, runtime, owner)
    teams = await connect_device(client, owner, runtime)
    try:
        await claimed_by(client, runtime, joe, joes)
        for device_id in (joes.device_id, nobodys.device_id, teams.device_id, "0" * 24, "no-such-name"):
            for suffix in ("", "/t"):
                refused = await served.http.get(f"/v1/devices/{device_id}/events{suffix}", headers=jane.auth)
                assert refused.status_code == 403, (device_id, refused.text)
                assert refused.json()["error"] == "Permission Denied"
        # As for a person: /v1/events needs a prefix.
        bare = await served.http.get("/v1/events", headers=jane.auth)
        assert (bare.status_code, bare.json()["error"]) == (400, "event prefix filter is required")
        # Other product principals stay out of the user streams: an API user, a product client's token.
        made = await client.post(
            "/v1/products/brew-bot/team",
            json={"friendly_name": "server", "scopes": ["events:get"]},
            headers=owner.auth,
        )
        assert made.status_code == 200, made.text
        api_user = bearer(made.json()["created"]["tokens"][0]["token"])
        product_token = await client.post(
            "/oauth/token", data={"grant_type": "client_credentials"}, auth=app_client
        )
        assert product_token.status_code == 200, product_token.text
        for headers in (api_user, bearer(product_token.json()["access_token"])):
            for path in ("/v1/devices/events", f"/v1/devices/{joes.device_id}/events", "/v1/events/t"):
                answer = await served.http.get(path, headers=headers)
                assert answer.status_code == 403, (path, answer.text)
    finally:
        for device in (joes, nobodys, teams):
            await device.stop()


async def test_a_deleted_customers_device_reaches_no_later_customer(
    client: httpx.AsyncClient,
    runtime: Runtime,
    served: Served,
    owner: Account,
    app_client: tuple[str, str],
    clock: FakeClock,
) -> None:
    """
    The events' cached membership forgets a deleted customer's devices: the next customer (which SQLite
    may give the very same id) streams its own device's events, never the old customer's device's.
    """
    jane = await customer(client, app_client, "jane@example.com")
    janes = await product_device(client, runtime, owner)
    kims = await product_device(client, runtime, owner)
    try:
        await claimed_by(client, runtime, jane, janes)
        async with stream(served, "/v1/devices/events/t", jane) as jane_stream:
            await janes.publish("t/before", with_ack=True)
            assert await jane_stream.names(1) == ["t/before"]  # the membership, customer included, is cached
            deleted = await client.delete(f"{CUSTOMERS}/jane@example.com", headers=owner.auth)
            assert deleted.status_code == 200, deleted.text
            clock.advance(TOKEN_CHECK_INTERVAL)  # the streams' token check runs: its token is revoked
            assert b"" == (await jane_stream.rest()).replace(b":\n\n", b"")
        kim = await customer(client, app_client, "kim@example.com")
        await claimed_by(client, runtime, kim, kims)
        async with stream(served, "/v1/devices/events/t", kim) as kim_stream:
            await janes.publish("t/jane-after", with_ack=True)
            await kims.publish("t/kim", with_ack=True)
            assert await next_event(kim_stream) == ("t/kim", kims.device_id)
    finally:
        await janes.stop()
        await kims.stop()


async def test_a_released_device_leaves_its_customers_streams(
    client: httpx.AsyncClient, runtime: Runtime, served: Served, owner: Account, app_client: tuple[str, str]
) -> None:
    """
    The team releases a customer's device (``DELETE /v1/products/:p/devices/:id/owner``): the device's next
    event (its ``spark/status`` offline, as the release disconnects it) reaches the product, not the customer.
    """
    jane = await customer(client, app_client, "jane@example.com")
    released = await product_device(client, runtime, owner)
    kept = await product_device(client, runtime, owner)
    try:
        await claimed_by(client, runtime, jane, released)
        await claimed_by(client, runtime, jane, kept)
        async with (
            stream(served, "/v1/devices/events", jane) as janes,
            stream(served, "/v1/products/brew-bot/events/spark", owner) as product,
        ):
            await released.publish("before", with_ack=True)
            assert await next_event(janes) == ("before", released.device_id)  # its membership is cached
            answer = await client.delete(
                f"/v1/products/brew-bot/devices/{released.device_id}/owner", headers=owner.auth
            )
            assert answer.status_code < 300, answer.text
            name, data = await product.event()
            assert (name, data["data"], data["coreid"]) == ("spark/status", "offline", released.device_id)
            await kept.publish("marker", with_ack=True)
            assert await next_event(janes) == ("marker", kept.device_id)
    finally:
        await released.stop()
        await kept.stop()
