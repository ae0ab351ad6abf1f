"""
The device side of ``device_bench.py``: a separate process (pinned to core 1) that plays many devices.

Three modes, chosen by the JSON spec in ``argv[1]``:

``{"mode": "handshake", "behaviour": "bare" | "0.7.0", ...}`` — connects as fast as the server takes them.
``workers`` loops run at once; each owns one device id and repeats: TCP connect, the device's connect
sequence with a `_photon.PhotonSession` (a bare asyncio protocol around a device-role
``protocol.Connection``, no ``VirtualDevice`` machinery), close, wait for the socket to close. ``bare``
(the default, the protocol floor): the handshake and Hello exchange, the Hello announcing a
device-initiated Describe so the server asks for nothing more. ``0.7.0``: what recorded Device OS 0.7.0
does (system events, ``Subscribe /e/spark``, a time request, the Describe the server asks for), done when
the time is answered and the Describe given. Device keys come from a small pool made at start, so the
generator spends its RSA time on the handshake only (one RSA-2048 public encrypt, one RSA-1024 decrypt,
one RSA-2048 public verify per handshake). Prints one ``BENCH_JSON`` line: count, failures, latency
percentiles, CPU.

``{"mode": "photons", "behaviour": "0.7.0" | "bare", ...}`` — `_photon.PhotonDevice` s that stay
connected, reconnecting as the firmware does after a lost link; driven by lines on stdin (see
`run_photons`): the connect storm and keep-alive scenarios. Each answer reports devices online, the time
from the last ``mark`` until all were online, events received, pings and their round trips, links lost,
failed attempts and the devices affected.

``{"mode": "devices", ...}`` — long-lived ``VirtualDevice`` s (one asyncio task each), driven by lines on
stdin: ``connect N`` brings the number of started devices to N (at most ``concurrency`` handshakes in
flight, so none hits the server's handshake deadline), ``report`` prints the state, ``quit`` stops. Every
command is answered with one ``STATE {json}`` line: devices connected, connect failures, disconnects,
pings received from the cloud (min and total), function calls served. With ``functions`` each device has a
function ``bench(arg) -> len(arg)``. With ``"protocol": "udp"`` the devices are Gen3 ones (Argons, platform
12) speaking DTLS to the UDP port with EC P-256 keys (``server_public_key`` is then the server's EC key,
``server_key_udp.pub.pem``); over UDP the devices send the keep-alives (``device_ping_after``), the cloud
never pings.

Device ids are ``tag`` (4 hex digits) followed by a 20-digit counter, so processes do not collide.
"""

from __future__ import annotations

import asyncio
import json
import logging
import resource
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import structlog
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from _photon import PING_AFTER, PhotonDevice, PhotonSession, Tally, connection
from devicecloud.heap import FrozenHeap
from devicecloud.protocol import Timing, load_private_key, load_public_key
from devicecloud.virtualdevice import VirtualDevice

KEY_POOL = 8


def device_id(tag: int, index: int) -> str:
    return f"{tag:04x}{index:020x}"


def key_pool(spec: dict[str, Any]) -> list[rsa.RSAPrivateKey]:
    """
    The device keys, from the PEM file the caller made (``keys_file``), else made here.

    The server keeps the key a device id first offered (``DEVICECLOUD_ACCEPT_UNKNOWN_DEVICES``), so every
    process that plays a given id must offer the same key: the caller makes the pool once per run.
    """
    path = spec.get("keys_file")
    if path is None:
        return [
            rsa.generate_private_key(public_exponent=65537, key_size=1024)  # noqa: S505 - the protocol's
            for _ in range(KEY_POOL)
        ]
    blocks = Path(path).read_text().split("-----END PRIVATE KEY-----")
    return [load_private_key((b + "-----END PRIVATE KEY-----\n").encode()) for b in blocks if b.strip()]


def write_key_pool(path: Path, size: int = KEY_POOL) -> None:
    """
    Make ``size`` RSA-1024 device keys and write them to ``path`` (PKCS#8 PEM, one after another).
    """
    pems = [
        rsa.generate_private_key(public_exponent=65537, key_size=1024).private_bytes(  # noqa: S505
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        for _ in range(size)
    ]
    path.write_bytes(b"".join(pems))


def raise_open_files() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def _percentile(ordered: list[float], fraction: float) -> float:
    if not ordered:
        return 0.0
    return ordered[min(len(ordered) - 1, max(0, round(fraction * len(ordered)) - 1))]


# ---------------------------------------------------------------------------------------------- handshakes


async def _handshake_worker(
    host: str,
    port: int,
    new_session: Callable[[], PhotonSession],
    deadline: float,
    latencies: list[float],
    failures: Counter[str],
) -> None:
    loop = asyncio.get_running_loop()
    while time.perf_counter() < deadline:
        start = time.perf_counter()
        session = new_session()
        outcome: str | None = None
        try:
            async with asyncio.timeout(30):
                await loop.create_connection(lambda s=session: s, host, port)  # type: ignore[misc]
                await session.ready
                if session.behaviour != "bare":
                    await session.described.wait()  # the connect sequence is over once the Describe is in
        except (OSError, TimeoutError, ConnectionError) as exc:
            outcome = f"{type(exc).__name__}: {exc}"
        if outcome is None:
            latencies.append(time.perf_counter() - start)
        else:
            failures[outcome[:120]] += 1
        session.end("done")
        if session.transport is not None:
            await session.lost


async def run_handshakes(spec: dict[str, Any]) -> dict[str, Any]:
    """
    ``workers`` loops of connect → the device's connect sequence (``behaviour``) → close, for ``duration``.
    """
    host, port = str(spec.get("host", "127.0.0.1")), int(spec["port"])
    server_key = load_public_key(str(spec["server_public_key"]).encode())
    workers, duration, tag = int(spec["workers"]), float(spec["duration"]), int(spec["tag"])
    behaviour = str(spec.get("behaviour", "bare"))
    keys = key_pool(spec)
    tally = Tally()

    def factory(index: int) -> Callable[[], PhotonSession]:
        def new_session() -> PhotonSession:
            conn = connection(behaviour, server_key, keys[index % len(keys)], device_id(tag, index))
            return PhotonSession(conn, behaviour, tally, index)

        return new_session

    latencies: list[float] = []
    failures: Counter[str] = Counter()
    cpu_start, start = time.process_time(), time.perf_counter()
    deadline = start + duration
    await asyncio.gather(
        *(_handshake_worker(host, port, factory(i), deadline, latencies, failures) for i in range(workers))
    )
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    ordered = sorted(latencies)
    return {
        "behaviour": behaviour,
        "handshakes": len(ordered),
        "duration_s": elapsed,
        "failures": sum(failures.values()),
        "failure_reasons": dict(failures.most_common(5)),
        "p50_ms": _percentile(ordered, 0.5) * 1000,
        "p99_ms": _percentile(ordered, 0.99) * 1000,
        "cpu_s": cpu,
        "events_received": tally.events_received,
    }


# ---------------------------------------------------------------------------------------------- photons


class Photons:
    """
    ``photons`` mode: simulated Photons (0.7.0 or bare) that stay connected, driven over stdin.
    """

    def __init__(self, spec: dict[str, Any]) -> None:
        self.address = (str(spec.get("host", "127.0.0.1")), int(spec["port"]))
        self.server_key = load_public_key(str(spec["server_public_key"]).encode())
        self.tag = int(spec["tag"])
        self.behaviour = str(spec.get("behaviour", "0.7.0"))
        self.keys = key_pool(spec)
        self.ping_after = float(spec.get("ping_after", PING_AFTER))
        self.tally = Tally()
        self.devices: list[PhotonDevice] = []
        self.all_online_at: float | None = None

    def _device(self, index: int) -> PhotonDevice:
        did, key = device_id(self.tag, index), self.keys[index % len(self.keys)]
        return PhotonDevice(
            index, did, lambda: connection(self.behaviour, self.server_key, key, did), self.behaviour,
            self.tally, self.address, self.ping_after,
        )  # fmt: skip

    def online(self) -> int:
        return sum(1 for d in self.devices if d.online)

    async def connect(self, total: int, concurrency: int) -> None:
        """
        Start devices up to ``total``; their first connections ``concurrency`` at a time (0 = all at once).
        """
        gate = asyncio.Semaphore(concurrency) if concurrency else None
        for index in range(len(self.devices), total):
            device = self._device(index)
            self.devices.append(device)
            device.start(gate)

    async def wait_online(self, timeout: float) -> None:
        """
        Return once every device is online (noting when, from the mark), or after ``timeout`` seconds.
        """
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.online() == len(self.devices):
                if self.all_online_at is None:
                    self.all_online_at = time.monotonic() - self.tally.origin
                return
            await asyncio.sleep(0.02)

    def mark(self) -> None:
        self.tally.reset()
        self.all_online_at = None

    def state(self) -> dict[str, Any]:
        t = self.tally
        rtt = sorted(t.ping_rtt_ms)
        return {
            "behaviour": self.behaviour,
            "started": len(self.devices),
            "online": self.online(),
            "since_mark_s": time.monotonic() - t.origin,
            "all_online_s": self.all_online_at,
            "first_connect_s": t.first_connect_at,
            "events_received": t.events_received,
            "describes_answered": t.describes_answered,
            "pings": t.pings,
            "pings_answered": t.pings_answered,
            "ping_p50_ms": _percentile(rtt, 0.5),
            "ping_p99_ms": _percentile(rtt, 0.99),
            "ping_max_ms": rtt[-1] if rtt else 0.0,
            "links_lost": t.links_lost,
            "failed_attempts": sum(t.failed_attempts.values()),
            "failure_reasons": dict(t.failed_attempts.most_common(5)),
            "devices_dropped": len(t.troubled),
            "cpu_s": time.process_time(),
        }

    async def stop(self) -> None:
        await asyncio.gather(*(d.stop() for d in self.devices), return_exceptions=True)


async def run_photons(spec: dict[str, Any]) -> None:
    """
    Commands on stdin, each answered with one ``STATE {json}`` line: ``connect N [concurrency] [timeout]``
    (start devices up to N and wait for them), ``mark`` (counters and the clock start again),
    ``wait_online TIMEOUT``, ``report``, ``quit``.
    """
    photons = Photons(spec)
    loop = asyncio.get_running_loop()
    try:
        while True:
            line = await loop.run_in_executor(None, sys.stdin.readline)
            command, *rest = line.split() or ["quit"]
            if command == "connect":
                concurrency = int(rest[1]) if len(rest) > 1 else 64
                await photons.connect(int(rest[0]), concurrency)
                await photons.wait_online(float(rest[2]) if len(rest) > 2 else 600.0)
            elif command == "mark":
                photons.mark()
            elif command == "wait_online":
                await photons.wait_online(float(rest[0]))
            elif command != "report":
                break
            print("STATE " + json.dumps(photons.state()), flush=True)
    finally:
        await photons.stop()


# ---------------------------------------------------------------------------------------------- devices


class Fleet:
    """
    Long-lived virtual devices in this process.
    """

    def __init__(self, spec: dict[str, Any]) -> None:
        self.host, self.port = str(spec.get("host", "127.0.0.1")), int(spec["port"])
        self.udp = spec.get("protocol", "tcp") == "udp"
        pem = str(spec["server_public_key"]).encode()
        self.server_key: Any = serialization.load_pem_public_key(pem) if self.udp else load_public_key(pem)
        self.tag = int(spec["tag"])
        self.concurrency = int(spec.get("concurrency", 64))
        self.functions = bool(spec.get("functions", False))
        ping_after = float(spec.get("device_ping_after", 15.0))
        # The device's own keep-alive; idle runs set it far out so that the server's pings keep links up.
        self.timing = Timing(
            handshake_timeout=60.0, request_timeout=30.0, ping_after=ping_after, idle_timeout=ping_after * 2
        )
        # UDP: P-256 keys are cheap to make; the server keeps the key each device id first offered.
        self.keys: list[Any] = (
            [ec.generate_private_key(ec.SECP256R1()) for _ in range(KEY_POOL)] if self.udp else key_pool(spec)
        )
        self.devices: list[VirtualDevice] = []
        self.connect_failures: Counter[str] = Counter()

    async def connect(self, total: int) -> None:
        gate = asyncio.Semaphore(self.concurrency)

        async def one(device: VirtualDevice) -> None:
            async with gate:
                await device.start()
                try:
                    await device.wait_connected(90)
                except (TimeoutError, ConnectionError) as exc:
                    self.connect_failures[f"{type(exc).__name__}: {exc}"[:120]] += 1

        fresh = []
        for index in range(len(self.devices), total):
            device = VirtualDevice(
                self.host,
                self.port,
                device_id=device_id(self.tag, index),
                device_key=self.keys[index % len(self.keys)],
                server_public_key=self.server_key,
                reconnect=False,
                timing=self.timing,
                platform_id=12 if self.udp else 6,
                protocol="udp" if self.udp else "tcp",
            )
            if self.functions:
                device.add_function("bench", len)
            fresh.append(device)
        self.devices += fresh
        await asyncio.gather(*(one(d) for d in fresh))

    def state(self) -> dict[str, Any]:
        pings = [d.counters.pings_received for d in self.devices]
        dropped = Counter(
            str(d.last_disconnect_reason)[:120] for d in self.devices if not d.connected
        ).most_common(5)
        return {
            "started": len(self.devices),
            "connected": sum(1 for d in self.devices if d.connected),
            "connect_failures": sum(self.connect_failures.values()),
            "connect_failure_reasons": dict(self.connect_failures.most_common(5)),
            "disconnects": sum(d.counters.disconnects for d in self.devices),
            "not_connected_reasons": dict(dropped),
            "pings_received_total": sum(pings),
            "pings_received_min": min(pings) if pings else 0,
            "function_calls": sum(d.counters.function_calls for d in self.devices),
            "ids": [d.device_id for d in self.devices] if len(self.devices) <= 200 else [],
            "cpu_s": time.process_time(),
            "rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        }

    async def stop(self) -> None:
        await asyncio.gather(*(d.stop() for d in self.devices), return_exceptions=True)


async def run_devices(spec: dict[str, Any]) -> None:
    fleet = Fleet(spec)
    loop = asyncio.get_running_loop()
    try:
        while True:
            line = await loop.run_in_executor(None, sys.stdin.readline)
            command, *rest = line.split() or ["quit"]
            if command == "connect":
                await fleet.connect(int(rest[0]))
            elif command != "report":
                break
            print("STATE " + json.dumps(fleet.state()), flush=True)
    finally:
        await fleet.stop()


# ---------------------------------------------------------------------------------------------- main


def main() -> int:
    spec: dict[str, Any] = json.loads(sys.argv[1])
    raise_open_files()
    # The devices log every connect at INFO; keep warnings only, on stderr (stdout carries the results).
    structlog.configure(
        wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
    )
    loop_factory: Callable[[], asyncio.AbstractEventLoop] = asyncio.new_event_loop
    try:
        import uvloop

        loop_factory = uvloop.new_event_loop
    except ImportError:  # pragma: no cover - uvloop comes with uvicorn[standard]
        pass
    # The generators hold thousands of simulated devices too: the server's heap policy keeps their full
    # collections from stopping the loop for hundreds of ms, which would show up as the server's round trips.
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        FrozenHeap(schedule=runner.get_loop().call_soon_threadsafe).install()
        if spec["mode"] == "handshake":
            print("BENCH_JSON " + json.dumps(runner.run(run_handshakes(spec))), flush=True)
        elif spec["mode"] == "photons":
            runner.run(run_photons(spec))
        else:
            runner.run(run_devices(spec))
    return 0


if __name__ == "__main__":
    sys.exit(main())
