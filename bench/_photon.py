"""
Simulated Photons for the device benchmark: what recorded Device OS 0.7.0 firmware does on a connection.

The sequence comes from the conformance recordings of a real 0.7.0 device (``tests/conformance/``, every
transcript starts the same way) and ``shared/reference/device-protocol.md``:

1. TCP connect; wait at most 20 s for the nonce (``neg_no_nonce``: FIN 20.25 s after connecting);
2. the handshake, then the Hello (product id = platform id 6, flags 0: the cloud asks for the Describe);
   wait at most 4 s for the server's Hello (``neg_no_server_hello``);
3. two private NON system events, ``spark/hardware/max_binary`` = ``102400`` and
   ``spark/hardware/ota_chunk_size`` = ``512``;
4. ``Subscribe /e/spark`` (CON, no scope: ALL_DEVICES);
5. a time request (CON ``GET /t``);
6. the Describe the cloud asks for, answered in the ACK (0.x style): Tinker's four functions, a system
   module at 0.7.0 (so the cloud asks once more, as it does for any Device OS before 1.5);
7. a ping after every 15 s without receiving anything; an unanswered ping does not end the link
   (``neg_ping_unanswered``);
8. after the link ends or a handshake fails: connect again 0.75 s later (the recordings), every second
   while the server refuses connections.

``spark/device/last_reset`` and ``spark/device/app-hash`` are not in the recordings (the recorded device
did not publish them), so these devices do not either.

``bare`` devices do today's protocol floor instead: handshake and a Hello that announces a
device-initiated Describe (so the cloud asks nothing), then only the pings.

A device counts what the benchmark reports: time to come online, events received, pings and their round
trips, links lost and attempts that failed (with the reason).
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from cryptography.hazmat.primitives.asymmetric import rsa

from devicecloud.protocol import (
    NEED_DATA,
    Connection,
    ConnectionClosed,
    DescribeRequested,
    DeviceHello,
    EventReceived,
    HandshakeCompleted,
    HelloFlags,
    Ping,
    PublishEvent,
    RemoteProtocolError,
    RequestCompleted,
    RequestTime,
    RespondDescribe,
    ResponseStyle,
    Role,
    ServerHelloReceived,
    Subscribe,
    TimeReceived,
    Timing,
    build_describe,
)
from devicecloud.virtualdevice.device import system_modules

BEHAVIOURS = ("0.7.0", "bare")
PHOTON = 6
NONCE_WAIT = 20.0  # the 0.7.0 device's wait for the nonce (and, inferred, for the handshake reply)
HELLO_WAIT = 4.0  # its wait for the server Hello after its own
PING_AFTER = 15.0
RECONNECT_AFTER = 0.75
REFUSED_RETRY = 1.0
SYSTEM_EVENTS = (("spark/hardware/max_binary", "102400"), ("spark/hardware/ota_chunk_size", "512"))
TINKER = ("digitalread", "digitalwrite", "analogread", "analogwrite")
SYSTEM_0_7_0 = 207
# The protocol's own timers stay off: this module keeps the device's deadlines and pings itself.
NO_TIMERS = Timing(handshake_timeout=None, request_timeout=None, ping_after=None, idle_timeout=None)


@dataclass
class Tally:
    """
    What a group of devices saw since the last ``reset``: shared by all devices of one process.
    """

    origin: float = field(default_factory=time.monotonic)
    online_at: list[float] = field(default_factory=list)  # seconds after origin
    first_connect_at: float | None = None
    events_received: int = 0
    pings: int = 0
    pings_answered: int = 0
    ping_rtt_ms: list[float] = field(default_factory=list)
    links_lost: int = 0
    failed_attempts: Counter[str] = field(default_factory=Counter)
    troubled: set[int] = field(default_factory=set)  # devices that lost a link or failed an attempt
    describes_answered: int = 0

    def reset(self) -> None:
        self.__init__()  # type: ignore[misc]


def connection(
    behaviour: str, server_key: rsa.RSAPublicKey, device_key: rsa.RSAPrivateKey, device_id: str
) -> Connection:
    if behaviour == "bare":
        hello = DeviceHello(product_id=PHOTON, flags=int(HelloFlags.DEVICE_INITIATED_DESCRIBE),
                            platform_id=PHOTON)  # fmt: skip
        style = ResponseStyle.SEPARATE
    else:
        hello = DeviceHello(product_id=PHOTON, flags=0, platform_id=PHOTON)
        style = ResponseStyle.PIGGYBACK
    return Connection(
        Role.DEVICE,
        now=time.monotonic(),
        server_public_key=server_key,
        device_private_key=device_key,
        device_id=device_id,
        hello=hello,
        response_style=style,
        timing=NO_TIMERS,
    )


class PhotonSession(asyncio.Protocol):
    """
    One connection of a simulated device: the 0.7.0 connect sequence (or the bare one), then pings.

    ``ready`` resolves (None) once the device is online: for 0.7.0 when its time request is answered (the
    last step of its connect sequence), for bare at the server Hello. ``ended`` resolves with the reason
    the connection ended. ``described`` is set once the device has answered a Describe.
    """

    def __init__(
        self, conn: Connection, behaviour: str, tally: Tally, index: int, ping_after: float = PING_AFTER
    ) -> None:
        self.conn, self.behaviour, self.tally, self.index = conn, behaviour, tally, index
        self.ping_after = ping_after
        loop = asyncio.get_running_loop()
        self._loop = loop
        self.ready: asyncio.Future[None] = loop.create_future()
        self.ended: asyncio.Future[str] = loop.create_future()
        self.lost: asyncio.Future[None] = loop.create_future()  # the socket is closed
        self.described = asyncio.Event()
        self.transport: asyncio.Transport | None = None
        self.online = False
        self._last_rx = time.monotonic()
        self._pings: dict[int, float] = {}
        self._time_request: int | None = None
        self._deadline: asyncio.TimerHandle | None = None
        self._ping_timer: asyncio.TimerHandle | None = None

    # ------------------------------------------------------------------------------ asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self._set_deadline(NONCE_WAIT, "no handshake within 20 s")
        self._flush()

    def data_received(self, data: bytes) -> None:
        self._last_rx = now = time.monotonic()
        try:
            self.conn.receive_data(data, now)
        except RemoteProtocolError as exc:
            self.end(f"protocol error: {exc}"[:100])
            return
        self._drain()
        self._flush()

    def eof_received(self) -> bool:
        self.end("server closed the connection")
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.end("connection lost" if exc is None else f"connection lost: {exc}"[:100])
        if not self.lost.done():
            self.lost.set_result(None)

    # ------------------------------------------------------------------------------ the device

    def _drain(self) -> None:
        while (event := self.conn.next_event()) is not NEED_DATA:
            if isinstance(event, HandshakeCompleted):
                self._set_deadline(HELLO_WAIT, "no server Hello within 4 s")
            elif isinstance(event, ServerHelloReceived):
                self._connected()
            elif isinstance(event, TimeReceived) and event.request_id == self._time_request:
                self._came_online()
            elif isinstance(event, DescribeRequested):
                payload = build_describe(functions=TINKER, variables={}, platform_id=PHOTON,
                                         modules=system_modules(SYSTEM_0_7_0), flags=event.flags)  # fmt: skip
                self.conn.send(RespondDescribe(event.request_id, payload), time.monotonic())
                self.tally.describes_answered += 1
                self.described.set()
            elif isinstance(event, EventReceived):
                self.tally.events_received += 1
            elif isinstance(event, RequestCompleted) and event.request_id in self._pings:
                sent = self._pings.pop(event.request_id)
                self.tally.pings_answered += 1
                self.tally.ping_rtt_ms.append((time.monotonic() - sent) * 1000)
            elif isinstance(event, ConnectionClosed):
                self.end(f"closed: {event.reason}"[:100])

    def _connected(self) -> None:
        self._cancel_deadline()
        self._schedule_ping()
        if self.behaviour == "bare":
            self._came_online()
            return
        now = time.monotonic()
        for name, data in SYSTEM_EVENTS:
            self.conn.send(PublishEvent(name, data, private=True), now)
        self.conn.send(Subscribe("spark"), now)
        self._time_request = self.conn.send(RequestTime(), now)

    def _came_online(self) -> None:
        self.online = True
        self.tally.online_at.append(time.monotonic() - self.tally.origin)
        if not self.ready.done():
            self.ready.set_result(None)

    def _schedule_ping(self) -> None:
        wait = self._last_rx + self.ping_after - time.monotonic()
        self._ping_timer = self._loop.call_later(max(0.0, wait), self._ping)

    def _ping(self) -> None:
        self._ping_timer = None
        if self.ended.done():
            return
        now = time.monotonic()
        if now >= self._last_rx + self.ping_after:
            request = self.conn.send(Ping(), now)
            if request is not None:
                self._pings[request] = now
                self.tally.pings += 1
            self._last_rx = now  # the next one 15 s on, answered or not (0.7.0 keeps the link)
            self._flush()
        self._schedule_ping()

    def _set_deadline(self, seconds: float, reason: str) -> None:
        self._cancel_deadline()
        self._deadline = self._loop.call_later(seconds, self.end, reason)

    def _cancel_deadline(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _flush(self) -> None:
        out = self.conn.data_to_send()
        if out and self.transport is not None and not self.transport.is_closing():
            self.transport.write(out)

    def end(self, reason: str) -> None:
        """
        End the connection (once): close the socket, stop the timers.
        """
        if self.ended.done():
            return
        self.ended.set_result(reason)
        if not self.ready.done():
            self.ready.set_exception(ConnectionError(reason))
            self.ready.exception()  # retrieved: a failed attempt is counted, not raised
        self._cancel_deadline()
        if self._ping_timer is not None:
            self._ping_timer.cancel()
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()


class PhotonDevice:
    """
    One simulated device that stays connected: it connects again after every lost link or failed attempt.
    """

    def __init__(
        self,
        index: int,
        device_id: str,
        new_connection: Callable[[], Connection],
        behaviour: str,
        tally: Tally,
        address: tuple[str, int],
        ping_after: float = PING_AFTER,
    ) -> None:
        self.index, self.device_id, self.behaviour, self.tally = index, device_id, behaviour, tally
        self.ping_after = ping_after
        self._new_connection = new_connection
        self._address = address
        self.session: PhotonSession | None = None
        self.task: asyncio.Task[None] | None = None

    @property
    def online(self) -> bool:
        return self.session is not None and self.session.online and not self.session.ended.done()

    def start(self, first: asyncio.Semaphore | None = None) -> None:
        self.task = asyncio.create_task(self._run(first))

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)
        if self.session is not None:
            self.session.end("stopped")

    async def _run(self, first: asyncio.Semaphore | None) -> None:
        loop = asyncio.get_running_loop()
        while True:
            session = PhotonSession(
                self._new_connection(), self.behaviour, self.tally, self.index, self.ping_after
            )
            gate = first
            try:
                if gate is not None:
                    await gate.acquire()
                try:
                    await loop.create_connection(lambda s=session: s, *self._address)  # type: ignore[misc]
                except OSError:
                    await asyncio.sleep(REFUSED_RETRY)
                    continue
                if self.tally.first_connect_at is None:
                    self.tally.first_connect_at = time.monotonic() - self.tally.origin
                self.session = session
                try:
                    await session.ready
                except ConnectionError as exc:
                    self.tally.failed_attempts[str(exc)[:100]] += 1
                    self.tally.troubled.add(self.index)
                    await asyncio.sleep(RECONNECT_AFTER)
                    continue
            finally:
                if gate is not None:
                    gate.release()
                    first = None  # only the first connection waits its turn
            await session.ended
            self.tally.links_lost += 1
            self.tally.troubled.add(self.index)
            await asyncio.sleep(RECONNECT_AFTER)
