"""
A product's OAuth clients over HTTP (issue 11 section 4, catalogue §3 product twins): the client belongs
to the product, not to the member who made it (it outlives that member's account, review W1), and its
client-credentials tokens act for the product, within the client's scopes.
"""

from __future__ import annotations

import httpx
from tests.support.api import Account, make_account

from devicecloud.runtime import Runtime

CLIENTS = "/v1/products/brew-bot/clients"


async def grant(client: httpx.AsyncClient, client_id: str, secret: str) -> httpx.Response:
    return await client.post(
        "/oauth/token", data={"grant_type": "client_credentials"}, auth=(client_id, secret)
    )


async def product_token(client: httpx.AsyncClient, client_id: str, secret: str) -> dict[str, str]:
    granted = await grant(client, client_id, secret)
    assert granted.status_code == 200, granted.text
    return {"Authorization": f"Bearer {granted.json()['access_token']}"}


async def test_create_list_and_act_for_the_product(
    client: httpx.AsyncClient, runtime: Runtime, owner: Account
) -> None:
    created = await client.post(
        CLIENTS, data={"name": "Brew server", "type": "installed"}, headers=owner.auth
    )
    assert created.status_code == 200, created.text
    made = created.json()["client"]
    product = (await client.get("/v1/products/brew-bot", headers=owner.auth)).json()["product"]["id"]
    assert (made["name"], made["type"], made["product_id"]) == ("Brew server", "installed", product)
    assert made["id"].startswith("brew-server-")
    assert len(made["secret"]) == 40
    listed = (await client.get(CLIENTS, headers=owner.auth)).json()
    assert listed == {
        "ok": True,
        "clients": [{"name": "Brew server", "type": "installed", "id": made["id"], "product_id": product}],
    }
    # Not the creator's own client.
    assert (await client.get("/v1/clients", headers=owner.auth)).json()["clients"] == []
    for method in ("PUT", "DELETE"):
        foreign = await client.request(
            method, f"/v1/clients/{made['id']}", json={"name": "x"}, headers=owner.auth
        )
        assert foreign.status_code == 404
    auth = await product_token(client, made["id"], made["secret"])
    assert (await client.get("/v1/products/brew-bot", headers=auth)).status_code == 200
    assert (
        await client.post("/v1/products/brew-bot/events", json={"name": "x"}, headers=auth)
    ).status_code == 200
    # It acts for this product only, and never as a person.
    other = await make_account(client, "other@example.com")
    await client.post("/v1/products", json={"name": "Other", "platform_id": 6}, headers=other.auth)
    assert (await client.get("/v1/products/other", headers=auth)).status_code == 404
    assert (await client.get("/v1/devices", headers=auth)).status_code == 403


async def test_scopes_narrow_its_tokens_and_updates_are_checked(
    client: httpx.AsyncClient, owner: Account
) -> None:
    made = (
        await client.post(
            CLIENTS, json={"name": "Reader", "type": "installed", "scope": "events:get"}, headers=owner.auth
        )
    ).json()["client"]
    assert made["scope"] == "events:get"
    auth = await product_token(client, made["id"], made["secret"])
    refused = await client.post("/v1/products/brew-bot/events", json={"name": "x"}, headers=auth)
    assert (refused.status_code, refused.json()["error"]) == (403, "Permission Denied")
    bad = await client.put(f"{CLIENTS}/{made['id']}", json={"scope": "nonsense:yes"}, headers=owner.auth)
    assert bad.status_code == 400
    renamed = await client.put(
        f"{CLIENTS}/{made['id']}", json={"name": "Sender", "scope": "events:send"}, headers=owner.auth
    )
    assert renamed.json()["client"] == {
        "name": "Sender",
        "type": "installed",
        "id": made["id"],
        "scope": "events:send",
        "product_id": made["product_id"],
    }
    auth = await product_token(client, made["id"], made["secret"])
    assert (
        await client.post("/v1/products/brew-bot/events", json={"name": "x"}, headers=auth)
    ).status_code == 200
    web = await client.post(CLIENTS, json={"name": "Site", "type": "web"}, headers=owner.auth)
    assert web.status_code == 400
    assert len((await client.get(CLIENTS, headers=owner.auth)).json()["clients"]) == 1


async def test_deleting_revokes_its_tokens(client: httpx.AsyncClient, owner: Account) -> None:
    made = (
        await client.post(CLIENTS, json={"name": "Gone", "type": "installed"}, headers=owner.auth)
    ).json()["client"]
    auth = await product_token(client, made["id"], made["secret"])
    deleted = await client.delete(f"{CLIENTS}/{made['id']}", headers=owner.auth)
    assert deleted.status_code == 204
    assert (await client.get("/v1/products/brew-bot", headers=auth)).status_code == 401
    assert (await grant(client, made["id"], made["secret"])).status_code != 200
    assert (await client.delete(f"{CLIENTS}/{made['id']}", headers=owner.auth)).status_code == 404


async def test_a_product_client_outlives_the_member_who_made_it(
    client: httpx.AsyncClient, owner: Account
) -> None:
    developer = await make_account(client, "dev@example.com")
    joined = await client.post(
        "/v1/products/brew-bot/team",
        json={"username": developer.email, "role": "Developer"},
        headers=owner.auth,
    )
    assert joined.status_code == 200, joined.text
    made = (
        await client.post(CLIENTS, json={"name": "Fleet", "type": "installed"}, headers=developer.auth)
    ).json()["client"]
    gone = await client.request(
        "DELETE", "/v1/user", json={"password": developer.password}, headers=developer.auth
    )
    assert gone.status_code == 200, gone.text
    assert [c["id"] for c in (await client.get(CLIENTS, headers=owner.auth)).json()["clients"]] == [
        made["id"]
    ]
    auth = await product_token(client, made["id"], made["secret"])
    assert (await client.get("/v1/products/brew-bot", headers=auth)).status_code == 200


async def test_other_products_clients_are_not_found(client: httpx.AsyncClient, owner: Account) -> None:
    other = await make_account(client, "other@example.com")
    await client.post("/v1/products", json={"name": "Other", "platform_id": 6}, headers=other.auth)
    theirs = (
        await client.post(
            "/v1/products/other/clients", json={"name": "Theirs", "type": "installed"}, headers=other.auth
        )
    ).json()["client"]
    users = (
        await client.post("/v1/clients", json={"name": "Mine", "type": "installed"}, headers=owner.auth)
    ).json()["client"]
    for client_id in (theirs["id"], users["id"]):
        changed = await client.put(f"{CLIENTS}/{client_id}", json={"name": "taken"}, headers=owner.auth)
        assert changed.status_code == 404
        assert (await client.delete(f"{CLIENTS}/{client_id}", headers=owner.auth)).status_code == 404
    assert (await client.get("/v1/products/other/clients", headers=other.auth)).json()["clients"][0][
        "name"
    ] == ("Theirs")
    assert (await client.get("/v1/clients", headers=owner.auth)).json()["clients"][0]["name"] == "Mine"
