"""
Product devices over HTTP (issue 11 section 3; catalogue §4 product rows, §7, §11 5-8, §15 6-7): import in
its three encodings, the list's filters, order and pages, the product-only fields, group edits, removal —
on SQLite and PostgreSQL. The device twins and quarantine, which need devices online, are in
`test_product_quarantine.py`; who may call what is in the access matrix.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import pytest
from sqlalchemy import event
from tests.support.api import Account, make_account
from tests.support.clock import FakeClock

from devicecloud.domain.product_devices import DeviceListQuery
from devicecloud.runtime import Runtime
from devicecloud.services.product_devices import LIST_CACHE_TTL, OrderedLists
from devicecloud.store.sql.product_devices import SqlProductDevices
from devicecloud.virtualdevice.identity import generate_identity

DEVICES = "/v1/products/brew-bot/devices"


def did(n: int) -> str:
    return f"{n:024x}"


async def listed(client: httpx.AsyncClient, owner: Account, **params: Any) -> dict[str, Any]:
    response = await client.get(DEVICES, params=params, headers=owner.auth)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def ids(client: httpx.AsyncClient, owner: Account, **params: Any) -> list[str]:
    return [d["id"] for d in (await listed(client, owner, **params))["devices"]]


async def test_import_by_form_json_and_file(client: httpx.AsyncClient, owner: Account) -> None:
    one = await client.post(DEVICES, data={"id": did(1).upper()}, headers=owner.auth)
    assert one.status_code == 200, one.text
    assert one.json() == {
        "updated": 1,
        "updatedDeviceIds": [did(1)],
        "existingDeviceIds": [],
        "nonmemberDeviceIds": [],
        "invalidDeviceIds": [],
    }
    form = await client.post(DEVICES, data={"ids[]": [did(2), did(3), "nope"]}, headers=owner.auth)
    assert form.json()["updatedDeviceIds"] == [did(2), did(3)]
    assert form.json()["invalidDeviceIds"] == ["nope"]
    as_json = await client.post(DEVICES, json={"ids": [did(3), did(4)]}, headers=owner.auth)
    assert (as_json.json()["updatedDeviceIds"], as_json.json()["existingDeviceIds"]) == ([did(4)], [did(3)])
    text = f"{did(5)}\r\n\n  {did(6)}\n{did(1)}\nnot-an-id\n".encode()
    upload = await client.post(
        DEVICES, files={"file": ("devices.txt", text, "text/plain")}, headers=owner.auth
    )
    assert upload.status_code == 200, upload.text
    assert upload.json()["updated"] == 2
    assert upload.json()["existingDeviceIds"] == [did(1)]
    assert upload.json()["invalidDeviceIds"] == ["not-an-id"]
    assert sorted(await ids(client, owner)) == [did(n) for n in range(1, 7)]


async def test_import_refusals_change_nothing(client: httpx.AsyncClient, owner: Account) -> None:
    empty = await client.post(DEVICES, json={}, headers=owner.auth)
    assert empty.status_code == 400
    assert empty.json()["ok"] is False
    too_many = await client.post(DEVICES, json={"ids": [did(n) for n in range(10_001)]}, headers=owner.auth)
    assert too_many.status_code == 400, too_many.text
    binary = await client.post(
        DEVICES, files={"file": ("d.txt", b"\xff\xfe\x00garbage", "text/plain")}, headers=owner.auth
    )
    assert binary.status_code == 400, binary.text
    sims = await client.post(DEVICES, json={"id": did(1), "import_sims": True}, headers=owner.auth)
    assert (sims.status_code, sims.json()["error"]) == (400, "unsupported")
    assert await ids(client, owner) == []


async def test_import_skips_other_products_and_outsiders_devices(
    client: httpx.AsyncClient, owner: Account, runtime: Runtime
) -> None:
    other = await make_account(client, "other@example.com")
    await client.post("/v1/products", json={"name": "Other", "platform_id": 6}, headers=other.auth)
    taken = await client.post("/v1/products/other/devices", json={"id": did(7)}, headers=other.auth)
    assert taken.json()["updated"] == 1
    await runtime.device_keys.add(did(8), _pem())
    claimed = await client.post("/v1/devices", json={"id": did(8)}, headers=other.auth)
    assert claimed.status_code == 200, claimed.text
    body = (await client.post(DEVICES, json={"ids": [did(7), did(8)]}, headers=owner.auth)).json()
    assert (body["updated"], body["invalidDeviceIds"], body["nonmemberDeviceIds"]) == (0, [did(7)], [did(8)])
    assert await ids(client, owner) == []
    # Once the owner of the device is in the team, it can be imported.
    await client.post("/v1/products/brew-bot/team", json={"username": other.email}, headers=owner.auth)
    body = (await client.post(DEVICES, json={"ids": [did(8)]}, headers=owner.auth)).json()
    assert body["updatedDeviceIds"] == [did(8)]


def _pem() -> str:
    return generate_identity().public_key_pem()


async def test_ten_thousand_ids_in_one_request_within_two_seconds(
    client: httpx.AsyncClient, owner: Account
) -> None:
    wanted = [did(10**6 + n) for n in range(10_000)]
    started = time.perf_counter()
    response = await client.post(DEVICES, json={"ids": wanted}, headers=owner.auth)
    elapsed = time.perf_counter() - started
    assert response.status_code == 200, response.text
    assert response.json()["updated"] == 10_000
    print(f"importing 10,000 ids took {elapsed:.3f} s")
    assert elapsed < 2.0, f"importing 10,000 ids took {elapsed:.2f} s"
    assert (await listed(client, owner, perPage=1))["meta"]["total"] == 10_000


async def test_list_filters_order_and_pages(client: httpx.AsyncClient, owner: Account) -> None:
    await client.post(
        DEVICES, json={"ids": [did(n) for n in (0xA1, 0xA2, 0xB3, 0xB4, 0xC5)]}, headers=owner.auth
    )
    await client.put(f"{DEVICES}/{did(0xA1)}", json={"groups": ["europe"]}, headers=owner.auth)
    await client.put(f"{DEVICES}/{did(0xB3)}", json={"groups": ["europe", "asia"]}, headers=owner.auth)
    assert await ids(client, owner, sortAttr="deviceId", sortDir="asc", deviceId="A") == [
        did(0xA1),
        did(0xA2),
    ]
    assert await ids(client, owner, sortAttr="deviceId", sortDir="desc", groups="europe,asia") == [
        did(0xB3),
        did(0xA1),
    ]
    assert await ids(client, owner, groups="asia") == [did(0xB3)]
    assert await ids(client, owner, quarantined="true") == []
    assert len(await ids(client, owner, quarantined="false")) == 5
    page = await listed(client, owner, sortAttr="deviceId", perPage=2, page=3)
    assert [d["id"] for d in page["devices"]] == [did(0xC5)]
    assert page["meta"]["total_pages"] == 3
    assert page["customers"] == []
    snake = await listed(client, owner, sortAttr="deviceId", per_page=4)
    assert (len(snake["devices"]), snake["meta"]["total_pages"]) == (4, 2)
    first = (await listed(client, owner, deviceId=did(0xB3)))["devices"][0]
    assert first["groups"] == ["asia", "europe"]
    assert (first["quarantined"], first["denied"], first["development"], first["online"]) == (
        False,
        False,
        False,
        False,
    )
    for bad in (
        {"sortAttr": "name"},
        {"sortDir": "up"},
        {"perPage": "0"},
        {"page": "x"},
        {"quarantined": "maybe"},
    ):
        response = await client.get(DEVICES, params=bad, headers=owner.auth)
        assert response.status_code == 400, (bad, response.text)


async def test_a_long_lists_pages_share_one_read_until_it_changes(
    client: httpx.AsyncClient,
    owner: Account,
    runtime: Runtime,
    clock: FakeClock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """
    A list of at least LIST_CACHE_MIN devices is read once and paged from memory (decision 0020 §8); this
    server's own changes show at once, others (here a group renamed) within LIST_CACHE_TTL.
    """
    monkeypatch.setattr(runtime.product_devices, "lists", OrderedLists(clock, min_devices=3))
    await client.post(DEVICES, json={"ids": [did(0x100 + n) for n in range(5)]}, headers=owner.auth)
    grouped = {
        "action": "groups",
        "devices": [did(0x100), did(0x101), did(0x102)],
        "metadata": {"add": ["a"]},
    }
    assert (await client.put(DEVICES, json=grouped, headers=owner.auth)).status_code == 200
    reads = 0
    ordered = SqlProductDevices.ordered

    async def counted(self: SqlProductDevices, product_id: int, query: Any) -> str:
        nonlocal reads
        reads += 1
        return await ordered(self, product_id, query)

    monkeypatch.setattr(SqlProductDevices, "ordered", counted)
    pages = [await ids(client, owner, sortAttr="deviceId", perPage=2, page=n) for n in (1, 2, 3, 4)]
    assert pages == [[did(0x100), did(0x101)], [did(0x102), did(0x103)], [did(0x104)], []]
    assert reads == 1
    assert (await listed(client, owner, sortAttr="deviceId", sortDir="desc", perPage=1))["meta"]["total"] == 5
    assert reads == 2  # another order is another list
    await client.post(DEVICES, json={"id": did(0x105)}, headers=owner.auth)
    assert (await listed(client, owner, sortAttr="deviceId", perPage=2))["meta"]["total_pages"] == 3
    assert await ids(client, owner, groups="a", sortAttr="deviceId") == [did(0x100), did(0x101), did(0x102)]
    renamed = await client.put("/v1/products/brew-bot/groups/a", json={"name": "b"}, headers=owner.auth)
    assert renamed.status_code == 200, renamed.text
    # Kept: the list is a moment old.
    assert len(await ids(client, owner, groups="a", sortAttr="deviceId")) == 3
    clock.advance(LIST_CACHE_TTL)
    assert reads == 4
    # Still served once due, and read again behind the request.
    assert len(await ids(client, owner, groups="a", sortAttr="deviceId")) == 3
    await asyncio.gather(*(t for t in asyncio.all_tasks() if t.get_name() == "product-device-list"))
    assert reads == 5
    assert await ids(client, owner, groups="a", sortAttr="deviceId") == []  # short now: read each time
    assert len(await ids(client, owner, groups="b", sortAttr="deviceId")) == 3
    assert reads == 7
    clock.advance(2 * LIST_CACHE_TTL)  # unused that long: read by the request itself
    assert len(await ids(client, owner, groups="b", sortAttr="deviceId")) == 3
    assert reads == 8
    cold = [{"sortAttr": "firmwareVersion", "page": n} for n in (1, 2, 3)]  # one read for requests at once
    pages = await asyncio.gather(*(listed(client, owner, perPage=2, **params) for params in cold))
    assert [len(p["devices"]) for p in pages] == [2, 2, 2]
    assert reads == 9
    short = OrderedLists(clock, min_devices=10)
    short.put(1, DeviceListQuery(), did(1) * 9, short.generation(1))
    assert short.get(1, DeviceListQuery()) == (None, False)  # shorter lists are read afresh for every page
    stale = short.generation(1)
    short.forget(1)
    short.put(1, DeviceListQuery(), did(1) * 10, stale)
    assert short.get(1, DeviceListQuery()) == (None, False)  # read before a change: not kept


async def test_requests_waiting_for_another_ones_read_of_a_list_hold_no_connection(
    client: httpx.AsyncClient,
    owner: Account,
    runtime: Runtime,
    clock: FakeClock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """
    While one request reads a long list, the others for the same list wait for that read outside any
    transaction: a burst for a list not kept yet never empties the connection pool (decision 0020 §8).
    """
    lists = OrderedLists(clock, min_devices=3)
    monkeypatch.setattr(runtime.product_devices, "lists", lists)
    await client.post(DEVICES, json={"ids": [did(0x200 + n) for n in range(6)]}, headers=owner.auth)
    release = asyncio.Event()
    reads = looked = 0
    get = lists.get

    def counted(product_id: int, shape: DeviceListQuery) -> tuple[str | None, bool]:
        nonlocal looked
        looked += 1
        return get(product_id, shape)

    monkeypatch.setattr(lists, "get", counted)
    ordered = SqlProductDevices.ordered

    async def gated(self: SqlProductDevices, product_id: int, query: Any) -> str:
        nonlocal reads
        reads += 1
        await release.wait()
        return await ordered(self, product_id, query)

    monkeypatch.setattr(SqlProductDevices, "ordered", gated)
    pool = runtime.store.engine.sync_engine.pool
    held_before = pool.checkedout()  # type: ignore[attr-defined]
    pages = [
        asyncio.create_task(listed(client, owner, sortAttr="deviceId", perPage=2, page=n)) for n in (1, 2, 3)
    ]
    for _ in range(10_000):  # yield to the requests until all three looked and the two followers let go
        await asyncio.sleep(0)
        if looked == 3 and pool.checkedout() == held_before + 1:  # type: ignore[attr-defined]
            break
    assert (looked, reads, pool.checkedout() - held_before) == (3, 1, 1)  # type: ignore[attr-defined]
    release.set()
    bodies = await asyncio.gather(*pages)
    assert [[d["id"] for d in b["devices"]] for b in bodies] == [
        [did(0x200), did(0x201)],
        [did(0x202), did(0x203)],
        [did(0x204), did(0x205)],
    ]
    assert reads == 1


async def test_update_lock_development_notes_and_groups(client: httpx.AsyncClient, owner: Account) -> None:
    await client.post(DEVICES, json={"id": did(9)}, headers=owner.auth)
    url = f"{DEVICES}/{did(9)}"
    locked = await client.put(url, json={"desired_firmware_version": 3}, headers=owner.auth)
    assert locked.status_code == 200, locked.text
    assert locked.json()["desired_firmware_version"] == 3
    assert locked.json()["id"] == did(9)
    assert locked.json()["updated_at"].endswith("Z")
    marked = await client.put(url, data={"development": "true", "notes": "bench unit"}, headers=owner.auth)
    assert (marked.json()["development"], marked.json()["notes"]) == (True, "bench unit")
    grouped = await client.put(url, data={"groups[]": ["asia", "europe"]}, headers=owner.auth)
    assert grouped.json()["groups"] == ["asia", "europe"]
    regrouped = await client.put(url, json={"groups": ["europe"]}, headers=owner.auth)
    assert regrouped.json()["groups"] == ["europe"]
    unlocked = await client.put(url, json={"desired_firmware_version": None}, headers=owner.auth)
    assert unlocked.json()["desired_firmware_version"] is None
    device = (await client.get(url, headers=owner.auth)).json()
    assert (device["desired_firmware_version"], device["development"], device["notes"], device["groups"]) == (
        None,
        True,
        "bench unit",
        ["europe"],
    )
    groups = (await client.get("/v1/products/brew-bot/groups", headers=owner.auth)).json()["groups"]
    assert {g["name"]: g["device_count"] for g in groups} == {"asia": 0, "europe": 1}


@pytest.mark.parametrize(
    "body",
    [
        {"desired_firmware_version": 2, "flash": True},
        {"development": "sometimes", "notes": "x"},
        {"groups": ["Not A Name"], "notes": "x"},
        {"desired_firmware_version": -1, "notes": "x"},
        {"name": "bad name!", "notes": "x"},
        {},
    ],
)
async def test_bad_updates_change_nothing(
    client: httpx.AsyncClient, owner: Account, body: dict[str, Any]
) -> None:
    await client.post(DEVICES, json={"id": did(10)}, headers=owner.auth)
    url = f"{DEVICES}/{did(10)}"
    before = (await client.get(url, headers=owner.auth)).json()
    response = await client.put(url, json=body, headers=owner.auth)
    assert response.status_code == 400, response.text
    assert response.json()["ok"] is False
    assert (await client.get(url, headers=owner.auth)).json() == before


async def test_batch_group_edits(client: httpx.AsyncClient, owner: Account) -> None:
    await client.post(DEVICES, json={"ids": [did(11), did(12)]}, headers=owner.auth)
    body = {"action": "groups", "devices": [did(11), did(12)], "metadata": {"add": ["north", "south"]}}
    added = await client.put(DEVICES, json=body, headers=owner.auth)
    assert added.json() == {"ok": True}
    body = {"action": "groups", "devices": [did(12)], "metadata": {"remove": ["north"]}}
    await client.put(DEVICES, json=body, headers=owner.auth)
    assert await ids(client, owner, groups="north") == [did(11)]
    assert len(await ids(client, owner, groups="south")) == 2
    stranger = {"action": "groups", "devices": [did(11), did(99)], "metadata": {"add": ["east"]}}
    refused = await client.put(DEVICES, json=stranger, headers=owner.auth)
    assert refused.status_code == 404, refused.text
    assert await ids(client, owner, groups="east") == []
    wrong = await client.put(DEVICES, json={**body, "action": "flash"}, headers=owner.auth)
    assert wrong.status_code == 400


async def test_remove_and_devices_of_other_products(client: httpx.AsyncClient, owner: Account) -> None:
    await client.post(DEVICES, json={"ids": [did(13)]}, headers=owner.auth)
    other = await make_account(client, "other@example.com")
    await client.post("/v1/products", json={"name": "Other", "platform_id": 6}, headers=other.auth)
    await client.post("/v1/products/other/devices", json={"id": did(14)}, headers=other.auth)
    for method in ("GET", "PUT", "DELETE"):
        foreign = await client.request(
            method, f"{DEVICES}/{did(14)}", json={"notes": "x"}, headers=owner.auth
        )
        assert foreign.status_code == 404, (method, foreign.text)
    assert (await client.get(f"{DEVICES}/not-a-device", headers=owner.auth)).status_code == 404
    removed = await client.delete(f"{DEVICES}/{did(13)}", headers=owner.auth)
    assert removed.status_code == 204
    assert (await client.get(f"{DEVICES}/{did(13)}", headers=owner.auth)).status_code == 404
    assert await ids(client, owner) == []
    again = await client.post(DEVICES, json={"id": did(13)}, headers=owner.auth)
    assert again.json()["updatedDeviceIds"] == [did(13)]


async def test_team_reaches_product_devices_through_the_device_routes(
    client: httpx.AsyncClient, owner: Account
) -> None:
    """A product device answers to its product's team on /v1/devices/:id too, by role; others get 403."""
    await client.post(DEVICES, json={"id": did(15)}, headers=owner.auth)
    team: dict[str, Account] = {}
    for role in ("Support", "View-only"):
        team[role] = await make_account(client, f"{role.lower()}@example.com")
        invited = await client.post(
            "/v1/products/brew-bot/team",
            json={"username": team[role].email, "role": role},
            headers=owner.auth,
        )
        assert invited.status_code == 200, invited.text
    stranger = await make_account(client, "stranger@example.com")
    url = f"/v1/devices/{did(15)}"
    for account, status in ((owner, 200), (team["View-only"], 200), (stranger, 403)):
        assert (await client.get(url, headers=account.auth)).status_code == status
    noted = await client.put(url, json={"notes": "by support"}, headers=team["Support"].auth)
    assert noted.status_code == 200, noted.text
    refused = await client.put(url, json={"notes": "by view-only"}, headers=team["View-only"].auth)
    assert refused.status_code == 403
    assert (await client.put(url, json={"notes": "mine"}, headers=stranger.auth)).status_code == 403
    assert (await client.get(f"{DEVICES}/{did(15)}", headers=owner.auth)).json()["notes"] == "by support"
    assert (await client.get("/v1/devices", headers=team["Support"].auth)).json() == []  # not theirs to list


class _Reads:
    """The SQL statements the runtime sends, the point reads outside SQLAlchemy and the units of work."""

    def __init__(self, runtime: Runtime, monkeypatch: pytest.MonkeyPatch) -> None:
        self.seen: list[str] = []
        self._engine = runtime.store.engine.sync_engine
        event.listen(self._engine, "before_cursor_execute", self._statement)
        for name in ("lookup_token", "lookup_device", "lookup_device_for", "transaction"):
            monkeypatch.setattr(runtime.store, name, self._counting(name, getattr(runtime.store, name)))

    def _statement(self, _conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        self.seen.append(statement.split()[0].upper())

    def _counting(self, name: str, read: Any) -> Any:
        def counted(*args: Any, **kwargs: Any) -> Any:
            self.seen.append(name)
            return read(*args, **kwargs)

        return counted

    def close(self) -> None:
        event.remove(self._engine, "before_cursor_execute", self._statement)


async def test_a_team_members_device_read_costs_what_an_owners_does(
    client: httpx.AsyncClient, owner: Account, runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    """
    GET /v1/devices/:id of a product device by a team member is the owner's one read (the device with the
    member's role in its product), no unit of work; an id names that device before the caller's own
    device names do.
    """
    developer = await make_account(client, "developer@example.com")
    invited = await client.post(
        "/v1/products/brew-bot/team",
        json={"username": developer.email, "role": "Developer"},
        headers=owner.auth,
    )
    assert invited.status_code == 200, invited.text
    await client.post(DEVICES, json={"id": did(20)}, headers=owner.auth)
    await runtime.device_keys.add(did(21), _pem())
    claimed = await client.post("/v1/devices", json={"id": did(21)}, headers=developer.auth)
    assert claimed.status_code == 200, claimed.text
    for url in (f"/v1/devices/{did(20)}", f"/v1/devices/{did(21)}"):  # warm: the token is read once
        assert (await client.get(url, headers=developer.auth)).status_code == 200
    reads = _Reads(runtime, monkeypatch)
    try:
        seen: dict[str, list[str]] = {}
        for device_id in (did(21), did(20)):
            reads.seen.clear()
            response = await client.get(f"/v1/devices/{device_id}", headers=developer.auth)
            assert response.json()["id"] == device_id, response.text
            seen[device_id] = list(reads.seen)
    finally:
        reads.close()
    assert "lookup_device_for" in seen[did(21)]
    assert "transaction" not in seen[did(21)]
    assert seen[did(20)] == seen[did(21)]
    # Her own device named after the product device's id: the id still names the product device.
    renamed = await client.put(f"/v1/devices/{did(21)}", json={"name": did(20)}, headers=developer.auth)
    assert renamed.status_code == 200, renamed.text
    assert (await client.get(f"/v1/devices/{did(20)}", headers=developer.auth)).json()["id"] == did(20)
    stranger = await make_account(client, "stranger@example.com")
    assert (await client.get(f"/v1/devices/{did(20)}", headers=stranger.auth)).status_code == 403


async def test_only_the_team_claims_a_product_device_by_id(
    client: httpx.AsyncClient, owner: Account, runtime: Runtime
) -> None:
    """An imported id has a record nobody owns; a stranger cannot take it with POST /v1/devices."""
    await client.post(DEVICES, json={"ids": [did(16), did(17)]}, headers=owner.auth)
    await runtime.device_keys.add(did(17), _pem())
    stranger = await make_account(client, "stranger@example.com")
    for device_id in (did(16), did(17)):
        taken = await client.post("/v1/devices", json={"id": device_id}, headers=stranger.auth)
        assert taken.status_code == 403, taken.text
        assert (await client.get(f"{DEVICES}/{device_id}", headers=owner.auth)).json()["owner"] is None
    mine = await client.post("/v1/devices", json={"id": did(17)}, headers=owner.auth)
    assert mine.status_code == 200, mine.text
    assert (await client.get(f"{DEVICES}/{did(17)}", headers=owner.auth)).json()["owner"] == owner.email
    assert (await client.get("/v1/devices", headers=owner.auth)).json()[0]["id"] == did(17)
    released = await client.delete(f"{DEVICES}/{did(17)}/owner", headers=owner.auth)
    assert released.json() == {"ok": True}
    assert (await client.get(f"{DEVICES}/{did(17)}", headers=owner.auth)).json()["owner"] is None
    assert (await client.get("/v1/devices", headers=owner.auth)).json() == []
