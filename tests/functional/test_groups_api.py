"""
Device groups over HTTP (catalogue §15 rows 1-5 and 8): name rules, colour, device counts and the firmware
impact preview.

Product devices arrive over HTTP with issue 11 section 3; until then these tests put devices into the
product through the store's own repository, the door that section will use.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from tests.support.api import Account
from tests.support.clock import FakeClock

from devicecloud.runtime import Runtime

GROUPS = "/v1/products/brew-bot/groups"


async def add_group(client: httpx.AsyncClient, owner: Account, **body: Any) -> httpx.Response:
    return await client.post(GROUPS, json=body, headers=owner.auth)


async def put_devices(
    runtime: Runtime, clock: FakeClock, fleet: dict[str, tuple[int | None, list[str]]]
) -> None:
    """
    Devices of the product ``brew-bot``: id → (firmware version, group names).
    """
    async with runtime.store.transaction() as tx:
        product = await tx.products.get_by_slug("brew-bot")
        assert product is not None
        for device_id, (version, names) in fleet.items():
            await tx.devices.add(device_id, now=clock.now())
            await tx.products.add_device(product.id, device_id, firmware_version=version, now=clock.now())
            groups = [await tx.groups.get(product.id, name) for name in names]
            await tx.products.set_device_groups(device_id, [g.id for g in groups if g is not None])


async def test_create_list_get_edit_delete(client: httpx.AsyncClient, owner: Account) -> None:
    created = await add_group(client, owner, name="europe", color="#E74C3C", description="EU fleet")
    assert created.status_code == 201, created.text
    assert created.json() == {"group": {"name": "europe", "description": "EU fleet", "color": "#e74c3c"}}
    await add_group(client, owner, name="asia")
    listed = (await client.get(GROUPS, headers=owner.auth)).json()["groups"]
    assert [g["name"] for g in listed] == ["asia", "europe"]
    assert listed[0]["color"].startswith("#")
    assert listed[1] == {
        "name": "europe",
        "description": "EU fleet",
        "color": "#e74c3c",
        "fw_version": None,
        "device_count": 0,
    }
    assert [
        g["name"] for g in (await client.get(f"{GROUPS}?name=eur", headers=owner.auth)).json()["groups"]
    ] == ["europe"]
    renamed = await client.put(
        f"{GROUPS}/europe", json={"name": "eu", "color": "#000000"}, headers=owner.auth
    )
    assert renamed.json()["group"]["name"] == "eu"
    assert renamed.json()["group"]["color"] == "#000000"
    assert (await client.get(f"{GROUPS}/europe", headers=owner.auth)).status_code == 404
    assert (await client.get(f"{GROUPS}/eu", headers=owner.auth)).json()["group"]["description"] == "EU fleet"
    assert (await client.delete(f"{GROUPS}/eu", headers=owner.auth)).status_code == 204
    assert (await client.delete(f"{GROUPS}/eu", headers=owner.auth)).status_code == 404
    assert (await client.get("/v1/products/brew-bot", headers=owner.auth)).json()["product"]["groups"] == [
        "asia"
    ]


@pytest.mark.parametrize(
    "body",
    [
        {"name": "Europe"},
        {"name": "eu rope"},
        {"name": ""},
        {"name": "x" * 65},
        {"name": "ok", "color": "red"},
        {"name": "ok", "color": "#12345"},
        {"color": "#123456"},
        {"name": "ok", "description": "d" * 1025},
    ],
)
async def test_bad_groups_are_refused(
    client: httpx.AsyncClient, owner: Account, body: dict[str, Any]
) -> None:
    response = await add_group(client, owner, **body)
    assert response.status_code == 400
    assert response.json()["ok"] is False
    assert (await client.get(GROUPS, headers=owner.auth)).json() == {"groups": []}


async def test_names_are_unique_per_product(client: httpx.AsyncClient, owner: Account) -> None:
    assert (await add_group(client, owner, name="eu")).status_code == 201
    assert (await add_group(client, owner, name="eu")).status_code == 400
    await add_group(client, owner, name="us")
    clash = await client.put(f"{GROUPS}/us", json={"name": "eu"}, headers=owner.auth)
    assert clash.status_code == 400
    assert [g["name"] for g in (await client.get(GROUPS, headers=owner.auth)).json()["groups"]] == [
        "eu",
        "us",
    ]
    nothing = await client.put(f"{GROUPS}/us", json={}, headers=owner.auth)
    assert nothing.status_code == 400


async def test_device_counts_and_deleting_a_group_takes_it_off_its_devices(
    client: httpx.AsyncClient, owner: Account, runtime: Runtime, clock: FakeClock
) -> None:
    for name in ("eu", "us", "beta"):
        await add_group(client, owner, name=name)
    await put_devices(
        runtime,
        clock,
        {"a" * 24: (1, ["eu", "beta"]), "b" * 24: (2, ["eu"]), "c" * 24: (2, ["us"]), "d" * 24: (None, [])},
    )
    counts = {
        g["name"]: g["device_count"] for g in (await client.get(GROUPS, headers=owner.auth)).json()["groups"]
    }
    assert counts == {"beta": 1, "eu": 2, "us": 1}
    assert (await client.get(f"{GROUPS}/eu", headers=owner.auth)).json()["group"]["device_count"] == 2
    await client.delete(f"{GROUPS}/eu", headers=owner.auth)
    # Its memberships went with it: a new group of the same name (SQLite may even reuse its id) is empty.
    assert (await add_group(client, owner, name="eu")).status_code == 201
    counts = {
        g["name"]: g["device_count"] for g in (await client.get(GROUPS, headers=owner.auth)).json()["groups"]
    }
    assert counts == {"beta": 1, "eu": 0, "us": 1}


async def test_impact_preview_counts_devices_that_would_update(
    client: httpx.AsyncClient, owner: Account, runtime: Runtime, clock: FakeClock
) -> None:
    for name in ("eu", "us"):
        await add_group(client, owner, name=name)
    await put_devices(
        runtime,
        clock,
        {
            "a" * 24: (1, ["eu"]),
            "b" * 24: (2, ["eu"]),
            "c" * 24: (3, ["eu", "us"]),
            "e" * 24: (1, ["us"]),
            "f" * 24: (None, []),
        },
    )

    async def impact(**query: str) -> httpx.Response:
        return await client.get(
            "/v1/products/brew-bot/impact",
            params={"action": "edit_groups_for_firmware", **query},
            headers=owner.auth,
        )

    eu = await impact(firmware_version="3", groups="eu")
    assert eu.status_code == 200, eu.text
    assert eu.json() == {
        "devices": {
            "firmware_update": {
                "total": 2,
                "by_version": [{"version": 1, "total": 1}, {"version": 2, "total": 1}],
            }
        }
    }
    both = (await impact(firmware_version="3", groups="eu,us")).json()["devices"]["firmware_update"]
    assert both == {"total": 3, "by_version": [{"version": 1, "total": 2}, {"version": 2, "total": 1}]}
    everyone = (await impact(firmware_version="2", product_default="true")).json()["devices"][
        "firmware_update"
    ]
    assert everyone["total"] == 4  # a, c, e and f (which has not reported a version)
    none = (await impact(firmware_version="2")).json()["devices"]["firmware_update"]
    assert none == {"total": 0, "by_version": []}
    assert (await impact(firmware_version="2", groups="mars")).status_code == 404
    for bad in (
        {"firmware_version": "0"},
        {"firmware_version": "x"},
        {"firmware_version": "1", "product_default": "maybe"},
    ):
        assert (await impact(**bad)).status_code == 400
    wrong_action = await client.get(
        "/v1/products/brew-bot/impact",
        params={"action": "other", "firmware_version": "1"},
        headers=owner.auth,
    )
    assert wrong_action.status_code == 400
