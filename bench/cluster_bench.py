"""
``serve --workers N`` and calls across nodes (issue 14, decision 0024), against real servers on NATS:

1. **scaling**: the same server with ``--workers 1`` and ``--workers 2`` (NATS bus and the SQLite file for
   both, so only the worker count differs): device handshakes/s (``_devicegen.py``, bare handshakes) and
   function calls/s through the REST API (closed loop; devices spread over the workers by the kernel, so
   about half the calls cross workers over NATS). Target: two workers ≥ 1.7× one, for each. On a 2-core
   machine two workers need both cores, so nothing is pinned: the load generators share the cores with the
   server (the figures say how much CPU they took), which caps the ratio below what a separate load machine
   would show.
2. **remote**: one device on node A (``serve``), calls one at a time over a keep-alive connection to A's API
   (local) and to node B's (``serve --only api`` on the same data and NATS: B reaches the device through A),
   alternated call by call. Target: B's p50 at most 2 ms over A's.

Needs a NATS server with JetStream (``DEVICECLOUD_BENCH_NATS_URL``, default nats://127.0.0.1:4222); each run
uses a subject root of its own and deletes its stream afterwards.

    python bench/cluster_bench.py            # both sections, about 3 minutes
    python bench/cluster_bench.py --only remote
    python bench/cluster_bench.py --smoke    # CI: every path, tiny, no targets; about 40 s
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.client
import json
import os
import secrets
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from _common import (
    BenchError,
    Outcome,
    Request,
    Server,
    _wait_ready,
    call,
    format_table,
    free_port,
    get_token,
    report,
    run_load,
    run_main,
    running_server,
)
from _devicegen import device_id, write_key_pool
from _results import Table
from device_bench import _handshake_run, _server_public_pem, connect_all, fleets

EMAIL = "bench@example.com"
PASSWORD = "bench-password-1"  # noqa: S105 - a throwaway account in a temporary data dir
NATS_URL = os.environ.get("DEVICECLOUD_BENCH_NATS_URL", "nats://127.0.0.1:4222")
SCALING_TARGET = 1.7
REMOTE_TARGET_MS = 2.0
NO_DEMO = ("--no-demo-device",)
SCALING_TITLE = (
    "Two workers against one on this machine (target: ≥ 1.7× for handshakes/s and calls/s; load generators"
    " unpinned on the same two cores)"
)
REMOTE_TITLE = "A function call through another node against one on the device's node (target: ≤ +2 ms p50)"


def nats_root() -> str:
    """A bus URL with a subject root of this run's own; fails when NATS does not answer."""
    parsed = urllib.parse.urlparse(NATS_URL)
    try:
        socket.create_connection((parsed.hostname or "127.0.0.1", parsed.port or 4222), timeout=3).close()
    except OSError as exc:
        raise BenchError(f"NATS with JetStream is needed at {NATS_URL}: {exc}") from exc
    return f"{NATS_URL.rstrip('/')}/bench{secrets.token_hex(4)}"


def drop_stream(bus_url: str) -> None:
    """Delete the run's JetStream stream (the server keeps it a day otherwise)."""
    from devicecloud.bus.nats import NatsBus

    async def drop() -> None:
        bus = NatsBus(bus_url)
        await bus.start()
        try:
            with contextlib.suppress(Exception):
                await bus._jetstream().delete_stream(bus.stream_name)
        finally:
            await bus.close()

    with contextlib.suppress(Exception):
        asyncio.run(drop())


def server_env(bus_url: str) -> dict[str, str]:
    return {"DEVICECLOUD_ACCEPT_UNKNOWN_DEVICES": "true", "DEVICECLOUD_BUS_URL": bus_url}


def claim(server: Server, bearer: dict[str, str], ids: list[str], timeout: float = 15.0) -> None:
    """
    Claim each device. A device that connected unknown is written behind by the worker holding it: through
    another worker it is "not found" until that write (a flush, about a second), so a 404 is tried again.
    """
    deadline = time.monotonic() + timeout
    for did in ids:
        until_ok(server, Request("POST", "/v1/devices", bearer, json.dumps({"id": did})), deadline)


def until_ok(server: Server, request: Request, deadline: float) -> bytes:
    """``request`` until it answers 200; a 404 (not written yet by the device's worker) is tried again."""
    while True:
        status, body = call(server.port, request)
        if status == 200:
            return body
        if status != 404 or time.monotonic() > deadline:
            raise BenchError(f"{request.method} {request.path} answered {status}: {body[:300]!r}")
        time.sleep(0.05)


# ---------------------------------------------------------------------------------------------- scaling


def measure_workers(workers: int, args: argparse.Namespace, keys: Path) -> dict[str, Any]:
    """Handshakes/s and calls/s of one server with ``workers`` workers."""
    smoke: bool = args.smoke
    bus_url = nats_root()
    figures: dict[str, Any] = {"workers": workers}
    try:
        with running_server(email=EMAIL, password=PASSWORD, pin=False, extra_env=server_env(bus_url),
                            extra_args=(*NO_DEMO, "--workers", str(workers))) as server:  # fmt: skip
            duration = 1.5 if smoke else args.duration
            _handshake_run(
                server, keys, workers=args.handshake_loops, duration=0.5 if smoke else 3, pin=False
            )
            run, server_cpu, generator_cpu = _handshake_run(
                server, keys, workers=args.handshake_loops, duration=duration, pin=False
            )
            if run["handshakes"] == 0 or run["failures"]:
                raise BenchError(f"handshakes with {workers} worker(s): {run}")
            figures["handshakes_per_s"] = run["handshakes"] / run["duration_s"]
            figures["handshake_server_cpu_share"] = server_cpu / run["duration_s"]
            figures["handshake_generator_cpu_share"] = generator_cpu / run["duration_s"]

            count = args.call_devices
            spec = {
                "mode": "devices",
                "port": server.device_port,
                "server_public_key": _server_public_pem(server),
                "tag": 0xD000 + workers,
                "keys_file": str(keys),
                "concurrency": 8,
                "functions": True,
            }
            with fleets([spec], False) as (fleet,):
                state = connect_all([fleet], count, timeout=120)[0]
                if state["connected"] != count:
                    raise BenchError(f"calls: {state['connected']}/{count} devices connected: {state}")
                token = get_token(server.port, EMAIL, PASSWORD)
                bearer = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
                ids = [device_id(0xD000 + workers, i) for i in range(count)]
                claim(server, bearer, ids)
                body = json.dumps({"args": "benchmark"})
                calls = [Request("POST", f"/v1/devices/{did}/bench", bearer, body) for did in ids]
                deadline = time.monotonic() + 15
                for request in calls:  # every device answers (through whichever worker) before the clock runs
                    until_ok(server, request, deadline)
                load = {"generator": args.generator, "connections": args.connections, "pin": False}
                run_load("warm-up", server, calls[0], duration=0.5 if smoke else 3, variants=calls, **load)
                before = fleet.cpu_seconds()
                result = run_load("calls", server, calls[0], duration=duration, variants=calls, **load)
                if result.requests == 0 or result.errors:
                    raise BenchError(f"calls with {workers} worker(s): {result}")
                figures["calls_per_s"] = result.rate
                figures["calls_p50_ms"] = result.p50_ms
                figures["calls_p99_ms"] = result.p99_ms
                figures["calls_server_cpu_share"] = result.server_cpu_share
                figures["calls_generator_cpu_share"] = (
                    result.generator_cpu_share + (fleet.cpu_seconds() - before) / result.duration_s
                )
    finally:
        drop_stream(bus_url)
    return figures


def bench_scaling(args: argparse.Namespace, keys: Path) -> Outcome:
    outcome = Outcome()
    one = measure_workers(1, args, keys)
    two = measure_workers(2, args, keys)
    outcome.figures = {"one": one, "two": two, "loadavg_before": os.getloadavg()}
    rows = []
    for what, key in (("handshakes/s", "handshakes_per_s"), ("calls/s", "calls_per_s")):
        ratio = two[key] / one[key]
        outcome.figures[f"{key}_ratio"] = ratio
        if ratio < SCALING_TARGET:
            outcome.missed.append(
                f"scaling: {what} {ratio:.2f}× from one worker to two (target ≥ {SCALING_TARGET}×)"
            )
        share = "handshake" if key.startswith("handshake") else "calls"
        rows.append(
            [what, f"{one[key]:,.0f}", f"{two[key]:,.0f}", f"{ratio:.2f}×",
             f"{one[f'{share}_server_cpu_share']:.2f} / {two[f'{share}_server_cpu_share']:.2f}",
             f"{one[f'{share}_generator_cpu_share']:.2f} / {two[f'{share}_generator_cpu_share']:.2f}"]
        )  # fmt: skip
    columns = [
        "measure",
        "1 worker",
        "2 workers",
        "ratio",
        "server cores used (1 / 2)",
        "load gen cores (1 / 2)",
    ]
    outcome.table = Table(SCALING_TITLE, columns, rows)
    print(f"\n{SCALING_TITLE}\n")
    print(format_table([columns, *rows]))
    print(f"calls p50/p99 ms: 1 worker {one['calls_p50_ms']:.1f}/{one['calls_p99_ms']:.1f}, "
          f"2 workers {two['calls_p50_ms']:.1f}/{two['calls_p99_ms']:.1f}")  # fmt: skip
    return outcome


# ---------------------------------------------------------------------------------------------- remote


@contextlib.contextmanager
def api_node(a: Server, bus_url: str) -> Iterator[Server]:
    """Node B: ``serve --only api`` on node A's data dir (its SQLite file and key) and bus."""
    port = free_port()
    argv = [sys.executable, "-m", "devicecloud", "serve", "--only", "api", "--data-dir", str(a.data_dir),
            "--port", str(port), *NO_DEMO]  # fmt: skip
    env = {**a.env, **server_env(bus_url)}
    log_path = a.data_dir / "server-b.log"
    with log_path.open("w") as log:
        proc = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, text=True)
    b = Server(port=port, proc=proc, data_dir=a.data_dir, pinned=False, argv=argv, env=env)
    try:
        _wait_ready(b, log_path)
        yield b
    finally:
        b.halt()


def timed_calls(port: int, request: Request, count: int) -> list[float]:
    """``count`` calls one after another over one keep-alive connection; each one's milliseconds."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    took = []
    try:
        for _ in range(count):
            started = time.perf_counter()
            conn.request(request.method, request.path, body=request.body, headers=dict(request.headers))
            reply = conn.getresponse()
            body = reply.read()
            took.append((time.perf_counter() - started) * 1000)
            if reply.status != 200:
                raise BenchError(f"a call answered {reply.status}: {body[:300]!r}")
    finally:
        conn.close()
    return took


def bench_remote(args: argparse.Namespace, keys: Path) -> Outcome:
    outcome = Outcome()
    rounds = 20 if args.smoke else args.remote_calls
    bus_url = nats_root()
    try:
        with running_server(email=EMAIL, password=PASSWORD, pin=False, extra_env=server_env(bus_url),
                            extra_args=NO_DEMO) as a, api_node(a, bus_url) as b:  # fmt: skip
            spec = {"mode": "devices", "port": a.device_port, "server_public_key": _server_public_pem(a),
                    "tag": 0xD100, "keys_file": str(keys), "concurrency": 1, "functions": True}  # fmt: skip
            with fleets([spec], False) as (fleet,):
                if connect_all([fleet], 1, timeout=60)[0]["connected"] != 1:
                    raise BenchError("remote: the device did not connect")
                token = get_token(a.port, EMAIL, PASSWORD)
                bearer = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
                did = device_id(0xD100, 0)
                claim(a, bearer, [did])
                request = Request(
                    "POST", f"/v1/devices/{did}/bench", bearer, json.dumps({"args": "benchmark"})
                )
                timed_calls(a.port, request, 10)  # warm both paths (and B's subscription lookups)
                timed_calls(b.port, request, 10)
                local: list[float] = []
                remote: list[float] = []
                for _ in range(rounds // 10):  # alternated in blocks: both see the same machine
                    local += timed_calls(a.port, request, 10)
                    remote += timed_calls(b.port, request, 10)
    finally:
        drop_stream(bus_url)
    p50_local, p50_remote = statistics.median(local), statistics.median(remote)
    added = p50_remote - p50_local
    p99 = {
        name: sorted(values)[int(0.99 * (len(values) - 1))]
        for name, values in (("local", local), ("remote", remote))
    }
    outcome.figures = {"calls": len(local), "p50_local_ms": p50_local, "p50_remote_ms": p50_remote,
                       "added_p50_ms": added, "p99_ms": p99}  # fmt: skip
    if added > REMOTE_TARGET_MS:
        outcome.missed.append(f"remote: a call through another node adds {added:.2f} ms p50 (target ≤ 2 ms)")
    columns = ["path", "calls", "p50 ms", "p99 ms"]
    rows = [
        ["on the device's node (A)", f"{len(local):,}", f"{p50_local:.2f}", f"{p99['local']:.2f}"],
        [
            "through another node (B → NATS → A)",
            f"{len(remote):,}",
            f"{p50_remote:.2f}",
            f"{p99['remote']:.2f}",
        ],
        ["added", "", f"{added:+.2f}", ""],
    ]
    outcome.table = Table(REMOTE_TITLE, columns, rows)
    print(f"\n{REMOTE_TITLE}\n")
    print(format_table([columns, *rows]))
    return outcome


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--smoke", action="store_true", help="every path tiny, for CI: no targets")
    parser.add_argument(
        "--only", action="append", choices=("scaling", "remote"), help="one section (repeatable)"
    )
    parser.add_argument("--duration", type=float, default=15.0, help="seconds per measured run (15)")
    parser.add_argument("--handshake-loops", type=int, default=16, help="concurrent device loops (16)")
    parser.add_argument("--call-devices", type=int, default=20, help="virtual devices for calls (20)")
    parser.add_argument("--connections", type=int, default=32, help="HTTP connections, closed loop (32)")
    parser.add_argument("--remote-calls", type=int, default=1000, help="calls each way in remote (1,000)")
    parser.add_argument(
        "--generator", choices=("wrk", "python"), default=None, help="HTTP load (wrk if found)"
    )
    parser.add_argument("--json", type=Path, default=None, help="also write all figures to this file")
    args = parser.parse_args(argv)
    if args.smoke:
        args.call_devices, args.connections = 4, 4
    args.generator = args.generator or ("wrk" if not args.smoke and _has_wrk() else "python")
    started = time.monotonic()
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())} on {os.cpu_count()} cores")
    sections = args.only or ["scaling", "remote"]
    outcomes: dict[str, Outcome] = {}
    with tempfile.TemporaryDirectory(prefix="devicecloud-cluster-bench-") as tmp:
        keys = Path(tmp) / "keys.pem"
        write_key_pool(keys)
        if "scaling" in sections:
            outcomes["scaling"] = bench_scaling(args, keys)
        if "remote" in sections:
            outcomes["remote"] = bench_remote(args, keys)
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    return report("cluster", outcomes, json_path=args.json, smoke=args.smoke, pin=False, started=started)


def _has_wrk() -> bool:
    import shutil

    return shutil.which("wrk") is not None


if __name__ == "__main__":
    run_main(main)
