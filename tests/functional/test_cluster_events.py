"""
Two nodes on one database (SQLite and PostgreSQL) and one NATS bus: an event published through either node
reaches streams and subscribed devices on the other, and each webhook is sent once, by one node; a product
customer's stream on one node gets its device's events from the other, and forgets a deleted customer there.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import httpx
import pytest
from pytest_httpserver import HTTPServer
from tests.functional.test_customer_events import customer
from tests.functional.test_customers_api import make_client
from tests.support.api import Account, make_account
from tests.support.cluster import api_of, bus_url, node_b, settings_overrides
from tests.support.devices import register_and_claim, virtual_device, wait_until
from tests.support.sse import flag, serve_app, stream
from tests.support.webhooks import create_hook, outbox_empty, publish, requests_seen

from devicecloud.protocol import SubscriptionScope
from devicecloud.runtime import Runtime
from devicecloud.virtualdevice.device import VirtualDevice
from devicecloud.virtualdevice.identity import generate_identity

pytestmark = pytest.mark.nats
__all__ = ["bus_url", "node_b", "settings_overrides"]  # fixtures


async def test_an_event_published_on_one_node_reaches_streams_and_devices_on_the_other(
    client: httpx.AsyncClient, runtime: Runtime, node_b: Callable[[], Awaitable[Runtime]]
) -> None:
    """
    A stream open on node A and a device linked to node B (subscribed to its owner's ``cluster/`` events)
    both receive what the API of either node publishes, once each.
    """
    ada = await make_account(client, "ada@example.com")
    b = await node_b()
    identity = generate_identity()
    await register_and_claim(client, ada, identity.device_id, identity.public_key_pem())
    received: list[tuple[str, str | None]] = []
    device = virtual_device(b, identity)
    await device.start()
    await device.wait_connected(10)
    try:
        await device.subscribe(
            "cluster/", lambda name, data: received.append((name, data)), scope=SubscriptionScope.MY_DEVICES
        )
        await b.bus.settle()  # the device's feed is subscribed at the server
        async with serve_app(runtime) as served, stream(served, "/v1/devices/events/cluster", ada) as on_a:
            await runtime.bus.settle()
            async with api_of(b) as via_b:
                await publish(via_b, ada, "cluster/from-b", "1")
            await publish(client, ada, "cluster/from-a", "2")
            assert ["cluster/from-b", "cluster/from-a"] == await on_a.names(2)
            await wait_until(flag(lambda: len(received) >= 2))
            assert [("cluster/from-b", "1"), ("cluster/from-a", "2")] == received
    finally:
        await device.stop()


async def test_each_webhook_is_sent_once_whichever_node_publishes(
    client: httpx.AsyncClient,
    runtime: Runtime,
    node_b: Callable[[], Awaitable[Runtime]],
    httpserver: HTTPServer,
) -> None:
    """
    Both nodes run webhook delivery; 20 events published through both: 20 requests, not 40 (each node's
    intake takes its share of the JetStream work queue, and the outbox leases each delivery to one node).
    """
    httpserver.expect_request("/hook", method="POST").respond_with_data("ok")
    ada: Account = await make_account(client, "ada@example.com")
    await create_hook(client, ada, event="sale", url=httpserver.url_for("/hook"))
    b = await node_b()
    async with api_of(b) as via_b:
        for n in range(20):
            await publish(via_b if n % 2 else client, ada, "sale", str(n))
    seen = await requests_seen(httpserver, 20)
    await outbox_empty(runtime)
    await outbox_empty(b)
    await runtime.bus.settle()
    assert sorted(str(n) for n in range(20)) == sorted(request.form["data"] for request in seen)
    assert 20 == len(httpserver.log)


async def test_readyz_and_metrics_follow_the_nats_connection(
    client: httpx.AsyncClient, runtime: Runtime, node_b: Callable[[], Awaitable[Runtime]]
) -> None:
    """Node B is ready while NATS answers it and reports its bus lag; without its connection: 503, "bus"."""
    b = await node_b()
    await publish(client, await make_account(client, "ada@example.com"), "lagging")
    async with api_of(b) as via_b:
        assert 200 == (await via_b.get("/readyz")).status_code
        await b.bus.settle()
        assert "devicecloud_bus_lag_seconds_count" in (await via_b.get("/metrics")).text
        await b.bus.close()
        down = await via_b.get("/readyz")
    assert (503, "not_ready") == (down.status_code, down.json()["error"])
    assert "ok" != down.json()["checks"]["bus"]
    assert "bus: ConnectionError" in down.json()["error_description"]


async def test_a_hook_made_on_one_node_is_known_at_once_to_the_others(
    client: httpx.AsyncClient,
    runtime: Runtime,
    node_b: Callable[[], Awaitable[Runtime]],
    httpserver: HTTPServer,
) -> None:
    """
    Node B has read the hooks already (an event went through its intake) when Ada creates one on node A:
    B's cache forgets them on A's note, so none of the events B's intake takes misses the new hook.
    """
    httpserver.expect_request("/hook", method="POST").respond_with_data("ok")
    ada = await make_account(client, "ada@example.com")
    b = await node_b()
    async with api_of(b) as via_b:
        for n in range(4):  # both intakes take some: both caches are loaded, without the hook
            await publish(via_b, ada, "before", str(n))
        await outbox_empty(runtime)
        await outbox_empty(b)
        notes = b.bus.statistics()["notes"]
        await create_hook(client, ada, event="after", url=httpserver.url_for("/hook"))
        await wait_until(flag(lambda: b.bus.statistics()["notes"] > notes))
        for n in range(10):
            await publish(via_b if n % 2 else client, ada, "after", str(n))
    seen = await requests_seen(httpserver, 10)
    assert sorted(str(n) for n in range(10)) == sorted(request.form["data"] for request in seen)


async def claim(client: httpx.AsyncClient, who: Account, device: VirtualDevice) -> None:
    """``device`` (on any node) presents a claim code of customer ``who``; returns once ``who`` lists it."""
    code = await client.post("/v1/products/brew-bot/device_claims", headers=who.auth)
    assert code.status_code == 200, code.text
    await device.publish("spark/device/claim/code", code.json()["claim_code"], private=True, with_ack=True)

    async def listed() -> bool:
        found = (await client.get("/v1/devices", headers=who.auth)).json()
        return device.device_id in [d["id"] for d in found]

    await wait_until(listed)


async def test_a_customers_stream_on_one_node_gets_its_device_on_the_other(
    client: httpx.AsyncClient, runtime: Runtime, node_b: Callable[[], Awaitable[Runtime]]
) -> None:
    """
    A product customer's stream on node A gets the events of its device linked to node B (the customer's
    audience across NATS), not those of the product's other device there; once the customer is deleted on
    node A, node B's events of that device carry it no more, even to a new customer with the same id.
    """
    owner = await make_account(client, "owner@example.com")
    made = await client.post("/v1/products", json={"name": "Brew Bot", "platform_id": 6}, headers=owner.auth)
    assert made.status_code == 201, made.text
    app = await make_client(client, owner)
    jane = await customer(client, app, "jane@example.com")
    b = await node_b()
    devices = []
    for _ in range(3):
        identity = generate_identity()
        await runtime.device_keys.add(identity.device_id, identity.public_key_pem())
        imported = await client.post(
            "/v1/products/brew-bot/devices", json={"id": identity.device_id}, headers=owner.auth
        )
        assert imported.status_code == 200, imported.text
        device = virtual_device(b, identity)
        await device.start()
        await device.wait_connected(10)
        devices.append(device)
    janes, nobodys, kims = devices
    try:
        await claim(client, jane, janes)
        async with serve_app(runtime) as served:
            async with stream(served, "/v1/devices/events/t", jane) as on_a:
                await runtime.bus.settle()
                await nobodys.publish("t/nobody", with_ack=True)
                await janes.publish("t/jane", with_ack=True)
                name, data = await on_a.event()
                assert (name, data["coreid"]) == ("t/jane", janes.device_id)
            deleted = await client.delete(
                "/v1/products/brew-bot/customers/jane@example.com", headers=owner.auth
            )
            assert deleted.status_code == 200, deleted.text
            kim = await customer(client, app, "kim@example.com")
            await claim(client, kim, kims)
            async with stream(served, "/v1/devices/events/t", kim) as kim_on_a:
                await runtime.bus.settle()
                await janes.publish("t/jane-after", with_ack=True)
                await kims.publish("t/kim", with_ack=True)
                name, data = await kim_on_a.event()
                assert (name, data["coreid"]) == ("t/kim", kims.device_id)
    finally:
        for device in devices:
            await device.stop()
