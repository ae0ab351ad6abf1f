"""
particle-api-js, unchanged, against a running devicecloud and virtual devices: list, get, variables,
functions, signal, rename, claim codes, public keys, claim and remove.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
from tests.compat.conftest import DeviceRunner, NodeFlow, described_online, wait_for
from tests.support.server import LiveServer

from devicecloud.virtualdevice import VirtualDevice, generate_identity

pytestmark = pytest.mark.compat
DEMO_FUNCTIONS = ["digitalread", "digitalwrite", "analogread", "analogwrite"]
DEMO_VARIABLES = {"uptime": "int32", "temperature": "double", "greeting": "string", "led": "bool"}


@pytest.fixture(scope="module")
def flow(node_dir: Path, server: LiveServer) -> NodeFlow:
    return NodeFlow(node_dir, server, "devices_flow.js")


@pytest.fixture(scope="module")
def reads(flow: NodeFlow) -> dict[str, Any]:
    return flow("reads")


@pytest.fixture(scope="module")
def provisioned(flow: NodeFlow, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Any, dict[str, Any]]:
    """A new device identity whose key sendPublicKey registered and which claimDevice claimed."""
    identity = generate_identity()
    key_file = tmp_path_factory.mktemp("keys") / f"{identity.device_id}.pub.pem"
    key_file.write_text(identity.public_key_pem())
    return identity.device_id, identity, flow("provision", identity.device_id, str(key_file))


@pytest.fixture(scope="module")
def new_device(
    provisioned: tuple[str, Any, dict[str, Any]], device_runner: DeviceRunner, owner_api: httpx.Client
) -> VirtualDevice:
    """The provisioned device, connected from the test process and described."""
    device_id, identity, _ = provisioned
    device = device_runner.connect(identity)
    wait_for(described_online(owner_api, device_id))
    return device


def test_list_devices(reads: dict[str, Any]) -> None:
    """listDevices() returns an array holding the demo device, online, with its functions and variables."""
    listed = {d["name"]: d for d in reads["listDevices"]["body"]}
    demo = listed["demo"]
    assert (True, True, DEMO_FUNCTIONS, DEMO_VARIABLES) == (
        demo["connected"],
        demo["online"],
        demo["functions"],
        demo["variables"],
    )


def test_get_device(reads: dict[str, Any], server: LiveServer) -> None:
    """getDevice() by name and by id gives the same device, with the fields the clients read."""
    by_name, by_id = reads["getDevice"]["body"], reads["getDeviceById"]["body"]
    assert by_name == {**by_id, "last_heard": by_name["last_heard"]}
    assert ("demo", server.email, True, 6, DEMO_FUNCTIONS, DEMO_VARIABLES) == (
        by_id["name"],
        by_id["owner"],
        by_id["connected"],
        by_id["platform_id"],
        by_id["functions"],
        by_id["variables"],
    )


def test_get_variable(reads: dict[str, Any]) -> None:
    """getVariable() gets {name, result, coreInfo} with the double's value."""
    body = reads["getVariable"]["body"]
    assert ("temperature", 21.5, reads["getDevice"]["body"]["id"]) == (
        body["name"],
        body["result"],
        body["coreInfo"]["deviceID"],
    )


def test_call_function(reads: dict[str, Any]) -> None:
    """callFunction() gets the return value (1 for digitalwrite), and the led variable then reads true."""
    body = reads["callFunction"]["body"]
    demo_id = reads["getDevice"]["body"]["id"]
    assert {"id": demo_id, "name": "demo", "connected": True, "return_value": 1} == body
    assert True is reads["ledAfterCall"]["body"]["result"]


def test_missing_function_and_variable(reads: dict[str, Any]) -> None:
    """A function or variable the device lacks rejects with 404 and the server's description."""
    assert (False, 404, "Function nope not found") == (
        reads["callMissing"]["ok"],
        reads["callMissing"]["statusCode"],
        reads["callMissing"]["message"],
    )
    assert (False, 404, "Variable nope not found") == (
        reads["getMissingVariable"]["ok"],
        reads["getMissingVariable"]["statusCode"],
        reads["getMissingVariable"]["message"],
    )


def test_send_public_key(provisioned: tuple[str, Any, dict[str, Any]]) -> None:
    """sendPublicKey() registers the new device's key."""
    device_id, _, out = provisioned
    assert (200, {"ok": True, "id": device_id}) == (
        out["sendPublicKey"]["statusCode"],
        out["sendPublicKey"]["body"],
    )


def test_claim_device(provisioned: tuple[str, Any, dict[str, Any]], new_device: VirtualDevice) -> None:
    """claimDevice() claims the new device, which then connects and is online."""
    device_id, _, out = provisioned
    body = out["claimDevice"]["body"]
    assert (True, device_id, True) == (body["ok"], body["deviceID"], body["claimed"])
    assert new_device.connected


def test_get_claim_code(provisioned: tuple[str, Any, dict[str, Any]], reads: dict[str, Any]) -> None:
    """getClaimCode() gets a claim code and the ids of the account's devices."""
    device_id, _, out = provisioned
    body = out["getClaimCode"]["body"]
    assert isinstance(body["claim_code"], str)
    assert body["claim_code"]
    assert {device_id, reads["getDevice"]["body"]["id"]} == set(body["device_ids"])


def test_signal_device(flow: NodeFlow, new_device: VirtualDevice) -> None:
    """signalDevice() true makes the device signal and false stops it."""
    on = flow("signal", new_device.device_id, "on")["signalDevice"]
    assert (200, new_device.device_id, True) == (on["statusCode"], on["body"]["id"], on["body"]["signaling"])
    wait_for(lambda: new_device.signaling)
    off = flow("signal", new_device.device_id, "off")["signalDevice"]
    assert (200, False) == (off["statusCode"], off["body"]["signaling"])
    wait_for(lambda: not new_device.signaling)


def test_rename_device(flow: NodeFlow, new_device: VirtualDevice) -> None:
    """renameDevice() echoes the new name, and getDevice() then finds the device by it."""
    out = flow("rename", new_device.device_id, "js_renamed")
    assert (200, "js_renamed") == (out["renameDevice"]["statusCode"], out["renameDevice"]["body"]["name"])
    assert new_device.device_id == out["getDevice"]["body"]["id"]


def test_remove_device(flow: NodeFlow, new_device: VirtualDevice) -> None:
    """removeDevice() unclaims the device: it leaves the list and getDevice() is refused."""
    out = flow("remove", new_device.device_id)
    assert (200, {"ok": True}) == (out["removeDevice"]["statusCode"], out["removeDevice"]["body"])
    assert new_device.device_id not in {d["id"] for d in out["listDevices"]["body"]}
    assert (False, 403) == (out["getDevice"]["ok"], out["getDevice"]["statusCode"])
