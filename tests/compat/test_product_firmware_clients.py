"""
Product firmware with particle-api-js, unchanged, against a running devicecloud (issue 12 section 4):
upload (its ``file`` field named ``firmware.bin``), list, get, update, download, release, and the device
lock calls with a product (lock with ``flash``, unlock, mark as development). particle-cli has no product
firmware commands.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import httpx
import pytest
from tests.compat.conftest import DeviceRunner, NodeFlow, wait_for
from tests.support.server import LiveServer

from devicecloud.domain.firmware import build_module
from devicecloud.virtualdevice import generate_identity

pytestmark = pytest.mark.compat

DEVICE = f"{0xF1:024x}"


@pytest.fixture(scope="module")
def product(server: LiveServer, device_runner: DeviceRunner) -> dict[str, Any]:
    """
    The product, with a bare imported device for the lock calls and a connected one already running
    version 7 (a first release needs the version running on a device of the product).
    """
    with httpx.Client(base_url=server.url, timeout=30) as http:
        login = http.post(
            "/oauth/token",
            data={"grant_type": "password", "username": server.email, "password": server.password},
            auth=("particle", "particle"),
        )
        auth = {"Authorization": f"Bearer {login.json()['access_token']}"}
        body = {"name": "Firmware Fleet", "platform_id": 6, "settings": {"quarantine": False}}
        created = http.post("/v1/products", json=body, headers=auth)
        assert created.status_code == 201, created.text
        found = dict(created.json()["product"])
        imported = http.post(f"/v1/products/{found['slug']}/devices", json={"id": DEVICE}, headers=auth)
        assert imported.status_code == 200, imported.text
        identity = generate_identity()
        key = {"deviceID": identity.device_id, "publicKey": identity.public_key_pem(), "algorithm": "rsa"}
        sent = http.post(f"/v1/provisioning/{identity.device_id}", json=key, headers=auth)
        assert sent.status_code == 200, sent.text
        device_runner.connect(identity, product_id=found["id"], product_firmware_version=7)

        def runs_seven() -> bool:
            shown = http.get(f"/v1/products/{found['slug']}/devices/{identity.device_id}", headers=auth)
            return shown.status_code == 200 and shown.json().get("firmware_version") == 7

        wait_for(runs_seven, timeout=20)
    return found


def test_particle_api_js_product_firmware_calls(
    node_dir: Path, server: LiveServer, product: dict[str, Any], tmp_path: Path
) -> None:
    binary = build_module(b"api-js product firmware" * 20, platform_id=6, product=(product["id"], 7))
    path = tmp_path / "firmware.bin"
    path.write_bytes(binary)
    out = NodeFlow(node_dir, server, "product_firmware_flow.js")(
        "owner", product["slug"], str(path), "7", DEVICE
    )
    assert out["upload"]["statusCode"] == 201, out["upload"]
    uploaded = out["upload"]["body"]
    assert (uploaded["version"], uploaded["title"], uploaded["size"]) == (7, "From api-js", len(binary))
    assert uploaded["name"] == "firmware.bin"
    listed = out["list"]["body"]
    assert [(f["version"], f["device_count"], f["current"]) for f in listed] == [(7, 1, False)]
    assert isinstance(listed[0]["uploaded_at"], str)
    assert out["get"]["body"]["description"] == "uploaded by the flow"
    assert (out["update"]["body"]["title"], out["update"]["body"]["description"]) == ("Renamed", "edited")
    assert out["download"] == {"size": len(binary), "sha256": hashlib.sha256(binary).hexdigest()}
    released = out["release"]["body"]
    assert (released["version"], released["product_default"], released["intelligent"]) == (7, True, False)
    assert out["lock"]["body"]["desired_firmware_version"] == 7
    assert out["unlock"]["body"]["desired_firmware_version"] is None
    assert out["development"]["body"]["development"] is True
    assert (out["missing"]["ok"], out["missing"]["statusCode"]) == (False, 404)
