"""
A small closed-loop HTTP/1.1 keep-alive load generator, the fallback when ``wrk`` is not installed.

It runs as its own process (``auth_bench.py`` starts it with ``taskset -c 1``): ``connections`` sockets each
send one request, read the whole reply (Content-Length framing, which is all the server under test uses),
record the latency and send the next, until ``duration`` seconds have passed. It prints one JSON line with
the count, status errors, socket errors and latency percentiles. Python itself can be the bottleneck on a
small machine, so the caller reports this process's CPU time next to its figures.

Options in the spec beyond one ``request``: ``requests`` (a list of raw requests, sent in turn across all
connections, e.g. the same call to different devices) and ``rate`` (requests/s): **open loop** — a request
is due every ``1/rate`` seconds whatever the replies do, a free connection sends it, and its latency is
counted from when it was *due*, so a server that falls behind shows in the percentiles (no coordinated
omission). Without ``rate`` each connection sends as fast as replies come back (closed loop).

Usage: ``python bench/_loadgen.py '{"port": 8080, "request": "GET / HTTP/1.1\\r\\n...", ...}'`` (or
``@spec.json``: the spec from a file, for long lists of requests).
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class Tally:
    latencies_ns: list[int] = field(default_factory=list)
    status_errors: int = 0
    socket_errors: int = 0
    statuses: dict[int, int] = field(default_factory=dict)


class Requests:
    """
    The raw requests to send, handed out in turn.
    """

    def __init__(self, requests: list[bytes]) -> None:
        self._requests = requests
        self._next = 0

    def take(self) -> bytes:
        request = self._requests[self._next % len(self._requests)]
        self._next += 1
        return request


async def _connection(
    host: str,
    port: int,
    requests: Requests,
    deadline: float,
    tally: Tally,
    due: asyncio.Queue[int] | None = None,
) -> None:
    reader: asyncio.StreamReader | None = None
    writer: asyncio.StreamWriter | None = None
    try:
        while time.perf_counter() < deadline:
            if due is not None:
                start = await due.get()
                if start < 0:  # the schedule is over
                    return
            if writer is None or reader is None:
                reader, writer = await asyncio.open_connection(host, port)
            if due is None:
                start = time.perf_counter_ns()
            writer.write(requests.take())
            head = await reader.readuntil(b"\r\n\r\n")
            status_line, _, header_block = head.partition(b"\r\n")
            status = int(status_line.split(b" ", 2)[1])
            length = 0
            close = False
            for line in header_block.split(b"\r\n"):
                name, _, value = line.partition(b":")
                lowered = name.strip().lower()
                if lowered == b"content-length":
                    length = int(value.strip())
                elif lowered == b"connection" and value.strip().lower() == b"close":
                    close = True
            if length:
                await reader.readexactly(length)
            tally.latencies_ns.append(time.perf_counter_ns() - start)
            tally.statuses[status] = tally.statuses.get(status, 0) + 1
            if not 200 <= status < 400:
                tally.status_errors += 1
            if close:
                writer.close()
                reader = writer = None
    except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError, IndexError):
        tally.socket_errors += 1
    finally:
        if writer is not None:
            writer.close()


def _percentile(sorted_values: list[int], fraction: float) -> float:
    if not sorted_values:
        return 0.0
    index = min(len(sorted_values) - 1, max(0, round(fraction * len(sorted_values)) - 1))
    return float(sorted_values[index])


async def _schedule(due: asyncio.Queue[int], rate: float, deadline: float, connections: int) -> int:
    """
    Put the due time (perf_counter_ns) of every request into ``due``, ``rate`` per second, until the deadline.
    """
    interval_ns = 1e9 / rate
    first = time.perf_counter_ns()
    sent = 0
    while time.perf_counter() < deadline:
        now = time.perf_counter_ns()
        while first + sent * interval_ns <= now:
            due.put_nowait(int(first + sent * interval_ns))
            sent += 1
        await asyncio.sleep(max(0.0, (first + sent * interval_ns - time.perf_counter_ns()) / 1e9))
    for _ in range(connections):
        due.put_nowait(-1)
    return sent


async def run(spec: dict[str, Any]) -> dict[str, Any]:
    """
    Drive the load described by ``spec`` and return the figures (latencies in microseconds).
    """
    host = str(spec.get("host", "127.0.0.1"))
    port = int(spec["port"])
    raw = spec["requests"] if "requests" in spec else [spec["request"]]
    requests = Requests([str(r).encode("latin-1") for r in raw])
    connections = int(spec.get("connections", 32))
    duration = float(spec["duration"])
    rate = float(spec["rate"]) if spec.get("rate") else None
    tally = Tally()
    start = time.perf_counter()
    deadline = start + duration
    due: asyncio.Queue[int] | None = asyncio.Queue() if rate else None
    workers = [_connection(host, port, requests, deadline + 5.0 if rate else deadline, tally, due)
               for _ in range(connections)]  # fmt: skip
    if due is not None and rate is not None:
        await asyncio.gather(_schedule(due, rate, deadline, connections), *workers)
    else:
        await asyncio.gather(*workers)
    elapsed = time.perf_counter() - start
    ordered = sorted(tally.latencies_ns)
    return {
        "requests": len(ordered),
        "duration_s": elapsed,
        "status_errors": tally.status_errors,
        "socket_errors": tally.socket_errors,
        "statuses": {str(k): v for k, v in sorted(tally.statuses.items())},
        "p50_us": _percentile(ordered, 0.50) / 1000,
        "p99_us": _percentile(ordered, 0.99) / 1000,
        "max_us": (ordered[-1] / 1000) if ordered else 0.0,
    }


def main() -> int:
    argument = sys.argv[1]
    spec = json.loads(Path(argument[1:]).read_text() if argument.startswith("@") else argument)
    loop_factory: Callable[[], asyncio.AbstractEventLoop]
    try:
        import uvloop

        loop_factory = uvloop.new_event_loop
    except ImportError:  # pragma: no cover - uvloop comes with uvicorn[standard]
        loop_factory = asyncio.new_event_loop
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        result = runner.run(run(spec))
    print("BENCH_JSON " + json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
