"""
One device connection, either role, as a sans-IO state machine (h11 / aioquic style).

Theory of operation:
    The I/O adapter feeds received bytes with ``receive_data(data, now)`` (``b""`` = the peer closed), drains
    ``next_event()`` until it returns :class:`NEED_DATA`, gives commands with ``send(command, now)``, writes
    ``data_to_send()`` to the socket and re-arms one timer at ``get_timer()``, calling ``handle_timer(now)``
    when it fires. Nothing here reads a clock, sleeps, logs or touches a socket.

    States (both roles)::

        HANDSHAKE ──(cloud: device block ok)──> AWAIT_DEVICE_KEY ──AcceptDevice──> AWAIT_HELLO
        HANDSHAKE ──(device: reply verified)──────────────────────────────────────> AWAIT_HELLO
        AWAIT_HELLO ──(Hello received)──> ESTABLISHED
        any ──(EOF, Close, RejectDevice, timeout, RemoteProtocolError)──> CLOSED

    Rules the connection keeps by itself:

    - it answers what needs no application decision: the server Hello, empty ACKs to every CON the peer sends
      (pings, subscribes, ChunkMissed, 2.x Describe), the device's Signal ACK. A CON event is the
      exception: the application accepts or refuses it (``AcknowledgeEvent``), as it answers ``GetTime``;
    - cloud role: every non-ACK device message after the Hello must carry the previous id + 1 ("Bad Counter";
      see :mod:`~devicecloud.protocol.reliability` for the 0.7 fresh-id ACK quirk);
    - outgoing requests are matched with their answers by token / message id, both response styles: a
      piggy-backed ACK with payload (0.x–1.4), or an empty ACK followed by a separate NON/CON response
      (1.5+/2.x);
    - each request has a deadline (``Timing.request_timeout``) and yields ``RequestTimedOut`` when it passes;
    - keep-alive: after ``ping_after`` seconds without receiving anything it sends a ping; after
      ``idle_timeout``
      seconds without receiving anything the link is declared dead (``ConnectionClosed``).

    Any bad peer bytes raise :class:`RemoteProtocolError` from ``receive_data`` and close the connection; the
    ``ConnectionClosed`` event (and ``RequestFailed`` for pending requests) stays queued for ``next_event()``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace

from cryptography.hazmat.primitives.asymmetric import rsa

from devicecloud.protocol import coap, commands, events, messages, ota3_messages, ota_requests
from devicecloud.protocol.codes import (
    Code,
    DescribeFlags,
    MessageKind,
    MessageType,
    OptionNumber,
    SubscriptionScope,
    code_class,
    code_str,
)
from devicecloud.protocol.config import (
    CLOUD_TIMING,
    DEVICE_TIMING,
    ConnectionState,
    DeviceHello,
    ResponseStyle,
    Role,
    Timing,
)
from devicecloud.protocol.crypto import RandomBytes, SessionCipher, SessionKeys
from devicecloud.protocol.describe import parse_describe
from devicecloud.protocol.diagnostics import is_binary_describe, parse_diagnostics
from devicecloud.protocol.errors import LocalProtocolError, RemoteProtocolError
from devicecloud.protocol.events import NEED_DATA, Event
from devicecloud.protocol.framing import ReceiveBuffer, frame
from devicecloud.protocol.handshake import CloudHandshake, DeviceHandshake, HandshakeState
from devicecloud.protocol.rawsign import RawSigner
from devicecloud.protocol.reliability import (
    MessageIdCounter,
    Outstanding,
    PeerMessageIds,
    RequestTable,
    TokenCounter,
)
from devicecloud.protocol.variables import decode_variable, encode_variable

__all__ = [
    "CLOUD_TIMING",
    "DEVICE_TIMING",
    "CoapSession",
    "Connection",
    "ConnectionState",
    "DeviceHello",
    "ResponseStyle",
    "Role",
    "Timing",
]


@dataclass
class _Inbound:
    """A peer request waiting for the application's answer."""

    kind: MessageKind
    message_id: int
    token: bytes
    acked: bool
    flags: int | None = None  # a Describe request's flags (a blockwise answer is served by them)


# Requests whose empty ACK is the whole answer, per role.
_DONE_ON_EMPTY_ACK = {
    Role.CLOUD: frozenset({MessageKind.PING, MessageKind.SIGNAL, MessageKind.EVENT, MessageKind.KEY_CHANGE}),
    Role.DEVICE: frozenset(
        {
            MessageKind.PING,
            MessageKind.EVENT,
            MessageKind.SUBSCRIBE,
            MessageKind.DESCRIBE,
            MessageKind.CHUNK_MISSED,
            MessageKind.UPDATE_FINISH,  # OTA v3: the cloud's ACK of our 2.04 is all that follows
        }
    ),
}


# What the cloud sends a device during an update; `ota_requests` reads them.
_OTA_REQUESTS = frozenset(
    {MessageKind.UPDATE_BEGIN, MessageKind.SAVE_BEGIN, MessageKind.CHUNK, MessageKind.UPDATE_DONE}
)

# OTA protocol v3 (Gen3 on Device OS ≥ 3.0); `ota3_messages` reads them.
_OTA3_REQUESTS = frozenset({MessageKind.UPDATE_START, MessageKind.UPDATE_CHUNK, MessageKind.UPDATE_FINISH})
_OTA3_ANSWERED = frozenset({MessageKind.UPDATE_START, MessageKind.UPDATE_FINISH})

_DEFAULT_DESCRIBE_FLAGS = DescribeFlags.SYSTEM | DescribeFlags.APPLICATION
METRICS = int(DescribeFlags.METRICS)


def _content_format(msg: coap.Message) -> int | None:
    """The message's Content-Format option, if it has one (a Device OS ≥ 5.5 system Describe: 42)."""
    values = msg.option_values(OptionNumber.CONTENT_FORMAT)
    return coap.decode_uint(values[0]) if values else None


def _utf8(raw: bytes) -> tuple[str, bool]:
    """
    Text from the peer, strictly: (the text, True), or (U+FFFD where bytes are not UTF-8, False).
    """
    try:
        return raw.decode("utf-8"), True
    except UnicodeDecodeError:
        return raw.decode("utf-8", "replace"), False


def _hello_limits(p: bytes) -> dict[str, int]:
    """
    Device OS ≥ 3.0 Hello (20 bytes over TCP, no device id; 32 over UDP, with it): after the platform,
    reserved u8, id length u8 (0 or 12) and the id, system version u16, max message size u16, max binary
    size u32, OTA chunk size u16 (all BE).
    """
    if len(p) < 20 or p[9] not in (0, 12) or len(p) < 20 + p[9]:
        return {}
    at = 10 + p[9]
    return {
        "system_version": int.from_bytes(p[at : at + 2], "big"),
        "max_binary": int.from_bytes(p[at + 4 : at + 8], "big"),
        "ota_chunk_size": int.from_bytes(p[at + 8 : at + 10], "big"),
    }


def _device_id_bytes(device_id: bytes | str) -> bytes:
    if isinstance(device_id, str):
        try:
            device_id = bytes.fromhex(device_id)
        except ValueError as exc:
            raise LocalProtocolError("device id must be 24 hex characters") from exc
    if len(device_id) != 12:
        raise LocalProtocolError("device id must be 12 bytes")
    return device_id


class CoapSession:
    """
    The transport-neutral part of a Particle protocol session, either role: CoAP messages, ids and tokens,
    requests and their answers, the Hello, Describe, events, OTA requests, keep-alive and deadlines.

    A transport front subclasses it (`Connection`: TCP framing, the RSA handshake and AES-CBC;
    `protocol.udp.UdpSession`: DTLS records) and supplies ``receive_data``, ``data_to_send``,
    ``_send_message`` (one CoAP message out) and ``_decide_device`` (the answer to ``DeviceIdentified``);
    it hands each decoded CoAP message to ``_handle``. What the gateway and the virtual device use is this
    class's surface: ``state``, ``device_id``, ``receive_data``, ``next_event``, ``send``, ``data_to_send``,
    ``get_timer``, ``handle_timer``.
    """

    #: Over UDP (CoAP over DTLS) the device role sends its separate responses CON, as Device OS does.
    # Slots: a session per idle device (issue 13's RSS budget); ``__dict__`` keeps attributes added later
    # (and a subclass's) working, in a dict made on first use.
    __slots__ = (
        "__dict__",
        "_check_ids",
        "_events",
        "_failure",
        "_handshake_deadline",
        "_hello",
        "_ids",
        "_inbound",
        "_last_ping",
        "_last_rx",
        "_next_request_id",
        "_peer_ids",
        "_random",
        "_requests",
        "_state",
        "_timing",
        "_tokens",
        "device_id",
        "response_style",
        "role",
    )

    unreliable = False

    def __init__(
        self,
        role: Role,
        *,
        now: float,
        hello: DeviceHello | None = None,
        response_style: ResponseStyle = ResponseStyle.PIGGYBACK,
        timing: Timing | None = None,
        random_bytes: RandomBytes = os.urandom,
        check_message_ids: bool = True,
    ) -> None:
        self.role = role
        self.response_style = response_style
        self._timing = timing or (CLOUD_TIMING if role is Role.CLOUD else DEVICE_TIMING)
        self._random = random_bytes
        self._check_ids = check_message_ids
        self._hello = hello or DeviceHello()
        self._state = ConnectionState.HANDSHAKE
        self._events: list[Event] = []  # a list: an empty deque costs ~600 bytes per idle session
        self._ids = MessageIdCounter(0)
        self._tokens = TokenCounter(1)
        self._peer_ids: PeerMessageIds | None = None
        self._requests = RequestTable()
        self._inbound: dict[int, _Inbound] = {}
        self._next_request_id = 1
        self._last_rx = now
        self._last_ping = now
        t = self._timing.handshake_timeout
        self._handshake_deadline: float | None = now + t if t is not None else None
        self._failure: str | None = None
        self.device_id: str | None = None

    # ------------------------------------------------------------------------------------------ transport

    def receive_data(self, data: bytes, now: float) -> None:
        """
        Feed what the transport received (TCP: bytes, ``b""`` = the peer closed; UDP: one datagram).

        Raises:
            RemoteProtocolError: the peer broke the protocol; the session is now closed.
        """
        raise NotImplementedError

    def data_to_send(self) -> bytes:
        """
        The next output to write, and forget it: TCP returns every pending byte at once, UDP one datagram per
        call. Call until it returns ``b""``.
        """
        raise NotImplementedError

    def _send_message(self, msg: coap.Message) -> None:
        raise NotImplementedError

    def _decide_device(self, command: commands.AcceptDevice | commands.RejectDevice, now: float) -> None:
        raise LocalProtocolError("no device is waiting for a decision")

    # ------------------------------------------------------------------------------------------ public API

    @property
    def state(self) -> ConnectionState:
        """The current state."""
        return self._state

    def next_event(self) -> Event | type[NEED_DATA]:
        """
        The next event, or :class:`NEED_DATA` if there is none.

        Returns:
            An event instance or the ``NEED_DATA`` class.
        """
        return self._events.pop(0) if self._events else NEED_DATA

    def get_timer(self) -> float | None:
        """
        When ``handle_timer`` should next be called.

        Returns:
            An absolute time on the caller's clock, or ``None`` if nothing is scheduled.
        """
        state = self._state
        if state is ConnectionState.CLOSED:
            return None
        # Called after every message in and out: no lists.
        earliest = self._handshake_deadline
        if self._requests:
            deadline = self._requests.next_deadline()
            if deadline is not None and (earliest is None or deadline < earliest):
                earliest = deadline
        if state is ConnectionState.ESTABLISHED:
            for due in (self._ping_due(), self._idle_deadline()):
                if due is not None and (earliest is None or due < earliest):
                    earliest = due
        return earliest

    def handle_timer(self, now: float) -> None:
        """Act on every deadline that has passed by ``now`` (timeouts, keep-alive pings, a dead link)."""
        if self._state is ConnectionState.CLOSED:
            return
        if self._handshake_deadline is not None and now >= self._handshake_deadline:
            self._close("handshake timed out")
            return
        idle = self._idle_deadline()
        if idle is not None and now >= idle:
            self._close(f"nothing received for {self._timing.idle_timeout} s")
            return
        for request in self._requests.expired(now):
            if not request.internal:
                self._events.append(events.RequestTimedOut(request.request_id))
        ping_due = self._ping_due()
        if ping_due is not None and now >= ping_due:
            self._last_ping = now
            request = self._new_request(MessageKind.PING, now, token=False, internal=True)
            request.deadline = now + self._timing.ping_after if self._timing.ping_after else None
            self._send_message(messages.ping(request.message_id))

    def send(self, command: commands.Command, now: float) -> int | None:
        """
        Carry out a command.

        Returns:
            The request id that the result event will carry, or ``None`` for fire-and-forget commands.

        Raises:
            LocalProtocolError: the command is not valid for this role or state.
        """
        if self._state is ConnectionState.CLOSED:
            raise LocalProtocolError("the connection is closed")
        if isinstance(command, commands.Close):
            self._close(command.reason)
            return None
        if isinstance(command, commands.AcceptDevice | commands.RejectDevice):
            self._decide_device(command, now)
            return None
        if self._state is not ConnectionState.ESTABLISHED:
            raise LocalProtocolError(f"cannot send {type(command).__name__} in state {self._state.value}")
        if isinstance(command, commands.Ping):
            request = self._new_request(MessageKind.PING, now, token=False)
            self._send_message(messages.ping(request.message_id))
            return request.request_id
        if self.role is Role.CLOUD:
            return self._send_cloud(command, now)
        return self._send_device(command, now)

    # ------------------------------------------------------------------------------------------ receiving

    def _handle(self, msg: coap.Message) -> None:
        if self._state is ConnectionState.AWAIT_HELLO:
            if code_class(msg.code) != 0 or messages.classify(msg) is not MessageKind.HELLO:
                raise RemoteProtocolError(f"expected a Hello, got {msg}")
            self._on_hello(msg)
            return
        if msg.type in (MessageType.ACK, MessageType.RST):
            self._on_ack(msg)
            return
        if msg.code == Code.EMPTY:
            if msg.type is MessageType.CON:  # a ping: ACK it; it advances the counter unchecked
                if self._peer_ids is not None:
                    self._peer_ids.accept(msg.message_id)
                self._send_message(messages.ack(msg.message_id))
                self._events.append(events.PingReceived())
            return
        if self._peer_ids is not None:
            self._peer_ids.check(msg.message_id)
        cls = code_class(msg.code)
        if cls >= 2:
            self._on_separate_response(msg)
        elif cls == 0:
            kind = messages.classify(msg)
            if self.role is Role.CLOUD:
                self._on_device_request(kind, msg)
            else:
                self._on_cloud_request(kind, msg)
        else:
            raise RemoteProtocolError(f"unexpected code {code_str(msg.code)}")

    def _on_hello(self, msg: coap.Message) -> None:
        self._state = ConnectionState.ESTABLISHED
        self._handshake_deadline = None
        if self.role is Role.DEVICE:
            self._events.append(events.ServerHelloReceived())
            return
        p = msg.payload
        if self._check_ids:
            self._peer_ids = PeerMessageIds(msg.message_id)
        first_id = self._random(2)
        first_token = self._random(1)
        if len(first_id) != 2 or len(first_token) != 1:
            raise LocalProtocolError("random_bytes returned the wrong number of bytes")
        self._ids = MessageIdCounter(int.from_bytes(first_id, "big"))
        self._tokens = TokenCounter(first_token[0])
        if msg.type is MessageType.CON:
            self._send_message(messages.ack(msg.message_id))
        self._send_message(messages.hello(self._ids.next()))
        self._events.append(
            events.HelloReceived(
                product_id=int.from_bytes(p[0:2], "big") if len(p) >= 2 else None,
                product_firmware_version=int.from_bytes(p[2:4], "big") if len(p) >= 4 else None,
                flags=p[5] if len(p) >= 6 else 0,
                platform_id=int.from_bytes(p[6:8], "big") if len(p) >= 8 else None,
                **_hello_limits(p),
            )
        )

    def _on_ack(self, msg: coap.Message) -> None:
        request = self._requests.match(msg.token, msg.message_id, msg.is_empty)
        peer = self._peer_ids
        if (
            peer is not None
            and msg.type is MessageType.ACK
            and (request is None or request.message_id != msg.message_id)
            and msg.message_id == peer.expected
        ):
            peer.accept(msg.message_id)  # Device OS 0.7 ACKs Signal and pings with a fresh id
        if request is None:
            return  # late (timed out) or unknown: nothing to do
        if msg.type is MessageType.RST:
            self._requests.remove(request)
            self._fail(request, None, "reset by peer")
        elif msg.is_empty and request.kind not in _DONE_ON_EMPTY_ACK[self.role]:
            request.acked = True  # the separate response follows
        else:
            self._on_result(request, msg)

    def _on_separate_response(self, msg: coap.Message) -> None:
        if msg.type is MessageType.CON:
            self._send_message(messages.ack(msg.message_id))
        request = self._requests.by_token(msg.token) if msg.token else None
        if request is not None:
            self._on_result(request, msg)

    def _continue_request(self, request: Outstanding, msg: coap.Message) -> bool:
        """
        Whether ``msg`` only lets a request we send in parts go on (`UdpSession`: a Block1 Describe's
        2.31 Continue); the request then stays outstanding.
        """
        return False

    def _on_result(self, request: Outstanding, msg: coap.Message) -> None:
        if self._continue_request(request, msg):
            return
        if request.kind is MessageKind.DESCRIBE and self.role is Role.CLOUD and not request.internal:
            whole = self._describe_block(request, msg)
            if whole is None:
                return
            msg = whole
        self._requests.remove(request)
        if request.internal:
            return
        rid = request.request_id
        ok = code_class(msg.code) == 2 or msg.code == Code.EMPTY
        if request.kind in _OTA3_ANSWERED and self.role is Role.CLOUD:
            self._events.append(ota3_messages.answer_event(rid, request.kind, msg))
        elif request.kind is MessageKind.CHUNK:
            self._events.append(events.ChunkReceived(rid, request.index, ok))
        elif not ok:
            self._fail(request, msg.code, f"peer answered {code_str(msg.code)}")
        elif request.kind is MessageKind.FUNCTION_CALL and self.role is Role.CLOUD:
            if len(msg.payload) != 4:
                self._fail(request, msg.code, f"function result of {len(msg.payload)} bytes")
                return
            value = int.from_bytes(msg.payload, "big", signed=True)
            self._events.append(events.FunctionReturned(rid, value))
        elif request.kind is MessageKind.VARIABLE_REQUEST:
            try:
                data = decode_variable(request.var_type, msg.payload) if request.var_type else None
            except RemoteProtocolError as exc:
                self._fail(request, msg.code, str(exc))
                return
            self._events.append(events.VariableValue(rid, request.name, request.var_type, data, msg.payload))
        elif request.kind is MessageKind.DESCRIBE and self.role is Role.CLOUD and request.flags == METRICS:
            try:
                report = parse_diagnostics(msg.payload)
            except RemoteProtocolError as exc:
                self._fail(request, msg.code, str(exc))
                return
            self._events.append(events.DiagnosticsReceived(rid, report))
        elif request.kind is MessageKind.DESCRIBE and self.role is Role.CLOUD:
            try:
                description = parse_describe(msg.payload, _content_format(msg))
            except RemoteProtocolError as exc:
                self._fail(request, msg.code, str(exc))
                return
            flags = DescribeFlags(request.flags) if request.flags is not None else None
            self._events.append(events.DescribeReceived(rid, flags, description))
        elif request.kind is MessageKind.UPDATE_BEGIN:
            self._events.append(events.UpdateReady(rid, bool(msg.payload[:1]) and bool(msg.payload[0] & 1)))
        elif request.kind is MessageKind.UPDATE_DONE:
            self._events.append(events.UpdateFinished(rid, msg.payload))
        elif request.kind is MessageKind.GET_TIME and self.role is Role.DEVICE:
            if len(msg.payload) != 4:
                self._fail(request, msg.code, f"time of {len(msg.payload)} bytes")
                return
            self._events.append(events.TimeReceived(rid, int.from_bytes(msg.payload, "big")))
        else:
            self._events.append(events.RequestCompleted(rid, msg.code))

    def _describe_block(self, request: Outstanding, msg: coap.Message) -> coap.Message | None:
        """
        A Describe too big for one message comes back blockwise (Device OS ≥ 3.3: ETag + Block2 on each
        block): ask for the next block with the same query and the device's block size (it refuses any
        other), under a new token, until the last; then the whole Describe stands for the answer. ``None``
        while blocks are still due, or when the transfer failed (the request is then failed).
        """
        blocks = msg.option_values(OptionNumber.BLOCK2)
        if not blocks or code_class(msg.code) != 2:
            return msg
        num, more, size = messages.parse_block_option(blocks[0])
        etags = msg.option_values(OptionNumber.ETAG)
        etag = etags[0] if etags else b""
        if num == 0:
            request.blocks, request.etag = bytearray(), etag
        gathered = request.blocks
        problem = None
        if gathered is None or num * size != len(gathered) or etag != request.etag:
            problem = "describe blocks out of order, or the describe changed meanwhile"
        elif len(gathered) + len(msg.payload) > messages.MAX_DESCRIBE or (more and len(msg.payload) != size):
            problem = "describe blocks too big or short"
        if problem is not None or gathered is None:
            self._requests.remove(request)
            self._fail(request, msg.code, problem or "")
            return None
        gathered += msg.payload
        if more:
            request.message_id = self._ids.next()
            request.token = self._tokens.next(self._requests.tokens())
            request.acked = False
            block2 = messages.block_option(num + 1, False, size.bit_length() - 5)
            self._send_message(
                messages.describe_request(request.message_id, request.token, request.flags, block2=block2)
            )
            return None
        options = tuple(o for o in msg.options if o[0] not in (OptionNumber.BLOCK2, OptionNumber.ETAG))
        request.blocks = None
        return coap.Message(msg.type, msg.code, msg.message_id, msg.token, options, bytes(gathered))

    def _fail(self, request: Outstanding, code: int | None, reason: str) -> None:
        if not request.internal:
            self._events.append(events.RequestFailed(request.request_id, code, reason))

    # ---- cloud role: requests from the device

    def _on_device_request(self, kind: MessageKind | None, msg: coap.Message) -> None:
        if kind is MessageKind.EVENT:
            raw_path = msg.option_values(OptionNumber.URI_PATH)
            raw_name = b"/".join(raw_path[1:])
            if not raw_name:
                raise RemoteProtocolError("event without a name")
            name, name_utf8 = _utf8(raw_name)
            max_age = msg.option_values(OptionNumber.MAX_AGE)
            confirmable = msg.type is MessageType.CON
            # A CON event waits for the application's AcknowledgeEvent (accepted, or refused: rate limit).
            rid = self._inbound_request(kind, msg, acked=False) if confirmable else None
            self._events.append(
                events.EventPublished(
                    name=name,
                    data=msg.payload or None,
                    private=raw_path[0] == b"E",
                    ttl=coap.decode_uint(max_age[0]) if max_age else messages.DEFAULT_EVENT_TTL,
                    confirmable=confirmable,
                    request_id=rid,
                    name_utf8=name_utf8,
                )
            )
        elif kind is MessageKind.SUBSCRIBE:
            self._ack_if_con(msg)
            prefix = "/".join(msg.uri_path[1:])
            if b"u" in msg.uri_query:
                sub = events.SubscribeRequested(prefix, SubscriptionScope.MY_DEVICES)
            elif msg.payload:
                device = msg.payload.decode("utf-8", "replace")
                sub = events.SubscribeRequested(prefix, SubscriptionScope.DEVICE, device)
            else:
                sub = events.SubscribeRequested(prefix, SubscriptionScope.ALL_DEVICES)
            self._events.append(sub)
        elif kind is MessageKind.GET_TIME:
            rid = self._inbound_request(kind, msg, acked=False)
            self._events.append(events.TimeRequested(rid))
        elif kind is MessageKind.DESCRIBE:  # 2.x device-initiated
            self._ack_if_con(msg)
            query = msg.uri_query
            flags = DescribeFlags(query[0][0]) if query and len(query[0]) == 1 else None
            if is_binary_describe(msg.payload):  # Particle.publishVitals(): POST /d?\x04, binary
                self._events.append(events.DiagnosticsReceived(None, parse_diagnostics(msg.payload)))
            else:
                description = parse_describe(msg.payload, _content_format(msg))
                self._events.append(events.DescribeReceived(None, flags, description))
        elif kind is MessageKind.CHUNK_MISSED:
            self._ack_if_con(msg)
            if len(msg.payload) % 2:
                raise RemoteProtocolError("ChunkMissed payload of odd length")
            p = msg.payload
            indices = tuple(int.from_bytes(p[i : i + 2], "big") for i in range(0, len(p), 2))
            self._events.append(events.ChunksMissed(indices))
        elif kind is MessageKind.UPDATE_DONE:  # fast OTA: the device reports the result on its own
            self._ack_if_con(msg)
            pending = self._requests.take_kind(MessageKind.UPDATE_DONE)
            done_id = pending.request_id if pending is not None else None
            self._events.append(events.UpdateFinished(done_id, msg.payload))
        elif kind is MessageKind.UPDATE_ACK:  # OTA v3: NON; dropped when malformed, like a lost datagram
            self._ack_if_con(msg)
            acked = ota3_messages.cloud_event(msg)
            if acked is not None:
                self._events.append(acked)
        elif kind is MessageKind.GOODBYE:
            self._ack_if_con(msg)
            self._events.append(events.GoodbyeReceived(msg.payload))
        elif kind is MessageKind.HELLO:
            self._ack_if_con(msg)  # a repeated Hello changes nothing
        else:
            self._refuse(msg, Code.NOT_FOUND)

    # ---- device role: requests from the cloud

    def _on_cloud_request(self, kind: MessageKind | None, msg: coap.Message) -> None:
        path = msg.uri_path
        separate = self.response_style is ResponseStyle.SEPARATE
        if kind is MessageKind.FUNCTION_CALL and len(path) >= 2:
            rid = self._inbound_request(kind, msg, acked=True)
            query = msg.uri_query
            argument = query[0] if query else b""
            self._events.append(events.FunctionCallRequested(rid, "/".join(path[1:]), argument))
        elif kind is MessageKind.VARIABLE_REQUEST and len(path) >= 2:
            rid = self._inbound_request(kind, msg, acked=separate)
            self._events.append(events.VariableRequested(rid, "/".join(path[1:])))
        elif kind is MessageKind.DESCRIBE:
            query = msg.uri_query
            flags = DescribeFlags(query[0][0]) if query and query[0] else _DEFAULT_DESCRIBE_FLAGS
            rid = self._inbound_request(kind, msg, acked=separate)
            self._inbound[rid].flags = int(flags)
            self._events.append(events.DescribeRequested(rid, flags))
        elif kind is MessageKind.SIGNAL:
            self._send_message(messages.ack(msg.message_id, Code.CHANGED, msg.token))
            self._events.append(events.SignalRequested(msg.uri_query[:1] == (b"\x01",)))
        elif kind is MessageKind.EVENT and len(path) >= 2:
            # Over TCP the device never ACKs events, not even CON ones.
            name = "/".join(path[1:])
            max_age = msg.option_values(OptionNumber.MAX_AGE)
            ttl = coap.decode_uint(max_age[0]) if max_age else messages.DEFAULT_EVENT_TTL
            self._events.append(events.EventReceived(name, msg.payload or None, path[0] == "E", ttl))
        elif kind is MessageKind.HELLO:
            pass
        elif kind in _OTA_REQUESTS:
            self._events.append(ota_requests.device_event(kind, msg, self._inbound_request))
        elif kind in _OTA3_REQUESTS:
            if kind is MessageKind.UPDATE_CHUNK:
                self._ack_if_con(msg)
            event = ota3_messages.device_event(kind, msg, self._inbound_request)
            if event is not None:
                self._events.append(event)
        elif kind is MessageKind.KEY_CHANGE:
            self._ack_if_con(msg)
        else:
            self._refuse(msg, Code.NOT_FOUND)

    def _ack_if_con(self, msg: coap.Message) -> None:
        if msg.type is MessageType.CON:
            self._send_message(messages.ack(msg.message_id))

    def _refuse(self, msg: coap.Message, code: int) -> None:
        if msg.type is MessageType.CON:
            self._send_message(messages.ack(msg.message_id, code, msg.token))

    def _inbound_request(self, kind: MessageKind, msg: coap.Message, *, acked: bool) -> int:
        if acked:
            self._send_message(messages.ack(msg.message_id))
        rid = self._allocate_request_id()
        self._inbound[rid] = _Inbound(kind, msg.message_id, msg.token, acked)
        return rid

    # ------------------------------------------------------------------------------------------ sending

    def _allocate_request_id(self) -> int:
        rid = self._next_request_id
        self._next_request_id += 1
        return rid

    def _new_request(
        self, kind: MessageKind, now: float, *, token: bool = True, internal: bool = False
    ) -> Outstanding:
        timeout = self._timing.request_timeout
        request = Outstanding(
            request_id=self._allocate_request_id(),
            kind=kind,
            message_id=self._ids.next(),
            token=self._tokens.next(self._requests.tokens()) if token else b"",
            deadline=now + timeout if timeout is not None else None,
            internal=internal,
        )
        self._requests.add(request)
        return request

    def _send_cloud(self, command: commands.Command, now: float) -> int | None:
        c = command
        if isinstance(c, commands.CallFunction):
            if not c.name:
                raise LocalProtocolError("function name must not be empty")
            r = self._new_request(MessageKind.FUNCTION_CALL, now)
            r.name = c.name
            self._send_message(messages.function_call(r.message_id, r.token, c.name, c.argument))
        elif isinstance(c, commands.ReadVariable):
            if not c.name:
                raise LocalProtocolError("variable name must not be empty")
            r = self._new_request(MessageKind.VARIABLE_REQUEST, now)
            r.name, r.var_type = c.name, c.var_type
            self._send_message(messages.variable_request(r.message_id, r.token, c.name))
        elif isinstance(c, commands.RequestDescribe):
            if c.flags is not None and not 0 <= c.flags <= 255:
                raise LocalProtocolError("describe flags must fit in one byte")
            r = self._new_request(MessageKind.DESCRIBE, now)
            r.flags = None if c.flags is None else int(c.flags)
            self._send_message(messages.describe_request(r.message_id, r.token, r.flags))
        elif isinstance(c, commands.Signal):
            r = self._new_request(MessageKind.SIGNAL, now)
            self._send_message(messages.signal(r.message_id, r.token, c.on))
        elif isinstance(c, commands.SendEvent):
            max_age = coap.encode_uint(c.max_age) if c.max_age is not None else None
            msg = messages.event(
                self._ids.next(), c.name, c.data, private=c.private, max_age=max_age, split_path=c.split_path
            )
            self._send_message(msg)
            return None
        elif isinstance(c, commands.AcknowledgeEvent):
            inbound = self._take_inbound(c.request_id, MessageKind.EVENT)
            code = Code.EMPTY if c.accepted else messages.EVENT_SLOWDOWN
            self._send_message(messages.ack(inbound.message_id, code, inbound.token))
            return None
        elif isinstance(c, commands.SendTime):
            inbound = self._take_inbound(c.request_id, MessageKind.GET_TIME)
            if not 0 <= c.unix_time <= 0xFFFFFFFF:
                raise LocalProtocolError("unix time must fit in a uint32")
            payload = c.unix_time.to_bytes(4, "big")
            self._send_message(messages.ack(inbound.message_id, Code.CONTENT, inbound.token, payload))
            return None
        elif isinstance(c, commands.BeginUpdate):
            r = self._new_request(MessageKind.UPDATE_BEGIN, now)
            self._send_message(
                messages.update_begin(
                    r.message_id,
                    r.token,
                    fast=c.fast,
                    chunk_size=c.chunk_size,
                    file_length=c.file_length,
                    store=c.store,
                    address=c.address,
                )
            )
        elif isinstance(c, commands.SendChunk):
            if c.fast:  # fast OTA chunks get no reply: not tracked
                mid, token = self._ids.next(), self._tokens.next(self._requests.tokens())
                msg = messages.chunk(mid, token, c.data, index=c.index, crc32=c.crc32)
                if self.unreliable:  # over UDP NON: a CON nobody ACKs would be retransmitted (§A.2)
                    msg = replace(msg, type=MessageType.NON)
                self._send_message(msg)
                return None
            r = self._new_request(MessageKind.CHUNK, now)
            r.index = c.index
            self._send_message(messages.chunk(r.message_id, r.token, c.data, index=None, crc32=c.crc32))
        elif isinstance(c, commands.FinishUpdate):
            r = self._new_request(MessageKind.UPDATE_DONE, now)
            self._send_message(messages.update_done(r.message_id, r.token))
        elif isinstance(c, commands.StartUpdateV3):
            r = self._new_request(MessageKind.UPDATE_START, now)
            self._send_message(
                ota3_messages.update_start(
                    r.message_id,
                    r.token,
                    file_size=c.file_size,
                    chunk_size=c.chunk_size,
                    sha256=c.sha256,
                    discard=c.discard,
                    module_function=c.module_function,
                )
            )
        elif isinstance(c, commands.SendUpdateChunk):  # NON, untracked: UpdateAcks say what arrived
            self._send_message(ota3_messages.update_chunk(self._ids.next(), c.index, c.data))
            return None
        elif isinstance(c, commands.FinishUpdateV3):
            r = self._new_request(MessageKind.UPDATE_FINISH, now)
            self._send_message(
                ota3_messages.update_finish(r.message_id, r.token, discard=c.discard, cancel=c.cancel)
            )
        else:
            raise LocalProtocolError(f"{type(c).__name__} is not a cloud-role command")
        return r.request_id

    def _send_device(self, command: commands.Command, now: float) -> int | None:
        c = command
        if isinstance(c, commands.PublishEvent):
            if not 0 <= c.ttl <= 0xFFFFFF:
                raise LocalProtocolError("ttl must fit in 3 bytes")
            max_age = messages.device_event_max_age(c.ttl)
            if not c.with_ack:
                msg = messages.event(self._ids.next(), c.name, c.data, private=c.private, max_age=max_age)
                self._send_message(msg)
                return None
            r = self._new_request(MessageKind.EVENT, now, token=False)
            msg = messages.event(
                r.message_id, c.name, c.data, private=c.private, max_age=max_age, confirmable=True
            )
            self._send_message(msg)
        elif isinstance(c, commands.Subscribe):
            r = self._new_request(MessageKind.SUBSCRIBE, now, token=False)
            self._send_message(
                messages.subscribe(
                    r.message_id,
                    c.prefix,
                    my_devices=c.scope is SubscriptionScope.MY_DEVICES,
                    device_id=c.device_id if c.scope is SubscriptionScope.DEVICE else None,
                )
            )
        elif isinstance(c, commands.RequestTime):
            r = self._new_request(MessageKind.GET_TIME, now)
            self._send_message(messages.time_request(r.message_id, r.token))
        elif isinstance(c, commands.SendDescribe):
            r = self._new_request(MessageKind.DESCRIBE, now, token=False)
            self._send_message(
                messages.device_describe(r.message_id, c.payload, int(c.flags), c.content_format)
            )
        elif isinstance(c, commands.RespondFunction):
            inbound = self._take_inbound(c.request_id, MessageKind.FUNCTION_CALL)
            if not -(2**31) <= c.return_value < 2**31:
                raise LocalProtocolError("return value must fit in an int32")
            payload = c.return_value.to_bytes(4, "big", signed=True)
            self._send_message(
                messages.response(
                    self._ids.next(), Code.CHANGED, inbound.token, payload, confirmable=self.unreliable
                )
            )
            return None
        elif isinstance(c, commands.RespondVariable):
            inbound = self._take_inbound(c.request_id, MessageKind.VARIABLE_REQUEST)
            self._answer(inbound, Code.CONTENT, encode_variable(c.var_type, c.value), now)
            return None
        elif isinstance(c, commands.RespondDescribe):
            inbound = self._take_inbound(c.request_id, MessageKind.DESCRIBE)
            self._answer(
                inbound, Code.CONTENT, c.payload, now, confirmable=True, content_format=c.content_format
            )
            return None
        elif isinstance(c, commands.RejectRequest):
            inbound = self._take_inbound(c.request_id, None)
            self._answer(inbound, int(c.code), b"", now)
            return None
        elif isinstance(c, commands.AcceptUpdate):
            inbound = self._take_inbound(c.request_id, MessageKind.UPDATE_BEGIN)
            self._send_message(messages.ack(inbound.message_id))
            flags = bytes([1 if c.fast else 0])
            self._send_message(messages.response(self._ids.next(), Code.CHANGED, inbound.token, flags))
            return None
        elif isinstance(c, commands.RespondChunk):
            inbound = self._take_inbound(c.request_id, MessageKind.CHUNK)
            self._answer(inbound, Code.CHANGED if c.ok else Code.BAD_REQUEST, b"", now)
            return None
        elif isinstance(c, commands.RespondUpdateDone):
            inbound = self._take_inbound(c.request_id, MessageKind.UPDATE_DONE)
            self._answer(inbound, Code.CHANGED, c.payload, now)
            return None
        elif isinstance(c, commands.ReportMissedChunks):
            if c.confirmable:
                r = self._new_request(MessageKind.CHUNK_MISSED, now, token=False, internal=True)
                self._send_message(messages.chunk_missed(r.message_id, c.indices, confirmable=True))
            else:
                self._send_message(messages.chunk_missed(self._ids.next(), c.indices, confirmable=False))
            return None
        elif isinstance(c, commands.ReportUpdateDone):
            self._send_message(messages.update_result(self._ids.next(), c.payload))
            return None
        elif isinstance(c, commands.AcceptUpdateStart):
            inbound = self._take_inbound(c.request_id, MessageKind.UPDATE_START)
            if not inbound.acked:
                self._send_message(messages.ack(inbound.message_id))
            msg = ota3_messages.start_response(
                self._ids.next(), inbound.token, window=c.window, offset=c.offset
            )
            self._send_message(msg)
            return None
        elif isinstance(c, commands.SendUpdateAck):
            self._send_message(ota3_messages.update_ack(self._ids.next(), c.cumulative, c.received))
            return None
        elif isinstance(c, commands.RespondUpdateFinish):
            inbound = self._take_inbound(c.request_id, MessageKind.UPDATE_FINISH)
            if not inbound.acked:
                self._send_message(messages.ack(inbound.message_id))
            r = self._new_request(MessageKind.UPDATE_FINISH, now, token=False)
            self._send_message(ota3_messages.finish_response(r.message_id, inbound.token, c.payload))
        elif isinstance(c, commands.RespondOtaError):
            inbound = self._take_inbound(c.request_id, None)
            code = ota3_messages.coap_code_for(c.system_error)
            self._answer(inbound, code, ota3_messages.error_payload(c.system_error, c.message), now)
            return None
        else:
            raise LocalProtocolError(f"{type(c).__name__} is not a device-role command")
        return r.request_id

    def _take_inbound(self, request_id: int, kind: MessageKind | None) -> _Inbound:
        inbound = self._inbound.get(request_id)
        if inbound is None or (kind is not None and inbound.kind is not kind):
            raise LocalProtocolError(f"no pending {kind.name if kind else 'peer'} request {request_id}")
        del self._inbound[request_id]
        return inbound

    def _answer(
        self,
        inbound: _Inbound,
        code: int,
        payload: bytes,
        now: float,
        *,
        confirmable: bool = False,
        content_format: int | None = None,
        options: messages.Options = (),
    ) -> None:
        """Answer a peer request: piggy-backed in the ACK, or as a separate response once ACKed."""
        if not inbound.acked:
            self._send_message(
                messages.ack(inbound.message_id, code, inbound.token, payload, content_format, options)
            )
            return
        if confirmable:  # 2.x sends the Describe as CON; swallow the cloud's ACK quietly
            r = self._new_request(MessageKind.DESCRIBE, now, token=False, internal=True)
            mid = r.message_id
        else:
            mid = self._ids.next()
        confirmable = confirmable or self.unreliable
        self._send_message(
            messages.response(
                mid,
                code,
                inbound.token,
                payload,
                confirmable=confirmable,
                content_format=content_format,
                options=options,
            )
        )

    # ------------------------------------------------------------------------------------------ timers & clos

    def _ping_due(self) -> float | None:
        if self._timing.ping_after is None:
            return None
        return max(self._last_rx, self._last_ping) + self._timing.ping_after

    def _idle_deadline(self) -> float | None:
        if self._timing.idle_timeout is None:
            return None
        return self._last_rx + self._timing.idle_timeout

    def _close(self, reason: str, *, error: bool = False) -> None:
        if self._state is ConnectionState.CLOSED:
            return
        self._state = ConnectionState.CLOSED
        self._handshake_deadline = None
        for request in self._requests.drain():
            self._fail(request, None, "connection closed")
        self._inbound.clear()
        self._events.append(events.ConnectionClosed(reason, error))


class Connection(CoapSession):
    """
    A Particle TCP protocol connection: the TCP front of a `CoapSession` (length-prefixed frames, the RSA
    handshake, AES-128-CBC).

    Args:
        role: ``Role.CLOUD`` (we accepted the socket) or ``Role.DEVICE`` (we opened it).
        now: the current time (any monotonic clock; only differences matter).
        server_private_key: cloud role: the RSA-2048 server key.
        raw_signer: cloud role: signs the handshake reply with that key (`rawsign.raw_signer`, built once
            per key); ``None`` = the pure-Python `crypto.rsa_sign_raw` (same bytes, ~20 times slower).
        server_public_key: device role: the server key to expect.
        device_private_key: device role: our RSA-1024 key.
        device_id: device role: our 12-byte id (bytes or 24 hex characters).
        hello: device role: what our Hello says.
        response_style: device role: piggy-backed (0.x) or separate (1.5+/2.x) answers.
        timing: timeouts; ``None`` = :data:`CLOUD_TIMING` or :data:`DEVICE_TIMING`.
        random_bytes: the randomness source (nonce, K, RSA padding, initial id and token), in that order.
        check_message_ids: cloud role: enforce the device's +1 message id rule.
    """

    def __init__(
        self,
        role: Role,
        *,
        now: float,
        server_private_key: rsa.RSAPrivateKey | None = None,
        raw_signer: RawSigner | None = None,
        server_public_key: rsa.RSAPublicKey | None = None,
        device_private_key: rsa.RSAPrivateKey | None = None,
        device_id: bytes | str | None = None,
        hello: DeviceHello | None = None,
        response_style: ResponseStyle = ResponseStyle.PIGGYBACK,
        timing: Timing | None = None,
        random_bytes: RandomBytes = os.urandom,
        check_message_ids: bool = True,
    ) -> None:
        super().__init__(
            role,
            now=now,
            hello=hello,
            response_style=response_style,
            timing=timing,
            random_bytes=random_bytes,
            check_message_ids=check_message_ids,
        )
        self._rx = ReceiveBuffer()
        self._out = bytearray()
        self._cipher: SessionCipher | None = None
        self._cloud_hs: CloudHandshake | None = None
        self._device_hs: DeviceHandshake | None = None
        if role is Role.CLOUD:
            if server_private_key is None:
                raise LocalProtocolError("the cloud role needs server_private_key")
            sign_raw = raw_signer.sign if raw_signer is not None else None
            self._cloud_hs = CloudHandshake(server_private_key, random_bytes, sign_raw)
            self._out += self._cloud_hs.nonce
        else:
            if device_private_key is None or server_public_key is None or device_id is None:
                raise LocalProtocolError(
                    "the device role needs device_private_key, server_public_key and device_id"
                )
            raw_id = _device_id_bytes(device_id)
            self.device_id = raw_id.hex()
            self._device_hs = DeviceHandshake(raw_id, device_private_key, server_public_key, random_bytes)

    def receive_data(self, data: bytes, now: float) -> None:
        """
        Feed bytes received from the peer; ``b""`` means the peer closed the connection.

        Raises:
            RemoteProtocolError: the peer broke the protocol; the connection is now closed.
        """
        if self._state is ConnectionState.CLOSED:
            if self._failure is not None:
                raise RemoteProtocolError(f"connection already failed: {self._failure}")
            return
        if not data:
            self._close("peer closed the connection")
            return
        self._last_rx = now
        self._rx.feed(data)
        self._run(now)

    def data_to_send(self) -> bytes:
        """
        Bytes to write to the socket (and forget).

        Returns:
            Possibly empty bytes.
        """
        out = bytes(self._out)
        self._out.clear()
        return out

    def _run(self, now: float) -> None:
        try:
            while self._state is not ConnectionState.CLOSED and self._step():
                pass
        except RemoteProtocolError as exc:
            self._failure = str(exc)
            self._close(str(exc), error=True)
            raise

    def _step(self) -> bool:
        """Consume one unit of input; False when more data is needed."""
        if self._state is ConnectionState.HANDSHAKE:
            return self._step_handshake()
        if self._state is ConnectionState.AWAIT_DEVICE_KEY:
            return False
        ciphertext = self._rx.next_frame()
        if ciphertext is None or self._cipher is None:
            return False
        self._handle(coap.decode(self._cipher.decrypt(ciphertext)))
        return True

    def _step_handshake(self) -> bool:
        if self._cloud_hs is not None:
            block = self._rx.take(self._cloud_hs.device_block_size)
            if block is None:
                return False
            self.device_id = self._cloud_hs.receive_device_block(block).hex()
            self._state = ConnectionState.AWAIT_DEVICE_KEY
            offered = self._cloud_hs.offered_public_key_der
            self._events.append(events.DeviceIdentified(self.device_id, offered))
            return True
        hs = self._device_hs
        if hs is None:  # pragma: no cover - the constructor sets one of the two
            raise LocalProtocolError("no handshake")
        if hs.state is HandshakeState.AWAIT_NONCE:
            nonce = self._rx.take(40)
            if nonce is None:
                return False
            self._out += hs.receive_nonce(nonce)
            return True
        reply = self._rx.take(hs.reply_size)
        if reply is None:
            return False
        keys = hs.receive_reply(reply)
        self._start_session(keys)
        self._ids = MessageIdCounter(keys.device_message_id_seed + 1)
        self._tokens = TokenCounter(1)
        self._send_message(messages.hello(self._ids.next(), self._hello.payload()))
        return True

    def _start_session(self, keys: SessionKeys) -> None:
        self._cipher = SessionCipher(keys)
        self._state = ConnectionState.AWAIT_HELLO
        self._events.append(events.HandshakeCompleted(self.device_id or ""))

    def _decide_device(self, command: commands.AcceptDevice | commands.RejectDevice, now: float) -> None:
        if self._cloud_hs is None or self._state is not ConnectionState.AWAIT_DEVICE_KEY:
            raise LocalProtocolError("no device is waiting for a decision")
        if isinstance(command, commands.RejectDevice):
            self._cloud_hs.reject()
            self._close(command.reason)
            return
        if not isinstance(command.public_key, rsa.RSAPublicKey):
            self._cloud_hs.reject()
            self._close("the device key is not an RSA key")
            return
        reply, keys = self._cloud_hs.accept(command.public_key)
        self._out += reply
        self._start_session(keys)
        self._run(now)

    def _send_message(self, msg: coap.Message) -> None:
        if self._cipher is None:  # pragma: no cover - only called once the session exists
            raise LocalProtocolError("no session yet")
        self._out += frame(self._cipher.encrypt(coap.encode(msg)))
