"""
Quarantine end to end (issue 11 section 3 acceptance): virtual devices whose Hello names a product, through
the real gateway, controlled over HTTP — unknown → quarantined → approved → controllable; denied → refused
at connect; a product without quarantine takes its devices at once; an imported device is the product's.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
from sqlalchemy import delete
from tests.support.api import Account, make_account
from tests.support.devices import handled, virtual_device, wait_until
from tests.support.sse import serve_app, stream

from devicecloud.runtime import Runtime
from devicecloud.store.sql.products import SqlProducts
from devicecloud.store.tables import products
from devicecloud.virtualdevice.device import VirtualDevice
from devicecloud.virtualdevice.identity import DeviceIdentity, generate_identity
from devicecloud.virtualdevice.support import NotConnectedError

DEVICES = "/v1/products/fleet/devices"


@pytest.fixture
async def owner(client: httpx.AsyncClient) -> Account:
    return await make_account(client, "owner@example.com")


async def make_product(client: httpx.AsyncClient, owner: Account, *, quarantine: bool) -> int:
    body = {"name": "Fleet", "platform_id": 6, "settings": {"quarantine": quarantine}}
    created = await client.post("/v1/products", json=body, headers=owner.auth)
    assert created.status_code == 201, created.text
    product_id: int = created.json()["product"]["id"]
    assert product_id != 6  # the Hello of non-product firmware names its platform (Photon: 6)
    return product_id


@pytest.fixture
async def fleet() -> AsyncIterator[Callable[..., Any]]:
    """
    Start virtual devices that announce a product; all are stopped at the end.
    """
    started: list[VirtualDevice] = []

    async def start(runtime: Runtime, identity: DeviceIdentity, product_id: int) -> VirtualDevice:
        device = virtual_device(
            runtime, identity, product_id=product_id, product_firmware_version=3, demo=True
        )
        started.append(device)
        await device.start()
        await device.wait_connected(10)
        await handled(runtime, identity.device_id)  # the gateway has reported the Hello
        await runtime.sessions.presence.flush()  # the join is written behind: write it now
        return device

    yield start
    for device in started:
        await device.stop()


async def registered(runtime: Runtime) -> DeviceIdentity:
    """
    A device whose key an operator registered (``devicecloud keys add``): known here, unknown to products.
    """
    identity = generate_identity()
    await runtime.device_keys.add(identity.device_id, identity.public_key_pem())
    return identity


async def test_unknown_quarantined_then_approved_then_controllable(
    client: httpx.AsyncClient, owner: Account, runtime: Runtime, fleet: Callable[..., Any]
) -> None:
    product_id = await make_product(client, owner, quarantine=True)
    identity = await registered(runtime)
    device_id = identity.device_id
    device = await fleet(runtime, identity, product_id)

    waiting = (await client.get(DEVICES, params={"quarantined": "true"}, headers=owner.auth)).json()
    assert [d["id"] for d in waiting["devices"]] == [device_id]
    assert (waiting["devices"][0]["quarantined"], waiting["devices"][0]["online"]) == (True, True)
    url = f"{DEVICES}/{device_id}"
    for method, path, body in (
        ("POST", f"{url}/digitalread", {"arg": "D7"}),
        ("GET", f"{url}/temperature", None),
        ("PUT", f"{url}/ping", None),
        ("PUT", url, {"signal": "1"}),
        ("POST", f"/v1/devices/{device_id}/digitalread", {"arg": "D7"}),  # the team's device route too
    ):
        refused = await client.request(method, path, json=body, headers=owner.auth)
        assert refused.status_code == 403, (path, refused.text)
        assert refused.json()["ok"] is False

    approved = await client.post(DEVICES, data={"id": device_id}, headers=owner.auth)
    assert approved.json()["updatedDeviceIds"] == [device_id]
    assert (await client.get(DEVICES, params={"quarantined": "true"}, headers=owner.auth)).json()[
        "devices"
    ] == []
    record = (await client.get(url, headers=owner.auth)).json()
    assert (record["quarantined"], record["denied"], record["firmware_version"], record["product_id"]) == (
        False,
        False,
        3,
        product_id,
    )
    called = await client.post(f"{url}/digitalwrite", json={"arg": "D7,HIGH"}, headers=owner.auth)
    assert called.status_code == 200, called.text
    assert called.json()["return_value"] == 1
    read = await client.get(f"{url}/led", headers=owner.auth)
    assert read.json()["result"] is True
    pinged = await client.put(f"{url}/ping", headers=owner.auth)
    assert pinged.json() == {"online": True, "ok": True}
    through_devices = await client.get(f"/v1/devices/{device_id}/led", headers=owner.auth)
    assert through_devices.json()["result"] is True
    signalled = await client.put(url, data={"signal": "1"}, headers=owner.auth)
    assert signalled.json()["signaling"] is True
    assert device.signaling
    renamed = await client.put(url, json={"name": "brewer_7"}, headers=owner.auth)
    assert renamed.json()["name"] == "brewer_7"
    by_name = await client.get(f"{DEVICES}/brewer_7/temperature", headers=owner.auth)
    assert by_name.json()["result"] == 21.5


async def test_denied_device_is_refused_at_connect(
    client: httpx.AsyncClient, owner: Account, runtime: Runtime, fleet: Callable[..., Any]
) -> None:
    product_id = await make_product(client, owner, quarantine=True)
    identity = await registered(runtime)
    device = await fleet(runtime, identity, product_id)
    denied = await client.request(
        "DELETE", f"{DEVICES}/{identity.device_id}", data={"deny": "true"}, headers=owner.auth
    )
    assert denied.status_code == 204, denied.text

    async def gone() -> bool:
        return not device.connected

    await wait_until(gone)  # denying closes its link
    record = (await client.get(f"{DEVICES}/{identity.device_id}", headers=owner.auth)).json()
    assert (record["denied"], record["quarantined"]) == (True, False)

    failed_before = runtime.gateway.statistics().handshakes_failed
    again = virtual_device(runtime, identity, product_id=product_id)
    await again.start()
    try:
        with pytest.raises(NotConnectedError):
            await again.wait_connected(10)
    finally:
        await again.stop()
    assert runtime.gateway.statistics().handshakes_failed == failed_before + 1

    # Approving lifts the denial: the device connects again.
    await client.post(DEVICES, json={"id": identity.device_id}, headers=owner.auth)
    await fleet(runtime, identity, product_id)
    record = (await client.get(f"{DEVICES}/{identity.device_id}", headers=owner.auth)).json()
    assert (record["denied"], record["quarantined"], record["online"]) == (False, False, True)


async def test_without_quarantine_a_device_joins_at_once(
    client: httpx.AsyncClient, owner: Account, runtime: Runtime, fleet: Callable[..., Any]
) -> None:
    product_id = await make_product(client, owner, quarantine=False)
    identity = await registered(runtime)
    await fleet(runtime, identity, product_id)
    record = (await client.get(f"{DEVICES}/{identity.device_id}", headers=owner.auth)).json()
    assert (record["quarantined"], record["firmware_version"]) == (False, 3)
    pinged = await client.put(f"{DEVICES}/{identity.device_id}/ping", headers=owner.auth)
    assert pinged.json()["online"] is True


async def test_a_device_joining_with_its_hello_comes_online_on_the_products_stream(
    client: httpx.AsyncClient, owner: Account, runtime: Runtime, fleet: Callable[..., Any]
) -> None:
    # Its status is published before the join is written behind: it carries the membership the connection
    # just learned, not what the database still says.
    product_id = await make_product(client, owner, quarantine=False)
    identity = await registered(runtime)
    async with (
        serve_app(runtime) as served,
        stream(served, f"/v1/products/{product_id}/events/spark/status", owner) as statuses,
    ):
        await fleet(runtime, identity, product_id)
        name, data = await statuses.event()
    assert (name, data["data"], data["coreid"], data["productID"]) == (
        "spark/status",
        "online",
        identity.device_id,
        product_id,
    )


async def test_imported_device_is_the_products_and_others_join_nothing(
    client: httpx.AsyncClient, owner: Account, runtime: Runtime, fleet: Callable[..., Any]
) -> None:
    product_id = await make_product(client, owner, quarantine=True)
    imported = generate_identity()
    await client.post(DEVICES, json={"id": imported.device_id}, headers=owner.auth)
    await runtime.device_keys.add(imported.device_id, imported.public_key_pem())
    await fleet(runtime, imported, product_id)
    record = (await client.get(f"{DEVICES}/{imported.device_id}", headers=owner.auth)).json()
    assert (record["quarantined"], record["online"], record["firmware_version"]) == (False, True, 3)
    read = await client.get(f"{DEVICES}/{imported.device_id}/temperature", headers=owner.auth)
    assert read.json()["result"] == 21.5

    stray = await registered(runtime)
    await fleet(runtime, stray, product_id + 1000)  # a product that does not exist here
    plain = await registered(runtime)
    await fleet(runtime, plain, 6)  # non-product firmware: its platform id
    listed = (await client.get(DEVICES, headers=owner.auth)).json()["devices"]
    assert [d["id"] for d in listed] == [imported.device_id]
    async with runtime.store.transaction(readonly=True) as tx:
        for identity in (stray, plain):
            device = await tx.devices.get(identity.device_id)
            assert device is not None
            assert device.membership is None


async def test_turning_quarantine_on_applies_to_the_next_device(
    client: httpx.AsyncClient, owner: Account, runtime: Runtime, fleet: Callable[..., Any]
) -> None:
    product_id = await make_product(client, owner, quarantine=False)
    first = await registered(runtime)
    await fleet(runtime, first, product_id)  # the gateway has read the product's setting now
    edited = await client.put(
        "/v1/products/fleet", json={"settings": {"quarantine": True}}, headers=owner.auth
    )
    assert edited.status_code == 200, edited.text
    second = await registered(runtime)
    await fleet(runtime, second, product_id)
    waiting = (await client.get(DEVICES, params={"quarantined": "true"}, headers=owner.auth)).json()
    assert [d["id"] for d in waiting["devices"]] == [second.device_id]


async def test_a_hello_without_a_firmware_version_records_none(
    client: httpx.AsyncClient, owner: Account, runtime: Runtime
) -> None:
    """0xFFFF is the Hello's "no product firmware version"; it is not a version."""
    product_id = await make_product(client, owner, quarantine=False)
    identity = await registered(runtime)
    device = virtual_device(runtime, identity, product_id=product_id)
    await device.start()
    try:
        await device.wait_connected(10)
        await handled(runtime, identity.device_id)
        await runtime.sessions.presence.flush()
        record = (await client.get(f"{DEVICES}/{identity.device_id}", headers=owner.auth)).json()
        assert (record["product_id"], record["firmware_version"]) == (product_id, None)
    finally:
        await device.stop()


async def test_a_join_that_cannot_be_written_does_not_hold_up_presence(
    client: httpx.AsyncClient, owner: Account, runtime: Runtime
) -> None:
    """A product gone before the flush: its join is dropped, the device's presence is written."""
    product_id = await make_product(client, owner, quarantine=False)
    identity = await registered(runtime)
    device = virtual_device(runtime, identity, product_id=product_id)
    await device.start()
    try:
        await device.wait_connected(10)
        await handled(runtime, identity.device_id)
        async with runtime.store.engine.begin() as conn:
            await conn.execute(delete(products).where(products.c.id == product_id))
        assert await runtime.sessions.presence.flush() > 0
        assert runtime.sessions.presence.statistics().flush_failures == 0
        async with runtime.store.transaction(readonly=True) as tx:
            record = await tx.devices.get(identity.device_id)
        assert record is not None
        assert (record.online, record.membership) == (True, None)
    finally:
        await device.stop()


async def test_devices_of_a_product_connecting_together_share_one_read_of_it(
    client: httpx.AsyncClient, owner: Account, runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    product_id = await make_product(client, owner, quarantine=True)
    reads: list[int] = []
    original = SqlProducts.get

    async def counted(self: SqlProducts, wanted: int) -> Any:
        reads.append(wanted)
        return await original(self, wanted)

    monkeypatch.setattr(SqlProducts, "get", counted)
    identities = [await registered(runtime) for _ in range(8)]
    devices = [virtual_device(runtime, i, product_id=product_id) for i in identities]
    try:
        await asyncio.gather(*(d.start() for d in devices))
        await asyncio.gather(*(d.wait_connected(10) for d in devices))
        for identity in identities:
            await handled(runtime, identity.device_id)
        await runtime.sessions.presence.flush()
        assert reads == [product_id]
    finally:
        await asyncio.gather(*(d.stop() for d in devices))
    waiting = (await client.get(DEVICES, params={"quarantined": "true"}, headers=owner.auth)).json()
    assert sorted(d["id"] for d in waiting["devices"]) == sorted(i.device_id for i in identities)
