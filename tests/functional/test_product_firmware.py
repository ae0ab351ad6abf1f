"""
Product firmware end to end (issue 12 section 4): the catalogue's §12 routes over HTTP, and releases
reaching virtual product devices through the real gateway — the product default on connect, a group release
beating it, a lock beating both, development devices left alone, intelligent releases asking first — plus
the impact preview and the refusals (a released version cannot be deleted, binaries that do not fit).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
from tests.support.api import Account, make_account
from tests.support.clock import FakeClock
from tests.support.devices import handled, virtual_device, wait_until

from devicecloud.domain.firmware import build_module
from devicecloud.runtime import Runtime
from devicecloud.virtualdevice.device import VirtualDevice
from devicecloud.virtualdevice.identity import DeviceIdentity, generate_identity
from devicecloud.virtualdevice.support import Backoff

FAST_RECONNECT = Backoff(initial=0.01, maximum=0.05, jitter=False)
PRODUCT = "/v1/products/fleet"
FIRMWARE = f"{PRODUCT}/firmware"


def product_binary(product_id: int, version: int, *, platform: int = 6, product: bool = True) -> bytes:
    code = f"application of product {product_id}, version {version}".encode() * 40
    fields = (product_id, version) if product else None
    return build_module(code, platform_id=platform, product=fields)


@pytest.fixture
async def owner(client: httpx.AsyncClient) -> Account:
    return await make_account(client, "owner@example.com")


@pytest.fixture
async def product_id(client: httpx.AsyncClient, owner: Account) -> int:
    body = {"name": "Fleet", "platform_id": 6, "settings": {"quarantine": False}}
    created = await client.post("/v1/products", json=body, headers=owner.auth)
    assert created.status_code == 201, created.text
    found: int = created.json()["product"]["id"]
    return found


async def upload(
    client: httpx.AsyncClient, owner: Account, version: int, data: bytes, *, field: str = "binary"
) -> httpx.Response:
    return await client.post(
        FIRMWARE,
        data={"version": str(version), "title": f"Version {version}", "description": "built by CI"},
        files={field: ("firmware.bin", data, "application/octet-stream")},
        headers=owner.auth,
    )


async def release(client: httpx.AsyncClient, owner: Account, **body: Any) -> httpx.Response:
    return await client.put(f"{FIRMWARE}/release", json=body, headers=owner.auth)


@pytest.fixture
async def fleet(runtime: Runtime, clock: FakeClock) -> AsyncIterator[Callable[..., Any]]:
    """
    Start virtual devices whose firmware names the product (and reconnect after an update, as after a
    reset); all are stopped at the end.
    """
    started: list[VirtualDevice] = []

    async def start(
        identity: DeviceIdentity, product_id: int, version: int = 1, *, advance: bool = True, **options: Any
    ) -> VirtualDevice:
        device = virtual_device(
            runtime,
            identity,
            product_id=product_id,
            product_firmware_version=version,
            reconnect=True,
            backoff=FAST_RECONNECT,
            **options,
        )
        started.append(device)
        await device.start()
        await device.wait_connected(10)
        await handled(runtime, identity.device_id)
        await runtime.sessions.presence.flush()  # a Hello's join is written behind: write it now
        if advance:
            clock.advance(runtime.settings.release_delay)  # "a few seconds after the handshake"
        return device

    yield start
    for device in started:
        await device.stop()


async def registered(runtime: Runtime) -> DeviceIdentity:
    identity = generate_identity()
    await runtime.device_keys.add(identity.device_id, identity.public_key_pem())
    return identity


async def runs(runtime: Runtime, device: VirtualDevice, version: int) -> None:
    """Wait until the device was updated to ``version`` and is back online, linked again."""

    async def back() -> bool:
        return (
            device.hello.product_firmware_version == version
            and device.connected
            and runtime.gateway.control.is_online(device.device_id)
        )

    await wait_until(back, timeout=20)
    await handled(runtime, device.device_id)


async def settled(runtime: Runtime, clock: FakeClock) -> None:
    """Every pending release check has run: the connect delay passed and the rollout is idle."""
    clock.advance(runtime.settings.release_delay + 1)
    await runtime.rollout.idle()


async def proven(
    client: httpx.AsyncClient,
    owner: Account,
    runtime: Runtime,
    fleet: Callable[..., Any],
    product_id: int,
    version: int,
) -> VirtualDevice:
    """
    A development device of the product running ``version`` already (a first release needs one, §12);
    development devices are never updated, so it stays out of the rollout under test.
    """
    device: VirtualDevice = await fleet(await registered(runtime), product_id, version=version)
    marked = await client.put(
        f"{PRODUCT}/devices/{device.device_id}", json={"development": True}, headers=owner.auth
    )
    assert marked.status_code == 200, marked.text
    return device


# ---------------------------------------------------------------------------------------------- the API


async def test_upload_list_get_edit_download_and_delete(
    client: httpx.AsyncClient, owner: Account, product_id: int
) -> None:
    binary = product_binary(product_id, 2)
    made = await upload(client, owner, 2, binary, field="file")  # particle-api-js's field name
    assert made.status_code == 201, made.text
    body = made.json()
    assert body["version"] == 2
    assert body["title"] == "Version 2"
    assert body["description"] == "built by CI"
    assert body["size"] == len(binary)
    assert body["name"] == "firmware.bin"
    assert body["product_default"] is False
    assert body["current"] is False
    assert body["groups"] == []
    assert body["product_id"] == product_id
    assert body["uploaded_by"] == {"username": owner.email}
    assert body["uploaded_on"].endswith("Z")
    listed = (await client.get(FIRMWARE, headers=owner.auth)).json()
    assert [(f["version"], f["device_count"]) for f in listed] == [(2, 0)]
    got = await client.get(f"{FIRMWARE}/2", headers=owner.auth)
    assert got.json()["title"] == "Version 2"
    edited = await client.put(f"{FIRMWARE}/2", json={"title": "Two", "description": "d"}, headers=owner.auth)
    assert (edited.json()["title"], edited.json()["description"]) == ("Two", "d")
    downloaded = await client.get(f"{FIRMWARE}/2/binary", headers=owner.auth)
    assert downloaded.status_code == 200
    assert downloaded.content == binary
    assert downloaded.headers["content-type"] == "application/octet-stream"
    deleted = await client.delete(f"{FIRMWARE}/2", headers=owner.auth)
    assert deleted.status_code == 204, deleted.text
    assert (await client.get(f"{FIRMWARE}/2", headers=owner.auth)).status_code == 404
    assert (await client.get(FIRMWARE, headers=owner.auth)).json() == []


async def test_a_released_version_cannot_be_deleted(
    client: httpx.AsyncClient, owner: Account, runtime: Runtime, product_id: int, fleet: Callable[..., Any]
) -> None:
    assert (await upload(client, owner, 3, product_binary(product_id, 3))).status_code == 201
    await proven(client, owner, runtime, fleet, product_id, 3)
    released = await release(client, owner, version=3, product_default=True)
    assert released.status_code == 200, released.text
    assert released.json()["product_default"] is True
    assert released.json()["version"] == 3
    refused = await client.delete(f"{FIRMWARE}/3", headers=owner.auth)
    assert refused.status_code == 400, refused.text
    assert refused.json()["ok"] is False
    assert "released" in refused.json()["error_description"]
    # Unreleasing it does not make it deletable: it may have reached devices.
    await release(client, owner, version=3, product_default=False)
    assert (await client.delete(f"{FIRMWARE}/3", headers=owner.auth)).status_code == 400
    assert (await client.get(f"{FIRMWARE}/3/binary", headers=owner.auth)).status_code == 200


async def test_a_version_is_first_released_once_a_device_runs_it_and_the_product_hears_of_both(
    client: httpx.AsyncClient,
    owner: Account,
    runtime: Runtime,
    clock: FakeClock,
    product_id: int,
    fleet: Callable[..., Any],
) -> None:
    """
    The docs' release flow: upload, lock a device to the version and flash it, then release. The upload and
    the release are announced on the product's stream (``particle/firmware/create``, ``…/release``).
    """
    stream = runtime.events.everything(max_pending=1000)
    try:
        assert (await upload(client, owner, 2, product_binary(product_id, 2))).status_code == 201
        device = await fleet(await registered(runtime), product_id, version=1)
        await settled(runtime, clock)
        for target in ({"product_default": True}, {"groups": ["beta"]}):
            if "groups" in target:
                made = await client.post(f"{PRODUCT}/groups", json={"name": "beta"}, headers=owner.auth)
                assert made.status_code in (200, 201), made.text
            refused = await release(client, owner, version=2, **target)
            assert refused.status_code == 400, refused.text
            assert refused.json() == {
                "ok": False,
                "error": "Firmware not running on any device",
                "error_description": "Firmware version 2 must be running on at least one device of the "
                "product before its first release: lock a device to it (with flash) and let it reconnect",
            }
        assert (await client.get(f"{FIRMWARE}/2", headers=owner.auth)).json()["product_default"] is False
        locked = await client.put(
            f"{PRODUCT}/devices/{device.device_id}",
            json={"desired_firmware_version": 2, "flash": True},
            headers=owner.auth,
        )
        assert locked.status_code == 200, locked.text
        await runs(runtime, device, 2)
        await runtime.sessions.presence.flush()  # the Hello's version is written behind
        released = await release(client, owner, version=2, product_default=True)
        assert released.status_code == 200, released.text
        # Released once, it may be released again (here: to a group) whatever runs it now.
        assert (await release(client, owner, version=2, groups=["beta"], intelligent=True)).status_code == 200
        seen = []
        async with asyncio.timeout(10):
            async for event in stream:
                if event.name.startswith("particle/firmware/"):
                    seen.append(event)
                if len(seen) == 3:
                    break
        assert [(e.name, e.data) for e in seen] == [
            ("particle/firmware/create", '{"version":"2"}'),
            ("particle/firmware/release", '{"immediate":false,"version":2}'),
            ("particle/firmware/release", '{"immediate":true,"version":2}'),
        ]
        assert {(e.coreid, e.public, e.product_id, e.owner_id) for e in seen} == {
            ("api", False, product_id, None)
        }
    finally:
        stream.close()


async def test_binaries_that_do_not_fit_are_refused(
    client: httpx.AsyncClient, owner: Account, product_id: int
) -> None:
    cases = {
        "platform": product_binary(product_id, 4, platform=10),
        "product": product_binary(product_id + 1, 4),
        "version": product_binary(product_id, 5),
        "corrupt": product_binary(product_id, 4)[:-1] + b"\x00",
        "empty": b"",
    }
    for reason, data in cases.items():
        refused = await upload(client, owner, 4, data)
        assert refused.status_code == 400, (reason, refused.text)
        assert refused.json()["error"] in ("invalid_binary", "invalid_request"), reason
    assert (await upload(client, owner, 4, product_binary(product_id, 4, product=False))).status_code == 201
    duplicate = await upload(client, owner, 4, product_binary(product_id, 4))
    assert duplicate.status_code == 400, duplicate.text
    missing = await client.post(FIRMWARE, data={"version": "6", "title": "t"}, headers=owner.auth)
    assert missing.status_code == 400
    assert (await release(client, owner, version=9, product_default=True)).status_code == 404
    assert (await release(client, owner, version=4, groups=["nowhere"])).status_code == 404
    assert (await client.get(FIRMWARE, headers=owner.auth)).json()[0]["version"] == 4


# ------------------------------------------------------------------------------------------ the rollout


async def test_the_product_default_reaches_a_connecting_device(
    client: httpx.AsyncClient,
    owner: Account,
    runtime: Runtime,
    clock: FakeClock,
    product_id: int,
    fleet: Callable[..., Any],
) -> None:
    image = product_binary(product_id, 2)
    assert (await upload(client, owner, 2, image)).status_code == 201
    await proven(client, owner, runtime, fleet, product_id, 2)
    assert (await release(client, owner, version=2, product_default=True)).status_code == 200
    statuses = runtime.events.everything(max_pending=1000)
    try:
        device = await fleet(await registered(runtime), product_id, version=1)
        await runs(runtime, device, 2)
        assert device.firmware == image
        assert device.updater.applied == 1
        names = []
        async with asyncio.timeout(10):
            async for event in statuses:
                if event.device_id == device.device_id and event.coreid == "particle-internal":
                    names.append((event.name, event.data))
                if event.name == "spark/flash/status" and event.data == "success ":
                    break
        assert names[:3] == [
            ("spark/status", "auto-update"),
            ("spark/flash/status", "started "),
            ("spark/flash/status", "success "),
        ]
    finally:
        statuses.close()
    # Back with version 2 it is left alone, and the product counts it.
    await settled(runtime, clock)
    assert device.updater.applied == 1
    assert runtime.rollout.started == 1
    await runtime.sessions.presence.flush()
    listed = (await client.get(FIRMWARE, headers=owner.auth)).json()
    assert [(f["version"], f["device_count"]) for f in listed] == [(2, 2)]  # with the development one
    shown = (await client.get(f"{PRODUCT}/devices/{device.device_id}", headers=owner.auth)).json()
    assert shown["firmware_version"] == 2


async def test_group_beats_default_lock_beats_group_development_is_never_flashed(
    client: httpx.AsyncClient,
    owner: Account,
    runtime: Runtime,
    clock: FakeClock,
    product_id: int,
    fleet: Callable[..., Any],
) -> None:
    for version in (2, 3, 4):
        assert (await upload(client, owner, version, product_binary(product_id, version))).status_code == 201
    grouped, locked, development, plain = [await registered(runtime) for _ in range(4)]
    ids = [grouped.device_id, locked.device_id, development.device_id, plain.device_id]
    imported = await client.post(f"{PRODUCT}/devices", json={"ids": ids}, headers=owner.auth)
    assert imported.status_code == 200, imported.text
    for identity, body in (
        (grouped, {"groups": ["beta"]}),
        (locked, {"groups": ["beta"], "desired_firmware_version": 4}),
        (development, {"groups": ["beta"], "development": True}),
    ):
        changed = await client.put(f"{PRODUCT}/devices/{identity.device_id}", json=body, headers=owner.auth)
        assert changed.status_code == 200, changed.text
    provers = [await proven(client, owner, runtime, fleet, product_id, v) for v in (2, 3)]
    assert (await release(client, owner, version=2, product_default=True)).status_code == 200
    assert (await release(client, owner, version=3, groups=["beta"])).status_code == 200
    beta = (await client.get(f"{PRODUCT}/groups/beta", headers=owner.auth)).json()["group"]
    assert (beta["fw_version"], beta["device_count"]) == (3, 3)

    impact = await client.get(
        f"{PRODUCT}/impact",
        params={"action": "edit_groups_for_firmware", "firmware_version": "3", "groups": "beta"},
        headers=owner.auth,
    )
    # Only the grouped device: the locked one keeps 4, the development one is never updated.
    assert impact.json()["devices"]["firmware_update"] == {
        "total": 1,
        "by_version": [{"version": None, "total": 1}],
    }

    devices = {
        name: await fleet(identity, product_id, version=1)
        for name, identity in (
            ("grouped", grouped),
            ("locked", locked),
            ("development", development),
            ("plain", plain),
        )
    }
    listed = await client.get(f"{PRODUCT}/devices", params={"perPage": "10"}, headers=owner.auth)
    targets = {d["id"]: d["targeted_firmware_release_version"] for d in listed.json()["devices"]}
    assert targets == {
        grouped.device_id: 3,
        locked.device_id: 4,
        development.device_id: None,
        plain.device_id: 2,
    } | {prover.device_id: None for prover in provers}
    await runs(runtime, devices["grouped"], 3)
    await runs(runtime, devices["locked"], 4)
    await runs(runtime, devices["plain"], 2)
    await settled(runtime, clock)
    assert devices["development"].updater.applied == 0
    assert devices["development"].hello.product_firmware_version == 1
    assert [d.updater.applied for d in devices.values()] == [1, 1, 0, 1]

    # Unlocked, the locked device follows its group's release on its next connect.
    unlocked = await client.put(
        f"{PRODUCT}/devices/{locked.device_id}", json={"desired_firmware_version": None}, headers=owner.auth
    )
    assert unlocked.status_code == 200, unlocked.text
    again = devices["locked"].statistics().connects + 1
    await runtime.gateway.control.disconnect(locked.device_id)  # it reconnects, as after a reset
    await wait_until(lambda: _true(devices["locked"].statistics().connects >= again))
    await handled(runtime, locked.device_id)
    clock.advance(runtime.settings.release_delay)
    await runs(runtime, devices["locked"], 3)


async def test_the_list_shows_each_release_at_once(
    client: httpx.AsyncClient, owner: Account, runtime: Runtime, product_id: int, fleet: Callable[..., Any]
) -> None:
    # The list keeps each product's releases a while (decision 0030): a release must show in the very next
    # list, and in the next read of one device, however recently they were read.
    for version in (2, 3):
        assert (await upload(client, owner, version, product_binary(product_id, version))).status_code == 201
        await proven(client, owner, runtime, fleet, product_id, version)  # a first release needs one
    grouped, plain = [await registered(runtime) for _ in range(2)]
    ids = [grouped.device_id, plain.device_id]
    assert (await client.post(f"{PRODUCT}/devices", json={"ids": ids}, headers=owner.auth)).status_code == 200
    changed = await client.put(
        f"{PRODUCT}/devices/{grouped.device_id}", json={"groups": ["beta"]}, headers=owner.auth
    )
    assert changed.status_code == 200, changed.text

    async def targets() -> dict[str, int | None]:
        listed = await client.get(f"{PRODUCT}/devices", headers=owner.auth)
        assert listed.status_code == 200, listed.text
        one = await client.get(f"{PRODUCT}/devices/{grouped.device_id}", headers=owner.auth)
        assert one.status_code == 200, one.text
        found = {
            d["id"]: d["targeted_firmware_release_version"]
            for d in listed.json()["devices"]
            if d["id"] in ids
        }
        assert one.json()["targeted_firmware_release_version"] == found[grouped.device_id]
        return found

    assert await targets() == {grouped.device_id: None, plain.device_id: None}
    assert (await release(client, owner, version=2, product_default=True)).status_code == 200
    assert await targets() == {grouped.device_id: 2, plain.device_id: 2}
    assert (await release(client, owner, version=3, groups=["beta"])).status_code == 200
    assert await targets() == {grouped.device_id: 3, plain.device_id: 2}


async def test_lock_with_flash_updates_an_online_device_now(
    client: httpx.AsyncClient,
    owner: Account,
    runtime: Runtime,
    clock: FakeClock,
    product_id: int,
    fleet: Callable[..., Any],
) -> None:
    assert (await upload(client, owner, 5, product_binary(product_id, 5))).status_code == 201
    device = await fleet(await registered(runtime), product_id, version=1)
    await settled(runtime, clock)  # nothing released: nothing done
    assert device.updater.applied == 0
    url = f"{PRODUCT}/devices/{device.device_id}"
    missing = await client.put(url, json={"desired_firmware_version": 6, "flash": True}, headers=owner.auth)
    assert missing.status_code == 400, missing.text
    locked = await client.put(url, json={"desired_firmware_version": 5, "flash": True}, headers=owner.auth)
    assert locked.status_code == 200, locked.text
    assert locked.json()["desired_firmware_version"] == 5
    await runs(runtime, device, 5)


async def test_an_intelligent_release_asks_the_device_first(
    client: httpx.AsyncClient,
    owner: Account,
    runtime: Runtime,
    clock: FakeClock,
    product_id: int,
    fleet: Callable[..., Any],
) -> None:
    assert (await upload(client, owner, 2, product_binary(product_id, 2))).status_code == 201
    await proven(client, owner, runtime, fleet, product_id, 2)
    device = await fleet(await registered(runtime), product_id, version=1)
    await settled(runtime, clock)
    asked: list[str | None] = []
    accept = asyncio.Event()

    async def pending(name: str, data: str | None) -> None:
        asked.append(data)
        await accept.wait()  # the application decides: System.enableUpdates()
        await device.publish("particle/device/updates/enabled", "true")

    await device.subscribe("particle/device/updates/pending", pending)
    released = await release(client, owner, version=2, product_default=True, intelligent=True)
    assert released.status_code == 200, released.text
    assert released.json()["intelligent"] is True
    await wait_until(lambda: _true(asked == ["true"]))
    await runtime.rollout.idle()
    assert device.updater.applied == 0  # not before the device accepts
    accept.set()
    await runs(runtime, device, 2)
    assert runtime.rollout.asked == 1


async def _true(value: bool) -> bool:
    return value


async def test_a_device_with_updates_disabled_is_asked_and_flashed_once_it_enables_them(
    client: httpx.AsyncClient,
    owner: Account,
    runtime: Runtime,
    clock: FakeClock,
    product_id: int,
    fleet: Callable[..., Any],
) -> None:
    assert (await upload(client, owner, 2, product_binary(product_id, 2))).status_code == 201
    await proven(client, owner, runtime, fleet, product_id, 2)
    assert (await release(client, owner, version=2, product_default=True)).status_code == 200
    asked: list[str | None] = []

    async def pending(name: str, data: str | None) -> None:
        asked.append(data)

    device = await fleet(await registered(runtime), product_id, version=1, advance=False)
    await device.subscribe("particle/device/updates/pending", pending)
    # System.disableUpdates(): Device OS reports it after connecting, before the cloud decides.
    await device.publish("particle/device/updates/enabled", "false")
    await handled(runtime, device.device_id)
    await settled(runtime, clock)
    await wait_until(lambda: _true(asked == ["true"]))
    assert device.updater.applied == 0
    await device.publish("particle/device/updates/enabled", "true")  # System.enableUpdates()
    await runs(runtime, device, 2)
