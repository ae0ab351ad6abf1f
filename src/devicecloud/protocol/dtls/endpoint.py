"""
What the DTLS server and client share: records in and out, epochs, replay windows, handshake reassembly,
flights and their retransmission. Sans-IO: datagrams in (``receive_datagram(data, now)``), events out
(``next_event()``), datagrams out (``datagrams_to_send()``), one timer (``get_timer()`` /
``handle_timer(now)``).

Errors: a datagram or record that does not parse, authenticate, or is a replay is dropped and reported as
:class:`RecordDropped` (RFC 6347 §4.1.2.7: invalid records are discarded, so a spoofed datagram cannot end a
session). A handshake that goes wrong fails the endpoint: a fatal alert goes out, :class:`ConnectionClosed`
is queued and ``receive_datagram`` raises ``RemoteProtocolError``.
"""

from __future__ import annotations

import contextlib
import hashlib
import struct
from dataclasses import dataclass
from enum import Enum

from devicecloud.protocol.dtls import events
from devicecloud.protocol.dtls.messages import HandshakeType, handshake_header
from devicecloud.protocol.dtls.primitives import KeyBlock, RecordCipher
from devicecloud.protocol.dtls.records import (
    CID_SIZE,
    MAX_SEQUENCE,
    ContentType,
    Record,
    ReplayWindow,
    cid_aad,
    cid_inner_plaintext,
    encode_record,
    parse_cid_inner_plaintext,
    parse_datagram,
    plain_aad,
)
from devicecloud.protocol.dtls.session import SessionState
from devicecloud.protocol.errors import LocalProtocolError, RemoteProtocolError

__all__ = ["HANDSHAKE_TIMED_OUT", "AlertDescription", "DtlsState", "Endpoint", "HandshakeFailure", "Timers"]

_MAX_HANDSHAKE_MESSAGE = 1 << 14
_HANDSHAKE_HEADER = struct.Struct("!IHIH")  # type‖length, message_seq, offset‖fragment length (high), (low)
_REASSEMBLY_AHEAD = 8  # messages buffered past the next expected one
_MAX_PEER_TRIGGERED = 8  # flights re-sent because the peer repeated its own (its timers allow ~6 a minute)
#: `Endpoint.failure` of a handshake the peer did not finish within ``Timers.handshake_timeout``.
HANDSHAKE_TIMED_OUT = "handshake timed out"


class DtlsState(Enum):
    """Where an endpoint is."""

    HANDSHAKE = "handshake"
    ESTABLISHED = "established"
    CLOSED = "closed"


class AlertDescription:
    """The alert descriptions this package sends (RFC 5246 §7.2)."""

    CLOSE_NOTIFY = 0
    UNEXPECTED_MESSAGE = 10
    HANDSHAKE_FAILURE = 40
    BAD_CERTIFICATE = 42
    ILLEGAL_PARAMETER = 47
    ACCESS_DENIED = 49
    DECODE_ERROR = 50
    DECRYPT_ERROR = 51
    INTERNAL_ERROR = 80


class HandshakeFailure(RemoteProtocolError):
    """The handshake cannot go on; ``alert`` is the description to send."""

    def __init__(self, message: str, alert: int = AlertDescription.HANDSHAKE_FAILURE) -> None:
        super().__init__(message)
        self.alert = alert


@dataclass(frozen=True, slots=True)
class Timers:
    """
    Flight retransmission (RFC 6347 §4.2.4): first after ``initial``, doubling up to ``maximum``; the
    handshake fails ``handshake_timeout`` after it began. Device OS uses 3 s doubling to 24 s.
    """

    initial: float = 1.0
    maximum: float = 24.0
    handshake_timeout: float = 60.0


@dataclass(slots=True)
class _Outgoing:
    """One item of a flight: a handshake message (kept whole, fragmented when sent) or a ChangeCipherSpec."""

    epoch: int
    content_type: int
    payload: bytes  # handshake: the body; CCS: b"\x01"
    msg_type: int = 0
    message_seq: int = 0
    whole: bytes = b""  # handshake: header ‖ body, unfragmented (as the transcript hashed it)


@dataclass(slots=True)
class _Partial:
    msg_type: int
    body: bytearray
    have: bytearray  # one flag per byte: cheap and exact for ≤16 KB messages

    @property
    def complete(self) -> bool:
        return all(self.have)


class Endpoint:
    """The machinery of one DTLS association, either role. Subclasses drive the handshake."""

    # Slots: attribute access on the per-record path is faster, and 10,000 idle sessions are smaller.
    __slots__ = (
        "_cid_in",
        "_cid_out",
        "_device_id",
        "_events",
        "_failure",
        "_first_hello",
        "_flight",
        "_keys",
        "_max_datagram",
        "_out",
        "_partials",
        "_peer_flight_end",
        "_peer_triggered",
        "_pending_read",
        "_pending_write",
        "_read_cipher",
        "_recv_msg_seq",
        "_replay",
        "_retransmit_at",
        "_retransmit_interval",
        "_send_marker",
        "_send_msg_seq",
        "_started",
        "_timers",
        "_transcript_sha",
        "_write_cipher",
        "_write_seq",
        "retransmissions",
        "session",
        "state",
    )

    is_server = False

    def __init__(self, *, now: float, timers: Timers, max_datagram: int) -> None:
        self._keys: KeyBlock | None = None  # the session's key expansion, kept with it for resumptions
        self._timers = timers
        self._max_datagram = max_datagram
        self.state = DtlsState.HANDSHAKE
        self._events: list[events.DtlsEvent] = []  # a list: an empty deque costs ~600 bytes
        self._out: list[bytes] = []
        self._failure: str | None = None
        self._started = now
        # record layer
        # Indexed by epoch (0 or 1): lists, smaller than dicts on 10,000 idle sessions and quicker to make.
        self._write_seq = [0, 0]
        self._replay = [ReplayWindow(), ReplayWindow()]
        self._write_cipher: RecordCipher | None = None
        self._read_cipher: RecordCipher | None = None
        self._pending_write: RecordCipher | None = None
        self._pending_read: RecordCipher | None = None
        self._cid_in: bytes | None = None  # server: its CID, required on the peer's epoch-1 records
        self._cid_out: bytes | None = None  # client: the server's CID, put on its epoch-1 records
        self._send_marker: int | None = None  # client resuming: 253 or 254 on its datagrams
        self._device_id: bytes | None = None  # client: for 254 trailers
        # handshake layer
        # The messages' running hash (what Finished covers); the client keeps the messages too, to sign them.
        self._transcript_sha = hashlib.sha256()
        self._send_msg_seq = 0
        self._recv_msg_seq = 0
        self._partials: dict[int, _Partial] = {}
        self._flight: list[_Outgoing] = []
        self._peer_flight_end = -1  # message_seq of the last message of the peer's previous flight
        self._first_hello = self.is_server  # a server takes the cookie-bearing ClientHello's message_seq
        self._retransmit_at: float | None = None
        self._retransmit_interval = timers.initial
        self.retransmissions = 0
        self._peer_triggered = 0
        self.session: SessionState | None = None

    # ------------------------------------------------------------------------------------------ public API

    def next_event(self) -> events.DtlsEvent | None:
        """The next event, or ``None``."""
        return self._events.pop(0) if self._events else None

    @property
    def failure(self) -> str | None:
        """Why the handshake or association failed (`HANDSHAKE_TIMED_OUT`: a silent peer), or ``None``."""
        return self._failure

    def datagrams_to_send(self) -> list[bytes]:
        """Datagrams to send to the peer, in order (and forget)."""
        out, self._out = self._out, []
        return out

    def get_timer(self) -> float | None:
        """When ``handle_timer`` should next run (absolute, on the caller's clock), or ``None``."""
        if self.state is not DtlsState.HANDSHAKE:
            return None
        deadline = self._started + self._timers.handshake_timeout
        return min(deadline, self._retransmit_at) if self._retransmit_at is not None else deadline

    def handle_timer(self, now: float) -> None:
        """Retransmit the last flight when its timer ran out; fail the handshake when it took too long."""
        if self.state is not DtlsState.HANDSHAKE:
            return
        if now >= self._started + self._timers.handshake_timeout:
            self._fail(HANDSHAKE_TIMED_OUT, None)
            return
        if self._retransmit_at is not None and now >= self._retransmit_at:
            self._retransmit_interval = min(self._retransmit_interval * 2, self._timers.maximum)
            self._retransmit_at = now + self._retransmit_interval
            self.retransmissions += 1
            self._transmit_flight()

    def send_application_data(self, data: bytes) -> None:
        """
        Encrypt ``data`` as one record (one datagram).

        Raises:
            LocalProtocolError: not established, or more than a record can hold.
        """
        if self.state is not DtlsState.ESTABLISHED:
            raise LocalProtocolError(f"cannot send application data in state {self.state.value}")
        if len(data) > 1 << 14:
            raise LocalProtocolError("application record too large")
        self._out.append(self._finish_datagram(self._protect(ContentType.APPLICATION_DATA, 1, data)))

    def close(self) -> None:
        """Send close_notify and close."""
        if self.state is DtlsState.CLOSED:
            return
        self._send_alert(1, AlertDescription.CLOSE_NOTIFY)
        self._close("closed locally")

    def export_session(self) -> SessionState:
        """
        The session with the current counters, to store and resume later.

        Raises:
            LocalProtocolError: no handshake has completed.
        """
        if self.session is None:
            raise LocalProtocolError("no established session")
        window = self._replay[1]
        self.session = self.session.advanced(
            write_sequence=self._write_seq[1], replay_top=window.top, replay_bitmap=window.bitmap
        )
        return self.session

    def receive_datagram(self, datagram: bytes, now: float) -> None:
        """
        Process one datagram from the peer.

        Raises:
            RemoteProtocolError: the handshake failed on it; the endpoint is now closed.
        """
        if self.state is DtlsState.CLOSED:
            if self._failure is not None:
                raise RemoteProtocolError(f"DTLS endpoint already failed: {self._failure}")
            return
        if len(datagram) <= 1:
            return  # Device OS keep-alive filler
        try:
            records = parse_datagram(datagram, CID_SIZE)
        except RemoteProtocolError as exc:
            self._drop(str(exc))
            return
        for record in records:
            if self._is_closed():
                break
            try:
                self._receive_record(record, now)
            except HandshakeFailure as exc:
                self._fail(str(exc), exc.alert)
                raise
            except RemoteProtocolError as exc:
                self._drop(str(exc))

    # ------------------------------------------------------------------------------------------ subclasses

    def _on_handshake_message(self, msg_type: int, body: bytes, raw: bytes, now: float) -> None:
        raise NotImplementedError

    def _on_change_cipher_spec(self) -> None:
        raise NotImplementedError

    def _on_application_data(self, data: bytes, moved: bool) -> None:
        self._events.append(events.ApplicationData(data, moved))

    # ------------------------------------------------------------------------------------------ records in

    def _receive_record(self, record: Record, now: float) -> None:
        if record.epoch == 0:
            if record.cid is not None:
                raise RemoteProtocolError("CID record in epoch 0")
            if not self._replay[0].check(record.sequence):
                raise RemoteProtocolError("replayed epoch-0 record")
            self._replay[0].accept(record.sequence)
            if self._first_hello:
                # The HelloVerifyRequest went out with the first ClientHello's sequence number: go on
                # from the second one's, so the client's replay window accepts what we send next.
                self._write_seq[0] = max(self._write_seq[0], record.sequence)
            content_type, payload = record.content_type, record.fragment
            if content_type == ContentType.APPLICATION_DATA:
                raise RemoteProtocolError("unprotected application data")
            if content_type == ContentType.ALERT and self.state is DtlsState.ESTABLISHED:
                raise RemoteProtocolError("unprotected alert after the handshake")
            if (
                content_type == ContentType.HANDSHAKE
                and self.state is DtlsState.ESTABLISHED
                and payload[:1] == bytes([HandshakeType.CLIENT_HELLO])
            ):
                # A device that lost its session starts over from the same address: the caller's cookie
                # gate (check_client_hello) decides, not this session (RFC 6347 §4.2.8).
                raise RemoteProtocolError("ClientHello on an established session")
        elif record.epoch == 1:
            content_type, payload = self._unprotect(record)
        else:
            raise RemoteProtocolError(f"record of unknown epoch {record.epoch}")
        if content_type == ContentType.HANDSHAKE:
            self._receive_handshake(payload, record.epoch, now)
        elif content_type == ContentType.CHANGE_CIPHER_SPEC:
            if payload != b"\x01":
                raise HandshakeFailure("bad ChangeCipherSpec", AlertDescription.DECODE_ERROR)
            if self._pending_read is None:
                raise RemoteProtocolError("unexpected ChangeCipherSpec")
            self._read_cipher, self._pending_read = self._pending_read, None
            self._on_change_cipher_spec()
        elif content_type == ContentType.ALERT:
            self._receive_alert(payload)
        elif content_type == ContentType.APPLICATION_DATA:
            if self.state is not DtlsState.ESTABLISHED:
                raise RemoteProtocolError("application data before the handshake finished")
            self._on_application_data(payload, record.moved)

    def _unprotect(self, record: Record) -> tuple[int, bytes]:
        cipher = self._read_cipher
        if cipher is None:
            raise RemoteProtocolError("epoch-1 record before ChangeCipherSpec")
        if self._cid_in is not None:
            if record.cid != self._cid_in:
                raise RemoteProtocolError("record without this session's CID")
        elif record.cid is not None:
            raise RemoteProtocolError("CID record on a session without CID")
        window = self._replay[1]
        if not window.check(record.sequence):
            raise RemoteProtocolError("replayed record")
        nonce = record.explicit_nonce  # for the AAD; the explicit nonce is the fragment's (RFC 6655 §3)
        if record.cid is not None:
            cid = record.cid
            inner = cipher.open(record.fragment, lambda n: cid_aad(nonce, cid, n))
            window.accept(record.sequence)
            return parse_cid_inner_plaintext(inner)
        content_type = record.content_type
        plaintext = cipher.open(record.fragment, lambda n: plain_aad(nonce, content_type, n))
        window.accept(record.sequence)
        return content_type, plaintext

    def _receive_alert(self, payload: bytes) -> None:
        if len(payload) != 2:
            raise RemoteProtocolError("malformed alert")
        level, description = payload
        self._events.append(events.AlertReceived(level, description))
        if description == AlertDescription.CLOSE_NOTIFY:
            self._send_alert(1, AlertDescription.CLOSE_NOTIFY)
            self._close("the peer closed the session")
        elif level == 2:
            self._failure = f"fatal alert {description} from the peer"
            self._close(self._failure, error=True)

    # ------------------------------------------------------------------------------------------ handshake in

    def _receive_handshake(self, payload: bytes, epoch: int, now: float) -> None:
        offset = 0
        while offset < len(payload):
            start = offset
            if len(payload) - offset < 12:
                raise RemoteProtocolError("truncated handshake header")
            type_length, message_seq, offset_high, length_low = _HANDSHAKE_HEADER.unpack_from(payload, offset)
            msg_type, length = type_length >> 24, type_length & 0xFFFFFF
            frag_offset, frag_length = offset_high >> 8, ((offset_high & 0xFF) << 16) | length_low
            offset += 12
            fragment = payload[offset : offset + frag_length]
            offset += frag_length
            if len(fragment) != frag_length or frag_offset + frag_length > length:
                raise RemoteProtocolError("handshake fragment out of bounds")
            if length > _MAX_HANDSHAKE_MESSAGE:
                raise RemoteProtocolError("handshake message too long")
            whole = payload[start:offset] if frag_length == length else None  # its header is canonical
            self._receive_fragment(msg_type, length, message_seq, frag_offset, fragment, now, whole)

    def _receive_fragment(
        self,
        msg_type: int,
        length: int,
        message_seq: int,
        frag_offset: int,
        fragment: bytes,
        now: float,
        whole: bytes | None = None,
    ) -> None:
        if self._first_hello and msg_type == HandshakeType.CLIENT_HELLO and not self._partials:
            # A server starts at whatever message_seq the (cookie-bearing) ClientHello has.
            self._recv_msg_seq = self._send_msg_seq = message_seq
            self._first_hello = False
        if message_seq < self._recv_msg_seq:
            if message_seq == self._peer_flight_end and frag_offset + len(fragment) == length:
                self._peer_retransmitted(now)
            return
        if message_seq >= self._recv_msg_seq + _REASSEMBLY_AHEAD:
            raise RemoteProtocolError("handshake message too far ahead")
        if whole is not None and message_seq == self._recv_msg_seq and not self._partials:
            self._deliver(msg_type, fragment, now, whole)  # the usual case: a whole message, in order
            return
        partial = self._partials.get(message_seq)
        if partial is None:
            partial = _Partial(msg_type, bytearray(length), bytearray(length))
            self._partials[message_seq] = partial
        elif partial.msg_type != msg_type or len(partial.body) != length:
            raise RemoteProtocolError("handshake fragments disagree")
        end = frag_offset + len(fragment)
        partial.body[frag_offset:end] = fragment
        partial.have[frag_offset:end] = b"\x01" * len(fragment)
        while (ready := self._partials.get(self._recv_msg_seq)) is not None and ready.complete:
            del self._partials[self._recv_msg_seq]
            self._deliver(ready.msg_type, bytes(ready.body), now)
            if self.state is DtlsState.CLOSED:
                return

    def _deliver(self, msg_type: int, body: bytes, now: float, raw: bytes | None = None) -> None:
        """Hand the next whole message to the role's state machine (raw = as the transcript hashes it)."""
        seq = self._recv_msg_seq
        self._recv_msg_seq += 1
        if raw is None:
            raw = handshake_header(msg_type, seq, len(body), 0, len(body)) + body
        try:
            self._on_handshake_message(msg_type, body, raw, now)
        except HandshakeFailure:
            raise
        except RemoteProtocolError as exc:  # a malformed message in sequence: the handshake is over
            raise HandshakeFailure(str(exc), AlertDescription.DECODE_ERROR) from exc

    def _peer_retransmitted(self, now: float) -> None:
        """The peer sent its previous flight again: ours was lost, send it again (RFC 6347 §4.2.4)."""
        if self._flight and self._peer_triggered < _MAX_PEER_TRIGGERED:
            # Capped: epoch-0 copies are unauthenticated, so a spoofer could otherwise make us repeat forever.
            self._peer_triggered += 1
            self.retransmissions += 1
            self._transmit_flight()

    # ------------------------------------------------------------------------------------------ handshake out

    def _new_flight(self) -> None:
        self._flight = []

    def _queue_message(self, msg_type: int, body: bytes, *, epoch: int = 0) -> bytes:
        """Add a handshake message to the flight being built; returns it as the transcript hashes it."""
        seq = self._send_msg_seq
        self._send_msg_seq += 1
        raw = handshake_header(msg_type, seq, len(body), 0, len(body)) + body
        self._flight.append(_Outgoing(epoch, ContentType.HANDSHAKE, body, msg_type, seq, raw))
        self._add_transcript(raw)
        return raw

    def _queue_change_cipher_spec(self) -> None:
        self._flight.append(_Outgoing(0, ContentType.CHANGE_CIPHER_SPEC, b"\x01"))

    def _send_flight(self, now: float, *, expect_reply: bool) -> None:
        self._transmit_flight()
        if expect_reply:
            self._retransmit_interval = self._timers.initial
            self._retransmit_at = now + self._retransmit_interval
        else:
            self._retransmit_at = None

    def _transmit_flight(self) -> None:
        """Serialise the current flight with fresh record sequence numbers, packed into datagrams."""
        datagram = bytearray()
        for item in self._flight:
            for record in self._records_for(item):
                if datagram and len(datagram) + len(record) > self._max_datagram:
                    self._out.append(self._finish_datagram(bytes(datagram)))
                    datagram = bytearray()
                datagram += record
        if datagram:
            self._out.append(self._finish_datagram(bytes(datagram)))

    def _records_for(self, item: _Outgoing) -> list[bytes]:
        body = item.payload
        if item.content_type != ContentType.HANDSHAKE:
            return [self._protect(item.content_type, item.epoch, body)]
        overhead = 13 + 12 + (8 + 8 + 16 + CID_SIZE if item.epoch else 0)
        room = max(self._max_datagram - overhead, 64)
        if len(body) <= room:  # the usual case: one record, the message whole
            return [self._protect(ContentType.HANDSHAKE, item.epoch, item.whole)]
        records = []
        offset = 0
        while True:
            chunk = body[offset : offset + room]
            header = handshake_header(item.msg_type, item.message_seq, len(body), offset, len(chunk))
            records.append(self._protect(ContentType.HANDSHAKE, item.epoch, header + chunk))
            offset += len(chunk)
            if offset >= len(body):
                return records

    def _protect(self, content_type: int, epoch: int, payload: bytes) -> bytes:
        seq = self._write_seq[epoch]
        if seq > MAX_SEQUENCE:
            raise LocalProtocolError("sequence numbers exhausted")
        self._write_seq[epoch] = seq + 1
        if epoch == 0:
            return encode_record(content_type, 0, seq, payload)
        cipher = self._write_cipher
        if cipher is None:
            raise LocalProtocolError("no write keys")
        nonce = struct.pack("!H", epoch) + seq.to_bytes(6, "big")
        if self._cid_out is not None:
            inner = cid_inner_plaintext(payload, content_type)
            fragment = cipher.seal(nonce, cid_aad(nonce, self._cid_out, len(inner)), inner)
            return encode_record(ContentType.CID, epoch, seq, fragment, cid=self._cid_out)
        fragment = cipher.seal(nonce, plain_aad(nonce, content_type, len(payload)), payload)
        return encode_record(content_type, epoch, seq, fragment)

    def _finish_datagram(self, datagram: bytes) -> bytes:
        """A resuming client marks its datagrams (253 for CID records, 254 + trailer for plain ones)."""
        if self._send_marker is None:
            return datagram
        if datagram[0] == ContentType.CID:
            return bytes([ContentType.CID_MOVED]) + datagram[1:]
        if datagram[0] == ContentType.APPLICATION_DATA and self._device_id is not None:
            return bytes([ContentType.LEGACY_MOVED]) + datagram[1:] + self._device_id + bytes([12])
        return datagram

    def _switch_write_epoch(self) -> None:
        self._write_cipher, self._pending_write = self._pending_write, None

    def _add_transcript(self, raw: bytes) -> None:
        self._transcript_sha.update(raw)

    def _reset_transcript(self) -> None:
        self._transcript_sha = hashlib.sha256()

    def _transcript_hash(self) -> bytes:
        return self._transcript_sha.copy().digest()

    # ------------------------------------------------------------------------------------------ endings

    def _send_alert(self, level: int, description: int) -> None:
        epoch = 1 if self._write_cipher is not None else 0
        with contextlib.suppress(LocalProtocolError):  # sequence numbers exhausted: nothing to send with
            record = self._protect(ContentType.ALERT, epoch, bytes([level, description]))
            self._out.append(self._finish_datagram(record))

    def _fail(self, reason: str, alert: int | None) -> None:
        if alert is not None:
            self._send_alert(2, alert)
        self._failure = reason
        self._close(reason, error=True)

    def _is_closed(self) -> bool:
        return self.state is DtlsState.CLOSED

    def _drop(self, reason: str) -> None:
        self._events.append(events.RecordDropped(reason))

    def _close(self, reason: str, *, error: bool = False) -> None:
        if self.state is DtlsState.CLOSED:
            return
        self.state = DtlsState.CLOSED
        self._retransmit_at = None
        self._events.append(events.ConnectionClosed(reason, error))

    def _established(self) -> None:
        self.state = DtlsState.ESTABLISHED
        self._retransmit_at = None
        self._reset_transcript()

    def _restore(self, session: SessionState) -> None:
        """Enter ESTABLISHED from a stored session (no handshake)."""
        if session.epoch != 1:
            raise LocalProtocolError("only epoch-1 sessions can be resumed")
        self._first_hello = False
        self._cid_in = session.cid if self.is_server else None
        self._cid_out = None if self.is_server else session.cid
        write, read = session.ciphers(is_server=self.is_server)
        self._write_cipher, self._read_cipher = write, read
        self._write_seq[1] = session.write_sequence
        self._replay[1] = ReplayWindow(session.replay_top, session.replay_bitmap)
        self.session = session
        self.state = DtlsState.ESTABLISHED
