"""
The API's text door (issue 10, items 1 and 2): a string that is not valid Unicode text — a lone UTF-16
surrogate, invalid UTF-8, or a NUL, which PostgreSQL text cannot hold — is refused with the catalogue's 400
wherever it enters (JSON at any depth, form and multipart fields, query strings, path parameters, the
Authorization header), before any route runs, and nothing is stored. Parser limits (nesting, non-finite or
huge numbers) are a 400 too, never a 500.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import httpx
import pytest
from tests.support.api import Account, login, make_account
from tests.support.devices import register_and_claim
from tests.support.notifier import RecordingNotifier

from devicecloud.virtualdevice.identity import generate_identity

SURROGATE = "\ud800"
NUL = "\u0000"
HOOK = {"integration_type": "Webhook", "event": "temp", "url": "https://example.com/in"}


def raw_json(value: Any) -> dict[str, Any]:
    """
    Request keywords for a JSON body written with escapes (``"\\ud800"``), as a hostile client sends it:
    valid JSON that httpx's own encoder would refuse to produce.
    """
    return {"content": json.dumps(value).encode(), "headers": {"Content-Type": "application/json"}}


def with_auth(account: Account, request: dict[str, Any]) -> dict[str, Any]:
    return {**request, "headers": {**request.get("headers", {}), **account.auth}}


def assert_refused(response: httpx.Response, *, oauth: bool = False) -> None:
    """The catalogue's 400 body, in the Particle shape (or the OAuth shape, which has no ``ok``)."""
    assert 400 == response.status_code, response.text[:500]
    body = response.json()
    assert "invalid_request" == body["error"]
    assert body["error_description"]
    assert ("ok" not in body) if oauth else (body["ok"] is False)


@pytest.fixture
async def ada(client: httpx.AsyncClient) -> Account:
    return await make_account(client, "ada@example.com")


# ------------------------------------------------------------------------------------------ JSON bodies


@pytest.mark.parametrize("bad", [SURROGATE, NUL, "ok" + SURROGATE + "ok"])
async def test_event_name_and_data(client: httpx.AsyncClient, ada: Account, bad: str) -> None:
    """POST /v1/devices/events: a bad name is refused like bad data (before, only data was checked)."""
    for body in ({"name": bad, "data": "x"}, {"name": "temp", "data": bad}):
        assert_refused(await client.post("/v1/devices/events", **with_auth(ada, raw_json(body))))


@pytest.mark.parametrize("bad", [SURROGATE, NUL])
async def test_account_info_is_refused_and_the_account_still_reads(
    client: httpx.AsyncClient, ada: Account, bad: str
) -> None:
    """A bad first_name (or one deep inside account_info) is refused; GET /v1/user keeps answering 200."""
    for info in ({"first_name": bad}, {"extra": [{"deep": {bad: 1}}]}):
        request = raw_json({"account_info": info})
        assert_refused(await client.put("/v1/user", **with_auth(ada, request)))
    me = await client.get("/v1/user", headers=ada.auth)
    assert (200, None) == (me.status_code, me.json()["account_info"]["first_name"])


@pytest.mark.parametrize("bad", [SURROGATE, NUL])
async def test_sign_up(client: httpx.AsyncClient, bad: str) -> None:
    """Sign-up refuses bad text in any field and creates no account."""
    for body in (
        {"username": f"x{bad}@example.com", "password": "long enough"},
        {"username": "y@example.com", "password": f"long{bad}enough"},
        {"username": "z@example.com", "password": "long enough", "account_info": {"first_name": bad}},
    ):
        assert_refused(await client.post("/v1/users", **raw_json(body)))
    assert 400 == (await login(client, "z@example.com", "long enough")).status_code


@pytest.mark.parametrize("bad", [SURROGATE, NUL])
async def test_password_reset(
    client: httpx.AsyncClient, ada: Account, notifier: RecordingNotifier, bad: str
) -> None:
    """Both halves of the password reset refuse bad text; no mail goes out, the password stays."""
    assert_refused(await client.post("/v1/user/password-reset", **raw_json({"username": f"ada{bad}@x.io"})))
    completion = {"token": f"t{bad}", "password": f"new{bad}password"}
    assert_refused(await client.put("/v1/user/password-reset", **raw_json(completion)))
    assert [] == notifier.sent
    assert 200 == (await login(client, ada.email, ada.password)).status_code


@pytest.mark.parametrize("bad", [SURROGATE, NUL])
async def test_client_and_integration_names(client: httpx.AsyncClient, ada: Account, bad: str) -> None:
    """OAuth client and integration names (and any integration field) with bad text create nothing."""
    assert_refused(
        await client.post("/v1/clients", **with_auth(ada, raw_json({"name": bad, "type": "installed"})))
    )
    for fields in ({"name": bad}, {"event": bad}, {"json": {"key": bad}}, {"headers": {bad: "v"}}):
        assert_refused(await client.post("/v1/integrations", **with_auth(ada, raw_json({**HOOK, **fields}))))
    assert [] == (await client.get("/v1/clients", headers=ada.auth)).json()["clients"]
    assert [] == (await client.get("/v1/integrations", headers=ada.auth)).json()


@pytest.mark.parametrize("bad", [SURROGATE, NUL])
async def test_device_notes_and_function_arguments(client: httpx.AsyncClient, ada: Account, bad: str) -> None:
    """Notes and function arguments with bad text are refused; the device reads back unchanged."""
    identity = generate_identity()
    await register_and_claim(client, ada, identity.device_id, identity.public_key_pem())
    device = f"/v1/devices/{identity.device_id}"
    assert_refused(await client.put(device, **with_auth(ada, raw_json({"notes": bad}))))
    assert_refused(await client.post(f"{device}/digitalwrite", **with_auth(ada, raw_json({"args": bad}))))
    got = await client.get(device, headers=ada.auth)
    assert (200, None) == (got.status_code, got.json()["notes"])


async def test_a_utf8_encoded_surrogate_is_refused(client: httpx.AsyncClient, ada: Account) -> None:
    """The bytes ED A0 80 (a surrogate in UTF-8 form, which Python's JSON reader lets through) are refused."""
    body = b'{"name": "temp", "data": "\xed\xa0\x80"}'
    request = {"content": body, "headers": {"Content-Type": "application/json"}}
    assert_refused(await client.post("/v1/devices/events", **with_auth(ada, request)))


# ----------------------------------------------------------------------------------- JSON parser limits


def nested(depth: int) -> bytes:
    return b'{"username":"a@example.com","password":"long enough","account_info":' + (
        b'{"a":' * depth + b"1" + b"}" * depth + b"}"
    )


@pytest.mark.parametrize("depth", [32, 1000, 100_000])
async def test_deep_nesting_is_a_400_logged_out_too(
    client: httpx.AsyncClient, ada: Account, depth: int
) -> None:
    """Deeply nested JSON is a plain 400 on every route with a body, with or without a token."""
    request = {"content": nested(depth), "headers": {"Content-Type": "application/json"}}
    assert_refused(await client.post("/v1/users", **request))
    assert_refused(await client.put("/v1/user", **with_auth(ada, request)))
    assert_refused(await client.post("/v1/integrations", **with_auth(ada, request)))


async def test_nesting_up_to_the_limit_is_accepted(client: httpx.AsyncClient, ada: Account) -> None:
    """32 levels (the body object counts as one) are fine: an integration's json template reads back whole."""
    template = b'{"a":' * 31 + b"1" + b"}" * 31
    body = json.dumps(HOOK).encode()[:-1] + b', "json": ' + template + b"}"
    request = {"content": body, "headers": {"Content-Type": "application/json"}}
    created = await client.post("/v1/integrations", **with_auth(ada, request))
    assert 201 == created.status_code, created.text
    got = await client.get(f"/v1/integrations/{created.json()['id']}", headers=ada.auth)
    assert json.loads(template) == got.json()["integration"]["json"]


@pytest.mark.parametrize(
    "number",
    [b"NaN", b"Infinity", b"-Infinity", b"1e999", b"9" * 5000, str(2**63).encode()],
    ids=["NaN", "Infinity", "-Infinity", "1e999", "5000 digits", "2**63"],
)
async def test_numbers_json_cannot_carry_are_refused(
    client: httpx.AsyncClient, ada: Account, number: bytes
) -> None:
    """Non-finite numbers, and integers past 64 bits, are refused instead of stored (or failing later)."""
    body = json.dumps(HOOK).encode()[:-1] + b', "json": {"n": ' + number + b"}}"
    request = {"content": body, "headers": {"Content-Type": "application/json"}}
    assert_refused(await client.post("/v1/integrations", **with_auth(ada, request)))
    assert [] == (await client.get("/v1/integrations", headers=ada.auth)).json()


# ----------------------------------------------------------------------------- forms, multipart, query


@pytest.mark.parametrize(
    "body",
    [
        b"name=temp&data=%00",
        b"name=te%FFmp",  # not UTF-8
        b"name=te%ED%A0%80mp",  # a surrogate in UTF-8 form
        b"na%00me=temp",
        b"name=temp&x[%FF]=1",
    ],
)
async def test_urlencoded_names_and_values(client: httpx.AsyncClient, ada: Account, body: bytes) -> None:
    """Form fields are decoded strictly: invalid UTF-8 is refused, not quietly replaced."""
    request = {"content": body, "headers": {"Content-Type": "application/x-www-form-urlencoded"}}
    assert_refused(await client.post("/v1/devices/events", **with_auth(ada, request)))


@pytest.mark.parametrize("depth", [32, 1000])
async def test_deep_form_keys(client: httpx.AsyncClient, ada: Account, depth: int) -> None:
    """``json[a][a]…=`` nests as deep as JSON can; the same limit applies, and nothing is stored."""
    body = urlencoded_hook() + b"&json" + b"[a]" * depth + b"=1"
    request = {"content": body, "headers": {"Content-Type": "application/x-www-form-urlencoded"}}
    assert_refused(await client.post("/v1/integrations", **with_auth(ada, request)))
    assert [] == (await client.get("/v1/integrations", headers=ada.auth)).json()


def urlencoded_hook() -> bytes:
    return "&".join(f"{k}={v}" for k, v in HOOK.items()).encode()


@pytest.mark.parametrize(
    ("name", "value"), [("password", "long" + NUL + "enough"), ("password", "long \udcff enough"), (NUL, "x")]
)
async def test_multipart_fields(client: httpx.AsyncClient, name: str, value: str) -> None:
    """Multipart field names and values are decoded strictly too (not with a Latin-1 fallback)."""
    fields = {"username": "m@example.com", "password": "long enough", name: value}
    parts = "".join(
        f'--b0undary\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n' for k, v in fields.items()
    )
    body = (parts + "--b0undary--\r\n").encode("utf-8", "surrogateescape")  # \udcff → the single byte FF
    request = {"content": body, "headers": {"Content-Type": "multipart/form-data; boundary=b0undary"}}
    assert_refused(await client.post("/v1/users", **request))
    assert 400 == (await login(client, "m@example.com", "long enough")).status_code


@pytest.mark.parametrize("query", ["x=%00", "x=%FF", "%ED%A0%80=1", "access_token=%00"])
async def test_query_strings(client: httpx.AsyncClient, ada: Account, query: str) -> None:
    """Query parameters (names and values) are text too, even on GET."""
    assert_refused(await client.get(f"/v1/user?{query}", headers=ada.auth))


@pytest.mark.parametrize("segment", ["%00", "%FF", "%ED%A0%80", "ok%00"])
async def test_path_parameters(client: httpx.AsyncClient, ada: Account, segment: str) -> None:
    """Path parameters (device ids and names, integration ids) are text too."""
    for path in (f"/v1/integrations/{segment}", f"/v1/devices/{segment}", f"/v1/clients/{segment}"):
        assert_refused(await client.get(path, headers=ada.auth))


async def test_basic_credentials(client: httpx.AsyncClient, ada: Account) -> None:
    """HTTP Basic credentials decode to text without NUL, or the request is refused."""
    for credentials in (f"{ada.email}{NUL}:{ada.password}".encode(), b"\xff\xfe:secret"):
        header = {"Authorization": "Basic " + base64.b64encode(credentials).decode()}
        assert_refused(await client.get("/v1/access_tokens", headers=header))


async def test_oauth_token_keeps_its_own_error_shape(client: httpx.AsyncClient, ada: Account) -> None:
    """/oauth/token refuses bad text in the OAuth shape (no ``ok``), in the body, the query or Basic."""
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    body = f"grant_type=password&username={ada.email}%00&password=x".encode()
    assert_refused(
        await client.post("/oauth/token", content=body, headers=form, auth=("particle", "particle")),
        oauth=True,
    )
    body = f"grant_type=password&username={ada.email}&password={ada.password}".encode()
    assert_refused(
        await client.post("/oauth/token?x=%FF", content=body, headers=form, auth=("particle", "particle")),
        oauth=True,
    )
    assert_refused(
        await client.post("/oauth/token", content=body, headers=form, auth=("part\x00icle", "particle")),
        oauth=True,
    )
    assert_refused(
        await client.post(
            "/v1/devices/oauth/token", content=body + b"&x=%00", headers=form, auth=("particle", "particle")
        ),
        oauth=True,
    )
