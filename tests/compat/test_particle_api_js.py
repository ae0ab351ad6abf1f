"""
particle-api-js, unchanged, against a running devicecloud: login, user info, sign-up, token revocation.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
from tests.support.server import LiveServer

pytestmark = pytest.mark.compat


@pytest.fixture(scope="module")
def flow(node_dir: Path, server: LiveServer) -> dict[str, Any]:
    result = subprocess.run(
        ["node", str(node_dir / "auth_flow.js"), server.url, server.email, server.password, "js@example.com"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert 0 == result.returncode, result.stderr
    return dict(json.loads(result.stdout))


def test_login(flow: dict[str, Any]) -> None:
    """login() gets the documented token reply."""
    body = flow["login"]["body"]
    assert (True, "bearer", 7776000) == (flow["login"]["ok"], body["token_type"], body["expires_in"])


def test_bad_login_surfaces_the_description(flow: dict[str, Any]) -> None:
    """A failed login rejects with the server's error_description."""
    assert (False, 400, "User credentials are invalid") == (
        flow["badLogin"]["ok"],
        flow["badLogin"]["statusCode"],
        flow["badLogin"]["message"],
    )


def test_get_user_info(flow: dict[str, Any], server: LiveServer) -> None:
    """getUserInfo() returns the account."""
    assert server.email == flow["getUserInfo"]["body"]["username"]


def test_create_user(flow: dict[str, Any]) -> None:
    """createUser() signs up an account that can then log in."""
    assert (True, {"ok": True}) == (flow["createUser"]["ok"], flow["createUser"]["body"])
    assert 40 == len(flow["secondToken"])


def test_delete_access_token(flow: dict[str, Any]) -> None:
    """deleteAccessToken() (no credentials, the token in the path) revokes it."""
    assert {"ok": True} == flow["deleteAccessToken"]["body"]
    assert (False, 401) == (flow["afterDelete"]["ok"], flow["afterDelete"]["statusCode"])


def test_delete_current_access_token(flow: dict[str, Any]) -> None:
    """deleteCurrentAccessToken() revokes the token it is called with."""
    assert {"ok": True} == flow["deleteCurrentAccessToken"]["body"]
    assert (False, 401) == (flow["afterDeleteCurrent"]["ok"], flow["afterDeleteCurrent"]["statusCode"])
