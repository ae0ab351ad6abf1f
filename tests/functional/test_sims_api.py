"""
SIM cards over HTTP (catalogue §8, decision 0022): a user's and a product's registry, the carrier actions
recorded by the default carrier, data usage from an operator's import, and what refusals leave unchanged.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner
from tests.support.api import Account, make_account
from tests.support.clock import FakeClock
from tests.support.devices import connect_device, wait_until

from devicecloud.cli import main
from devicecloud.runtime import Runtime
from devicecloud.settings import Settings

ICCID = "8934076500002589174"
OTHER = "8934076500002589175"
THIRD = "89340765000025891760"


async def _owner(client: httpx.AsyncClient) -> Account:
    return await make_account(client, "sim-owner@example.com")


async def _product(client: httpx.AsyncClient, owner: Account, name: str = "Fleet") -> str:
    created = await client.post("/v1/products", json={"name": name, "platform_id": 13}, headers=owner.auth)
    assert created.status_code == 201, created.text
    slug: str = created.json()["product"]["slug"]
    return slug


async def test_a_user_activates_lists_deactivates_reactivates_and_releases(client: httpx.AsyncClient) -> None:
    me = await _owner(client)
    activated = await client.put(f"/v1/sims/{ICCID}", data={"action": "activate"}, headers=me.auth)
    assert activated.status_code == 200, activated.text
    sim = activated.json()
    assert sim["iccid"] == sim["_id"] == ICCID
    assert sim["status"] == "active"
    assert sim["carrier"] == "none"  # no carrier configured: the change is recorded only
    assert sim["activations_count"] == 1
    assert sim["owner"] == "sim-owner@example.com"
    assert sim["last_status_change_action"] == "activate"
    assert sim["last_status_change_action_error"] == "no"

    listed = await client.get("/v1/sims", headers=me.auth)
    assert [s["iccid"] for s in listed.json()["sims"]] == [ICCID]
    assert (await client.head(f"/v1/sims/{ICCID}", headers=me.auth)).status_code == 204

    again = await client.put(f"/v1/sims/{ICCID}", json={"action": "activate"}, headers=me.auth)
    assert again.status_code == 400
    assert again.json()["ok"] is False

    off = await client.put(f"/v1/sims/{ICCID}", json={"action": "deactivate"}, headers=me.auth)
    assert off.json()["status"] == "inactive"
    assert off.json()["deactivations_count"] == 1
    on = await client.put(f"/v1/sims/{ICCID}", json={"action": "reactivate"}, headers=me.auth)
    assert on.json()["status"] == "active"
    assert on.json()["activations_count"] == 2
    got = await client.get(f"/v1/sims/{ICCID}", headers=me.auth)
    assert got.json() == on.json()

    released = await client.delete(f"/v1/sims/{ICCID}", headers=me.auth)
    assert released.status_code == 204
    assert (await client.head(f"/v1/sims/{ICCID}", headers=me.auth)).status_code == 404
    assert (await client.get(f"/v1/sims/{ICCID}", headers=me.auth)).status_code == 404


async def test_another_owners_sim_is_not_theirs(client: httpx.AsyncClient) -> None:
    me = await _owner(client)
    other = await make_account(client, "neighbour@example.com")
    await client.put(f"/v1/sims/{ICCID}", json={"action": "activate"}, headers=me.auth)

    assert (await client.head(f"/v1/sims/{ICCID}", headers=other.auth)).status_code == 403
    taken = await client.put(f"/v1/sims/{ICCID}", json={"action": "activate"}, headers=other.auth)
    assert taken.status_code == 403
    assert taken.json()["error"] == "Permission Denied"
    for method, extra in (("GET", {}), ("PUT", {"json": {"action": "deactivate"}}), ("DELETE", {})):
        response = await client.request(method, f"/v1/sims/{ICCID}", headers=other.auth, **extra)
        assert response.status_code == 404, (method, response.text)
        assert response.json()["error_description"] == "SIM card not found"
    assert (await client.get(f"/v1/sims/{ICCID}/data_usage", headers=other.auth)).status_code == 404
    assert (await client.get("/v1/sims", headers=other.auth)).json() == {"sims": []}
    assert (await client.get(f"/v1/sims/{ICCID}", headers=me.auth)).json()["status"] == "active"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"action": "explode"}, "action must be activate, deactivate or reactivate"),
        ({}, "action must be activate, deactivate or reactivate"),
        ({"action": "deactivate", "mb_limit": 10}, "mb_limit"),
        ({"action": "deactivate", "async": "maybe"}, "async must be true or false"),
    ],
)
async def test_bad_changes_are_refused_and_change_nothing(
    client: httpx.AsyncClient, body: dict[str, object], message: str
) -> None:
    me = await _owner(client)
    before = (await client.put(f"/v1/sims/{ICCID}", json={"action": "activate"}, headers=me.auth)).json()
    refused = await client.put(f"/v1/sims/{ICCID}", json=body, headers=me.auth)
    assert refused.status_code == 400
    assert message in refused.json()["error_description"]
    assert (await client.get(f"/v1/sims/{ICCID}", headers=me.auth)).json() == before


async def test_iccids_are_checked_at_the_door(client: httpx.AsyncClient) -> None:
    me = await _owner(client)
    for bad in ("123", "89340765000025891x4", "8" * 23):
        response = await client.put(f"/v1/sims/{bad}", json={"action": "activate"}, headers=me.auth)
        assert response.status_code == 400, bad
        assert (await client.head(f"/v1/sims/{bad}", headers=me.auth)).status_code == 404
    bad_list = await client.post("/v1/sims", json={"sims": [ICCID, "nope"]}, headers=me.auth)
    assert bad_list.status_code == 400
    assert "'nope' is not an ICCID" in bad_list.json()["error_description"]
    assert (await client.get("/v1/sims", headers=me.auth)).json() == {"sims": []}  # nothing half-imported


async def test_product_import_by_list_and_by_file_lists_with_filters_and_pages(
    client: httpx.AsyncClient,
) -> None:
    owner = await _owner(client)
    slug = await _product(client, owner)
    stranger = await make_account(client, "stranger@example.com")
    await client.put(f"/v1/sims/{THIRD}", json={"action": "activate"}, headers=stranger.auth)

    by_list = await client.post(
        f"/v1/products/{slug}/sims", json={"sims": [ICCID, THIRD]}, headers=owner.auth
    )
    assert by_list.status_code == 200, by_list.text
    assert by_list.json() == {"ok": True, "imported": [ICCID], "already_imported": [], "unavailable": [THIRD]}
    text = f"{ICCID}\r\n{OTHER}\n\n".encode()
    by_file = await client.post(
        f"/v1/products/{slug}/sims", files={"file": ("sims.txt", text, "text/plain")}, headers=owner.auth
    )
    assert by_file.status_code == 200, by_file.text
    assert by_file.json()["imported"] == [OTHER]
    assert by_file.json()["already_imported"] == [ICCID]

    listed = (await client.get(f"/v1/products/{slug}/sims", headers=owner.auth)).json()
    assert [s["iccid"] for s in listed["sims"]] == [ICCID, OTHER]
    assert all(s["status"] == "active" and s["last_activated_via"] == "import" for s in listed["sims"])
    assert listed["meta"]["total_pages"] == 1
    page = (await client.get(f"/v1/products/{slug}/sims?page=2&per_page=1", headers=owner.auth)).json()
    assert [s["iccid"] for s in page["sims"]] == [OTHER]
    assert page["meta"]["total_pages"] == 2
    filtered = await client.get(f"/v1/products/{slug}/sims", params={"iccid": "589175"}, headers=owner.auth)
    assert [s["iccid"] for s in filtered.json()["sims"]] == [OTHER]
    bad_page = await client.get(f"/v1/products/{slug}/sims?perPage=0", headers=owner.auth)
    assert bad_page.status_code == 400

    # product SIMs are not the user's own, and a product's SIM is activated by importing it
    assert (await client.get("/v1/sims", headers=owner.auth)).json() == {"sims": []}
    activate = await client.put(
        f"/v1/products/{slug}/sims/{ICCID}", json={"action": "activate"}, headers=owner.auth
    )
    assert activate.status_code == 400
    off = await client.put(
        f"/v1/products/{slug}/sims/{ICCID}", json={"action": "deactivate"}, headers=owner.auth
    )
    assert off.json()["status"] == "inactive"
    assert off.json()["product_id"] is not None
    released = await client.delete(f"/v1/products/{slug}/sims/{OTHER}", headers=owner.auth)
    assert released.status_code == 204
    # released: another owner can take it now
    assert (
        await client.put(f"/v1/sims/{OTHER}", json={"action": "activate"}, headers=stranger.auth)
    ).status_code == 200


async def test_a_user_imports_by_form_as_particle_clients_send_arrays(client: httpx.AsyncClient) -> None:
    me = await _owner(client)
    form = await client.post("/v1/sims", data={"sims[]": [ICCID, OTHER]}, headers=me.auth)
    assert form.status_code == 200, form.text
    assert form.json()["imported"] == [ICCID, OTHER]
    listed = (await client.get("/v1/sims", headers=me.auth)).json()["sims"]
    assert [(s["iccid"], s["status"], s["product_id"]) for s in listed] == [
        (ICCID, "active", None),
        (OTHER, "active", None),
    ]


async def test_a_product_sim_is_not_found_through_another_product(client: httpx.AsyncClient) -> None:
    owner = await _owner(client)
    first = await _product(client, owner, "First")
    second = await _product(client, owner, "Second")
    await client.post(f"/v1/products/{first}/sims", json={"sims": [ICCID]}, headers=owner.auth)
    wrong = await client.get(f"/v1/products/{second}/sims/{ICCID}", headers=owner.auth)
    assert wrong.status_code == 404
    assert wrong.json()["error_description"] == "SIM card not found"
    gone = await client.delete(f"/v1/products/{second}/sims/{ICCID}", headers=owner.auth)
    assert gone.status_code == 404
    assert (await client.get(f"/v1/products/{first}/sims/{ICCID}", headers=owner.auth)).status_code == 200


async def test_file_import_limits(client: httpx.AsyncClient) -> None:
    owner = await _owner(client)
    slug = await _product(client, owner)
    huge = (ICCID + "\n").encode() * 4000
    too_big = await client.post(
        f"/v1/products/{slug}/sims", files={"file": ("sims.txt", huge, "text/plain")}, headers=owner.auth
    )
    assert too_big.status_code == 400
    binary = await client.post(
        f"/v1/products/{slug}/sims",
        files={"file": ("sims.txt", b"\xff\xfe", "text/plain")},
        headers=owner.auth,
    )
    assert binary.status_code == 400
    assert (await client.get(f"/v1/products/{slug}/sims", headers=owner.auth)).json()["sims"] == []


def _import_usage(settings: Settings, tmp_path: Path, text: str) -> tuple[int, str]:
    path = tmp_path / "usage.csv"
    path.write_text(text)
    env = {"DEVICECLOUD_DATABASE_URL": settings.database_url, "DEVICECLOUD_DATA_DIR": str(settings.data_dir)}
    result = CliRunner(env=env).invoke(main, ["sims", "import-usage", str(path)])
    return result.exit_code, result.output


async def test_usage_is_what_the_operator_imported(
    client: httpx.AsyncClient, runtime: Runtime, settings: Settings, clock: FakeClock, tmp_path: Path
) -> None:
    owner = await _owner(client)
    slug = await _product(client, owner)
    await client.post(f"/v1/products/{slug}/sims", json={"sims": [ICCID, OTHER]}, headers=owner.auth)
    empty = await client.get(f"/v1/products/{slug}/sims/{ICCID}/data_usage", headers=owner.auth)
    assert empty.json() == {"iccid": ICCID, "usage_by_day": []}  # nothing reported: nothing shown

    csv = (
        "iccid,date,mbs_used,device_id\n"
        f"{ICCID},2025-12-31,9.5,\n"  # last month: outside the billing period
        f"{ICCID},2026-01-01,1.25,0123456789abcdef01234567\n"
        f"{ICCID},2026-01-02,0.5,\n"
        f"{OTHER},2026-01-02,2,\n"
        "8934076500009999999,2026-01-02,7,\n"  # nobody's SIM: skipped
    )
    code, output = await asyncio.to_thread(_import_usage, settings, tmp_path, csv)
    assert code == 0, output
    assert "imported 4 usage rows; skipped 1" in output
    clock.advance(2 * 86400)  # 2026-01-03

    usage = (await client.get(f"/v1/products/{slug}/sims/{ICCID}/data_usage", headers=owner.auth)).json()
    assert usage == {
        "iccid": ICCID,
        "usage_by_day": [
            {"date": "2026-01-01", "mbs_used": 1.25, "mbs_used_cumulative": 1.25},
            {"date": "2026-01-02", "mbs_used": 0.5, "mbs_used_cumulative": 1.75},
        ],
    }
    fleet = (await client.get(f"/v1/products/{slug}/sims/data_usage", headers=owner.auth)).json()
    assert fleet == {
        "total_mbs_used": 3.75,
        "total_active_sim_cards": 2,
        "usage_by_day": [
            {"date": "2026-01-01", "mbs_used": 1.25, "mbs_used_cumulative": 1.25},
            {"date": "2026-01-02", "mbs_used": 2.5, "mbs_used_cumulative": 3.75},
        ],
    }
    sim = (await client.get(f"/v1/products/{slug}/sims/{ICCID}", headers=owner.auth)).json()
    assert sim["last_device_id"] == sim["device_id"] == "0123456789abcdef01234567"
    by_device = await client.get(
        f"/v1/products/{slug}/sims", params={"deviceId": "abcdef"}, headers=owner.auth
    )
    assert [s["iccid"] for s in by_device.json()["sims"]] == [ICCID]

    # a re-import of a day replaces it; a bad file imports nothing
    code, _ = await asyncio.to_thread(
        _import_usage, settings, tmp_path, f"iccid,date,mbs_used\n{ICCID},2026-01-02,1\n"
    )
    assert code == 0
    code, output = await asyncio.to_thread(
        _import_usage, settings, tmp_path, f"iccid,date,mbs_used\n{ICCID},2026-01-03,1\n{ICCID},yesterday,1\n"
    )
    assert code != 0
    assert "line 3: date must be YYYY-MM-DD" in output
    usage = (await client.get(f"/v1/products/{slug}/sims/{ICCID}/data_usage", headers=owner.auth)).json()
    assert [d["mbs_used"] for d in usage["usage_by_day"]] == [1.25, 1.0]


async def test_status_says_what_the_server_knows(client: httpx.AsyncClient) -> None:
    me = await _owner(client)
    await client.put(f"/v1/sims/{ICCID}", json={"action": "activate"}, headers=me.auth)
    status = await client.get(f"/v1/sims/{ICCID}/status", headers=me.auth)
    assert status.status_code == 202
    body = status.json()
    assert body["ok"] is True
    assert body["meta"]["state"] == "complete"
    assert body["meta"]["method"] == "async"
    assert body["carrier"] == "none"
    # no device known on this SIM and no carrier to ask: unknown, not invented
    assert body["sim_status"] == {"connected": None, "gsm_connection": None, "data_connection": None}
    await client.put(f"/v1/sims/{ICCID}", json={"action": "deactivate"}, headers=me.auth)
    off = (await client.get(f"/v1/sims/{ICCID}/status", headers=me.auth)).json()
    assert off["sim_status"]["connected"] is False


async def test_api_users_cannot_use_the_user_routes(client: httpx.AsyncClient) -> None:
    owner = await _owner(client)
    slug = await _product(client, owner)
    created = await client.post(
        f"/v1/products/{slug}/team",
        json={"friendly_name": "ops", "scopes": ["sims:list", "sims:import"]},
        headers=owner.auth,
    )
    token = created.json()["created"]["tokens"][0]["token"]
    auth = {"Authorization": f"Bearer {token}"}
    assert (await client.get("/v1/sims", headers=auth)).status_code == 403
    imported = await client.post(f"/v1/products/{slug}/sims", json={"sims": [ICCID]}, headers=auth)
    assert imported.status_code == 200
    assert [
        s["iccid"] for s in (await client.get(f"/v1/products/{slug}/sims", headers=auth)).json()["sims"]
    ] == [ICCID]
    refused = await client.delete(f"/v1/products/{slug}/sims/{ICCID}", headers=auth)
    assert refused.status_code == 403
    assert (await client.get(f"/v1/products/{slug}/sims/{ICCID}", headers=owner.auth)).status_code == 200


async def test_status_follows_the_device_on_the_sim(
    client: httpx.AsyncClient, runtime: Runtime, settings: Settings, tmp_path: Path
) -> None:
    me = await _owner(client)
    device = await connect_device(client, me, runtime)
    await client.put(f"/v1/sims/{ICCID}", json={"action": "activate"}, headers=me.auth)
    csv = f"iccid,date,mbs_used,device_id\n{ICCID},2026-01-01,0.1,{device.device_id}\n"
    code, output = await asyncio.to_thread(_import_usage, settings, tmp_path, csv)
    assert code == 0, output
    try:
        status = (await client.get(f"/v1/sims/{ICCID}/status", headers=me.auth)).json()
        assert status["sim_status"] == {"connected": True, "gsm_connection": None, "data_connection": True}
        await runtime.sessions.presence.settle(device.device_id)
        sim = (await client.get(f"/v1/sims/{ICCID}", headers=me.auth)).json()
        device_name = (await client.get(f"/v1/devices/{device.device_id}", headers=me.auth)).json()["name"]
        assert (sim["device_id"], sim["device_name"]) == (device.device_id, device_name)
    finally:
        await device.stop()

    async def offline() -> bool:
        body = (await client.get(f"/v1/sims/{ICCID}/status", headers=me.auth)).json()
        return body["sim_status"]["connected"] is False

    await wait_until(offline)


async def test_a_deleted_account_frees_its_sims(client: httpx.AsyncClient) -> None:
    me = await _owner(client)
    other = await make_account(client, "next-owner@example.com")
    await client.put(f"/v1/sims/{ICCID}", json={"action": "activate"}, headers=me.auth)
    assert (await client.head(f"/v1/sims/{ICCID}", headers=other.auth)).status_code == 403
    deleted = await client.request("DELETE", "/v1/user", json={"password": me.password}, headers=me.auth)
    assert deleted.status_code == 200, deleted.text
    assert (await client.head(f"/v1/sims/{ICCID}", headers=other.auth)).status_code == 404
    taken = await client.put(f"/v1/sims/{ICCID}", json={"action": "activate"}, headers=other.auth)
    assert taken.status_code == 200
    assert taken.json()["activations_count"] == 1  # a new registration: nothing of the previous owner's
