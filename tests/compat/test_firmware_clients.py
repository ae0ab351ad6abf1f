"""
The official clients flash a virtual device through devicecloud: particle-cli ``flash <device> <file.bin>``
and particle-api-js ``flashDevice``, unchanged; a binary for another platform is refused with the reason.
"""

from __future__ import annotations

import os
import random
import subprocess
from pathlib import Path

import httpx
import pytest
from tests.compat.conftest import DeviceRunner, NodeFlow, described_online, wait_for
from tests.support.server import LiveServer

from devicecloud.domain.firmware import build_module
from devicecloud.virtualdevice import VirtualDevice, generate_identity
from devicecloud.virtualdevice.updates import UpdateBehaviour

pytestmark = pytest.mark.compat


def binary(path: Path, *, platform: int = 6, seed: int = 1) -> Path:
    path.write_bytes(build_module(random.Random(seed).randbytes(20_000), platform_id=platform))
    return path


@pytest.fixture(scope="module")
def device(device_runner: DeviceRunner, owner_api: httpx.Client) -> VirtualDevice:
    """A claimed virtual Photon that loses some fast-OTA chunks (so the resend path runs too)."""
    identity = generate_identity()
    sent = owner_api.post(
        f"/v1/provisioning/{identity.device_id}",
        json={"deviceID": identity.device_id, "publicKey": identity.public_key_pem(), "algorithm": "rsa"},
    )
    assert 200 == sent.status_code, sent.text
    assert 200 == owner_api.post("/v1/devices", json={"id": identity.device_id}).status_code
    virtual = device_runner.connect(
        identity, reconnect=True, updates=UpdateBehaviour(drop_chunks=0.1, drop_seed=2)
    )
    wait_for(described_online(owner_api, identity.device_id))
    return virtual


@pytest.fixture(scope="module")
def cli_home(node_dir: Path, server: LiveServer, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    home = tmp_path_factory.mktemp("cli-home")
    env = {**os.environ, "HOME": str(home), "NO_COLOR": "1", "FORCE_COLOR": "0"}
    particle = str(node_dir / "node_modules" / ".bin" / "particle")
    for args in (["config", "local", "apiUrl", server.url], ["config", "local"]):
        assert 0 == subprocess.run([particle, *args], env=env, capture_output=True, check=False).returncode
    login = subprocess.run(
        [particle, "login", "--username", server.email, "--password", server.password],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert 0 == login.returncode, login.stdout + login.stderr
    return env


def particle(node_dir: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    command = [str(node_dir / "node_modules" / ".bin" / "particle"), *args]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=60, check=False)


def online(device: VirtualDevice, api: httpx.Client) -> None:
    """Wait until the device is connected and the server shows it online with its Describe."""
    wait_for(lambda: device.connected, timeout=20)
    wait_for(described_online(api, device.device_id), timeout=20)


def updated_and_back(device: VirtualDevice, api: httpx.Client, image: bytes, connects: int) -> None:
    """The device took ``image``, reset, and is online again on a new session."""
    wait_for(lambda: device.firmware == image, timeout=20)
    wait_for(lambda: device.statistics().connects > connects, timeout=20)
    online(device, api)


def test_cli_flash_updates_the_device(
    node_dir: Path, cli_home: dict[str, str], device: VirtualDevice, owner_api: httpx.Client, tmp_path: Path
) -> None:
    online(device, owner_api)
    image = binary(tmp_path / "app.bin", seed=11)
    connects = device.statistics().connects
    name = owner_api.get(f"/v1/devices/{device.device_id}").json()["name"]
    result = particle(node_dir, cli_home, "flash", name, str(image))  # by name, as users do
    assert 0 == result.returncode, result.stdout + result.stderr
    assert "Flash success!" in result.stdout
    updated_and_back(device, owner_api, image.read_bytes(), connects)


def test_cli_flash_of_a_binary_for_another_platform_fails_with_the_reason(
    node_dir: Path, cli_home: dict[str, str], device: VirtualDevice, owner_api: httpx.Client, tmp_path: Path
) -> None:
    online(device, owner_api)
    image = binary(tmp_path / "argon.bin", platform=12)
    result = particle(node_dir, cli_home, "flash", device.device_id, str(image))
    assert 0 != result.returncode
    assert "The binary is for platform 12, but the device is platform 6" in result.stdout + result.stderr


def test_api_js_flash_device(
    node_dir: Path, server: LiveServer, device: VirtualDevice, owner_api: httpx.Client, tmp_path: Path
) -> None:
    online(device, owner_api)
    image = binary(tmp_path / "app.bin", seed=12)
    flashed = NodeFlow(node_dir, server, "firmware_flow.js")("flash", device.device_id, str(image))[
        "flashDevice"
    ]
    assert (True, 200) == (flashed["ok"], flashed["statusCode"]), flashed
    assert {"id": device.device_id, "status": "Update started"} == flashed["body"]
    wait_for(lambda: device.firmware == image.read_bytes(), timeout=20)
