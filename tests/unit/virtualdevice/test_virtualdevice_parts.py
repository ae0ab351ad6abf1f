"""
The virtual device's pieces without sockets: registries, Tinker, identity files, backoff, and the HTTP
registration steps against an httpx MockTransport.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

import httpx
import pytest

from devicecloud.protocol import VariableType
from devicecloud.virtualdevice import (
    ApiError,
    Backoff,
    CloudApi,
    CloudFunctions,
    CloudVariables,
    IdentityError,
    Tinker,
    generate_identity,
    load_identity,
    load_or_create_identity,
)
from devicecloud.virtualdevice.identity import PRIVATE_KEY_FILE, normalize_device_id

# ---------------------------------------------------------------- variables and functions


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (True, VariableType.BOOL),
        (7, VariableType.INT),
        (1.5, VariableType.DOUBLE),
        ("s", VariableType.STRING),
    ],
)
def test_variable_type_is_inferred_from_the_first_value(value: object, expected: VariableType) -> None:
    """bool, int, float and str map to the four wire types (bool before int)."""
    variables = CloudVariables()
    variables["v"] = value  # type: ignore[assignment]
    assert expected == variables.type_of("v")


def test_existing_variable_keeps_its_type() -> None:
    """An int assigned to a double variable stays a double; a string into an int is refused."""
    variables = CloudVariables()
    variables["temp"] = 21.5
    variables["temp"] = 22
    assert (VariableType.DOUBLE, 22.0) == (variables.type_of("temp"), variables["temp"])
    with pytest.raises(TypeError):
        variables["temp"] = "warm"


def test_getter_variable_is_read_each_time() -> None:
    """A callable value is evaluated on every read and needs an explicit type."""
    variables = CloudVariables()
    counter = iter(range(10))
    variables.set("n", lambda: next(counter), type="int")
    assert (0, 1) == (variables["n"], variables["n"])
    with pytest.raises(TypeError):
        variables.set("m", lambda: 1)


def test_only_new_names_and_types_count_as_changes() -> None:
    """The change hook fires for a new name or type, not for a new value."""
    variables = CloudVariables()
    fired: list[int] = []
    variables.on_change = lambda: fired.append(variables.version)
    variables["a"] = 1
    variables["a"] = 2
    variables.set("a", 2.0, type=VariableType.DOUBLE)
    assert [1, 2] == fired


def test_bad_names_and_int32_overflow_are_refused() -> None:
    """Names are 1–64 characters; int variables must fit in an int32."""
    variables = CloudVariables()
    with pytest.raises(ValueError, match="name"):
        variables[""] = 1
    with pytest.raises(ValueError, match="name"):
        variables["x" * 65] = 1
    with pytest.raises(ValueError, match="int32"):
        variables["big"] = 2**31


async def test_functions_sync_async_and_bad_results() -> None:
    """Functions may be sync or async; a non-int result is an error."""
    functions = CloudFunctions()

    async def double(arg: str) -> int:
        return 2 * int(arg)

    functions.add("len", len)
    functions.add("double", double)
    functions.add("bad", lambda arg: "no")  # type: ignore[arg-type,return-value]
    assert (3, 8) == (await functions.call("len", "abc"), await functions.call("double", "4"))
    with pytest.raises(TypeError):
        await functions.call("bad", "")


# ---------------------------------------------------------------- Tinker


@pytest.mark.parametrize(
    ("calls", "expected"),
    [
        ([("digitalwrite", "D7,HIGH"), ("digitalread", "D7")], [1, 1]),
        ([("digitalwrite", "d7,low"), ("digitalread", "D7")], [1, 0]),
        ([("analogwrite", "A0,255"), ("analogread", "A0")], [1, 4095]),
        ([("digitalwrite", "D9,HIGH"), ("digitalwrite", "D1,UP"), ("analogwrite", "A0,256")], [-1, -1, -1]),
        ([("analogread", "X1"), ("analogwrite", "A1,abc")], [-1, -1]),
    ],
)
def test_tinker_answers_like_the_firmware(calls: list[tuple[str, str]], expected: list[int]) -> None:
    """Writes return 1, reads return the pin value, bad pins or values return -1."""
    tinker = Tinker()
    assert expected == [getattr(tinker, name)(arg) for name, arg in calls]


# ---------------------------------------------------------------- identity and backoff


def test_identity_files_round_trip(tmp_path: Path) -> None:
    """A saved identity loads back with the same id and key; the private key is private to its owner."""
    identity, created = load_or_create_identity(tmp_path, device_id="ABCDEF0123456789ABCDEF01")
    loaded = load_identity(tmp_path)
    assert created
    assert "abcdef0123456789abcdef01" == loaded.device_id
    assert identity.private_key_pem() == loaded.private_key_pem()
    assert 1024 == loaded.private_key.key_size
    assert 0o600 == (tmp_path / PRIVATE_KEY_FILE).stat().st_mode & 0o777


def test_unusable_identity_is_reported(tmp_path: Path) -> None:
    """A broken key file or a bad id is an IdentityError, not a crash later."""
    generate_identity()
    load_or_create_identity(tmp_path)
    (tmp_path / PRIVATE_KEY_FILE).write_text("junk")
    with pytest.raises(IdentityError):
        load_identity(tmp_path)
    with pytest.raises(IdentityError):
        normalize_device_id("xyz")


def test_backoff_grows_to_its_cap() -> None:
    """Delays double per attempt up to the maximum; jitter keeps them within 50–100 %."""
    assert [1.0, 2.0, 4.0, 5.0] == [Backoff(maximum=5, jitter=False).delay(a) for a in range(4)]
    assert all(0.5 <= Backoff().delay(0) <= 1.0 for _ in range(20))


# ---------------------------------------------------------------- registration over HTTP


def recording_api(responses: dict[tuple[str, str], httpx.Response]) -> tuple[CloudApi, list[httpx.Request]]:
    seen: list[httpx.Request] = []

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return responses.get(
            (request.method, request.url.path), httpx.Response(404, json={"error": "not_found"})
        )

    client = httpx.AsyncClient(transport=httpx.MockTransport(handle))
    return CloudApi("http://cloud.test/", client=client), seen


async def test_login_send_key_claim_rename() -> None:
    """The steps send what particle-cli sends: password grant with particle:particle, then Bearer calls."""
    identity = generate_identity()
    device = identity.device_id
    api, seen = recording_api(
        {
            ("POST", "/oauth/token"): httpx.Response(
                200, json={"access_token": "tok", "token_type": "bearer"}
            ),
            ("POST", f"/v1/provisioning/{device}"): httpx.Response(200, json={"ok": True}),
            ("POST", "/v1/devices"): httpx.Response(200, json={"ok": True, "deviceID": device}),
            ("PUT", f"/v1/devices/{device}"): httpx.Response(200, json={"id": device, "name": "bob"}),
        }
    )
    async with api:
        assert "tok" == await api.login("me@example.com", "pw")
        await api.send_public_key(device, identity.public_key_pem())
        assert await api.claim(device)
        await api.rename(device, "bob")
    login, provision, claim, rename = seen
    assert "Basic " + base64.b64encode(b"particle:particle").decode() == login.headers["authorization"]
    assert b"grant_type=password&username=me%40example.com&password=pw" == login.content
    body = json.loads(provision.content)
    assert (device, identity.public_key_pem(), "rsa") == (
        body["deviceID"],
        body["publicKey"],
        body["algorithm"],
    )
    assert body["order"].startswith("manual_")
    assert {"id": device} == json.loads(claim.content)
    assert {"name": "bob"} == json.loads(rename.content)
    assert all("Bearer tok" == r.headers["authorization"] for r in (provision, claim, rename))


async def test_claiming_my_own_device_is_success() -> None:
    """A refused claim of a device I can already see counts as 'already yours'."""
    api, _ = recording_api(
        {
            ("POST", "/v1/devices"): httpx.Response(400, json={"error": "already claimed"}),
            ("GET", "/v1/devices/abc"): httpx.Response(200, json={"id": "abc"}),
        }
    )
    async with api:
        assert not await api.claim("abc")


async def test_api_errors_carry_the_server_description() -> None:
    """A refusal raises ApiError with the status and the body's error_description."""
    api, _ = recording_api(
        {
            ("POST", "/v1/devices"): httpx.Response(
                403,
                json={
                    "error": "forbidden",
                    "error_description": "You cannot claim a device owned by someone else",
                },
            ),
        }
    )
    async with api:
        with pytest.raises(ApiError) as caught:
            await api.claim("abc")
    assert (403, "You cannot claim a device owned by someone else") == (
        caught.value.status,
        caught.value.description,
    )
    assert "could not claim the device (HTTP 403)" in str(caught.value)
