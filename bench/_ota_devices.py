"""
The update targets of ``ota_bench.py --only concurrent``: a separate process (pinned to core 1 like the
benchmark) playing ``count`` 2.x ``VirtualDevice`` s that take over-the-air updates.

Apart from the benchmark's own process so that reading and decrypting 100 MB of OTA chunks does not stall the
loop the function calls are measured on: each of these devices reads up to 256 KB at a time, and a hundred
of them at once kept that loop away from the callers' replies for hundreds of milliseconds at a time, which
measured the load generator rather than the server. The kernel shares core 1 between the two processes.

Spec (``argv[1]``, JSON): ``port``, ``server_public_key`` (PEM), ``count``. Prints ``READY {"ids": [...]}``
once every device is connected, then answers stdin lines: ``wait {"<id>": "<sha256 hex>", ...}`` →
``DONE {"at": {"<id>": <time.monotonic() when it held that image>}}`` once every listed device holds its
image (CLOCK_MONOTONIC, comparable with the benchmark's); ``quit`` stops the devices and exits.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import structlog

from _common import emit
from devicecloud.protocol import ResponseStyle
from devicecloud.virtualdevice import VirtualDevice, generate_identity


async def wait_for(devices: dict[str, VirtualDevice], wanted: dict[str, str]) -> dict[str, float]:
    """When each device came to hold the image whose SHA-256 ``wanted`` gives (hashed once per new image)."""
    at: dict[str, float] = {}
    seen: dict[str, int] = {}
    while len(at) < len(wanted):
        for device_id, digest in wanted.items():
            firmware = devices[device_id].firmware
            if device_id in at or firmware is None or seen.get(device_id) == id(firmware):
                continue
            seen[device_id] = id(firmware)
            if hashlib.sha256(firmware).hexdigest() == digest:
                at[device_id] = time.monotonic()
        await asyncio.sleep(0.005)
    return at


async def run(spec: dict[str, object]) -> None:
    port, count = int(str(spec["port"])), int(str(spec["count"]))
    key = str(spec["server_public_key"]).encode()
    devices: dict[str, VirtualDevice] = {}
    for _ in range(count):
        identity = generate_identity()
        devices[identity.device_id] = VirtualDevice(
            "127.0.0.1",
            port,
            device_id=identity.device_id,
            device_key=identity.private_key,
            server_public_key=key,
            response_style=ResponseStyle.SEPARATE,
        )
    group = list(devices.values())
    for batch in range(0, len(group), 32):
        await asyncio.gather(*(d.start() for d in group[batch : batch + 32]))
        await asyncio.gather(*(d.wait_connected(30) for d in group[batch : batch + 32]))
    emit("READY", {"ids": list(devices)})
    loop = asyncio.get_running_loop()
    try:
        while line := (await loop.run_in_executor(None, sys.stdin.readline)).strip():
            word, _, rest = line.partition(" ")
            if word == "wait":
                emit("DONE", {"at": await wait_for(devices, json.loads(rest))})
            elif word == "quit":
                break
    finally:
        await asyncio.gather(*(d.stop() for d in group), return_exceptions=True)


def main() -> int:
    # The devices log every chunk at INFO: that would cost this process more than the updates themselves.
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    asyncio.run(run(json.loads(sys.argv[1])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
