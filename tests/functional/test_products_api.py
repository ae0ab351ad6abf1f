"""
Products and their teams over HTTP (catalogue §14, decision 0016): create/list/get/edit (id or slug), team
members with roles, API users with scopes and their one token.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from tests.support.api import Account, make_account

from devicecloud.runtime import Runtime


@pytest.fixture
async def owner(client: httpx.AsyncClient) -> Account:
    return await make_account(client, "owner@example.com")


@pytest.fixture
async def bob(client: httpx.AsyncClient) -> Account:
    return await make_account(client, "bob@example.com")


async def create_product(client: httpx.AsyncClient, account: Account, **body: Any) -> dict[str, Any]:
    response = await client.post(
        "/v1/products", json={"name": "Brew Bot", "platform_id": 6, **body}, headers=account.auth
    )
    assert 201 == response.status_code, response.text
    product: dict[str, Any] = response.json()["product"]
    return product


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_a_product_is_created_with_its_creator_as_owner(
    client: httpx.AsyncClient, owner: Account
) -> None:
    product = await create_product(client, owner, description="Coffee", settings={"quarantine": True})
    assert product["slug"] == "brew-bot"
    assert product["user"] == "owner@example.com"
    assert product["platform_id"] == 6
    assert product["settings"]["quarantine"] is True
    assert product["groups"] == []
    team = (await client.get("/v1/products/brew-bot/team", headers=owner.auth)).json()
    assert team == {
        "ok": True,
        "team": [
            {
                "_id": team["team"][0]["_id"],
                "username": "owner@example.com",
                "role": {"id": "owner", "name": "Owner"},
            }
        ],
    }


async def test_slugs_are_made_unique_and_checked(client: httpx.AsyncClient, owner: Account) -> None:
    first = await create_product(client, owner)
    second = await create_product(client, owner)
    assert (first["slug"], second["slug"]) == ("brew-bot", "brew-bot-2")
    taken = await client.post(
        "/v1/products", json={"name": "X", "platform_id": 6, "slug": "brew-bot"}, headers=owner.auth
    )
    assert taken.status_code == 400
    for bad in ("12345", "Upper", "a--b", "-a", "x" * 64):
        response = await client.post(
            "/v1/products", json={"name": "X", "platform_id": 6, "slug": bad}, headers=owner.auth
        )
        assert response.status_code == 400, bad
    assert (await client.get("/v1/products", headers=owner.auth)).json()["products"][1][
        "slug"
    ] == "brew-bot-2"


@pytest.mark.parametrize(
    "body",
    [{"platform_id": 6}, {"name": "", "platform_id": 6}, {"name": "X"}, {"name": "X", "platform_id": -1}],
)
async def test_bad_creation_changes_nothing(
    client: httpx.AsyncClient, owner: Account, body: dict[str, Any]
) -> None:
    response = await client.post("/v1/products", json=body, headers=owner.auth)
    assert response.status_code == 400
    assert response.json()["ok"] is False
    assert (await client.get("/v1/user/products", headers=owner.auth)).json() == {"products": []}


async def test_get_by_id_or_slug_and_edit_settings(client: httpx.AsyncClient, owner: Account) -> None:
    product = await create_product(client, owner)
    by_id = (await client.get(f"/v1/products/{product['id']}", headers=owner.auth)).json()["product"]
    by_slug = (await client.get("/v1/products/BREW-BOT", headers=owner.auth)).json()["product"]
    assert by_id == by_slug == product
    edited = await client.put(
        f"/v1/products/{product['id']}",
        data={"name": "Brew Bot 2", "settings[quarantine]": "true"},
        headers=owner.auth,
    )
    assert edited.status_code == 200, edited.text
    assert edited.json()["product"]["name"] == "Brew Bot 2"
    assert edited.json()["product"]["settings"]["quarantine"] is True
    assert (await client.put("/v1/products/brew-bot", json={}, headers=owner.auth)).status_code == 400


async def test_other_users_cannot_see_or_probe_a_product(
    client: httpx.AsyncClient, owner: Account, bob: Account
) -> None:
    product = await create_product(client, owner)
    for ref in (str(product["id"]), "brew-bot"):
        foreign = await client.get(f"/v1/products/{ref}", headers=bob.auth)
        missing = await client.get(f"/v1/products/{ref}9", headers=bob.auth)
        assert foreign.status_code == missing.status_code == 404
        assert foreign.json()["error_description"] == missing.json()["error_description"]
    assert (await client.get("/v1/user/products", headers=bob.auth)).json() == {"products": []}


async def test_invite_change_role_and_remove(client: httpx.AsyncClient, owner: Account, bob: Account) -> None:
    await create_product(client, owner)
    invited = await client.post(
        "/v1/products/brew-bot/team",
        json={"username": "BOB@example.com", "role": "View-only"},
        headers=owner.auth,
    )
    assert invited.status_code == 200, invited.text
    assert invited.json() == {
        "ok": True,
        "invited": {"username": "bob@example.com", "role": {"id": "view_only", "name": "View-only"}},
    }
    assert [p["slug"] for p in (await client.get("/v1/products", headers=bob.auth)).json()["products"]] == [
        "brew-bot"
    ]
    # View-only reads, but cannot create groups or manage the team.
    assert (await client.get("/v1/products/brew-bot/team", headers=bob.auth)).status_code == 200
    refused = await client.post("/v1/products/brew-bot/groups", json={"name": "eu"}, headers=bob.auth)
    assert refused.status_code == 403
    assert refused.json()["error"] == "Permission Denied"
    promoted = await client.put(
        "/v1/products/brew-bot/team/bob@example.com", json={"role": "developer"}, headers=owner.auth
    )
    assert promoted.json()["updated"]["role"] == {"id": "developer", "name": "Developer"}
    assert (
        await client.post("/v1/products/brew-bot/groups", json={"name": "eu"}, headers=bob.auth)
    ).status_code == 201
    # Nobody becomes Owner, and the Owner stays.
    for role in ("Owner", "root"):
        response = await client.put(
            "/v1/products/brew-bot/team/bob@example.com", json={"role": role}, headers=owner.auth
        )
        assert response.status_code == 400
    assert (
        await client.delete("/v1/products/brew-bot/team/owner@example.com", headers=owner.auth)
    ).status_code == 403
    removed = await client.delete("/v1/products/brew-bot/team/bob@example.com", headers=owner.auth)
    assert removed.json() == {"ok": True}
    assert (await client.get("/v1/products/brew-bot", headers=bob.auth)).status_code == 404
    assert (
        await client.delete("/v1/products/brew-bot/team/bob@example.com", headers=owner.auth)
    ).status_code == 404


async def test_inviting_needs_an_existing_account_once(
    client: httpx.AsyncClient, owner: Account, bob: Account
) -> None:
    await create_product(client, owner)
    unknown = await client.post(
        "/v1/products/brew-bot/team", json={"username": "nobody@x.io"}, headers=owner.auth
    )
    assert unknown.status_code == 404
    first = await client.post("/v1/products/brew-bot/team", json={"username": bob.email}, headers=owner.auth)
    assert first.json()["invited"]["role"]["name"] == "Administrator"
    again = await client.post("/v1/products/brew-bot/team", json={"username": bob.email}, headers=owner.auth)
    assert again.status_code == 400


async def test_api_users_carry_their_scopes_and_one_token(
    client: httpx.AsyncClient, owner: Account, runtime: Runtime
) -> None:
    await create_product(client, owner)
    created = await client.post(
        "/v1/products/brew-bot/team",
        json={"friendly_name": "Fleet server", "scopes": ["groups:list", "products:get"]},
        headers=owner.auth,
    )
    assert created.status_code == 200, created.text
    assert created.headers["cache-control"] == "no-store"
    body = created.json()["created"]
    assert body["is_programmatic"] is True
    assert body["username"].startswith("brew-bot+")
    assert body["username"].endswith("@api.particle.io")
    token = body["tokens"][0]["token"]
    assert (await client.get("/v1/products/brew-bot/groups", headers=bearer(token))).json() == {"groups": []}
    assert (await client.get("/v1/products/brew-bot", headers=bearer(token))).status_code == 200
    assert (await client.get("/v1/products/brew-bot/team", headers=bearer(token))).status_code == 403
    # An API user owns nothing of its own: user routes refuse it.
    for path in ("/v1/devices", "/v1/user", "/v1/integrations"):
        response = await client.get(path, headers=bearer(token))
        assert response.status_code == 403, path
        assert response.json()["error_description"] == "API users are not allowed to call this endpoint"
    team = (await client.get("/v1/products/brew-bot/team", headers=owner.auth)).json()["team"]
    assert team[1]["friendly_name"] == "Fleet server"
    assert team[1]["scopes"] == ["groups:list", "products:get"]
    # Updating returns a fresh token with the new scopes; the old one stops at once.
    updated = await client.put(
        f"/v1/products/brew-bot/team/{body['username']}",
        json={"scopes": ["teams.users:list"]},
        headers=owner.auth,
    )
    fresh = updated.json()["updated"]["tokens"][0]["token"]
    assert fresh != token
    assert (await client.get("/v1/products/brew-bot/groups", headers=bearer(token))).status_code == 401
    assert (await client.get("/v1/products/brew-bot/team", headers=bearer(fresh))).status_code == 200
    assert (await client.get("/v1/products/brew-bot/groups", headers=bearer(fresh))).status_code == 403
    # Removing revokes.
    assert (
        await client.delete(f"/v1/products/brew-bot/team/{body['username']}", headers=owner.auth)
    ).json() == {"ok": True}
    assert (await client.get("/v1/products/brew-bot/team", headers=bearer(fresh))).status_code == 401


@pytest.mark.parametrize(
    "body",
    [
        {"friendly_name": "x", "scopes": []},
        {"friendly_name": "x", "scopes": ["devices:fly"]},
        {"friendly_name": "", "scopes": ["devices:list"]},
        {"scopes": ["devices:list"]},
        {"friendly_name": "x", "scopes": "*:*"},
    ],
)
async def test_bad_api_users_are_refused(
    client: httpx.AsyncClient, owner: Account, body: dict[str, Any]
) -> None:
    await create_product(client, owner)
    response = await client.post("/v1/products/brew-bot/team", json=body, headers=owner.auth)
    assert response.status_code == 400
    team = (await client.get("/v1/products/brew-bot/team", headers=owner.auth)).json()["team"]
    assert len(team) == 1


async def test_an_api_user_cannot_grant_more_than_it_has(client: httpx.AsyncClient, owner: Account) -> None:
    await create_product(client, owner)
    created = await client.post(
        "/v1/products/brew-bot/team",
        json={"friendly_name": "hr", "scopes": ["teams.users:invite", "groups:list"]},
        headers=owner.auth,
    )
    token = created.json()["created"]["tokens"][0]["token"]
    wider = await client.post(
        "/v1/products/brew-bot/team",
        json={"friendly_name": "wider", "scopes": ["groups:create"]},
        headers=bearer(token),
    )
    assert wider.status_code == 403
    narrower = await client.post(
        "/v1/products/brew-bot/team",
        json={"friendly_name": "n", "scopes": ["groups:list"]},
        headers=bearer(token),
    )
    assert narrower.status_code == 200


async def test_deleting_a_members_account_keeps_the_product(
    client: httpx.AsyncClient, owner: Account, bob: Account
) -> None:
    await create_product(client, owner)
    await client.post("/v1/products/brew-bot/team", json={"username": bob.email}, headers=owner.auth)
    deleted = await client.request("DELETE", "/v1/user", json={"password": bob.password}, headers=bob.auth)
    assert deleted.status_code == 200, deleted.text
    team = (await client.get("/v1/products/brew-bot/team", headers=owner.auth)).json()["team"]
    assert [m["username"] for m in team] == ["owner@example.com"]


async def test_creation_and_edit_are_marked_as_extensions(client: httpx.AsyncClient) -> None:
    spec = (await client.get("/openapi.json")).json()
    assert spec["paths"]["/v1/products"]["post"]["x-devicecloud-extension"] is True
    assert spec["paths"]["/v1/products/{product}"]["put"]["x-devicecloud-extension"] is True
    assert "x-devicecloud-extension" not in spec["paths"]["/v1/products/{product}"]["get"]
