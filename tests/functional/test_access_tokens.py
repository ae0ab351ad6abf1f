"""
Listing and revoking tokens (catalogue §2.2–§2.6), and that one user never touches another's tokens.
"""

from __future__ import annotations

import httpx
import pytest
from tests.support.api import Account, login, make_account


@pytest.fixture
async def ada(client: httpx.AsyncClient) -> Account:
    return await make_account(client, "ada@example.com")


@pytest.fixture
async def bob(client: httpx.AsyncClient) -> Account:
    return await make_account(client, "bob@example.com")


async def works(client: httpx.AsyncClient, token: str) -> bool:
    response = await client.get("/v1/user", headers={"Authorization": f"Bearer {token}"})
    return response.status_code == 200


async def test_list_needs_basic_auth(client: httpx.AsyncClient, ada: Account) -> None:
    """The list takes the account's username and password, not a bearer token."""
    assert 401 == (await client.get("/v1/access_tokens", headers=ada.auth)).status_code
    wrong = await client.get("/v1/access_tokens", auth=(ada.email, "not the password"))
    assert (401, "unauthorized") == (wrong.status_code, wrong.json()["error"])


async def test_list_shows_hints_not_tokens(client: httpx.AsyncClient, ada: Account) -> None:
    """Each entry has token (a hint), expires_at and client; the full secret is never shown again."""
    response = await client.get("/v1/access_tokens", auth=(ada.email, ada.password))
    entries = response.json()
    assert 200 == response.status_code
    assert [{"token": f"{ada.token[:8]}...", "client": "particle"}] == [
        {"token": e["token"], "client": e["client"]} for e in entries
    ]
    assert entries[0]["expires_at"].endswith("Z")
    assert ada.token not in response.text


async def test_users_see_only_their_tokens(client: httpx.AsyncClient, ada: Account, bob: Account) -> None:
    """Bob's list holds Bob's token only."""
    entries = (await client.get("/v1/access_tokens", auth=(bob.email, bob.password))).json()
    assert [f"{bob.token[:8]}..."] == [e["token"] for e in entries]


async def test_revoke_with_the_token_itself(client: httpx.AsyncClient, ada: Account) -> None:
    """DELETE /v1/access_tokens/:token with no other credentials (particle-api-js, particle-cli)."""
    response = await client.delete(f"/v1/access_tokens/{ada.token}")
    assert (200, {"ok": True}) == (response.status_code, response.json())
    assert not await works(client, ada.token)


async def test_revoke_by_hint_with_basic_auth(client: httpx.AsyncClient, ada: Account) -> None:
    """The owner may revoke by the hint the list shows."""
    response = await client.delete(f"/v1/access_tokens/{ada.token[:8]}...", auth=(ada.email, ada.password))
    assert 200 == response.status_code
    assert not await works(client, ada.token)


async def test_other_user_cannot_revoke(client: httpx.AsyncClient, ada: Account, bob: Account) -> None:
    """Bob, authenticated as himself, can revoke neither Ada's token nor its hint."""
    by_token = await client.delete(f"/v1/access_tokens/{ada.token}", auth=(bob.email, bob.password))
    by_hint = await client.delete(f"/v1/access_tokens/{ada.token[:8]}", auth=(bob.email, bob.password))
    assert (404, 404) == (by_token.status_code, by_hint.status_code)
    assert await works(client, ada.token)


async def test_revoke_unknown_token(client: httpx.AsyncClient) -> None:
    """An unknown token is a JSON 404 and changes nothing."""
    response = await client.delete("/v1/access_tokens/" + "b" * 40)
    assert (404, False) == (response.status_code, response.json()["ok"])


async def test_revoke_hint_without_credentials_is_refused(client: httpx.AsyncClient, ada: Account) -> None:
    """A hint alone is not a credential."""
    response = await client.delete(f"/v1/access_tokens/{ada.token[:8]}")
    assert 404 == response.status_code
    assert await works(client, ada.token)


async def test_current_token_info(client: httpx.AsyncClient, ada: Account) -> None:
    """GET /v1/access_tokens/current describes the token used."""
    body = (await client.get("/v1/access_tokens/current", headers=ada.auth)).json()
    assert {"client": "particle", "client_id": "particle", "scopes": [], "orgs": []} == {
        k: body[k] for k in ("client", "client_id", "scopes", "orgs")
    }
    assert body["expires_at"].endswith("Z")


async def test_delete_current(client: httpx.AsyncClient, ada: Account) -> None:
    """DELETE /v1/access_tokens/current revokes only the token used."""
    other = (await login(client, ada.email, ada.password)).json()["access_token"]
    response = await client.delete("/v1/access_tokens/current", headers=ada.auth)
    assert (200, {"ok": True}) == (response.status_code, response.json())
    assert (False, True) == (await works(client, ada.token), await works(client, other))


async def test_delete_all(client: httpx.AsyncClient, ada: Account, bob: Account) -> None:
    """DELETE /v1/access_tokens revokes every token of the caller and none of anyone else's."""
    other = (await login(client, ada.email, ada.password)).json()["access_token"]
    response = await client.delete("/v1/access_tokens", headers=ada.auth)
    assert {"ok": True} == response.json()
    assert (False, False, True) == (
        await works(client, ada.token),
        await works(client, other),
        await works(client, bob.token),
    )
