"""
How a virtual device takes an over-the-air update, the way Device OS does, plus faults for tests.

Theory of operation:
    The link hands the OTA events (`UpdateBeginRequested`, `ChunkArrived`, `UpdateDoneRequested`) to
    :meth:`Updater.handle`. An update is accepted (fast OTA when both sides want it) unless the device's
    updates are disabled (then 5.03, as Device OS ≥1.2 answers). Chunks go into a buffer of the announced
    length; a plain chunk is answered 2.04, or 4.00 when its CRC is wrong; a fast one is not answered and a
    bad one is simply not kept. At UpdateDone, missing chunks are refused with 4.00 and listed in
    ChunkMissed messages (at most 40 indices, 50 on 0.x; CON on 0.x, NON on 2.x over TCP). A 0.x device
    then finishes by itself when the last missing chunk arrives; a 2.x one waits for UpdateDone again.

    The complete image is checked like a device checks it (module prefix, CRC-32, SHA-256, platform,
    function — `domain.firmware`; unmet dependencies are accepted, as Device OS does, which would boot into
    safe mode). The result is ``{"r":"ok"|"error","u":{…}}`` in 0.x style and ``{"r":0|<system error>}`` in
    2.x style. A good image is written to ``firmware_path`` (when given) and becomes the running
    application: the Describe lists it as a user part with its SHA-256 (``"u"``). Either way the device
    then "resets": it closes the link and reconnects, its next Hello carrying the "OTA succeeded" flag when
    the update was applied (cleared once a server Hello has been received, as Device OS does).

    Faults (`UpdateBehaviour`): refuse updates; decline fast OTA; lose a share of fast chunks on their first
    arrival (seeded, so a test is repeatable); drop the connection after some chunks, like a device losing
    power mid-update.

    OTA protocol v3 (a Gen3 device over UDP that announced Hello flag 0x80; ota-and-dtls.md §A.3):
    UpdateStart is accepted with a window of 128 KiB worth of chunks and the bytes already held of the same
    file (same size and SHA-256, kept across links and resets like Device OS's ``/sys/fw_transfer``: an
    interrupted update resumes). Chunks are NON and unanswered; an UpdateAck (cumulative count + bitmap)
    goes out after every second chunk, at once when a duplicate arrives, when the gaps change or when the
    file is complete, and otherwise 200 ms after the last chunk. ``drop_chunks`` loses that share of chunk
    datagrams on every arrival, as a lossy network would. UpdateFinish checks the image as above; a bad one
    is answered with the Device OS system error (5.03 + ``{"code","message"}``), a good one with a CON 2.04
    and the transfer statistics, and the image is applied (written, "reset") only once the cloud ACKs that
    2.04. ``ota_v3_counters`` records what tests count: chunks received, duplicates, the resume offset.
"""

from __future__ import annotations

import asyncio
import json
import random
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from devicecloud.domain.firmware import (
    FirmwareImage,
    FirmwareRejected,
    UpdateTarget,
    check_fit,
    parse_firmware,
)
from devicecloud.protocol import (
    AcceptUpdate,
    ChunkArrived,
    Code,
    Event,
    RejectRequest,
    ReportMissedChunks,
    ReportUpdateDone,
    RespondChunk,
    RespondUpdateDone,
    UpdateBeginRequested,
    UpdateDoneRequested,
)
from devicecloud.protocol.commands import (
    AcceptUpdateStart,
    RespondOtaError,
    RespondUpdateFinish,
    SendUpdateAck,
)
from devicecloud.protocol.events import (
    RequestCompleted,
    UpdateChunkArrived,
    UpdateFinishRequested,
    UpdateStartRequested,
)
from devicecloud.protocol.ota3_messages import MAX_CHUNK_SIZE, MIN_CHUNK_SIZE
from devicecloud.virtualdevice.link import DeviceLink

__all__ = ["AppliedUpdate", "Ota3Counters", "UpdateBehaviour", "Updater"]

#: Device OS system errors reported in a 2.x UpdateDone result.
_INTEGRITY_FAILED = -1330
_INVALID_PLATFORM = -1360
_INVALID_SIZE = -1351
_VALIDATION_FAILED = -1320
_UPDATES_DISABLED = -1380
_OTA_ERROR = -1390
_INVALID_ARGUMENT = -270
#: OTA v3: the receive window in bytes (Device OS: 128 KiB / chunk size chunks), the delayed UpdateAck.
V3_WINDOW_BYTES = 128 * 1024
V3_ACK_DELAY = 0.2
#: The largest file a virtual device takes (the gcc platform's OTA region).
V3_MAX_FILE = 10 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class UpdateBehaviour:
    """
    How the device treats updates (defaults: like a healthy device).

    Attributes:
        enabled: False = updates disabled: UpdateBegin is refused (5.03).
        fast: agree to fast OTA when the cloud asks.
        drop_chunks: share (0–1) of fast chunks lost on their first arrival (OTA v3: of chunk datagrams,
            on every arrival).
        drop_seed: seed of the loss pattern.
        disconnect_after_chunks: close the connection once this many chunks have arrived.
        corrupt_at: OTA v3: flip the byte at this file offset as it is stored (a flash write fault), so the
            device's own integrity check fails at UpdateFinish.
    """

    enabled: bool = True
    fast: bool = True
    drop_chunks: float = 0.0
    drop_seed: int = 0
    disconnect_after_chunks: int | None = None
    corrupt_at: int | None = None


@dataclass(frozen=True, slots=True)
class AppliedUpdate:
    """
    An image the device took: its bytes, the app hash (the module's SHA-256) and the product id and
    version of its suffix (None: not product firmware).
    """

    image: bytes
    app_hash: str
    product: tuple[int, int] | None = None


class _Transfer:
    def __init__(self, length: int, chunk_size: int, fast: bool) -> None:
        self.buffer = bytearray(length)
        self.chunk_size = chunk_size
        self.count = -(-length // chunk_size)
        self.fast = fast
        self.received: set[int] = set()
        self.next_plain = 0
        self.missing_reported = False
        self.arrivals = 0

    def store(self, index: int, data: bytes) -> None:
        at = index * self.chunk_size
        data = data[: max(0, len(self.buffer) - at)]
        self.buffer[at : at + len(data)] = data
        self.received.add(index)

    def missing(self) -> list[int]:
        return [i for i in range(self.count) if i not in self.received]


class _V3Transfer:
    """An OTA v3 file being received: what a resume needs survives the link (kept by the `Updater`)."""

    def __init__(self, size: int, sha256: bytes | None, chunk_size: int) -> None:
        self.size, self.sha256, self.chunk_size = size, sha256, chunk_size
        self.buffer = bytearray(size)
        self.offset = 0
        self.count = 0
        self.window = 1
        self.cumulative = 0
        self.received: set[int] = set()  # beyond the cumulative count
        self.arrivals = 0
        self.since_ack = 0
        self.stats = {"recv_chunks": 0, "dup_chunks": 0, "ooo_chunks": 0, "sent_acks": 0}

    def restart(self, offset: int) -> None:
        """Start (or resume at ``offset``): chunks are numbered from 1 after the bytes already held."""
        self.offset = offset
        self.count = -(-(self.size - offset) // self.chunk_size)
        self.window = max(1, V3_WINDOW_BYTES // self.chunk_size)
        self.cumulative, self.received, self.arrivals, self.since_ack = 0, set(), 0, 0

    @property
    def held_bytes(self) -> int:
        """The file's prefix held contiguously (what a later UpdateStart of the same file resumes from)."""
        return min(self.size, self.offset + self.cumulative * self.chunk_size)

    def gaps(self) -> int:
        """Chunks missing below the highest one held."""
        if not self.received:
            return 0
        return max(self.received) - self.cumulative - len(self.received)

    def chunk_length(self, index: int) -> int:
        return min(self.chunk_size, self.size - self.offset - (index - 1) * self.chunk_size)


@dataclass(slots=True)
class Ota3Counters:
    """What a virtual device counted of its OTA v3 updates (tests read it)."""

    chunks_received: int = 0
    duplicates: int = 0
    dropped: int = 0
    resumed_from: int = 0
    starts: int = 0


class Updater:
    """
    The OTA side of one virtual device (across its links).

    Args:
        platform_id: the device's platform.
        legacy: Device OS 0.x behaviour (finishes fast updates by itself, string results, CON ChunkMissed).
        behaviour: faults and refusals.
        firmware_path: where an applied image is written (None = kept in memory only).
        on_applied: called with each image taken, before the device resets.
        reset: closes the link so the device reconnects ("resets").
        log: a bound structlog logger.
    """

    def __init__(
        self,
        *,
        platform_id: int,
        legacy: bool,
        behaviour: UpdateBehaviour,
        firmware_path: Path | None,
        on_applied: Callable[[AppliedUpdate], None],
        reset: Callable[[DeviceLink, str], None],
        log: Any,
    ) -> None:
        self.platform_id = platform_id
        self.legacy = legacy
        self.behaviour = behaviour
        self.firmware_path = firmware_path
        self._on_applied = on_applied
        self._reset = reset
        self._log = log
        self._random = random.Random(behaviour.drop_seed)  # noqa: S311 - a repeatable loss pattern
        self._transfer: _Transfer | None = None
        #: Updates applied and refused (by the device's own checks), and the last chunk size used, for tests.
        self.applied = 0
        self.rejected = 0
        self.chunk_size: int | None = None
        self._v3: _V3Transfer | None = None
        self._ack_timer: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.ota_v3_counters = Ota3Counters()

    def handle(self, link: DeviceLink, event: Event) -> bool:
        """Take an OTA event; False when ``event`` is not one."""
        if isinstance(event, UpdateBeginRequested):
            self._begin(link, event)
        elif isinstance(event, ChunkArrived):
            self._chunk(link, event)
        elif isinstance(event, UpdateDoneRequested):
            self._done(link, event)
        elif isinstance(event, UpdateStartRequested):
            self._v3_start(link, event)
        elif isinstance(event, UpdateChunkArrived):
            self._v3_chunk(link, event)
        elif isinstance(event, UpdateFinishRequested):
            self._v3_finish(link, event)
        else:
            return False
        return True

    # ------------------------------------------------------------------------------------------ OTA v3

    def _v3_start(self, link: DeviceLink, event: UpdateStartRequested) -> None:
        size, chunk = event.file_size, event.chunk_size
        if not event.decoded or size <= 0 or not MIN_CHUNK_SIZE <= chunk <= MAX_CHUNK_SIZE or chunk % 4:
            link.send(RespondOtaError(event.request_id, _INVALID_ARGUMENT, "Invalid argument"))
            return
        if not self.behaviour.enabled:
            link.send(RespondOtaError(event.request_id, _UPDATES_DISABLED, "Updates are disabled"))
            self._log.info("update refused", reason="updates disabled", protocol="v3")
            return
        if size > V3_MAX_FILE:
            link.send(RespondOtaError(event.request_id, _INVALID_SIZE, "Invalid size"))
            return
        kept = self._v3
        same = (
            kept is not None
            and event.sha256 is not None
            and not event.discard
            and (kept.size, kept.sha256, kept.chunk_size) == (size, event.sha256, chunk)
        )
        transfer = kept if same and kept is not None else _V3Transfer(size, event.sha256, chunk)
        transfer.restart(transfer.held_bytes if same else 0)
        self._v3 = transfer
        self.chunk_size = chunk
        counters = self.ota_v3_counters
        counters.starts += 1
        counters.resumed_from = transfer.offset
        link.send(AcceptUpdateStart(event.request_id, transfer.window, transfer.offset))
        self._log.info(
            "update started", size=size, chunk_size=chunk, protocol="v3", resumed_from=transfer.offset
        )

    def _v3_chunk(self, link: DeviceLink, event: UpdateChunkArrived) -> None:
        transfer = self._v3
        if transfer is None or transfer.count == 0:
            return
        counters = self.ota_v3_counters
        if self.behaviour.drop_chunks and self._random.random() < self.behaviour.drop_chunks:
            counters.dropped += 1  # lost on the way, as a datagram on a lossy network
            return
        transfer.arrivals += 1
        limit = self.behaviour.disconnect_after_chunks
        if limit is not None and transfer.arrivals > limit:
            self._cancel_ack_timer()
            link.close("connection lost during the update")  # like pulling the plug; what it holds stays
            return
        index = event.index
        if not 1 <= index <= transfer.count or len(event.data) != transfer.chunk_length(index):
            self._log.info("bad OTA v3 chunk; update cancelled", index=index, size=len(event.data))
            self._v3 = None  # Device OS resets the message and cancels
            return
        if index > transfer.cumulative + transfer.window:
            return  # beyond the window: ignored
        counters.chunks_received += 1
        transfer.stats["recv_chunks"] += 1
        if index <= transfer.cumulative or index in transfer.received:
            counters.duplicates += 1
            transfer.stats["dup_chunks"] += 1
            self._v3_ack(link)
            return
        gaps_before = transfer.gaps()
        if index != transfer.cumulative + 1:
            transfer.stats["ooo_chunks"] += 1
        at = transfer.offset + (index - 1) * transfer.chunk_size
        transfer.buffer[at : at + len(event.data)] = event.data
        fault = self.behaviour.corrupt_at
        if fault is not None and at <= fault < at + len(event.data):
            transfer.buffer[fault] ^= 0xFF
        transfer.received.add(index)
        while transfer.cumulative + 1 in transfer.received:
            transfer.cumulative += 1
            transfer.received.discard(transfer.cumulative)
        gaps = transfer.gaps()
        transfer.since_ack += 1
        if transfer.since_ack >= 2 or gaps != gaps_before or transfer.cumulative == transfer.count:
            self._v3_ack(link)
        elif self._ack_timer is None:
            loop = asyncio.get_running_loop()
            self._ack_timer = loop.call_later(V3_ACK_DELAY, self._v3_delayed_ack, link)

    def _v3_delayed_ack(self, link: DeviceLink) -> None:
        self._ack_timer = None
        if self._v3 is not None and link.is_open:
            self._v3_ack(link)

    def _cancel_ack_timer(self) -> None:
        if self._ack_timer is not None:
            self._ack_timer.cancel()
            self._ack_timer = None

    def _v3_ack(self, link: DeviceLink) -> None:
        transfer = self._v3
        self._cancel_ack_timer()
        if transfer is None or not link.is_open:
            return
        transfer.since_ack = 0
        transfer.stats["sent_acks"] += 1
        link.send(SendUpdateAck(transfer.cumulative, frozenset(transfer.received)))

    def _v3_finish(self, link: DeviceLink, event: UpdateFinishRequested) -> None:
        transfer = self._v3
        self._cancel_ack_timer()
        if event.cancel:
            self._v3 = None
            link.send(RespondUpdateFinish(event.request_id))
            self._log.info("update cancelled by the cloud", protocol="v3")
            return
        if transfer is None:
            link.send(RespondOtaError(event.request_id, -210, "Invalid state"))
            return
        if transfer.cumulative < transfer.count:
            link.send(RespondOtaError(event.request_id, _OTA_ERROR, "Incomplete file transfer"))
            return
        self._v3 = None  # whatever the checks say, this transfer is over (a failed one is cancelled)
        image = bytes(transfer.buffer)
        error, parsed = self._check(image)
        if error or parsed is None:
            self.rejected += 1
            messages = {_INTEGRITY_FAILED: "Integrity check failed", _INVALID_PLATFORM: "Invalid platform"}
            link.send(RespondOtaError(event.request_id, error, messages.get(error, "Validation failed")))
            self._log.info("update rejected by the device's checks", error=error, protocol="v3")
            return
        stats = transfer.stats | {"proc_time": 1}
        payload = json.dumps(stats, separators=(",", ":")).encode()
        task = asyncio.get_running_loop().create_task(
            self._v3_apply_when_acked(link, RespondUpdateFinish(event.request_id, payload), image, parsed)
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _v3_apply_when_acked(
        self, link: DeviceLink, answer: RespondUpdateFinish, image: bytes, parsed: FirmwareImage
    ) -> None:
        """Device OS applies the update only once the cloud has ACKed its 2.04 (§A.3 step 7)."""
        result = await link.request(answer)
        if not isinstance(result, RequestCompleted):
            self._log.info("the cloud never acknowledged the update's end; not applied", protocol="v3")
            return
        self._apply(link, image, parsed)

    # ------------------------------------------------------------------------------------------ messages

    def _begin(self, link: DeviceLink, event: UpdateBeginRequested) -> None:
        if not self.behaviour.enabled or event.file_length is None or not event.chunk_size:
            link.send(RejectRequest(event.request_id, Code.SERVICE_UNAVAILABLE))
            self._log.info(
                "update refused", reason="updates disabled" if not self.behaviour.enabled else "bad"
            )
            return
        fast = event.fast and self.behaviour.fast
        self.chunk_size = event.chunk_size
        self._transfer = _Transfer(event.file_length, event.chunk_size, fast)
        link.send(AcceptUpdate(event.request_id, fast))
        self._log.info("update started", size=event.file_length, chunk_size=event.chunk_size, fast=fast)

    def _chunk(self, link: DeviceLink, event: ChunkArrived) -> None:
        transfer = self._transfer
        if transfer is None:
            if event.request_id is not None:
                link.send(RespondChunk(event.request_id, False))
            return
        transfer.arrivals += 1
        limit = self.behaviour.disconnect_after_chunks
        if limit is not None and transfer.arrivals > limit:
            self._transfer = None
            link.close("connection lost during the update")  # like pulling the plug: no answer, no reset
            return
        good = event.crc32 is not None and zlib.crc32(event.data) == event.crc32
        if event.index is None:  # plain OTA: one at a time, answered
            if good:
                transfer.store(transfer.next_plain, event.data)
                transfer.next_plain += 1
            if event.request_id is not None:
                link.send(RespondChunk(event.request_id, good))
            return
        first = event.index not in transfer.received
        lost = first and self._random.random() < self.behaviour.drop_chunks and not transfer.missing_reported
        if good and not lost and event.index < transfer.count:
            transfer.store(event.index, event.data)
        if self.legacy and transfer.missing_reported and not transfer.missing():
            self._complete(link, None)  # Device OS 0.7 finishes by itself once the gaps are filled

    def _done(self, link: DeviceLink, event: UpdateDoneRequested) -> None:
        transfer = self._transfer
        if transfer is None:
            link.send(RejectRequest(event.request_id, Code.BAD_REQUEST))
            return
        missing = transfer.missing() if transfer.fast else list(range(transfer.next_plain, transfer.count))
        if missing:
            link.send(RejectRequest(event.request_id, Code.BAD_REQUEST))
            if transfer.fast:
                transfer.missing_reported = True
                limit = 50 if self.legacy else 40
                link.send(ReportMissedChunks(tuple(missing[:limit]), confirmable=self.legacy))
            return
        self._complete(link, event.request_id)

    # ------------------------------------------------------------------------------------------ the end

    def _complete(self, link: DeviceLink, request_id: int | None) -> None:
        transfer = self._transfer
        assert transfer is not None
        self._transfer = None
        image = bytes(transfer.buffer)
        error, parsed = self._check(image)
        payload = self._result(error, parsed)
        if request_id is None:
            link.send(ReportUpdateDone(payload))
        else:
            link.send(RespondUpdateDone(request_id, payload))
        if error == 0 and parsed is not None:
            self._apply(link, image, parsed)
            return
        self.rejected += 1
        self._log.info("update rejected by the device's checks; resetting", error=error)
        self._reset(link, "reset after an update")

    def _apply(self, link: DeviceLink, image: bytes, parsed: FirmwareImage) -> None:
        """The image becomes the running application: write it, tell the device, "reset"."""
        self.applied += 1
        if self.firmware_path is not None:
            self.firmware_path.parent.mkdir(parents=True, exist_ok=True)
            self.firmware_path.write_bytes(image)
        main = parsed.main
        product = None
        if main.product_id is not None and main.product_version is not None:
            product = (main.product_id, main.product_version)
        self._on_applied(AppliedUpdate(image, main.sha256.hex(), product))
        self._log.info("update applied; resetting", size=len(image), app_hash=parsed.main.sha256.hex())
        self._reset(link, "reset after an update")

    def _check(self, image: bytes) -> tuple[int, FirmwareImage | None]:
        try:
            parsed = parse_firmware(image)
        except FirmwareRejected:
            return _INTEGRITY_FAILED, None
        try:
            check_fit(parsed, UpdateTarget(self.platform_id, hello_flags=0xFF))
        except FirmwareRejected as exc:
            text = str(exc)
            if "platform" in text:
                return _INVALID_PLATFORM, parsed
            return (_INVALID_SIZE if "at most" in text else _VALIDATION_FAILED), parsed
        return 0, parsed

    def _result(self, error: int, parsed: FirmwareImage | None) -> bytes:
        if not self.legacy:
            return json.dumps({"r": error}, separators=(",", ":")).encode()
        module: dict[str, Any] = {}
        if parsed is not None:
            main = parsed.main
            valid = 30 if error == 0 else 26
            module = {"s": main.length, "l": "t", "vc": 30, "vv": valid, "f": "u", "n": str(main.index)}
            module |= {"v": main.version, "u": main.sha256.hex()}
        body = {"r": "ok" if error == 0 else "error", "u": module}
        return json.dumps(body, separators=(",", ":")).encode()
