"""
The account endpoints (catalogue §6): sign-up, profile, deletion and password reset.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from tests.support.api import Account, login, make_account
from tests.support.clock import FakeClock
from tests.support.devices import connect_device
from tests.support.notifier import RecordingNotifier

from devicecloud.runtime import Runtime


@pytest.fixture
async def ada(client: httpx.AsyncClient) -> Account:
    return await make_account(client, "ada@example.com")


async def test_sign_up_then_log_in(client: httpx.AsyncClient) -> None:
    """POST /v1/users answers {ok:true} and the new account can log in."""
    response = await client.post(
        "/v1/users",
        json={"username": "new@example.com", "password": "long enough", "account_info": {"first_name": "N"}},
    )
    assert (200, {"ok": True}) == (response.status_code, response.json())
    assert 200 == (await login(client, "new@example.com", "long enough")).status_code


async def test_sign_up_as_form_with_nested_account_info(client: httpx.AsyncClient) -> None:
    """Form bodies with account_info[first_name]= fill the nested object."""
    await client.post(
        "/v1/users",
        data={"username": "form@example.com", "password": "long enough", "account_info[first_name]": "Form"},
    )
    token = (await login(client, "form@example.com", "long enough")).json()["access_token"]
    me = (await client.get("/v1/user", headers={"Authorization": f"Bearer {token}"})).json()
    assert "Form" == me["account_info"]["first_name"]


async def test_sign_up_as_multipart(client: httpx.AsyncClient) -> None:
    """Multipart bodies are accepted like any other."""
    response = await client.post(
        "/v1/users",
        data={"username": "multi@example.com", "password": "long enough"},
        files={"x": b"ignored"},
    )
    assert 200 == response.status_code


@pytest.mark.parametrize(
    ("body", "error"),
    [
        ({"username": "not-an-email", "password": "long enough"}, "invalid_username"),
        ({"username": "short@example.com", "password": "short"}, "invalid_password"),
        ({"password": "long enough"}, "invalid_request"),
        ({"username": "x@example.com", "password": "long enough", "account_info": "nope"}, "invalid_request"),
    ],
)
async def test_sign_up_rejects_bad_input(client: httpx.AsyncClient, body: dict[str, Any], error: str) -> None:
    """Bad sign-ups get a 400 in the Particle shape and create nothing."""
    response = await client.post("/v1/users", json=body)
    payload = response.json()
    assert (400, False, error) == (response.status_code, payload["ok"], payload["error"])
    assert payload["error_description"]


async def test_duplicate_sign_up(client: httpx.AsyncClient, ada: Account) -> None:
    """A taken email (in any case) is refused."""
    response = await client.post("/v1/users", json={"username": "ADA@example.com", "password": "long enough"})
    assert 400 == response.status_code
    assert "already taken" in response.json()["error_description"]


@pytest.mark.parametrize("settings_overrides", [{"signup_open": False}])
async def test_closed_sign_up(client: httpx.AsyncClient) -> None:
    """With sign-up closed, POST /v1/users is refused and creates nothing."""
    response = await client.post("/v1/users", json={"username": "a@example.com", "password": "long enough"})
    assert (403, "signup_closed") == (response.status_code, response.json()["error"])
    assert 400 == (await login(client, "a@example.com", "long enough")).status_code


async def test_get_user_shape(client: httpx.AsyncClient, ada: Account) -> None:
    """GET /v1/user returns the documented fields."""
    body = (await client.get("/v1/user", headers=ada.auth)).json()
    assert "ada@example.com" == body["username"]
    assert {"enabled": False} == body["mfa"]
    assert {"subscription_ids", "account_info", "wifi_device_count", "cellular_device_count"} <= set(body)


async def test_device_counts(client: httpx.AsyncClient, ada: Account, runtime: Runtime) -> None:
    """
    wifi_device_count and cellular_device_count count the devices the user owns by platform: an online
    Photon is one Wi-Fi device; a newly claimed Electron shows at once as a cellular one.
    """
    photon = await connect_device(client, ada, runtime)  # platform 6
    try:
        body = (await client.get("/v1/user", headers=ada.auth)).json()
        assert (1, 0) == (body["wifi_device_count"], body["cellular_device_count"])
        electron = await connect_device(client, ada, runtime, platform_id=10)
        try:
            body = (await client.get("/v1/user", headers=ada.auth)).json()
            assert (1, 1) == (body["wifi_device_count"], body["cellular_device_count"])
        finally:
            await electron.stop()
    finally:
        await photon.stop()
    bob = await make_account(client, "bob@example.com")
    body = (await client.get("/v1/user", headers=bob.auth)).json()
    assert (0, 0) == (body["wifi_device_count"], body["cellular_device_count"])


async def test_change_password_needs_current_password(client: httpx.AsyncClient, ada: Account) -> None:
    """Without the right current_password nothing changes."""
    response = await client.put(
        "/v1/user", json={"password": "brand new pass", "current_password": "wrong"}, headers=ada.auth
    )
    assert 403 == response.status_code
    assert 200 == (await login(client, ada.email, ada.password)).status_code


async def test_change_password_revokes_other_tokens(client: httpx.AsyncClient, ada: Account) -> None:
    """A new password works, the old does not, and other sessions end (the caller's stays)."""
    other = (await login(client, ada.email, ada.password)).json()["access_token"]
    response = await client.put(
        "/v1/user", json={"password": "brand new pass", "current_password": ada.password}, headers=ada.auth
    )
    assert ("User's password updated.", True) == (response.json()["message"], response.json()["ok"])
    assert 400 == (await login(client, ada.email, ada.password)).status_code
    assert 200 == (await login(client, ada.email, "brand new pass")).status_code
    assert 401 == (await client.get("/v1/user", headers={"Authorization": f"Bearer {other}"})).status_code
    assert 200 == (await client.get("/v1/user", headers=ada.auth)).status_code


async def test_change_username(client: httpx.AsyncClient, ada: Account) -> None:
    """The email changes with the current password; logging in uses the new one."""
    response = await client.put(
        "/v1/user", json={"username": "ada2@example.com", "current_password": ada.password}, headers=ada.auth
    )
    assert "ada2@example.com" == response.json()["username"]
    assert 200 == (await login(client, "ada2@example.com", ada.password)).status_code


async def test_delete_account(client: httpx.AsyncClient, ada: Account) -> None:
    """DELETE /v1/user with the password removes the account and its tokens."""
    wrong = await client.request("DELETE", "/v1/user", json={"password": "nope"}, headers=ada.auth)
    assert 403 == wrong.status_code
    response = await client.request("DELETE", "/v1/user", json={"password": ada.password}, headers=ada.auth)
    assert {"ok": True, "message": "User's account has been deleted."} == response.json()
    assert 401 == (await client.get("/v1/user", headers=ada.auth)).status_code
    assert 400 == (await login(client, ada.email, ada.password)).status_code


async def test_password_reset_round_trip(
    client: httpx.AsyncClient, ada: Account, notifier: RecordingNotifier
) -> None:
    """The reset token reaches the notifier once; it sets a new password, is single-use, and ends sessions."""
    response = await client.post("/v1/user/password-reset", json={"username": ada.email})
    assert {"ok": True, "message": "Password reset email sent."} == response.json()
    assert [ada.email] == [s.email for s in notifier.sent]
    token = notifier.sent[0].token
    done = await client.put("/v1/user/password-reset", json={"token": token, "password": "after reset!"})
    assert (200, True) == (done.status_code, done.json()["ok"])
    assert 200 == (await login(client, ada.email, "after reset!")).status_code
    assert 401 == (await client.get("/v1/user", headers=ada.auth)).status_code
    again = await client.put("/v1/user/password-reset", json={"token": token, "password": "third time!"})
    assert (400, "invalid_token") == (again.status_code, again.json()["error"])


async def test_password_reset_for_unknown_email_looks_the_same(
    client: httpx.AsyncClient, notifier: RecordingNotifier
) -> None:
    """Unknown emails get the same reply, and nothing is sent."""
    response = await client.post("/v1/user/password-reset", json={"username": "ghost@example.com"})
    assert (200, True) == (response.status_code, response.json()["ok"])
    assert [] == notifier.sent


async def test_password_reset_token_expires(
    client: httpx.AsyncClient, ada: Account, notifier: RecordingNotifier, clock: FakeClock
) -> None:
    """An hour later the reset token no longer works."""
    await client.post("/v1/user/password-reset", json={"username": ada.email})
    clock.advance(3601)
    response = await client.put(
        "/v1/user/password-reset", json={"token": notifier.sent[0].token, "password": "too late now"}
    )
    assert 400 == response.status_code
    assert 200 == (await login(client, ada.email, ada.password)).status_code
