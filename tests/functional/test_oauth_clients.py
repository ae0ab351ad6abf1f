"""
OAuth clients (catalogue §3): create/list/update/delete, secrets shown once, scopes enforced on their tokens.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from sqlalchemy import text
from tests.support.api import Account, make_account

from devicecloud.runtime import Runtime


@pytest.fixture
async def ada(client: httpx.AsyncClient) -> Account:
    return await make_account(client, "ada@example.com")


async def create(client: httpx.AsyncClient, account: Account, **body: Any) -> httpx.Response:
    return await client.post(
        "/v1/clients", json={"name": "My App", "type": "installed", **body}, headers=account.auth
    )


async def client_token(
    client: httpx.AsyncClient, client_id: str, secret: str, **extra: str
) -> httpx.Response:
    return await client.post(
        "/oauth/token", data={"grant_type": "client_credentials", **extra}, auth=(client_id, secret)
    )


async def test_create_shows_the_secret_once(
    client: httpx.AsyncClient, ada: Account, runtime: Runtime
) -> None:
    """The secret comes back on creation only and is stored hashed."""
    response = await create(client, ada)
    created = response.json()["client"]
    assert (200, True) == (response.status_code, response.json()["ok"])
    assert created["id"].startswith("my-app-")
    assert 40 == len(created["secret"])
    listed = (await client.get("/v1/clients", headers=ada.auth)).json()
    assert [{"name": "My App", "type": "installed", "id": created["id"]}] == listed["clients"]
    async with runtime.store.engine.connect() as conn:
        rows = (await conn.execute(text("SELECT * FROM oauth_clients"))).all()
    assert created["secret"] not in repr(rows)


async def test_web_client_needs_redirect_uri(client: httpx.AsyncClient, ada: Account) -> None:
    """type=web without redirect_uri is a 400; with one it is kept."""
    assert 400 == (await create(client, ada, type="web")).status_code
    response = await create(client, ada, type="web", redirect_uri="https://app.example.com/cb")
    assert "https://app.example.com/cb" == response.json()["client"]["redirect_uri"]


async def test_bad_type_and_scope(client: httpx.AsyncClient, ada: Account) -> None:
    """Unknown types and scopes are refused."""
    assert 400 == (await create(client, ada, type="desktop")).status_code
    assert 400 == (await create(client, ada, scope="rockets:launch")).status_code
    assert [] == (await client.get("/v1/clients", headers=ada.auth)).json()["clients"]


async def test_update_and_delete(client: httpx.AsyncClient, ada: Account) -> None:
    """PUT renames and rescopes (none clears); DELETE answers 204 and revokes the client's tokens."""
    created = (await create(client, ada, scope="customers:create")).json()["client"]
    renamed = await client.put(
        f"/v1/clients/{created['id']}", json={"name": "Renamed", "scope": "none"}, headers=ada.auth
    )
    assert {"name": "Renamed", "type": "installed", "id": created["id"]} == renamed.json()["client"]
    token = (await client_token(client, created["id"], created["secret"])).json()["access_token"]
    deleted = await client.delete(f"/v1/clients/{created['id']}", headers=ada.auth)
    assert (204, b"") == (deleted.status_code, deleted.content)
    after = await client.get("/v1/clients", headers={"Authorization": f"Bearer {token}"})
    assert 401 == after.status_code
    assert 400 == (await client_token(client, created["id"], created["secret"])).status_code


async def test_other_users_clients_are_invisible(client: httpx.AsyncClient, ada: Account) -> None:
    """Bob can neither list, change nor delete Ada's client."""
    created = (await create(client, ada)).json()["client"]
    bob = await make_account(client, "bob@example.com")
    assert [] == (await client.get("/v1/clients", headers=bob.auth)).json()["clients"]
    assert (
        404
        == (
            await client.put(f"/v1/clients/{created['id']}", json={"name": "x"}, headers=bob.auth)
        ).status_code
    )
    assert 404 == (await client.delete(f"/v1/clients/{created['id']}", headers=bob.auth)).status_code


async def test_client_credentials_token_carries_the_client_scopes(
    client: httpx.AsyncClient, ada: Account
) -> None:
    """A scoped client's token may call what its scopes cover and nothing else."""
    created = (await create(client, ada, scope="clients:list")).json()["client"]
    response = await client_token(client, created["id"], created["secret"])
    body = response.json()
    assert (200, "clients:list") == (response.status_code, body["scope"])
    headers = {"Authorization": f"Bearer {body['access_token']}"}
    assert 200 == (await client.get("/v1/clients", headers=headers)).status_code
    refused = await client.post("/v1/clients", json={"name": "n", "type": "installed"}, headers=headers)
    assert (400, "invalid_scope") == (refused.status_code, refused.json()["error"])
    person_only = await client.get("/v1/user", headers=headers)
    assert (403, "unauthorized") == (person_only.status_code, person_only.json()["error"])


async def test_client_credentials_cannot_widen_scope(client: httpx.AsyncClient, ada: Account) -> None:
    """Asking for a scope the client lacks is invalid_scope."""
    created = (await create(client, ada, scope="clients:list")).json()["client"]
    response = await client_token(client, created["id"], created["secret"], scope="clients:create")
    assert (400, "invalid_scope") == (response.status_code, response.json()["error"])


async def test_wrong_client_secret(client: httpx.AsyncClient, ada: Account) -> None:
    """A registered client must present its own secret."""
    created = (await create(client, ada)).json()["client"]
    response = await client_token(client, created["id"], "0" * 40)
    assert {
        "error": "invalid_client",
        "error_description": "Client credentials are invalid",
    } == response.json()
