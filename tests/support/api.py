"""
Factories that go through the API's own doors: sign up, log in, call with a token.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import httpx


@dataclass
class Account:
    email: str
    password: str
    token: str

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


async def login(client: httpx.AsyncClient, email: str, password: str, **extra: Any) -> httpx.Response:
    """
    ``POST /oauth/token`` with the password grant and the built-in ``particle`` client over HTTP Basic.
    """
    data = {"grant_type": "password", "username": email, "password": password, **extra}
    return await client.post("/oauth/token", data=data, auth=("particle", "particle"))


async def make_account(
    client: httpx.AsyncClient, email: str, password: str = "correct horse battery"
) -> Account:
    """
    Sign up through ``POST /v1/users`` and log in.
    """
    created = await client.post("/v1/users", json={"username": email, "password": password})
    assert 200 == created.status_code, created.text
    response = await login(client, email, password)
    assert 200 == response.status_code, response.text
    return Account(email=email, password=password, token=response.json()["access_token"])
