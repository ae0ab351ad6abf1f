"""
Over-the-air updates on live links: `services.ports.DeviceUpdates` for this gateway.

Theory of operation:
    `GatewayUpdates.start_update` checks the device has a link and no update under way (one per device; a
    second gets `errors.Busy`), builds a `protocol.ota.OtaTransfer` and runs it as a `FlashJob` task beside
    the link's own task. The link offers every event it drains to its job first (`Link.update`), so the
    transfer sees the answers to its requests while everything else (function calls, variable reads,
    events) goes on as usual on the same connection.

    Flow control: the job writes a few chunks at a time and yields to the event loop after each batch, and
    while `QUEUE_BYTES` or more wait in the socket's write buffer it waits for the buffer to drain (the
    transport's own high/low water marks) instead of writing more. So an update never fills the link's
    buffer (which would end the link, `link.MAX_WRITE_BUFFER`) nor pushes the device's other traffic more
    than `QUEUE_BYTES` back, and a device that stops reading only stalls its own update (until the
    transfer's progress deadline fails it).

    `DeviceFacts` is what a link learns that an update needs: the Hello's platform and flags, the Describe's
    module list, and the limits Device OS ≤2.x announces in its ``spark/hardware/max_binary`` and
    ``spark/hardware/ota_chunk_size`` events (≥3.0 puts them, and its system version, in the Hello). The
    Device OS version decides how a fast update ends: 0.7 finishes by itself, 0.8.0-rc.25 and later want
    UpdateDone again (see `protocol.ota`).

    Which protocol: a device whose Hello carries flag 0x80 (Gen3 on Device OS ≥ 3.0) has only OTA protocol
    v3 (`protocol.ota3.Ota3Transfer`: windowed NON chunks, UpdateAck bitmaps, resume by SHA-256), which runs
    over UDP; every other device keeps the legacy transfer. Both have the same surface, so `FlashJob` drives
    either the same way (over UDP the link's "write buffer" is always empty, so the transfer's own window and
    in-flight bound pace it), and the API, the checks and the ``spark/flash/status`` events do not change.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import structlog

from devicecloud.domain.firmware import UpdateOutcome, UpdateTarget
from devicecloud.domain.images import Image
from devicecloud.errors import Busy, DeviceOffline, InvalidInput
from devicecloud.gateway.translate import system_module_version
from devicecloud.protocol import (
    ConnectionClosed,
    ConnectionState,
    Description,
    Event,
    EventPublished,
    HelloReceived,
    LocalProtocolError,
)
from devicecloud.protocol.ota import MAX_CHUNK_SIZE, OtaOptions, OtaTransfer
from devicecloud.protocol.ota3 import Ota3Options, Ota3Transfer
from devicecloud.protocol.ota3_messages import MAX_CHUNK_SIZE as V3_MAX_CHUNK_SIZE
from devicecloud.protocol.ota3_messages import MIN_CHUNK_SIZE as V3_MIN_CHUNK_SIZE

if TYPE_CHECKING:
    from devicecloud.clock import Clock, TimerHandle
    from devicecloud.gateway.link import Link
    from devicecloud.gateway.registry import LinkRegistry

__all__ = ["QUEUE_BYTES", "DeviceFacts", "FlashJob", "GatewayUpdates"]

logger = structlog.get_logger("devicecloud.gateway")

#: Bytes of an update allowed to wait in a link's write buffer; past it the update waits for the device.
QUEUE_BYTES = 16 * 1024
#: Chunks written per turn of the event loop.
BATCH = 8
#: The chunk size when the device has not said (Device OS's own on Core, Photon, P1, Electron).
DEFAULT_CHUNK_SIZE = 512
#: Device OS 0.8.0-rc.25: from this system module version on, a fast update needs UpdateDone again.
RESEND_DONE_SINCE = 324
#: Hello flag of devices that speak only OTA protocol v3 (Gen3 on Device OS ≥3.0).
OTA_V3_HELLO_FLAG = 0x80
_MAX_BINARY_EVENT = "spark/hardware/max_binary"
_CHUNK_SIZE_EVENT = "spark/hardware/ota_chunk_size"


class DeviceFacts:
    """What one link has learnt about its device that an update needs."""

    def __init__(self) -> None:
        self.platform_id: int | None = None
        self.hello_flags = 0
        self.max_binary: int | None = None
        self.chunk_size: int | None = None
        self.modules: tuple[Mapping[str, Any], ...] | None = None
        self.system_version: int | None = None
        #: The OTA chunk size the Hello announced (Device OS ≥ 3.0), unbounded by the legacy maximum.
        self.hello_chunk_size: int | None = None

    def on_hello(self, event: HelloReceived) -> None:
        self.platform_id, self.hello_flags = event.platform_id, event.flags
        self.system_version = event.system_version
        if event.max_binary:  # Device OS ≥ 3.0 says its limits in the Hello instead of events
            self.max_binary = event.max_binary
        if event.ota_chunk_size:
            self.chunk_size = min(event.ota_chunk_size, MAX_CHUNK_SIZE)
            self.hello_chunk_size = event.ota_chunk_size

    def on_describe(self, description: Description) -> None:
        if description.modules is not None:
            self.modules = tuple(m for m in description.modules if isinstance(m, Mapping))

    def on_event(self, event: EventPublished) -> None:
        if event.name not in (_MAX_BINARY_EVENT, _CHUNK_SIZE_EVENT) or event.data is None:
            return
        try:
            value = int(event.data.decode("ascii"))
        except (UnicodeDecodeError, ValueError):
            return
        if value <= 0:
            return
        if event.name == _MAX_BINARY_EVENT:
            self.max_binary = value
        else:
            self.chunk_size = min(value, MAX_CHUNK_SIZE)

    def target(self) -> UpdateTarget:
        return UpdateTarget(self.platform_id, self.max_binary, self.hello_flags, self.modules)

    @property
    def ota_v3(self) -> bool:
        """The device takes updates over OTA protocol v3 only (Hello flag 0x80)."""
        return bool(self.hello_flags & OTA_V3_HELLO_FLAG)

    def v3_chunk_size(self) -> int:
        """The Hello's chunk size within what v3 allows (512…1136, a multiple of 4); 512 when unsaid."""
        size = self.hello_chunk_size or DEFAULT_CHUNK_SIZE
        return max(V3_MIN_CHUNK_SIZE, min(V3_MAX_CHUNK_SIZE, size - size % 4))

    def finishes_alone(self) -> bool | None:
        version = system_module_version(self.modules) or self.system_version
        return None if version is None else version < RESEND_DONE_SINCE


Transfer = OtaTransfer | Ota3Transfer


class FlashJob:
    """One update of one link's device: the transfer, written with flow control, as a task."""

    def __init__(self, link: Link, transfer: Transfer, clock: Clock) -> None:
        self.link = link
        self.transfer = transfer
        self._clock = clock
        self._wake = asyncio.Event()
        self._timer: TimerHandle | None = None
        self._timer_at: float | None = None
        self._outcome: asyncio.Future[UpdateOutcome] = asyncio.get_running_loop().create_future()
        self._next_mark = 0.25  # progress is logged at each quarter of the image written

    async def finished(self) -> UpdateOutcome:
        return await asyncio.shield(self._outcome)

    def offer(self, event: Event) -> bool:
        """Called by the link for every event it drains; True when the transfer took it."""
        taken = self.transfer.handle_event(self.link.connection, event, self._clock.monotonic())
        if taken or isinstance(event, ConnectionClosed):
            self._wake.set()
        return taken

    def begin(self) -> None:
        """Send UpdateBegin now (so "started" means it is on its way); `run` does the rest."""
        self.link.writer.transport.set_write_buffer_limits(high=QUEUE_BYTES, low=QUEUE_BYTES // 4)
        self.transfer.start(self.link.connection, self._clock.monotonic())
        self.link.transmit()
        self._rearm()

    async def run(self) -> None:
        transfer, link = self.transfer, self.link
        conn, writer = link.connection, link.writer
        transport = writer.transport
        try:
            while not transfer.done:
                self._rearm()
                if conn.state is ConnectionState.CLOSED:
                    self.offer(ConnectionClosed("connection closed"))
                elif not transfer.wants_to_send:
                    await self._wake.wait()
                    self._wake.clear()
                elif transport.get_write_buffer_size() >= QUEUE_BYTES:
                    with contextlib.suppress(ConnectionError):
                        await writer.drain()
                else:
                    transfer.send(conn, self._clock.monotonic(), BATCH)
                    link.transmit()
                    self._log_progress()
                    await asyncio.sleep(0)  # the device's other traffic goes between two batches
        except LocalProtocolError:  # the connection closed between two checks
            self.offer(ConnectionClosed("connection closed"))
        finally:
            if self._timer is not None:
                self._timer.cancel()
            with contextlib.suppress(RuntimeError):  # a transport already gone
                transport.set_write_buffer_limits()
            result = transfer.result
            outcome = UpdateOutcome(result.ok, result.reason) if result else UpdateOutcome(False, "cancelled")
            if not self._outcome.done():
                self._outcome.set_result(outcome)

    def _log_progress(self) -> None:
        t = self.transfer
        held = t.offset if isinstance(t, Ota3Transfer) else 0  # a resumed v3 update starts part way
        done = min(held + t.bytes_sent, t.file_length) / t.file_length
        if done >= self._next_mark:
            logger.info(
                "update progress",
                device_id=self.link.device_id,
                percent=int(done * 100),
                resent=t.chunks_resent,
            )
            while self._next_mark <= done:
                self._next_mark += 0.25

    def _rearm(self) -> None:
        deadline = self.transfer.get_timer()
        if deadline == self._timer_at:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer, self._timer_at = None, deadline
        if deadline is not None:
            self._timer = self._clock.call_at(deadline, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = self._timer_at = None
        try:
            self.transfer.handle_timer(self.link.connection, self._clock.monotonic())
            self.link.transmit()
        except LocalProtocolError:
            pass  # the link closed; the job sees that when it wakes
        self._wake.set()


class GatewayUpdates:
    """
    Updates of the devices linked to this gateway (implements `services.ports.DeviceUpdates`).
    """

    def __init__(self, registry: LinkRegistry[Link], clock: Clock) -> None:
        self._registry = registry
        self._clock = clock
        self._jobs: dict[str, FlashJob] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def _link(self, device_id: str) -> Link:
        link = self._registry.get(device_id)
        if link is None or not link.online:
            raise DeviceOffline("Device is not connected")
        return link

    def update_target(self, device_id: str) -> UpdateTarget:
        return self._link(device_id).facts.target()

    def updating(self, device_id: str) -> bool:
        return device_id in self._jobs

    def job(self, device_id: str) -> FlashJob | None:
        """The update under way for ``device_id`` (tests and operators look at its transfer)."""
        return self._jobs.get(device_id)

    def start_update(self, device_id: str, image: Image) -> FlashJob:
        link = self._link(device_id)
        if device_id in self._jobs:
            raise Busy("An update of this device is already in progress", code="Update in progress")
        facts = link.facts
        transfer: Transfer
        try:
            if facts.ota_v3:
                if not link.connection.unreliable:
                    raise InvalidInput(
                        "This device takes updates only over OTA protocol v3, which runs over UDP",
                        code="unsupported",
                    )
                transfer = Ota3Transfer(image, Ota3Options(chunk_size=facts.v3_chunk_size()))
            else:
                options = OtaOptions(
                    chunk_size=facts.chunk_size or DEFAULT_CHUNK_SIZE,
                    device_finishes_alone=facts.finishes_alone(),
                )
                transfer = OtaTransfer(image, options)
        except ValueError as exc:
            raise InvalidInput(f"The binary cannot be sent: {exc}") from exc
        job = FlashJob(link, transfer, self._clock)
        try:
            job.begin()
        except LocalProtocolError as exc:  # the link closed just now
            raise DeviceOffline("Device is not connected") from exc
        link.update = job
        self._jobs[device_id] = job
        task = asyncio.create_task(self._run(device_id, job), name=f"device-update-{device_id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return job

    async def _run(self, device_id: str, job: FlashJob) -> None:
        log = logger.bind(device_id=device_id)
        t = job.transfer
        protocol = "v3" if isinstance(t, Ota3Transfer) else "legacy"
        log.info("update started", size=t.file_length, chunk_size=t.options.chunk_size, protocol=protocol)
        try:
            await job.run()
        except Exception:
            log.exception("update failed inside the gateway")
        finally:
            if job.link.update is job:
                job.link.update = None
            self._jobs.pop(device_id, None)
        outcome = await job.finished()
        extra = {"resumed_from": t.offset, "window": t.window} if isinstance(t, Ota3Transfer) else {}
        log.info(
            "update finished" if outcome.ok else "update failed",
            reason=outcome.reason,
            fast=t.fast,
            chunks=t.chunk_count,
            sent=t.chunks_sent,
            resent=t.chunks_resent,
            rounds=t.finish_attempts,
            **extra,
        )

    async def stop(self) -> None:
        """Cancel what is still running (the links are closing anyway)."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
