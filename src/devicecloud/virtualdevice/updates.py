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
"""

from __future__ import annotations

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
from devicecloud.virtualdevice.link import DeviceLink

__all__ = ["AppliedUpdate", "UpdateBehaviour", "Updater"]

#: Device OS system errors reported in a 2.x UpdateDone result.
_INTEGRITY_FAILED = -1330
_INVALID_PLATFORM = -1360
_INVALID_SIZE = -1351
_VALIDATION_FAILED = -1320


@dataclass(frozen=True, slots=True)
class UpdateBehaviour:
    """
    How the device treats updates (defaults: like a healthy device).

    Attributes:
        enabled: False = updates disabled: UpdateBegin is refused (5.03).
        fast: agree to fast OTA when the cloud asks.
        drop_chunks: share (0–1) of fast chunks lost on their first arrival.
        drop_seed: seed of the loss pattern.
        disconnect_after_chunks: close the connection once this many chunks have arrived.
    """

    enabled: bool = True
    fast: bool = True
    drop_chunks: float = 0.0
    drop_seed: int = 0
    disconnect_after_chunks: int | None = None


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

    def handle(self, link: DeviceLink, event: Event) -> bool:
        """Take an OTA event; False when ``event`` is not one."""
        if isinstance(event, UpdateBeginRequested):
            self._begin(link, event)
        elif isinstance(event, ChunkArrived):
            self._chunk(link, event)
        elif isinstance(event, UpdateDoneRequested):
            self._done(link, event)
        else:
            return False
        return True

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
        else:
            self.rejected += 1
            self._log.info("update rejected by the device's checks; resetting", error=error)
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
