"""
A product's customers over HTTP and the device protocol (issue 11 section 6, catalogue §16): created by a
team member, by the product's client (two-legged, shadow, implicit), customer tokens by client credentials
and by password, claim codes a product device presents, a customer reaching only its own devices, and every
refusal: unknown product, duplicate customer, bad scope, another product's client, a deleted customer.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from tests.support.api import Account
from tests.support.devices import connect_device, handled, wait_until

from devicecloud.runtime import Runtime
from devicecloud.virtualdevice.device import VirtualDevice

CUSTOMERS = "/v1/products/brew-bot/customers"
PASSWORD = "correct horse battery"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def make_client(
    client: httpx.AsyncClient, owner: Account, product: str = "brew-bot", **fields: Any
) -> tuple[str, str]:
    made = await client.post(
        f"/v1/products/{product}/clients",
        json={"name": "Brew app", "type": "installed", **fields},
        headers=owner.auth,
    )
    assert made.status_code == 200, made.text
    return made.json()["client"]["id"], made.json()["client"]["secret"]


@pytest.fixture
async def app_client(client: httpx.AsyncClient, owner: Account) -> tuple[str, str]:
    return await make_client(client, owner)


async def customer_token(client: httpx.AsyncClient, credentials: tuple[str, str], email: str) -> str:
    granted = await client.post(
        "/oauth/token",
        data={"grant_type": "client_credentials", "scope": f"customer={email}"},
        auth=credentials,
    )
    assert granted.status_code == 200, granted.text
    token: str = granted.json()["access_token"]
    return token


async def product_device(client: httpx.AsyncClient, runtime: Runtime, owner: Account) -> VirtualDevice:
    """A connected device imported into brew-bot, owned by nobody."""
    device = await connect_device(client, None, runtime, demo=True)
    imported = await client.post(
        "/v1/products/brew-bot/devices", json={"id": device.device_id}, headers=owner.auth
    )
    assert imported.status_code == 200, imported.text
    return device


async def claim_with(device: VirtualDevice, runtime: Runtime, code: str) -> None:
    await device.publish("spark/device/claim/code", code, private=True)
    await handled(runtime, device.device_id)  # the gateway has run the claim hook for that event


async def test_two_legged_create_with_the_client_in_the_body(
    client: httpx.AsyncClient, app_client: tuple[str, str]
) -> None:
    """What particle-api-js's createCustomer sends: a form with the client's id and secret."""
    client_id, secret = app_client
    created = await client.post(
        CUSTOMERS,
        data={
            "email": "Jane@Example.com",
            "password": PASSWORD,
            "grant_type": "client_credentials",
            "client_id": client_id,
            "client_secret": secret,
        },
    )
    assert created.status_code == 201, created.text
    body = created.json()
    assert (body["token_type"], len(body["access_token"]), body["expires_in"]) == ("bearer", 40, 7776000)
    assert len(body["refresh_token"]) == 40
    mine = await client.get("/v1/devices", headers=bearer(body["access_token"]))
    assert (mine.status_code, mine.json()) == (200, [])


async def test_shadow_customer_and_customer_scoped_tokens(
    client: httpx.AsyncClient, app_client: tuple[str, str]
) -> None:
    created = await client.post(
        CUSTOMERS, data={"email": "shadow@example.com", "no_password": "true"}, auth=app_client
    )
    assert created.status_code == 201, created.text
    token = await customer_token(client, app_client, "shadow@example.com")
    assert (await client.get("/v1/devices", headers=bearer(token))).status_code == 200
    # Its refresh token gives a fresh customer token (and retires the old one).
    refreshed = await client.post(
        "/oauth/token",
        data={"grant_type": "refresh_token", "refresh_token": created.json()["refresh_token"]},
        auth=app_client,
    )
    assert refreshed.status_code == 200, refreshed.text
    fresh = bearer(refreshed.json()["access_token"])
    assert (await client.get("/v1/devices", headers=fresh)).status_code == 200
    assert (await client.get("/v1/user", headers=fresh)).status_code == 403
    old = await client.get("/v1/devices", headers=bearer(created.json()["access_token"]))
    assert old.status_code == 401
    # A shadow customer has no password to log in with.
    login = await client.post(
        "/oauth/token",
        data={"grant_type": "password", "username": "shadow@example.com", "password": PASSWORD},
        auth=app_client,
    )
    assert (login.status_code, login.json()["error"]) == (400, "invalid_grant")


async def test_password_login_through_the_product_client(
    client: httpx.AsyncClient, app_client: tuple[str, str], owner: Account
) -> None:
    await client.post(CUSTOMERS, data={"email": "jane@example.com", "password": PASSWORD}, auth=app_client)
    login = await client.post(
        "/oauth/token",
        data={"grant_type": "password", "username": "jane@example.com", "password": PASSWORD},
        auth=app_client,
    )
    assert login.status_code == 200, login.text
    assert (await client.get("/v1/devices", headers=bearer(login.json()["access_token"]))).status_code == 200
    wrong = await client.post(
        "/oauth/token",
        data={"grant_type": "password", "username": "jane@example.com", "password": "not the password"},
        auth=app_client,
    )
    assert (wrong.status_code, wrong.json()["error"]) == (400, "invalid_grant")
    # A team member logs in through the product's client as a person.
    person = await client.post(
        "/oauth/token",
        data={"grant_type": "password", "username": owner.email, "password": owner.password},
        auth=app_client,
    )
    assert person.status_code == 200
    assert (await client.get("/v1/user", headers=bearer(person.json()["access_token"]))).status_code == 200
    # The set password replaces the old one.
    changed = await client.put(
        f"{CUSTOMERS}/jane@example.com", json={"password": "a new passphrase"}, headers=owner.auth
    )
    assert (changed.status_code, changed.json()) == (200, {"ok": True})
    again = await client.post(
        "/oauth/token",
        data={"grant_type": "password", "username": "jane@example.com", "password": "a new passphrase"},
        auth=app_client,
    )
    assert again.status_code == 200, again.text


async def test_team_member_creates_and_the_implicit_flow(client: httpx.AsyncClient, owner: Account) -> None:
    by_member = await client.post(
        CUSTOMERS, json={"email": "member-made@example.com", "password": PASSWORD}, headers=owner.auth
    )
    assert by_member.status_code == 201, by_member.text
    web_id, _ = await make_client(
        client, owner, type="web", name="Brew web", redirect_uri="https://brew.example.com/cb"
    )
    implicit = await client.post(
        CUSTOMERS,
        data={"email": "web@example.com", "password": PASSWORD, "response_type": "token"},
        auth=(web_id, ""),
    )
    assert implicit.status_code == 201, implicit.text
    token = implicit.json()["access_token"]
    assert "refresh_token" not in implicit.json()  # a browser keeps none
    assert implicit.headers["location"].startswith(f"https://brew.example.com/cb#access_token={token}&")
    # The implicit flow is for web clients only; an installed client must show its secret.
    installed_id, _ = await make_client(client, owner, name="Brew installed")
    refused = await client.post(
        CUSTOMERS,
        data={"email": "web2@example.com", "password": PASSWORD, "response_type": "token"},
        auth=(installed_id, ""),
    )
    assert refused.status_code == 400


async def test_list_customers_with_their_devices_and_pages(
    client: httpx.AsyncClient, runtime: Runtime, owner: Account, app_client: tuple[str, str]
) -> None:
    for n in range(3):
        made = await client.post(
            CUSTOMERS, data={"email": f"c{n}@example.com", "password": PASSWORD}, auth=app_client
        )
        assert made.status_code == 201
    token = await customer_token(client, app_client, "c1@example.com")
    device = await product_device(client, runtime, owner)
    try:
        code = (await client.post("/v1/products/brew-bot/device_claims", headers=bearer(token))).json()
        await claim_with(device, runtime, code["claim_code"])
        listed = await client.get(CUSTOMERS, headers=owner.auth, params={"per_page": "2", "page": "1"})
        assert listed.status_code == 200, listed.text
        body = listed.json()
        assert [c["username"] for c in body["customers"]] == ["c0@example.com", "c1@example.com"]
        assert [c["devices"] for c in body["customers"]] == [[], [device.device_id]]
        assert [d["id"] for d in body["devices"]] == [device.device_id]
        assert body["devices"][0]["online"] is True
        assert body["meta"] == {"total_pages": 2}
        second = (
            await client.get(CUSTOMERS, headers=owner.auth, params={"perPage": "2", "page": "2"})
        ).json()
        assert [c["username"] for c in second["customers"]] == ["c2@example.com"]
    finally:
        await device.stop()


async def test_customer_claims_and_controls_only_its_own_device(
    client: httpx.AsyncClient, runtime: Runtime, owner: Account, app_client: tuple[str, str]
) -> None:
    for email in ("jane@example.com", "joe@example.com"):
        made = await client.post(CUSTOMERS, data={"email": email, "password": PASSWORD}, auth=app_client)
        assert made.status_code == 201
    jane = bearer(await customer_token(client, app_client, "jane@example.com"))
    joe = bearer(await customer_token(client, app_client, "joe@example.com"))
    mine = await product_device(client, runtime, owner)
    other = await product_device(client, runtime, owner)
    try:
        code = await client.post("/v1/products/brew-bot/device_claims", headers=jane)
        assert code.status_code == 200, code.text
        assert code.json()["device_ids"] == []
        await claim_with(mine, runtime, code.json()["claim_code"])

        async def claimed() -> bool:
            listed = (await client.get("/v1/devices", headers=jane)).json()
            return [mine.device_id] == [d["id"] for d in listed]

        await wait_until(claimed)
        assert (await client.get("/v1/devices", headers=joe)).json() == []
        got = await client.get(f"/v1/devices/{mine.device_id}", headers=jane)
        assert (got.status_code, got.json()["id"]) == (200, mine.device_id)
        called = await client.post(
            f"/v1/devices/{mine.device_id}/digitalread", json={"arg": "D7"}, headers=jane
        )
        assert called.status_code == 200, called.text
        assert (await client.put(f"/v1/devices/{mine.device_id}/ping", headers=jane)).json()["online"] is True
        for who, device in ((joe, mine), (jane, other)):
            for method, suffix in (("GET", ""), ("POST", "/digitalread"), ("PUT", "/ping")):
                refused = await client.request(method, f"/v1/devices/{device.device_id}{suffix}", headers=who)
                assert refused.status_code == 403, (method, suffix, refused.text)
        # Not a person's routes: renaming, releasing, claiming by id, the account, product routes.
        assert (
            await client.put(f"/v1/devices/{mine.device_id}", json={"name": "x"}, headers=jane)
        ).status_code == 403
        assert (await client.delete(f"/v1/devices/{mine.device_id}", headers=jane)).status_code == 403
        assert (
            await client.post("/v1/devices", json={"id": other.device_id}, headers=jane)
        ).status_code == 403
        assert (await client.get("/v1/user", headers=jane)).status_code == 403
        product_get = await client.get(f"/v1/products/brew-bot/devices/{mine.device_id}", headers=jane)
        assert product_get.status_code == 403
        # A code already used does nothing more; a team member cannot claim the customer's device by id.
        await claim_with(other, runtime, code.json()["claim_code"])
        assert (await client.get(f"/v1/devices/{other.device_id}", headers=jane)).status_code == 403
        taken = await client.post("/v1/devices", json={"id": mine.device_id}, headers=owner.auth)
        assert taken.status_code == 403
        again = (await client.post("/v1/products/brew-bot/device_claims", headers=jane)).json()
        assert again["device_ids"] == [mine.device_id]
    finally:
        await mine.stop()
        await other.stop()


async def test_a_device_of_another_product_ignores_the_code(
    client: httpx.AsyncClient, runtime: Runtime, owner: Account, app_client: tuple[str, str]
) -> None:
    await client.post(CUSTOMERS, data={"email": "jane@example.com", "password": PASSWORD}, auth=app_client)
    jane = bearer(await customer_token(client, app_client, "jane@example.com"))
    loose = await connect_device(client, None, runtime)  # in no product
    try:
        code = (await client.post("/v1/products/brew-bot/device_claims", headers=jane)).json()["claim_code"]
        await claim_with(loose, runtime, code)
        assert (await client.get("/v1/devices", headers=jane)).json() == []
        async with runtime.store.transaction(readonly=True) as tx:
            record = await tx.devices.get(loose.device_id)
        assert record is not None
        assert record.owner_id is None
    finally:
        await loose.stop()


async def test_delete_revokes_tokens_and_claim_codes_and_frees_devices(
    client: httpx.AsyncClient, runtime: Runtime, owner: Account, app_client: tuple[str, str]
) -> None:
    await client.post(CUSTOMERS, data={"email": "jane@example.com", "password": PASSWORD}, auth=app_client)
    jane = bearer(await customer_token(client, app_client, "jane@example.com"))
    device = await product_device(client, runtime, owner)
    spare = await product_device(client, runtime, owner)
    try:
        code = (await client.post("/v1/products/brew-bot/device_claims", headers=jane)).json()["claim_code"]
        await claim_with(device, runtime, code)
        unused = (await client.post("/v1/products/brew-bot/device_claims", headers=jane)).json()["claim_code"]
        deleted = await client.delete(f"{CUSTOMERS}/jane@example.com", headers=owner.auth)
        assert (deleted.status_code, deleted.json()) == (200, {"ok": True})
        gone = await client.get("/v1/devices", headers=jane)
        assert (gone.status_code, gone.json()["error"]) == (401, "invalid_token")
        async with runtime.store.transaction() as tx:
            assert await tx.claim_codes.take(hash_of(unused)) is None
            record = await tx.devices.get(device.device_id)
        assert record is not None
        assert record.membership is not None
        assert record.membership.customer_id is None
        listed = (await client.get(CUSTOMERS, headers=owner.auth)).json()
        assert listed["customers"] == []
        again = await client.delete(f"{CUSTOMERS}/jane@example.com", headers=owner.auth)
        assert again.status_code == 404
        # A new customer of the same name starts with nothing.
        await client.post(
            CUSTOMERS, data={"email": "jane@example.com", "password": PASSWORD}, auth=app_client
        )
        fresh = bearer(await customer_token(client, app_client, "jane@example.com"))
        assert (await client.get("/v1/devices", headers=fresh)).json() == []
        await claim_with(spare, runtime, unused)
        assert (await client.get("/v1/devices", headers=fresh)).json() == []
    finally:
        await device.stop()
        await spare.stop()


def hash_of(code: str) -> str:
    from devicecloud.services.secrets import hash_secret

    return hash_secret(code)


async def test_refusals(client: httpx.AsyncClient, owner: Account, app_client: tuple[str, str]) -> None:
    # Unknown product, with a client or with a member's token.
    unknown = await client.post(
        "/v1/products/no-such/customers",
        data={"email": "a@example.com", "password": PASSWORD},
        auth=app_client,
    )
    assert (unknown.status_code, unknown.json()["error"]) == (404, "Not Found")
    unknown = await client.post(
        "/v1/products/no-such/customers",
        json={"email": "a@example.com", "password": PASSWORD},
        headers=owner.auth,
    )
    assert unknown.status_code == 404
    # Duplicate customer (whatever the case of the email).
    first = await client.post(
        CUSTOMERS, data={"email": "dup@example.com", "password": PASSWORD}, auth=app_client
    )
    assert first.status_code == 201
    dup = await client.post(
        CUSTOMERS, data={"email": "DUP@example.com", "password": PASSWORD}, auth=app_client
    )
    assert dup.status_code == 400, dup.text
    assert dup.json()["error"] == "customer_exists"
    # Bad input: no email, not an email, no password without no_password.
    for body in ({"password": PASSWORD}, {"email": "nope", "password": PASSWORD}, {"email": "b@example.com"}):
        bad = await client.post(CUSTOMERS, data=body, auth=app_client)
        assert bad.status_code == 400, (body, bad.text)
    # Wrong secret; a client of another product; a client without customers:create.
    wrong = await client.post(
        CUSTOMERS, data={"email": "c@example.com", "password": PASSWORD}, auth=(app_client[0], "f" * 40)
    )
    assert (wrong.status_code, wrong.json()["error"]) == (400, "invalid_client")
    created = await client.post("/v1/products", json={"name": "Other", "platform_id": 6}, headers=owner.auth)
    assert created.status_code == 201
    foreign = await make_client(client, owner, product="other")
    other = await client.post(CUSTOMERS, data={"email": "c@example.com", "password": PASSWORD}, auth=foreign)
    assert other.status_code == 404
    narrow = await make_client(client, owner, name="Narrow", scope="clients:list")
    refused = await client.post(CUSTOMERS, data={"email": "c@example.com", "password": PASSWORD}, auth=narrow)
    assert refused.status_code == 403
    # Bad scopes: a customer of another product, a customer who does not exist, a client of no product.
    other_customer = await client.post(
        "/oauth/token",
        data={"grant_type": "client_credentials", "scope": "customer=dup@example.com"},
        auth=foreign,
    )
    assert (other_customer.status_code, other_customer.json()["error"]) == (400, "invalid_grant")
    nobody = await client.post(
        "/oauth/token",
        data={"grant_type": "client_credentials", "scope": "customer=nobody@example.com"},
        auth=app_client,
    )
    assert (nobody.status_code, nobody.json()["error"]) == (400, "invalid_grant")
    own = (
        await client.post("/v1/clients", json={"name": "Mine", "type": "installed"}, headers=owner.auth)
    ).json()
    no_product = await client.post(
        "/oauth/token",
        data={"grant_type": "client_credentials", "scope": "customer=dup@example.com"},
        auth=(own["client"]["id"], own["client"]["secret"]),
    )
    assert (no_product.status_code, no_product.json()["error"]) == (400, "invalid_scope")
    # A customer manages no customers; API users and product clients get no claim codes of their own.
    dup_token = bearer(await customer_token(client, app_client, "dup@example.com"))
    assert (await client.get(CUSTOMERS, headers=dup_token)).status_code == 403
    assert (
        await client.post(CUSTOMERS, json={"email": "x@example.com", "password": PASSWORD}, headers=dup_token)
    ).status_code == 403
    assert (await client.delete(f"{CUSTOMERS}/dup@example.com", headers=dup_token)).status_code == 403
    granted = await client.post("/oauth/token", data={"grant_type": "client_credentials"}, auth=app_client)
    client_token = bearer(granted.json()["access_token"])
    assert (await client.post("/v1/products/brew-bot/device_claims", headers=client_token)).status_code == 403
    assert (await client.post("/v1/products/other/device_claims", headers=dup_token)).status_code == 404
    # Unknown customer for the password and delete routes.
    assert (
        await client.put(f"{CUSTOMERS}/ghost@example.com", json={"password": PASSWORD}, headers=owner.auth)
    ).status_code == 404
    assert (
        await client.put(f"{CUSTOMERS}/dup@example.com", json={"password": "x"}, headers=owner.auth)
    ).status_code == 400


async def test_the_team_releases_or_removes_a_customers_device(
    client: httpx.AsyncClient, runtime: Runtime, owner: Account, app_client: tuple[str, str]
) -> None:
    await client.post(CUSTOMERS, data={"email": "jane@example.com", "password": PASSWORD}, auth=app_client)
    jane = bearer(await customer_token(client, app_client, "jane@example.com"))
    released = await product_device(client, runtime, owner)
    removed = await product_device(client, runtime, owner)
    try:
        for device in (released, removed):
            code = (await client.post("/v1/products/brew-bot/device_claims", headers=jane)).json()
            await claim_with(device, runtime, code["claim_code"])
        listed = {d["id"] for d in (await client.get("/v1/devices", headers=jane)).json()}
        assert listed == {released.device_id, removed.device_id}
        base = "/v1/products/brew-bot/devices"
        unclaimed = await client.delete(f"{base}/{released.device_id}/owner", headers=owner.auth)
        assert unclaimed.status_code == 200, unclaimed.text
        gone = await client.delete(f"{base}/{removed.device_id}", headers=owner.auth)
        assert gone.status_code == 204, gone.text
        assert (await client.get("/v1/devices", headers=jane)).json() == []
        assert (await client.get(CUSTOMERS, headers=owner.auth)).json()["customers"][0]["devices"] == []
    finally:
        await released.stop()
        await removed.stop()
