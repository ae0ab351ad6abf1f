"""
The webhook targets of ``webhook_bench.py``: one process (pinned to core 1) with one or more HTTP/1.1
listeners on raw asyncio protocols (uvloop), driven by lines on stdin; every answer is one ``<WORD> {json}``
line on stdout.

The JSON spec in ``argv[1]`` lists the listeners: ``{"listeners": [{"host": "127.0.0.1", "mode": "ok"},
{"host": "127.0.0.2", "mode": "hang"}]}`` (port 0 or absent: a free one). ``READY`` gives the ports.

``ok``
    Reads each request (Content-Length framing, keep-alive, pipelining tolerated) and answers ``200`` with an
    empty body (``response_bytes`` in the spec: that many bytes instead), so no ``hook-response`` event
    follows. The body is a JSON object or a form; its ``value`` field (the hook's template renders the
    event's data there) is ``<source>:<seq>:<monotonic ns at publish>``, and its ``event`` field (a default
    field) the event's name. Per request path (one per hook) and source it counts receipts of every
    sequence number, so ``check`` can tell missing and duplicate deliveries; the latency from the publish to
    the receipt (``time.monotonic_ns``, one clock for the machine, taken once per socket read) goes into a
    histogram of 50 µs buckets; receipts are also counted per 100 ms of receive time.
``hang``
    Accepts the connection, reads and counts the requests, never answers (the client gives up after its
    timeout and closes).

Commands: ``reset NAME`` forgets everything and counts from now on only events named ``NAME`` (others are
"stale": left over from an earlier run); ``report`` → ``REPORT``; ``check {"sources": {"0": n, ...}}`` →
``CHECK`` with, per path, the sequences missing (below ``n``), duplicated and unexpected (at or above ``n``);
``quit`` ends.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections import Counter
from collections.abc import Callable
from typing import Any, cast
from urllib.parse import parse_qs

from _common import emit
from devicecloud.cli.common import new_event_loop

BUCKET_US = 50
RATE_BUCKET_NS = 100_000_000  # receipts counted per 100 ms


class Tally:
    """
    What the ``ok`` listeners received since the last ``reset``.
    """

    def __init__(self) -> None:
        self.name = b""
        self.reset(b"")

    def reset(self, name: bytes) -> None:
        self.name = name
        self.seen: dict[bytes, dict[int, bytearray]] = {}  # path → source → receipts per sequence number
        self.histogram: Counter[int] = Counter()
        self.per_bucket: Counter[int] = Counter()
        self.requests = 0
        self.delivered = 0
        self.stale = 0
        self.bad: Counter[str] = Counter()
        self.first_ns = 0
        self.last_ns = 0
        self.hang_requests = 0

    def add(self, path: bytes, body: bytes, now: int) -> None:
        self.requests += 1
        try:
            if body[:1] == b"{":
                fields = json.loads(body)
                name, value = str(fields["event"]).encode(), str(fields["value"]).encode()
            else:
                form = parse_qs(body.decode("ascii"))
                name, value = form["event"][0].encode(), form["value"][0].encode()
            source, seq, sent = value.split(b":")
            source_id, seq_no, sent_ns = int(source), int(seq), int(sent)
            if not 0 <= seq_no < 100_000_000:
                raise ValueError("sequence number out of range")
        except (ValueError, KeyError, TypeError, UnicodeDecodeError) as exc:
            self.bad[f"{type(exc).__name__}: {body[:80]!r}"] += 1
            return
        if self.name and name != self.name:
            self.stale += 1
            return
        receipts = self.seen.setdefault(path, {}).setdefault(source_id, bytearray())
        if seq_no >= len(receipts):
            receipts.extend(bytes(seq_no + 1 - len(receipts) + 1024))
        if receipts[seq_no] < 255:
            receipts[seq_no] += 1
        self.delivered += 1
        self.histogram[(now - sent_ns) // (BUCKET_US * 1000)] += 1
        self.per_bucket[now // RATE_BUCKET_NS] += 1
        if not self.first_ns:
            self.first_ns = now
        self.last_ns = now

    def report(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "delivered": self.delivered,
            "stale": self.stale,
            "bad": dict(self.bad.most_common(5)),
            "hang_requests": self.hang_requests,
            "first_ns": self.first_ns,
            "last_ns": self.last_ns,
            "per_path": {
                p.decode(): sum(len(r) - r.count(0) for r in srcs.values()) for p, srcs in self.seen.items()
            },
            "histogram_us": {str(k * BUCKET_US): v for k, v in sorted(self.histogram.items())},
            "per_100ms": {str(k): v for k, v in sorted(self.per_bucket.items())},
        }

    def check(self, expected: dict[int, int]) -> dict[str, Any]:
        """
        Per path: how many of ``expected`` (source → count, sequences 0..count-1) never came, came more than
        once, and how many receipts were of sequences beyond.
        """
        paths = {}
        for path, sources in self.seen.items():
            missing = duplicates = unexpected = 0
            for source, count in expected.items():
                receipts = sources.get(source, bytearray())
                window = receipts[:count]
                missing += count - (len(window) - window.count(0))
                duplicates += sum(n - 1 for n in window if n > 1)
                unexpected += sum(receipts[count:])
            unexpected += sum(sum(r) for s, r in sources.items() if s not in expected)
            paths[path.decode()] = {"missing": missing, "duplicates": duplicates, "unexpected": unexpected}
        return {"paths": paths}


class OkTarget(asyncio.Protocol):
    def __init__(self, tally: Tally, reply: bytes) -> None:
        self.tally = tally
        self.reply = reply
        self.transport: asyncio.Transport | None = None
        self.buf = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        now = time.monotonic_ns()
        buf = self.buf + data if self.buf else data
        answers = 0
        while True:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                break
            head = buf[:end]
            length = 0
            lower = head.lower()
            at = lower.find(b"\r\ncontent-length:")
            if at >= 0:
                eol = lower.find(b"\r\n", at + 2)
                length = int(lower[at + 17 : eol if eol >= 0 else len(lower)])
            elif b"\r\ntransfer-encoding:" in lower:
                self.tally.bad["chunked request body (not handled)"] += 1
            if len(buf) < end + 4 + length:
                break
            body = buf[end + 4 : end + 4 + length]
            buf = buf[end + 4 + length :]
            path = head[: head.find(b"\r\n")].split(b" ", 2)[1].split(b"?", 1)[0]
            self.tally.add(path, body, now)
            answers += 1
        self.buf = buf
        if answers and self.transport is not None:
            self.transport.write(self.reply * answers)


class HangTarget(asyncio.Protocol):
    """
    Takes the connection and the requests, answers nothing.
    """

    open = 0

    def __init__(self, tally: Tally) -> None:
        self.tally = tally

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        HangTarget.open += 1

    def connection_lost(self, exc: Exception | None) -> None:
        HangTarget.open -= 1

    def data_received(self, data: bytes) -> None:
        self.tally.hang_requests += data.count(b"HTTP/1.1\r\n")


async def read_commands() -> asyncio.Queue[list[str]]:
    loop = asyncio.get_running_loop()
    commands: asyncio.Queue[list[str]] = asyncio.Queue()

    async def pump() -> None:
        while True:
            line = await loop.run_in_executor(None, sys.stdin.readline)
            words = line.split(" ", 1) if line.strip() else ["quit"]
            await commands.put([w.strip() for w in words])
            if words[0].strip() == "quit":
                return

    loop.create_task(pump())  # noqa: RUF006 - lives as long as the process
    return commands


async def run(spec: dict[str, Any]) -> None:
    loop = asyncio.get_running_loop()
    tally = Tally()
    size = int(spec.get("response_bytes", 0))
    reply = f"HTTP/1.1 200 OK\r\nContent-Length: {size}\r\nContent-Type: text/plain\r\n\r\n".encode()
    reply += b"x" * size
    servers = []
    ports = []
    for listener in spec["listeners"]:
        host, port = str(listener.get("host", "127.0.0.1")), int(listener.get("port", 0))
        factory: Callable[[], asyncio.Protocol]
        if listener.get("mode", "ok") == "hang":
            factory = lambda: HangTarget(tally)  # noqa: E731
        else:
            factory = lambda: OkTarget(tally, reply)  # noqa: E731
        server = await loop.create_server(factory, host, port, backlog=4096, reuse_address=True)
        servers.append(server)
        ports.append(server.sockets[0].getsockname()[1])
    commands = await read_commands()
    cpu_start = time.process_time()
    emit("READY", {"ports": ports})
    while True:
        words = await commands.get()
        if words[0] == "reset":
            tally.reset(words[1].encode() if len(words) > 1 else b"")
            emit("OK", {})
        elif words[0] == "report":
            emit(
                "REPORT",
                {**tally.report(), "hang_open": HangTarget.open, "cpu_s": time.process_time() - cpu_start},
            )
        elif words[0] == "check":
            expected = {int(k): int(v) for k, v in json.loads(words[1])["sources"].items()}
            emit("CHECK", tally.check(expected))
        else:
            break
    for server in servers:
        server.close()


def main() -> int:
    spec: dict[str, Any] = json.loads(sys.argv[1])
    with asyncio.Runner(loop_factory=new_event_loop) as runner:
        runner.run(run(spec))
    return 0


if __name__ == "__main__":
    sys.exit(main())
