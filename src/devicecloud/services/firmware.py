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

    Memory: every update under way reads its chunks from one image per distinct content (`SharedImages`,
    keyed by SHA-256): a hundred devices taking the same binary, from a user's flashes or a product release,
    hold it once. An uploaded binary stays in its spooled file (`domain.images.FileImage`): its chunks are
    read from the file as they go out, so a hundred concurrent uploads of different binaries do not hold a
    hundred copies in memory; releases, stored and compiled binaries are ``bytes``.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Coroutine
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import structlog

from devicecloud.domain.device_os_versions import known_releases
from devicecloud.domain.firmware import (
    FirmwareRejected,
    SourceFile,
    StoredBinary,
    check_fit,
    parse_firmware,
)
from devicecloud.domain.images import FileImage, Image, image_bytes, image_sha256, readable
from devicecloud.errors import DeviceOffline, InvalidInput, NotFound

if TYPE_CHECKING:
    from devicecloud.clock import Clock
    from devicecloud.domain.accounts import User
    from devicecloud.domain.devices import Device
    from devicecloud.services.devices import DeviceService
    from devicecloud.services.events import EventService
    from devicecloud.services.ports import BinaryStore, Compiler, DeviceUpdates, RemoteUpdates, UpdateHandle

__all__ = [
    "BINARY_LIFETIME",
    "BUILD_PLATFORMS",
    "FLASH_STATUS_EVENT",
    "MAX_BINARY_SIZE",
    "FirmwareService",
    "SharedImages",
]

logger = structlog.get_logger("devicecloud.firmware")

FLASH_STATUS_EVENT = "spark/flash/status"
#: No Particle device takes a larger file over the air (Gen3 OTA regions are under 2 MB; gcc takes 10 MB).
MAX_BINARY_SIZE = 4 * 1024 * 1024
# How long a binary flashed through another node stays in the shared store for the holder to read it.
REMOTE_FLASH_KEEP = timedelta(minutes=10)
#: How long a compiled binary can be downloaded.
BINARY_LIFETIME = timedelta(days=1)
#: The platforms build targets are listed for: the ones this server's TCP gateway serves with Device OS
#: releases before 4.0 (system module 4000); Gen3 devices need the UDP gateway.
BUILD_PLATFORMS = {"Photon": 6, "P1": 8, "Electron": 10}
_LAST_GEN2_MODULE = 4000
COMPILE_FAILED = "Compiler timed out or encountered an error"
NOT_CONFIGURED = "Cloud compile is not configured on this server; compile locally and flash the .bin file"


def compile_error(*errors: str) -> InvalidInput:
    """The compile error body of the catalogue (§11): ``output`` and ``errors`` besides ours."""
    return InvalidInput(errors[0], code="Compile failed", output=COMPILE_FAILED, errors=list(errors))


@dataclass(slots=True)
class _Held:
    data: Image
    updates: int


class SharedImages:
    """
    The images of the updates under way, one per distinct content (SHA-256), counted: `hold` gives
    the copy already held when there is one (the caller's own copy can then be freed), `release` forgets it
    after its last update.
    """

    def __init__(self) -> None:
        self._held: dict[bytes, _Held] = {}
        #: The key of each held object by its id: a release's rollout passes the very object it holds
        #: already (its cache), which then needs no hashing again (a held object is alive, so its id is
        #: not reused while listed here).
        self._keys: dict[int, bytes] = {}

    def hold(self, data: Image) -> tuple[bytes, Image]:
        """The key to `release` later, and the one copy of ``data`` to send."""
        key = self._keys.get(id(data))
        if key is None:
            key = image_sha256(data)
        held = self._held.get(key)
        if held is None:
            held = self._held[key] = _Held(data, 0)
            self._keys[id(data)] = key
        held.updates += 1
        return key, held.data

    def release(self, key: bytes) -> None:
        held = self._held.get(key)
        if held is None:
            return
        held.updates -= 1
        if held.updates <= 0:
            del self._held[key]
            self._keys.pop(id(held.data), None)
            if isinstance(held.data, FileImage):
                held.data.close()  # its descriptor now, not whenever the last reference goes

    @property
    def distinct(self) -> int:
        """How many different images are held."""
        return len(self._held)

    @property
    def updates(self) -> int:
        """How many updates hold one."""
        return sum(h.updates for h in self._held.values())

    @property
    def nbytes(self) -> int:
        """The bytes held (each distinct image once)."""
        return sum(len(h.data) for h in self._held.values())


class FirmwareService:
    """
    Over-the-air updates of a user's devices.
    """

    def __init__(
        self,
        *,
        devices: DeviceService,
        updates: DeviceUpdates,
        events: EventService,
        clock: Clock,
        binaries: BinaryStore,
        compiler: Compiler | None = None,
        remote: RemoteUpdates | None = None,
    ) -> None:
        self._devices = devices
        self._updates = updates
        self._events = events
        self._clock = clock
        self._binaries = binaries
        self._compiler = compiler
        #: Updates of devices linked to other nodes (a cluster); None: only this process's links.
        self._remote = remote
        self._watchers: set[asyncio.Task[None]] = set()
        #: The images of the updates started here, each distinct one held once.
        self.images = SharedImages()

    # ------------------------------------------------------------------ compiling

    async def compile(
        self, user: User, sources: list[SourceFile], platform_id: Any, version: str | None
    ) -> StoredBinary:
        """
        Compile ``sources`` for a platform and keep the binary for its owner (``POST /v1/binaries``).

        Raises:
            InvalidInput: no compile backend, no sources, no valid platform, or the compile failed (the
                catalogue's compile error body).
        """
        if self._compiler is None:
            raise compile_error(
                "Cloud compile is not configured on this server; compile locally and flash the .bin"
            )
        if not sources:
            raise InvalidInput("No source files were sent", code="invalid_request")
        platform = _platform(platform_id)
        result = await self._compiler.compile(sources, platform, version)
        if result.binary is None:
            raise compile_error(*(result.errors or ("the compiler gave no binary",)))
        now = self._clock.now()
        binary = StoredBinary(
            id=secrets.token_hex(12),
            owner_id=user.id,
            platform_id=platform,
            version=version or "latest",
            created_at=now,
            expires_at=now + BINARY_LIFETIME,
            data=result.binary,
        )
        await self._binaries.save(binary)
        logger.info("compiled", binary_id=binary.id, platform_id=platform, size=len(result.binary))
        return binary

    async def binary(self, user: User, binary_id: str) -> StoredBinary:
        """A compiled binary of the caller's; `NotFound` for unknown, expired and other users' alike."""
        found = await self._binaries.load(binary_id)
        if found is None or found.owner_id != user.id:
            raise NotFound("Binary not found", code="not_found")
        return found

    async def flash_sources(
        self, user: User, ref: str, sources: list[SourceFile], version: str | None
    ) -> Device:
        """Compile sources for the device's platform, then flash the result like any binary."""
        device = await self._devices.access_device(user, ref, "devices:update")
        if device.platform_id is None:
            raise InvalidInput("The device's platform is not known yet; it has never connected")
        binary = await self.compile(user, sources, device.platform_id, version)
        return await self.flash_binary(user, device.id, binary.data)

    @staticmethod
    def build_targets() -> dict[str, Any]:
        """
        ``GET /v1/build_targets``: every Device OS release the server can name, newest first, for the
        platforms it serves (`BUILD_PLATFORMS`); prereleases list their platforms under ``prereleases``.
        """
        platforms = sorted(BUILD_PLATFORMS.values())
        targets: list[dict[str, Any]] = []
        defaults: dict[str, str] = {}
        for module_version, name in reversed(known_releases()):
            if module_version >= _LAST_GEN2_MODULE:
                continue
            pre = "-" in name
            targets.append(
                {
                    "platforms": [] if pre else platforms,
                    "prereleases": platforms if pre else [],
                    "firmware_vendor": "Particle",
                    "version": name,
                }
            )
            if not pre:
                for platform in platforms:
                    defaults.setdefault(str(platform), name)
        return {"targets": targets, "platforms": dict(BUILD_PLATFORMS), "default_versions": defaults}

    # ------------------------------------------------------------------ flashing

    async def flash_binary(self, user: User, ref: str, data: Image) -> Device:
        """
        Check ``data`` against the device and start updating it (an uploaded file is sent from its file).

        Raises:
            PermissionDenied: not the caller's device.
            InvalidInput: the binary is broken or does not fit the device (the description says why).
            DeviceOffline: the device is not connected.
            Busy: the device is being updated already.
        """
        device = await self._devices.access_device(user, ref, "devices:update")
        if not data:
            raise InvalidInput("The binary is empty", code="invalid_binary")
        if len(data) > MAX_BINARY_SIZE:
            raise InvalidInput(f"The binary is larger than {MAX_BINARY_SIZE} bytes", code="invalid_binary")
        try:
            with readable(data) as whole:
                parse_firmware(whole)  # a broken binary is refused here, before any node is asked
        except FirmwareRejected as exc:
            raise InvalidInput(str(exc), code="invalid_binary") from exc
        try:
            self._updates.update_target(device.id)
        except DeviceOffline:
            if self._remote is None:
                raise
            await self._flash_elsewhere(device, data)
            return device
        await self._flash_here(device.id, device.owner_id, data)
        return device

    async def flash_stored(self, device_id: str, binary_id: str, owner_id: int | None) -> None:
        """
        The holder's half of `RemoteUpdates.flash_elsewhere`: flash the binary another node stored, with the
        checks `flash_binary` makes here. Raises as `flash_binary` does.
        """
        binary = await self._binaries.load(binary_id)
        if binary is None:
            raise InvalidInput("The binary is no longer available", code="invalid_binary")
        await self._flash_here(device_id, owner_id, binary.data)

    async def flash_release(self, device_id: str, data: bytes, product_id: int) -> UpdateHandle:
        """
        Start an update the cloud decided (a product firmware release, decision 0025): the same checks and
        status events as `flash_binary`, preceded by ``spark/status`` ``auto-update`` as the hosted cloud
        sends; the events reach the device's owner and its product's streams.

        Raises:
            FirmwareRejected: the binary does not fit the device as its link knows it.
            DeviceOffline: the device is not connected here.
            Busy: the device is being updated already.
        """
        image = parse_firmware(data)
        check_fit(image, self._updates.update_target(device_id))
        key, handle = self._start(device_id, data)
        owner_id: int | None = None
        logger.info(
            "flashing a release", device_id=device_id, size=len(data), app_hash=image.main.sha256.hex()
        )

        async def watch() -> None:
            try:
                outcome = await handle.finished()
            finally:
                self.images.release(key)
            await self._events.publish_internal(
                FLASH_STATUS_EVENT,
                "success " if outcome.ok else "failed ",
                owner_id=owner_id,
                device_id=device_id,
                product_id=product_id,
            )

        try:
            owner_id = await self._events.owner_of(device_id)
            for name, status in (("spark/status", "auto-update"), (FLASH_STATUS_EVENT, "started ")):
                await self._events.publish_internal(
                    name, status, owner_id=owner_id, device_id=device_id, product_id=product_id
                )
        finally:  # the watcher releases the image whatever happens here
            self._spawn(watch(), device_id)
        return handle

    async def _flash_elsewhere(self, device: Device, data: Image) -> None:
        """The device is linked to another node (or none): the binary goes by the shared store."""
        assert self._remote is not None
        now = self._clock.now()
        binary_id = secrets.token_hex(12)
        await self._binaries.save(
            StoredBinary(
                id=binary_id,
                owner_id=device.owner_id or 0,
                platform_id=0,
                version="flash",
                created_at=now,
                expires_at=now + REMOTE_FLASH_KEEP,
                data=image_bytes(data),
            )
        )
        await self._remote.flash_elsewhere(device.id, binary_id, device.owner_id)

    async def _flash_here(self, device_id: str, owner_id: int | None, data: Image) -> None:
        try:
            with readable(data) as whole:
                image = parse_firmware(whole)
            check_fit(image, self._updates.update_target(device_id))
        except FirmwareRejected as exc:
            raise InvalidInput(str(exc), code="invalid_binary") from exc
        key, handle = self._start(device_id, data)
        logger.info("flashing", device_id=device_id, size=len(data), app_hash=image.main.sha256.hex())
        try:
            await self._status(device_id, owner_id, "started ")
        finally:  # the watcher releases the image whatever happens here
            self._spawn(self._watch(device_id, owner_id, handle, key), device_id)

    def _start(self, device_id: str, data: Image) -> tuple[bytes, UpdateHandle]:
        """Start the update with the one held copy of ``data``; the caller releases the key when it ends."""
        key, image = self.images.hold(data)
        try:
            return key, self._updates.start_update(device_id, image)
        except BaseException:
            self.images.release(key)
            raise

    def _spawn(self, coro: Coroutine[Any, Any, None], device_id: str) -> None:
        task = asyncio.create_task(coro, name=f"flash-status-{device_id}")
        self._watchers.add(task)
        task.add_done_callback(self._watchers.discard)

    async def _watch(self, device_id: str, owner_id: int | None, handle: UpdateHandle, key: bytes) -> None:
        try:
            outcome = await handle.finished()
        finally:
            self.images.release(key)
        await self._status(device_id, owner_id, "success " if outcome.ok else "failed ")

    async def _status(self, device_id: str, owner_id: int | None, data: str) -> None:
        await self._events.publish_internal(FLASH_STATUS_EVENT, data, owner_id=owner_id, device_id=device_id)

    async def aclose(self) -> None:
        """Stop watching updates (shutdown); their outcome events are not published any more."""
        tasks = list(self._watchers)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def _platform(value: Any) -> int:
    try:
        platform = int(value)
    except (TypeError, ValueError):
        raise InvalidInput(
            "platform_id is required: the platform to compile for", code="invalid_request"
        ) from None
    if not 0 <= platform <= 0xFFFF:
        raise InvalidInput("platform_id is out of range", code="invalid_request")
    return platform
