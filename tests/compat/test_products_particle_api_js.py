"""
particle-api-js's product calls, unchanged, against a running devicecloud (issue 11 section 7, the calls of
sections 1 and 2): listProducts, getProduct (id or slug), listTeamMembers, inviteTeamMember,
removeTeamMember, as the owner and as a stranger.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
from tests.compat.conftest import NodeFlow
from tests.support.server import LiveServer

pytestmark = pytest.mark.compat

MEMBER = "member@example.com"
STRANGER = ("stranger@example.com", "stranger password")


@pytest.fixture(scope="module")
def product(server: LiveServer) -> dict[str, Any]:
    """
    A product of the server's account (made through the devicecloud extension), and two more accounts.
    """
    with httpx.Client(base_url=server.url, timeout=30) as http:
        for username, password in ((MEMBER, "member password"), STRANGER):
            assert (
                http.post("/v1/users", json={"username": username, "password": password}).status_code == 200
            )
        login = http.post(
            "/oauth/token",
            data={"grant_type": "password", "username": server.email, "password": server.password},
            auth=("particle", "particle"),
        )
        created = http.post(
            "/v1/products",
            json={"name": "Brew Bot", "platform_id": 6},
            headers={"Authorization": f"Bearer {login.json()['access_token']}"},
        )
    assert created.status_code == 201, created.text
    return dict(created.json()["product"])


@pytest.fixture(scope="module")
def owner_flow(node_dir: Path, server: LiveServer, product: dict[str, Any]) -> dict[str, Any]:
    return NodeFlow(node_dir, server, "products_flow.js")(
        "owner", product["slug"], str(product["id"]), MEMBER
    )


@pytest.fixture(scope="module")
def stranger_flow(node_dir: Path, server: LiveServer, product: dict[str, Any]) -> dict[str, Any]:
    flow = NodeFlow(node_dir, server, "products_flow.js")
    flow.command[-2:] = list(STRANGER)
    return flow("stranger", product["slug"])


def test_list_and_get_products(
    owner_flow: dict[str, Any], product: dict[str, Any], server: LiveServer
) -> None:
    """listProducts() lists the owner's product; getProduct() finds it by slug and by id alike."""
    assert owner_flow["listProducts"]["body"] == {"products": [product]}
    assert owner_flow["getBySlug"]["body"] == owner_flow["getById"]["body"] == {"product": product}
    assert product["user"] == server.email
    assert (False, 404) == (owner_flow["missing"]["ok"], owner_flow["missing"]["statusCode"])


def test_invite_list_and_remove_team_members(owner_flow: dict[str, Any], server: LiveServer) -> None:
    """inviteTeamMember() adds an account, listTeamMembers() shows its role, removeTeamMember() drops it."""
    assert [m["username"] for m in owner_flow["teamBefore"]["body"]["team"]] == [server.email]
    assert owner_flow["invite"]["body"] == {
        "ok": True,
        "invited": {"username": MEMBER, "role": {"id": "administrator", "name": "Administrator"}},
    }
    team = owner_flow["teamAfterInvite"]["body"]["team"]
    assert [(m["username"], m["role"]["name"]) for m in team] == [
        (server.email, "Owner"),
        (MEMBER, "Administrator"),
    ]
    assert owner_flow["remove"]["body"] == {"ok": True}
    assert [m["username"] for m in owner_flow["teamAfterRemove"]["body"]["team"]] == [server.email]


def test_invite_errors_reach_the_caller(owner_flow: dict[str, Any]) -> None:
    """A second invitation and an unknown account reject with the server's description."""
    assert (False, 400) == (owner_flow["inviteAgain"]["ok"], owner_flow["inviteAgain"]["statusCode"])
    assert "already a member" in owner_flow["inviteAgain"]["message"]
    assert (False, 404) == (owner_flow["inviteUnknown"]["ok"], owner_flow["inviteUnknown"]["statusCode"])
    assert "existing accounts" in owner_flow["inviteUnknown"]["message"]


def test_a_stranger_sees_nothing(stranger_flow: dict[str, Any]) -> None:
    """Another account lists no products and gets 404 for this one, whatever it calls."""
    assert stranger_flow["listProducts"]["body"] == {"products": []}
    for call in ("getProduct", "listTeamMembers", "inviteTeamMember"):
        assert (False, 404) == (stranger_flow[call]["ok"], stranger_flow[call]["statusCode"]), call
