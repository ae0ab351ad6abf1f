"""
The ``devicecloud`` command: the quick start's ``serve`` as a real process, and operator account commands.
"""

from __future__ import annotations

import signal
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner
from tests.support.server import live_server

from devicecloud.cli import main

FAST = {
    "DEVICECLOUD_PASSWORD_TIME_COST": "1",
    "DEVICECLOUD_PASSWORD_MEMORY_COST": "8",
    "DEVICECLOUD_PASSWORD_PARALLELISM": "1",
}


def test_serve_creates_the_first_account_and_prints_how_to_try_it(tmp_path: Path) -> None:
    """On an empty data dir serve makes the database and an account, prints the try-it lines, and logs in."""
    data = tmp_path / "fresh"
    with live_server(data, email="first@example.com", password="first password") as server:
        response = httpx.post(
            f"{server.url}/oauth/token",
            data={"grant_type": "password", "username": server.email, "password": server.password},
            auth=("particle", "particle"),
        )
        assert 200 == response.status_code
        server.process.send_signal(signal.SIGTERM)
        assert 0 == server.process.wait(timeout=15)
        printed = server.output()
    assert (data / "devicecloud.db").is_file()
    assert "email:    first@example.com" in printed
    assert f"particle config local apiUrl {server.url}" in printed
    assert "curl -u particle:particle -d grant_type=password -d username=first@example.com" in printed


def test_second_start_keeps_accounts(tmp_path: Path) -> None:
    """A restart reuses the database: the first account still logs in and no new one is announced."""
    with live_server(tmp_path, email="first@example.com", password="first password"):
        pass
    with live_server(tmp_path, email="other@example.com", password="other password") as server:
        ok = httpx.post(
            f"{server.url}/oauth/token",
            data={"grant_type": "password", "username": "first@example.com", "password": "first password"},
            auth=("particle", "particle"),
        )
        assert 200 == ok.status_code
        server.process.send_signal(signal.SIGINT)
        assert 0 == server.process.wait(timeout=15)
        assert "Accounts already exist" in server.output()


@pytest.fixture
def runner(tmp_path: Path) -> CliRunner:
    return CliRunner(env={**FAST, "DEVICECLOUD_DATA_DIR": str(tmp_path)})


def test_users_commands(runner: CliRunner) -> None:
    """create, list, set-password and delete manage accounts from the shell."""
    created = runner.invoke(main, ["users", "create", "ops@example.com", "--password", "ops password"])
    assert (0, "created ops@example.com\n") == (created.exit_code, created.output)
    listed = runner.invoke(main, ["users", "list"])
    assert listed.output.startswith("ops@example.com\tmfa=off")
    changed = runner.invoke(
        main, ["users", "set-password", "ops@example.com", "--password", "new ops password"]
    )
    assert 0 == changed.exit_code
    deleted = runner.invoke(main, ["users", "delete", "ops@example.com", "--yes"])
    assert 0 == deleted.exit_code
    assert "" == runner.invoke(main, ["users", "list"]).output


def test_users_create_generates_a_password(runner: CliRunner) -> None:
    """Without --password a strong one is generated and printed once."""
    result = runner.invoke(main, ["users", "create", "gen@example.com"])
    assert 0 == result.exit_code
    assert len(result.output.rsplit(" ", 1)[1].strip()) >= 12


def test_users_errors_are_clean(runner: CliRunner) -> None:
    """Bad input and unknown users end with a one-line error and exit 1, not a traceback."""
    bad = runner.invoke(main, ["users", "create", "not-an-email", "--password", "long enough"])
    assert (1, "Error: username must be a valid email address\n") == (bad.exit_code, bad.output)
    missing = runner.invoke(main, ["users", "delete", "ghost@example.com", "--yes"])
    assert (1, "Error: No user ghost@example.com\n") == (missing.exit_code, missing.output)


def test_bad_setting_is_a_usage_error(tmp_path: Path) -> None:
    """An invalid DEVICECLOUD_* value is reported, not a traceback."""
    result = CliRunner(env={"DEVICECLOUD_HTTP_PORT": "not-a-port"}).invoke(main, ["db", "upgrade"])
    assert 2 == result.exit_code
    assert "invalid setting" in result.output


def test_products_commands(runner: CliRunner) -> None:
    """products create makes an account's product (Owner, slug); products list shows every product."""
    runner.invoke(main, ["users", "create", "ops@example.com", "--password", "ops password"])
    created = runner.invoke(
        main,
        [
            "products",
            "create",
            "Brew Bot",
            "--owner",
            "OPS@example.com",
            "--platform-id",
            "6",
            "--quarantine",
        ],
    )
    assert (0, "created product 1 (brew-bot) owned by OPS@example.com\n") == (
        created.exit_code,
        created.output,
    )
    listed = runner.invoke(main, ["products", "list"])
    assert "1\tbrew-bot\tplatform=6\tquarantine=on\towner=ops@example.com\tBrew Bot\n" == listed.output
    unknown = runner.invoke(
        main, ["products", "create", "X", "--owner", "nobody@example.com", "--platform-id", "6"]
    )
    assert unknown.exit_code != 0
    bad = runner.invoke(
        main, ["products", "create", "X", "--owner", "ops@example.com", "--platform-id", "6", "--slug", "12"]
    )
    assert bad.exit_code != 0
    assert "slug" in bad.output
