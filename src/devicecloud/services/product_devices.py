"""
A product's devices (issue 11 section 3, catalogue §4 product rows, §7, §11 5-8, §15 6-7): import, list,
get, update, batch group edits, remove or deny, and the device twins (functions, variables, ping, signal,
rename) under ``/v1/products/:p/devices/:id``.

Rules kept here:
- every operation first goes through `product_access.access_product` with its catalogue scope and the
  resource kind ``device`` (decision 0016: the product's roles and the token's scopes decide); a device that
  is not the product's is 404 "Device not found in this product" to a caller with standing there;
- an import takes at most `MAX_IMPORT` ids and is set-based (one read of what is known of them, two
  inserts); an id that is not 24 hex digits, or a device of another product, is invalid; a device owned by
  someone outside the team is not imported (``nonmemberDeviceIds``); a device this product quarantined or
  denied is approved; ids never seen get a bare record, so the device is the product's when it connects;
- a quarantined or denied device is listed and can be edited, but not called, read, pinged or signalled;
  denying disconnects it, and the gateway refuses it at its next key check (`device_sessions`);
- ``groups`` is an absolute set; unknown names are created (palette colour); batch edits add and remove;
- the lock fields (``desired_firmware_version``, ``development``) are stored (a lock to a version not
  uploaded yet is kept and waits for it); ``flash=true`` with a lock to an uploaded version asks the
  firmware rollout to check the device now (decision 0025) instead of at its next connect; ``flash=true``
  without a lock, or to a version the product lacks, is refused.
"""

from __future__ import annotations

import asyncio
import math
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import structlog

from devicecloud.domain.devices import Device, VariableReading, normalise_device_id
from devicecloud.domain.product_devices import SORT_ATTRIBUTES, DeviceListQuery
from devicecloud.domain.product_firmware import FleetDevice, Releases, target_firmware
from devicecloud.errors import InvalidInput, NotFound, PermissionDenied
from devicecloud.services.device_names import is_valid_name
from devicecloud.services.groups import MAX_GROUPS_PER_PRODUCT, PALETTE, check_group_name
from devicecloud.services.product_access import access_product

if TYPE_CHECKING:
    from devicecloud.clock import Clock
    from devicecloud.domain.access import AnyPrincipal
    from devicecloud.domain.products import Product
    from devicecloud.services.devices import DeviceService
    from devicecloud.services.ports import DeviceControl
    from devicecloud.store.interfaces import Store, UnitOfWork

logger = structlog.get_logger("devicecloud.product_devices")

MAX_IMPORT = 10_000  # ids in one import request
MAX_PER_PAGE = 1000
MAX_FILTER = 64  # characters of a text filter
MAX_DEVICE_GROUPS = 100  # groups one device may be in
MAX_FIRMWARE_VERSION = 2**31 - 1
ID_LENGTH = 24  # characters of a device id (stored lower-case)
LIST_CACHE_TTL = (
    5.0  # seconds a long list's order is fresh, and as long again served while read anew (0020 §8)
)
LIST_CACHE_MIN = 1000  # devices a list needs to be kept: shorter ones are read afresh for each page
LIST_CACHE_CHARS = 24_000_000  # id characters kept at most, all lists together (1,000,000 ids)
RELEASES_TTL = 30.0  # seconds a product's releases are reused (a change says so on the bus: a lost note)


@dataclass(slots=True)
class ImportResult:
    """
    The ids of one import, sorted into the catalogue's lists (filled in as they are classified).
    """

    updated: list[str] = field(default_factory=list)
    existing: list[str] = field(default_factory=list)
    nonmember: list[str] = field(default_factory=list)
    invalid: list[str] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class ProductDevice:
    """
    A device as a product sees it: the record (with its membership), its groups and the product firmware
    version the release precedence targets it with (``targeted_firmware_release_version``).
    """

    device: Device
    groups: list[str]
    target: int | None = None


@dataclass(frozen=True, slots=True)
class DevicePage:
    devices: list[ProductDevice]
    total: int
    page: int
    per_page: int

    @property
    def total_pages(self) -> int:
        return max(1, math.ceil(self.total / self.per_page))


@dataclass(frozen=True, slots=True)
class DeviceChanges:
    """
    What ``PUT /v1/products/:p/devices/:id`` asks; ``...`` (Ellipsis) means "not given".
    """

    name: Any = ...
    notes: Any = ...
    signal: Any = ...
    development: Any = ...
    desired_firmware_version: Any = ...
    flash: Any = ...
    groups: Any = ...


def not_in_product() -> NotFound:
    return NotFound("Device not found in this product", code="Not Found")


def quarantined_device() -> PermissionDenied:
    return PermissionDenied(
        "This device is quarantined or denied: approve it in its product first", code="Permission Denied"
    )


def parse_flag(value: Any, name: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in ("true", "false", "1", "0"):
        return value.strip().lower() in ("true", "1")
    raise InvalidInput(f"{name} must be true or false")


def _whole(value: Any, name: str, *, low: int, high: int) -> int:
    if isinstance(value, str) and value.strip().isdigit() and len(value.strip()) <= 10:
        value = int(value.strip())
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise InvalidInput(f"{name} must be a whole number from {low} to {high}")
    return int(value)


def _text(value: Any, name: str) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str) or len(value) > MAX_FILTER:
        raise InvalidInput(f"{name} must be text of at most {MAX_FILTER} characters")
    return value.strip() or None


def _group_names(value: Any, name: str = "groups") -> list[str]:
    if value is None or value == "":
        return []
    if isinstance(value, str):
        value = value.split(",")
    if not isinstance(value, list) or not all(isinstance(n, str) for n in value):
        raise InvalidInput(f"{name} must be a list of group names")
    names = list(dict.fromkeys(n.strip() for n in value if n.strip()))
    if len(names) > MAX_DEVICE_GROUPS:
        raise InvalidInput(f"{name} may name at most {MAX_DEVICE_GROUPS} groups")
    return [check_group_name(n) for n in names]


def parse_list_query(params: Mapping[str, Any]) -> DeviceListQuery:
    """
    The catalogue's list parameters (§4.2 row 2; ``perPage`` and ``per_page`` alike), checked.
    """
    sort_attr = params.get("sortAttr") or "lastConnection"
    if sort_attr not in SORT_ATTRIBUTES:
        raise InvalidInput(f"sortAttr must be one of {', '.join(SORT_ATTRIBUTES)}")
    sort_dir = params.get("sortDir") or ("desc" if sort_attr == "lastConnection" else "asc")
    if sort_dir not in ("asc", "desc"):
        raise InvalidInput("sortDir must be asc or desc")
    quarantined = params.get("quarantined")
    groups = params.get("groups")
    per_page = params.get("perPage", params.get("per_page"))
    return DeviceListQuery(
        device_id=_text(params.get("deviceId"), "deviceId"),
        device_name=_text(params.get("deviceName"), "deviceName"),
        serial_number=_text(params.get("serialNumber"), "serialNumber"),
        groups=tuple(_group_names(groups)) if groups not in (None, "") else None,
        quarantined=parse_flag(quarantined, "quarantined") if quarantined not in (None, "") else None,
        sort_attr=sort_attr,
        sort_dir=sort_dir,
        page=_whole(params.get("page") or 1, "page", low=1, high=1_000_000),
        per_page=_whole(per_page or 25, "perPage", low=1, high=MAX_PER_PAGE),
    )


def import_ids(values: Sequence[Any]) -> tuple[list[str], list[str]]:
    """
    (canonical valid ids, invalid entries) from what an import names, in order, without repeats.
    """
    valid: dict[str, None] = {}
    invalid: dict[str, None] = {}
    for value in values:
        if not isinstance(value, str):
            raise InvalidInput("Device ids must be text")
        text = value.strip()
        if not text:
            continue
        device_id = normalise_device_id(text)
        if device_id is None:
            invalid[text[:64]] = None
        else:
            valid[device_id] = None
    if len(valid) + len(invalid) > MAX_IMPORT:
        raise InvalidInput(f"Import at most {MAX_IMPORT} device ids at once")
    return list(valid), list(invalid)


def _target(device: Device, group_ids: Iterable[int], product_id: int, releases: Releases) -> int | None:
    """
    The firmware version the product's releases target ``device`` with (`target_firmware`), from its record
    and its groups: None for a device with no target (development, quarantined, denied, nothing released)
    or no longer the product's.
    """
    held = device.membership
    if held is None or held.product_id != product_id or held.quarantined or held.denied:
        return None
    fleet = FleetDevice(
        device_id=device.id,
        development=held.development,
        desired_firmware_version=held.desired_firmware_version,
        group_ids=frozenset(group_ids),
        firmware_version=held.firmware_version,
    )
    return target_firmware(fleet, releases).version


class ReleaseCache:
    """
    Each product's releases as the lists' targets need them (`Releases`), kept `RELEASES_TTL` seconds at
    most: every page of a list would read them again otherwise. `forget` drops a product's (a release
    changed: here, or on another process, which says so on the bus) and makes reads that began before it
    unrecordable, so a release shows in the next list on every node.
    """

    def __init__(self, clock: Clock, *, ttl: float = RELEASES_TTL, max_products: int = 10_000) -> None:
        self._clock = clock
        self._ttl = ttl
        self._max = max_products
        self._entries: dict[int, tuple[float, Releases]] = {}
        self._generations: dict[int, int] = {}

    def generation(self, product_id: int) -> int:
        return self._generations.get(product_id, 0)

    def get(self, product_id: int) -> Releases | None:
        entry = self._entries.get(product_id)
        if entry is None or self._clock.monotonic() - entry[0] >= self._ttl:
            return None
        return entry[1]

    def put(self, product_id: int, releases: Releases, generation: int) -> None:
        if generation != self.generation(product_id):
            return  # read before a release changed: not to be served
        if len(self._entries) >= self._max and product_id not in self._entries:
            self._entries.clear()
        self._entries[product_id] = (self._clock.monotonic(), releases)

    def forget(self, product_id: int) -> None:
        self._generations[product_id] = self.generation(product_id) + 1
        self._entries.pop(product_id, None)


class OrderedLists:
    """
    The order of long device lists read a moment ago (decision 0020 §8): per product and filters and order,
    the matching ids concatenated, when the list has at least `LIST_CACHE_MIN` devices, at most
    `LIST_CACHE_CHARS` id characters in all (the least recently used go first).

    An entry is fresh for `LIST_CACHE_TTL` seconds; for as long again it is still served, ``due`` for a
    read behind the request. `forget` drops a product's entries and makes reads that began before it
    unrecordable, so a change this process made shows at once.
    """

    def __init__(
        self,
        clock: Clock,
        *,
        ttl: float = LIST_CACHE_TTL,
        min_devices: int = LIST_CACHE_MIN,
        max_chars: int = LIST_CACHE_CHARS,
    ) -> None:
        self._clock = clock
        self._ttl = ttl
        self._min_chars = min_devices * ID_LENGTH
        self._max_chars = max_chars
        self._entries: OrderedDict[tuple[int, DeviceListQuery], tuple[float, str]] = OrderedDict()
        self._chars = 0
        self._generations: dict[int, int] = {}

    def generation(self, product_id: int) -> int:
        """
        The product's generation: take it before reading a list, give it to `put`.
        """
        return self._generations.get(product_id, 0)

    def get(self, product_id: int, shape: DeviceListQuery) -> tuple[str | None, bool]:
        """
        The list's ids (None: read it) and whether it is due for a read behind.
        """
        key = (product_id, shape)
        entry = self._entries.get(key)
        if entry is None:
            return None, False
        age = self._clock.monotonic() - entry[0]
        if age >= 2 * self._ttl:
            self._drop(key)
            return None, False
        self._entries.move_to_end(key)
        return entry[1], age >= self._ttl

    def put(self, product_id: int, shape: DeviceListQuery, ordered: str, generation: int) -> None:
        if generation != self.generation(product_id):
            return  # read before this process changed the product: not to be served
        key = (product_id, shape)
        self._drop(key)
        if not self._min_chars <= len(ordered) <= self._max_chars:
            return  # short now (or too long to keep): read afresh for each page
        self._entries[key] = (self._clock.monotonic(), ordered)
        self._chars += len(ordered)
        while self._chars > self._max_chars:
            self._drop(next(iter(self._entries)))

    def forget(self, product_id: int) -> None:
        """
        Drop the product's lists: this process changed its devices or groups.
        """
        self._generations[product_id] = self.generation(product_id) + 1
        for key in [k for k in self._entries if k[0] == product_id]:
            self._drop(key)

    def _drop(self, key: tuple[int, DeviceListQuery]) -> None:
        entry = self._entries.pop(key, None)
        if entry is not None:
            self._chars -= len(entry[1])


class ProductDeviceService:
    """
    The product devices API's rules (see the module docstring).
    """

    def __init__(self, *, store: Store, clock: Clock, devices: DeviceService, control: DeviceControl) -> None:
        self._store = store
        self._clock = clock
        self._devices = devices
        self._control = control
        #: The order of long lists read a moment ago; `forget` it for a product whose devices changed.
        self.lists = OrderedLists(clock)
        #: Each product's releases (the listed devices' targets); `forget_releases` when one changes.
        self.releases = ReleaseCache(clock)
        self._reading: dict[tuple[int, DeviceListQuery], asyncio.Task[None]] = {}
        #: Reads behind run one at a time: lists kept at the same moment fall due together, and reading them
        #: all at once would be a burst of database work beside the requests (their order is a join).
        self._behind = asyncio.Lock()
        self._pending: dict[tuple[int, DeviceListQuery, int], asyncio.Future[str | None]] = {}
        self._closed = False
        #: Called with each device whose product membership changed (the events' product cache forgets it).
        self.on_membership_change: Callable[[str], None] | None = None
        #: Called with a device locked with ``flash=true`` (the firmware rollout checks it now).
        self.on_flash: Callable[[str], object] | None = None

    def _membership_changed(self, device_ids: Iterable[str]) -> None:
        if self.on_membership_change is not None:
            for device_id in device_ids:
                self.on_membership_change(device_id)

    # ------------------------------------------------------------------ import and approve

    async def import_devices(
        self, principal: AnyPrincipal, ref: str, values: Sequence[Any], *, import_sims: Any = None
    ) -> ImportResult:
        if import_sims not in (None, "") and parse_flag(import_sims, "import_sims"):
            raise InvalidInput("Importing SIM cards with devices is not supported yet", code="unsupported")
        valid, invalid = import_ids(values)
        if not valid and not invalid:
            raise InvalidInput("Give a device id (id), a list (ids) or a .txt file with one id per line")
        if len(valid) <= 100:  # a Hello's join may still be in the presence book (approving one device)
            for device_id in valid:
                await self._devices.settle(device_id)
        result = ImportResult(invalid=invalid)
        async with self._store.transaction() as tx:
            product = (await access_product(tx, principal, ref, "devices:import", "device")).product
            known = await tx.product_devices.known(valid)
            owners = {k.owner_id for k in known.values() if k.owner_id is not None}
            team = await tx.product_devices.team_members_among(product.id, sorted(owners))
            new_records: list[str] = []
            members: list[str] = []
            approved: list[str] = []
            for device_id in valid:
                found = known.get(device_id)
                membership = found.membership if found is not None else None
                if membership is not None and membership.product_id != product.id:
                    result.invalid.append(device_id)  # another product's device
                elif membership is not None and (membership.quarantined or membership.denied):
                    approved.append(device_id)
                elif membership is not None:
                    result.existing.append(device_id)
                elif found is not None and found.owner_id is not None and found.owner_id not in team:
                    result.nonmember.append(device_id)
                else:
                    if found is None:
                        new_records.append(device_id)
                    members.append(device_id)
            now = self._clock.now()
            await tx.product_devices.add(product.id, new_records, members, now)
            await tx.product_devices.approve(product.id, approved)
            result.updated.extend(members)
            result.updated.extend(approved)
        if result.updated:
            self.lists.forget(product.id)
        self._membership_changed(result.updated)
        return result

    # ------------------------------------------------------------------ reading

    async def list_devices(self, principal: AnyPrincipal, ref: str, params: Mapping[str, Any]) -> DevicePage:
        query = parse_list_query(params)
        shape = replace(query, page=1, per_page=1)  # what the order depends on: every page shares it
        async with self._store.transaction(readonly=True) as tx:
            product = (await access_product(tx, principal, ref, "devices:list", "device")).product
            ordered, due = self.lists.get(product.id, shape)
            if ordered is not None:
                if due:
                    self._read_behind(product.id, query, shape)
                return await self._page(tx, product.id, ordered, query)
            shared = self._pending.get((product.id, shape, self.lists.generation(product.id)))
            if shared is None:
                return await self._page(
                    tx, product.id, await self._read_list(tx, product.id, query, shape), query
                )
        # Another request is reading this list: wait for it holding no connection, so that a burst of requests
        # for a long list that is not kept yet never takes the pool's connections to wait (decision 0020 §8).
        ordered = await asyncio.shield(shared)
        async with self._store.transaction(readonly=True) as tx:
            if ordered is None:  # that read failed: this one tries
                ordered = await tx.product_devices.ordered(product.id, query)
            return await self._page(tx, product.id, ordered, query)

    async def _page(
        self, tx: UnitOfWork, product_id: int, ordered: str, query: DeviceListQuery
    ) -> DevicePage:
        first = (query.page - 1) * query.per_page * ID_LENGTH
        last = min(len(ordered), first + query.per_page * ID_LENGTH)
        found = await tx.product_devices.records_with_groups(
            [ordered[at : at + ID_LENGTH] for at in range(first, last, ID_LENGTH)]
        )
        releases = await self._releases(tx, product_id) if found else Releases()
        listed = [self._listed(d, groups, product_id, releases) for d, groups in found]
        return DevicePage(listed, len(ordered) // ID_LENGTH, query.page, query.per_page)

    def _listed(
        self, device: Device, groups: Sequence[tuple[int, str]], product_id: int, releases: Releases
    ) -> ProductDevice:
        target = _target(device, (i for i, _ in groups), product_id, releases)
        return ProductDevice(self._devices.present(device), [name for _, name in groups], target)

    async def _releases(self, tx: UnitOfWork, product_id: int) -> Releases:
        """
        The product's releases, as kept a moment ago or read now.
        """
        found = self.releases.get(product_id)
        if found is None:
            generation = self.releases.generation(product_id)
            found = Releases.of(await tx.product_firmware.releases(product_id))
            self.releases.put(product_id, found, generation)
        return found

    def forget_releases(self, product_id: int) -> None:
        """
        A release of the product changed (here or on another process): its devices' targets are read anew.
        """
        self.releases.forget(product_id)

    async def _read_list(
        self, tx: UnitOfWork, product_id: int, query: DeviceListQuery, shape: DeviceListQuery
    ) -> str:
        """
        Read a list's order; requests for the same list that come meanwhile wait for this read
        (`list_devices`) rather than read it too: a long list that many requests want at once is read once.
        """
        generation = self.lists.generation(product_id)
        key = (product_id, shape, generation)
        future: asyncio.Future[str | None] = asyncio.get_running_loop().create_future()
        self._pending[key] = future
        ordered: str | None = None
        try:
            ordered = await tx.product_devices.ordered(product_id, query)
        finally:
            self._pending.pop(key, None)
            future.set_result(ordered)
        self.lists.put(product_id, shape, ordered, generation)
        return ordered

    def _read_behind(self, product_id: int, query: DeviceListQuery, shape: DeviceListQuery) -> None:
        """
        Read a list again behind the request that found it due (one read per list at a time).
        """
        key = (product_id, shape)
        if key in self._reading or self._closed:
            return
        task = asyncio.get_running_loop().create_task(
            self._read_again(product_id, query, shape), name="product-device-list"
        )
        self._reading[key] = task
        task.add_done_callback(lambda _: self._reading.pop(key, None))

    async def _read_again(self, product_id: int, query: DeviceListQuery, shape: DeviceListQuery) -> None:
        async with self._behind:
            generation = self.lists.generation(product_id)
            try:
                async with self._store.transaction(readonly=True) as tx:
                    ordered = await tx.product_devices.ordered(product_id, query)
            except Exception:  # the entry ages out; the next request reads the list itself
                logger.exception("reading a product's device list again failed", product_id=product_id)
                return
            self.lists.put(product_id, shape, ordered, generation)

    async def aclose(self) -> None:
        """
        Stop the lists' reads behind (before the store closes).
        """
        self._closed = True
        reading = list(self._reading.values())
        for task in reading:
            task.cancel()
        await asyncio.gather(*reading, return_exceptions=True)

    async def get(self, principal: AnyPrincipal, ref: str, device_ref: str) -> ProductDevice:
        product, device = await self._access(principal, ref, device_ref, "devices:get")
        async with self._store.transaction(readonly=True) as tx:
            groups = await tx.product_devices.groups_of([device.id])
            releases = await self._releases(tx, product.id)
        held = groups[device.id]
        target = _target(device, (i for i, _ in held), product.id, releases)
        return ProductDevice(device, [name for _, name in held], target)

    async def _access(
        self, principal: AnyPrincipal, ref: str, device_ref: str, action: str
    ) -> tuple[Product, Device]:
        """
        The product (if the caller may do ``action`` to its devices) and its device named by id or name.
        """
        device_id = normalise_device_id(device_ref)
        if device_id is not None:
            await self._devices.settle(device_id)
        async with self._store.transaction(readonly=True) as tx:
            product = (await access_product(tx, principal, ref, action, "device")).product
            if device_id is None and len(device_ref) <= 64:
                named = await tx.product_devices.by_name(product.id, device_ref)
                device_id = named[0] if len(named) == 1 else None
            device = await tx.devices.get(device_id) if device_id is not None else None
        if device is None or device.membership is None or device.membership.product_id != product.id:
            raise not_in_product()
        return product, self._devices.present(device)

    async def device_in_product(
        self, principal: AnyPrincipal, ref: str, device_ref: str, action: str
    ) -> tuple[Product, Device]:
        """
        The product and its device (by id or name) if the caller may do ``action`` to the product's devices
        (the product twins of other services, e.g. diagnostics, check access here).
        """
        return await self._access(principal, ref, device_ref, action)

    async def _controllable(self, principal: AnyPrincipal, ref: str, device_ref: str, action: str) -> Device:
        _, device = await self._access(principal, ref, device_ref, action)
        membership = device.membership
        if membership is not None and (membership.quarantined or membership.denied):
            raise quarantined_device()
        return device

    # ------------------------------------------------------------------ the device twins

    async def call_function(
        self, principal: AnyPrincipal, ref: str, device_ref: str, name: str, argument: str
    ) -> tuple[Device, int]:
        device = await self._controllable(principal, ref, device_ref, "devices.function:call")
        return await self._devices.call_function_on(device, name, argument)

    async def read_variable(
        self, principal: AnyPrincipal, ref: str, device_ref: str, name: str
    ) -> tuple[Device, VariableReading]:
        device = await self._controllable(principal, ref, device_ref, "devices.variable:get")
        return await self._devices.read_variable_on(device, name)

    async def ping(self, principal: AnyPrincipal, ref: str, device_ref: str) -> bool:
        device = await self._controllable(principal, ref, device_ref, "devices:ping")
        return await self._devices.ping_device(device)

    # ------------------------------------------------------------------ changing

    async def update(
        self, principal: AnyPrincipal, ref: str, device_ref: str, changes: DeviceChanges
    ) -> dict[str, Any]:
        """
        Apply ``changes`` (all checked before any is made); the fields of the reply that changed.
        """
        product, device = await self._access(principal, ref, device_ref, "devices:update")
        if changes.name is not ... and (not isinstance(changes.name, str) or not is_valid_name(changes.name)):
            raise InvalidInput(
                "name must be 1-63 letters, digits, underscores or dashes", code="invalid_name"
            )
        record: dict[str, Any] = {}
        if changes.development is not ...:
            record["development"] = parse_flag(changes.development, "development")
        if changes.desired_firmware_version is not ...:
            wanted = changes.desired_firmware_version
            record["desired_firmware_version"] = (
                None
                if wanted is None or wanted in ("", "null")
                else _whole(wanted, "desired_firmware_version", low=1, high=MAX_FIRMWARE_VERSION)
            )
        flash = changes.flash is not ... and changes.flash is not None and parse_flag(changes.flash, "flash")
        locked_to = record.get("desired_firmware_version", ...)
        if locked_to is ...:
            locked_to = device.membership.desired_firmware_version if device.membership is not None else None
        if flash and locked_to is None:
            raise InvalidInput("flash=true needs a desired_firmware_version to flash", code="invalid_request")
        groups = _group_names(changes.groups) if changes.groups is not ... else None
        signal = parse_flag(changes.signal, "signal") if changes.signal is not ... else None
        held = device.membership is not None and (device.membership.quarantined or device.membership.denied)
        if signal is not None and held:
            raise quarantined_device()
        nothing = not record and groups is None and signal is None and not flash
        if nothing and changes.name is ... and changes.notes is ...:
            raise InvalidInput(
                "Nothing to do? Give name, notes, signal, groups, development or desired_firmware_version",
                code="Nothing to do?",
            )
        if flash:
            async with self._store.transaction(readonly=True) as tx:
                if await tx.product_firmware.get(product.id, locked_to) is None:
                    raise InvalidInput(
                        f"Firmware version {locked_to} not found: upload it before flashing it",
                        code="invalid_request",
                    )
        reply: dict[str, Any] = {"id": device.id}
        if changes.notes is not ...:
            device = await self._devices.set_device_notes(device, changes.notes)
            reply["notes"] = device.notes
        if record or groups is not None:
            async with self._store.transaction() as tx:
                if record:
                    await tx.product_devices.update(device.id, **record)
                if groups is not None:
                    ids = await self._group_ids(tx, product.id, groups)
                    await tx.products.set_device_groups(device.id, ids)
            self.lists.forget(product.id)
            reply.update(record)
            if groups is not None:
                reply["groups"] = groups
        if changes.name is not ...:
            device = await self._devices.rename_device(device, changes.name)
            reply["name"] = device.name
        if signal is not None:
            await self._devices.signal_device(device, signal)
            reply.update(connected=True, signaling=signal)
        if flash and self.on_flash is not None:
            self.on_flash(device.id)
        reply["updated_at"] = self._clock.now()
        return reply

    async def _group_ids(self, tx: UnitOfWork, product_id: int, names: Sequence[str]) -> list[int]:
        """
        The ids of the product's groups named ``names``, creating the missing ones.
        """
        ids: list[int] = []
        count: int | None = None
        for name in names:
            group = await tx.groups.get(product_id, name)
            if group is None:
                count = await tx.groups.count(product_id) if count is None else count
                if count >= MAX_GROUPS_PER_PRODUCT:
                    raise InvalidInput(f"A product has at most {MAX_GROUPS_PER_PRODUCT} groups")
                color = PALETTE[count % len(PALETTE)]
                group = await tx.groups.add(
                    product_id, name=name, description=None, color=color, now=self._clock.now()
                )
                count += 1
            ids.append(group.id)
        return ids

    async def batch(self, principal: AnyPrincipal, ref: str, body: Mapping[str, Any]) -> None:
        """
        ``PUT /v1/products/:p/devices`` with ``action=groups``: add and remove groups on many devices.
        """
        if body.get("action") != "groups":
            raise InvalidInput("action must be groups")
        listed = body.get("devices")
        if not isinstance(listed, list) or not listed:
            raise InvalidInput("devices must be a list of device ids")
        valid, invalid = import_ids(listed)
        if invalid:
            raise InvalidInput(f"Not device ids: {', '.join(invalid[:5])}")
        metadata = body.get("metadata")
        if not isinstance(metadata, dict):
            raise InvalidInput("metadata must be an object with add and remove lists of group names")
        add = _group_names(metadata.get("add"), "metadata.add")
        remove = [n for n in _group_names(metadata.get("remove"), "metadata.remove") if n not in add]
        if not add and not remove:
            raise InvalidInput("Nothing to do? Give metadata.add or metadata.remove")
        async with self._store.transaction() as tx:
            product = (await access_product(tx, principal, ref, "devices:update", "device")).product
            members = set(await tx.product_devices.members_among(product.id, valid))
            strangers = [d for d in valid if d not in members]
            if strangers:
                raise NotFound(
                    f"Devices not found in this product: {', '.join(strangers[:5])}", code="Not Found"
                )
            if add:
                await tx.product_devices.add_to_groups(valid, await self._group_ids(tx, product.id, add))
            if remove:
                found = [await tx.groups.get(product.id, n) for n in remove]
                existing = [g.id for g in found if g is not None]
                await tx.product_devices.remove_from_groups(valid, existing)
        self.lists.forget(product.id)

    async def release(self, principal: AnyPrincipal, ref: str, device_ref: str) -> None:
        """
        ``DELETE /v1/products/:p/devices/:id/owner``: the device stays the product's, nobody owns it.
        """
        _, device = await self._access(principal, ref, device_ref, "devices:release")
        await self._devices.release_device(device)

    async def remove(self, principal: AnyPrincipal, ref: str, device_ref: str, *, deny: bool) -> None:
        """
        Take a device out of the product, or (``deny``) keep it refused at the gateway.
        """
        product, device = await self._access(principal, ref, device_ref, "devices:remove")
        async with self._store.transaction() as tx:
            if deny:
                await tx.product_devices.update(device.id, quarantined=False, denied=True)
            else:
                await tx.product_devices.remove(device.id)
        self.lists.forget(product.id)
        self._membership_changed([device.id])
        if deny:
            await self._control.disconnect(device.id)
