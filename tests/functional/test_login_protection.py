"""
Guessing passwords and flooding mailboxes (issue 10 item 7): which client address the limits count, the
per-account login lockout beside the per-IP one, and the per-address limit on password-reset mail.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import ValidationError
from tests.support.api import make_account
from tests.support.notifier import RecordingNotifier
from tests.support.server import live_server

from devicecloud.settings import Settings

PROXY = "203.0.113.7"  # the in-process client's address (tests/conftest.py)
LIMITED: dict[str, Any] = {
    "rate_limits_enabled": True,
    "rate_limit_all": "1000/minute",
    "rate_limit_token": "1000/minute",
    "rate_limit_account": "1000/minute",
    "login_failure_limit": 3,
    "login_account_failure_limit": 5,
    "login_account_lockout_seconds": 900,
    "rate_limit_reset_mail": "2/hour",
    # Behind a proxy, as in production: X-Forwarded-For says which client each request comes from.
    "trusted_proxies": ["203.0.113.0/24"],
}


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    return LIMITED


async def login_from(client: httpx.AsyncClient, address: str, username: str, password: str) -> httpx.Response:
    return await client.post(
        "/oauth/token",
        data={"grant_type": "password", "username": username, "password": password},
        auth=("particle", "particle"),
        headers={"X-Forwarded-For": address},
    )


async def fail_from_many_addresses(client: httpx.AsyncClient, username: str, count: int) -> None:
    """One failed login from each of ``count`` addresses: never enough to lock any address."""
    for n in range(count):
        reply = await login_from(client, f"198.51.100.{n}", username, "not the password")
        assert (400, "invalid_grant") == (reply.status_code, reply.json()["error"])


# ---------------------------------------------------------------- per-account lockout


async def test_account_lockout_across_addresses(client: httpx.AsyncClient) -> None:
    """
    Five failures for one account from five addresses lock that account's password logins (429, as the
    per-IP lockout answers) even with the right password from a fresh address; other accounts, the same
    addresses and the account's existing tokens are untouched.
    """
    ada = await make_account(client, "ada@example.com")
    bob = await make_account(client, "bob@example.com")
    await fail_from_many_addresses(client, "ada@example.com", 5)
    for address in ("192.0.2.1", "192.0.2.2"):  # a right password does not unlock it
        locked = await login_from(client, address, "ADA@example.com ", ada.password)
        assert (429, False, "rate_limit_exceeded") == (
            locked.status_code,
            locked.json()["ok"],
            locked.json()["error"],
        )
        assert 900 == int(locked.headers["retry-after"])
    assert 200 == (await login_from(client, "198.51.100.0", bob.email, bob.password)).status_code
    assert 200 == (await client.get("/v1/user", headers=ada.auth)).status_code


async def test_unknown_accounts_lock_alike(client: httpx.AsyncClient) -> None:
    """An address nobody has locks the same way, so the lockout tells nothing about which accounts exist."""
    await make_account(client, "ada@example.com")
    answers = []
    for username in ("ada@example.com", "nobody@example.com"):
        await fail_from_many_addresses(client, username, 5)
        reply = await login_from(client, "192.0.2.1", username, "correct horse battery")
        answers.append((reply.status_code, reply.json()))
    assert answers[0] == answers[1]
    assert 429 == answers[0][0]


async def test_password_reset_lifts_the_account_lockout(
    client: httpx.AsyncClient, notifier: RecordingNotifier
) -> None:
    """Whoever reads the account's mail can set a new password and log in at once."""
    ada = await make_account(client, "ada@example.com")
    await fail_from_many_addresses(client, ada.email, 5)
    assert 429 == (await login_from(client, "192.0.2.1", ada.email, ada.password)).status_code
    assert 200 == (await client.post("/v1/user/password-reset", json={"username": ada.email})).status_code
    done = await client.put(
        "/v1/user/password-reset", json={"token": notifier.sent[-1].token, "password": "a new password"}
    )
    assert 200 == done.status_code, done.text
    assert 200 == (await login_from(client, "192.0.2.1", ada.email, "a new password")).status_code


async def test_http_basic_guesses_count_too(client: httpx.AsyncClient) -> None:
    """
    `GET /v1/access_tokens` checks a password over HTTP Basic: its failures lock the account like failed
    logins, and a locked account is refused there too, right password or not.
    """
    ada = await make_account(client, "ada@example.com")
    for n in range(5):
        guess = await client.get(
            "/v1/access_tokens",
            auth=(ada.email, "not the password"),
            headers={"X-Forwarded-For": f"198.51.100.{n}"},
        )
        assert 401 == guess.status_code
    assert 429 == (await login_from(client, "192.0.2.1", ada.email, ada.password)).status_code
    listed = await client.get(
        "/v1/access_tokens", auth=(ada.email, ada.password), headers={"X-Forwarded-For": "192.0.2.2"}
    )
    assert (429, "rate_limit_exceeded") == (listed.status_code, listed.json()["error"])


# ---------------------------------------------------------------- reset mail


async def test_reset_mail_is_limited_per_address(
    client: httpx.AsyncClient, notifier: RecordingNotifier
) -> None:
    """
    Two reset mails per address per hour, however the address is written and from any client; more answer
    429 in the API's shape, the same for an address without an account; other addresses are not held up.
    """
    ada = await make_account(client, "ada@example.com")
    bob = await make_account(client, "bob@example.com")
    replies: dict[str, list[tuple[int, Any]]] = {}
    for address in (ada.email, "nobody@example.com"):
        replies[address] = []
        for n, written in enumerate([address, address.upper(), f" {address}", address]):
            reply = await client.post(
                "/v1/user/password-reset",
                json={"username": written},
                headers={"X-Forwarded-For": f"198.51.100.{n}"},
            )
            replies[address].append((reply.status_code, reply.json()))
    assert replies[ada.email] == replies["nobody@example.com"]
    assert [200, 200, 429, 429] == [status for status, _ in replies[ada.email]]
    assert {"ok", "error", "error_description"} == set(replies[ada.email][2][1])
    assert "rate_limit_exceeded" == replies[ada.email][2][1]["error"]
    assert [ada.email, ada.email] == [mail.email for mail in notifier.sent]
    assert 200 == (await client.post("/v1/user/password-reset", json={"username": bob.email})).status_code
    assert bob.email == notifier.sent[-1].email


# ---------------------------------------------------------------- which address counts


def failed_logins(url: str, email: str, forwarded_for: list[str]) -> None:
    for address in forwarded_for:
        reply = httpx.post(
            f"{url}/oauth/token",
            data={"grant_type": "password", "username": email, "password": "not the password"},
            auth=("particle", "particle"),
            headers={"X-Forwarded-For": address},
        )
        assert 400 == reply.status_code, reply.text


def right_login(url: str, email: str, password: str, forwarded_for: str) -> int:
    reply = httpx.post(
        f"{url}/oauth/token",
        data={"grant_type": "password", "username": email, "password": password},
        auth=("particle", "particle"),
        headers={"X-Forwarded-For": forwarded_for},
    )
    return reply.status_code


@pytest.mark.slow
def test_forwarded_for_is_ignored_from_untrusted_clients(tmp_path: Path) -> None:
    """
    `devicecloud serve` with no trusted proxy: a local client naming a new address in X-Forwarded-For for
    every guess is still one client, and the per-IP lockout bites.
    """
    with live_server(tmp_path, DEVICECLOUD_LOGIN_FAILURE_LIMIT="3") as server:
        failed_logins(server.url, server.email, ["198.51.100.1", "198.51.100.2", "198.51.100.3"])
        assert 429 == right_login(server.url, server.email, server.password, "198.51.100.4")


@pytest.mark.slow
def test_forwarded_for_is_honoured_from_a_trusted_proxy(tmp_path: Path) -> None:
    """Behind a configured proxy, each forwarded client has its own lockout."""
    with live_server(
        tmp_path, DEVICECLOUD_LOGIN_FAILURE_LIMIT="3", DEVICECLOUD_TRUSTED_PROXIES="10.0.0.0/8, 127.0.0.1"
    ) as server:
        failed_logins(server.url, server.email, ["198.51.100.1"] * 3)
        assert 429 == right_login(server.url, server.email, server.password, "198.51.100.1")
        assert 200 == right_login(server.url, server.email, server.password, "198.51.100.2")


def test_trusted_proxies_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    """Comma-separated from the environment; an entry that is no address or network is refused at start."""
    monkeypatch.setenv("DEVICECLOUD_TRUSTED_PROXIES", "10.0.0.0/8, 127.0.0.1,::1")
    assert ["10.0.0.0/8", "127.0.0.1", "::1"] == Settings().trusted_proxies
    monkeypatch.delenv("DEVICECLOUD_TRUSTED_PROXIES")
    assert [] == Settings().trusted_proxies
    with pytest.raises(ValidationError, match=r"proxy\.example\.com"):
        Settings(trusted_proxies="10.0.0.0/8,proxy.example.com")
