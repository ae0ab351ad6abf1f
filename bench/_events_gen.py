"""
The load side of ``events_bench.py``: a separate process (pinned to core 1) in one of three modes, chosen by
the JSON spec in ``argv[1]`` and driven by lines on stdin; every answer is one ``<WORD> {json}`` line on
stdout.

``{"mode": "readers", ...}``
    ``streams`` server-sent event streams (raw asyncio sockets, HTTP/1.1, chunked transfer decoding) on
    ``path`` with a bearer token. ``READY`` once every stream has its ``:ok``. Each event's data is
    ``"<source>:<seq>:<monotonic ns at send>"``: the reader takes the receive time once per socket read
    (``time.monotonic_ns``, the same system-wide clock as the sender's), and per stream counts events,
    sequence gaps and events out of order per source (publish order per publisher must hold). ``report``
    answers ``REPORT`` with the counts and a latency histogram (50 µs buckets), ``quit`` ends.

``{"mode": "publisher", ...}``
    ``POST /v1/devices/events`` open-loop at ``rate`` per second for ``duration`` seconds over ``connections``
    keep-alive sockets (a request that finds every socket busy waits for the next free one; the send time in
    its data is when it was actually sent, and the lag behind its due time is reported). Each socket is one
    source with its own sequence, so the readers can check order per publisher. Starts at once; prints
    ``RESULT`` and exits.

``{"mode": "devices", ...}``
    Virtual devices (``_devicegen.Fleet``): ``connect N`` → ``STATE``; ``publish RATE SECONDS`` → each device
    publishes (NON) ``RATE`` events per second, round-robin over the devices so each keeps its own steady
    period, then ``RESULT`` (events sent per device, lag); ``quit`` stops the devices.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections import Counter
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, cast

from _common import emit
from devicecloud.cli.common import new_event_loop

if TYPE_CHECKING:
    from _devicegen import Fleet
    from devicecloud.virtualdevice import VirtualDevice

BUCKET_US = 50


async def read_commands() -> asyncio.Queue[list[str]]:
    """
    Lines on stdin, split into words, on a queue (``["quit"]`` at end of input).
    """
    loop = asyncio.get_running_loop()
    commands: asyncio.Queue[list[str]] = asyncio.Queue()

    async def pump() -> None:
        while True:
            line = await loop.run_in_executor(None, sys.stdin.readline)
            words = line.split() or ["quit"]
            await commands.put(words)
            if words[0] == "quit":
                return

    loop.create_task(pump())  # noqa: RUF006 - lives as long as the process
    return commands


# ---------------------------------------------------------------------------------------------- readers


class Histogram:
    def __init__(self) -> None:
        self.counts: Counter[int] = Counter()

    def add(self, latency_ns: int) -> None:
        self.counts[latency_ns // (BUCKET_US * 1000)] += 1


class SseStream(asyncio.Protocol):
    """
    One event stream: the HTTP response head, chunked decoding, the SSE blocks, the checks.
    """

    def __init__(self, request: bytes, histogram: Histogram) -> None:
        self.request = request
        self.histogram = histogram
        self.transport: asyncio.Transport | None = None
        loop = asyncio.get_running_loop()
        self.opened: asyncio.Future[None] = loop.create_future()
        self.closed: asyncio.Future[None] = loop.create_future()
        self._head = b""
        self._in_body = False
        self._chunked = False
        self._raw = bytearray()  # undecoded chunked body
        self._need = -1  # bytes of the current chunk still to take (-1: a size line comes next)
        self._sse = b""
        self.status = 0
        self.events = 0
        self.gaps = 0
        self.out_of_order = 0
        self.keepalives = 0
        self.other_events = 0
        self.expected: dict[bytes, int] = {}
        self.close_reason: str | None = None
        self.baseline = False  # after a reset: a source's first event sets where its sequence stands

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.transport.write(self.request)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.close_reason is None:
            self.close_reason = f"connection lost: {exc}" if exc else "closed by the server"
        if not self.opened.done():
            self.opened.set_exception(ConnectionError(self.close_reason))
        if not self.closed.done():
            self.closed.set_result(None)

    def data_received(self, data: bytes) -> None:
        now = time.monotonic_ns()
        if not self._in_body:
            self._head += data
            end = self._head.find(b"\r\n\r\n")
            if end < 0:
                return
            head, data = self._head[:end].decode("latin-1"), self._head[end + 4 :]
            self._in_body = True
            self.status = int(head.split(" ", 2)[1])
            self._chunked = "transfer-encoding: chunked" in head.lower()
            if self.status != 200:
                self.close_reason = f"status {self.status}: {data[:200]!r}"
                if not self.opened.done():
                    self.opened.set_exception(ConnectionError(self.close_reason))
                assert self.transport is not None
                self.transport.close()
                return
        self._feed(self._dechunk(data) if self._chunked else data, now)

    def _dechunk(self, data: bytes) -> bytes:
        raw = self._raw
        raw += data
        out = bytearray()
        pos = 0
        while True:
            if self._need < 0:
                eol = raw.find(b"\r\n", pos)
                if eol < 0:
                    break
                self._need = int(raw[pos:eol].split(b";", 1)[0], 16)
                pos = eol + 2
                if self._need == 0:  # the final chunk: the server ended the stream
                    self.close_reason = "stream ended by the server"
                    break
            if len(raw) - pos < self._need + 2:
                break
            out += raw[pos : pos + self._need]
            pos += self._need + 2
            self._need = -1
        del raw[:pos]
        return bytes(out)

    def _feed(self, body: bytes, now: int) -> None:
        buf = self._sse + body if self._sse else body
        blocks = buf.split(b"\n\n")
        self._sse = blocks.pop()
        for block in blocks:
            if block.startswith(b":"):
                if block.startswith(b":ok"):
                    if not self.opened.done():
                        self.opened.set_result(None)
                else:
                    self.keepalives += 1
                continue
            start = block.find(b'"data":"')
            if start < 0:
                self.other_events += 1
                continue
            start += 8
            value = block[start : block.find(b'"', start)]
            parts = value.split(b":")
            if len(parts) != 3:
                self.other_events += 1
                continue
            source, seq, sent = parts[0], int(parts[1]), int(parts[2])
            self.events += 1
            self.histogram.add(now - sent)
            expected = self.expected.get(source, seq if self.baseline else 0)
            if seq == expected:
                self.expected[source] = seq + 1
            elif seq > expected:
                self.gaps += seq - expected
                self.expected[source] = seq + 1
            else:
                self.out_of_order += 1


async def run_readers(spec: dict[str, Any]) -> None:
    host, port = str(spec.get("host", "127.0.0.1")), int(spec["port"])
    count, path, token = int(spec["streams"]), str(spec["path"]), str(spec["token"])
    request = (
        f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nAuthorization: Bearer {token}\r\n"
        "Accept: text/event-stream\r\n\r\n"
    ).encode()
    loop = asyncio.get_running_loop()
    histogram = Histogram()
    streams: list[SseStream] = []
    gate = asyncio.Semaphore(int(spec.get("concurrency", 32)))
    failures: Counter[str] = Counter()

    async def open_one() -> None:
        async with gate:
            stream = SseStream(request, histogram)
            streams.append(stream)
            try:
                async with asyncio.timeout(30):
                    await loop.create_connection(lambda: stream, host, port)
                    await stream.opened
            except (OSError, TimeoutError) as exc:
                failures[f"{type(exc).__name__}: {exc}"[:160]] += 1

    commands = await read_commands()
    cpu_start = time.process_time()
    await asyncio.gather(*(open_one() for _ in range(count)))
    emit("READY", {"open": count - sum(failures.values()), "failures": dict(failures.most_common(5))})
    while True:
        words = await commands.get()
        if words[0] == "report":
            cut = time.process_time()
            emit(
                "REPORT",
                {
                    "streams": len(streams),
                    "events": [s.events for s in streams],
                    "gaps": sum(s.gaps for s in streams),
                    "out_of_order": sum(s.out_of_order for s in streams),
                    "keepalives": sum(s.keepalives for s in streams),
                    "other_events": sum(s.other_events for s in streams),
                    "closed": dict(
                        Counter(s.close_reason for s in streams if s.closed.done()).most_common(5)
                    ),
                    "histogram_us": {str(k * BUCKET_US): v for k, v in sorted(histogram.counts.items())},
                    "cpu_s": cut - cpu_start,
                },
            )
        elif words[0] == "reset":
            histogram.counts.clear()
            for s in streams:
                s.events = s.gaps = s.out_of_order = s.keepalives = s.other_events = 0
                s.expected.clear()
                s.baseline = True
            emit("OK", {})
        else:
            break
    for stream in streams:
        if stream.transport is not None:
            stream.transport.close()


# ---------------------------------------------------------------------------------------------- publisher


class _HttpClient(asyncio.Protocol):
    """
    One keep-alive connection: send a request, wait for its whole reply (Content-Length framing).
    """

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self._buf = b""
        self._reply: asyncio.Future[int] | None = None
        self.lost = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if self._reply is not None and not self._reply.done():
            self._reply.set_exception(ConnectionError(f"connection lost: {exc}"))

    def data_received(self, data: bytes) -> None:
        self._buf += data
        end = self._buf.find(b"\r\n\r\n")
        if end < 0:
            return
        head = self._buf[:end].decode("latin-1")
        length = 0
        for line in head.split("\r\n")[1:]:
            name, _, value = line.partition(":")
            if name.strip().lower() == "content-length":
                length = int(value)
        if len(self._buf) < end + 4 + length:
            return
        self._buf = self._buf[end + 4 + length :]
        if self._reply is not None and not self._reply.done():
            self._reply.set_result(int(head.split(" ", 2)[1]))

    async def send(self, request: bytes) -> int:
        assert self.transport is not None
        self._reply = asyncio.get_running_loop().create_future()
        self.transport.write(request)
        return await self._reply


async def run_publisher(spec: dict[str, Any]) -> dict[str, Any]:
    host, port = str(spec.get("host", "127.0.0.1")), int(spec["port"])
    rate, duration, name = float(spec["rate"]), float(spec["duration"]), str(spec["name"])
    head = (
        f"POST /v1/devices/events HTTP/1.1\r\nHost: {host}:{port}\r\n"
        f"Authorization: Bearer {spec['token']}\r\nContent-Type: application/json\r\n"
    )
    loop = asyncio.get_running_loop()
    clients = []
    for _ in range(int(spec.get("connections", 4))):
        client = _HttpClient()
        await loop.create_connection(lambda c=client: c, host, port)  # type: ignore[misc]
        clients.append(client)
    due: asyncio.Queue[int | None] = asyncio.Queue()
    sent = [0] * len(clients)
    statuses: Counter[int] = Counter()
    lags: list[int] = []
    errors: Counter[str] = Counter()
    last_send = [0]

    async def worker(index: int, client: _HttpClient) -> None:
        while (at := await due.get()) is not None:
            now = time.monotonic_ns()
            lags.append(now - at)
            last_send[0] = now
            data = f"{index}:{sent[index]}:{now}"
            body = json.dumps({"name": name, "data": data, "private": True, "ttl": 60}).encode()
            try:
                status = await client.send(f"{head}Content-Length: {len(body)}\r\n\r\n".encode() + body)
            except ConnectionError as exc:
                errors[str(exc)[:120]] += 1
                return
            statuses[status] += 1
            if status == 200:
                sent[index] += 1

    cpu_start = time.process_time()
    workers = [loop.create_task(worker(i, c)) for i, c in enumerate(clients)]
    start = time.monotonic_ns()
    total = round(rate * duration)
    for n in range(total):
        at = start + round(n * 1e9 / rate)
        delay = (at - time.monotonic_ns()) / 1e9
        if delay > 0:
            await asyncio.sleep(delay)
        due.put_nowait(at)
    for _ in clients:
        due.put_nowait(None)
    await asyncio.gather(*workers)
    elapsed = (time.monotonic_ns() - start) / 1e9
    for client in clients:
        if client.transport is not None:
            client.transport.close()
    ordered = sorted(lags)
    return {
        "sent": {str(i): n for i, n in enumerate(sent)},
        "published": sum(sent),
        "duration_s": elapsed,
        # from the first send to one period after the last: the time over which the events went out
        "send_window_s": (last_send[0] - start) / 1e9 + 1 / rate,
        "statuses": {str(k): v for k, v in statuses.items()},
        "errors": dict(errors),
        "lag_p99_ms": ordered[int(0.99 * (len(ordered) - 1))] / 1e6 if ordered else 0.0,
        "cpu_s": time.process_time() - cpu_start,
    }


# ---------------------------------------------------------------------------------------------- devices


async def publish_round_robin(
    devices: Sequence[VirtualDevice], name: str, rate: float, duration: float, offset: int = 0
) -> dict[str, Any]:
    """
    ``rate`` NON events per second in all for ``duration`` s, round-robin so each device keeps a steady
    period; each event's data ``<offset + device index>:<seq>:<monotonic ns at send>``. The result: events
    sent per device, how far behind the schedule the loop fell, its CPU.
    """
    from devicecloud.virtualdevice import NotConnectedError

    sent = [0] * len(devices)
    errors: Counter[str] = Counter()
    lag_max = 0.0
    last_send = start = time.monotonic()
    cpu_start = time.process_time()
    total = round(rate * duration)
    n = 0
    while n < total:
        now = time.monotonic()
        due = min(total, int((now - start) * rate) + 1)
        lag_max = max(lag_max, (due - n - 1) / rate)
        stamp = time.monotonic_ns()
        last_send = time.monotonic()
        while n < due:
            index = n % len(devices)
            try:
                await devices[index].publish(
                    name, f"{offset + index}:{sent[index]}:{stamp}", private=True, ttl=60
                )
                sent[index] += 1
            except (NotConnectedError, ValueError) as exc:
                errors[f"{type(exc).__name__}: {exc}"[:120]] += 1
            n += 1
        await asyncio.sleep(max(0.0, start + n / rate - time.monotonic()))
    return {
        "published": sum(sent),
        "sent": {str(offset + i): s for i, s in enumerate(sent)},
        "duration_s": time.monotonic() - start,
        "send_window_s": last_send - start + 1 / rate,
        "errors": dict(errors.most_common(5)),
        "lag_max_s": lag_max,
        "cpu_s": time.process_time() - cpu_start,
        "connected": sum(1 for d in devices if d.connected),
    }


async def connect_fleet(fleet: Fleet, count: int) -> None:
    """
    Bring the fleet to ``count`` devices, then answer ``STATE`` with their ids.
    """
    await fleet.connect(count)
    state = fleet.state()
    state["ids"] = [d.device_id for d in fleet.devices]
    emit("STATE", state)


async def run_devices(spec: dict[str, Any]) -> None:
    from _devicegen import Fleet

    fleet = Fleet(spec)
    name = str(spec["name"])
    offset = int(spec.get("source_offset", 0))  # sources are unique across processes
    commands = await read_commands()
    try:
        while True:
            words = await commands.get()
            if words[0] == "connect":
                await connect_fleet(fleet, int(words[1]))
            elif words[0] == "publish":
                per_device, duration = float(words[1]), float(words[2])
                rate = per_device * len(fleet.devices)
                emit("RESULT", await publish_round_robin(fleet.devices, name, rate, duration, offset))
            elif words[0] == "report":
                emit("STATE", fleet.state())
            else:
                break
    finally:
        await fleet.stop()


# ---------------------------------------------------------------------------------------------- main


def main() -> int:
    spec: dict[str, Any] = json.loads(sys.argv[1])
    mode = spec["mode"]
    if mode == "devices":
        import logging

        import structlog

        from _devicegen import raise_open_files

        raise_open_files()
        structlog.configure(
            wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING),
            logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        )
    else:
        from _devicegen import raise_open_files

        raise_open_files()
    with asyncio.Runner(loop_factory=new_event_loop) as runner:
        if mode == "readers":
            runner.run(run_readers(spec))
        elif mode == "publisher":
            emit("RESULT", runner.run(run_publisher(spec)))
        else:
            runner.run(run_devices(spec))
    return 0


if __name__ == "__main__":
    sys.exit(main())
