"""
Flashing a device over the air: the checks before a byte is sent, the update, and the events that tell.

Theory of operation:
    `flash_binary` checks, in this order, and changes nothing when any check fails: the device is the
    caller's (`DeviceService.access_device`: `PermissionDenied` for missing and foreign alike); the file is a
    Particle module and intact (prefix, CRC-32, SHA-256); the device is connected here (`DeviceOffline`);
    the binary fits the device as its live link knows it (platform, size, module function, compressed or
    combined, dependencies on its Device OS modules — `domain.firmware.check_fit`); no update is under way
    (`Busy`). Every refusal of the binary is `InvalidInput` naming the reason.

    Then the gateway starts the update (`ports.DeviceUpdates`) and this returns; ``spark/flash/status``
    ``"started "`` is published at once and ``"success "`` or ``"failed "`` when the update ends (with the
    trailing space the hosted cloud sends), private to the device's owner, ``coreid`` "particle-internal".
    "success" means the device took the image (its UpdateDone answer), as on the hosted cloud; it then
    resets and comes back online.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import structlog

from devicecloud.domain.firmware import FirmwareRejected, check_fit, parse_firmware
from devicecloud.errors import InvalidInput

if TYPE_CHECKING:
    from devicecloud.domain.accounts import User
    from devicecloud.domain.devices import Device
    from devicecloud.services.devices import DeviceService
    from devicecloud.services.events import EventService
    from devicecloud.services.ports import DeviceUpdates, UpdateHandle

__all__ = ["FLASH_STATUS_EVENT", "MAX_BINARY_SIZE", "FirmwareService"]

logger = structlog.get_logger("devicecloud.firmware")

FLASH_STATUS_EVENT = "spark/flash/status"
#: No Particle device takes a larger file over the air (Gen3 OTA regions are under 2 MB; gcc takes 10 MB).
MAX_BINARY_SIZE = 4 * 1024 * 1024


class FirmwareService:
    """
    Over-the-air updates of a user's devices.
    """

    def __init__(self, *, devices: DeviceService, updates: DeviceUpdates, events: EventService) -> None:
        self._devices = devices
        self._updates = updates
        self._events = events
        self._watchers: set[asyncio.Task[None]] = set()

    async def flash_binary(self, user: User, ref: str, data: bytes) -> Device:
        """
        Check ``data`` against the device and start updating it.

        Raises:
            PermissionDenied: not the caller's device.
            InvalidInput: the binary is broken or does not fit the device (the description says why).
            DeviceOffline: the device is not connected.
            Busy: the device is being updated already.
        """
        device = await self._devices.access_device(user, ref)
        if not data:
            raise InvalidInput("The binary is empty", code="invalid_binary")
        if len(data) > MAX_BINARY_SIZE:
            raise InvalidInput(f"The binary is larger than {MAX_BINARY_SIZE} bytes", code="invalid_binary")
        try:
            image = parse_firmware(data)
            check_fit(image, self._updates.update_target(device.id))
        except FirmwareRejected as exc:
            raise InvalidInput(str(exc), code="invalid_binary") from exc
        handle = self._updates.start_update(device.id, data)
        logger.info("flashing", device_id=device.id, size=len(data), app_hash=image.main.sha256.hex())
        await self._status(device, "started ")
        task = asyncio.create_task(self._watch(device, handle), name=f"flash-status-{device.id}")
        self._watchers.add(task)
        task.add_done_callback(self._watchers.discard)
        return device

    async def _watch(self, device: Device, handle: UpdateHandle) -> None:
        outcome = await handle.finished()
        await self._status(device, "success " if outcome.ok else "failed ")

    async def _status(self, device: Device, data: str) -> None:
        await self._events.publish_internal(
            FLASH_STATUS_EVENT, data, owner_id=device.owner_id, device_id=device.id
        )

    async def aclose(self) -> None:
        """Stop watching updates (shutdown); their outcome events are not published any more."""
        tasks = list(self._watchers)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
