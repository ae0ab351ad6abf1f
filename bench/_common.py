"""
Shared plumbing for the benchmarks: start a real ``devicecloud serve`` on a free loopback port, pin it and the
load generator to separate cores, drive load with ``wrk`` (or the Python fallback in ``_loadgen.py``) and
measure CPU time of both sides.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import json
import math
import os
import queue
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from _results import Table, record

BENCH_DIR = Path(__file__).resolve().parent
SERVER_CORE = 0
LOADGEN_CORE = 1
CLIENT_ID = "particle"
CLIENT_SECRET = "particle"  # noqa: S105 - the public id/secret of Particle's official clients
_CLK_TCK = os.sysconf("SC_CLK_TCK")


class BenchError(RuntimeError):
    """
    Something that should have worked did not (server start, a non-2xx reply, a failed load run).
    """


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def can_pin() -> bool:
    """
    Whether ``taskset`` exists and both benchmark cores are ours to use.
    """
    if shutil.which("taskset") is None or not hasattr(os, "sched_getaffinity"):
        return False
    return {SERVER_CORE, LOADGEN_CORE} <= os.sched_getaffinity(0)


def pinned(core: int, argv: list[str], enabled: bool) -> list[str]:
    return ["taskset", "-c", str(core), *argv] if enabled else argv


def process_cpu_seconds(pid: int) -> float:
    """
    User + system CPU time of a running process, all its threads included (Linux /proc).
    """
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK


def process_tree_cpu_seconds(pid: int) -> float:
    """
    `process_cpu_seconds` of a process and of its live descendants (``serve --workers N``: the supervisor
    and its workers). A descendant that ended since is not counted.
    """
    total = 0.0
    todo = [pid]
    while todo:
        current = todo.pop()
        with contextlib.suppress(OSError, IndexError, ValueError):
            total += process_cpu_seconds(current)
            for task in Path(f"/proc/{current}/task").iterdir():
                todo += [int(child) for child in (task / "children").read_text().split()]
    return total


def wait_child(proc: subprocess.Popen[str], timeout: float) -> tuple[int, float]:
    """
    Wait for ``proc`` and return its exit code and CPU seconds (from wait4's rusage).
    """
    deadline = time.monotonic() + timeout
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            code = os.waitstatus_to_exitcode(status)
            proc.returncode = code
            return code, usage.ru_utime + usage.ru_stime
        if time.monotonic() > deadline:
            proc.kill()
            raise BenchError(f"{proc.args!r} did not finish within {timeout:.0f}s")
        time.sleep(0.02)


# ---------------------------------------------------------------------------------------------- HTTP helpers


@dataclass(frozen=True)
class Request:
    """
    One HTTP request, replayed by the load generator over and over.
    """

    method: str
    path: str
    headers: Mapping[str, str] = field(default_factory=dict)
    body: str = ""

    def raw(self, port: int) -> str:
        lines = [f"{self.method} {self.path} HTTP/1.1", f"Host: 127.0.0.1:{port}"]
        lines += [f"{name}: {value}" for name, value in self.headers.items()]
        if self.body or self.method in ("POST", "PUT"):
            lines.append(f"Content-Length: {len(self.body.encode())}")
        return "\r\n".join(lines) + "\r\n\r\n" + self.body


def call(port: int, request: Request, timeout: float = 30.0) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(request.method, request.path, body=request.body or None, headers=dict(request.headers))
        reply = conn.getresponse()
        return reply.status, reply.read()
    finally:
        conn.close()


def basic_auth(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def login_request(email: str, password: str) -> Request:
    return Request(
        "POST",
        "/oauth/token",
        {
            "Authorization": basic_auth(CLIENT_ID, CLIENT_SECRET),
            "Content-Type": "application/x-www-form-urlencoded",
        },
        urllib.parse.urlencode({"grant_type": "password", "username": email, "password": password}),
    )


def get_token(port: int, email: str, password: str) -> str:
    status, body = call(port, login_request(email, password))
    if status != 200:
        raise BenchError(f"login answered {status}: {body[:200]!r}")
    token: str = json.loads(body)["access_token"]
    return token


# ---------------------------------------------------------------------------------------------- the server


@dataclass
class Server:
    port: int
    proc: subprocess.Popen[str]
    data_dir: Path
    pinned: bool
    device_port: int = 0
    argv: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)

    def halt(self) -> None:
        """
        Stop the server process (it closes every device link); `restart` starts it again.
        """
        _stop(self.proc)

    def restart(self) -> float:
        """
        Start the server again (stopping it first if it runs) on the same ports and data; the seconds from
        the new process's start until it answers ``/healthz``.
        """
        _stop(self.proc)
        log_path = self.data_dir / "server.log"
        with log_path.open("a") as log:
            started = time.monotonic()
            self.proc = subprocess.Popen(
                self.argv, env=self.env, stdout=log, stderr=subprocess.STDOUT, text=True
            )
        _wait_ready(self, log_path)
        return time.monotonic() - started

    def log_count(self, *needles: str) -> int:
        """
        Lines of the server's log (every run of it) that contain any of ``needles``.
        """
        path = self.data_dir / "server.log"
        if not path.exists():
            return 0
        with path.open(errors="replace") as log:
            return sum(1 for line in log if any(needle in line for needle in needles))

    def cpu_seconds(self) -> float:
        return process_tree_cpu_seconds(self.proc.pid)  # with --workers N, the workers' too

    def rss_bytes(self) -> int:
        return process_rss_bytes(self.proc.pid)

    def open_sockets(self) -> int:
        return process_open_sockets(self.proc.pid)

    def log_tail(self, chars: int = 2000) -> str:
        path = self.data_dir / "server.log"
        return path.read_text(errors="replace")[-chars:] if path.exists() else ""


def process_rss_bytes(pid: int) -> int:
    """
    Resident set size of a running process (``VmRSS`` in ``/proc/PID/status``).
    """
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise BenchError(f"no VmRSS for process {pid}")


def process_open_sockets(pid: int) -> int:
    """
    How many sockets a process holds open (its ``/proc/PID/fd`` entries that point at a socket).
    """
    count = 0
    fd_dir = Path(f"/proc/{pid}/fd")
    for entry in fd_dir.iterdir():
        with contextlib.suppress(OSError):
            if os.readlink(entry).startswith("socket:"):
                count += 1
    return count


@contextlib.contextmanager
def running_server(
    *,
    email: str,
    password: str,
    pin: bool,
    extra_env: Mapping[str, str] | None = None,
    extra_args: Sequence[str] = (),
) -> Iterator[Server]:
    """
    ``devicecloud serve`` on a free port with a temporary data dir, pinned to core 0 when ``pin``.

    The device gateway listens on another free port (``Server.device_port``), so a developer's server on the
    default 5683 does not get in the way; ``extra_args`` go to ``serve`` (e.g. ``--no-demo-device``).

    The per-IP rate limits are turned off: their default (10,000 requests per 5 minutes for one address)
    would answer 429 within seconds of a benchmark, which all comes from 127.0.0.1.
    """
    port = free_port()
    device_port = free_port()
    with tempfile.TemporaryDirectory(prefix="devicecloud-bench-") as tmp:
        env = {
            **os.environ,
            "DEVICECLOUD_RATE_LIMITS_ENABLED": "false",
            "DEVICECLOUD_DEVICE_UDP_PORT": "0",  # a free port: servers never collide on 5684
            "DEVICECLOUD_LOG_LEVEL": "WARNING",
            **(extra_env or {}),
        }
        argv = [
            sys.executable, "-m", "devicecloud", "serve",
            "--data-dir", tmp, "--port", str(port), "--device-port", str(device_port),
            "--admin-email", email, "--admin-password", password, *extra_args,
        ]  # fmt: skip
        log_path = Path(tmp) / "server.log"
        with log_path.open("w") as log:
            argv = pinned(SERVER_CORE, argv, pin)
            proc = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, text=True)
            server = Server(port=port, proc=proc, data_dir=Path(tmp), pinned=pin, device_port=device_port,
                            argv=argv, env=env)  # fmt: skip
            try:
                _wait_ready(server, log_path)
                yield server
            finally:
                _stop(server.proc)


def _wait_ready(server: Server, log_path: Path, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            raise BenchError(f"server exited with {server.proc.returncode}:\n{log_path.read_text()[-2000:]}")
        with contextlib.suppress(OSError):
            if call(server.port, Request("GET", "/healthz"), timeout=2)[0] == 200:
                return
        time.sleep(0.05)
    raise BenchError(f"server not ready after {timeout:.0f}s:\n{log_path.read_text()[-2000:]}")


def _stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


# ---------------------------------------------------------------------------------------------- load


@dataclass
class LoadResult:
    label: str
    generator: str
    connections: int
    requests: int
    duration_s: float
    status_errors: int
    socket_errors: int
    p50_ms: float
    p99_ms: float
    server_cpu_s: float
    generator_cpu_s: float

    @property
    def rate(self) -> float:
        return self.requests / self.duration_s if self.duration_s else 0.0

    @property
    def errors(self) -> int:
        return self.status_errors + self.socket_errors

    @property
    def server_cpu_us_per_request(self) -> float:
        return self.server_cpu_s / self.requests * 1e6 if self.requests else float("nan")

    @property
    def server_cpu_share(self) -> float:
        return self.server_cpu_s / self.duration_s if self.duration_s else 0.0

    @property
    def generator_cpu_share(self) -> float:
        return self.generator_cpu_s / self.duration_s if self.duration_s else 0.0


def _lua_string(value: str) -> str:
    if any(not (32 <= ord(ch) < 127) for ch in value):
        raise BenchError(f"not printable ASCII, cannot pass to wrk: {value!r}")
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


_WRK_DONE = """
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests": %d, "duration_s": %f, "status_errors": %d, "socket_errors": %d, '
    .. '"p50_us": %f, "p99_us": %f, "max_us": %f}\\n',
    summary.requests, summary.duration / 1e6, e.status, e.connect + e.read + e.write + e.timeout,
    latency:percentile(50), latency:percentile(99), latency.max))
end
"""


def wrk_script(request: Request, variants: Sequence[Request] = ()) -> str:
    """
    A wrk Lua script for ``request``; with ``variants``, each request in turn (same method, headers, body).
    """
    lines = [f"wrk.method = {_lua_string(request.method)}"]
    lines += [f"wrk.headers[{_lua_string(k)}] = {_lua_string(v)}" for k, v in request.headers.items()]
    if request.body:
        lines.append(f"wrk.body = {_lua_string(request.body)}")
    if variants:
        paths = ", ".join(_lua_string(v.path) for v in variants)
        lines += [
            f"local paths = {{{paths}}}",
            "local n = 0",
            "request = function()",
            "  n = n + 1",
            "  return wrk.format(nil, paths[(n % #paths) + 1])",
            "end",
        ]
    return "\n".join(lines) + "\n" + _WRK_DONE


def run_load(
    label: str,
    server: Server,
    request: Request,
    *,
    generator: str,
    connections: int,
    duration: float,
    pin: bool,
    variants: Sequence[Request] = (),
    rate: float | None = None,
) -> LoadResult:
    """
    Drive ``request`` at the server for ``duration`` seconds from a separate process on core 1.

    ``variants``: send these in turn instead (wrk: same method, headers and body, only the path varies).
    ``rate``: open loop at this many requests/s (the Python generator only; latency counted from when each
    request was due).
    """
    if rate is not None and generator != "python":
        raise BenchError("a fixed request rate needs the Python generator")
    with tempfile.TemporaryDirectory(prefix="devicecloud-load-") as tmp:
        if generator == "wrk":
            script = Path(tmp) / "bench.lua"
            script.write_text(wrk_script(request, variants))
            argv = [
                "wrk", "-t1", f"-c{connections}", f"-d{max(1, round(duration))}s", "--timeout", "10s",
                "-s", str(script), f"http://127.0.0.1:{server.port}{request.path}",
            ]  # fmt: skip
        else:
            spec = {
                "port": server.port, "requests": [r.raw(server.port) for r in (variants or [request])],
                "connections": connections, "duration": duration, "rate": rate,
            }  # fmt: skip
            argument = json.dumps(spec)
            if len(argument) > 64 * 1024:  # one argument may not exceed 128 KiB (Linux): pass a file instead
                spec_path = Path(tmp) / "spec.json"
                spec_path.write_text(argument)
                argument = "@" + str(spec_path)
            argv = [sys.executable, str(BENCH_DIR / "_loadgen.py"), argument]
        out_path = Path(tmp) / "out.txt"
        with out_path.open("w") as out:
            server_cpu_before = server.cpu_seconds()
            proc = subprocess.Popen(
                pinned(LOADGEN_CORE, argv, pin), stdout=out, stderr=subprocess.STDOUT, text=True
            )
            code, generator_cpu = wait_child(proc, timeout=duration + 60)
            server_cpu = server.cpu_seconds() - server_cpu_before
        output = out_path.read_text()
    if code != 0:
        raise BenchError(f"{generator} exited with {code}:\n{output[-2000:]}")
    line = next((ln for ln in output.splitlines() if ln.startswith("BENCH_JSON ")), None)
    if line is None:
        raise BenchError(f"{generator} printed no result:\n{output[-2000:]}")
    figures: dict[str, Any] = json.loads(line.removeprefix("BENCH_JSON "))
    return LoadResult(
        label=label,
        generator=generator,
        connections=connections,
        requests=int(figures["requests"]),
        duration_s=float(figures["duration_s"]),
        status_errors=int(figures["status_errors"]),
        socket_errors=int(figures["socket_errors"]),
        p50_ms=float(figures["p50_us"]) / 1000,
        p99_ms=float(figures["p99_us"]) / 1000,
        server_cpu_s=server_cpu,
        generator_cpu_s=generator_cpu,
    )


def format_table(rows: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = []
    for n, row in enumerate(rows):
        lines.append(
            "  ".join(
                cell.ljust(w) if i == 0 else cell.rjust(w)
                for i, (cell, w) in enumerate(zip(row, widths, strict=True))
            )
        )
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


@dataclass
class Outcome:
    """
    Figures of one section, what failed and which targets were missed.
    """

    figures: dict[str, Any] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    missed: list[str] = field(default_factory=list)
    table: Table | None = None  # what bench/results/ records and bench/README.md shows of this section


def report(
    benchmark: str,
    outcomes: dict[str, Outcome],
    *,
    json_path: Path | None,
    smoke: bool,
    pin: bool,
    started: float,
) -> int:
    """
    Record the sections' tables (`_results.record`: only those that did not fail), print missed targets and
    failures, write the JSON figures, and give the exit status: 1 on a failure, 3 when a full run missed a
    target, else 0.
    """
    failures = [f for o in outcomes.values() for f in o.failures]
    missed = [m for o in outcomes.values() for m in o.missed]
    tables = {name: o.table for name, o in outcomes.items() if o.table is not None and not o.failures}
    record(benchmark, tables, smoke=smoke)
    if json_path is not None:
        meta = {"date": datetime.now(UTC).isoformat(), "smoke": smoke, "pinned": pin}
        figures = {k: o.figures for k, o in outcomes.items()}
        json_path.write_text(json.dumps({**meta, **figures}, indent=2, default=str))
    print(f"\nfinished in {time.monotonic() - started:.1f}s")
    for m in missed:
        print(("note (not enforced in --smoke): " if smoke else "MISSED: ") + m)
    for failure in failures:
        print("FAIL:", failure, file=sys.stderr)
    if failures:
        return 1
    return 3 if missed and not smoke else 0


def run_main(main: Callable[[], int]) -> None:
    """
    Exit with ``main()``'s status; a `BenchError` is a failure (1) with its message.
    """
    try:
        sys.exit(main())
    except BenchError as exc:
        print("FAIL:", exc, file=sys.stderr)
        sys.exit(1)


def emit(word: str, payload: dict[str, Any]) -> None:
    """
    One ``WORD {json}`` line on stdout: how helper processes answer `ScriptProcess`.
    """
    print(f"{word} {json.dumps(payload)}", flush=True)


class ScriptProcess:
    """
    One helper process (``script`` with a JSON spec), driven over stdin/stdout (``WORD {json}`` lines).
    """

    def __init__(self, script: str, spec: dict[str, Any], core: int, pin: bool) -> None:
        argv = pinned(core, [sys.executable, str(BENCH_DIR / script), json.dumps(spec)], pin)
        self.proc = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, bufsize=1
        )
        self._lines: queue.Queue[str] = queue.Queue()
        self._errors: list[str] = []
        assert self.proc.stdout is not None
        assert self.proc.stderr is not None
        threading.Thread(target=self._pump, args=(self.proc.stdout,), daemon=True).start()
        threading.Thread(target=self._keep_tail, args=(self.proc.stderr,), daemon=True).start()

    def _pump(self, stream: IO[str]) -> None:
        for line in stream:
            self._lines.put(line)

    def _keep_tail(self, stream: IO[str]) -> None:
        for line in stream:
            self._errors = [*self._errors[-20:], line]

    def send(self, command: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()

    def expect(self, word: str, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self._lines.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                if time.monotonic() >= deadline or self.proc.poll() is not None:
                    raise BenchError(
                        f"{self.proc.args[-2]} gave no {word}:\n{''.join(self._errors)}"
                    ) from None
                continue
            if line.startswith(word + " "):
                payload: dict[str, Any] = json.loads(line.removeprefix(word + " "))
                return payload

    def ask(self, command: str, word: str, timeout: float = 60) -> dict[str, Any]:
        self.send(command)
        return self.expect(word, timeout)

    def cpu_seconds(self) -> float:
        return process_cpu_seconds(self.proc.pid)

    def finish(self, timeout: float = 120) -> float:
        """
        Ask the process to quit and wait; its CPU seconds.
        """
        if self.proc.poll() is None:
            with contextlib.suppress(BrokenPipeError, OSError):
                self.send("quit")
        try:
            return wait_child(self.proc, timeout)[1]
        except BenchError:
            self.proc.kill()
            raise
        except ChildProcessError:  # already reaped
            return 0.0


def percentile(histogram: Counter[int], fraction: float) -> float:
    """
    From a histogram of bucket start (µs) → count: the bucket's upper edge at ``fraction``, in ms.
    """
    total = sum(histogram.values())
    if not total:
        return 0.0
    rank = max(1, math.ceil(fraction * total))
    seen = 0
    keys = sorted(histogram)
    for key in keys:
        seen += histogram[key]
        if seen >= rank:
            return (key + 50) / 1000
    return (keys[-1] + 50) / 1000
