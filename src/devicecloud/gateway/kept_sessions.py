"""
Where the UDP gateway keeps device sessions between links: in memory, or in the database as well.

Theory of operation:
    `MemorySessionStore` keeps a `StoredSession` per device (and finds it by CID) for as long as the process
    lives. `PersistentSessionStore` is the same, plus the database (table ``dtls_sessions``), so that a device
    resumes after the server restarted too. It is written behind, in one transaction per flush
    (``flush()``, which the gateway calls every second, decision 0013), with one exception, the resumption:

    The send counter must never go back, or the device's replay window drops what the server sends
    (ADR 0017). Every row therefore carries ``reserved``: a send sequence number the session has not reached.
    A loaded session continues from ``reserved``. A live session's row is renewed (behind, at the next
    flush) to ``current + SEQUENCE_BLOCK`` whenever its counter passes half of its block, which no link
    does within one flush interval. A session resumed from the store has sent nothing yet: its block is
    written (`reserve`, awaited) before its link starts. A crash at any moment thus restarts every
    counter beyond anything sent.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Protocol

import structlog

from devicecloud.protocol import LocalProtocolError
from devicecloud.protocol.dtls import SessionState
from devicecloud.protocol.udp import ResumedSession
from devicecloud.store.interfaces import DtlsSessionRow

if TYPE_CHECKING:
    from devicecloud.clock import Clock
    from devicecloud.store.interfaces import Store

__all__ = [
    "SEQUENCE_BLOCK",
    "MemorySessionStore",
    "PersistentSessionStore",
    "SessionStore",
    "StoredSession",
]

logger = structlog.get_logger("devicecloud.gateway")

#: Send sequence numbers reserved at a time for a live session (see the module doc).
SEQUENCE_BLOCK = 10_000


@dataclass(frozen=True, slots=True)
class StoredSession:
    """A device's DTLS session kept after its link ended, and what its resumption needs of CoAP."""

    state: SessionState
    coap: ResumedSession


class SessionStore(Protocol):
    """
    Where device sessions wait between links (a sleeping device, a lost link, a restart). A session taken
    out is live; it is stored anew, with its later counters, when that link ends.
    """

    async def load(self) -> int:
        """Read what a previous process kept; the number of sessions."""
        ...

    def save(self, session: StoredSession) -> None:
        """Keep ``session`` (replacing the device's previous one)."""
        ...

    def take_by_cid(self, cid: bytes) -> StoredSession | None:
        """Remove and return the session with this Connection ID (25/253 records)."""
        ...

    def take_by_device(self, device_id: str) -> StoredSession | None:
        """Remove and return the device's session (type-254 records, Device OS before 3.1)."""
        ...

    def put_back(self, session: StoredSession) -> None:
        """Return a session taken for a datagram that did not authenticate (nothing of it changed)."""
        ...

    async def reserve(self, session: StoredSession, reserved: int) -> None:
        """Make sure a restart continues ``session`` from ``reserved`` at least, before it sends anything."""
        ...

    def keep_live(self, session: StoredSession, reserved: int) -> None:
        """A live session's state and reservation, to write at the next flush."""
        ...

    async def flush(self) -> None:
        """Write what is pending (a no-op in memory)."""
        ...


class MemorySessionStore:
    """`SessionStore` in this process's memory: sessions survive links, not a restart. Bounded (oldest go)."""

    def __init__(self, limit: int = 100_000) -> None:
        self._limit = limit
        self._by_device: OrderedDict[str, StoredSession] = OrderedDict()
        self._by_cid: dict[bytes, str] = {}

    def __len__(self) -> int:
        return len(self._by_device)

    async def load(self) -> int:
        return 0

    def save(self, session: StoredSession) -> None:
        self.take_by_device(session.coap.device_id)
        self._by_device[session.coap.device_id] = session
        if session.state.cid is not None:
            self._by_cid[session.state.cid] = session.coap.device_id
        while len(self._by_device) > self._limit:
            _, dropped = self._by_device.popitem(last=False)
            if dropped.state.cid is not None:
                self._by_cid.pop(dropped.state.cid, None)

    def take_by_cid(self, cid: bytes) -> StoredSession | None:
        device_id = self._by_cid.get(cid)
        return self.take_by_device(device_id) if device_id is not None else None

    def take_by_device(self, device_id: str) -> StoredSession | None:
        session = self._by_device.pop(device_id, None)
        if session is not None and session.state.cid is not None:
            self._by_cid.pop(session.state.cid, None)
        return session

    def put_back(self, session: StoredSession) -> None:
        self.save(session)

    async def reserve(self, session: StoredSession, reserved: int) -> None:
        return None

    def keep_live(self, session: StoredSession, reserved: int) -> None:
        return None

    async def flush(self) -> None:
        return None


def _row(session: StoredSession, reserved: int) -> DtlsSessionRow:
    state = session.state
    return DtlsSessionRow(
        session.coap.device_id,
        state.cid,
        json.dumps(state.to_dict()),
        session.coap.hello,
        max(reserved, state.write_sequence),
    )


class PersistentSessionStore(MemorySessionStore):
    """`MemorySessionStore` written behind to the database, so sessions survive a restart (module doc)."""

    def __init__(self, store: Store, clock: Clock, limit: int = 100_000) -> None:
        super().__init__(limit)
        self._store = store
        self._clock = clock
        self._dirty: dict[str, DtlsSessionRow] = {}

    async def load(self) -> int:
        async with self._store.transaction(readonly=True) as tx:
            rows = await tx.dtls_sessions.all()
        loaded = 0
        for row in rows:
            try:
                state = SessionState.from_dict(json.loads(row.state))
            except (LocalProtocolError, ValueError):
                logger.warning(
                    "a kept DTLS session is unreadable; the device will shake hands", device_id=row.device_id
                )
                continue
            state = replace(state, write_sequence=max(state.write_sequence, row.reserved))
            super().save(StoredSession(state, ResumedSession(row.device_id, row.hello)))
            loaded += 1
        return loaded

    def save(self, session: StoredSession) -> None:
        super().save(session)
        self._dirty[session.coap.device_id] = _row(session, session.state.write_sequence)

    def put_back(self, session: StoredSession) -> None:
        super().save(session)  # unchanged: nothing to write

    async def reserve(self, session: StoredSession, reserved: int) -> None:
        row = _row(session, reserved)
        async with self._store.transaction() as tx:
            await tx.dtls_sessions.put_many([row], self._clock.now())

    def keep_live(self, session: StoredSession, reserved: int) -> None:
        self._dirty[session.coap.device_id] = _row(session, reserved)

    async def flush(self) -> None:
        rows, self._dirty = self._dirty, {}
        if not rows:
            return
        try:
            async with self._store.transaction() as tx:
                await tx.dtls_sessions.put_many(list(rows.values()), self._clock.now())
        except Exception:
            logger.warning("writing kept DTLS sessions failed; retried at the next flush", exc_info=True)
            for device_id, row in rows.items():
                self._dirty.setdefault(device_id, row)
