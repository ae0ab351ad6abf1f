"""
The UDP front of a Particle protocol session: CoAP over DTLS records (Gen3 devices, Electron).

Theory of operation:
    `UdpSession` is a `CoapSession` whose transport is a DTLS endpoint (`dtls.DtlsServer` in the cloud role,
    `dtls.DtlsClient` in the device role). ``receive_data`` takes ONE datagram; ``data_to_send`` gives ONE
    datagram per call (call until ``b""``). Each CoAP message is one DTLS record (ota-and-dtls.md §B.7).

    What CoAP over UDP adds to the session, kept here so the TCP front stays byte for byte what it was:

    - reliability: every CON this end sends is retransmitted until its ACK or RST arrives (ACK_TIMEOUT
      `ACK_TIMEOUT` s, doubling, `MAX_RETRANSMIT` times; deterministic, so transcripts replay). The request
      deadlines of the session still decide when a request has failed;
    - deduplication: the ids of the peer's recent CON and NON messages are remembered (`DEDUP_WINDOW`);
      a repeated CON gets the ACK (or piggy-backed answer) it got the first time, again, and is not handled
      twice; a repeated NON is dropped. Pings (empty CONs) are not remembered: answering one twice changes
      nothing, and an idle device's keep-alives would otherwise fill the window (memory per idle device).
      No TCP-style "+1 or disconnect" id rule (§B.7, gotcha 17);
    - the Hello is CON and carries the device id (cloud role: the id comes from it, the device key from the
      DTLS handshake; ``DeviceIdentified`` waits for the application's ``AcceptDevice``, which must name the
      key the device proved). The device role is established once its Hello is ACKed (no server Hello is
      required on DTLS, §B.6); the cloud still sends one (gotcha 12);
    - keep-alives are the device's: the cloud does not ping, and drops a session after
      `idle_timeout_for(platform)` without an authenticated record (Wi-Fi devices ping every 25 s, cellular
      ones every 23 minutes, §B.6);
    - Describe: Device OS ≥ 3.3 sends a large device-initiated Describe blockwise (Block1): the blocks are
      ACKed (2.31 Continue) and joined; the whole Describe is handled once the last block arrives. A large
      answer to the cloud's Describe request comes blockwise too (ETag + Block2): the cloud asks for each
      next block (`CoapSession`), and the device role here serves them, as Device OS does, from the answer
      it kept for those flags.

    Records that do not authenticate are dropped by the DTLS layer and counted (``dropped``); they never
    close the session. ``authenticated`` counts records that did authenticate: the gateway moves a session to
    a datagram's source address only when that count went up (NAT rebinding by Connection ID).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace

from cryptography.hazmat.primitives.asymmetric import ec

from devicecloud.protocol import coap, commands, events, messages
from devicecloud.protocol.codes import Code, MessageKind, MessageType, OptionNumber, code_class
from devicecloud.protocol.config import ConnectionState, DeviceHello, ResponseStyle, Role, Timing
from devicecloud.protocol.connection import _DEFAULT_DESCRIBE_FLAGS, CoapSession, _Inbound
from devicecloud.protocol.crypto import RandomBytes, public_key_der
from devicecloud.protocol.dtls import (
    AlertReceived,
    ApplicationData,
    DtlsClient,
    DtlsServer,
    DtlsState,
    HandshakeComplete,
    RecordDropped,
)
from devicecloud.protocol.dtls import ConnectionClosed as DtlsClosed
from devicecloud.protocol.errors import LocalProtocolError, RemoteProtocolError
from devicecloud.protocol.reliability import Outstanding

__all__ = [
    "ACK_TIMEOUT",
    "CELLULAR_PLATFORMS",
    "MAX_RETRANSMIT",
    "UDP_CLOUD_TIMING",
    "UDP_DEVICE_TIMING",
    "ResumedSession",
    "UdpSession",
    "idle_timeout_for",
]

#: Seconds before the first retransmission of a CON (CoAP's ACK_TIMEOUT 2 s × ACK_RANDOM_FACTOR 1.5, fixed).
ACK_TIMEOUT = 3.0
#: Retransmissions of one CON before giving up on it (CoAP's MAX_RETRANSMIT).
MAX_RETRANSMIT = 4
#: Peer message ids remembered for deduplication (with our answer to each).
DEDUP_WINDOW = 64
#: A blockwise Describe larger than this is refused (4.08).
MAX_DESCRIBE = messages.MAX_DESCRIBE
#: Device role: a Describe answer longer than this goes out blockwise (ETag + Block2), in blocks of this size,
#: as Device OS ≥ 3.3 answers (1,024 bytes where its messages hold 1,040 or more: every Gen3 platform).
DESCRIBE_BLOCK = 1024
_DESCRIBE_SZX = 6  # 2^(6+4) = 1,024
_NOT_FOUND = 0x84  # 4.04: a block asked for of a Describe this device is not serving
#: Platforms with a cellular modem: they ping every 23 minutes (Particle SIM NAT), the others every 25 s.
#: Electron/E-series 10, Boron 13, B-SoM 23, B5-SoM 25, Tracker 26, Tracker M 28, M-SoM 35, E404X 37.
CELLULAR_PLATFORMS = frozenset({10, 13, 23, 25, 26, 28, 35, 37})
WIFI_KEEPALIVE = 25.0
_CONTINUE = 0x5F  # 2.31, a Block1 part taken
_ENTITY_INCOMPLETE = 0x88  # 4.08, a Block1 part out of order
CELLULAR_KEEPALIVE = 23 * 60.0
#: Cloud defaults over UDP: no cloud pings; the idle deadline is set by platform at the Hello.
UDP_CLOUD_TIMING = Timing(handshake_timeout=30.0, request_timeout=30.0, ping_after=None, idle_timeout=None)
#: Device defaults over UDP: a Wi-Fi device's keep-alive; gives up 30 s after an unanswered ping.
UDP_DEVICE_TIMING = Timing(
    handshake_timeout=30.0,
    request_timeout=30.0,
    ping_after=WIFI_KEEPALIVE,
    idle_timeout=WIFI_KEEPALIVE + 30.0,
)


def idle_timeout_for(platform_id: int | None) -> float:
    """
    Seconds of silence after which the cloud drops a UDP session: three keep-alive intervals of the
    platform's kind, plus the 30 s a device waits for its ping's ACK.
    """
    interval = CELLULAR_KEEPALIVE if platform_id in CELLULAR_PLATFORMS else WIFI_KEEPALIVE
    return 3 * interval + 30.0


@dataclass(frozen=True, slots=True)
class ResumedSession:
    """
    What the cloud keeps of a device's session beside its DTLS `SessionState`, so that a device that resumes
    with a bare CoAP ping (no Hello) is known: its id and the payload of its last Hello.
    """

    device_id: str
    hello: bytes


@dataclass(slots=True)
class _Unacked:
    """A CON we sent: its record payload, when to send it again, and how many times we have."""

    data: bytes
    due: float
    interval: float
    sent: int = 0


class UdpSession(CoapSession):
    """
    A Particle protocol session over DTLS.

    Args:
        role: ``Role.CLOUD`` (``endpoint`` is a `DtlsServer` from ``DtlsServer.accept``) or ``Role.DEVICE``
            (a fresh `DtlsClient`; this session starts it).
        endpoint: the DTLS association.
        now: the current time.
        device_id: device role: our 12-byte id (bytes or 24 hex characters).
        hello: device role: what our Hello says (sent CON, with the device id).
        response_style: device role; UDP devices answer with separate responses (``SEPARATE``).
        timing: ``None`` = `UDP_CLOUD_TIMING` or `UDP_DEVICE_TIMING`.
        random_bytes: initial message id and token.
    """

    __slots__ = (
        "_blocks",
        "_dtls",
        "_held_hello",
        "_hello_id",
        "_now",
        "_out",
        "_peer_key",
        "_resumed",
        "_seen",
        "_serving",
        "_unacked",
        "authenticated",
        "closed_by_peer",
        "dropped",
        "hello_payload",
        "moved",
        "retransmissions",
    )

    unreliable = True

    def __init__(
        self,
        role: Role,
        *,
        endpoint: DtlsServer | DtlsClient,
        now: float,
        device_id: bytes | str | None = None,
        hello: DeviceHello | None = None,
        response_style: ResponseStyle = ResponseStyle.SEPARATE,
        timing: Timing | None = None,
        random_bytes: RandomBytes = os.urandom,
        resumed: ResumedSession | None = None,
    ) -> None:
        default = UDP_CLOUD_TIMING if role is Role.CLOUD else UDP_DEVICE_TIMING
        super().__init__(
            role,
            now=now,
            hello=hello,
            response_style=response_style,
            timing=timing or default,
            random_bytes=random_bytes,
            check_message_ids=False,
        )
        self._dtls = endpoint
        self._now = now
        # Lists and a plain dict, not deques and an OrderedDict: an idle session's memory counts (issue 13).
        self._out: list[bytes] = []
        self._unacked: dict[int, _Unacked] = {}
        self._seen: dict[int, bytes | None] = {}  # insertion-ordered: the oldest first
        self._held_hello: coap.Message | None = None
        self._hello_id: int | None = None
        self._peer_key = b""
        self._blocks = bytearray()
        # Device role, only while a Describe is served blockwise: the answers being served, by their flags.
        self._serving: dict[int, tuple[bytes, bytes, int | None]] | None = None
        self.hello_payload = b""
        #: The peer ended the DTLS association (close_notify, a fatal alert): it is not worth keeping.
        self.closed_by_peer = False
        #: Records the DTLS layer authenticated / dropped, and CON retransmissions, since the start.
        self.authenticated = 0
        self.dropped = 0
        self.retransmissions = 0
        #: The last authenticated record came as a resumption record (253/254): the device may have moved.
        self.moved = False
        self._resumed = resumed
        if role is Role.DEVICE:
            if device_id is None or not isinstance(endpoint, DtlsClient):
                raise LocalProtocolError("the device role needs a DtlsClient and device_id")
            raw = bytes.fromhex(device_id) if isinstance(device_id, str) else device_id
            if len(raw) != 12:
                raise LocalProtocolError("device id must be 12 bytes")
            self.device_id = raw.hex()
            if endpoint.session is None:
                endpoint.start(now)
            else:  # a stored session continued: no handshake; a CoAP ping (CON) asks the cloud to answer
                self._state = ConnectionState.AWAIT_HELLO
                self._ids = type(self._ids)(int.from_bytes(self._random(2), "big"))
                self._tokens = type(self._tokens)(self._random(1)[0])
                self._hello_id = self._ids.next()
                self._send_message(messages.ping(self._hello_id))
        elif not isinstance(endpoint, DtlsServer):
            raise LocalProtocolError("the cloud role needs a DtlsServer")
        elif resumed is not None:  # the session was stored: it continues without a handshake or a Hello
            if endpoint.session is None:
                raise LocalProtocolError("a resumed session needs a resumed DtlsServer")
            self._peer_key = endpoint.session.peer_key
            self._state = ConnectionState.AWAIT_HELLO
        self._pump_dtls(now)

    # ------------------------------------------------------------------------------------------ public API

    @property
    def endpoint(self) -> DtlsServer | DtlsClient:
        """The DTLS association under this session."""
        return self._dtls

    def receive_data(self, data: bytes, now: float) -> None:
        """
        Feed one datagram from the peer (``b""``: the transport is gone, the session closes).

        Raises:
            RemoteProtocolError: the DTLS handshake failed, or the device broke CoAP; the session is closed.
        """
        if self._state is ConnectionState.CLOSED:
            return
        self._now = now
        if not data:
            self._close("transport closed")
            return
        try:
            self._dtls.receive_datagram(data, now)
        except RemoteProtocolError as exc:
            self._failure = str(exc)
            self._pump_dtls(now)
            self._close(str(exc), error=True)
            raise
        self._pump_dtls(now)

    def data_to_send(self) -> bytes:
        """The next datagram to send (``b""`` when none is waiting)."""
        return self._out.pop(0) if self._out else b""

    def send(self, command: commands.Command, now: float) -> int | None:
        self._now = now
        try:
            if (
                isinstance(command, commands.RespondDescribe)
                and self.role is Role.DEVICE
                and len(command.payload) > DESCRIBE_BLOCK
            ):
                self._serve_describe(command)
                return None
            if (
                isinstance(command, commands.SendDescribe)
                and self.role is Role.DEVICE
                and len(command.payload) > DESCRIBE_BLOCK
            ):
                return self._send_describe_blockwise(command, now)
            return super().send(command, now)
        finally:
            self._collect()

    def get_timer(self) -> float | None:
        if self._state is ConnectionState.CLOSED:
            return None
        times = [super().get_timer(), self._dtls.get_timer()]
        times += [u.due for u in self._unacked.values()]
        present = [t for t in times if t is not None]
        return min(present) if present else None

    def handle_timer(self, now: float) -> None:
        if self._state is ConnectionState.CLOSED:
            return
        self._now = now
        self._dtls.handle_timer(now)
        self._pump_dtls(now)
        for message_id, unacked in list(self._unacked.items()):
            if now < unacked.due:
                continue
            if unacked.sent >= MAX_RETRANSMIT:
                del self._unacked[message_id]  # the request's own deadline reports the failure
                continue
            unacked.sent += 1
            unacked.interval *= 2
            unacked.due = now + unacked.interval
            self.retransmissions += 1
            self._write(unacked.data)
        super().handle_timer(now)
        self._collect()

    # ------------------------------------------------------------------------------------------ DTLS below

    def _pump_dtls(self, now: float) -> None:
        while (event := self._dtls.next_event()) is not None:
            if isinstance(event, ApplicationData):
                self.authenticated += 1
                self.moved = event.moved
                self._last_rx = now
                self._receive_message(event.data)
            elif isinstance(event, HandshakeComplete):
                self._on_secure(event)
            elif isinstance(event, RecordDropped):
                self.dropped += 1
            elif isinstance(event, AlertReceived):
                if event.level == 2 or event.description == 0:  # fatal, or close_notify
                    self.closed_by_peer = True
                    self._close(f"the peer sent alert {event.description}")
            elif isinstance(event, DtlsClosed):
                self.closed_by_peer = self.closed_by_peer or event.error
                self._close(event.reason, error=event.error)
            if self._state is ConnectionState.CLOSED:
                break
        self._collect()

    def _collect(self) -> None:
        self._out.extend(self._dtls.datagrams_to_send())

    def _write(self, data: bytes) -> None:
        self._dtls.send_application_data(data)
        self._collect()

    def _on_secure(self, event: HandshakeComplete) -> None:
        if self._state is not ConnectionState.HANDSHAKE:
            return
        self._peer_key = event.session.peer_key
        self._state = ConnectionState.AWAIT_HELLO
        self._events.append(events.HandshakeCompleted(self.device_id or ""))
        if self.role is Role.DEVICE and self.device_id is not None:
            first = self._random(2)
            self._tokens = type(self._tokens)(self._random(1)[0])
            self._ids = type(self._ids)(int.from_bytes(first, "big"))
            self._hello_id = self._ids.next()
            payload = self._hello.payload(bytes.fromhex(self.device_id))
            self._send_message(messages.hello(self._hello_id, payload, confirmable=True))

    # ------------------------------------------------------------------------------------------ CoAP

    def _send_message(self, msg: coap.Message) -> None:
        data = coap.encode(msg)
        if msg.type is MessageType.ACK and msg.message_id in self._seen:
            self._seen[msg.message_id] = data  # a repeated CON gets this answer again
        elif msg.type is MessageType.CON:
            self._unacked[msg.message_id] = _Unacked(data, self._now + ACK_TIMEOUT, ACK_TIMEOUT)
        if self._state is ConnectionState.CLOSED and self._dtls.state is not DtlsState.ESTABLISHED:
            return
        self._write(data)

    def _receive_message(self, data: bytes) -> None:
        try:
            msg = coap.decode(data)
        except RemoteProtocolError:
            self.dropped += 1  # an authenticated record that is not CoAP: dropped, as a bad record would be
            return
        if msg.type in (MessageType.ACK, MessageType.RST):
            self._unacked.pop(msg.message_id, None)
            if self._state is ConnectionState.AWAIT_HELLO and self.role is Role.DEVICE:
                if msg.message_id == self._hello_id and msg.type is MessageType.RST:
                    self._close("the cloud does not know this session")  # start over with a handshake
                    return
                if msg.message_id == self._hello_id and msg.type is MessageType.ACK:
                    self._state = ConnectionState.ESTABLISHED  # no server Hello needed over DTLS
                    self._handshake_deadline = None
                    self._events.append(events.ServerHelloReceived())
                return
            if self._state is not ConnectionState.ESTABLISHED:
                return
        elif msg.code != Code.EMPTY:  # a repeated ping is answered again: nothing to remember it by
            if msg.message_id in self._seen:
                answer = self._seen[msg.message_id]
                if answer is not None and msg.type is MessageType.CON:
                    self._write(answer)
                return
            self._seen[msg.message_id] = None
            if len(self._seen) > DEDUP_WINDOW:
                del self._seen[next(iter(self._seen))]
        try:
            self._dispatch(msg)
        except RemoteProtocolError as exc:
            self._failure = str(exc)
            self._close(str(exc), error=True)
            raise

    def _dispatch(self, msg: coap.Message) -> None:
        if self.role is Role.CLOUD and self._state is ConnectionState.AWAIT_HELLO:
            if self._resumed is None and not _is_hello(msg):
                raise RemoteProtocolError(f"expected a Hello, got {msg}")
            if self._resumed is not None and not _is_hello(msg):
                # Resumed without a Hello (its app state is unchanged): the stored session names the device.
                self.device_id = self._resumed.device_id
                self._held_hello = msg
                self._state = ConnectionState.AWAIT_DEVICE_KEY
                self._events.append(events.DeviceIdentified(self.device_id, self._peer_key))
                return
            p = msg.payload
            if len(p) < 22 or p[9] != 12:
                raise RemoteProtocolError("a UDP Hello without the device id")
            self.device_id = p[10:22].hex()
            self._held_hello = msg
            self._state = ConnectionState.AWAIT_DEVICE_KEY
            self._events.append(events.DeviceIdentified(self.device_id, self._peer_key))
            return
        if self.role is Role.DEVICE and messages.classify(msg) is MessageKind.HELLO:
            self._ack_if_con(msg)  # the cloud's Hello: before or after our Hello's ACK, it establishes
            if self._state is ConnectionState.AWAIT_HELLO:
                self._state = ConnectionState.ESTABLISHED
                self._handshake_deadline = None
                self._events.append(events.ServerHelloReceived())
            return
        if self.role is Role.CLOUD and self._block1(msg):
            return
        if self.role is Role.DEVICE and self._describe_asked(msg):
            return
        self._handle(msg)

    def _describe_asked(self, msg: coap.Message) -> bool:
        """
        Device role, a Describe request: a later block of an answer being served is sent from it (True);
        otherwise the application is asked (False).
        """
        if msg.code != Code.GET or messages.classify(msg) is not MessageKind.DESCRIBE:
            return False
        query = msg.uri_query
        blocks = msg.option_values(OptionNumber.BLOCK2)
        num = messages.parse_block_option(blocks[0])[0] if blocks else 0
        if num == 0:
            return False
        flags = query[0][0] if query and query[0] else int(_DEFAULT_DESCRIBE_FLAGS)
        served = self._serving.get(flags) if self._serving else None
        if served is None or num * DESCRIBE_BLOCK >= len(served[1]):
            self._send_message(messages.ack(msg.message_id, _NOT_FOUND, msg.token))
            return True
        self._send_message(messages.ack(msg.message_id))
        self._send_describe_block(msg.token, flags, num)
        return True

    def _send_describe_blockwise(self, command: commands.SendDescribe, now: float) -> int:
        """
        Device role, as Device OS ≥ 3.3: a device-initiated Describe too big for one message goes in Block1
        parts, each under a new token once the previous one's 2.31 Continue arrived; the cloud's answer to
        the last part completes the request.
        """
        if self._state is not ConnectionState.ESTABLISHED:
            raise LocalProtocolError("not connected")
        request = self._new_request(MessageKind.DESCRIBE, now)
        request.blocks = bytearray(command.payload)
        request.flags = int(command.flags)
        request.content_format = command.content_format
        self._send_describe_part(request)
        return request.request_id

    def _send_describe_part(self, request: Outstanding) -> None:
        assert request.blocks is not None
        assert request.flags is not None
        num = request.index
        part = bytes(request.blocks[num * DESCRIBE_BLOCK : (num + 1) * DESCRIBE_BLOCK])
        more = (num + 1) * DESCRIBE_BLOCK < len(request.blocks)
        msg = messages.device_describe(request.message_id, part, request.flags, request.content_format)
        block1 = ((OptionNumber.BLOCK1, messages.block_option(num, more, _DESCRIBE_SZX)),)
        self._send_message(replace(msg, token=request.token, options=msg.options + block1))

    def _continue_request(self, request: Outstanding, msg: coap.Message) -> bool:
        if request.kind is not MessageKind.DESCRIBE or self.role is not Role.DEVICE or request.blocks is None:
            return False
        if msg.code != _CONTINUE:  # the last part's answer, or a refusal: the request ends as usual
            request.blocks = None
            return False
        request.index += 1
        request.message_id = self._ids.next()
        request.token = self._tokens.next(self._requests.tokens())
        request.acked = False
        self._send_describe_part(request)
        return True

    def _serve_describe(self, command: commands.RespondDescribe) -> None:
        """Answer a Describe request too big for one message with its first block; keep it for the rest."""
        inbound = self._take_inbound(command.request_id, MessageKind.DESCRIBE)
        flags = inbound.flags if inbound.flags is not None else int(_DEFAULT_DESCRIBE_FLAGS)
        if self._serving is None:
            self._serving = {}
        etag = self._random(4)  # a new one with every answer: a cloud mixing two answers' blocks sees it
        self._serving[flags] = (etag, command.payload, command.content_format)
        if not inbound.acked:
            self._send_message(messages.ack(inbound.message_id))
        self._send_describe_block(inbound.token, flags, 0)

    def _send_describe_block(self, token: bytes, flags: int, num: int) -> None:
        assert self._serving is not None
        etag, payload, content_format = self._serving[flags]
        block = payload[num * DESCRIBE_BLOCK : (num + 1) * DESCRIBE_BLOCK]
        more = (num + 1) * DESCRIBE_BLOCK < len(payload)
        options = (
            (OptionNumber.ETAG, etag),
            (OptionNumber.BLOCK2, messages.block_option(num, more, _DESCRIBE_SZX)),
        )
        inbound = _Inbound(MessageKind.DESCRIBE, 0, token, True)
        self._answer(
            inbound,
            Code.CONTENT,
            block,
            self._now,
            confirmable=True,
            content_format=content_format,
            options=options,
        )
        if not more:
            del self._serving[flags]
            if not self._serving:
                self._serving = None

    def _block1(self, msg: coap.Message) -> bool:
        """
        A Block1 part of a device-initiated Describe (Device OS ≥ 3.3): ACK 2.31 and keep it; on the last
        block, hand the whole Describe on. True when the message was such a part.
        """
        blocks = msg.option_values(OptionNumber.BLOCK1)
        if not blocks or messages.classify(msg) is not MessageKind.DESCRIBE:
            return False
        value = coap.decode_uint(blocks[0])
        num, more, szx = value >> 4, bool(value & 0x8), value & 0x7
        size = 1 << (szx + 4)
        if num == 0:
            self._blocks.clear()
        if num * size != len(self._blocks) or len(self._blocks) + len(msg.payload) > MAX_DESCRIBE:
            self._blocks.clear()
            self._refuse(msg, _ENTITY_INCOMPLETE)
            return True
        self._blocks += msg.payload
        if more:
            if msg.type is MessageType.CON:
                self._send_message(messages.ack(msg.message_id, _CONTINUE, msg.token))
            return True
        whole = coap.Message(
            msg.type,
            msg.code,
            msg.message_id,
            msg.token,
            tuple(o for o in msg.options if o[0] != OptionNumber.BLOCK1),
            bytes(self._blocks),
        )
        self._blocks.clear()
        self._handle(whole)
        return True

    def _decide_device(self, command: commands.AcceptDevice | commands.RejectDevice, now: float) -> None:
        if self._state is not ConnectionState.AWAIT_DEVICE_KEY or self._held_hello is None:
            raise LocalProtocolError("no device is waiting for a decision")
        if isinstance(command, commands.RejectDevice):
            self._reset_held(command.reason)
            return
        key = command.public_key
        if not isinstance(key, ec.EllipticCurvePublicKey) or public_key_der(key) != self._peer_key:
            self._reset_held("the device key does not match its registered key")
            return
        held, self._held_hello = self._held_hello, None
        self._state = ConnectionState.AWAIT_HELLO
        if _is_hello(held) or self._resumed is None:
            hello = held
            self._handle(held)
        else:  # the stored Hello stands for the one a resumed device skips; then what it did send
            hello = coap.Message(MessageType.NON, Code.POST, 0, b"", (), self._resumed.hello)
            self._on_hello(hello)
            self._handle(held)
        #: The payload of the Hello this session runs on (what a session store keeps).
        self.hello_payload = hello.payload
        platform = int.from_bytes(hello.payload[6:8], "big") if len(hello.payload) >= 8 else None
        self._timing = replace(self._timing, idle_timeout=idle_timeout_for(platform))
        self._collect()

    def _reset_held(self, reason: str) -> None:
        """Refuse the device: RST its Hello (Device OS then discards the session) and close."""
        hello, self._held_hello = self._held_hello, None
        if hello is not None:
            self._write(coap.encode(coap.Message(MessageType.RST, Code.EMPTY, hello.message_id)))
        self._close(reason)

    def _close(self, reason: str, *, error: bool = False) -> None:
        if self._state is ConnectionState.CLOSED:
            return
        super()._close(reason, error=error)
        self._unacked.clear()
        if self._dtls.state is not DtlsState.CLOSED:
            self._dtls.close()
        self._collect()


def _is_hello(msg: coap.Message) -> bool:
    return code_class(msg.code) == 0 and messages.classify(msg) is MessageKind.HELLO
