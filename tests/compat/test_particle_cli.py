"""
particle-cli, unchanged, against a running devicecloud: config, login, whoami, token create/revoke, logout.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import httpx
import pytest
from tests.support.server import LiveServer

pytestmark = pytest.mark.compat
TOKEN = re.compile(r"\b[0-9a-f]{40}\b")


def particle(
    node_dir: Path, env: dict[str, str], *args: str, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(node_dir / "node_modules" / ".bin" / "particle"), *args],
        env=env,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def token_works(server: LiveServer, token: str) -> bool:
    return httpx.get(f"{server.url}/v1/user", headers={"Authorization": f"Bearer {token}"}).status_code == 200


@pytest.fixture
def logged_in(node_dir: Path, cli_env: dict[str, str], server: LiveServer) -> str:
    """Point a fresh CLI profile at the server and log in the way the README says."""
    assert 0 == particle(node_dir, cli_env, "config", "local", "apiUrl", server.url).returncode
    assert 0 == particle(node_dir, cli_env, "config", "local").returncode
    result = particle(node_dir, cli_env, "login", "--username", server.email, "--password", server.password)
    assert 0 == result.returncode, result.stdout + result.stderr
    assert "Successfully completed login" in result.stdout
    config = json.loads((Path(cli_env["HOME"]) / ".particle" / "local.config.json").read_text())
    return str(config["access_token"])


def test_login_stores_a_working_token(server: LiveServer, logged_in: str) -> None:
    """The token the CLI saved authenticates against the API."""
    assert TOKEN.fullmatch(logged_in)
    assert token_works(server, logged_in)


def test_wrong_password_fails(node_dir: Path, cli_env: dict[str, str], server: LiveServer) -> None:
    """A bad password makes login fail and saves no token."""
    particle(node_dir, cli_env, "config", "local", "apiUrl", server.url)
    particle(node_dir, cli_env, "config", "local")
    result = particle(node_dir, cli_env, "login", "--username", server.email, "--password", "wrong password")
    assert 0 != result.returncode
    assert "User credentials are invalid" in result.stderr


def test_whoami(node_dir: Path, cli_env: dict[str, str], server: LiveServer, logged_in: str) -> None:
    """whoami reads GET /v1/user and prints the username."""
    result = particle(node_dir, cli_env, "whoami")
    assert server.email in result.stdout


def test_token_create_and_revoke(
    node_dir: Path, cli_env: dict[str, str], server: LiveServer, logged_in: str
) -> None:
    """token create (password on stdin) prints a new working token; token revoke ends it."""
    created = particle(node_dir, cli_env, "token", "create", stdin=server.password + "\n")
    assert 0 == created.returncode, created.stderr
    assert "New access token expires on" in created.stdout
    new_token = TOKEN.findall(created.stdout)[-1]
    assert token_works(server, new_token)
    revoked = particle(node_dir, cli_env, "token", "revoke", new_token)
    assert "Successfully revoked all provided tokens" in revoked.stdout
    assert not token_works(server, new_token)
    assert token_works(server, logged_in)


def test_token_create_never_expires(
    node_dir: Path, cli_env: dict[str, str], server: LiveServer, logged_in: str
) -> None:
    """--never-expires asks for expires_in=0 and the CLI reports a token that never expires."""
    created = particle(node_dir, cli_env, "token", "create", "--never-expires", stdin=server.password + "\n")
    assert "New access token never expires" in created.stdout


def test_logout_revokes_the_token(
    node_dir: Path, cli_env: dict[str, str], server: LiveServer, logged_in: str
) -> None:
    """logout calls DELETE /v1/access_tokens/current; the saved token stops working."""
    result = particle(node_dir, cli_env, "logout")
    assert 0 == result.returncode, result.stderr
    assert f"You have been logged out from {server.email}" in result.stdout
    assert not token_works(server, logged_in)
