"""
Webhook benchmark: deliveries/s and event → request latency from one server process to a local HTTP sink, and
what a target that never answers costs a healthy one (issue 5, "Performance").

Against a real ``devicecloud serve`` pinned to core 0; every load process is pinned to core 1: the sink
(``_webhook_sink.py``: raw asyncio HTTP/1.1 listeners on uvloop) and the event source. Rate limits are off,
``DEVICECLOUD_ACCEPT_UNKNOWN_DEVICES`` is on, the private-address guard is off (the sink is on loopback).

Event source (``--source``): by default virtual devices (``_webhook_devices.py``: ``_devicegen.Fleet``, NON
publishes, one device per event/s since the server allows a device 1 event/s), connected, claimed by the
account and warmed (one event each, so the server knows their owner) before anything is measured. Every event
fires ``--hooks`` (4) hooks, so 500 events/s make 2,000 deliveries/s. Devices load the server least per
delivery: the ``baseline`` rows measure each source's cost on its own (events that no hook takes), about
130-150 µs of server CPU per device event against about 600 µs per ``POST /v1/devices/events``
(``--source api``: ``_events_gen.py``'s open-loop publisher on 8 keep-alive sockets), i.e. 35 against 150 µs
per delivery with 4 hooks; it is subtracted for the "webhook only" cost. Hooks alternate between a JSON and a
form template (``value`` = ``{{{PARTICLE_EVENT_VALUE}}}`` plus two more variables, and the default fields),
each to its own path on the sink. Each event's data is ``<source>:<seq>:<monotonic ns at send>``: the sink
computes event → request latency from the body (one clock for the machine) and counts every (hook, source,
seq), so each delivery is checked to arrive exactly once. It answers ``200`` with an empty body, so no
``hook-response`` event follows (a ``hook-sent`` one does, for every delivery). A thread reads the account's
``hook-error`` events from an SSE stream and reports them with each run.

``sink``
    The sink's own capacity: ``wrk`` (else ``_loadgen.py``) pinned to core 0 (idle then) posting to the sink
    on core 1, closed loop, 32 connections. Shows the sink is not the bottleneck.
``throughput``
    One server, ``--hooks`` hooks, the baselines, then for each point of ``--points`` (offered deliveries/s:
    500, 1000, 2000, 3000, 4000) the source publishes points/hooks events/s for ``--duration`` (10 s), and the
    run waits until every delivery arrived and the outbox is empty. Per point: deliveries/s (receipts over the
    span from the first to the last, at least the send window) and "sustained" (the offered rate when all
    arrived exactly once, the outbox emptied within 1 s of the last send and the measured rate is within 3 %),
    p50/p99/max latency, server CPU (share, µs per delivery, and split between the event loop thread and the
    other threads, i.e. aiosqlite's), outbox rows at the end of the send window and at most, sink and source
    CPU, and the CPU the rest of the machine used meanwhile ("others": other people's work on this shared
    machine). Targets: ≥ 2,000 deliveries/s sustained; p99 ≤ 200 ms at 500 deliveries/s. The one-core
    ceiling 1 / (webhook-only µs per delivery) is printed as the baseline of the ratio.
``breakdown``
    ``_webhook_breakdown.py`` pinned to core 0: the dispatcher's stages timed one by one in-process (match,
    enqueue, claim, build request, HTTP, response events, record) for batches of 500 deliveries.
``hang``
    For each rate of ``--hang-rates`` (healthy deliveries/s: 500, 2000) one server: ``--hooks`` hooks to the
    healthy sink (127.0.0.1) alone for ``--hang-duration`` (45 s), then ``--hang-hooks`` (1) more hook on the
    same events to 127.0.0.2 (another host for the per-host throttle), which accepts connections and never
    answers, and the same again with the server's 20 s request limit: the run is longer than the limit, so
    the timeouts, the host's "Sleeping, too many errors" phase and the skipped deliveries are inside it.
    Target: the healthy target's deliveries/s with the hanging one ≥ 0.9× without; p99 is printed beside it.

Exit status: 1 when anything fails (server, sink or devices not started, a hook not created, a publish
refused, a delivery missing or duplicated, a body the sink could not read, a delivery to a healthy target
later than 30 s while the server kept up); in a full run 3 when a target is missed. ``--smoke`` (CI, ~25 s)
runs every path tiny, with a 2 s request limit for the hanging target, and enforces no speed target.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import math
import os
import platform
import shutil
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    BENCH_DIR,
    LOADGEN_CORE,
    SERVER_CORE,
    BenchError,
    Outcome,
    Request,
    ScriptProcess,
    Server,
    Table,
    call,
    can_pin,
    format_table,
    get_token,
    percentile,
    pinned,
    report,
    run_main,
    running_server,
    wait_child,
    wrk_script,
)
from _devicegen import raise_open_files, write_key_pool

EMAIL = "bench@example.com"
PASSWORD = "bench-password-1"  # noqa: S105 - a throwaway account on a throwaway server
NO_DEMO = ("--no-demo-device",)
PREFIX = "benchhook"
HEALTHY_HOST = "127.0.0.1"
HANG_HOST = "127.0.0.2"  # all of 127/8 is loopback on Linux: another host name for the per-host throttle
THROUGHPUT_TARGET = 2_000.0
SINK_TITLE = "Sink capacity (the baseline: the sink is not the bottleneck)"
THROUGHPUT_TITLE = "Deliveries per second (targets: ≥ 2,000/s; p99 ≤ 200 ms at 500/s)"
BREAKDOWN_TITLE = "Where a delivery's server CPU goes (in-process, batches of the claim size)"
HANG_TITLE = "A hanging target beside a healthy one (target: the healthy one keeps ≥ 0.9× its deliveries/s)"
P99_TARGET_MS = 200.0
P99_AT = 500.0
HANG_RATIO_TARGET = 0.9
BUCKET_NS = 100_000_000
LATE_S = 30.0  # no delivery to a healthy target may take this long (the request limit is 20 s)
CLK_TCK = os.sysconf("SC_CLK_TCK")
PUBLISH_CONNECTIONS = 8
DEVICE_RATE = 1.0  # events/s per device at most: the server's device publish limit (1/s, bursts of 4)
SECTIONS = ("sink", "throughput", "breakdown", "hang")
DEFAULT_POINTS = "500,1000,2000,3000,4000"
DEFAULT_HANG_RATES = "500,2000"
TEMPLATE = {
    "value": "{{{PARTICLE_EVENT_VALUE}}}",
    "device": "{{PARTICLE_DEVICE_ID}}",
    "published": "{{{PARTICLE_PUBLISHED_AT}}}",
}


# ---------------------------------------------------------------------------------------------- processes


@contextlib.contextmanager
def started(script: str, spec: dict[str, Any], core: int, pin: bool) -> Iterator[ScriptProcess]:
    proc = ScriptProcess(script, spec, core, pin)
    try:
        yield proc
    finally:
        if proc.proc.poll() is None:
            try:
                proc.finish(timeout=30)
            except BenchError:
                proc.proc.kill()
                proc.proc.wait()


@contextlib.contextmanager
def sink_process(pin: bool, *, hang: bool) -> Iterator[tuple[ScriptProcess, list[int]]]:
    listeners = [{"host": HEALTHY_HOST, "mode": "ok"}]
    if hang:
        listeners.append({"host": HANG_HOST, "mode": "hang"})
    with started("_webhook_sink.py", {"listeners": listeners}, LOADGEN_CORE, pin) as sink:
        ready = sink.expect("READY", timeout=30)
        yield sink, [int(p) for p in ready["ports"]]


# ---------------------------------------------------------------------------------------------- helpers


def outbox_rows(server: Server) -> int:
    """
    Rows in the server's outbox (its SQLite file, read from this process: WAL lets a reader in).
    """
    with contextlib.closing(sqlite3.connect(server.data_dir / "devicecloud.db", timeout=10)) as db:
        return int(db.execute("SELECT count(*) FROM webhook_deliveries").fetchone()[0])


class OutboxSampler:
    """
    The outbox's largest row count while it runs (sampled every ``every`` seconds from a thread).
    """

    def __init__(self, server: Server, every: float = 0.5) -> None:
        self.server, self.every = server, every
        self.most = 0
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        began = time.monotonic()
        while not self._stop.wait(self.every):
            with contextlib.suppress(sqlite3.Error):
                rows = outbox_rows(self.server)
                self.most = max(self.most, rows)
                self.samples.append((round(time.monotonic() - began, 1), rows))

    def __enter__(self) -> OutboxSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


class ErrorWatcher:
    """
    The account's ``hook-error`` events, read from an SSE stream in a thread: how many, the first messages.
    """

    def __init__(self, server: Server, token: str) -> None:
        self.count = 0
        self.messages: Counter[str] = Counter()
        self._conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=3600)
        self._conn.request(
            "GET",
            "/v1/devices/events/hook-error",
            headers={"Authorization": f"Bearer {token}", "Accept": "text/event-stream"},
        )
        self._reply = self._conn.getresponse()
        if self._reply.status != 200:
            raise BenchError(f"the hook-error stream answered {self._reply.status}")
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        with contextlib.suppress(
            Exception
        ):  # ends when close() shuts the socket, however http.client takes it
            for raw in self._reply:
                line = raw.decode("utf-8", "replace").strip()
                if line.startswith("data:"):
                    self.count += 1
                    with contextlib.suppress(ValueError):
                        self.messages[str(json.loads(line[5:])["data"])[:160]] += 1

    def close(self) -> None:
        with contextlib.suppress(OSError):
            if self._conn.sock is not None:
                self._conn.sock.shutdown(socket.SHUT_RDWR)
        self._conn.close()
        self._thread.join(timeout=5)

    def take(self) -> dict[str, Any]:
        """
        What came since the last call.
        """
        out = {"count": self.count, "messages": dict(self.messages.most_common(5))}
        self.count = 0
        self.messages.clear()
        return out


@contextlib.contextmanager
def watching_errors(server: Server, token: str) -> Iterator[ErrorWatcher]:
    watcher = ErrorWatcher(server, token)
    try:
        yield watcher
    finally:
        watcher.close()


def create_hooks(server: Server, token: str, targets: list[tuple[str, int, str]]) -> list[str]:
    """
    One hook per ``(host, port, path)``, all on the ``benchhook`` prefix; JSON and form templates in turn.
    """
    bearer = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    ids = []
    for i, (host, port, path) in enumerate(targets):
        fields: dict[str, Any] = {
            "integration_type": "Webhook",
            "event": PREFIX,
            "url": f"http://{host}:{port}{path}",
            "requestType": "POST",
            "name": f"bench {path}",
            ("json" if i % 2 == 0 else "form"): TEMPLATE,
        }
        status, body = call(server.port, Request("POST", "/v1/integrations", bearer, json.dumps(fields)))
        if status != 201:
            raise BenchError(f"creating a hook answered {status}: {body[:300]!r}")
        ids.append(str(json.loads(body)["id"]))
    return ids


def healthy_paths(hooks: int) -> list[str]:
    return [f"/h/{i}" for i in range(hooks)]


def thread_cpu(pid: int) -> dict[int, float]:
    """
    CPU seconds of each thread of a process (``/proc/PID/task``): the event loop runs on the main thread
    (tid == pid), SQLite work on aiosqlite's threads.
    """
    out = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
            out[int(task.name)] = (int(fields[11]) + int(fields[12])) / CLK_TCK
    return out


def split_cpu(pid: int, before: dict[int, float]) -> tuple[float, float]:
    """
    CPU seconds since ``before``: (main thread, all other threads).
    """
    after = thread_cpu(pid)
    main = after.get(pid, 0.0) - before.get(pid, 0.0)
    others = sum(v - before.get(tid, 0.0) for tid, v in after.items() if tid != pid)
    return main, others


def machine_busy_seconds() -> float:
    """
    CPU seconds all cores spent busy since boot (``/proc/stat``), to tell how much others used meanwhile.
    """
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in fields[:8])
    return (user + nice + system + irq + softirq + steal) / CLK_TCK


def machine_load() -> str:
    one, five, _fifteen = os.getloadavg()
    return f"load average {one:.2f} (1 min), {five:.2f} (5 min)"


# ---------------------------------------------------------------------------------------------- sources


class ApiSource:
    """
    ``POST /v1/devices/events`` open-loop from an ``_events_gen.py`` publisher (one process per run) over
    ``PUBLISH_CONNECTIONS`` keep-alive sockets; each socket is a source with its own sequence.
    """

    kind = "api"

    def __init__(self, server: Server, token: str, pin: bool) -> None:
        self.server, self.token, self.pin = server, token, pin

    def publish(self, name: str, rate: float, duration: float) -> dict[str, Any]:
        spec = {"mode": "publisher", "port": self.server.port, "token": self.token, "rate": rate,
                "duration": duration, "name": name, "connections": PUBLISH_CONNECTIONS}  # fmt: skip
        with started("_events_gen.py", spec, LOADGEN_CORE, self.pin) as publisher:
            result = publisher.expect("RESULT", timeout=duration + 120)
            result["cpu_s"] = publisher.finish()
        return result


class DeviceSource:
    """
    Virtual devices (``_webhook_devices.py``, one process), claimed by the account; each device is a source.
    """

    kind = "devices"

    def __init__(self, fleet: ScriptProcess, count: int) -> None:
        self.fleet, self.count = fleet, count

    def publish(self, name: str, rate: float, duration: float) -> dict[str, Any]:
        if rate > self.count * DEVICE_RATE:
            raise BenchError(f"{rate:g} events/s from {self.count} devices is over their publish limit")
        cpu = self.fleet.cpu_seconds()
        result = self.fleet.ask(f"publish {name} {rate} {duration}", "RESULT", timeout=duration + 120)
        result["cpu_s"] = self.fleet.cpu_seconds() - cpu
        return result


Source = ApiSource | DeviceSource


@contextlib.contextmanager
def device_source(server: Server, token: str, count: int, keys: Path, pin: bool) -> Iterator[DeviceSource]:
    """
    ``count`` devices connected and claimed by the account, each having published once (an event no hook
    takes), so that the server knows every device's owner before anything is measured.
    """
    pem = (server.data_dir / "server_key.pub.pem").read_text()
    spec = {"port": server.device_port, "server_public_key": pem, "tag": 0xE0B0, "keys_file": str(keys),
            "concurrency": 64, "device_ping_after": 600.0}  # fmt: skip
    with started("_webhook_devices.py", spec, LOADGEN_CORE, pin) as fleet:
        began = time.monotonic()
        state = fleet.ask(f"connect {count}", "STATE", timeout=max(300, count / 10))
        if int(state["connected"]) != count:
            raise BenchError(
                f"{state['connected']}/{count} devices connected: {state['connect_failure_reasons']}"
            )
        bearer = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}

        def claim(did: str) -> None:
            status, body = call(server.port, Request("POST", "/v1/devices", bearer, json.dumps({"id": did})))
            if status != 200:
                raise BenchError(f"claiming {did} answered {status}: {body[:200]!r}")

        with ThreadPoolExecutor(8) as pool:
            list(pool.map(claim, state["ids"]))
        source = DeviceSource(fleet, count)
        rate = min(float(count), 500.0) * DEVICE_RATE
        warm = source.publish("benchwarm/owners", rate, count / rate)
        print(
            f"  {count:,} devices connected, claimed and warm in {time.monotonic() - began:.1f}s "
            f"({warm['published']:,} warm-up events)",
            flush=True,
        )
        yield source


# ---------------------------------------------------------------------------------------------- one run


def publish_run(
    server: Server,
    sink: ScriptProcess,
    source: Source,
    *,
    label: str,
    name: str,
    rate: float,
    duration: float,
    paths: list[str],
    pin: bool,
    drain_timeout: float,
    errors: ErrorWatcher,
    wait_empty: bool = True,
    profile: Path | None = None,
) -> dict[str, Any]:
    """
    Publish ``rate`` events/s named ``name`` for ``duration`` s and wait until each of ``paths`` got every one
    (and, with ``wait_empty``, the outbox is empty). Figures of the run; ``failures`` lists what went wrong.
    """
    sink.ask(f"reset {name}", "OK")
    errors.take()
    sink_cpu = sink.cpu_seconds()
    server_cpu = server.cpu_seconds()
    threads = thread_cpu(server.proc.pid)
    busy = machine_busy_seconds()
    began = time.monotonic()
    spy = None
    if profile is not None:
        spy = subprocess.Popen(
            pinned(LOADGEN_CORE, [str(Path(sys.executable).parent / "py-spy"), "record", "--pid",
                                  str(server.proc.pid), "--rate", "250", "--nonblocking", "--format", "raw",
                                  "--duration", str(max(1, round(duration))), "-o", str(profile)], pin),
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
    with OutboxSampler(server) as sampler:
        result = source.publish(name, rate, duration)
        publisher_cpu = float(result["cpu_s"])
        sent_at_end = time.monotonic()
        backlog_end = outbox_rows(server)
        published = int(result["published"])
        expected = published * len(paths)
        deadline = time.monotonic() + drain_timeout
        while True:
            rep = sink.ask("report", "REPORT")
            delivered = sum(rep["per_path"].get(p, 0) for p in paths)
            rows = outbox_rows(server) if wait_empty else 0
            if (delivered >= expected and rows == 0) or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        drained_at = time.monotonic()
        server_cpu = server.cpu_seconds() - server_cpu
        main_cpu, other_cpu = split_cpu(server.proc.pid, threads)
        sink_cpu = sink.cpu_seconds() - sink_cpu
        busy = machine_busy_seconds() - busy
        most, outbox_samples = sampler.most, sampler.samples
    if spy is not None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            spy.wait(timeout=30)
    check = sink.ask("check " + json.dumps({"sources": result["sent"]}), "CHECK")["paths"]
    missing = sum(check.get(p, {}).get("missing", published) for p in paths)
    duplicates = sum(check.get(p, {}).get("duplicates", 0) for p in paths)
    unexpected = sum(v["unexpected"] for v in check.values())
    window = float(result["send_window_s"])
    histogram = Counter({int(k): v for k, v in rep["histogram_us"].items()})
    delivered = rep["delivered"]
    late = sum(v for k, v in histogram.items() if k >= LATE_S * 1e6)
    # Deliveries/s: from the first receipt to the last one that was not late (to 100 ms), at least the send
    # window; one straggler must not turn a sustained rate into nothing.
    buckets = sorted((int(k), v) for k, v in rep["per_100ms"].items())
    first = rep["first_ns"] // BUCKET_NS
    last, seen = first, 0
    for key, count in buckets:
        seen += count
        last = key
        if seen >= delivered - late:
            break
    span = max(window, (last + 1 - first) * BUCKET_NS / 1e9)
    in_window = sum(v for k, v in buckets if first <= k < first + round(window * 10))
    row = {
        "label": label, "events_per_s": rate, "hooks": len(paths), "offered_per_s": rate * len(paths),
        "published": published, "expected": expected, "delivered": delivered, "missing": missing,
        "duplicates": duplicates, "unexpected": unexpected, "stale": rep["stale"], "bad": rep["bad"],
        "window_s": window, "span_s": span, "drain_s": drained_at - sent_at_end,
        "deliveries_per_s": (delivered - late) / span if span else 0.0, "late": late,
        "in_window_per_s": in_window / window if window else 0.0,
        "p50_ms": percentile(histogram, 0.50), "p99_ms": percentile(histogram, 0.99),
        "max_ms": percentile(histogram, 1.0),
        "server_cpu_s": server_cpu, "main_thread_cpu_s": main_cpu, "other_threads_cpu_s": other_cpu,
        "elapsed_s": drained_at - began,
        "server_cpu_share": server_cpu / (drained_at - began),
        "server_us_per_delivery": server_cpu / delivered * 1e6 if delivered else float("nan"),
        "server_us_per_event": server_cpu / published * 1e6 if published else float("nan"),
        "sink_cpu_share": sink_cpu / (drained_at - began), "publisher_cpu_share": publisher_cpu / window,
        "publisher_lag_p99_ms": result["lag_p99_ms"], "statuses": result["statuses"],
        "publish_errors": result["errors"], "outbox_end_of_window": backlog_end, "outbox_most": most,
        "outbox_after": outbox_rows(server), "hang_requests": rep["hang_requests"],
        "others_cpu_share": max(0.0, busy - server_cpu - sink_cpu - publisher_cpu) / (drained_at - began),
        "hang_open": rep["hang_open"], "hook_errors": errors.take(), "outbox_samples": outbox_samples,
        "per_second": [sum(v for k, v in buckets if first + 10 * i <= k < first + 10 * (i + 1))
                       for i in range(math.ceil((last + 1 - first) / 10))],
    }  # fmt: skip
    row["complete"] = not (missing or duplicates or unexpected or rep["bad"])
    row["sustained_per_s"] = _credited(row)
    failures = []
    bad_status = {k: v for k, v in result["statuses"].items() if k != "200"}
    if bad_status or result["errors"] or published != round(rate * duration):
        failures.append(f"{label}: publishes {result['statuses']} {result['errors']} ({published} sent)")
    if missing or duplicates or unexpected or rep["bad"]:
        failures.append(
            f"{label}: {missing} of {expected} deliveries missing, {duplicates} duplicated, "
            f"{unexpected} unexpected, unreadable bodies {rep['bad']}; "
            f"hook-error events: {row['hook_errors']}"
        )
    kept_up = row["in_window_per_s"] >= 0.95 * row["offered_per_s"]  # else queueing may take that long
    if late and kept_up:
        failures.append(
            f"{label}: {late} deliveries took longer than {LATE_S:g} s "
            f"(max {row['max_ms'] / 1000:.1f} s) with no "
            f"hook-error: claimed and then held in memory until their lease ran out?"
        )
    row["failures"] = failures
    return row


def _credited(row: dict[str, Any]) -> float:
    """
    The offered rate when every delivery arrived exactly once, the outbox was empty within a second of the
    last send and the measured rate is within 3 % of it (the span from first to last receipt is the send
    window plus the spread of the latency: 10 s at 2,000/s measure ~1,980/s); else the measured rate.
    """
    measured, offered = float(row["deliveries_per_s"]), float(row["offered_per_s"])
    if row["complete"] and row["drain_s"] <= 1.0 and measured >= 0.97 * offered:
        return max(measured, offered)
    return measured


def print_rows(title: str, rows: list[dict[str, Any]]) -> list[list[str]]:
    """
    Print the runs as a table; the table (header first).
    """
    table = [["run", "offered/s", "sustained/s", "deliveries/s", "in window/s", "delivered/expected",
              "missing", "dups", "p50 ms", "p99 ms", "max ms", "server CPU", "µs/delivery", "outbox end/most",
              "sink CPU", "source CPU", "source lag", "others"]]  # fmt: skip
    table += [
        [
            r["label"],
            f"{r['offered_per_s']:,.0f}",
            f"{r['sustained_per_s']:,.0f}",
            f"{r['deliveries_per_s']:,.0f}",
            f"{r['in_window_per_s']:,.0f}",
            f"{r['delivered']:,}/{r['expected']:,}",
            f"{r['missing']}",
            f"{r['duplicates']}",
            f"{r['p50_ms']:.1f}",
            f"{r['p99_ms']:.1f}",
            f"{r['max_ms']:.1f}",
            f"{r['server_cpu_share']:.0%}",
            f"{r['server_us_per_delivery']:.0f}" if r["delivered"] else "-",
            f"{r['outbox_end_of_window']:,}/{r['outbox_most']:,}",
            f"{r['sink_cpu_share']:.0%}",
            f"{r['publisher_cpu_share']:.0%}",
            f"{r['publisher_lag_p99_ms']:.1f}",
            f"{r['others_cpu_share']:.0%}",
        ]
        for r in rows
    ]
    print(f"\n{title}")
    print(format_table(table))
    return table


# ---------------------------------------------------------------------------------------------- sections


def bench_sink(args: argparse.Namespace, pin: bool) -> Outcome:
    """
    The sink's capacity: a closed-loop generator on core 0 (the server's core, idle now) against it on core 1.
    """
    outcome = Outcome()
    duration = args.sink_duration
    body = json.dumps({"event": "cap", "value": f"0:0:{time.monotonic_ns()}", "data": "x" * 40})
    request = Request("POST", "/cap", {"Content-Type": "application/json"}, body)
    generator = "wrk" if shutil.which("wrk") and args.generator != "python" else "python"
    with sink_process(pin, hang=False) as (sink, ports), tempfile.TemporaryDirectory() as tmp:
        if generator == "wrk":
            script = Path(tmp) / "sink.lua"
            script.write_text(wrk_script(request))
            url = f"http://{HEALTHY_HOST}:{ports[0]}/cap"
            argv = ["wrk", "-t1", "-c32", f"-d{max(1, round(duration))}s", "-s", str(script), url]
        else:
            spec = {"port": ports[0], "requests": [request.raw(ports[0])], "connections": 32,
                    "duration": duration}  # fmt: skip
            argv = [sys.executable, str(BENCH_DIR / "_loadgen.py"), json.dumps(spec)]
        sink_cpu = sink.cpu_seconds()
        out_path = Path(tmp) / "out.txt"
        with out_path.open("w") as out:
            proc = subprocess.Popen(
                pinned(SERVER_CORE, argv, pin), stdout=out, stderr=subprocess.STDOUT, text=True
            )
            code, generator_cpu = wait_child(proc, duration + 60)
        sink_cpu = sink.cpu_seconds() - sink_cpu
        output = out_path.read_text()
        line = next((ln for ln in output.splitlines() if ln.startswith("BENCH_JSON ")), None)
        if code != 0 or line is None:
            raise BenchError(f"{generator} against the sink failed ({code}):\n{output[-1500:]}")
        figures = json.loads(line.removeprefix("BENCH_JSON "))
        rep = sink.ask("report", "REPORT")
    seconds = float(figures["duration_s"])
    f = outcome.figures
    f.update(
        generator=generator, requests=figures["requests"], duration_s=seconds,
        req_per_s=figures["requests"] / seconds, p99_ms=figures["p99_us"] / 1000,
        errors=figures["status_errors"] + figures["socket_errors"], sink_cpu_share=sink_cpu / seconds,
        sink_us_per_request=sink_cpu / max(1, rep["requests"]) * 1e6,
        generator_cpu_share=generator_cpu / seconds, bad=rep["bad"],
    )  # fmt: skip
    if f["errors"] or rep["bad"] or not figures["requests"]:
        outcome.failures.append(f"sink capacity: errors {f['errors']}, unreadable {rep['bad']}")
    outcome.table = Table(
        SINK_TITLE,
        ["generator", "req/s", "p99 ms", "sink CPU", "sink µs/request", "generator CPU"],
        [[generator, f"{f['req_per_s']:,.0f}", f"{f['p99_ms']:.1f}", f"{f['sink_cpu_share']:.0%}",
          f"{f['sink_us_per_request']:.0f}", f"{f['generator_cpu_share']:.0%}"]],
    )  # fmt: skip
    print(
        f"  sink capacity ({generator} on core {SERVER_CORE}, 32 connections): {f['req_per_s']:,.0f} req/s, "
        f"p99 {f['p99_ms']:.1f} ms, sink CPU {f['sink_cpu_share']:.0%} "
        f"({f['sink_us_per_request']:.0f} µs/req), generator CPU {f['generator_cpu_share']:.0%}",
        flush=True,
    )
    return outcome


def server_for(args: argparse.Namespace, devices: int, pin: bool, timeout: float | None = None) -> Any:
    env = {
        "DEVICECLOUD_WEBHOOK_BLOCK_PRIVATE": "false",
        "DEVICECLOUD_ACCEPT_UNKNOWN_DEVICES": "true",
        "DEVICECLOUD_MAX_DEVICE_LINKS": str(devices + 1000),
    }
    if timeout is not None:
        env["DEVICECLOUD_WEBHOOK_TIMEOUT"] = str(timeout)
    return running_server(email=EMAIL, password=PASSWORD, pin=pin, extra_env=env, extra_args=NO_DEMO)


def drain_for(args: argparse.Namespace, offered: float, duration: float) -> float:
    """
    How long a run waits after the last send for its deliveries: long enough for an overloaded point's
    backlog (3 s per 1,000 deliveries) in a full run; in ``--smoke`` 5 s, so that missing deliveries fail it
    quickly (a delivery held until its lease runs out, 50 s, counts as missing there).
    """
    return 5.0 if args.smoke else max(60.0, 3 * offered * duration / 1000)


def devices_for(args: argparse.Namespace, events_per_s: float) -> int:
    return math.ceil(events_per_s / DEVICE_RATE) if args.source == "devices" else 0


@contextlib.contextmanager
def event_source(
    args: argparse.Namespace, server: Server, token: str, devices: int, pin: bool
) -> Iterator[Source]:
    if args.source == "devices":
        with device_source(server, token, devices, args.keys, pin) as fleet:
            yield fleet
    else:
        yield ApiSource(server, token, pin)


def bench_throughput(args: argparse.Namespace, pin: bool) -> Outcome:
    outcome = Outcome()
    points = [float(p) for p in args.points.split(",")]
    paths = healthy_paths(args.hooks)
    rows: list[dict[str, Any]] = []
    devices = devices_for(args, max(max(points) / args.hooks, args.baseline_rate))
    with (
        sink_process(pin, hang=False) as (sink, ports),
        server_for(args, devices, pin) as server,
        contextlib.ExitStack() as stack,
    ):
        token = get_token(server.port, EMAIL, PASSWORD)
        source = stack.enter_context(event_source(args, server, token, devices, pin))
        create_hooks(server, token, [(HEALTHY_HOST, ports[0], p) for p in paths])
        print(f"  {args.hooks} hooks, events from {source.kind}; {machine_load()}", flush=True)
        errors = stack.enter_context(watching_errors(server, token))
        common = {"server": server, "sink": sink, "pin": pin, "errors": errors}
        warm = publish_run(**common, source=source, label="warm-up", name=f"{PREFIX}/warm",
                           rate=min(points) / args.hooks, duration=args.warmup, paths=paths,
                           drain_timeout=drain_for(args, 0, 0))  # fmt: skip
        outcome.failures += warm["failures"]
        # The event sources' own cost: events no hook takes. The API one is measured with either source.
        sources: list[Source] = [source] if source.kind == "api" else [source, ApiSource(server, token, pin)]
        bases = {}
        base_duration = 1.0 if args.smoke else args.duration
        for one in sources:
            base = publish_run(**common, source=one, label=f"baseline: {one.kind}, no hook matches",
                               name="benchnohook/base", rate=args.baseline_rate, duration=base_duration,
                               paths=[], drain_timeout=5)  # fmt: skip
            outcome.failures += base["failures"]
            rows.append(base)
            bases[one.kind] = base
            print(
                f"  baseline ({one.kind}): {base['server_us_per_event']:.0f} µs of server CPU per event "
                f"at {args.baseline_rate:g} events/s",
                flush=True,
            )
        base = bases[source.kind]
        for n, point in enumerate(points):
            rate = point / args.hooks
            profile = args.profile if args.profile is not None and point == args.profile_point else None
            row = publish_run(**common, source=source, label=f"{rate:g} ev/s x {args.hooks} hooks",
                              name=f"{PREFIX}/p{n}", rate=rate, duration=args.duration, paths=paths,
                              profile=profile,
                              drain_timeout=drain_for(args, point, args.duration))  # fmt: skip
            own = base["server_us_per_event"] * row["published"] / 1e6
            row["webhook_us_per_delivery"] = (
                (row["server_cpu_s"] - own) / row["delivered"] * 1e6 if row["delivered"] else math.nan
            )
            rows.append(row)
            outcome.failures += row["failures"]
            print(
                f"  {point:>6,.0f}/s offered: {row['deliveries_per_s']:>7,.0f} deliveries/s "
                f"({row['delivered']:,}/{row['expected']:,}), p50 {row['p50_ms']:.1f} ms "
                f"p99 {row['p99_ms']:.1f} ms, server CPU {row['server_cpu_share']:.0%} "
                f"({row['server_us_per_delivery']:.0f} µs/delivery), outbox at window end "
                f"{row['outbox_end_of_window']:,}, drain {row['drain_s']:.1f}s, "
                f"others {row['others_cpu_share']:.0%} of a core",
                flush=True,
            )
    outcome.figures.update(source=source.kind, hooks=args.hooks, devices=devices, rows=rows)
    complete = [r for r in rows if r["expected"] and r["complete"] and r["label"] != "warm-up"]
    best = max((r["sustained_per_s"] for r in complete), default=0.0)
    outcome.figures["best_deliveries_per_s"] = best
    at = [r for r in complete if r["offered_per_s"] == P99_AT]
    p99 = at[0]["p99_ms"] if at else math.nan
    outcome.figures["p99_at_500_ms"] = p99
    costs = [r["webhook_us_per_delivery"] for r in complete if r["offered_per_s"] >= THROUGHPUT_TARGET]
    if costs:
        outcome.figures["ceiling_per_s"] = 1e6 / min(costs)
    if not args.smoke:
        if best < THROUGHPUT_TARGET:
            outcome.missed.append(
                f"throughput: best {best:,.0f} deliveries/s ({best / THROUGHPUT_TARGET:.2f}× the "
                f"{THROUGHPUT_TARGET:,.0f}/s target)"
            )
        if not p99 <= P99_TARGET_MS:
            outcome.missed.append(
                f"latency: p99 {p99:.1f} ms at {P99_AT:g} deliveries/s "
                f"({p99 / P99_TARGET_MS:.2f}× the {P99_TARGET_MS:g} ms budget)"
            )
    return outcome


def _us(seconds: float, count: float) -> str:
    value = seconds / count * 1e6
    return "-" if math.isnan(value) else f"{value:.0f}"


def print_throughput(o: Outcome) -> None:
    rows = o.figures.get("rows", [])
    if not rows:
        return
    table = print_rows("throughput (POST /v1/devices/events → hooks → sink on core 1)", rows)
    o.table = Table(THROUGHPUT_TITLE, table[0], table[1:])
    extra = [["run", "server µs/event", "µs/delivery: all", "event loop thread", "other threads (SQLite)",
              "webhook only (publish taken out)", "outbox after"]]  # fmt: skip
    for r in rows:
        n = r["delivered"] or math.nan
        extra.append(
            [
                r["label"],
                f"{r['server_us_per_event']:.0f}",
                _us(r["server_cpu_s"], n),
                _us(r["main_thread_cpu_s"], n),
                _us(r["other_threads_cpu_s"], n),
                _us(r.get("webhook_us_per_delivery", math.nan) / 1e6, 1),
                f"{r['outbox_after']}",
            ]
        )
    print(format_table(extra))
    f = o.figures
    print(
        f"best sustained: {f['best_deliveries_per_s']:,.0f} deliveries/s (target {THROUGHPUT_TARGET:,.0f}); "
        f"p99 at {P99_AT:g}/s: {f['p99_at_500_ms']:.1f} ms (budget {P99_TARGET_MS:g} ms)"
    )
    if "ceiling_per_s" in f:
        print(f"one-core ceiling 1/(webhook-only µs per delivery): {f['ceiling_per_s']:,.0f} deliveries/s")


def bench_hang(args: argparse.Namespace, pin: bool) -> Outcome:
    """
    Per rate, one server: the healthy hooks alone, then the hanging one added (on the same events).
    """
    outcome = Outcome()
    paths = healthy_paths(args.hooks)
    pairs = []
    timeout = 1.5 if args.smoke else None  # else the server's default: 20 s
    for healthy_rate in [float(r) for r in args.hang_rates.split(",")]:
        rate = healthy_rate / args.hooks
        pair: dict[str, Any] = {}
        devices = devices_for(args, rate)
        with (
            sink_process(pin, hang=True) as (sink, ports),
            server_for(args, devices, pin, timeout) as server,
            contextlib.ExitStack() as stack,
        ):
            token = get_token(server.port, EMAIL, PASSWORD)
            source = stack.enter_context(event_source(args, server, token, devices, pin))
            create_hooks(server, token, [(HEALTHY_HOST, ports[0], p) for p in paths])
            errors = stack.enter_context(watching_errors(server, token))
            for with_hang in (False, True):
                label = f"{healthy_rate:g}/s healthy " + (
                    f"+ {args.hang_hooks} hanging" if with_hang else "alone"
                )
                if with_hang:
                    hang = [(HANG_HOST, ports[1], f"/hang/{i}") for i in range(args.hang_hooks)]
                    create_hooks(server, token, hang)
                print(f"  {label}: {machine_load()}", flush=True)
                drain = drain_for(args, healthy_rate, args.hang_duration)
                row = publish_run(server, sink, source, label=label, name=f"{PREFIX}/hang{int(with_hang)}",
                                  rate=rate, duration=args.hang_duration, paths=paths, pin=pin,
                                  wait_empty=not with_hang, drain_timeout=drain, errors=errors)  # fmt: skip
                if with_hang and timeout is not None:  # let the (short) request limit pass for a hanging one
                    time.sleep(timeout + 0.5)
                    rep = sink.ask("report", "REPORT")
                    row["hang_requests"], row["hang_open"] = rep["hang_requests"], rep["hang_open"]
                    row["hook_errors"]["count"] += errors.take()["count"]
                row["outbox_after"] = outbox_rows(server)
                row["log_tail"] = server.log_tail(800)
                outcome.failures += row["failures"]
                if with_hang and not row["hang_requests"]:
                    outcome.failures.append(f"{label}: the hanging target received no request")
                pair["hang" if with_hang else "alone"] = row
                print(
                    f"    {row['deliveries_per_s']:,.0f} healthy deliveries/s "
                    f"({row['delivered']:,}/{row['expected']:,}), in window {row['in_window_per_s']:,.0f}/s, "
                    f"p50 {row['p50_ms']:.1f} ms p99 {row['p99_ms']:.1f} ms, server CPU "
                    f"{row['server_cpu_share']:.0%}, hanging target got {row['hang_requests']} requests, "
                    f"{row['hook_errors']['count']} hook-error events, outbox after {row['outbox_after']:,}, "
                    f"others {row['others_cpu_share']:.0%} of a core",
                    flush=True,
                )
        pair["ratio"] = pair["hang"]["deliveries_per_s"] / max(1e-9, pair["alone"]["deliveries_per_s"])
        pair["in_window_ratio"] = pair["hang"]["in_window_per_s"] / max(
            1e-9, pair["alone"]["in_window_per_s"]
        )
        pairs.append(pair)
        if not args.smoke and pair["ratio"] < HANG_RATIO_TARGET:
            outcome.missed.append(
                f"hanging target: healthy deliveries at {healthy_rate:g}/s offered fell to "
                f"{pair['ratio']:.2f}× (target ≥ {HANG_RATIO_TARGET:g}×)"
            )
    outcome.figures["pairs"] = pairs
    return outcome


def print_hang(o: Outcome) -> None:
    pairs = o.figures.get("pairs", [])
    if not pairs:
        return
    rows = [r for p in pairs for r in (p["alone"], p["hang"])]
    title = "hanging target (healthy hooks → 127.0.0.1; hanging hook → 127.0.0.2, never answers)"
    table = print_rows(title, rows)
    o.table = Table(HANG_TITLE, table[0], table[1:])
    for p in pairs:
        print(
            f"{p['alone']['label']}: with the hanging target {p['ratio']:.3f}× the deliveries/s "
            f"(in window {p['in_window_ratio']:.3f}×); hanging requests {p['hang']['hang_requests']}, "
            f"outbox after {p['hang']['outbox_after']:,}"
        )


def bench_breakdown(args: argparse.Namespace, pin: bool) -> Outcome:
    """
    ``_webhook_breakdown.py`` on the server's core: CPU per delivery of each stage, in-process.
    """
    outcome = Outcome()
    rounds, events = (1, 5) if args.smoke else (10, 125)
    argv = [sys.executable, str(BENCH_DIR / "_webhook_breakdown.py"), "--hooks", str(args.hooks),
            "--rounds", str(rounds), "--events", str(events),
            "--sink-core", str(LOADGEN_CORE if pin else -1)]  # fmt: skip
    done = subprocess.run(
        pinned(SERVER_CORE, argv, pin), capture_output=True, text=True, timeout=300, check=False
    )
    line = next((ln for ln in done.stdout.splitlines() if ln.startswith("BENCH_JSON ")), None)
    if done.returncode != 0 or line is None:
        raise BenchError(f"the breakdown failed ({done.returncode}):\n{done.stderr[-1500:]}")
    f = json.loads(line.removeprefix("BENCH_JSON "))
    outcome.figures.update(f)
    if f["sink_bad"] or f["sink_requests"] != f["deliveries"] + events * args.hooks:  # + the warm-up round
        outcome.failures.append(
            f"breakdown: sink got {f['sink_requests']} requests, unreadable {f['sink_bad']}"
        )
    return outcome


def print_breakdown(o: Outcome) -> None:
    f = o.figures
    if "stages" not in f:
        return
    print(
        f"\nwhere a delivery's server CPU goes, in-process ({f['events_per_round']} events x {f['hooks']} "
        f"hooks "
        f"per round, {f['deliveries']:,} deliveries)"
    )
    rows = [["stage", "CPU µs/delivery", "share", "SQL statements/round"]]
    total = f["total_cpu_us_per_delivery"]
    for stage, v in f["stages"].items():
        rows.append([stage, f"{v['cpu_us_per_delivery']:.1f}", f"{v['cpu_us_per_delivery'] / total:.0%}",
                     f"{v['statements_per_round']:g}"])  # fmt: skip
    rows.append(["total", f"{total:.1f}", "100%", ""])
    print(format_table(rows))
    o.table = Table(BREAKDOWN_TITLE, rows[0], rows[1:])
    print(
        f"event_context alone {f['event_context_us']:.1f} µs; one Mustache render {f['one_render_us']:.1f} µs"
    )


# ---------------------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add = parser.add_argument
    add("--smoke", action="store_true", help="every path tiny, for CI: no targets, ~30 s")
    add("--only", action="append", choices=SECTIONS, help="run only this section (repeatable)")
    add("--hooks", type=int, default=None, help="healthy hooks that every event fires (4)")
    add("--source", choices=("devices", "api"), default="devices", help="where events come from (devices)")
    add("--points", default=None, help=f"offered deliveries/s, comma-separated ({DEFAULT_POINTS})")
    add("--duration", type=float, default=None, help="seconds of publishing per point (10)")
    add("--warmup", type=float, default=None, help="seconds of warm-up publishing (3)")
    add("--baseline-rate", type=float, default=None, help="events/s of the no-hook baseline (500)")
    add("--hang-rates", default=None, help=f"healthy deliveries/s offered ({DEFAULT_HANG_RATES})")
    add("--hang-hooks", type=int, default=1, help="hooks to the hanging target (1)")
    add("--hang-duration", type=float, default=None, help="seconds of publishing per hang run (45)")
    add("--sink-duration", type=float, default=None, help="seconds of the sink capacity run (8)")
    add("--generator", choices=("wrk", "python"), default="wrk", help="for the sink capacity (wrk if found)")
    add("--profile", type=Path, default=None, help="py-spy raw profile of the server during one point")
    add("--profile-point", type=float, default=2000.0, help="the point to profile (2000)")
    add("--no-pin", action="store_true", help="do not use taskset even where available")
    add("--json", type=Path, default=None, help="also write all figures to this file")
    args = parser.parse_args(argv)

    began = time.monotonic()
    smoke: bool = args.smoke
    if smoke:
        args.hooks = args.hooks or 2
        args.points = args.points or "40"
        args.duration = args.duration or 1.5
        args.warmup = 0.5 if args.warmup is None else args.warmup
        args.baseline_rate = args.baseline_rate or 20.0
        args.hang_rates = args.hang_rates or "40"
        args.hang_duration = args.hang_duration or 2.5
        args.sink_duration = args.sink_duration or 1.0
    args.hooks = args.hooks or 4
    args.points = args.points or DEFAULT_POINTS
    args.duration = args.duration or 10.0
    args.warmup = 3.0 if args.warmup is None else args.warmup
    args.baseline_rate = args.baseline_rate or THROUGHPUT_TARGET / args.hooks
    args.hang_rates = args.hang_rates or DEFAULT_HANG_RATES
    args.hang_duration = args.hang_duration or 45.0
    args.sink_duration = args.sink_duration or 8.0
    pin = can_pin() and not args.no_pin
    mode = "smoke" if smoke else "full"
    print(f"devicecloud webhook benchmark  {datetime.now(UTC):%Y-%m-%d %H:%M UTC}  mode={mode}")
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}")
    print(f"before: {machine_load()}")
    print("server pinned to core 0, sink and publisher to core 1" if pin else "not pinned (no taskset)")

    raise_open_files()
    outcomes: dict[str, Outcome] = {}
    keys_dir = tempfile.TemporaryDirectory(prefix="devicecloud-keys-")
    args.keys = Path(keys_dir.name) / "device-keys.pem"
    write_key_pool(args.keys)
    for section in args.only or SECTIONS:
        print(f"\n[{section}]", flush=True)
        section_began = time.monotonic()
        try:
            if section == "sink":
                outcomes[section] = bench_sink(args, pin)
            elif section == "throughput":
                outcomes[section] = o = bench_throughput(args, pin)
                print_throughput(o)
            elif section == "breakdown":
                outcomes[section] = o = bench_breakdown(args, pin)
                print_breakdown(o)
            else:
                outcomes[section] = o = bench_hang(args, pin)
                print_hang(o)
        except BenchError as exc:
            outcomes[section] = Outcome(failures=[f"{section}: {exc}"])
        print(f"[{section}: {time.monotonic() - section_began:.1f}s]", flush=True)
    keys_dir.cleanup()
    return report("webhook", outcomes, json_path=args.json, smoke=smoke, pin=pin, started=began)


if __name__ == "__main__":
    run_main(main)
