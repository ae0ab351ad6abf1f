"""
particle-cli, unchanged, against a running devicecloud and virtual devices: list, get, call, nyan,
device rename, keys send.

``keys doctor`` is not tested: it opens the device over USB in DFU mode to make a new key before it sends
anything (``src/cmd/keys.js`` ``keyDoctor`` → ``executeWithUsbDevice({enterDfuMode: true})``), so without
hardware it only says "Device is not found".
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import httpx
import pytest
from tests.compat.conftest import DeviceRunner, described_online, wait_for
from tests.support.server import LiveServer

from devicecloud.virtualdevice import VirtualDevice, generate_identity

pytestmark = pytest.mark.compat


class CliRunner:
    """Runs the particle binary with one profile (HOME) and captures what it prints."""

    def __init__(self, node_dir: Path, env: dict[str, str]) -> None:
        self.binary = str(node_dir / "node_modules" / ".bin" / "particle")
        self.env = env

    def __call__(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [self.binary, *args], env=self.env, capture_output=True, text=True, timeout=60, check=False
        )


@pytest.fixture(scope="module")
def cli(node_dir: Path, server: LiveServer, tmp_path_factory: pytest.TempPathFactory) -> CliRunner:
    """A fresh particle-cli profile pointed at the server and logged in as the demo device's owner."""
    home = tmp_path_factory.mktemp("cli-home")
    runner = CliRunner(node_dir, {**os.environ, "HOME": str(home), "NO_COLOR": "1", "FORCE_COLOR": "0"})
    assert 0 == runner("config", "local", "apiUrl", server.url).returncode
    assert 0 == runner("config", "local").returncode
    login = runner("login", "--username", server.email, "--password", server.password)
    assert 0 == login.returncode, login.stdout + login.stderr
    return runner


@pytest.fixture(scope="module")
def own_device(device_runner: DeviceRunner, owner_api: httpx.Client) -> VirtualDevice:
    """A virtual device run by the test, registered and claimed through the API, online."""
    identity = generate_identity()
    sent = owner_api.post(
        f"/v1/provisioning/{identity.device_id}",
        json={"deviceID": identity.device_id, "publicKey": identity.public_key_pem(), "algorithm": "rsa"},
    )
    assert 200 == sent.status_code, sent.text
    claimed = owner_api.post("/v1/devices", json={"id": identity.device_id})
    assert 200 == claimed.status_code, claimed.text
    device = device_runner.connect(identity)
    wait_for(described_online(owner_api, identity.device_id))
    return device


def clean(output: str) -> str:
    """The CLI's text without the spinner's terminal control sequences."""
    return output.replace("\x1b[2K", "").replace("\x1b[1G", "")


def test_list_shows_the_demo_device(cli: CliRunner, owner_api: httpx.Client) -> None:
    """list shows the demo device online with its variables (and types) and its functions."""
    demo_id = owner_api.get("/v1/devices/demo").json()["id"]
    result = cli("list")
    assert 0 == result.returncode, result.stderr
    lines = [line.strip() for line in clean(result.stdout).splitlines()]
    start = lines.index(f"demo [{demo_id}] (Photon) is online")
    assert [
        "Variables:",
        "uptime (int32)",
        "temperature (double)",
        "greeting (string)",
        "led (bool)",
        "Functions:",
        "int digitalread (String args)",
        "int digitalwrite (String args)",
        "int analogread (String args)",
        "int analogwrite (String args)",
    ] == lines[start + 1 : start + 11]


def test_get_variable(cli: CliRunner) -> None:
    """get prints the value of a double variable."""
    result = cli("get", "demo", "temperature")
    assert (0, "21.5") == (result.returncode, result.stdout.strip())


def test_call_then_get(cli: CliRunner) -> None:
    """call digitalwrite D7,HIGH prints the return value 1, and the led variable then reads true."""
    called = cli("call", "demo", "digitalwrite", "D7,HIGH")
    assert (0, "1") == (called.returncode, clean(called.stdout).strip())
    led = cli("get", "demo", "led")
    assert (0, "true") == (led.returncode, led.stdout.strip())


def test_call_unknown_function_fails(cli: CliRunner) -> None:
    """Calling a function the device lacks fails and says the function was not found (HTTP 404)."""
    result = cli("call", "demo", "nope")
    assert 1 == result.returncode
    assert "Function `nope` not found: HTTP error 404" in clean(result.stdout + result.stderr)


def test_nyan_on_and_off(cli: CliRunner, own_device: VirtualDevice) -> None:
    """nyan on makes the device signal (rainbow LED) and nyan off stops it."""
    on = cli("nyan", own_device.device_id, "on")
    assert 0 == on.returncode, on.stdout + on.stderr
    wait_for(lambda: own_device.signaling)
    off = cli("nyan", own_device.device_id, "off")
    assert 0 == off.returncode, off.stdout + off.stderr
    wait_for(lambda: not own_device.signaling)
    assert 2 == own_device.statistics().signals


def test_device_rename(cli: CliRunner, own_device: VirtualDevice, owner_api: httpx.Client) -> None:
    """device rename <id> <name> renames the device, and the API and list show the new name."""
    result = cli("device", "rename", own_device.device_id, "cli_renamed")
    assert 0 == result.returncode, result.stdout + result.stderr
    assert f"Successfully renamed device {own_device.device_id} to: cli_renamed" in result.stdout
    assert "cli_renamed" == owner_api.get(f"/v1/devices/{own_device.device_id}").json()["name"]
    assert f"cli_renamed [{own_device.device_id}] (Photon) is online" in clean(cli("list").stdout)


def test_keys_send_then_claim_and_connect(
    cli: CliRunner, device_runner: DeviceRunner, owner_api: httpx.Client, tmp_path: Path
) -> None:
    """keys send registers a new device's public key; once claimed through the API the device connects."""
    identity = generate_identity()
    key_file = tmp_path / f"{identity.device_id}.pub.pem"
    key_file.write_text(identity.public_key_pem())
    sent = cli("keys", "send", identity.device_id, str(key_file))
    assert 0 == sent.returncode, sent.stdout + sent.stderr
    assert "submitting public key succeeded!" in sent.stdout
    claimed = owner_api.post("/v1/devices", json={"id": identity.device_id})
    assert 200 == claimed.status_code, claimed.text
    device_runner.connect(identity)
    wait_for(described_online(owner_api, identity.device_id))
    listed = {d["id"]: d["connected"] for d in owner_api.get("/v1/devices").json()}
    assert listed[identity.device_id] is True
