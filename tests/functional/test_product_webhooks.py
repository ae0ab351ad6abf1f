"""
A product's integrations over HTTP (issue 11 section 4, catalogue §10 product twins): CRUD under
``/v1/products/:p/integrations`` and the legacy ``/v1/products/:p/webhooks``; the hooks fire for the
product's devices' events whoever owns the device, render the PRODUCT_* variables, answer on the
product topic ``<device>/hook-response/<event>``, and outlive the team member who made them.

Product devices arrive over HTTP with issue 11 section 3; until then these tests put a device into the
product through the store's own repository (see test_product_events.py).
"""

from __future__ import annotations

import json

import httpx
import pytest
from pytest_httpserver import HTTPServer
from tests.functional.test_product_events import join_product, product_id
from tests.support.api import Account, make_account
from tests.support.devices import connect_device, wait_until
from tests.support.sse import flag, serve_app, stream
from tests.support.webhooks import outbox_empty, requests_seen

from devicecloud.runtime import Runtime

HOOKS = "/v1/products/brew-bot/integrations"


async def test_create_list_get_edit_delete(
    client: httpx.AsyncClient, runtime: Runtime, owner: Account
) -> None:
    created = await client.post(
        HOOKS,
        json={"integration_type": "Webhook", "event": "temp", "url": "https://example.com/in", "name": "T"},
        headers=owner.auth,
    )
    assert created.status_code == 201, created.text
    body = created.json()
    hook_id = body["id"]
    pid = await product_id(runtime)
    assert (body["ok"], body["event"], body["url"]) == (True, "temp", "https://example.com/in")
    assert body["hookUrl"].endswith(f"/v1/products/{pid}/integrations/{hook_id}")
    for path in (HOOKS, "/v1/products/brew-bot/webhooks", f"/v1/products/{pid}/integrations"):
        listed = await client.get(path, headers=owner.auth)
        assert [hook["id"] for hook in listed.json()] == [hook_id], path
    # The product's hook is not its creator's: the user paths neither list nor show it.
    assert (await client.get("/v1/integrations", headers=owner.auth)).json() == []
    assert (await client.get(f"/v1/integrations/{hook_id}", headers=owner.auth)).status_code == 404
    got = await client.get(f"{HOOKS}/{hook_id}", headers=owner.auth)
    assert (got.json()["integration"]["name"], got.json()["integration"]["logs"]) == ("T", [])
    edited = await client.put(
        f"{HOOKS}/{hook_id}", json={"event": "humid", "url": "https://example.com/h"}, headers=owner.auth
    )
    assert edited.status_code == 200, edited.text
    assert edited.json()["integration"]["event"] == "humid"
    assert "name" not in edited.json()["integration"]  # PUT replaces the whole configuration
    legacy = await client.get(f"/v1/products/brew-bot/webhooks/{hook_id}", headers=owner.auth)
    assert legacy.json()["event"] == "humid"
    deleted = await client.delete(f"{HOOKS}/{hook_id}", headers=owner.auth)
    assert deleted.status_code == 204
    assert (await client.get(f"{HOOKS}/{hook_id}", headers=owner.auth)).status_code == 404


async def test_hooks_of_other_owners_are_not_found(client: httpx.AsyncClient, owner: Account) -> None:
    other = await make_account(client, "other@example.com")
    await client.post("/v1/products", json={"name": "Other", "platform_id": 6}, headers=other.auth)
    theirs = await client.post(
        "/v1/products/other/integrations",
        json={"event": "x", "url": "https://example.com"},
        headers=other.auth,
    )
    users = await client.post(
        "/v1/integrations", json={"event": "x", "url": "https://example.com"}, headers=owner.auth
    )
    for hook_id in (theirs.json()["id"], users.json()["id"]):
        for method in ("GET", "PUT", "DELETE"):
            response = await client.request(
                method, f"{HOOKS}/{hook_id}", headers=owner.auth, json={"event": "mine"}
            )
            assert (response.status_code, response.json()["error"]) == (404, "Not Found")
        test = await client.post(f"{HOOKS}/{hook_id}/test", headers=owner.auth)
        assert test.status_code == 404
    assert (await client.get("/v1/integrations", headers=owner.auth)).json()[0]["event"] == "x"
    listed = await client.get("/v1/products/other/integrations", headers=other.auth)
    assert [hook["event"] for hook in listed.json()] == ["x"]


@pytest.mark.parametrize(
    "body",
    [
        {"url": "https://example.com"},
        {"event": "x"},
        {"event": "x", "url": "ftp://example.com"},
        {"event": "x", "url": "https://example.com", "integration_type": "AzureIotHub"},
        {"event": "x", "url": "https://example.com", "json": {"a": 1}, "form": {"b": 2}},
    ],
)
async def test_bad_hooks_are_refused_and_nothing_is_made(
    client: httpx.AsyncClient, owner: Account, body: dict[str, object]
) -> None:
    refused = await client.post(HOOKS, json=body, headers=owner.auth)
    assert refused.status_code == 400, refused.text
    assert refused.json()["ok"] is False
    assert (await client.get(HOOKS, headers=owner.auth)).json() == []


async def test_a_product_hook_fires_for_its_devices_and_answers_on_the_product_topic(
    client: httpx.AsyncClient, runtime: Runtime, owner: Account, httpserver: HTTPServer
) -> None:
    httpserver.expect_request("/in").respond_with_data('{"ok":1}', content_type="application/json")
    made = await client.post(
        HOOKS,
        json={
            "event": "brew",
            "url": httpserver.url_for("/in"),
            "json": {
                "product": "{{PRODUCT_ID}}",
                "version": "{{PRODUCT_VERSION}}",
                "d": "{{PARTICLE_DEVICE_ID}}",
            },
        },
        headers=owner.auth,
    )
    assert made.status_code == 201, made.text
    ada = await make_account(client, "ada@example.com")  # a device owner who is not in the team
    inside = await connect_device(client, ada, runtime)
    outside = await connect_device(client, ada, runtime)
    pid = await join_product(runtime, inside.device_id, firmware_version=5)
    received: list[tuple[str, str | None]] = []
    topic = f"{inside.device_id}/hook-response/brew"
    try:
        await inside.subscribe(topic, lambda name, data: received.append((name, data)))
        await inside.ping()
        async with (
            serve_app(runtime) as served,
            stream(served, "/v1/products/brew-bot/events/", owner) as sse,
        ):
            await outside.publish("brew/outside", "0", with_ack=True)
            await inside.publish("brew/inside", "1", with_ack=True)
            (request,) = await requests_seen(httpserver, 1)
            names = [(await sse.event())[0] for _ in range(3)]
            await wait_until(flag(lambda: len(received) == 1))
        await outbox_empty(runtime)
    finally:
        await inside.stop()
        await outside.stop()
    sent = json.loads(request.get_data(as_text=True))
    assert {key: sent[key] for key in ("product", "version", "d", "event", "data", "coreid")} == {
        "product": str(pid),
        "version": "5",
        "d": inside.device_id,
        "event": "brew/inside",
        "data": "1",
        "coreid": inside.device_id,
    }
    assert len(httpserver.log) == 1  # the device outside the product fired nothing
    assert names == ["brew/inside", "hook-sent/brew/inside", f"{topic}/inside/0"]
    assert received == [(f"{topic}/inside/0", '{"ok":1}')]


async def test_a_product_hook_outlives_the_member_who_made_it(
    client: httpx.AsyncClient, runtime: Runtime, owner: Account, httpserver: HTTPServer
) -> None:
    developer = await make_account(client, "dev@example.com")
    joined = await client.post(
        "/v1/products/brew-bot/team",
        json={"username": developer.email, "role": "Developer"},
        headers=owner.auth,
    )
    assert joined.status_code == 200, joined.text
    made = await client.post(
        HOOKS, json={"event": "ping", "url": httpserver.url_for("/in")}, headers=developer.auth
    )
    assert made.status_code == 201, made.text
    gone = await client.request(
        "DELETE", "/v1/user", json={"password": developer.password}, headers=developer.auth
    )
    assert gone.status_code == 200, gone.text
    assert [hook["id"] for hook in (await client.get(HOOKS, headers=owner.auth)).json()] == [
        made.json()["id"]
    ]
    httpserver.expect_request("/in").respond_with_data("ok")
    published = await client.post("/v1/products/brew-bot/events", json={"name": "ping"}, headers=owner.auth)
    assert published.status_code == 200
    (request,) = await requests_seen(httpserver, 1)
    assert request.form["event"] == "ping"
