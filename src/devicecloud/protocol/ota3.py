"""
The cloud's side of an OTA protocol v3 update (Gen3/P2/M-SoM on Device OS ≥ 3.0, over UDP), as a sans-IO
state machine beside the session, like `protocol.ota` for the legacy protocol.

Theory of operation:
    An `Ota3Transfer` gives the session commands (`StartUpdateV3`, `SendUpdateChunk`, `FinishUpdateV3`) and is
    offered every event the session yields, taking the answers to its own requests, the device's UpdateAcks
    and ``ConnectionClosed``. It never writes by itself: the driver calls `send` when it may write and
    `handle_timer` at `get_timer`. Time is always an argument (ota-and-dtls.md §A.3 for the wire rules).

    Phases::

        STARTING ──2.01 (window, offset)──> SENDING ──every chunk acked──> FINISHING ──2.04──> DONE
        any ──error response, timeout, link closed──> FAILED

    - **Start**: UpdateStart carries the file size, the chunk size and, unless ``resumable`` is off, the
      file's SHA-256. The device answers with its receive window and the bytes it already holds of this
      very file (resume after an interrupted update); only the rest is sent, its chunks numbered from 1.
    - **Sending**: chunks go out NON, at most ``window`` beyond the device's cumulative ack and at most
      ``max_in_flight`` unacknowledged. Each UpdateAck gives the cumulative count and a bitmap of the chunks
      held beyond it. A chunk is resent when chunks sent ``REORDER_THRESHOLD`` or more sends after it have
      arrived (loss evidenced by the bitmap), or when it stays unacknowledged ``resend_after`` seconds (the
      tail of the file, or lost acks).
    - **Finish**: once the cumulative ack covers every chunk, UpdateFinish; the device checks the image and
      answers 2.04 with its transfer statistics (the session ACKs it, and only then does the device apply the
      update and reset) or an error response whose JSON ``code`` is a Device OS system error (5.03 for
      nearly all): the failure reason names it (`ota3_messages.SYSTEM_ERRORS`).
    - **Deadlines**: ``progress_timeout`` seconds without a newly acknowledged chunk (or an answer), and
      ``total_timeout`` for the whole update; on either the device is told to cancel (UpdateFinish with
      CANCEL_UPDATE), so it does not wait for its own 300 s timeout.
"""

from __future__ import annotations

import contextlib
import json
import math
from collections import deque
from dataclasses import dataclass
from enum import Enum
from hashlib import sha256
from typing import Any

from devicecloud.protocol.commands import FinishUpdateV3, SendUpdateChunk, StartUpdateV3
from devicecloud.protocol.connection import CoapSession
from devicecloud.protocol.errors import LocalProtocolError
from devicecloud.protocol.events import (
    ConnectionClosed,
    Event,
    RequestFailed,
    RequestTimedOut,
    UpdateAcked,
    UpdateFinishAnswered,
    UpdateRefused,
    UpdateStarted,
)
from devicecloud.protocol.ota import ImageSource
from devicecloud.protocol.ota3_messages import MAX_CHUNK_SIZE, MIN_CHUNK_SIZE, error_reason

__all__ = ["REORDER_THRESHOLD", "Ota3Options", "Ota3Phase", "Ota3Result", "Ota3Transfer"]

#: A chunk counts as lost once a chunk sent this many sends after it has arrived (QUIC's packet threshold).
REORDER_THRESHOLD = 3
#: The window when the device names none (Device OS: 128 KiB / chunk size).
DEFAULT_WINDOW_BYTES = 128 * 1024


class Ota3Phase(Enum):
    """See the module docstring."""

    IDLE = "idle"
    STARTING = "starting"
    SENDING = "sending"
    FINISHING = "finishing"
    DONE = "done"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class Ota3Options:
    """
    How to run one transfer.

    Attributes:
        chunk_size: bytes per chunk: 512…1136, a multiple of 4 (the device's Hello says its own).
        resumable: send the file's SHA-256 so that an interrupted update resumes where it stopped.
        discard: ask the device to drop what it holds of an earlier transfer (DISCARD_DATA).
        module_function: the file's module function (option 2077, Device OS ≥ 5.5; None = not sent).
        max_in_flight: chunks sent and not yet acknowledged, at most (also bounded by the device's window).
        resend_after: seconds after which an unacknowledged chunk is sent again.
        progress_timeout: seconds without a newly acknowledged chunk before the update fails.
        total_timeout: seconds for the whole update.
    """

    chunk_size: int = 512
    resumable: bool = True
    discard: bool = False
    module_function: int | None = None
    max_in_flight: int = 64
    resend_after: float = 1.0
    progress_timeout: float = 30.0
    total_timeout: float = 600.0


@dataclass(frozen=True, slots=True)
class Ota3Result:
    """How a transfer ended: ``ok``, a reason in words, and the device's statistics when it sent them."""

    ok: bool
    reason: str
    stats: dict[str, Any] | None = None


def _digest(image: ImageSource) -> bytes:
    if isinstance(image, bytes):
        return sha256(image).digest()
    digest = sha256()
    for at in range(0, len(image), 65536):
        digest.update(image[at : at + 65536])
    return digest.digest()


class Ota3Transfer:
    """One OTA v3 update of one device; ``image`` is the whole file, sliced as chunks are sent."""

    #: Interface shared with `protocol.ota.OtaTransfer` (the gateway logs it): v3 chunks never wait.
    fast = True

    def __init__(self, image: ImageSource, options: Ota3Options | None = None) -> None:
        self.options = options or Ota3Options()
        size = self.options.chunk_size
        if not MIN_CHUNK_SIZE <= size <= MAX_CHUNK_SIZE or size % 4:
            raise ValueError(f"chunk size must be a multiple of 4 from {MIN_CHUNK_SIZE} to {MAX_CHUNK_SIZE}")
        if not image:
            raise ValueError("nothing to send")
        self._image = image
        self.sha256 = _digest(image)
        self.phase = Ota3Phase.IDLE
        self.result: Ota3Result | None = None
        #: What the device said at the start: its window, and the bytes it already held (resume).
        self.window = 0
        self.offset = 0
        #: Chunks of this transfer (after the resume offset), chunks written (first time and again),
        #: chunks written again, bytes written.
        self.chunk_count = 0
        self.chunks_sent = 0
        self.chunks_resent = 0
        self.bytes_sent = 0
        self.finish_attempts = 0
        #: UpdateAcks taken.
        self.acks = 0
        self._cumulative = 0
        self._next_new = 1
        self._resend: deque[int] = deque()
        self._queued: set[int] = set()
        self._in_flight: dict[int, tuple[float, int]] = {}  # index → (sent at, send sequence number)
        self._sent_once: set[int] = set()
        self._seq = 0
        self._held: set[int] = set()  # acknowledged beyond the cumulative count
        self._largest_acked_seq = 0
        self._start_rid: int | None = None
        self._finish_rid: int | None = None
        self._deadline = 0.0
        self._progress_at = 0.0

    # ------------------------------------------------------------------------------------------ state

    @property
    def file_length(self) -> int:
        return len(self._image)

    @property
    def done(self) -> bool:
        return self.phase in (Ota3Phase.DONE, Ota3Phase.FAILED)

    @property
    def wants_to_send(self) -> bool:
        """Something can be written now (a chunk, or the UpdateFinish after the last is acknowledged)."""
        if self.phase is not Ota3Phase.SENDING:
            return False
        return self._cumulative >= self.chunk_count or self._next_index(peek=True) is not None

    def get_timer(self) -> float | None:
        if self.phase in (Ota3Phase.IDLE, Ota3Phase.DONE, Ota3Phase.FAILED):
            return None
        times = [self._deadline, self._progress_at + self.options.progress_timeout]
        waiting = [at for i, (at, _) in self._in_flight.items() if i not in self._queued]
        if self.phase is Ota3Phase.SENDING and waiting:
            times.append(min(waiting) + self.options.resend_after)
        return min(times)

    # ------------------------------------------------------------------------------------------ actions

    def start(self, conn: CoapSession, now: float) -> None:
        """Send UpdateStart."""
        if self.phase is not Ota3Phase.IDLE:
            raise RuntimeError("the transfer has started already")
        self.phase = Ota3Phase.STARTING
        self._deadline = now + self.options.total_timeout
        self._progress_at = now
        o = self.options
        self._start_rid = conn.send(
            StartUpdateV3(
                self.file_length,
                o.chunk_size,
                sha256=self.sha256 if o.resumable else None,
                discard=o.discard,
                module_function=o.module_function,
            ),
            now,
        )

    def send(self, conn: CoapSession, now: float, max_chunks: int = 1) -> int:
        """
        Write up to ``max_chunks`` chunks (and UpdateFinish once every chunk is acknowledged).

        Returns:
            The bytes of chunk data written.
        """
        written = 0
        for _ in range(max_chunks):
            if self.phase is not Ota3Phase.SENDING:
                break
            index = self._next_index(peek=False)
            if index is None:
                break
            written += self._send_chunk(conn, index, now)
        if self.phase is Ota3Phase.SENDING and self._cumulative >= self.chunk_count:
            self._finish(conn, now)
        return written

    def handle_timer(self, conn: CoapSession, now: float) -> None:
        if self.done or self.phase is Ota3Phase.IDLE:
            return
        if now >= self._deadline:
            self._fail(f"the update did not finish within {self.options.total_timeout:g} s", conn, now)
        elif now >= self._progress_at + self.options.progress_timeout:
            self._fail(f"the device made no progress for {self.options.progress_timeout:g} s", conn, now)
        elif self.phase is Ota3Phase.SENDING:
            late = now - self.options.resend_after
            for index in sorted(i for i, (at, _) in self._in_flight.items() if at <= late):
                self._queue_resend(index)

    def handle_event(self, conn: CoapSession, event: Event, now: float) -> bool:
        """
        Take an event if it belongs to this transfer.

        Returns:
            True when it did (the caller should not handle it again).
        """
        if isinstance(event, ConnectionClosed):
            if not self.done and self.phase is not Ota3Phase.IDLE:
                self._fail("the device disconnected during the update")
            return False  # the link needs it too
        if self.done or self.phase is Ota3Phase.IDLE:
            return False
        rid = getattr(event, "request_id", None)
        if isinstance(event, UpdateStarted) and rid == self._start_rid:
            self._on_started(event, conn, now)
        elif isinstance(event, UpdateAcked):
            if self.phase is Ota3Phase.SENDING:
                self._on_acked(event, now)
        elif isinstance(event, UpdateFinishAnswered) and rid == self._finish_rid:
            self._on_finished(event)
        elif isinstance(event, UpdateRefused) and rid in (self._start_rid, self._finish_rid):
            what = "refused the update" if rid == self._start_rid else "rejected the image"
            self._fail(f"the device {what}: {error_reason(event.code, event.system_error, event.message)}")
        elif isinstance(event, RequestTimedOut) and rid in (self._start_rid, self._finish_rid):
            self._fail("the device did not answer in time", conn, now)
        elif isinstance(event, RequestFailed) and rid in (self._start_rid, self._finish_rid):
            closed = event.reason == "connection closed"
            detail = f"the device {event.reason}" if event.code is None else event.reason
            self._fail("the device disconnected during the update" if closed else detail)
        else:
            return False
        return True

    # ------------------------------------------------------------------------------------------ internals

    def _next_index(self, *, peek: bool) -> int | None:
        while self._resend:
            index = self._resend[0]
            if index in self._in_flight:  # still unacknowledged
                if not peek:
                    self._resend.popleft()
                    self._queued.discard(index)
                return index
            self._resend.popleft()  # acknowledged meanwhile
            self._queued.discard(index)
        limit = min(self.chunk_count, self._cumulative + self.window)
        busy = len(self._in_flight) - len(self._queued)
        if self._next_new <= limit and busy < self.options.max_in_flight:
            index = self._next_new
            if not peek:
                self._next_new += 1
            return index
        return None

    def _send_chunk(self, conn: CoapSession, index: int, now: float) -> int:
        size = self.options.chunk_size
        at = self.offset + (index - 1) * size
        data = self._image[at : at + size]
        if index in self._sent_once:
            self.chunks_resent += 1
        self._sent_once.add(index)
        self._seq += 1
        self._in_flight[index] = (now, self._seq)
        conn.send(SendUpdateChunk(index, data), now)
        self.chunks_sent += 1
        self.bytes_sent += len(data)
        return len(data)

    def _queue_resend(self, index: int) -> None:
        if index not in self._queued:
            self._resend.append(index)
            self._queued.add(index)

    def _on_started(self, event: UpdateStarted, conn: CoapSession, now: float) -> None:
        self._progress_at = now
        if not 0 <= event.offset <= self.file_length:
            self._fail(f"the device claims {event.offset} bytes of a {self.file_length}-byte file", conn, now)
            return
        self.offset = event.offset
        self.window = event.window or max(1, DEFAULT_WINDOW_BYTES // self.options.chunk_size)
        self.chunk_count = math.ceil((self.file_length - self.offset) / self.options.chunk_size)
        self.phase = Ota3Phase.SENDING

    def _on_acked(self, event: UpdateAcked, now: float) -> None:
        self.acks += 1
        cumulative = min(event.cumulative, self.chunk_count)
        held = {i for i in event.received if cumulative < i <= self.chunk_count}
        progressed = cumulative > self._cumulative or not held <= self._held
        for index in [i for i in self._in_flight if i <= cumulative or i in held]:
            _, seq = self._in_flight.pop(index)
            self._largest_acked_seq = max(self._largest_acked_seq, seq)
        self._cumulative = max(self._cumulative, cumulative)
        self._held = held
        if progressed:
            self._progress_at = now
        # Loss evidence: chunks sent well before one that has arrived, and still not acknowledged.
        threshold = self._largest_acked_seq - REORDER_THRESHOLD
        for index in sorted(i for i, (_, seq) in self._in_flight.items() if seq <= threshold):
            self._queue_resend(index)

    def _finish(self, conn: CoapSession, now: float) -> None:
        self.phase = Ota3Phase.FINISHING
        self.finish_attempts += 1
        self._progress_at = now
        self._finish_rid = conn.send(FinishUpdateV3(), now)

    def _on_finished(self, event: UpdateFinishAnswered) -> None:
        stats: dict[str, Any] | None = None
        try:
            body = json.loads(event.payload) if event.payload else None
        except (ValueError, UnicodeDecodeError):
            body = None
        if isinstance(body, dict):
            stats = body
        self.phase = Ota3Phase.DONE
        self.result = Ota3Result(True, "the device accepted the update", stats)

    def _fail(self, reason: str, conn: CoapSession | None = None, now: float = 0.0) -> None:
        cancel = conn is not None and self.phase is not Ota3Phase.IDLE
        self.phase = Ota3Phase.FAILED
        self.result = Ota3Result(False, reason)
        self._resend.clear()
        self._queued.clear()
        self._in_flight.clear()
        if cancel and conn is not None:
            # Tell the device to drop the update rather than wait for its own timeout.
            with contextlib.suppress(LocalProtocolError):
                conn.send(FinishUpdateV3(cancel=True), now)
