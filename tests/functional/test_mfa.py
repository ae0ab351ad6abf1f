"""
Multi-factor authentication: enrolment, the mfa_required login step, recovery codes, disabling.
"""

from __future__ import annotations

import httpx
import pyotp
import pytest
from tests.support.api import Account, login, make_account
from tests.support.clock import FakeClock


@pytest.fixture
async def ada(client: httpx.AsyncClient) -> Account:
    return await make_account(client, "ada@example.com")


async def enroll(client: httpx.AsyncClient, account: Account, clock: FakeClock) -> tuple[str, list[str]]:
    start = (await client.get("/v1/user/mfa-enable", headers=account.auth)).json()
    otp = pyotp.TOTP(start["secret"]).at(clock.now())
    confirm = await client.post(
        "/v1/user/mfa-enable", json={"mfa_token": start["mfa_token"], "otp": otp}, headers=account.auth
    )
    assert 200 == confirm.status_code, confirm.text
    assert confirm.json()["enrolled"] is True
    return start["secret"], confirm.json()["tokens"]


async def test_enrolment_needs_a_valid_code(client: httpx.AsyncClient, ada: Account) -> None:
    """A wrong first code leaves MFA off."""
    start = (await client.get("/v1/user/mfa-enable", headers=ada.auth)).json()
    assert start["qr_url"].startswith("otpauth://totp/")
    response = await client.post(
        "/v1/user/mfa-enable", json={"mfa_token": start["mfa_token"], "otp": "000000"}, headers=ada.auth
    )
    assert 400 == response.status_code
    assert {"enabled": False} == (await client.get("/v1/user", headers=ada.auth)).json()["mfa"]


async def test_login_with_otp(client: httpx.AsyncClient, ada: Account, clock: FakeClock) -> None:
    """With MFA on, the password grant answers 403 mfa_required, and the OTP grant finishes the login."""
    secret, _codes = await enroll(client, ada, clock)
    first = await login(client, ada.email, ada.password)
    body = first.json()
    assert (403, "mfa_required") == (first.status_code, body["error"])
    assert "Multifactor authentication required" == body["error_description"]
    otp = pyotp.TOTP(secret).at(clock.now())
    second = await client.post(
        "/oauth/token",
        data={"grant_type": "urn:custom:mfa-otp", "mfa_token": body["mfa_token"], "otp": otp},
        auth=("particle", "particle"),
    )
    assert 200 == second.status_code
    assert (
        200
        == (
            await client.get("/v1/user", headers={"Authorization": f"Bearer {second.json()['access_token']}"})
        ).status_code
    )


async def test_wrong_otp_and_expired_challenge(
    client: httpx.AsyncClient, ada: Account, clock: FakeClock
) -> None:
    """A wrong code fails; after the challenge's lifetime even a right code fails."""
    secret, _ = await enroll(client, ada, clock)
    mfa_token = (await login(client, ada.email, ada.password)).json()["mfa_token"]
    wrong = await client.post(
        "/oauth/token",
        data={"grant_type": "urn:custom:mfa-otp", "mfa_token": mfa_token, "otp": "000000"},
        auth=("particle", "particle"),
    )
    assert (400, "invalid_grant") == (wrong.status_code, wrong.json()["error"])
    clock.advance(301)
    late = await client.post(
        "/oauth/token",
        data={
            "grant_type": "urn:custom:mfa-otp",
            "mfa_token": mfa_token,
            "otp": pyotp.TOTP(secret).at(clock.now()),
        },
        auth=("particle", "particle"),
    )
    assert (400, "invalid_grant") == (late.status_code, late.json()["error"])


async def test_recovery_code_is_single_use(client: httpx.AsyncClient, ada: Account, clock: FakeClock) -> None:
    """A recovery code replaces the OTP once."""
    _, codes = await enroll(client, ada, clock)
    assert 10 == len(codes)
    for expected in (200, 400):
        mfa_token = (await login(client, ada.email, ada.password)).json()["mfa_token"]
        response = await client.post(
            "/oauth/token",
            data={
                "grant_type": "urn:custom:recovery-code",
                "mfa_token": mfa_token,
                "recovery_code": codes[0],
            },
            auth=("particle", "particle"),
        )
        assert expected == response.status_code


async def test_disable(client: httpx.AsyncClient, ada: Account, clock: FakeClock) -> None:
    """With the password MFA turns off and plain logins work again."""
    await enroll(client, ada, clock)
    wrong = await client.put("/v1/user/mfa-disable", json={"current_password": "nope"}, headers=ada.auth)
    assert 403 == wrong.status_code
    response = await client.put(
        "/v1/user/mfa-disable", json={"current_password": ada.password}, headers=ada.auth
    )
    assert {"ok": True} == response.json()
    assert 200 == (await login(client, ada.email, ada.password)).status_code


async def test_basic_listing_needs_otp_when_mfa_is_on(
    client: httpx.AsyncClient, ada: Account, clock: FakeClock
) -> None:
    """GET /v1/access_tokens wants ?otp= once MFA is enabled."""
    secret, _ = await enroll(client, ada, clock)
    without = await client.get("/v1/access_tokens", auth=(ada.email, ada.password))
    assert 401 == without.status_code
    with_otp = await client.get(
        "/v1/access_tokens",
        params={"otp": pyotp.TOTP(secret).at(clock.now())},
        auth=(ada.email, ada.password),
    )
    assert 200 == with_otp.status_code
