"""
A real ``devicecloud serve`` process on a free port, for tests that go through the network like users do.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

START_TIMEOUT = 90.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class LiveServer:
    url: str
    email: str
    password: str
    data_dir: Path
    process: subprocess.Popen[str]
    device_port: int = 0

    def output(self) -> str:
        """
        Everything the server printed so far (only after it stopped).
        """
        out, _ = self.process.communicate(timeout=10)
        return out


@contextmanager
def live_server(
    data_dir: Path,
    *,
    email: str = "admin@example.com",
    password: str = "admin password",
    device_port: int | None = None,
    args: Sequence[str] = (),
    **env: str,
) -> Iterator[LiveServer]:
    """
    Start the server as the README does, wait until it answers, stop it with SIGTERM and check it exits 0.

    The device gateway listens on ``device_port`` (a free port unless given): servers never collide on 5683.
    ``args`` are more ``serve`` options (``--workers 2``).
    """
    port = free_port()
    device_port = free_port() if device_port is None else device_port
    environment = {
        **os.environ,
        "DEVICECLOUD_PASSWORD_TIME_COST": "1",
        "DEVICECLOUD_DEVICE_UDP_PORT": "0",  # a free port: servers never collide on 5684
        "DEVICECLOUD_PASSWORD_MEMORY_COST": "8",
        "DEVICECLOUD_PASSWORD_PARALLELISM": "1",
        **env,
    }
    command = [
        sys.executable,
        "-m",
        "devicecloud",
        "serve",
        "--port",
        str(port),
        "--device-port",
        str(device_port),
        "--data-dir",
        str(data_dir),
        "--admin-email",
        email,
        "--admin-password",
        password,
        *args,
    ]
    process = subprocess.Popen(
        command, env=environment, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    url = f"http://127.0.0.1:{port}"
    server = LiveServer(
        url=url, email=email, password=password, data_dir=data_dir, process=process, device_port=device_port
    )
    try:
        # A bound on a hang, not a speed check: a loaded 2-core machine has taken more than 30 s to start.
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"server exited early:\n{process.communicate()[0]}")
            try:
                if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"server did not start within {START_TIMEOUT:.0f} s")
            time.sleep(0.1)
        yield server
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if process.stdout is not None and not process.stdout.closed:
            process.stdout.close()
