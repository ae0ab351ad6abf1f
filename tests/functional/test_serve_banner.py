"""
The banner of ``devicecloud serve`` tells the truth (issue 10, item 9): its "connect another virtual device"
line runs as printed from a clone and registers the device with this server, whatever port and data dir the
server was given.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
from tests.support.server import LiveServer, live_server

ROOT = Path(__file__).resolve().parents[2]


def printed_line_after(server: LiveServer, marker: str) -> str:
    """
    The line the running server printed after ``marker`` (click flushes each echo, so it is readable now).
    """
    assert server.process.stdout is not None
    lines = iter(server.process.stdout.readline, "")
    for line in lines:
        if line.strip() == marker:
            return next(lines).strip()
    raise AssertionError(f"{marker!r} never printed")


def devices_named(server: LiveServer, token: str, name: str) -> list[dict[str, object]]:
    listed = httpx.get(f"{server.url}/v1/devices", headers={"Authorization": f"Bearer {token}"}).json()
    return [device for device in listed if device["name"] == name and device["connected"]]


def test_the_virtual_device_line_registers_with_this_server(tmp_path: Path) -> None:
    """From a clone the line starts with ./dev, and names this server's API and data dir, not the defaults."""
    with live_server(tmp_path / "elsewhere") as server:
        line = printed_line_after(server, "Connect another virtual device:")
        launcher, command, *arguments = shlex.split(line)
        assert (ROOT / "dev") == (Path.cwd() / launcher).resolve(), line
        assert "virtual-device" == command
        assert ["--api-url", server.url] == arguments[arguments.index("--api-url") :][:2]

        token = httpx.post(
            f"{server.url}/oauth/token",
            data={"grant_type": "password", "username": server.email, "password": server.password},
            auth=("particle", "particle"),
        ).json()["access_token"]
        # ./dev would install a virtualenv; the same command through this interpreter, from another directory
        # and without the server's environment, shows the arguments alone are enough.
        environment = {key: value for key, value in os.environ.items() if not key.startswith("DEVICECLOUD_")}
        device = subprocess.Popen(
            [sys.executable, "-m", "devicecloud", command, *arguments],
            cwd=tmp_path,
            env=environment,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        try:
            deadline = time.monotonic() + 30
            while not devices_named(server, token, "my-device"):
                assert device.poll() is None, device.communicate()[0]
                assert time.monotonic() < deadline, "the virtual device never showed up"
                time.sleep(0.1)
        finally:
            device.send_signal(signal.SIGTERM)
            output = device.communicate(timeout=15)[0]
        assert 0 == device.returncode, output
