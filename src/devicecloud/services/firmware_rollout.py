"""
Product firmware reaching devices (issue 12 section 4, decision 0025): after a product device connects, or
when a release or a lock asks for it, work out the firmware the device should run and flash it if it runs
something else.

Theory of operation:
    The gateway's link facts arrive through `DeviceSessionService` as synchronous calls that only touch
    memory (`connected`, `disconnected`, and the device's own ``particle/device/updates/*`` reports through
    `device_event`): a connect puts the device in a queue, due `RolloutPolicy.delay` seconds later (the
    hosted cloud's "a few seconds after the handshake"), by when Device OS has described itself (its
    application's SHA-256) and reported whether its updates are enabled. Nothing here runs on a device's
    path and nothing writes to the database (decision 0013).

    One worker task takes due devices in batches (`RolloutPolicy.batch`), reads, per product, its releases
    and firmware list (cached until a release changes here, or `RELEASE_CACHE_TTL`) and the batch's lock
    fields and groups (one read), bounded by `RolloutPolicy.read_timeout`. For each device
    `domain.product_firmware.target_firmware` decides (development → locked → group → product default) and
    `needs_update` compares with what it runs (the Hello's product firmware version, else the Describe's
    application hash). Then:

    - a device that said its updates are disabled (``particle/device/updates/enabled`` "false", which
      Device OS publishes after every connect) and is not forced, and a device targeted by an *intelligent*
      release that has not said they are enabled, is asked first: ``particle/device/updates/pending``
      "true" is sent to it and it waits until it publishes ``…/enabled`` "true" (its acceptance);
    - otherwise `FirmwareService.flash_release` starts the update (same checks and status events as a
      user's flash). The one-update-per-device rule of the gateway holds: a device being updated is
      skipped (`Busy`) and checked again at its next connect. At most `RolloutPolicy.max_updates` release
      updates run from this process at once; the others wait in the queue.

    The queue is bounded (`RolloutPolicy.max_pending`): a device that does not fit is logged and counted,
    and checked at its next connect. Only devices linked to this process are flashed by it.
"""

from __future__ import annotations

import asyncio
import heapq
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import structlog

from devicecloud.domain.firmware import FirmwareRejected
from devicecloud.domain.product_firmware import (
    FleetDevice,
    ProductFirmware,
    Releases,
    Rule,
    needs_update,
    target_firmware,
)
from devicecloud.errors import Busy, DeviceOffline, DomainError

if TYPE_CHECKING:
    from devicecloud.clock import Clock
    from devicecloud.services.events import EventService
    from devicecloud.services.firmware import FirmwareService
    from devicecloud.services.ports import BinaryStore, DeviceUpdates, UpdateHandle
    from devicecloud.store.interfaces import Store

__all__ = [
    "PENDING_EVENT",
    "UPDATES_ENABLED_EVENT",
    "UPDATES_FORCED_EVENT",
    "UPDATES_PREFIX",
    "FirmwareRollout",
    "RolloutPolicy",
]

logger = structlog.get_logger("devicecloud.firmware")

UPDATES_PREFIX = "particle/device/updates/"
PENDING_EVENT = "particle/device/updates/pending"
UPDATES_ENABLED_EVENT = "particle/device/updates/enabled"
UPDATES_FORCED_EVENT = "particle/device/updates/forced"
RELEASE_CACHE_TTL = 30.0  # seconds a product's releases are reused (another process may change them)
_BINARY_CACHE = 8  # release binaries kept in memory (many devices take the same one)


@dataclass(frozen=True, slots=True)
class RolloutPolicy:
    #: Seconds after a connect before the device is checked when its Describe has not come first.
    delay: float = 5.0
    #: Devices checked per read.
    batch: int = 200
    #: Devices waiting for a check; more are dropped (and checked at their next connect).
    max_pending: int = 100_000
    #: Release updates this process runs at once.
    max_updates: int = 100
    #: Seconds a batch's read may take.
    read_timeout: float = 30.0


@dataclass(slots=True)
class _Link:
    """What this process knows of one linked product device."""

    product_id: int
    firmware_version: int | None
    joined: bool = False  # joined the product with this connection's Hello (maybe not written yet)
    enabled: bool | None = None  # particle/device/updates/enabled as last reported; None: not said
    forced: bool = False
    awaiting: int | None = None  # the version it was asked to accept


@dataclass(slots=True)
class _Product:
    expires: float
    releases: Releases
    firmware: dict[int, ProductFirmware] = field(default_factory=dict)


class FirmwareRollout:
    """
    The rollout of product firmware releases to the devices linked to this process.
    """

    def __init__(
        self,
        *,
        store: Store,
        clock: Clock,
        updates: DeviceUpdates,
        firmware: FirmwareService,
        events: EventService,
        binaries: BinaryStore,
        policy: RolloutPolicy | None = None,
    ) -> None:
        self._store = store
        self._clock = clock
        self._updates = updates
        self._firmware = firmware
        self._events = events
        self._binaries = binaries
        self._policy = policy or RolloutPolicy()
        self._links: dict[str, _Link] = {}
        self._due: dict[str, float] = {}  # device id → when to check it (monotonic)
        self._heap: list[tuple[float, str]] = []
        self._wake = asyncio.Event()
        self._products: dict[int, _Product] = {}
        self._binary_cache: OrderedDict[str, bytes] = OrderedDict()
        self._running: set[str] = set()  # devices with a release update from here
        self._watchers: set[asyncio.Task[None]] = set()
        self._worker: asyncio.Task[None] | None = None
        self._idle = asyncio.Event()
        self._idle.set()
        #: Counters for tests and logs.
        self.checked = 0
        self.started = 0
        self.asked = 0
        self.dropped = 0

    # ------------------------------------------------------------------ link facts (memory only)

    def connected(
        self, device_id: str, product_id: int, firmware_version: int | None, *, joined: bool = False
    ) -> None:
        """
        A device of ``product_id`` said Hello (``firmware_version``: its product firmware, None = not said;
        ``joined``: it joined the product with this Hello, so it has no lock, group or development mark).
        """
        self._links[device_id] = _Link(product_id, firmware_version, joined)
        self._schedule(device_id, self._clock.monotonic() + self._policy.delay)

    def disconnected(self, device_id: str) -> None:
        self._links.pop(device_id, None)
        self._due.pop(device_id, None)

    def device_event(self, device_id: str, name: str, data: str | None) -> None:
        """
        A device's own ``particle/device/updates/enabled`` or ``…/forced`` (others are ignored).
        """
        link = self._links.get(device_id)
        if link is None:
            return
        value = (data or "").strip().lower() == "true"
        if name == UPDATES_ENABLED_EVENT:
            link.enabled = value
            if value and link.awaiting is not None:  # it accepts the update it was asked about
                self._schedule(device_id, self._clock.monotonic())
        elif name == UPDATES_FORCED_EVENT:
            link.forced = value

    # ------------------------------------------------------------------ what the API asks

    def release_changed(self, product_id: int, *, immediate: bool) -> None:
        """
        A release of the product changed here: forget its cached releases; ``immediate`` (an intelligent
        release) checks its linked devices now rather than at their next connect.
        """
        self._products.pop(product_id, None)
        if immediate:
            now = self._clock.monotonic()
            for device_id, link in list(self._links.items()):
                if link.product_id == product_id:
                    self._schedule(device_id, now)

    def check_now(self, device_id: str) -> bool:
        """
        Check a device now (a lock with ``flash=true``); False when it is not linked here.
        """
        if device_id not in self._links:
            return False
        self._schedule(device_id, self._clock.monotonic())
        return True

    # ------------------------------------------------------------------ the queue

    def _schedule(self, device_id: str, when: float) -> None:
        current = self._due.get(device_id)
        if current is not None and current <= when:
            return
        if current is None and len(self._due) >= self._policy.max_pending:
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 1000 == 0:
                logger.warning(
                    "firmware rollout queue full; devices are checked at their next connect",
                    dropped=self.dropped,
                )
            return
        self._due[device_id] = when
        heapq.heappush(self._heap, (when, device_id))
        self._idle.clear()
        self._wake.set()

    def start(self) -> None:
        if self._worker is None:
            self._worker = asyncio.create_task(self._run(), name="firmware-rollout")

    async def aclose(self) -> None:
        tasks = [t for t in (self._worker, *self._watchers) if t is not None]
        self._worker = None
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def idle(self) -> None:
        """
        Wait until no check is due or under way (tests: a barrier, not a sleep). Checks due later (the
        connect delay) do not count.
        """
        while True:
            await self._idle.wait()
            if not self._has_ready():
                return
            self._idle.clear()
            self._wake.set()

    def _has_ready(self) -> bool:
        now = self._clock.monotonic()
        return any(when <= now for when in self._due.values())

    def _ready(self) -> list[str]:
        now = self._clock.monotonic()
        ready: list[str] = []
        while self._heap and len(ready) < self._policy.batch:
            when, device_id = self._heap[0]
            if self._due.get(device_id) != when:  # superseded or dropped
                heapq.heappop(self._heap)
                continue
            if when > now:
                break
            heapq.heappop(self._heap)
            del self._due[device_id]
            ready.append(device_id)
        return ready

    async def _run(self) -> None:
        while True:
            ready = self._ready()
            if not ready:
                self._idle.set()
                self._wake.clear()
                sleeper = None
                if self._heap:
                    sleeper = asyncio.ensure_future(self._clock.sleep_until(self._heap[0][0]))
                waker = asyncio.ensure_future(self._wake.wait())
                waiting = {waker} if sleeper is None else {waker, sleeper}
                try:
                    await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    for future in waiting:
                        future.cancel()
                continue
            self._idle.clear()
            try:
                await self._check(ready)
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.warning(
                    "firmware rollout check failed; the devices are checked at their next connect",
                    devices=len(ready),
                    exc_info=True,
                )

    # ------------------------------------------------------------------ deciding

    async def _check(self, device_ids: Sequence[str]) -> None:
        by_product: dict[int, list[str]] = {}
        for device_id in device_ids:
            link = self._links.get(device_id)
            if link is not None:
                by_product.setdefault(link.product_id, []).append(device_id)
        for product_id, ids in by_product.items():
            async with asyncio.timeout(self._policy.read_timeout):
                product = await self._product(product_id)
                async with self._store.transaction(readonly=True) as tx:
                    fleet = await tx.product_firmware.fleet(product_id, ids)
            found = {device.device_id for device in fleet}
            for device_id in ids:  # joined by its Hello, not written behind yet: a member with no marks
                link = self._links.get(device_id)
                if device_id not in found and link is not None and link.joined:
                    fleet.append(FleetDevice(device_id, firmware_version=link.firmware_version))
            for device in fleet:
                self.checked += 1
                try:
                    await self._decide(device, product)
                except (asyncio.CancelledError, KeyboardInterrupt):
                    raise
                except Exception:  # one device's trouble never holds up the others
                    logger.warning(
                        "firmware rollout failed for a device; it is checked at its next connect",
                        device_id=device.device_id,
                        exc_info=True,
                    )

    async def _product(self, product_id: int) -> _Product:
        cached = self._products.get(product_id)
        now = self._clock.monotonic()
        if cached is not None and cached.expires > now:
            return cached
        async with self._store.transaction(readonly=True) as tx:
            releases = await tx.product_firmware.releases(product_id)
            listed = await tx.product_firmware.list_for_product(product_id)
        product = _Product(now + RELEASE_CACHE_TTL, Releases.of(releases), {f.version: f for f in listed})
        if len(self._products) >= 10_000:
            self._products.clear()
        self._products[product_id] = product
        return product

    async def _decide(self, device: FleetDevice, product: _Product) -> None:
        link = self._links.get(device.device_id)
        if link is None or device.device_id in self._running:
            return
        target = target_firmware(device, product.releases)
        if target.version is None:
            return
        firmware = product.firmware.get(target.version)
        if firmware is None:
            logger.warning(
                "device locked to a firmware version that does not exist",
                device_id=device.device_id,
                version=target.version,
            )
            return
        running_hash = self._app_hash(device.device_id)
        if not needs_update(
            target.version, link.firmware_version, running_hash=running_hash, target_hash=firmware.sha256
        ):
            link.awaiting = None
            return
        ask = (link.enabled is False and not link.forced) or (
            firmware.intelligent and target.rule is not Rule.LOCKED and link.enabled is not True
        )
        if ask:
            if link.awaiting != target.version:
                link.awaiting = target.version
                self.asked += 1
                logger.info(
                    "asking a device to accept a firmware update",
                    device_id=device.device_id,
                    version=target.version,
                    rule=target.rule.value,
                )
                await self._events.publish_to_device(device.device_id, PENDING_EVENT, "true")
            return
        if len(self._running) >= self._policy.max_updates:
            self._schedule(device.device_id, self._clock.monotonic() + self._policy.delay)
            return
        await self._flash(device.device_id, link, firmware, target.rule.value)

    def _app_hash(self, device_id: str) -> str | None:
        try:
            modules = self._updates.update_target(device_id).modules or ()
        except DeviceOffline:
            return None
        return _user_hash(modules)

    async def _flash(self, device_id: str, link: _Link, firmware: ProductFirmware, rule: str) -> None:
        data = await self._binary(firmware.binary_id)
        if data is None:
            logger.warning(
                "product firmware binary is missing", product_id=firmware.product_id, version=firmware.version
            )
            return
        try:
            handle = await self._firmware.flash_release(device_id, data, link.product_id)
        except (Busy, DeviceOffline):
            return  # an update is under way, or the device left: it is checked again when it reconnects
        except (FirmwareRejected, DomainError) as exc:  # does not fit, or its OTA is not served here
            logger.warning(
                "release cannot be flashed to the device",
                device_id=device_id,
                version=firmware.version,
                reason=str(exc),
            )
            return
        link.awaiting = None
        self.started += 1
        self._running.add(device_id)
        logger.info("flashing product firmware", device_id=device_id, version=firmware.version, rule=rule)
        task = asyncio.create_task(self._finished(device_id, handle), name=f"rollout-{device_id}")
        self._watchers.add(task)
        task.add_done_callback(self._watchers.discard)

    async def _finished(self, device_id: str, handle: UpdateHandle) -> None:
        try:
            await handle.finished()
        finally:
            self._running.discard(device_id)

    async def _binary(self, binary_id: str) -> bytes | None:
        data = self._binary_cache.get(binary_id)
        if data is not None:
            self._binary_cache.move_to_end(binary_id)
            return data
        stored = await self._binaries.load(binary_id)
        if stored is None:
            return None
        self._binary_cache[binary_id] = stored.data
        while len(self._binary_cache) > _BINARY_CACHE:
            self._binary_cache.popitem(last=False)
        return stored.data

    def forget_binary(self, binary_id: str) -> None:
        self._binary_cache.pop(binary_id, None)

    @property
    def running(self) -> int:
        return len(self._running)


def _user_hash(modules: Iterable[Mapping[str, Any]]) -> str | None:
    """
    The SHA-256 of the application from a Describe's module list (the user part's ``u``).
    """
    for module in modules:
        if isinstance(module, Mapping) and module.get("f") == "u" and isinstance(module.get("u"), str):
            return str(module["u"])
    return None
