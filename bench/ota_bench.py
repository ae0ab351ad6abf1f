"""
OTA benchmark: one large update's throughput against the link's raw encrypted-message throughput, and many
updates at once while function calls to other devices go on.

Against a real ``devicecloud serve`` pinned to core 0 (``DEVICECLOUD_ACCEPT_UNKNOWN_DEVICES=true``, rate
limits off, no demo device); the virtual devices and the HTTP clients run in this process, pinned to core 1.

``single``
    The ceiling first: a cloud-role and a device-role ``protocol.Connection`` joined by a loopback TCP socket
    in this process, the cloud side writing the image as fast-OTA chunk messages (encrypt, frame) as fast as
    the device side reads and decrypts them: payload bytes/s of the link itself, no protocol waits. Then one
    ``PUT /v1/devices/:id`` of a ``--size`` (1 MiB) user-part binary to one 2.x virtual device: payload bytes
    / the time from the request to the device holding the whole image. **Target: ≥ 0.5× the ceiling.**

``concurrent``
    ``--callers`` (500) devices with a function ``bench(arg) → len(arg)`` and ``--updates`` (100) devices to
    update. Function calls (``POST /v1/devices/:id/bench``, 32 in flight, the callers in turn) run for
    ``--duration`` s alone (the baseline, after a warm-up of a third of that), then again while every update
    device is flashed at once with its own binary (from a second HTTP client, one connection per upload, so
    calls never wait for a connection behind the uploads in the client's own pool). The server's RSS is
    sampled every 0.2 s. **Targets: every update succeeds; call p99 during the updates ≤ 2× the baseline
    p99; RSS growth ≤ the binaries' size + 10 KB per update.**

Exit status: 1 when anything fails (server start, a device not connecting, a call not 200, an update not
succeeding or not byte-identical); in a full run 3 when a target is missed. ``--smoke``: 64 KiB, 3 updates,
5 callers, 1.5 s of calls each way; no target enforced.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import logging
import os
import platform
import random
import sys
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import httpx
import structlog

try:
    import sniffio  # noqa: F401 - only whether it is there
except ImportError:
    # httpcore tries `import sniffio` for every lock and event it makes; without the package each try searches
    # sys.path again (15% of this process's time in the concurrent section). None makes it fail at once.
    sys.modules["sniffio"] = None  # type: ignore[assignment]
from cryptography.hazmat.primitives.asymmetric import rsa

from _common import (
    LOADGEN_CORE,
    BenchError,
    Outcome,
    ScriptProcess,
    Server,
    Table,
    can_pin,
    format_table,
    get_token,
    report,
    run_main,
    running_server,
)
from _devicegen import raise_open_files
from devicecloud.domain.firmware import build_module
from devicecloud.protocol import (
    NEED_DATA,
    AcceptDevice,
    ChunkArrived,
    Connection,
    DeviceIdentified,
    HelloReceived,
    ResponseStyle,
    Role,
    SendChunk,
)
from devicecloud.virtualdevice import VirtualDevice, generate_identity

EMAIL = "ota-bench@example.com"
PASSWORD = "ota bench password"  # noqa: S105 - a throwaway account of a throwaway server
CHUNK = 512
QUEUE = 64 * 1024  # bytes the ceiling's writer keeps queued


def binary(size: int, seed: int) -> bytes:
    return build_module(random.Random(seed).randbytes(size - 64), platform_id=6)


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] if ordered else float("nan")


# ---------------------------------------------------------------------------------------------- ceiling


async def link_ceiling(image: bytes) -> float:
    """Payload bytes/s of fast-OTA chunk messages over one encrypted loopback link, no waits."""
    server_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    identity = generate_identity()
    done = asyncio.get_running_loop().create_future()
    received = 0

    async def device_side(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal received
        conn = Connection(
            Role.DEVICE,
            now=time.monotonic(),
            server_public_key=server_key.public_key(),
            device_private_key=identity.private_key,
            device_id=identity.device_id,
        )
        while not done.done():
            data = await reader.read(65536)
            if not data:
                break
            conn.receive_data(data, time.monotonic())
            while (event := conn.next_event()) is not NEED_DATA:
                if isinstance(event, ChunkArrived):
                    received += len(event.data)
                    if received >= len(image):
                        done.set_result(time.monotonic())
            writer.write(conn.data_to_send())
        writer.close()

    server = await asyncio.start_server(device_side, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    cloud = Connection(Role.CLOUD, now=time.monotonic(), server_private_key=server_key)
    writer.write(cloud.data_to_send())
    established = False
    while not established:
        cloud.receive_data(await reader.read(65536), time.monotonic())
        while (event := cloud.next_event()) is not NEED_DATA:
            if isinstance(event, DeviceIdentified):
                cloud.send(AcceptDevice(identity.private_key.public_key()), time.monotonic())
            established = established or isinstance(event, HelloReceived)
        writer.write(cloud.data_to_send())
    started = time.monotonic()
    for index in range(-(-len(image) // CHUNK)):
        cloud.send(SendChunk(index, image[index * CHUNK : (index + 1) * CHUNK], fast=True), time.monotonic())
        writer.write(cloud.data_to_send())
        if writer.transport.get_write_buffer_size() > QUEUE:
            await writer.drain()
    finished = await done
    writer.close()
    server.close()
    return len(image) / (finished - started)


# ---------------------------------------------------------------------------------------------- fleet


class Fleet:
    """Virtual devices connected to the server and claimed by the benchmark's account."""

    def __init__(self, server: Server, http: httpx.AsyncClient) -> None:
        self.server = server
        self.http = http
        self.public_key = (server.data_dir / "server_key.pub.pem").read_bytes()
        self.devices: list[VirtualDevice] = []

    async def add(
        self, count: int, setup: Callable[[VirtualDevice], None] | None = None
    ) -> list[VirtualDevice]:
        made = []
        for _ in range(count):
            identity = generate_identity()
            device = VirtualDevice(
                "127.0.0.1",
                self.server.device_port,
                device_id=identity.device_id,
                device_key=identity.private_key,
                server_public_key=self.public_key,
                response_style=ResponseStyle.SEPARATE,
            )
            if setup is not None:
                setup(device)
            made.append(device)
        for batch in range(0, len(made), 32):
            group = made[batch : batch + 32]
            await asyncio.gather(*(d.start() for d in group))
            await asyncio.gather(*(d.wait_connected(30) for d in group))
        for device in made:
            claimed = await self.http.post("/v1/devices", json={"id": device.device_id})
            if claimed.status_code != 200:
                raise BenchError(f"claim answered {claimed.status_code}: {claimed.text[:200]}")
        self.devices += made
        return made

    async def close(self) -> None:
        await asyncio.gather(*(d.stop() for d in self.devices), return_exceptions=True)


async def flash(http: httpx.AsyncClient, device: VirtualDevice, image: bytes) -> float:
    """Seconds from the PUT to the device holding ``image`` (the update then succeeds)."""
    started = await upload(http, device.device_id, image)
    deadline = started + 600
    while device.firmware != image:
        if time.monotonic() > deadline:
            raise BenchError(f"update of {device.device_id} did not finish")
        await asyncio.sleep(0.005)
    return time.monotonic() - started


async def calls_for(
    http: httpx.AsyncClient, callers: list[VirtualDevice], seconds: float, until: Awaitable[Any] | None = None
) -> list[float]:
    """Closed-loop calls, 32 in flight, for ``seconds`` (and at least until ``until`` is done)."""
    latencies: list[float] = []
    stop_at = time.monotonic() + seconds
    waiting = asyncio.ensure_future(until) if until is not None else None
    turn = 0

    async def worker() -> None:
        nonlocal turn
        while time.monotonic() < stop_at or (waiting is not None and not waiting.done()):
            device = callers[turn % len(callers)]
            turn += 1
            started = time.monotonic()
            reply = await http.post(f"/v1/devices/{device.device_id}/bench", json={"args": "benchmark"})
            if reply.status_code != 200 or reply.json().get("return_value") != 9:
                raise BenchError(f"call answered {reply.status_code}: {reply.text[:200]}")
            latencies.append(time.monotonic() - started)

    await asyncio.gather(*(worker() for _ in range(32)))
    if waiting is not None:
        await waiting
    return latencies


# ---------------------------------------------------------------------------------------------- sections


async def bench_single(args: argparse.Namespace, server: Server, http: httpx.AsyncClient) -> Outcome:
    outcome = Outcome()
    image = binary(args.size, 1)
    ceiling = await link_ceiling(image)
    fleet = Fleet(server, http)
    try:
        (device,) = await fleet.add(1)
        seconds = await flash(http, device, image)
    finally:
        await fleet.close()
    rate = len(image) / seconds
    ratio = rate / ceiling
    outcome.figures = {"size": len(image), "ceiling_bps": ceiling, "update_seconds": seconds, "ratio": ratio}
    if ratio < 0.5:
        outcome.missed.append(f"single: {ratio:.2f}× the link's raw throughput (target ≥ 0.5×)")
    outcome.table = Table(
        "One update of a 1 MiB binary against the link's raw encrypted-message throughput (target ≥ 0.5×)",
        ["binary", "link ceiling (in-process)", "update", "update ÷ ceiling"],
        [[f"{len(image):,} B", f"{ceiling / 1e6:.2f} MB/s", f"{seconds:.2f} s = {rate / 1e6:.2f} MB/s",
          f"{ratio:.2f}×"]],
    )  # fmt: skip
    return outcome


async def upload(http: httpx.AsyncClient, device_id: str, image: bytes) -> float:
    """``PUT /v1/devices/:id`` with ``image``; when it was sent (the update's start)."""
    started = time.monotonic()
    reply = await http.put(
        f"/v1/devices/{device_id}",
        files={"file": ("app.bin", image, "application/octet-stream")},
        data={"file_type": "binary"},
    )
    if reply.status_code != 200:
        raise BenchError(f"flash answered {reply.status_code}: {reply.text[:200]}")
    return started


async def bench_concurrent(args: argparse.Namespace, server: Server, http: httpx.AsyncClient) -> Outcome:
    outcome = Outcome()
    fleet = Fleet(server, http)
    # The update targets live in a process of their own (`_ota_devices.py`, same core): reading 100 MB of
    # chunks would otherwise stall the loop the calls are measured on for hundreds of milliseconds at a time.
    spec = {"port": server.device_port, "server_public_key": fleet.public_key.decode(), "count": args.updates}
    targets = ScriptProcess("_ota_devices.py", spec, LOADGEN_CORE, server.pinned)
    try:
        callers = await fleet.add(args.callers, lambda d: d.add_function("bench", len))
        ready = await asyncio.to_thread(targets.expect, "READY", 120)
        target_ids: list[str] = ready["ids"]
        for device_id in target_ids:
            claimed = await http.post("/v1/devices", json={"id": device_id})
            if claimed.status_code != 200:
                raise BenchError(f"claim answered {claimed.status_code}: {claimed.text[:200]}")
        images = [binary(args.size, 100 + n) for n in range(len(target_ids))]
        digests = {d: hashlib.sha256(i).hexdigest() for d, i in zip(target_ids, images, strict=True)}
        await calls_for(http, callers, args.duration / 3)  # warm-up: first calls, connections
        baseline = await calls_for(http, callers, args.duration)
        rss_before = peak = server.rss_bytes()

        async def sample() -> None:
            nonlocal peak
            while True:
                peak = max(peak, server.rss_bytes())
                await asyncio.sleep(0.2)

        sampler = asyncio.create_task(sample())
        # The uploads come from a client of their own, one connection each: in the callers' pool, calls would
        # queue behind them for a connection, which measures this process's pool, not the server.
        uploads = httpx.AsyncClient(
            base_url=http.base_url, headers=http.headers, timeout=120,
            limits=httpx.Limits(max_connections=len(target_ids), max_keepalive_connections=0),
        )  # fmt: skip

        async def all_updates() -> list[float]:
            sent = await asyncio.gather(
                *(upload(uploads, d, i) for d, i in zip(target_ids, images, strict=True))
            )
            done = await asyncio.to_thread(targets.ask, f"wait {json.dumps(digests)}", "DONE", 600)
            return [done["at"][d] - t for d, t in zip(target_ids, sent, strict=True)]

        async with uploads:
            started = time.monotonic()
            updates = asyncio.ensure_future(all_updates())
            during = await calls_for(http, callers, args.duration, updates)
            durations = await updates
            elapsed = time.monotonic() - started
        sampler.cancel()
    finally:
        await fleet.close()
        await asyncio.to_thread(targets.finish)
    p99_base, p99_during = percentile(baseline, 0.99), percentile(during, 0.99)
    growth = peak - rss_before
    allowed = sum(len(i) for i in images) + 10_240 * len(images)
    outcome.figures = {
        "updates": len(images),
        "callers": len(callers),
        "p99_baseline_ms": p99_base * 1000,
        "p99_during_ms": p99_during * 1000,
        "calls_baseline": len(baseline),
        "calls_during": len(during),
        "updates_seconds": elapsed,
        "slowest_update_s": max(durations),
        "rss_growth": growth,
        "rss_allowed": allowed,
    }
    if p99_during > 2 * p99_base:
        outcome.missed.append(
            f"concurrent: call p99 {p99_during * 1000:.1f} ms > 2× {p99_base * 1000:.1f} ms"
        )
    if growth > allowed:
        outcome.missed.append(f"concurrent: RSS grew {growth / 1e6:.1f} MB > {allowed / 1e6:.1f} MB allowed")
    outcome.table = Table(
        "Many updates at once while function calls go to other devices "
        "(targets: p99 ≤ 2× baseline; RSS growth ≤ binaries + 10 KB per update)",
        ["updates × size", "callers", "call p99 alone", "call p99 during", "all updates done", "RSS growth",
         "allowed"],
        [[f"{len(images)} × {args.size:,} B", str(len(callers)), f"{p99_base * 1000:.1f} ms",
          f"{p99_during * 1000:.1f} ms", f"{elapsed:.1f} s", f"{growth / 1e6:.1f} MB",
          f"{allowed / 1e6:.1f} MB"]],
    )  # fmt: skip
    return outcome


async def run(args: argparse.Namespace, server: Server) -> dict[str, Outcome]:
    token = get_token(server.port, EMAIL, PASSWORD)
    outcomes: dict[str, Outcome] = {}
    headers = {"Authorization": f"Bearer {token}"}
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
    async with httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{server.port}", headers=headers, timeout=120, limits=limits
    ) as http:
        for section in args.only or ["single", "concurrent"]:
            print(f"\n[{section}]", flush=True)
            try:
                if section == "single":
                    outcomes[section] = o = await bench_single(args, server, http)
                else:
                    outcomes[section] = o = await bench_concurrent(args, server, http)
            except BenchError as exc:
                outcomes[section] = Outcome(failures=[f"{section}: {exc}"])
                continue
            if o.table is not None:
                print(format_table([o.table.columns, *o.table.rows]))
    return outcomes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--smoke", action="store_true", help="every path tiny, for CI: no targets")
    parser.add_argument("--only", action="append", choices=("single", "concurrent"), help="repeatable")
    parser.add_argument("--size", type=int, default=None, help="binary size in bytes (1 MiB)")
    parser.add_argument("--updates", type=int, default=None, help="concurrent updates (100)")
    parser.add_argument("--callers", type=int, default=None, help="devices called meanwhile (500)")
    parser.add_argument("--duration", type=float, default=None, help="seconds of calls each way (10)")
    parser.add_argument("--no-pin", action="store_true", help="do not pin even where possible")
    parser.add_argument("--json", type=Path, default=None, help="also write all figures to this file")
    args = parser.parse_args(argv)
    started = time.monotonic()
    smoke: bool = args.smoke
    args.size = args.size or (64 * 1024 if smoke else 1024 * 1024)
    args.updates = args.updates or (3 if smoke else 100)
    args.callers = args.callers or (5 if smoke else 500)
    args.duration = args.duration or (1.5 if smoke else 10.0)
    raise_open_files()
    # The devices log every call and chunk at INFO: that would cost this process more than the load itself.
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    pin = can_pin() and not args.no_pin
    if pin:
        os.sched_setaffinity(0, {LOADGEN_CORE})
    print(
        f"devicecloud OTA benchmark  {datetime.now(UTC):%Y-%m-%d %H:%M UTC}  "
        f"mode={'smoke' if smoke else 'full'}"
    )
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}")
    print("server pinned to core 0, devices and clients to core 1" if pin else "not pinned")
    env = {"DEVICECLOUD_ACCEPT_UNKNOWN_DEVICES": "true"}
    with running_server(
        email=EMAIL, password=PASSWORD, pin=pin, extra_env=env, extra_args=["--no-demo-device"]
    ) as s:
        outcomes = asyncio.run(run(args, s))
    return report("ota", outcomes, json_path=args.json, smoke=smoke, pin=pin, started=started)


if __name__ == "__main__":
    run_main(main)
