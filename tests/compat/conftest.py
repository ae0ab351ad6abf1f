"""
Fixtures for the official-client tests: the pinned npm clients and a live server.

The npm packages live in tests/compat/node (package.json + package-lock.json); `.ci/run` installs them with
`npm ci`. Locally, run the same once. Without them these tests skip and say how to install.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
from tests.support import unavailable
from tests.support.nats import fresh_bus_url, nats_bus
from tests.support.server import LiveServer, live_server

from devicecloud.virtualdevice import DeviceIdentity, VirtualDevice

T = TypeVar("T")

NODE_DIR = Path(__file__).with_name("node")


@pytest.fixture(scope="session")
def node_dir() -> Path:
    if shutil.which("node") is None:
        unavailable("Node.js is not installed")
    if not (NODE_DIR / "node_modules" / "particle-api-js").is_dir():
        unavailable(f"official npm clients missing: run `npm ci` in {NODE_DIR} (./dev test does)")
    return NODE_DIR


# DEVICECLOUD_TEST_COMPAT_WORKERS=2 runs every official-client test against `serve --workers 2` (on NATS).
WORKERS = int(os.environ.get("DEVICECLOUD_TEST_COMPAT_WORKERS", "1"))


@contextmanager
def compat_server(data_dir: Path, workers: int = 1) -> Iterator[LiveServer]:
    """
    The server the official clients talk to, as the README starts it; with ``workers`` > 1, ``serve
    --workers N`` on a NATS subject root of its own (skipped, failed in CI, without NATS), and ready once the
    demo device (on worker 0) is online.
    """
    if workers == 1:
        with live_server(data_dir, email="owner@example.com", password="owner password") as s:
            yield s
        return
    url = fresh_bus_url()

    async def usable() -> None:
        async with nats_bus(url):
            pass

    asyncio.run(usable())
    with live_server(
        data_dir,
        email="owner@example.com",
        password="owner password",
        args=["--workers", str(workers)],
        DEVICECLOUD_BUS_URL=url,
    ) as s:
        reply = httpx.post(
            f"{s.url}/oauth/token",
            auth=("particle", "particle"),
            data={"grant_type": "password", "username": s.email, "password": s.password},
        )
        auth = {"Authorization": f"Bearer {reply.json()['access_token']}"}

        def online_everywhere() -> bool:
            # Each request a new connection, so either worker answers: the one without the demo's link reads
            # the store, which its worker writes behind (within a second).
            return all(
                httpx.get(f"{s.url}/v1/devices/demo", headers=auth).json().get("connected") is True
                for _ in range(8)
            )

        wait_for(online_everywhere, timeout=30)
        yield s
    asyncio.run(usable())  # drops the subject root's JetStream stream


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    with compat_server(tmp_path_factory.mktemp("compat"), WORKERS) as s:
        yield s


class NodeFlow:
    """
    Runs one phase of a node/*_flow.js driver (``node X_flow.js URL USER PASSWORD PHASE ARGS…``) and returns
    the JSON it printed: what each particle-api-js call gave.
    """

    def __init__(self, node_dir: Path, server: LiveServer, script: str) -> None:
        self.command = ["node", str(node_dir / script), server.url, server.email, server.password]

    def __call__(self, phase: str, *args: str) -> dict[str, Any]:
        result = subprocess.run(
            [*self.command, phase, *args], capture_output=True, text=True, timeout=60, check=False
        )
        assert 0 == result.returncode, result.stderr
        return dict(json.loads(result.stdout))


@pytest.fixture
def cli_env(tmp_path: Path) -> dict[str, str]:
    """
    A clean HOME for particle-cli, so its profiles never touch the developer's own.
    """
    home = tmp_path / "home"
    home.mkdir()
    return {**os.environ, "HOME": str(home), "NO_COLOR": "1", "FORCE_COLOR": "0"}


# ---------------------------------------------------------------- devices (issue 3, scope item 8)


class DeviceRunner:
    """
    Virtual devices run from the test process on an asyncio loop in a background thread, so synchronous tests
    can run an official client as a subprocess while the device answers it.
    """

    def __init__(self, server: LiveServer) -> None:
        self.server = server
        self.server_public_key = (server.data_dir / "server_key.pub.pem").read_bytes()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="virtual-devices", daemon=True)
        self.thread.start()
        self.devices: list[VirtualDevice] = []

    def run(self, coroutine: Coroutine[Any, Any, T], timeout: float = 30) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def connect(self, identity: DeviceIdentity, **options: Any) -> VirtualDevice:
        """
        Connect a device (Tinker and the demo variables unless told otherwise) and wait for its session.
        """
        device = VirtualDevice(
            "127.0.0.1",
            self.server.device_port,
            device_id=identity.device_id,
            device_key=identity.private_key,
            server_public_key=self.server_public_key,
            **{"demo": True, "reconnect": False, **options},
        )
        self.devices.append(device)

        async def start() -> None:
            await device.start()
            await device.wait_connected(10)

        self.run(start())
        return device

    def close(self) -> None:
        async def stop_all() -> None:
            for device in self.devices:
                await device.stop()

        try:
            self.run(stop_all())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)
            self.loop.close()


@pytest.fixture(scope="module")
def device_runner(server: LiveServer) -> Iterator[DeviceRunner]:
    runner = DeviceRunner(server)
    yield runner
    runner.close()


@pytest.fixture(scope="module")
def owner_api(server: LiveServer) -> Iterator[httpx.Client]:
    """
    An httpx client on the server, logged in as the owner of the demo device (Bearer token).
    """
    with httpx.Client(base_url=server.url, timeout=30) as client:
        reply = client.post(
            "/oauth/token",
            auth=("particle", "particle"),
            data={"grant_type": "password", "username": server.email, "password": server.password},
        )
        assert 200 == reply.status_code, reply.text
        client.headers["Authorization"] = f"Bearer {reply.json()['access_token']}"
        yield client


def wait_for(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    """
    Poll a condition another process or thread makes true on its own schedule.
    """
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.02)


def described_online(api: httpx.Client, device_id: str) -> Callable[[], bool]:
    """
    The API shows the device online with its functions (the describe has arrived).
    """

    def check() -> bool:
        reply = api.get(f"/v1/devices/{device_id}")
        return reply.status_code == 200 and reply.json()["connected"] and bool(reply.json()["functions"])

    return check
