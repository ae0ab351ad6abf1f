"""
The devices API end to end: HTTP in, the real gateway, a virtual device over TCP, and back.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
import pytest
from tests.support.api import Account, make_account
from tests.support.clock import FakeClock
from tests.support.devices import connect_device, handled, virtual_device, wait_until

from devicecloud.protocol import ResponseStyle
from devicecloud.runtime import Runtime
from devicecloud.virtualdevice.device import VirtualDevice

STYLES = [pytest.param(ResponseStyle.PIGGYBACK, id="0.x"), pytest.param(ResponseStyle.SEPARATE, id="2.x")]


@pytest.fixture
def database_url(tmp_path) -> str:  # type: ignore[no-untyped-def]
    """Device behaviour does not depend on the database; the storage tests cover both."""
    return f"sqlite+aiosqlite:///{tmp_path / 'devicecloud.db'}"


@pytest.fixture
async def ada(client: httpx.AsyncClient) -> Account:
    return await make_account(client, "ada@example.com")


@pytest.fixture
async def bob(client: httpx.AsyncClient) -> Account:
    return await make_account(client, "bob@example.com")


def app(device: VirtualDevice) -> None:
    device.set_variable("vbool", True)
    device.set_variable("vint", -42)
    device.set_variable("vdouble", 1234.5678)
    device.set_variable("vstring", "hello, cloud")
    device.add_function("echo_len", lambda arg: len(arg))
    device.add_function("negative", lambda _arg: -12345)


@pytest.fixture(params=STYLES)
async def device(
    request: pytest.FixtureRequest, client: httpx.AsyncClient, ada: Account, runtime: Runtime
) -> AsyncIterator[VirtualDevice]:
    virtual = await connect_device(client, ada, runtime, style=request.param, setup=app)
    try:
        yield virtual
    finally:
        await virtual.stop()


async def test_list_and_get(client: httpx.AsyncClient, ada: Account, device: VirtualDevice) -> None:
    """The device shows in the list and in detail with what it described."""
    listed = (await client.get("/v1/devices", headers=ada.auth)).json()
    assert [device.device_id] == [d["id"] for d in listed]
    body = (await client.get(f"/v1/devices/{device.device_id}", headers=ada.auth)).json()
    assert (True, True, 6, "ada@example.com") == (
        body["online"],
        body["connected"],
        body["platform_id"],
        body["owner"],
    )
    assert {"echo_len", "negative"} == set(body["functions"])
    assert {"vbool": "bool", "vint": "int32", "vdouble": "double", "vstring": "string"} == body["variables"]
    assert body["name"]
    assert body["last_handshake_at"].endswith("Z")
    assert "127.0.0.1" == body["last_ip_address"]


async def test_system_firmware_version(
    client: httpx.AsyncClient, ada: Account, device: VirtualDevice
) -> None:
    """The Device OS release of the system part the device describes shows in detail and in the list."""
    expected = {ResponseStyle.PIGGYBACK: "0.7.0", ResponseStyle.SEPARATE: "2.3.0"}[device.response_style]
    body = (await client.get(f"/v1/devices/{device.device_id}", headers=ada.auth)).json()
    assert (expected, expected) == (body["system_firmware_version"], body["current_build_target"])
    listed = (await client.get("/v1/devices", headers=ada.auth)).json()
    assert [expected] == [d["system_firmware_version"] for d in listed]


@pytest.mark.parametrize(
    ("name", "expected"),
    [("vbool", True), ("vint", -42), ("vdouble", 1234.5678), ("vstring", "hello, cloud")],
)
async def test_variables_read_back_exactly(
    client: httpx.AsyncClient, ada: Account, device: VirtualDevice, name: str, expected: object
) -> None:
    """Every variable type reads back exactly, in both response styles."""
    response = await client.get(f"/v1/devices/{device.device_id}/{name}", headers=ada.auth)
    body = response.json()
    assert (200, name, expected) == (response.status_code, body["name"], body["result"])
    assert device.device_id == body["coreInfo"]["deviceID"]


async def test_variable_raw_format(client: httpx.AsyncClient, ada: Account, device: VirtualDevice) -> None:
    """format=raw answers the bare value."""
    response = await client.get(
        f"/v1/devices/{device.device_id}/vint", params={"format": "raw"}, headers=ada.auth
    )
    assert "-42" == response.text


@pytest.mark.parametrize("size", [0, 63, 622])
async def test_function_arguments(
    client: httpx.AsyncClient, ada: Account, device: VirtualDevice, size: int
) -> None:
    """Empty, 63-byte and 622-byte arguments reach the function whole."""
    response = await client.post(
        f"/v1/devices/{device.device_id}/echo_len", json={"args": "x" * size}, headers=ada.auth
    )
    body = response.json()
    assert (200, size, True, device.device_id) == (
        response.status_code,
        body["return_value"],
        body["connected"],
        body["id"],
    )


async def test_function_arg_form_and_negative_return(
    client: httpx.AsyncClient, ada: Account, device: VirtualDevice
) -> None:
    """arg (form, as the legacy CLI sends it) works, and negative return values survive."""
    response = await client.post(
        f"/v1/devices/{device.device_id}/negative", data={"arg": "x"}, headers=ada.auth
    )
    assert -12345 == response.json()["return_value"]
    raw = await client.post(
        f"/v1/devices/{device.device_id}/negative", data={"format": "raw"}, headers=ada.auth
    )
    assert "-12345" == raw.text


async def test_argument_too_long(client: httpx.AsyncClient, ada: Account, device: VirtualDevice) -> None:
    """Past 622 bytes the cloud refuses before bothering the device."""
    response = await client.post(
        f"/v1/devices/{device.device_id}/echo_len", json={"args": "x" * 623}, headers=ada.auth
    )
    assert 400 == response.status_code


async def test_unknown_function_and_variable(
    client: httpx.AsyncClient, ada: Account, device: VirtualDevice
) -> None:
    """Names the device did not describe get the catalogued 404s."""
    function = await client.post(f"/v1/devices/{device.device_id}/nope", headers=ada.auth)
    variable = await client.get(f"/v1/devices/{device.device_id}/nope", headers=ada.auth)
    assert (404, "Function not found") == (function.status_code, function.json()["error"])
    assert (404, "Variable not found") == (variable.status_code, variable.json()["error"])


async def test_device_by_name(client: httpx.AsyncClient, ada: Account, device: VirtualDevice) -> None:
    """A device name works wherever an id does."""
    renamed = await client.put(f"/v1/devices/{device.device_id}", json={"name": "kitchen"}, headers=ada.auth)
    assert ("kitchen", device.device_id) == (renamed.json()["name"], renamed.json()["id"])
    response = await client.get("/v1/devices/kitchen/vint", headers=ada.auth)
    assert -42 == response.json()["result"]


async def test_ping_and_signal(client: httpx.AsyncClient, ada: Account, device: VirtualDevice) -> None:
    """ping answers online:true; signal turns the device's rainbow on and off."""
    ping = await client.put(f"/v1/devices/{device.device_id}/ping", headers=ada.auth)
    assert {"online": True, "ok": True} == ping.json()
    on = await client.put(f"/v1/devices/{device.device_id}", data={"signal": "1"}, headers=ada.auth)
    assert {"id": device.device_id, "connected": True, "signaling": True} == on.json()
    assert device.signaling
    await client.put(f"/v1/devices/{device.device_id}", data={"signal": "0"}, headers=ada.auth)
    assert not device.signaling


async def test_notes(client: httpx.AsyncClient, ada: Account, device: VirtualDevice) -> None:
    """Notes are stored and shown."""
    await client.put(f"/v1/devices/{device.device_id}", json={"notes": "on the shelf"}, headers=ada.auth)
    body = (await client.get(f"/v1/devices/{device.device_id}", headers=ada.auth)).json()
    assert "on the shelf" == body["notes"]


async def test_nothing_to_do(client: httpx.AsyncClient, ada: Account, device: VirtualDevice) -> None:
    """A PUT without a known field changes nothing and says so."""
    response = await client.put(f"/v1/devices/{device.device_id}", json={"colour": "red"}, headers=ada.auth)
    assert (400, "Nothing to do?") == (response.status_code, response.json()["error"])


async def test_offline_device(client: httpx.AsyncClient, ada: Account, device: VirtualDevice) -> None:
    """Once the device goes away: offline in the API, calls 404, ping online:false."""
    await device.stop()

    async def offline() -> bool:
        body = (await client.get(f"/v1/devices/{device.device_id}", headers=ada.auth)).json()
        return body["online"] is False

    await wait_until(offline)
    call = await client.post(f"/v1/devices/{device.device_id}/echo_len", headers=ada.auth)
    assert 404 == call.status_code
    assert {"online": False, "ok": True} == (
        await client.put(f"/v1/devices/{device.device_id}/ping", headers=ada.auth)
    ).json()


async def test_other_user_gets_nothing(
    client: httpx.AsyncClient, ada: Account, bob: Account, device: VirtualDevice
) -> None:
    """Bob can neither see, read, call, signal, rename, claim nor unclaim Ada's device; missing look alike."""
    did = device.device_id
    assert [] == (await client.get("/v1/devices", headers=bob.auth)).json()
    attempts = [
        await client.get(f"/v1/devices/{did}", headers=bob.auth),
        await client.get(f"/v1/devices/{did}/vint", headers=bob.auth),
        await client.post(f"/v1/devices/{did}/echo_len", headers=bob.auth),
        await client.put(f"/v1/devices/{did}", json={"signal": True}, headers=bob.auth),
        await client.put(f"/v1/devices/{did}", json={"name": "stolen"}, headers=bob.auth),
        await client.put(f"/v1/devices/{did}/ping", headers=bob.auth),
        await client.delete(f"/v1/devices/{did}", headers=bob.auth),
    ]
    assert [403] * len(attempts) == [r.status_code for r in attempts]
    missing = await client.get("/v1/devices/" + "0" * 24, headers=bob.auth)
    assert (missing.status_code, missing.json()) == (attempts[0].status_code, attempts[0].json())
    claim = await client.post("/v1/devices", json={"id": did}, headers=bob.auth)
    assert 403 == claim.status_code
    assert not device.signaling
    body = (await client.get(f"/v1/devices/{did}", headers=ada.auth)).json()
    assert "ada@example.com" == body["owner"]


async def test_unclaim_and_claim_again(
    client: httpx.AsyncClient, ada: Account, bob: Account, device: VirtualDevice
) -> None:
    """After Ada releases the device, Bob may claim it; it then is his alone."""
    released = await client.delete(f"/v1/devices/{device.device_id}", headers=ada.auth)
    assert {"ok": True} == released.json()
    claimed = await client.post("/v1/devices", json={"id": device.device_id}, headers=bob.auth)
    assert {"ok": True, "deviceID": device.device_id, "claimed": True} == {
        k: claimed.json()[k] for k in ("ok", "deviceID", "claimed")
    }
    assert [device.device_id] == [d["id"] for d in (await client.get("/v1/devices", headers=bob.auth)).json()]
    assert [] == (await client.get("/v1/devices", headers=ada.auth)).json()


async def test_names_are_unique_per_owner(
    client: httpx.AsyncClient, ada: Account, runtime: Runtime, device: VirtualDevice
) -> None:
    """Two of Ada's devices cannot share a name."""
    other = await connect_device(client, ada, runtime)
    try:
        await client.put(f"/v1/devices/{device.device_id}", json={"name": "twin"}, headers=ada.auth)
        clash = await client.put(f"/v1/devices/{other.device_id}", json={"name": "twin"}, headers=ada.auth)
        assert 400 == clash.status_code
    finally:
        await other.stop()


async def test_claim_unknown_device(client: httpx.AsyncClient, ada: Account) -> None:
    """Claiming an id the cloud has never seen is a 404; a malformed id a 400."""
    assert 404 == (await client.post("/v1/devices", json={"id": "a" * 24}, headers=ada.auth)).status_code
    assert 400 == (await client.post("/v1/devices", json={"id": "xyz"}, headers=ada.auth)).status_code


async def test_claim_code(client: httpx.AsyncClient, ada: Account) -> None:
    """POST /v1/device_claims gives a one-time code and the ids already owned."""
    body = (await client.post("/v1/device_claims", headers=ada.auth)).json()
    assert (True, []) == (len(body["claim_code"]) >= 40, body["device_ids"])


async def test_unknown_device_waits_for_approval(
    client: httpx.AsyncClient, ada: Account, runtime: Runtime, clock: FakeClock
) -> None:
    """A device with an unregistered key is refused and its key recorded; after approval it connects."""
    from devicecloud.virtualdevice.identity import generate_identity

    identity = generate_identity()
    device = virtual_device(runtime, identity)
    await device.start()

    async def recorded() -> bool:
        clock.advance(1.0)  # offered keys are written behind, with the next flush
        return [identity.device_id] == [p.device_id for p in await runtime.device_keys.pending()]

    await wait_until(recorded)
    assert not device.connected
    await device.stop()
    await runtime.device_keys.approve(identity.device_id)
    await device.start()
    await device.wait_connected(10)
    await device.stop()


async def test_claim_code_presented_by_the_device(
    client: httpx.AsyncClient, ada: Account, runtime: Runtime
) -> None:
    """A device that publishes spark/device/claim/code with Ada's code becomes Ada's (the setup-app flow)."""
    code = (await client.post("/v1/device_claims", headers=ada.auth)).json()["claim_code"]
    device = await connect_device(client, None, runtime)
    try:
        await device.publish("spark/device/claim/code", code, private=True)

        async def claimed() -> bool:
            listed = (await client.get("/v1/devices", headers=ada.auth)).json()
            return [device.device_id] == [d["id"] for d in listed]

        await wait_until(claimed)
        again = await connect_device(client, None, runtime)
        try:
            await again.publish("spark/device/claim/code", code, private=True)
            await handled(runtime, again.device_id)  # the gateway has run the claim hook for that event
            listed = (await client.get("/v1/devices", headers=ada.auth)).json()
            assert [device.device_id] == [d["id"] for d in listed]
        finally:
            await again.stop()
    finally:
        await device.stop()


async def test_silent_device_times_out_then_goes_offline(
    client: httpx.AsyncClient, ada: Account, runtime: Runtime, clock: FakeClock
) -> None:
    """A function that never answers gets 408 at the request timeout; past the keep-alive window the device is
    offline. Time is the injected clock: nothing here sleeps for it."""
    never, entered = asyncio.Event(), asyncio.Event()

    async def hang(_arg: str) -> int:
        entered.set()
        await never.wait()
        return 0

    device = await connect_device(client, ada, runtime, setup=lambda d: d.add_function("hang", hang))
    try:
        call = asyncio.create_task(client.post(f"/v1/devices/{device.device_id}/hang", headers=ada.auth))
        await asyncio.wait_for(entered.wait(), 10)  # the call reached the device
        clock.advance(runtime.settings.device_request_timeout + 0.1)
        response = await call
        assert (408, "Timed out.") == (response.status_code, response.json()["error"])
        await device.stop()  # the device vanishes; the gateway only learns it from silence
        clock.advance(runtime.settings.device_keepalive * 2)

        async def offline() -> bool:
            body = (await client.get(f"/v1/devices/{device.device_id}", headers=ada.auth)).json()
            return body["online"] is False

        await wait_until(offline)
    finally:
        never.set()
        await device.stop()


async def test_key_of_an_unowned_known_device_cannot_be_replaced(
    client: httpx.AsyncClient, ada: Account, bob: Account, runtime: Runtime
) -> None:
    """Bob may register a key for a new device, not replace the key of one the cloud knows and nobody owns."""
    from devicecloud.virtualdevice import generate_identity

    known, fresh, thief = generate_identity(), generate_identity(), generate_identity()
    await runtime.device_keys.add(known.device_id, known.public_key_pem())
    taken = await client.post(
        f"/v1/provisioning/{known.device_id}", json={"publicKey": thief.public_key_pem()}, headers=bob.auth
    )
    assert 403 == taken.status_code
    same = await client.post(
        f"/v1/provisioning/{known.device_id}", json={"publicKey": known.public_key_pem()}, headers=bob.auth
    )
    assert 200 == same.status_code
    new = await client.post(
        f"/v1/provisioning/{fresh.device_id}", json={"publicKey": fresh.public_key_pem()}, headers=bob.auth
    )
    assert {"ok": True, "id": fresh.device_id} == new.json()
    bad = await client.post(
        f"/v1/provisioning/{fresh.device_id}", json={"publicKey": "nope"}, headers=bob.auth
    )
    assert (400, "invalid_key") == (bad.status_code, bad.json()["error"])
