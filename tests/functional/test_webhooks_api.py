"""
The integrations API (catalogue §10.1) and its legacy /v1/webhooks twin, over HTTP: shapes, validation,
ownership.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from tests.support.api import Account, make_account

HOOK = {"integration_type": "Webhook", "event": "temp", "url": "https://example.com/in"}


async def create(client: httpx.AsyncClient, account: Account, **fields: Any) -> httpx.Response:
    return await client.post("/v1/integrations", json={**HOOK, **fields}, headers=account.auth)


async def test_create_get_list_edit_delete(client: httpx.AsyncClient) -> None:
    ada = await make_account(client, "ada@example.com")
    created = await create(
        client, ada, requestType="get", deviceID="3F002B000D47343432313031", noDefaults="true"
    )
    assert 201 == created.status_code, created.text
    body = created.json()
    hook_id = body["id"]
    assert 24 == len(hook_id)
    assert {
        "ok": True,
        "id": hook_id,
        "event": "temp",
        "url": "https://example.com/in",
        "requestType": "GET",
        "deviceID": "3f002b000d47343432313031",
        "integration_type": "Webhook",
        "hookUrl": f"http://127.0.0.1:8080/v1/webhooks/{hook_id}",
    }.items() <= body.items()
    assert body["created_at"].endswith("Z")

    listed = (await client.get("/v1/integrations", headers=ada.auth)).json()
    assert [hook_id] == [item["id"] for item in listed]
    assert {"event": "temp", "integration_type": "Webhook", "requestType": "GET"}.items() <= listed[0].items()

    got = await client.get(f"/v1/integrations/{hook_id}", headers=ada.auth)
    assert 200 == got.status_code
    assert ([], True) == (got.json()["integration"]["logs"], got.json()["integration"]["noDefaults"])

    # PUT replaces the whole configuration: what is not given goes back to its default.
    edited = await client.put(
        f"/v1/integrations/{hook_id}",
        json={"url": "https://example.org/x", "json": {"a": "{{b}}"}},
        headers=ada.auth,
    )
    assert 200 == edited.status_code, edited.text
    integration = edited.json()["integration"]
    assert ("temp", "https://example.org/x", "POST", {"a": "{{b}}"}) == (
        integration["event"],
        integration["url"],
        integration["requestType"],
        integration["json"],
    )
    assert "deviceID" not in integration
    assert integration["noDefaults"] is False

    deleted = await client.delete(f"/v1/integrations/{hook_id}", headers=ada.auth)
    assert (204, b"") == (deleted.status_code, deleted.content)
    assert [] == (await client.get("/v1/integrations", headers=ada.auth)).json()
    assert 404 == (await client.get(f"/v1/integrations/{hook_id}", headers=ada.auth)).status_code


async def test_legacy_webhooks_routes(client: httpx.AsyncClient) -> None:
    ada = await make_account(client, "ada@example.com")
    created = await client.post(
        "/v1/webhooks",
        json={"event": "temp", "url": "https://example.com/in", "deviceId": "3f002b000d47343432313031"},
        headers=ada.auth,
    )
    assert 201 == created.status_code, created.text
    body = created.json()
    assert (True, "temp", "temp") == (body["ok"], body["event"], body["name"])
    assert body["hookUrl"].endswith(f"/v1/webhooks/{body['id']}")
    listed = (await client.get("/v1/webhooks", headers=ada.auth)).json()
    assert [(body["id"], "temp", "https://example.com/in", "3f002b000d47343432313031")] == [
        (item["id"], item["event"], item["url"], item["deviceID"]) for item in listed
    ]
    got = await client.get(f"/v1/webhooks/{body['id']}", headers=ada.auth)
    assert (200, []) == (got.status_code, got.json()["logs"])
    deleted = await client.delete(f"/v1/webhooks/{body['id']}", headers=ada.auth)
    assert (200, {"ok": True}) == (deleted.status_code, deleted.json())


async def test_lists_and_create_replies_never_show_credentials(client: httpx.AsyncClient) -> None:
    ada = await make_account(client, "ada@example.com")
    secret = {"auth": {"username": "u", "password": "hunter2"}, "headers": {"X-Api-Key": "k3y"}}
    created = await create(client, ada, **secret)
    legacy = await client.post("/v1/webhooks", json={**HOOK, **secret}, headers=ada.auth)
    listed = [await client.get(path, headers=ada.auth) for path in ("/v1/integrations", "/v1/webhooks")]
    for text in (created.text, legacy.text, *(reply.text for reply in listed)):
        assert "hunter2" not in text
        assert "k3y" not in text
    full = (await client.get(f"/v1/integrations/{created.json()['id']}", headers=ada.auth)).json()
    assert secret.items() <= full["integration"].items()  # the owner's own GET shows the whole configuration


async def test_form_encoded_create_with_nested_objects(client: httpx.AsyncClient) -> None:
    ada = await make_account(client, "ada@example.com")
    created = await client.post(
        "/v1/webhooks",
        data={"event": "temp", "url": "https://example.com/in", "json[value]": "{{{PARTICLE_EVENT_VALUE}}}"},
        headers=ada.auth,
    )
    assert 201 == created.status_code, created.text
    got = await client.get(f"/v1/webhooks/{created.json()['id']}", headers=ada.auth)
    assert {"value": "{{{PARTICLE_EVENT_VALUE}}}"} == got.json()["json"]


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"event": ""}, "event is required"),
        ({"event": "x" * 65}, "at most 64"),
        ({"url": None}, "url is required"),
        ({"url": "ftp://example.com"}, "http:// or https://"),
        ({"requestType": "PATCH"}, "requestType must be one of"),
        ({"deviceID": "not-a-device"}, "deviceID must be a device id"),
        ({"json": {"a": 1}, "form": {"b": 2}}, "mutually exclusive"),
        ({"headers": "X-A: 1"}, "headers must be an object"),
        ({"noDefaults": "maybe"}, "noDefaults must be true or false"),
        ({"json": {"a": "{{#open}}"}}, "bad template"),
        ({"integration_type": "AzureIotHub"}, "not supported by this server"),
        ({"integration_type": "GoogleMaps"}, "not supported by this server"),
        ({"integration_type": "Carrier pigeon"}, "Unknown integration_type"),
    ],
)
async def test_bad_input_is_refused_and_changes_nothing(
    client: httpx.AsyncClient, fields: dict[str, Any], message: str
) -> None:
    ada = await make_account(client, "ada@example.com")
    response = await create(client, ada, **fields)
    assert 400 == response.status_code, response.text
    body = response.json()
    assert body["ok"] is False
    assert message in body["error_description"] or message in body["error"]
    assert [] == (await client.get("/v1/integrations", headers=ada.auth)).json()


async def test_another_users_hook_looks_like_a_missing_one(client: httpx.AsyncClient) -> None:
    ada = await make_account(client, "ada@example.com")
    bob = await make_account(client, "bob@example.com")
    hook_id = (await create(client, ada)).json()["id"]
    missing = "0123456789abcdef01234567"
    for target in (hook_id, missing):
        replies = [
            await client.get(f"/v1/integrations/{target}", headers=bob.auth),
            await client.put(
                f"/v1/integrations/{target}", json={"url": "https://evil.example"}, headers=bob.auth
            ),
            await client.post(f"/v1/integrations/{target}/test", headers=bob.auth),
            await client.delete(f"/v1/integrations/{target}", headers=bob.auth),
            await client.get(f"/v1/webhooks/{target}", headers=bob.auth),
            await client.delete(f"/v1/webhooks/{target}", headers=bob.auth),
        ]
        assert [404] * 6 == [r.status_code for r in replies]
        assert {(r.json()["error"], r.json()["error_description"]) for r in replies} == {
            ("Not Found", "Integration not found")
        }
    assert [] == (await client.get("/v1/integrations", headers=bob.auth)).json()
    got = (await client.get(f"/v1/integrations/{hook_id}", headers=ada.auth)).json()["integration"]
    assert "https://example.com/in" == got["url"]


async def test_requires_a_token(client: httpx.AsyncClient) -> None:
    for response in (await client.get("/v1/integrations"), await client.post("/v1/webhooks", json=HOOK)):
        assert (400, "invalid_request") == (response.status_code, response.json()["error"])
