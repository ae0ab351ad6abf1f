"""
Fixtures several functional test files share.
"""

from __future__ import annotations

import httpx
import pytest
from tests.support.api import Account, make_account


@pytest.fixture
async def owner(client: httpx.AsyncClient) -> Account:
    """An account that owns the product "Brew Bot" (slug ``brew-bot``, a Photon product)."""
    account = await make_account(client, "owner@example.com")
    created = await client.post(
        "/v1/products", json={"name": "Brew Bot", "platform_id": 6}, headers=account.auth
    )
    assert created.status_code == 201, created.text
    return account
