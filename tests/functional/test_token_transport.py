"""
Where the access token may travel (catalogue §1.2): header, query or form body, exactly one at a time.
"""

from __future__ import annotations

import httpx
import pytest
from tests.support.api import Account, make_account

FORM = {"Content-Type": "application/x-www-form-urlencoded"}


@pytest.fixture
async def ada(client: httpx.AsyncClient) -> Account:
    return await make_account(client, "ada@example.com")


def oauth_error(error: str, description: str) -> dict[str, str]:
    return {"error": error, "error_description": description}


async def test_bearer_header(client: httpx.AsyncClient, ada: Account) -> None:
    """Authorization: Bearer <token> authenticates."""
    response = await client.get("/v1/user", headers=ada.auth)
    assert (200, "ada@example.com") == (response.status_code, response.json()["username"])


async def test_query_string(client: httpx.AsyncClient, ada: Account) -> None:
    """?access_token= authenticates (legacy CLI, pyparticleio)."""
    response = await client.get("/v1/user", params={"access_token": ada.token})
    assert 200 == response.status_code


async def test_form_body(client: httpx.AsyncClient, ada: Account) -> None:
    """access_token in a urlencoded PUT body authenticates."""
    response = await client.put(
        "/v1/user", content=f"access_token={ada.token}&account_info[first_name]=Ada", headers=FORM
    )
    assert 200 == response.status_code
    assert "Ada" == response.json()["account_info"]["first_name"]


async def test_no_token(client: httpx.AsyncClient) -> None:
    """No token anywhere: 400 invalid_request."""
    response = await client.get("/v1/user")
    assert (400, oauth_error("invalid_request", "The access token was not found")) == (
        response.status_code,
        response.json(),
    )


async def test_two_methods(client: httpx.AsyncClient, ada: Account) -> None:
    """Header and query together: 400, with the OAuth server's exact text (two spaces included)."""
    response = await client.get("/v1/user", params={"access_token": ada.token}, headers=ada.auth)
    expected = oauth_error(
        "invalid_request",
        "Only one method may be used to authenticate at a time (Auth header,  GET or POST).",
    )
    assert (400, expected) == (response.status_code, response.json())


async def test_header_and_body(client: httpx.AsyncClient, ada: Account) -> None:
    """Header and form body together: the same 400."""
    response = await client.put("/v1/user", content=f"access_token={ada.token}", headers={**ada.auth, **FORM})
    assert 400 == response.status_code
    assert response.json()["error_description"].startswith("Only one method")


async def test_malformed_header(client: httpx.AsyncClient, ada: Account) -> None:
    """A header that is not 'Bearer <token>': 400 Malformed auth header."""
    response = await client.get("/v1/user", headers={"Authorization": f"Token {ada.token}"})
    assert (400, oauth_error("invalid_request", "Malformed auth header")) == (
        response.status_code,
        response.json(),
    )


async def test_body_token_on_get(client: httpx.AsyncClient, ada: Account) -> None:
    """A GET carrying the token in its body: 400."""
    response = await client.request("GET", "/v1/user", content=f"access_token={ada.token}", headers=FORM)
    expected = oauth_error("invalid_request", "Method cannot be GET When putting the token in the body.")
    assert (400, expected) == (response.status_code, response.json())


async def test_body_token_must_be_urlencoded(client: httpx.AsyncClient, ada: Account) -> None:
    """A JSON body carrying the token: 400."""
    response = await client.put("/v1/user", json={"access_token": ada.token, "account_info": {}})
    expected = oauth_error(
        "invalid_request",
        "When putting the token in the body, content type must be application/x-www-form-urlencoded.",
    )
    assert (400, expected) == (response.status_code, response.json())


async def test_unknown_token(client: httpx.AsyncClient) -> None:
    """A token the server never issued: 401 invalid_token."""
    response = await client.get("/v1/user", headers={"Authorization": "Bearer " + "a" * 40})
    expected = oauth_error("invalid_token", "The access token provided is invalid.")
    assert (401, expected) == (response.status_code, response.json())
    assert "no-store" == response.headers["cache-control"]
