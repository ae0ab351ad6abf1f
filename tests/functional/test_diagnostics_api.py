"""
Device vitals end to end (catalogue §5): HTTP in, the real gateway, a virtual device answering the metrics
Describe in Device OS's binary format over TCP, the report stored, read back as JSON, CSV and a summary.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from tests.support.api import Account, make_account
from tests.support.clock import FakeClock
from tests.support.devices import connect_device, wait_until
from tests.support.sse import Served, flag, serve_app, stream

from devicecloud.domain.timestamps import iso
from devicecloud.domain.usage import Account as Scope
from devicecloud.protocol import ResponseStyle
from devicecloud.runtime import Runtime
from devicecloud.virtualdevice.device import VirtualDevice

STYLES = [pytest.param(ResponseStyle.PIGGYBACK, id="0.x"), pytest.param(ResponseStyle.SEPARATE, id="2.x")]
HOUR = 3600.0
DAY = 24 * HOUR


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    # The tests move the clock by hours and days; the links must not time out meanwhile.
    return {"device_keepalive": 100 * DAY, "diagnostics_retention_days": 30}


@pytest.fixture
async def ada(client: httpx.AsyncClient) -> Account:
    return await make_account(client, "ada@example.com")


@pytest.fixture
async def bob(client: httpx.AsyncClient) -> Account:
    return await make_account(client, "bob@example.com")


@pytest.fixture
async def device(client: httpx.AsyncClient, ada: Account, runtime: Runtime) -> AsyncIterator[VirtualDevice]:
    virtual = await connect_device(client, ada, runtime, style=ResponseStyle.PIGGYBACK)
    try:
        yield virtual
    finally:
        await virtual.stop()


async def refresh(client: httpx.AsyncClient, account: Account, device_id: str) -> httpx.Response:
    return await client.post(f"/v1/diagnostics/{device_id}/update", headers=account.auth)


@pytest.mark.parametrize("style", STYLES)
async def test_update_asks_the_device_then_the_event_and_last(
    client: httpx.AsyncClient, ada: Account, runtime: Runtime, style: ResponseStyle
) -> None:
    """202: the device is asked over the protocol, the event follows with the vitals, ``last`` has them."""
    device = await connect_device(client, ada, runtime, style=style)
    try:
        device.vitals.round_trip = 654
        async with (
            serve_app(runtime) as served,
            stream(served, "/v1/devices/events/spark/device/diagnostics", ada) as events,
        ):
            before = device.counters.describes
            reply = await refresh(client, ada, device.device_id)
            assert (202, {"ok": True}) == (reply.status_code, reply.json())
            assert before + 1 == device.counters.describes
            name, body = await events.event()
        assert "spark/device/diagnostics/update" == name
        assert device.device_id == body["coreid"]
        payload = json.loads(body["data"])
        assert 654 == payload["device"]["cloud"]["coap"]["round_trip"]
        assert "Wi-Fi" == payload["device"]["network"]["signal"]["at"]
        assert {"err": -120} == payload["device"]["power"]["battery"]["charge"]
        assert "ok" == payload["service"]["device"]["status"]
        assert 0 <= payload["service"]["coap"]["round_trip"]

        last = await client.get(f"/v1/diagnostics/{device.device_id}/last", headers=ada.auth)
        assert 200 == last.status_code
        assert {
            "diagnostics": {
                "updated_at": iso(runtime.clock.now()),
                "deviceID": device.device_id,
                "payload": payload,
            }
        } == last.json()
    finally:
        await device.stop()


async def test_history_csv_and_summary_over_buckets(
    client: httpx.AsyncClient, ada: Account, device: VirtualDevice, clock: FakeClock
) -> None:
    """Three reports an hour apart: date ranges are [start, end), CSV has one row each, buckets split them."""
    t0 = clock.now()
    for used in (20_000, 30_000, 40_000):
        device.vitals.used_ram = used + 512  # the figures drift by at most 512 before each report
        assert 202 == (await refresh(client, ada, device.device_id)).status_code
        clock.advance(HOUR)
    url = f"/v1/diagnostics/{device.device_id}"

    everything = (await client.get(url, headers=ada.auth)).json()["diagnostics"]
    assert [iso(t0 + timedelta(hours=h)) for h in range(3)] == [r["updated_at"] for r in everything]
    # The history is made from the stored JSON text; it says exactly what the last report says.
    assert (await client.get(f"{url}/last", headers=ada.auth)).json()["diagnostics"] == everything[-1]

    window = {"start_date": iso(t0 + timedelta(hours=1)), "end_date": iso(t0 + timedelta(hours=2))}
    middle = (await client.get(url, params=window, headers=ada.auth)).json()["diagnostics"]
    assert [iso(t0 + timedelta(hours=1))] == [r["updated_at"] for r in middle]  # start in, end out

    as_csv = await client.get(url, headers={**ada.auth, "Accept": "text/csv"})
    assert 200 == as_csv.status_code
    assert as_csv.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(as_csv.text)))
    assert [r["updated_at"] for r in everything] == [row["updated_at"] for row in rows]
    assert {device.device_id} == {row["deviceID"] for row in rows}
    assert [str(r["payload"]["device"]["system"]["memory"]["used"]) for r in everything] == [
        row["device.system.memory.used"] for row in rows
    ]

    # Two buckets of 90 minutes over [t0, t0 + 3h): the first holds the reports at 0 h and 1 h.
    query = {"start_date": iso(t0), "end_date": iso(t0 + timedelta(hours=3)), "limit": "2"}
    summary = (await client.get(f"{url}/summary", params=query, headers=ada.auth)).json()
    assert (device.device_id, 5400, iso(t0), iso(t0 + timedelta(hours=3)), False) == (
        summary["deviceID"],
        summary["bucketSize"],
        summary["startDate"],
        summary["endDate"],
        summary["hasBattery"],
    )
    assert 82_944 == summary["memoryAvailable"]
    samples = summary["samples"]
    assert [iso(t0), iso(t0 + timedelta(minutes=90))] == [s["timestamp"] for s in samples]
    used = [r["payload"]["device"]["system"]["memory"]["used"] for r in everything]
    assert [round((used[0] + used[1]) / 2, 2), float(used[2])] == [s["memoryUsed"] for s in samples]
    strength = samples[0]["signalStrength"]
    assert strength["min"] <= strength["med"] <= strength["max"]
    assert [] == strength["warnings"]


async def test_date_errors(
    client: httpx.AsyncClient, ada: Account, device: VirtualDevice, clock: FakeClock
) -> None:
    url = f"/v1/diagnostics/{device.device_id}"
    bad = await client.get(url, params={"start_date": "yesterday"}, headers=ada.auth)
    assert 400 == bad.status_code
    assert {
        "error": "bad_request",
        "description": "start_date and end_date must be ISO8601 formatted",
    }.items() <= (bad.json().items())
    old = iso(clock.now() - timedelta(days=31))
    too_old = await client.get(url, params={"start_date": old}, headers=ada.auth)
    assert (400, "start_date must not be more than than 30 days ago") == (
        too_old.status_code,
        too_old.json()["description"],
    )
    summary = await client.get(f"{url}/summary", params={"limit": "0"}, headers=ada.auth)
    assert 400 == summary.status_code


async def test_owner_checks(
    client: httpx.AsyncClient, ada: Account, bob: Account, device: VirtualDevice
) -> None:
    """Another account's device and an unknown one answer alike; nothing is asked of the device."""
    before = device.counters.describes
    for path in ("", "/last", "/metadata", "/summary"):
        reply = await client.get(f"/v1/diagnostics/{device.device_id}{path}", headers=bob.auth)
        assert (403, "Permission Denied") == (reply.status_code, reply.json()["error"]), path
    assert 403 == (await refresh(client, bob, device.device_id)).status_code
    assert 403 == (await refresh(client, ada, "0123456789abcdef01234567")).status_code
    assert before == device.counters.describes
    never = await client.get(f"/v1/diagnostics/{device.device_id}/last", headers=ada.auth)
    assert 404 == never.status_code
    metadata = (await client.get(f"/v1/diagnostics/{device.device_id}/metadata", headers=ada.auth)).json()
    assert (
        "Battery charge" == metadata["diagnostics_metadata"]["device"]["power"]["battery"]["charge"]["title"]
    )


async def test_retention_prunes_old_reports(
    client: httpx.AsyncClient, ada: Account, device: VirtualDevice, clock: FakeClock, runtime: Runtime
) -> None:
    """Reports past the retention are deleted by the periodic task (moved by the clock)."""
    start = clock.now()
    assert 202 == (await refresh(client, ada, device.device_id)).status_code
    clock.advance(29 * DAY)
    assert 202 == (await refresh(client, ada, device.device_id)).status_code
    clock.advance(2 * DAY)  # the first report is 31 days old now, and the hourly prune is due

    async def pruned() -> bool:
        clock.advance(HOUR)  # a prune still running from the last advance schedules the next one after it
        async with runtime.store.transaction(readonly=True) as tx:
            user = await tx.users.get_by_username(ada.email)
            assert user is not None
            start = clock.now() - timedelta(days=40)
            scope = Scope("user", user.id)
            return 1 == len(await tx.vitals.between(device.device_id, scope, start, clock.now(), limit=10))

    await wait_until(pruned)
    history = (await client.get(f"/v1/diagnostics/{device.device_id}", headers=ada.auth)).json()
    assert [iso(start + timedelta(days=29))] == [r["updated_at"] for r in history["diagnostics"]]


async def test_device_without_diagnostics_and_offline_device(
    client: httpx.AsyncClient, ada: Account, runtime: Runtime
) -> None:
    """Device OS 0.7 has no vitals: a clear refusal; an offline device: 404; nothing is stored either way."""
    old = await connect_device(client, ada, runtime, style=ResponseStyle.PIGGYBACK, diagnostics=False)
    try:
        reply = await refresh(client, ada, old.device_id)
        assert (400, "Vitals not supported") == (reply.status_code, reply.json()["error"])
    finally:
        await old.stop()
    await wait_until(flag(lambda: not runtime.gateway.control.is_online(old.device_id)))
    offline = await refresh(client, ada, old.device_id)
    assert 404 == offline.status_code
    assert 404 == (await client.get(f"/v1/diagnostics/{old.device_id}/last", headers=ada.auth)).status_code


async def test_served_over_http(runtime: Runtime, ada: Account, device: VirtualDevice) -> None:
    """The same through a real HTTP server (the route table as uvicorn serves it)."""
    served: Served
    async with serve_app(runtime) as served:
        reply = await served.http.post(f"/v1/diagnostics/{device.device_id}/update", headers=ada.auth)
        assert 202 == reply.status_code
        last = await served.http.get(f"/v1/diagnostics/{device.device_id}/last", headers=ada.auth)
        assert device.device_id == last.json()["diagnostics"]["deviceID"]


@pytest.mark.parametrize("style", STYLES)
async def test_vitals_a_device_sends_unasked_are_written_behind(
    client: httpx.AsyncClient, ada: Account, runtime: Runtime, clock: FakeClock, style: ResponseStyle
) -> None:
    """Particle.publishVitals(): ACKed at once, nothing written until the flush; then stored and published."""
    device = await connect_device(client, ada, runtime, style=style)
    try:
        url = f"/v1/diagnostics/{device.device_id}/last"
        async with (
            serve_app(runtime) as served,
            stream(served, "/v1/devices/events/spark/device/diagnostics", ada) as events,
        ):
            device.vitals.round_trip = 321
            await device.publish_vitals()
            device.vitals.round_trip = 999
            await device.publish_vitals()  # within 5 s of the first: dropped
            assert 404 == (await client.get(url, headers=ada.auth)).status_code  # in memory only
            clock.advance(1.0)  # the flush interval
            first = (await events.event())[1]
            clock.advance(4.0)
            device.vitals.round_trip = 322
            await device.publish_vitals()
            clock.advance(1.0)
            second = (await events.event())[1]
        assert [321, 322] == [
            json.loads(e["data"])["device"]["cloud"]["coap"]["round_trip"] for e in (first, second)
        ]
        assert {device.device_id} == {first["coreid"], second["coreid"]}
        last = (await client.get(url, headers=ada.auth)).json()["diagnostics"]
        assert 322 == last["payload"]["device"]["cloud"]["coap"]["round_trip"]
        history = (await client.get(f"/v1/diagnostics/{device.device_id}", headers=ada.auth)).json()
        assert 2 == len(history["diagnostics"])
        assert 1 == runtime.diagnostics.dropped
    finally:
        await device.stop()


async def test_history_stays_with_the_owner_who_had_the_device(
    client: httpx.AsyncClient, ada: Account, bob: Account, device: VirtualDevice
) -> None:
    """After a transfer the new owner starts with no vitals, and the old one can no longer read them."""
    assert 202 == (await refresh(client, ada, device.device_id)).status_code
    assert {"ok": True} == (await client.delete(f"/v1/devices/{device.device_id}", headers=ada.auth)).json()
    claimed = await client.post("/v1/devices", json={"id": device.device_id}, headers=bob.auth)
    assert 200 == claimed.status_code
    url = f"/v1/diagnostics/{device.device_id}"
    assert 404 == (await client.get(f"{url}/last", headers=bob.auth)).status_code
    assert {"diagnostics": []} == (await client.get(url, headers=bob.auth)).json()
    assert 403 == (await client.get(f"{url}/last", headers=ada.auth)).status_code


async def test_a_failed_flush_keeps_its_reports_for_the_next(
    client: httpx.AsyncClient,
    ada: Account,
    device: VirtualDevice,
    clock: FakeClock,
    runtime: Runtime,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A database error on the write-behind loses nothing: the next interval writes the same reports."""
    from devicecloud.store.sql.diagnostics import SqlVitals

    real = SqlVitals.add_many
    failures = [RuntimeError("database went away")]

    async def flaky(self: SqlVitals, rows: Any) -> None:
        if failures:
            raise failures.pop()
        await real(self, rows)

    monkeypatch.setattr(SqlVitals, "add_many", flaky)
    await device.publish_vitals()
    url = f"/v1/diagnostics/{device.device_id}"
    clock.advance(1.0)
    await wait_until(flag(lambda: not failures))  # the first flush ran and failed
    assert {"diagnostics": []} == (await client.get(url, headers=ada.auth)).json()

    async def stored() -> bool:
        clock.advance(1.0)  # the retry is scheduled once the failed flush has finished: move on until it ran
        return 1 == len((await client.get(url, headers=ada.auth)).json()["diagnostics"])

    await wait_until(stored)
    assert 0 == runtime.diagnostics.dropped


async def test_a_range_with_too_many_reports_is_refused_not_cut(
    client: httpx.AsyncClient,
    ada: Account,
    device: VirtualDevice,
    clock: FakeClock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("devicecloud.services.diagnostics.MAX_HISTORY", 2)
    for _ in range(3):
        assert 202 == (await refresh(client, ada, device.device_id)).status_code
        clock.advance(60.0)
    url = f"/v1/diagnostics/{device.device_id}"
    refused = await client.get(url, headers=ada.auth)
    assert (400, "More than 2 reports in this range: narrow start_date and end_date") == (
        refused.status_code,
        refused.json()["description"],
    )
    assert 400 == (await client.get(f"{url}/summary", headers=ada.auth)).status_code
    narrowed = await client.get(
        url, params={"start_date": iso(clock.now() - timedelta(seconds=90))}, headers=ada.auth
    )
    assert 1 == len(narrowed.json()["diagnostics"])


async def test_compacted_hours_answer_the_same_history(
    client: httpx.AsyncClient, ada: Account, device: VirtualDevice, clock: FakeClock, runtime: Runtime
) -> None:
    """Past hours folded into one row each: JSON, windows in an hour, CSV, a late report: all unchanged."""
    t0 = clock.now()
    for _ in range(6):  # two reports an hour for three hours
        assert 202 == (await refresh(client, ada, device.device_id)).status_code
        clock.advance(HOUR / 2)
    url = f"/v1/diagnostics/{device.device_id}"
    window = {"start_date": iso(t0 + timedelta(minutes=30)), "end_date": iso(t0 + timedelta(hours=2))}
    before = [
        (await client.get(url, headers=ada.auth)).json(),
        (await client.get(url, params=window, headers=ada.auth)).json(),
        (await client.get(url, headers={**ada.auth, "Accept": "text/csv"})).text,
        (await client.get(f"{url}/last", headers=ada.auth)).json(),
    ]
    assert 6 == len(before[0]["diagnostics"])
    assert 3 == len(before[1]["diagnostics"])
    clock.advance(HOUR)  # every report's hour ended more than five minutes ago
    await runtime.diagnostics.compact()  # (the hourly prune may have folded some already)
    assert 0 == await stored_rows(runtime)  # every report is in its hour's row
    after = [
        (await client.get(url, headers=ada.auth)).json(),
        (await client.get(url, params=window, headers=ada.auth)).json(),
        (await client.get(url, headers={**ada.auth, "Accept": "text/csv"})).text,
        (await client.get(f"{url}/last", headers=ada.auth)).json(),
    ]
    assert before == after

    # A report stored late for a compacted hour is listed in its place, then folded into that hour.
    async with runtime.store.transaction() as tx:
        user = await tx.users.get_by_username(ada.email)
        assert user is not None
        await tx.vitals.add(device.device_id, user.id, None, t0 + timedelta(minutes=10), {"late": True})
    listed = json.loads((await client.get(url, headers=ada.auth)).text)["diagnostics"]
    assert [False, True, False] == [r["payload"] == {"late": True} for r in listed[:3]]
    assert 1 == await stored_rows(runtime)
    assert 1 == await runtime.diagnostics.compact()
    assert 0 == await stored_rows(runtime)
    assert listed == json.loads((await client.get(url, headers=ada.auth)).text)["diagnostics"]


async def stored_rows(runtime: Runtime) -> int:
    """Reports still stored one per row (not yet folded into their hour)."""
    async with runtime.store.engine.connect() as conn:
        return int((await conn.execute(text("SELECT count(*) FROM device_vitals"))).scalar_one())


async def test_product_twins(
    client: httpx.AsyncClient, ada: Account, bob: Account, device: VirtualDevice, clock: FakeClock
) -> None:
    """/v1/products/:p/diagnostics/…: the product's team reads its devices' vitals; others learn nothing."""
    created = await client.post("/v1/products", json={"name": "Vitals", "platform_id": 6}, headers=ada.auth)
    assert 201 == created.status_code, created.text
    slug = created.json()["product"]["slug"]
    imported = await client.post(
        f"/v1/products/{slug}/devices", json={"id": device.device_id}, headers=ada.auth
    )
    assert imported.status_code in (200, 201), imported.text
    base = f"/v1/products/{slug}/diagnostics/{device.device_id}"
    assert 202 == (await client.post(f"{base}/update", headers=ada.auth)).status_code
    clock.advance(1.0)  # histories end now, exclusive
    last = (await client.get(f"{base}/last", headers=ada.auth)).json()["diagnostics"]
    assert device.device_id == last["deviceID"]
    history = (await client.get(base, headers=ada.auth)).json()["diagnostics"]
    assert [last] == history
    assert (await client.get(f"{base}/metadata", headers=ada.auth)).json()["diagnostics_metadata"]
    summary = (await client.get(f"{base}/summary", headers=ada.auth)).json()
    assert device.device_id == summary["deviceID"]
    as_csv = await client.get(base, headers={**ada.auth, "Accept": "text/csv"})
    assert 1 == len(list(csv.DictReader(io.StringIO(as_csv.text))))
    # The owner's own route sees the report too (made while ada owned the device).
    assert 1 == len(
        (await client.get(f"/v1/diagnostics/{device.device_id}", headers=ada.auth)).json()["diagnostics"]
    )
    for method, path in [("GET", base), ("GET", f"{base}/last"), ("POST", f"{base}/update")]:
        refused = await client.request(method, path, headers=bob.auth)
        assert 404 == refused.status_code, (path, refused.text)


async def test_a_compaction_between_the_two_reads_loses_and_repeats_nothing(
    client: httpx.AsyncClient, ada: Account, device: VirtualDevice, clock: FakeClock, runtime: Runtime
) -> None:
    """PostgreSQL reads each statement at its own snapshot: a compaction committing mid-read is harmless."""
    t0 = clock.now()
    for _ in range(4):
        assert 202 == (await refresh(client, ada, device.device_id)).status_code
        clock.advance(HOUR / 2)
    await wait_until(flag(lambda: runtime.diagnostics._task is None or runtime.diagnostics._task.done()))
    assert await stored_rows(runtime) > 0  # the hourly compaction left the last hour's reports as rows
    async with runtime.store.transaction(readonly=True) as tx:
        user = await tx.users.get_by_username(ada.email)
        assert user is not None
        vitals: Any = tx.vitals
        real = vitals._conn

        class Between:  # runs a compaction (its own transaction) after the first statement of the read
            dialect = real.dialect
            statements = 0

            async def execute(self, statement: Any, *args: Any) -> Any:
                result = await real.execute(statement, *args)
                Between.statements += 1
                if Between.statements == 1:
                    async with runtime.store.transaction() as other:
                        await other.vitals.compact(clock.now() + timedelta(days=1))
                return result

        vitals._conn = Between()
        count, pieces = await vitals.history_json(
            device.device_id, Scope("user", user.id), t0, clock.now(), limit=100
        )
    items = json.loads("[" + ",".join(p.decode() for p in pieces) + "]")
    assert 4 == count == len(items)
    assert [iso(t0 + timedelta(minutes=30 * i)) for i in range(4)] == [i["updated_at"] for i in items]
