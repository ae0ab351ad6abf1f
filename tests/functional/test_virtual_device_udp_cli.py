"""
``devicecloud virtual-device --protocol udp`` (issue 13 §7): the Gen3 line the ``serve`` banner prints runs as
printed, makes an EC P-256 identity, registers it as ``ecc`` through the API, connects over UDP/DTLS to the
port the banner names, and its Tinker function and demo variable answer through the API; with
``--sleep-after`` it sleeps and comes back on the same identity.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from tests.support.server import LiveServer, live_server

WAIT = 30.0


def banner_lines(server: LiveServer) -> list[str]:
    """The banner, up to its last line (click flushes each echo, so it is readable now)."""
    assert server.process.stdout is not None
    lines = []
    for line in iter(server.process.stdout.readline, ""):
        lines.append(line.rstrip("\n"))
        if line.startswith("API reference:"):
            return lines
    raise AssertionError(f"the banner never ended: {lines}")


def token_of(server: LiveServer) -> str:
    token: str = httpx.post(
        f"{server.url}/oauth/token",
        data={"grant_type": "password", "username": server.email, "password": server.password},
        auth=("particle", "particle"),
    ).json()["access_token"]
    return token


def online_device(server: LiveServer, token: str, name: str) -> dict[str, object] | None:
    listed = httpx.get(f"{server.url}/v1/devices", headers={"Authorization": f"Bearer {token}"}).json()
    found = [device for device in listed if device["name"] == name and device["connected"]]
    return found[0] if found else None


def start(arguments: list[str], cwd: Path) -> subprocess.Popen[str]:
    environment = {key: value for key, value in os.environ.items() if not key.startswith("DEVICECLOUD_")}
    return subprocess.Popen(
        [sys.executable, "-m", "devicecloud", "virtual-device", *arguments],
        cwd=cwd,
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def stop(device: subprocess.Popen[str]) -> str:
    device.send_signal(signal.SIGTERM)
    output = device.communicate(timeout=15)[0]
    assert 0 == device.returncode, output
    return output


def test_the_banner_names_the_udp_gateway_and_its_gen3_line_works(tmp_path: Path) -> None:
    with live_server(tmp_path / "data") as server:
        lines = banner_lines(server)
        udp = [re.search(r"device gateway on .*:(\d+) \(UDP/DTLS", line) for line in lines]
        ports = [int(match.group(1)) for match in udp if match]
        assert 1 == len(ports), lines
        assert any(f":{server.device_port} (TCP" in line for line in lines), lines
        gen3 = lines[lines.index("Or a Gen3 one (an Argon, over UDP/DTLS):") + 1].strip()
        _, command, *arguments = shlex.split(gen3)
        assert ("virtual-device", ["--protocol", "udp", "--port", str(ports[0])]) == (command, arguments[:4])

        token = token_of(server)
        auth = {"Authorization": f"Bearer {token}"}
        device = start(arguments, tmp_path)
        try:
            deadline = time.monotonic() + WAIT
            while (found := online_device(server, token, "my-argon")) is None:
                assert device.poll() is None, device.communicate()[0]
                assert time.monotonic() < deadline, "the virtual Argon never showed up"
                time.sleep(0.1)
            assert 12 == found["platform_id"]
            device_id = str(found["id"])
            url = f"{server.url}/v1/devices/{device_id}"
            called = httpx.post(f"{url}/digitalwrite", json={"arg": "D7,HIGH"}, headers=auth, timeout=WAIT)
            assert (200, 1) == (called.status_code, called.json()["return_value"]), called.text
            read = httpx.get(f"{url}/led", headers=auth, timeout=WAIT)
            assert (200, True) == (read.status_code, read.json()["result"]), read.text
        finally:
            output = stop(device)
        assert "Registered the device's public key (ecc)" in output
        # The identity it made is an EC P-256 key, kept where the next run finds it.
        state = tmp_path / "data" / "virtual-devices" / "my-argon"
        key = serialization.load_pem_private_key((state / "device_key.pem").read_bytes(), password=None)
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        assert device_id == (state / "device_id").read_text().strip()


def test_a_sleeping_udp_virtual_device_comes_back(tmp_path: Path) -> None:
    seen: list[str] = []
    with live_server(tmp_path / "data") as server:
        lines = banner_lines(server)
        gen3 = lines[lines.index("Or a Gen3 one (an Argon, over UDP/DTLS):") + 1].strip()
        arguments = [*shlex.split(gen3)[2:], "--sleep-after", "0.5", "--sleep-for", "0.5"]
        device = start(arguments, tmp_path)
        try:
            assert device.stdout is not None
            deadline = time.monotonic() + WAIT
            while "Awake and connected again." not in seen:
                assert time.monotonic() < deadline, seen
                line = device.stdout.readline()
                assert line, seen
                seen.append(line.strip())
            token = token_of(server)
            deadline = time.monotonic() + WAIT
            while online_device(server, token, "my-argon") is None:
                assert time.monotonic() < deadline, "the Argon is not online after waking"
                time.sleep(0.1)
        finally:
            output = "\n".join(seen) + stop(device)
        assert 1 == output.count("Registered the device's public key"), output
        assert "Sleeping for 0.5 s (DTLS session kept) …" in seen
