"""
/healthz, /readyz and /metrics over HTTP (SQLite and PostgreSQL): what an orchestrator and Prometheus see.
"""

from __future__ import annotations

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from pytest_httpserver import HTTPServer
from sqlalchemy.ext.asyncio import create_async_engine
from tests.support.api import make_account
from tests.support.devices import connect_device, wait_until
from tests.support.webhooks import create_hook, publish, requests_seen

from devicecloud.runtime import Runtime


async def scrape(client: httpx.AsyncClient) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of /metrics by (name, sorted labels)."""
    response = await client.get("/metrics")
    assert 200 == response.status_code
    assert response.headers["content-type"].startswith("text/plain; version=")
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


async def test_healthz_answers_while_the_process_runs(client: httpx.AsyncClient) -> None:
    """GET /healthz: 200 and ok, with no token, whatever the database does (liveness only)."""
    response = await client.get("/healthz")
    assert (200, True) == (response.status_code, response.json()["ok"])


async def test_readyz_checks_the_database_and_the_bus(client: httpx.AsyncClient, runtime: Runtime) -> None:
    """Both answer: 200 and each check "ok". The database gone: 503 in the API's error shape, naming it."""
    ready = await client.get("/readyz")
    assert (200, {"ok": True, "checks": {"database": "ok", "bus": "ok"}}) == (ready.status_code, ready.json())
    working = runtime.store.engine
    gone = create_async_engine("postgresql+asyncpg://nobody@127.0.0.1:1/none")
    runtime.store.engine = gone  # nothing listens there: every connection is refused
    try:
        down = await client.get("/readyz")
    finally:
        runtime.store.engine = working
        await gone.dispose()
    body = down.json()
    assert (503, False, "not_ready", "ok") == (
        down.status_code,
        body["ok"],
        body["error"],
        body["checks"]["bus"],
    )
    assert body["error_description"].startswith("database: ")
    assert body["checks"]["database"] != "ok"
    assert 200 == (await client.get("/readyz")).status_code


async def test_metrics_count_devices_requests_events_and_webhooks(
    client: httpx.AsyncClient, runtime: Runtime, httpserver: HTTPServer
) -> None:
    """
    After a device connected, a function call through the API and a webhook sent: the scrape shows the
    node, one connected device and handshake, the call and its duration, the events and the webhook.
    """
    before = await scrape(client)
    assert 1.0 == before[("devicecloud_node", (("node", runtime.node.node_id),))]
    assert 0.0 == before[("devicecloud_devices_connected", ())]
    ada = await make_account(client, "ada@example.com")
    device = await connect_device(client, ada, runtime, setup=lambda d: d.add_function("echo_len", len))
    try:
        call = await client.post(
            f"/v1/devices/{device.device_id}/echo_len", data={"arg": "four"}, headers=ada.auth
        )
        assert 4 == call.json()["return_value"]
        httpserver.expect_request("/hook", method="POST").respond_with_data("ok")
        await create_hook(client, ada, event="metered", url=httpserver.url_for("/hook"))
        await publish(client, ada, "metered", "1")
        await requests_seen(httpserver, 1)

        async def booked() -> bool:
            return (await scrape(client)).get(
                ("devicecloud_webhook_attempts_total", (("outcome", "sent"),))
            ) == 1

        await wait_until(booked)
        seen = await scrape(client)
        expected = {
            ("devicecloud_devices_connected", ()): 1.0,
            ("devicecloud_handshakes_total", (("outcome", "ok"),)): 1.0,
            ("devicecloud_device_request_seconds_count", (("kind", "function"),)): 1.0,
            ("devicecloud_device_requests_total", (("kind", "function"), ("outcome", "ok"))): 1.0,
            ("devicecloud_webhook_attempts_total", (("outcome", "failed"),)): 0.0,
        }
        assert expected == {key: seen[key] for key in expected}
        assert seen[("devicecloud_events_in_total", (("source", "bus"),))] >= 2  # spark/status, metered
        assert seen[("devicecloud_device_request_seconds_sum", (("kind", "function"),))] > 0
        assert seen[("devicecloud_webhook_outbox", ())] in (0.0, 1.0)  # booked, or about to be
        assert not [key for key in seen if device.device_id in str(key)]  # no per-device label
    finally:
        await device.stop()


@pytest.mark.parametrize("path", ["/readyz", "/metrics"])
async def test_the_probes_are_not_in_the_api_reference(client: httpx.AsyncClient, path: str) -> None:
    """They are for operators: /openapi.json (and so /docs) does not list them."""
    assert path not in (await client.get("/openapi.json")).json()["paths"]
