"""
The cloud's side of a legacy chunked OTA update (UpdateBegin, chunks, UpdateDone), as a sans-IO state machine.

Theory of operation:
    An `OtaTransfer` sits beside a cloud-role `CoapSession` (it is not part of it): it gives the connection
    commands (`BeginUpdate`, `SendChunk`, `FinishUpdate`) and is offered every event the connection yields,
    taking the ones that answer its own requests plus ``ChunksMissed``, device-sent ``UpdateFinished`` and
    ``ConnectionClosed``. It never writes by itself: the driver calls `send` when the socket has room (flow
    control is the driver's business) and `handle_timer` at `get_timer`. Time is always an argument.

    Phases::

        BEGIN ──UpdateReady──> SENDING ──all chunks out──> FINISHING ──UpdateDone ok──> DONE
                                  ^                            │ 4.00 + ChunkMissed
                                  └──────── resend those ──────┘
        any ──refusal, timeout, bad result, link closed──> FAILED

    - **Fast OTA** (asked for, and the UpdateReady flag says the device agrees): every chunk goes out with
      its index and no reply is expected; then UpdateDone. A device missing chunks answers 4.00 and lists
      them in ChunkMissed messages (several indices each, maybe several messages); they are resent. Device
      OS 0.7 then finishes *by itself* (a NON PUT ``/u`` with its result) once the last one arrives; later
      versions need UpdateDone again. When the driver does not say which kind of device it is
      (``device_finishes_alone`` None), the transfer waits ``completion_grace`` seconds for the device to
      finish and only then repeats UpdateDone — a 0.7 device has finished by then, a later one is asked.
    - **Plain OTA** (the device declines fast OTA, or the driver asks for plain): one chunk at a time, the
      next only once ChunkReceived 2.04 came back; a 4.00 (bad CRC) resends that chunk.
    - The result: ACK 2.04 (or the device's own PUT ``/u``) with ``{"r":"ok"|"error"|<int>,…}``: ``"ok"``
      and 0 are success, ``"error"`` and negative numbers (Device OS system errors) failure; no JSON at all
      is a success (the 2.04 says so). A refused UpdateBegin (4.00 from ≤1.1, 5.03 from ≥1.2: updates
      disabled) fails at once.
    - Deadlines: ``chunk_timeout`` seconds without progress (an answer, a ChunkMissed, a chunk written), and
      ``total_timeout`` for the whole update. The legacy protocol has no cancel message; a device left
      alone resets itself after ~30 s without chunks.

    ``withhold`` and ``bad_crc`` are fault injection for tests: chunks left out of the first pass (as if lost
    on the way) and chunks first sent with a wrong CRC.
"""

from __future__ import annotations

import json
import math
import zlib
from collections import deque
from dataclasses import dataclass, field
from enum import Enum
from typing import Protocol

from devicecloud.protocol.codes import Code, code_str
from devicecloud.protocol.commands import BeginUpdate, FinishUpdate, SendChunk
from devicecloud.protocol.connection import CoapSession
from devicecloud.protocol.events import (
    ChunkReceived,
    ChunksMissed,
    ConnectionClosed,
    Event,
    RequestFailed,
    RequestTimedOut,
    UpdateFinished,
    UpdateReady,
)

__all__ = ["MAX_CHUNKS", "ImageSource", "OtaOptions", "OtaPhase", "OtaResult", "OtaTransfer", "update_result"]

#: Device OS refuses files of this many chunks or more (``MAX_CHUNKS``).
MAX_CHUNKS = 65535
#: The largest chunk Device OS takes over TCP (spark-protocol's limit).
MAX_CHUNK_SIZE = 594


class ImageSource(Protocol):
    """
    What a transfer sends: ``bytes``, or anything of a length that gives byte ranges (the cloud reads a large
    upload's chunks from its file as they go out, rather than holding it in memory).
    """

    def __len__(self) -> int: ...

    def __getitem__(self, index: slice, /) -> bytes: ...


class OtaPhase(Enum):
    """See the module docstring."""

    IDLE = "idle"
    BEGIN = "begin"
    SENDING = "sending"
    FINISHING = "finishing"
    DONE = "done"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class OtaOptions:
    """
    How to run one transfer.

    Attributes:
        chunk_size: bytes per chunk (the device's ``ota_chunk_size``, usually 512).
        fast: ask for fast OTA (the device may still decline).
        chunk_timeout: seconds without progress before the update fails.
        total_timeout: seconds for the whole update.
        completion_grace: seconds to wait, after resending missed chunks, for a device that finishes alone.
        device_finishes_alone: True for Device OS 0.7 (before 0.8.0-rc.25), False for later; None unknown.
        max_finish_attempts: UpdateDone answered "chunks missing" this many times → failed.
        max_chunk_retries: a plain-OTA chunk refused this many times (bad CRC) → failed.
        withhold: test only: chunks left out of the first pass.
        bad_crc: test only: chunks first sent with a wrong CRC.
    """

    chunk_size: int = 512
    fast: bool = True
    chunk_timeout: float = 20.0
    total_timeout: float = 600.0
    completion_grace: float = 2.0
    device_finishes_alone: bool | None = None
    max_finish_attempts: int = 10
    max_chunk_retries: int = 5
    withhold: frozenset[int] = field(default_factory=frozenset)
    bad_crc: frozenset[int] = field(default_factory=frozenset)


@dataclass(frozen=True, slots=True)
class OtaResult:
    """How a transfer ended: ``ok``, a reason in words, and the device's result text if it sent one."""

    ok: bool
    reason: str
    device_result: str | None = None


def _test(bits: bytearray, index: int) -> bool:
    return bool(bits[index >> 3] & (1 << (index & 7)))


def _set(bits: bytearray, index: int) -> None:
    bits[index >> 3] |= 1 << (index & 7)


def _clear(bits: bytearray, index: int) -> None:
    bits[index >> 3] &= ~(1 << (index & 7)) & 0xFF


def update_result(payload: bytes) -> tuple[bool, str]:
    """
    Read a device's UpdateDone result (``{"r":"ok"}`` ≤1.x, ``{"r":0}`` 2.x; anything else after a 2.04).

    Returns:
        (success, reason).
    """
    try:
        body = json.loads(payload) if payload else None
    except (ValueError, UnicodeDecodeError):
        body = None
    r = body.get("r") if isinstance(body, dict) else None
    if r == "error":
        return False, "the device reported that the update failed"
    if isinstance(r, int) and not isinstance(r, bool) and r < 0:
        return False, f"the device reported that the update failed (error {r})"
    return True, "the device accepted the update"


class OtaTransfer:
    """
    One update of one device. ``image`` is the whole file; it is sliced into chunks as they are sent.
    """

    def __init__(self, image: ImageSource, options: OtaOptions | None = None) -> None:
        self.options = options or OtaOptions()
        size = self.options.chunk_size
        if not 1 <= size <= MAX_CHUNK_SIZE:
            raise ValueError(f"chunk size must be 1 to {MAX_CHUNK_SIZE}")
        if not image:
            raise ValueError("nothing to send")
        self.chunk_count = math.ceil(len(image) / size)
        if self.chunk_count >= MAX_CHUNKS:
            raise ValueError(f"{self.chunk_count} chunks: the protocol allows fewer than {MAX_CHUNKS}")
        self._image = image
        self.phase = OtaPhase.IDLE
        self.fast = False
        self.result: OtaResult | None = None
        #: Chunks written (first time and again), chunks written again, bytes written, UpdateDones sent.
        self.chunks_sent = 0
        self.chunks_resent = 0
        self.bytes_sent = 0
        self.finish_attempts = 0
        # Fast OTA's chunks to send: the first pass as a cursor, then the resends the device asked for, each
        # queued once (a bit per chunk); and a bit per chunk written at least once. A few KB for a 1 MB
        # image, where lists and sets of indices cost ~300 KB.
        self._next_first = self.chunk_count  # the first pass starts when the device accepts fast OTA
        self._resends: deque[int] = deque()
        self._resend_queued = bytearray((self.chunk_count + 7) // 8)
        self._sent_once = bytearray((self.chunk_count + 7) // 8)
        self._begin_rid: int | None = None
        self._finish_rid: int | None = None
        self._chunk_rid: int | None = None  # plain OTA: the chunk waiting for ChunkReceived
        self._next_plain = 0
        self._retries: dict[int, int] = {}
        self._finish_due = False  # an UpdateDone should go out as soon as the queue is empty
        self._grace_until: float | None = None
        self._resending = False  # resends of missed chunks are going out (grace starts when done)
        self._deadline = 0.0
        self._progress_at = 0.0

    # ------------------------------------------------------------------------------------------ state

    @property
    def file_length(self) -> int:
        return len(self._image)

    @property
    def done(self) -> bool:
        return self.phase in (OtaPhase.DONE, OtaPhase.FAILED)

    @property
    def wants_to_send(self) -> bool:
        """Something can be written now (chunks, or the UpdateDone that follows them)."""
        if self.phase is not OtaPhase.SENDING:
            return False
        if self._ready_to_finish():
            return True
        if self.fast:
            return self._has_queued()
        return self._chunk_rid is None and self._next_plain < self.chunk_count

    def _ready_to_finish(self) -> bool:
        if not self._finish_due:
            return False
        return (
            not self._has_queued()
            if self.fast
            else self._chunk_rid is None and self._next_plain >= self.chunk_count
        )

    def get_timer(self) -> float | None:
        if self.phase in (OtaPhase.IDLE, OtaPhase.DONE, OtaPhase.FAILED):
            return None
        times = [self._deadline, self._progress_at + self.options.chunk_timeout]
        if self._grace_until is not None:
            times.append(self._grace_until)
        return min(times)

    # ------------------------------------------------------------------------------------------ actions

    def start(self, conn: CoapSession, now: float) -> None:
        """Send UpdateBegin."""
        if self.phase is not OtaPhase.IDLE:
            raise RuntimeError("the transfer has started already")
        self.phase = OtaPhase.BEGIN
        self._deadline = now + self.options.total_timeout
        self._progress_at = now
        self._begin_rid = conn.send(
            BeginUpdate(self.file_length, self.options.chunk_size, fast=self.options.fast), now
        )

    def send(self, conn: CoapSession, now: float, max_chunks: int = 1) -> int:
        """
        Write up to ``max_chunks`` chunks (and the UpdateDone after the last).

        Returns:
            The bytes of chunk data written.
        """
        written = 0
        for _ in range(max_chunks):
            if not self.wants_to_send or self._ready_to_finish():
                break
            index = self._pop_queued() if self.fast else self._next_plain
            written += self._send_chunk(conn, index, now)
        if self.phase is OtaPhase.SENDING and self._ready_to_finish():
            self._finish(conn, now)
        elif self._resending and self.fast and not self._has_queued():
            # The resends are out: a 0.7 device finishes by itself now; later ones are asked when this ends.
            self._resending = False
            self._grace_until = now + self.options.completion_grace
        return written

    def handle_timer(self, conn: CoapSession, now: float) -> None:
        if self.done or self.phase is OtaPhase.IDLE:
            return
        if now >= self._deadline:
            self._fail(f"the update did not finish within {self.options.total_timeout:g} s")
        elif now >= self._progress_at + self.options.chunk_timeout:
            self._fail(f"the device made no progress for {self.options.chunk_timeout:g} s")
        elif self._grace_until is not None and now >= self._grace_until:
            self._grace_until = None
            self._finish_due = True  # it did not finish by itself: ask (Device OS ≥0.8)
            self.send(conn, now, 0)

    def handle_event(self, conn: CoapSession, event: Event, now: float) -> bool:
        """
        Take an event if it belongs to this transfer.

        Returns:
            True when it did (the caller should not handle it again).
        """
        if isinstance(event, ConnectionClosed):
            if not self.done and self.phase is not OtaPhase.IDLE:
                self._fail("the device disconnected during the update")
            return False  # the link needs it too
        if self.done or self.phase is OtaPhase.IDLE:
            return False
        rid = getattr(event, "request_id", None)
        if isinstance(event, UpdateReady) and rid == self._begin_rid:
            self._on_ready(event, now)
        elif isinstance(event, ChunkReceived) and rid is not None and rid == self._chunk_rid:
            self._on_chunk_received(event, now)
        elif isinstance(event, ChunksMissed):
            self._on_missed(event, now)
        elif isinstance(event, UpdateFinished) and (rid is None or rid == self._finish_rid):
            ok, reason = update_result(event.payload)
            self.result = OtaResult(ok, reason, event.payload.decode("utf-8", "replace") or None)
            self.phase = OtaPhase.DONE if ok else OtaPhase.FAILED
        elif isinstance(event, RequestFailed | RequestTimedOut) and rid is not None and rid in self._rids():
            self._on_failed(event, now)
        else:
            return False
        return True

    # ------------------------------------------------------------------------------------------ internals

    def _first_pending(self) -> int | None:
        """The next chunk of fast OTA's first pass (withheld ones skipped), or None when it is over."""
        withhold = self.options.withhold
        while self._next_first < self.chunk_count and self._next_first in withhold:
            self._next_first += 1
        return self._next_first if self._next_first < self.chunk_count else None

    def _has_queued(self) -> bool:
        return bool(self._resends) or self._first_pending() is not None

    def _pop_queued(self) -> int:
        index = self._first_pending()
        if index is not None:
            self._next_first += 1
            return index
        index = self._resends.popleft()
        _clear(self._resend_queued, index)
        return index

    def _is_queued(self, index: int) -> bool:
        first = self._first_pending()
        in_first_pass = first is not None and index >= first and index not in self.options.withhold
        return in_first_pass or _test(self._resend_queued, index)

    def _rids(self) -> set[int]:
        return {r for r in (self._begin_rid, self._finish_rid, self._chunk_rid) if r is not None}

    def _on_ready(self, event: UpdateReady, now: float) -> None:
        self._progress(now)
        self.fast = self.options.fast and event.fast
        self.phase = OtaPhase.SENDING
        if self.fast:
            self._next_first = 0
            self._finish_due = True

    def _send_chunk(self, conn: CoapSession, index: int, now: float) -> int:
        size = self.options.chunk_size
        data = self._image[index * size : (index + 1) * size]
        crc = None
        sent_before = _test(self._sent_once, index)
        if index in self.options.bad_crc and not sent_before:
            crc = zlib.crc32(data) ^ 0xFFFFFFFF
        if sent_before:
            self.chunks_resent += 1
        _set(self._sent_once, index)
        rid = conn.send(SendChunk(index, data, fast=self.fast, crc32=crc), now)
        if not self.fast:
            self._chunk_rid = rid
        self.chunks_sent += 1
        self.bytes_sent += len(data)
        self._progress(now)
        return len(data)

    def _finish(self, conn: CoapSession, now: float) -> None:
        self._finish_due = False
        self.finish_attempts += 1
        self.phase = OtaPhase.FINISHING
        self._finish_rid = conn.send(FinishUpdate(), now)

    def _on_chunk_received(self, event: ChunkReceived, now: float) -> None:
        self._chunk_rid = None
        self._progress(now)
        index = self._next_plain
        if event.ok:
            self._next_plain += 1
            self._finish_due = self._next_plain == self.chunk_count
            return
        self._retries[index] = self._retries.get(index, 0) + 1
        if self._retries[index] >= self.options.max_chunk_retries:
            self._fail(f"the device refused chunk {index} {self._retries[index]} times (bad CRC)")

    def _on_missed(self, event: ChunksMissed, now: float) -> None:
        self._progress(now)
        for index in event.indices:
            if index < self.chunk_count and not self._is_queued(index):
                self._resends.append(index)
                _set(self._resend_queued, index)
        if self.phase is OtaPhase.FINISHING:
            self.phase = OtaPhase.SENDING
        # A 0.7 device finishes by itself once the resends are in; a later one needs UpdateDone again.
        self._finish_due = self.options.device_finishes_alone is False
        self._resending = not self._finish_due
        self._grace_until = None

    def _on_failed(self, event: RequestFailed | RequestTimedOut, now: float) -> None:
        rid = event.request_id
        if isinstance(event, RequestTimedOut):
            self._fail("the device did not answer in time")
        elif event.code is None:  # no answer at all: the link closed, or the device reset the message
            closed = event.reason == "connection closed"
            self._fail(
                "the device disconnected during the update" if closed else f"the device {event.reason}"
            )
        elif rid == self._begin_rid:
            self._fail(f"the device refused the update ({code_str(event.code)}; its updates may be disabled)")
        elif rid == self._finish_rid and event.code == Code.BAD_REQUEST:
            self._progress(now)  # chunks are missing: ChunkMissed follows
            if self.finish_attempts >= self.options.max_finish_attempts:
                self._fail(f"chunks still missing after {self.finish_attempts} attempts")
        elif rid == self._finish_rid:
            self._fail(f"the device answered UpdateDone with {event.reason}")
        else:
            self._fail(f"chunk not delivered: {event.reason}")

    def _progress(self, now: float) -> None:
        self._progress_at = now

    def _fail(self, reason: str) -> None:
        self.phase = OtaPhase.FAILED
        self.result = OtaResult(False, reason)
        self._resends.clear()
        self._next_first = self.chunk_count
        self._grace_until = None
