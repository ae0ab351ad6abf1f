"""
One device socket: the short, dumb loop around a cloud-role `protocol.Connection`.

Theory of operation:
    The link's task repeats: read → ``receive_data(data, now)`` → drain events → await the service calls
    they need → write ``data_to_send()`` → re-arm one timer at ``get_timer()``. The timer is a clock
    callback (`Clock.call_at`), not a second task: it calls ``handle_timer(now)``, drains, writes and
    re-arms. Every protocol rule (ACKs, pings, counters, deadlines) lives in the Connection, not here.

    Draining is synchronous and sorts events in two kinds:

    - events that need no await are handled on the spot: a result resolves the future of the request
      waiting for it, ``TimeRequested`` is answered with the clock's wall time, ``ConnectionClosed`` closes
      the socket. Everything ``handle_timer`` can produce is of this kind, so the timer never waits for the
      task (which may be blocked in a read);
    - events that need services (``DeviceIdentified`` → key check, ``HelloReceived`` → connected,
      ``DescribeReceived`` → described, ``EventPublished`` → the optional hook) are queued, and the task
      awaits them in order before it reads again. While it awaits, it does not read: a slow service slows
      that one device down and nothing else.

    A link reports ``device_connected`` once, after the Hello, and then ``device_disconnected`` exactly
    once when it ends, unless a newer link of the same device has taken its place (see `registry`).

    Any exception ends that link only: a `RemoteProtocolError` is the peer's fault (WARNING), anything
    else is ours (ERROR with the traceback). Each link logs one line when it ends.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Mapping
from typing import TYPE_CHECKING

import structlog

from devicecloud.errors import DeviceOffline, DeviceTimedOut
from devicecloud.gateway.translate import describe_to_domain, hello_to_domain
from devicecloud.protocol import (
    NEED_DATA,
    AcceptDevice,
    ChunkReceived,
    Close,
    Command,
    Connection,
    ConnectionClosed,
    ConnectionState,
    DescribeReceived,
    DeviceIdentified,
    Event,
    EventPublished,
    FunctionReturned,
    GoodbyeReceived,
    HelloFlags,
    HelloReceived,
    LocalProtocolError,
    RejectDevice,
    RemoteProtocolError,
    RequestCompleted,
    RequestDescribe,
    RequestFailed,
    RequestTimedOut,
    SendEvent,
    SendTime,
    SubscribeRequested,
    TimeRequested,
    UpdateFinished,
    UpdateReady,
    VariableType,
    VariableValue,
    load_public_key,
)

if TYPE_CHECKING:
    from devicecloud.clock import TimerHandle
    from devicecloud.gateway.context import LinkContext

__all__ = ["Link"]

logger = structlog.get_logger("devicecloud.gateway")

READ_SIZE = 16 * 1024
# A device that stops reading while we keep writing is dropped rather than buffered without end.
MAX_WRITE_BUFFER = 256 * 1024
# Events that answer a request we sent; they resolve the future of whoever is waiting for that request.
_RESULTS = (
    RequestCompleted,
    RequestFailed,
    RequestTimedOut,
    FunctionReturned,
    VariableValue,
    DescribeReceived,
    UpdateReady,
    ChunkReceived,
    UpdateFinished,
)
_AWAITED = (DeviceIdentified, HelloReceived, DescribeReceived)


class Link:
    """
    One accepted socket and its protocol connection; `run()` is the link's task.
    """

    def __init__(
        self,
        ctx: LinkContext,
        conn: Connection,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        ip_address: str | None,
    ) -> None:
        self.ip_address = ip_address
        #: What the device's last Describe said (``None`` until it says); parts are kept across partial ones.
        self.functions: tuple[str, ...] | None = None
        self.variables: Mapping[str, VariableType | int] | None = None
        self._ctx = ctx
        self._conn = conn
        self._reader = reader
        self._writer = writer
        self._waiters: dict[int, asyncio.Future[Event]] = {}
        self._work: deque[Event] = deque()
        self._timer: TimerHandle | None = None
        self._timer_at: float | None = None
        self._connected = False  # device_connected was (or is being) reported: the end must be reported
        self._heard = False  # bytes arrived since device_heard was last reported
        self._got_bytes = False  # the peer ever sent anything (health checks and scanners do not)
        self._closed: ConnectionClosed | None = None
        self._closed_locally = False
        self._log = logger.bind(ip=ip_address)

    @property
    def device_id(self) -> str | None:
        """
        The id the device gave in the handshake (``None`` before).
        """
        return self._conn.device_id

    @property
    def online(self) -> bool:
        """
        True while the session is up and reported: requests can be sent.
        """
        return self._connected and self._conn.state is ConnectionState.ESTABLISHED

    # ------------------------------------------------------------------------------------------ the task

    async def run(self) -> None:
        """
        Serve the socket until either side closes it; never raises except `CancelledError`.
        """
        try:
            self._transmit()  # the nonce
            while True:
                await self._do_work()
                if self._conn.state is ConnectionState.CLOSED:
                    break
                try:
                    data = await self._reader.read(READ_SIZE)
                except OSError:  # reset by peer and the like: the same as EOF for us
                    data = b""
                self._heard = self._heard or bool(data)
                self._got_bytes = self._got_bytes or bool(data)
                # On RemoteProtocolError the connection is closed; ConnectionClosed(error=True) says why.
                with contextlib.suppress(RemoteProtocolError):
                    self._conn.receive_data(data, self._ctx.clock.monotonic())
                self._transmit()
        except asyncio.CancelledError:
            self.close("gateway stopping")
            raise
        except Exception:
            self._log.exception("device link failed", device_id=self.device_id)
            self.close("internal error")
        finally:
            await self._finish()

    async def _do_work(self) -> None:
        while self._work:
            event = self._work.popleft()
            if isinstance(event, DeviceIdentified):
                await self._check_key(event)
            elif isinstance(event, HelloReceived):
                await self._came_online(event)
            elif isinstance(event, DescribeReceived):
                await self._report_describe(event)
            elif isinstance(event, EventPublished) and self._ctx.on_event and self.device_id:
                await self._ctx.on_event(self.device_id, event)
        if self._heard and self._connected and self.device_id:
            self._heard = False
            async with self._ctx.registry.serial(self.device_id):
                await self._ctx.sessions.device_heard(self.device_id)

    async def _check_key(self, event: DeviceIdentified) -> None:
        async with self._ctx.registry.serial(event.device_id):
            der = await self._ctx.sessions.check_device_key(
                event.device_id, event.offered_public_key_der, self.ip_address
            )
        if self._conn.state is not ConnectionState.AWAIT_DEVICE_KEY:
            return  # the handshake deadline passed while we asked
        command: AcceptDevice | RejectDevice = RejectDevice("unknown device")
        if der is not None:
            try:
                command = AcceptDevice(load_public_key(der))
            except LocalProtocolError:
                self._log.error("the stored device key is unusable", device_id=event.device_id)
                command = RejectDevice("unusable device key")
        # Bytes that arrived behind the handshake may be bad: RemoteProtocolError, ConnectionClosed says so.
        with contextlib.suppress(RemoteProtocolError):
            self._conn.send(command, self._ctx.clock.monotonic())
        self._transmit()

    async def _came_online(self, event: HelloReceived) -> None:
        device_id = self.device_id
        if device_id is None or self._conn.state is ConnectionState.CLOSED:
            return  # the link died in the same breath as its Hello: it never was online
        self._connected = True
        self._ctx.counters.handshakes_ok += 1
        if self._ctx.registry.claim(device_id, self) is not None:
            self._ctx.counters.replaced += 1
            self._log.info("device reconnected; its older link is closed", device_id=device_id)
        async with self._ctx.registry.serial(device_id):
            await self._ctx.sessions.device_connected(device_id, self.ip_address, hello_to_domain(event))
        self._log = self._log.bind(device_id=device_id)
        self._log.debug("device link up", platform_id=event.platform_id, flags=event.flags)
        # A 2.x device that announces device-initiated Describe sends it by itself.
        wants_request = not event.flags & HelloFlags.DEVICE_INITIATED_DESCRIBE
        if self._ctx.describe_on_connect and wants_request and self.online:
            self._conn.send(RequestDescribe(), self._ctx.clock.monotonic())
            self._transmit()

    async def _report_describe(self, event: DescribeReceived) -> None:
        if self._connected and self.device_id:
            async with self._ctx.registry.serial(self.device_id):
                description = describe_to_domain(event.description)
                await self._ctx.sessions.device_described(self.device_id, description)

    async def _finish(self) -> None:
        self.close("link ended")
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        device_id = self.device_id
        current = device_id is not None and self._ctx.registry.release(device_id, self)
        self._log_end()
        try:
            if current and self._connected and device_id is not None:
                async with self._ctx.registry.serial(device_id):
                    await self._ctx.sessions.device_disconnected(device_id)
        except Exception:
            self._log.exception("reporting the device offline failed", device_id=device_id)
        finally:
            with contextlib.suppress(OSError):  # a reset socket is closed all the same
                await self._writer.wait_closed()

    def _log_end(self) -> None:
        closed = self._closed
        reason, device_id = (closed.reason if closed else "unknown"), self.device_id
        if not self._connected:
            self._ctx.counters.handshakes_failed += 1
        if closed is not None and closed.error:
            self._log.warning("device broke the protocol; link closed", reason=reason, device_id=device_id)
        elif not self._connected:
            quiet = self._closed_locally or not self._got_bytes
            log = self._log.debug if quiet else self._log.warning
            log("device handshake failed", reason=reason, device_id=device_id)
        else:
            self._log.debug("device link closed", reason=reason)

    # ------------------------------------------------------------------------------------------ sync core

    def _transmit(self) -> None:
        """
        After anything that may have changed the connection: drain, write, re-arm (aioquic's transmit).
        """
        self._pump()
        self._flush()
        self._rearm()

    def _pump(self) -> None:
        """
        Drain the connection's events; handle what needs no await, queue the rest for the task.
        """
        while (event := self._conn.next_event()) is not NEED_DATA:
            if isinstance(event, _RESULTS) and event.request_id is not None:
                waiter = self._waiters.pop(event.request_id, None)
                if waiter is not None and not waiter.done():
                    waiter.set_result(event)
                elif isinstance(event, RequestFailed | RequestTimedOut):
                    self._log.debug("unclaimed request result", result=repr(event))
            if isinstance(event, _AWAITED):
                self._work.append(event)
            if isinstance(event, DescribeReceived):
                described = event.description
                self.functions = described.functions if described.functions is not None else self.functions
                self.variables = described.variables if described.variables is not None else self.variables
            elif isinstance(event, TimeRequested):
                if self._conn.state is ConnectionState.ESTABLISHED:
                    unix_time = int(self._ctx.clock.now().timestamp())
                    self._conn.send(SendTime(event.request_id, unix_time), self._ctx.clock.monotonic())
            elif isinstance(event, EventPublished):
                # Publishing to the bus is the next issue; until then the hook (if any) gets it.
                self._log.debug("device published", event_name=event.name, private=event.private)
                if self._ctx.on_event is not None:
                    self._work.append(event)
            elif isinstance(event, SubscribeRequested | GoodbyeReceived):
                self._log.debug("device message", message=repr(event))
            elif isinstance(event, ConnectionClosed):
                self._closed = event
                if event.error:
                    self._ctx.counters.protocol_errors += 1

    def _flush(self) -> None:
        """
        Write what the connection has to send; close the socket once the connection is closed.
        """
        transport = self._writer.transport
        data = self._conn.data_to_send()
        if data and not transport.is_closing():
            transport.write(data)
            if transport.get_write_buffer_size() > MAX_WRITE_BUFFER:
                self.close("the device does not read what we send")
                return
        if self._conn.state is ConnectionState.CLOSED and not transport.is_closing():
            transport.close()

    def _rearm(self) -> None:
        deadline = self._conn.get_timer()
        if deadline == self._timer_at and (deadline is None or self._timer is not None):
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer, self._timer_at = None, deadline
        if deadline is not None:
            self._timer = self._ctx.clock.call_at(deadline, self._on_timer)

    def _on_timer(self) -> None:
        at, self._timer, self._timer_at = self._timer_at, None, None
        try:
            # A timer may fire a hair early; the deadline it was set for has come by definition.
            self._conn.handle_timer(max(at or 0.0, self._ctx.clock.monotonic()))
            self._transmit()
        except Exception:
            self._log.exception("device link timer failed", device_id=self.device_id)
            self._writer.transport.abort()

    # ------------------------------------------------------------------------------------------ commands

    def close(self, reason: str) -> None:
        """
        Close the link (a no-op when closed); pending requests fail and the task ends soon after.
        """
        if self._conn.state is not ConnectionState.CLOSED:
            self._closed_locally = True
            self._conn.send(Close(reason), self._ctx.clock.monotonic())
        self._transmit()  # also closes the socket and drops the timer of a connection closed otherwise

    async def request(self, command: Command, *, timeout: float) -> Event:
        """
        Send a request and wait for the event that answers it.

        Args:
            command: a command that expects an answer (``send`` returns a request id for it).
            timeout: seconds on the gateway's clock.

        Returns:
            The result event; it may be ``RequestFailed``.

        Raises:
            DeviceOffline: the link is not up.
            DeviceTimedOut: no answer within ``timeout`` (or the protocol's own request deadline).
        """
        if not self.online:
            raise DeviceOffline("Device is not connected")
        now = self._ctx.clock.monotonic()
        request_id = self._conn.send(command, now)
        if request_id is None:
            raise LocalProtocolError(f"{type(command).__name__} expects no answer")
        self._ctx.counters.requests += 1
        waiter: asyncio.Future[Event] = asyncio.get_running_loop().create_future()
        self._waiters[request_id] = waiter
        self._transmit()

        def expire() -> None:
            if not waiter.done():
                waiter.set_result(RequestTimedOut(request_id))

        timer = self._ctx.clock.call_at(now + timeout, expire)
        try:
            result = await waiter
        finally:
            timer.cancel()
            self._waiters.pop(request_id, None)
        if isinstance(result, RequestTimedOut):
            self._ctx.counters.requests_timed_out += 1
            raise DeviceTimedOut("Timed out.")
        return result

    def send_event(
        self,
        name: str,
        data: str | bytes | None = None,
        *,
        private: bool = False,
        max_age: int | None = None,
        split_path: bool = False,
    ) -> bool:
        """
        Deliver an event to the device (fire and forget: devices do not ACK events over TCP).

        Returns:
            False when the link is not up.
        """
        if not self.online:
            return False
        command = SendEvent(name, data, private=private, max_age=max_age, split_path=split_path)
        self._conn.send(command, self._ctx.clock.monotonic())
        self._transmit()
        return True
