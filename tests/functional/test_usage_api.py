"""
Usage end to end (catalogue §17, decision 0026): a virtual device publishes, answers calls and reads over
the real gateway; the counters, written behind, give exactly the workload in the service agreement, in a
usage report (a job: 202 pending, then available, its CSV served here) and in limit notifications.
"""

from __future__ import annotations

import csv
import io
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import httpx
import pytest
from tests.functional.test_device_writebehind import StatementCounter
from tests.support.api import Account, make_account
from tests.support.clock import FakeClock
from tests.support.devices import connect_device, handled
from tests.support.notifier import RecordingNotifier

from devicecloud.domain.usage import Account as ScopeAccount
from devicecloud.domain.usage import UsageReport
from devicecloud.runtime import Runtime
from devicecloud.services.usage import UsageBook
from devicecloud.virtualdevice.device import VirtualDevice

N_EVENTS, M_CALLS, K_READS = 7, 5, 3
DAY = 24 * 3600.0


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    # Messages: the workload is 15; the limit of 12 is crossed by it (one notification, one mail).
    return {"device_keepalive": 100 * DAY, "usage_max_messages": 12}


@pytest.fixture
async def ada(client: httpx.AsyncClient) -> Account:
    return await make_account(client, "ada@example.com")


@pytest.fixture
async def device(client: httpx.AsyncClient, ada: Account, runtime: Runtime) -> AsyncIterator[VirtualDevice]:
    virtual = await connect_device(client, ada, runtime, demo=True)
    try:
        yield virtual
    finally:
        await virtual.stop()


async def workload(
    client: httpx.AsyncClient, ada: Account, runtime: Runtime, device: VirtualDevice, clock: FakeClock
) -> int:
    """N events from the device, M function calls and K variable reads over HTTP; returns the bytes."""
    size = 0
    for i in range(N_EVENTS):
        name, data = f"usage/test/{i}", "x" * i
        await device.publish(name, data)
        await handled(runtime, device.device_id)
        size += len(name) + len(data)
        clock.advance(1.0)  # the device's publish limit (1 a second) refills
    for i in range(M_CALLS):
        argument = f"D{i},HIGH"
        called = await client.post(
            f"/v1/devices/{device.device_id}/digitalwrite", data={"arg": argument}, headers=ada.auth
        )
        assert 200 == called.status_code, called.text
        size += len("digitalwrite") + len(argument) + 4
    for _ in range(K_READS):
        read = await client.get(f"/v1/devices/{device.device_id}/greeting", headers=ada.auth)
        assert 200 == read.status_code, read.text
        size += len("greeting") + len(read.json()["result"])
    return size


async def agreement(client: httpx.AsyncClient, account: Account, path: str = "/v1/user") -> dict[str, Any]:
    answer = await client.get(f"{path}/service_agreements", headers=account.auth)
    assert 200 == answer.status_code, answer.text
    (item,) = answer.json()["data"]
    assert "service_agreement" == item["type"]
    result: dict[str, Any] = item
    return result


async def test_a_scripted_workload_is_counted_exactly(
    client: httpx.AsyncClient,
    ada: Account,
    runtime: Runtime,
    device: VirtualDevice,
    clock: FakeClock,
    notifier: RecordingNotifier,
) -> None:
    """N events, M calls, K reads: after a flush the agreement says N + M + K messages and their bytes."""
    size = await workload(client, ada, runtime, device, clock)
    await runtime.usage.flush()
    clock.advance(60.0)  # an account's limits are checked at most once a minute: the last one is due now
    await runtime.usage.idle()
    item = await agreement(client, ada)
    attributes = item["attributes"]
    assert (item["id"], "individual", "active", "monthly") == (
        item["id"],
        attributes["owner_type"],
        attributes["state"],
        attributes["duration"],
    )
    summary = attributes["current_usage_summary"]
    assert {
        "device_limit_reached": False,
        "connectivity": {
            "all": {
                "owned_devices": 1,
                "billable_devices": 1,
                "device_data": size,
                "device_messages": N_EVENTS + M_CALLS + K_READS,
            }
        },
    } == summary
    assert 12 == attributes["pricing_terms"]["messaging"]["max_messages"]

    # The limit of 12 messages was crossed: one notification, one mail; another flush repeats neither.
    notices = await client.get(f"/v1/user/service_agreements/{item['id']}/notifications", headers=ada.auth)
    assert 200 == notices.status_code
    (notice,) = notices.json()["data"]
    assert "developer:usage_activity:limit_reached" == notice["attributes"]["event_name"]
    assert {"limit": "device_messages", "used": 15, "allowed": 12} == notice["attributes"]["details"]
    assert [("ada@example.com", "device_messages")] == [(a.email, a.limit) for a in notifier.alerts]
    await device.publish("usage/more", "1")
    await handled(runtime, device.device_id)
    await runtime.usage.flush()
    clock.advance(60.0)
    await runtime.usage.idle()
    assert 1 == len(
        (
            await client.get(f"/v1/user/service_agreements/{item['id']}/notifications", headers=ada.auth)
        ).json()["data"]
    )
    assert 1 == len(notifier.alerts)
    assert (
        N_EVENTS + M_CALLS + K_READS + 1
        == (await agreement(client, ada))["attributes"]["current_usage_summary"]["connectivity"]["all"][
            "device_messages"
        ]
    )


async def test_a_usage_report_is_a_job_with_a_csv(
    client: httpx.AsyncClient, ada: Account, runtime: Runtime, device: VirtualDevice, clock: FakeClock
) -> None:
    size = await workload(client, ada, runtime, device, clock)
    item = await agreement(client, ada)
    today = clock.now().date().isoformat()
    body = {"report_type": "devices", "date_period_start": today, "date_period_end": today}
    created = await client.post(
        f"/v1/user/service_agreements/{item['id']}/usage_reports", json=body, headers=ada.auth
    )
    assert 202 == created.status_code, created.text
    report = created.json()["data"]
    assert ("usage_report", "pending", None) == (
        report["type"],
        report["attributes"]["state"],
        report["attributes"]["download_url"],
    )
    await runtime.usage.idle()
    got = await client.get(f"/v1/user/usage_reports/{report['id']}", headers=ada.auth)
    assert 200 == got.status_code
    attributes = got.json()["data"]["attributes"]
    assert "available" == attributes["state"]
    url = attributes["download_url"]
    assert url.startswith("http://testserver/v1/usage_report_files/")
    downloaded = await client.get(url)  # the link is the credential, as a signed link is
    assert 200 == downloaded.status_code
    assert downloaded.headers["content-type"].startswith("text/csv")
    (row,) = list(csv.DictReader(io.StringIO(downloaded.text)))
    assert {
        "date": today,
        "device_id": device.device_id,
        "product_id": "",
        "connected": "1",
        "events": str(N_EVENTS),
        "function_calls": str(M_CALLS),
        "variable_reads": str(K_READS),
        "device_messages": str(N_EVENTS + M_CALLS + K_READS),
        "device_data_bytes": str(size),
    } == row
    assert 404 == (await client.get(url.replace(".csv", "0.csv"))).status_code

    # Another account sees neither the report nor the agreement's reports.
    bob = await make_account(client, "bob@example.com")
    assert 404 == (await client.get(f"/v1/user/usage_reports/{report['id']}", headers=bob.auth)).status_code
    other = await client.post(
        f"/v1/user/service_agreements/{item['id']}/usage_reports", json=body, headers=bob.auth
    )
    assert 404 == other.status_code


async def test_report_refusals_and_organizations(client: httpx.AsyncClient, ada: Account) -> None:
    item = await agreement(client, ada)
    url = f"/v1/user/service_agreements/{item['id']}/usage_reports"
    for body, text in [
        (
            {"report_type": "sims", "date_period_start": "2026-01-01", "date_period_end": "2026-01-02"},
            "report_type",
        ),
        (
            {"report_type": "devices", "date_period_start": "nope", "date_period_end": "2026-01-02"},
            "date_period_start",
        ),
        (
            {"report_type": "devices", "date_period_start": "2026-01-03", "date_period_end": "2026-01-02"},
            "before",
        ),
    ]:
        refused = await client.post(url, json=body, headers=ada.auth)
        assert 400 == refused.status_code, refused.text
        assert text in refused.text
    org = await client.get("/v1/orgs/acme/service_agreements", headers=ada.auth)
    assert 404 == org.status_code
    assert "Organizations are not supported" in org.text


async def test_a_product_agreement_counts_its_devices(
    client: httpx.AsyncClient, ada: Account, runtime: Runtime, device: VirtualDevice, clock: FakeClock
) -> None:
    created = await client.post("/v1/products", json={"name": "Fleet", "platform_id": 6}, headers=ada.auth)
    assert 201 == created.status_code, created.text
    slug = created.json()["product"]["slug"]
    imported = await client.post(
        f"/v1/products/{slug}/devices", json={"id": device.device_id}, headers=ada.auth
    )
    assert imported.status_code in (200, 201), imported.text
    size = await workload(client, ada, runtime, device, clock)
    await runtime.usage.flush()
    item = await agreement(client, ada, f"/v1/products/{slug}")
    assert "product" == item["attributes"]["owner_type"]
    usage = item["attributes"]["current_usage_summary"]["connectivity"]["all"]
    assert (1, 1, N_EVENTS + M_CALLS + K_READS, size) == (
        usage["owned_devices"],
        usage["billable_devices"],
        usage["device_messages"],
        usage["device_data"],
    )
    # Someone outside the product does not learn it exists.
    bob = await make_account(client, "bob@example.com")
    assert 404 == (await client.get(f"/v1/products/{slug}/service_agreements", headers=bob.auth)).status_code


async def test_counting_writes_nothing_until_the_flush(
    client: httpx.AsyncClient,
    ada: Account,
    runtime: Runtime,
    device: VirtualDevice,
    clock: FakeClock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Events a device publishes cost no statement on usage_counters; one flush writes a row per device."""
    await runtime.usage.flush()  # the connection's row
    counter = StatementCounter(runtime, monkeypatch)
    try:
        for i in range(4):  # within the device's burst of 4: no clock moves, no flush falls due
            await device.publish(f"quiet/{i}", "x")
        await handled(runtime, device.device_id)
        assert [] == [sql for sql, _ in counter.statements if "usage_counters" in sql]
        assert 1 == await runtime.usage.flush()
        writes = [(sql.split()[0], many) for sql, many in counter.statements if "usage_counters" in sql]
        assert [("DELETE", 1), ("INSERT", 1)] == [w for w in writes if w[0] in ("DELETE", "INSERT")]
    finally:
        counter.close()


async def test_rows_are_absolute_per_writer(
    client: httpx.AsyncClient, ada: Account, runtime: Runtime, device: VirtualDevice, clock: FakeClock
) -> None:
    """A flush written again counts once; another process's counts (another writer) add up."""
    book = runtime.usage.book
    for _ in range(3):
        book.event(device.device_id, 10)
    await runtime.usage.flush()
    book._dirty |= set(book._counts)  # as if the commit's answer was lost: the same rows written again
    await runtime.usage.flush()
    other = UsageBook(store=runtime.store, clock=clock, node_id="other-node")
    other.call(device.device_id, 5)
    await other.flush()
    await other.close()
    usage = (await agreement(client, ada))["attributes"]["current_usage_summary"]["connectivity"]["all"]
    assert (4, 35, 1) == (usage["device_messages"], usage["device_data"], usage["billable_devices"])


async def test_pending_reports_are_made_at_start(
    client: httpx.AsyncClient, ada: Account, runtime: Runtime, clock: FakeClock
) -> None:
    """A report a stopped process left pending is made by the next start."""
    item = await agreement(client, ada)
    today = clock.now().date()
    report = UsageReport(
        id="00000000-0000-4000-8000-000000000001",
        account=ScopeAccount("user", int(item["id"])),
        state="pending",
        report_type="products",
        date_period_start=today,
        date_period_end=today,
        devices=(),
        products=(),
        created_at_iso="",
        expires_at_iso="",
        download_key=None,
    )
    async with runtime.store.transaction() as tx:
        await tx.usage.add_report(report, clock.now(), clock.now() + timedelta(days=1))
    await runtime.usage.start()
    await runtime.usage.idle()
    got = (await client.get(f"/v1/user/usage_reports/{report.id}", headers=ada.auth)).json()["data"]
    assert "available" == got["attributes"]["state"]
    downloaded = await client.get(got["attributes"]["download_url"])
    assert downloaded.text.startswith("date,product_id,devices_connected,")
