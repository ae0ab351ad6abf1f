"""
Server-sent event streams (catalogue §9.1): the bytes on the wire, the per-IP cap, and the life of one stream.

The wire format the official clients parse: ``:ok`` and a blank line first, then per event ``event: <name>``,
``data: <one-line JSON {data, ttl, published_at, coreid}>`` and a blank line; a ``:`` comment whenever nothing
was written for ``keepalive`` seconds (particle-api-js drops a stream after 15 s without a byte).

`EventStreamResponse` is a small pure-ASGI response around a bus `Subscription`, with three tasks in one task
group:

- the pump writes each event as it arrives; when the client stops reading, the ASGI ``send`` blocks (the
  server's flow control), the bus queue fills and the bus closes the subscription: memory stays bounded by
  the bus bound plus one socket buffer;
- the keep-alive task writes the comment when the stream is idle, and ends a stream whose subscription the bus
  closed while the pump is stuck writing, or whose write has been stuck for ``stall_timeout``;
- the watcher waits for ``http.disconnect``, so a client that goes away is cleaned up at once.

Whatever ends the stream, the subscription is closed and ``on_close`` (the per-IP counter) runs.
"""

from __future__ import annotations

import asyncio
import functools
import json
from collections.abc import Callable
from typing import TYPE_CHECKING

import anyio
import structlog
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from devicecloud.domain.events import CloudEvent
from devicecloud.domain.timestamps import iso

if TYPE_CHECKING:
    from devicecloud.bus.interfaces import Subscription

logger = structlog.get_logger("devicecloud.api.events")

MEDIA_TYPE = "text/event-stream"
OPENING = b":ok\n\n"
KEEPALIVE = b":\n\n"
DEFAULT_STALL_TIMEOUT = 60.0
# How long the last (empty) write may take before we give up and let the server drop the connection.
FINAL_WRITE_TIMEOUT = 1.0


@functools.lru_cache(maxsize=1024)
def encode_event(event: CloudEvent) -> bytes:
    """
    One event on the wire. The JSON is on one line (``json.dumps`` escapes newlines); a line break in the name
    would end the ``event:`` field early, so it is replaced by a space. Cached: a fan-out to many streams
    encodes each event once.
    """
    name = event.name.replace("\r", " ").replace("\n", " ")
    payload = json.dumps(
        {
            "data": event.data,
            "ttl": event.ttl,
            "published_at": iso(event.published_at),
            "coreid": event.coreid,
        },
        separators=(",", ":"),
    )
    return f"event: {name}\ndata: {payload}\n\n".encode()


class StreamRegistry:
    """
    The open streams: how many per client address (catalogue §1.5: 100 per IP), and their subscriptions, so
    that a server shutting down can end them all (otherwise it would wait for clients that never leave).
    """

    def __init__(self, per_ip: int) -> None:
        self.per_ip = per_ip
        self._open: dict[str, int] = {}
        self._live: set[Subscription] = set()
        self._closing = False

    def acquire(self, ip: str) -> bool:
        """
        Count one more stream for ``ip``; False (and nothing counted) when it already has ``per_ip`` or the
        server is shutting down.
        """
        count = self._open.get(ip, 0)
        if count >= self.per_ip or self._closing:
            return False
        self._open[ip] = count + 1
        return True

    def track(self, subscription: Subscription) -> None:
        self._live.add(subscription)

    def release(self, ip: str, subscription: Subscription | None = None) -> None:
        if subscription is not None:
            self._live.discard(subscription)
        count = self._open.get(ip, 0) - 1
        if count > 0:
            self._open[ip] = count
        else:
            self._open.pop(ip, None)

    def close_all(self, reason: str = "server shutting down") -> None:
        """
        End every stream (each finishes its response cleanly) and refuse new ones.
        """
        self._closing = True
        for subscription in list(self._live):
            subscription.close(reason)

    def open_streams(self, ip: str | None = None) -> int:
        """
        Streams open now, for one address or in all.
        """
        if ip is not None:
            return self._open.get(ip, 0)
        return sum(self._open.values())


class EventStreamResponse(Response):
    """
    A ``text/event-stream`` response fed by a bus subscription; see the module docstring.
    """

    media_type = MEDIA_TYPE

    def __init__(
        self,
        subscription: Subscription,
        *,
        keepalive: float,
        on_close: Callable[[], None] | None = None,
        stall_timeout: float = DEFAULT_STALL_TIMEOUT,
    ) -> None:
        # Response.__init__ would add a Content-Length; a stream has none.
        self.status_code = 200
        self.background = None
        self.raw_headers = [
            (b"content-type", MEDIA_TYPE.encode()),
            (b"cache-control", b"no-cache"),
            (b"x-accel-buffering", b"no"),
        ]
        self._subscription = subscription
        self._keepalive = keepalive
        self._stall_timeout = stall_timeout
        self._on_close = on_close
        self._send: Send | None = None
        # asyncio's lock takes no scheduling step when free (anyio's does): one per event adds up.
        self._lock = asyncio.Lock()
        self._last_write = 0.0
        self._writing_since: float | None = None
        self._disconnected = False
        self._stalled = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self._send = send
        try:
            await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
            await self._write(OPENING)
            async with anyio.create_task_group() as group:
                group.start_soon(self._watch_client, receive, group.cancel_scope)
                group.start_soon(self._keep_alive, group.cancel_scope)
                await self._pump()
                group.cancel_scope.cancel()
            if not (self._disconnected or self._stalled):
                with anyio.move_on_after(FINAL_WRITE_TIMEOUT):
                    await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            self._subscription.close("stream closed")
            if self._on_close is not None:
                self._on_close()
            logger.debug(
                "event stream ended",
                reason=self._subscription.closed_reason,
                disconnected=self._disconnected,
                stalled=self._stalled,
            )

    async def _write(self, chunk: bytes) -> None:
        assert self._send is not None
        self._writing_since = anyio.current_time()
        await self._send({"type": "http.response.body", "body": chunk, "more_body": True})
        self._writing_since = None
        self._last_write = anyio.current_time()

    async def _pump(self) -> None:
        async for event in self._subscription:
            chunk = encode_event(event)
            async with self._lock:
                await self._write(chunk)

    async def _keep_alive(self, scope: anyio.CancelScope) -> None:
        while True:
            deadline = self._last_write + self._keepalive
            if self._writing_since is not None:  # a write is under way: look again soon
                deadline = max(deadline, anyio.current_time() + min(1.0, self._keepalive))
            await anyio.sleep_until(deadline)
            writing_since = self._writing_since
            if writing_since is not None:
                dropped = self._subscription.closed_reason is not None
                if dropped or anyio.current_time() - writing_since >= self._stall_timeout:
                    # The client stopped reading: the bus gave up on it, or its write never finishes.
                    self._stalled = True
                    scope.cancel()
                    return
                continue
            if anyio.current_time() - self._last_write >= self._keepalive and not self._lock.locked():
                async with self._lock:
                    await self._write(KEEPALIVE)

    async def _watch_client(self, receive: Receive, scope: anyio.CancelScope) -> None:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                self._disconnected = True
                scope.cancel()
                return
