"""
Message ids, tokens and the table of requests waiting for an answer (aiocoap's MessageManager/TokenManager,
sans-IO).

Theory of operation:
    Over TCP there are no retransmissions (the device never retransmits; TCP is reliable), so the only
    timers are
    response deadlines. Every outgoing message we originate takes the next id from :class:`MessageIdCounter`
    (mod 65536); ACKs echo the peer's id. Requests that expect a separate response carry a 1-byte token from
    :class:`TokenCounter` (1..255, wrapping to 1, skipping tokens still in use).

    :class:`RequestTable` finds the request an incoming ACK/RST or response belongs to: by token first
    (Device OS
    0.7 answers Signal with an ACK that carries the token but a *fresh* message id), then by message id (empty
    ACKs, ACK 4.00 without token), then — for an empty ACK that matches nothing — the oldest tokenless ping
    (0.7
    ACKs a server ping with a fresh id too).

    :class:`PeerMessageIds` is the cloud's "Bad Counter" check: after the Hello, every non-ACK message from
    the
    device must carry the previous id + 1. ACKs that carry a fresh id (the 0.7 quirk above) advance the
    counter
    when they are exactly the next id.
"""

from __future__ import annotations

from dataclasses import dataclass

from devicecloud.protocol.codes import MessageKind, VariableType
from devicecloud.protocol.errors import RemoteProtocolError

__all__ = ["MessageIdCounter", "Outstanding", "PeerMessageIds", "RequestTable", "TokenCounter"]


class MessageIdCounter:
    """Ids of the messages we originate."""

    def __init__(self, first: int) -> None:
        self._next = first & 0xFFFF

    def next(self) -> int:
        """Return the next id and advance (mod 65536)."""
        mid = self._next
        self._next = (mid + 1) & 0xFFFF
        return mid


class TokenCounter:
    """1-byte tokens 1..255, wrapping to 1."""

    def __init__(self, first: int) -> None:
        self._next = first if 1 <= first <= 255 else 1

    def next(self, in_use: set[bytes] | None = None) -> bytes:
        """Return the next token not in ``in_use`` and advance."""
        for _ in range(255):
            token = bytes([self._next])
            self._next = self._next + 1 if self._next < 255 else 1
            if not in_use or token not in in_use:
                return token
        raise RemoteProtocolError("all 255 tokens are waiting for responses")


class PeerMessageIds:
    """The cloud's check that device-originated ids increase by exactly one."""

    def __init__(self, first: int) -> None:
        self.last = first & 0xFFFF

    @property
    def expected(self) -> int:
        """The id the next device-originated message must have."""
        return (self.last + 1) & 0xFFFF

    def check(self, message_id: int) -> None:
        """
        Accept the next id.

        Raises:
            RemoteProtocolError: it is not ``last + 1`` ("Bad Counter").
        """
        if message_id != self.expected:
            raise RemoteProtocolError(f"bad message counter: got {message_id}, expected {self.expected}")
        self.last = message_id

    def accept(self, message_id: int) -> None:
        """Take ``message_id`` as the new base without checking (pings)."""
        self.last = message_id & 0xFFFF


@dataclass
class Outstanding:
    """A request we sent and whose answer we are waiting for."""

    request_id: int
    kind: MessageKind
    message_id: int
    token: bytes
    deadline: float | None
    internal: bool = False  # keep-alive pings and our own separate responses: no events
    acked: bool = False  # an empty ACK arrived; the separate response is still due
    name: str = ""
    var_type: VariableType | None = None
    flags: int | None = None
    index: int = 0
    blocks: bytearray | None = None  # a Describe answered blockwise (Block2): the blocks so far
    etag: bytes = b""  # the blockwise Describe's ETag: every block must carry the first block's
    content_format: int | None = None  # a Describe we send blockwise (Block1): each part carries it


class RequestTable:
    """Outstanding requests by request id, token and message id."""

    def __init__(self) -> None:
        self._by_id: dict[int, Outstanding] = {}

    def __len__(self) -> int:
        return len(self._by_id)

    def add(self, request: Outstanding) -> None:
        """Track a request."""
        self._by_id[request.request_id] = request

    def remove(self, request: Outstanding) -> None:
        """Stop tracking a request."""
        self._by_id.pop(request.request_id, None)

    def tokens(self) -> set[bytes]:
        """Tokens in use."""
        return {r.token for r in self._by_id.values() if r.token}

    def by_token(self, token: bytes) -> Outstanding | None:
        """The request with this token."""
        return next((r for r in self._by_id.values() if r.token == token), None)

    def by_message_id(self, message_id: int) -> Outstanding | None:
        """The request whose message id is echoed."""
        return next((r for r in self._by_id.values() if r.message_id == message_id), None)

    def oldest_ping(self) -> Outstanding | None:
        """The oldest outstanding ping (for ACKs that do not echo its id)."""
        return next((r for r in self._by_id.values() if r.kind == MessageKind.PING), None)

    def match(self, token: bytes, message_id: int, empty: bool) -> Outstanding | None:
        """Find the request an ACK/RST belongs to (token, then id, then an unmatched empty ACK → ping)."""
        found = self.by_token(token) if token else None
        if found is None:
            found = self.by_message_id(message_id)
            if found is not None and token and found.token and found.token != token:
                found = None
        if found is None and empty and not token:
            found = self.oldest_ping()
        return found

    def take_kind(self, kind: MessageKind) -> Outstanding | None:
        """Remove and return the oldest request of a kind."""
        found = next((r for r in self._by_id.values() if r.kind == kind), None)
        if found is not None:
            del self._by_id[found.request_id]
        return found

    def expired(self, now: float) -> list[Outstanding]:
        """Remove and return the requests whose deadline has passed."""
        out = [r for r in self._by_id.values() if r.deadline is not None and r.deadline <= now]
        for r in out:
            del self._by_id[r.request_id]
        return out

    def next_deadline(self) -> float | None:
        """The earliest deadline, if any."""
        deadlines = [r.deadline for r in self._by_id.values() if r.deadline is not None]
        return min(deadlines) if deadlines else None

    def drain(self) -> list[Outstanding]:
        """Remove and return everything (connection closing)."""
        out = list(self._by_id.values())
        self._by_id.clear()
        return out
