"""
A product's firmware (issue 12 section 4, catalogue §12; decision 0025): upload, list, get, edit, download,
release and delete.

Rules kept here:
- every operation first goes through `product_access.access_product` with its catalogue scope
  (``firmware:*``, ``firmware.binary:get``) and the resource kind ``firmware`` (decision 0016);
- an upload is a Particle module checked like any binary (`domain.firmware.parse_firmware`: prefix, CRC-32,
  SHA-256), a user part for the product's platform; the product id and version fields of its suffix, when
  present, must be the product's and the version given; ``version`` is a whole number unique in the product,
  ``title`` is required; the file goes to the binary store, the row to the database;
- a release sets the product default (taken from every other version) and/or the exact groups a version is
  released to, and ``intelligent``; the first release of a version marks it released for good;
- a version's first release (one that reaches devices: the product default or a group) needs the version
  running on at least one of the product's devices, as the hosted cloud requires ("Before releasing
  firmware for the first time, the firmware must be running on at least one device in your product fleet
  that has successfully re-connected"): a device whose Hello reported it (``device_count``); later
  releases of a released version are not checked again;
- a released version cannot be deleted; deleting a never-released one deletes its binary too;
- an upload publishes ``particle/firmware/create`` ``{"version":"N"}`` and a release that reaches devices
  ``particle/firmware/release`` ``{"immediate":<intelligent>,"version":N}`` to the product's streams,
  private, ``coreid`` "api", as the hosted cloud does (docs: firmware update events);
- a release changed here tells the rollout (`firmware_rollout.FirmwareRollout`), which applies it to the
  devices linked to this process: intelligent releases at once, standard ones at each device's next connect.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import structlog

from devicecloud.domain.accounts import Principal
from devicecloud.domain.firmware import FirmwareRejected, ModuleFunction, StoredBinary, parse_firmware
from devicecloud.errors import InvalidInput, NotFound
from devicecloud.services.firmware import MAX_BINARY_SIZE
from devicecloud.services.groups import check_group_name
from devicecloud.services.product_devices import parse_flag

if TYPE_CHECKING:
    from devicecloud.clock import Clock
    from devicecloud.domain.access import AnyPrincipal
    from devicecloud.domain.product_firmware import ProductFirmware
    from devicecloud.domain.products import Product
    from devicecloud.services.events import EventService
    from devicecloud.services.ports import BinaryStore
    from devicecloud.store.interfaces import Store, UnitOfWork

from devicecloud.services.product_access import access_product

__all__ = ["FIRMWARE_CREATE_EVENT", "FIRMWARE_RELEASE_EVENT", "FirmwareEntry", "ProductFirmwareService"]

logger = structlog.get_logger("devicecloud.firmware")

MAX_VERSION = 2**31 - 1
FIRMWARE_CREATE_EVENT = "particle/firmware/create"
FIRMWARE_RELEASE_EVENT = "particle/firmware/release"
MAX_TITLE = 255
MAX_DESCRIPTION = 4096
MAX_RELEASE_GROUPS = 100
#: Product firmware binaries are kept until their version is deleted.
NEVER = datetime(9999, 1, 1, tzinfo=UTC)
#: Owner of product firmware binaries in the binary store: nobody (user ids start at 1), so no user reaches
#: them through ``/v1/binaries/:id``.
NO_OWNER = 0


@dataclass(frozen=True, slots=True)
class FirmwareEntry:
    """
    A version as the list shows it: the firmware and how many devices report running it.
    """

    firmware: ProductFirmware
    device_count: int


def firmware_not_found(version: int) -> NotFound:
    return NotFound(f"Firmware version {version} not found", code="Not Found")


def parse_version(value: Any, name: str = "version") -> int:
    if isinstance(value, str) and value.strip().isdigit() and len(value.strip()) <= 10:
        value = int(value.strip())
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_VERSION:
        raise InvalidInput(f"{name} must be a whole number from 1 to {MAX_VERSION}", code="invalid_request")
    return int(value)


def _title(value: Any) -> str:
    if not isinstance(value, str) or not value.strip() or len(value) > MAX_TITLE:
        raise InvalidInput(
            f"title is required: text of at most {MAX_TITLE} characters", code="invalid_request"
        )
    return value.strip()


def _description(value: Any) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str) or len(value) > MAX_DESCRIPTION:
        raise InvalidInput(
            f"description must be text of at most {MAX_DESCRIPTION} characters", code="invalid_request"
        )
    return value


def _groups(value: Any) -> list[str]:
    if value is None or value == "":
        return []
    if isinstance(value, str):
        value = value.split(",")
    if not isinstance(value, list) or not all(isinstance(n, str) for n in value):
        raise InvalidInput("groups must be a list of group names", code="invalid_request")
    names = list(dict.fromkeys(n.strip() for n in value if n.strip()))
    if len(names) > MAX_RELEASE_GROUPS:
        raise InvalidInput(f"Release to at most {MAX_RELEASE_GROUPS} groups at once", code="invalid_request")
    return [check_group_name(n) for n in names]


def check_product_binary(data: bytes, product: Product, version: int) -> str:
    """
    The binary's application SHA-256 (hex) if it can be released as ``version`` of ``product``; else
    `InvalidInput` code ``invalid_binary`` naming the reason.
    """
    if not data:
        raise InvalidInput("The binary is empty", code="invalid_binary")
    if len(data) > MAX_BINARY_SIZE:
        raise InvalidInput(f"The binary is larger than {MAX_BINARY_SIZE} bytes", code="invalid_binary")
    try:
        image = parse_firmware(data)
    except FirmwareRejected as exc:
        raise InvalidInput(str(exc), code="invalid_binary") from exc
    main = image.main
    if main.platform_id != product.platform_id:
        raise InvalidInput(
            f"The binary is for platform {main.platform_id}, the product's is {product.platform_id}",
            code="invalid_binary",
        )
    if main.function != ModuleFunction.USER_PART:
        raise InvalidInput(
            "Product firmware must be an application (a user part module)", code="invalid_binary"
        )
    if main.product_id is not None and main.product_id != product.id & 0xFFFF:
        raise InvalidInput(
            f"The binary names product {main.product_id}, not this product ({product.id})",
            code="invalid_binary",
        )
    if main.product_version is not None and main.product_version != version:
        raise InvalidInput(
            f"The binary's product version is {main.product_version}, not {version}", code="invalid_binary"
        )
    return main.sha256.hex()


class ProductFirmwareService:
    """
    The product firmware API's rules (see the module docstring).
    """

    def __init__(
        self, *, store: Store, clock: Clock, binaries: BinaryStore, events: EventService | None = None
    ) -> None:
        self._store = store
        self._clock = clock
        self._binaries = binaries
        self._events = events
        #: Called with (product id, immediate) after a release changed (the rollout applies it).
        self.on_release: Callable[[int, bool], None] | None = None
        #: Called with a deleted version's binary id (the rollout's cache forgets it).
        self.on_delete: Callable[[str], None] | None = None

    async def upload(
        self,
        principal: AnyPrincipal,
        ref: str,
        *,
        data: bytes | None,
        filename: str,
        version: Any,
        title: Any,
        description: Any = None,
        mandatory: Any = None,
    ) -> ProductFirmware:
        number = parse_version(version)
        checked_title = _title(title)
        text = _description(description)
        must = parse_flag(mandatory, "mandatory") if mandatory not in (None, "") else False
        if data is None:
            raise InvalidInput(
                "Send the binary as a multipart file named binary (or file)", code="invalid_request"
            )
        async with self._store.transaction(readonly=True) as tx:
            product = (await access_product(tx, principal, ref, "firmware:create", "firmware")).product
            if await tx.product_firmware.get(product.id, number) is not None:
                raise _exists(number)
        sha256 = check_product_binary(data, product, number)
        now = self._clock.now()
        binary_id = secrets.token_hex(12)
        await self._binaries.save(
            StoredBinary(binary_id, NO_OWNER, product.platform_id, str(number), now, NEVER, data)
        )
        try:
            async with self._store.transaction() as tx:
                await tx.product_firmware.add(
                    {
                        "product_id": product.id,
                        "version": number,
                        "title": checked_title,
                        "description": text,
                        "name": (filename or "firmware.bin")[:255],
                        "size": len(data),
                        "sha256": sha256,
                        "platform_id": product.platform_id,
                        "binary_id": binary_id,
                        "uploaded_by": principal.user.id if isinstance(principal, Principal) else None,
                        "uploaded_at": now,
                        "updated_at": now,
                        "mandatory": must,
                    }
                )
                found = await tx.product_firmware.get(product.id, number)
        except BaseException:
            await self._binaries.delete(binary_id)
            raise
        assert found is not None
        logger.info("product firmware uploaded", product_id=product.id, version=number, size=len(data))
        await self._announce(product.id, FIRMWARE_CREATE_EVENT, {"version": str(number)})
        return found

    async def list_firmware(self, principal: AnyPrincipal, ref: str) -> list[FirmwareEntry]:
        async with self._store.transaction(readonly=True) as tx:
            product = (await access_product(tx, principal, ref, "firmware:list", "firmware")).product
            listed = await tx.product_firmware.list_for_product(product.id)
            counts = await tx.product_firmware.device_counts(product.id)
        return [FirmwareEntry(f, counts.get(f.version, 0)) for f in listed]

    async def get(self, principal: AnyPrincipal, ref: str, version: Any) -> FirmwareEntry:
        number = parse_version(version)
        async with self._store.transaction(readonly=True) as tx:
            product = (await access_product(tx, principal, ref, "firmware:get", "firmware")).product
            found = await _firmware(tx, product.id, number)
            counts = await tx.product_firmware.device_counts(product.id)
        return FirmwareEntry(found, counts.get(number, 0))

    async def edit(
        self, principal: AnyPrincipal, ref: str, version: Any, changes: Mapping[str, Any]
    ) -> ProductFirmware:
        number = parse_version(version)
        values: dict[str, Any] = {}
        if changes.get("title") is not None:
            values["title"] = _title(changes["title"])
        if "description" in changes and changes["description"] is not None:
            values["description"] = _description(changes["description"])
        if changes.get("mandatory") not in (None, ""):
            values["mandatory"] = parse_flag(changes["mandatory"], "mandatory")
        if not values:
            raise InvalidInput(
                "Nothing to update: give title, description or mandatory", code="invalid_request"
            )
        values["updated_at"] = self._clock.now()
        async with self._store.transaction() as tx:
            product = (await access_product(tx, principal, ref, "firmware:update", "firmware")).product
            found = await _firmware(tx, product.id, number)
            await tx.product_firmware.update(found.id, **values)
            edited = await tx.product_firmware.get(product.id, number)
        assert edited is not None
        return edited

    async def binary(self, principal: AnyPrincipal, ref: str, version: Any) -> tuple[ProductFirmware, bytes]:
        number = parse_version(version)
        async with self._store.transaction(readonly=True) as tx:
            product = (await access_product(tx, principal, ref, "firmware.binary:get", "firmware")).product
            found = await _firmware(tx, product.id, number)
        stored = await self._binaries.load(found.binary_id)
        if stored is None:
            logger.warning("product firmware binary is missing", product_id=product.id, version=number)
            raise NotFound(f"The binary of firmware version {number} is missing", code="Not Found")
        return found, stored.data

    async def release(
        self,
        principal: AnyPrincipal,
        ref: str,
        *,
        version: Any,
        product_default: Any = None,
        groups: Any = None,
        intelligent: Any = None,
    ) -> ProductFirmware:
        number = parse_version(version)
        default = (
            parse_flag(product_default, "product_default") if product_default not in (None, "") else None
        )
        names = _groups(groups) if groups is not None else None
        smart = parse_flag(intelligent, "intelligent") if intelligent not in (None, "") else False
        if default is None and names is None:
            raise InvalidInput("Give product_default or groups to release to", code="invalid_request")
        async with self._store.transaction() as tx:
            product = (await access_product(tx, principal, ref, "firmware:release", "firmware")).product
            found = await _firmware(tx, product.id, number)
            group_ids = await _group_ids(tx, product.id, names) if names is not None else None
            reaches = (found.product_default if default is None else default) or bool(
                found.group_ids if group_ids is None else group_ids
            )
            if reaches and not found.released:
                counts = await tx.product_firmware.device_counts(product.id)
                if not counts.get(number):
                    raise InvalidInput(
                        f"Firmware version {number} must be running on at least one device of the product "
                        "before its first release: lock a device to it (with flash) and let it reconnect",
                        code="Firmware not running on any device",
                    )
            await tx.product_firmware.release(
                found, product_default=default, group_ids=group_ids, intelligent=smart, now=self._clock.now()
            )
            released = await tx.product_firmware.get(product.id, number)
        assert released is not None
        logger.info(
            "product firmware released",
            product_id=product.id,
            version=number,
            product_default=released.product_default,
            groups=list(released.groups),
            intelligent=smart,
        )
        if self.on_release is not None:
            self.on_release(product.id, smart)
        if reaches:
            await self._announce(product.id, FIRMWARE_RELEASE_EVENT, {"immediate": smart, "version": number})
        return released

    async def _announce(self, product_id: int, name: str, body: Mapping[str, Any]) -> None:
        """A product event of the firmware's life (docs: firmware update events), after the change."""
        if self._events is not None:
            await self._events.publish_for_product_internal(
                product_id, name, json.dumps(body, separators=(",", ":"))
            )

    async def delete(self, principal: AnyPrincipal, ref: str, version: Any) -> None:
        number = parse_version(version)
        async with self._store.transaction() as tx:
            product = (await access_product(tx, principal, ref, "firmware:remove", "firmware")).product
            found = await _firmware(tx, product.id, number)
            if found.released:
                raise InvalidInput(
                    f"Firmware version {number} has been released and cannot be deleted",
                    code="Firmware has been released",
                )
            await tx.product_firmware.delete(found.id)
        await self._binaries.delete(found.binary_id)
        if self.on_delete is not None:
            self.on_delete(found.binary_id)


def _exists(version: int) -> InvalidInput:
    return InvalidInput(f"Version {version} of this product's firmware already exists", code="Conflict")


async def _firmware(tx: UnitOfWork, product_id: int, version: int) -> ProductFirmware:
    found = await tx.product_firmware.get(product_id, version)
    if found is None:
        raise firmware_not_found(version)
    return found


async def _group_ids(tx: UnitOfWork, product_id: int, names: Sequence[str]) -> list[int]:
    ids: list[int] = []
    for name in names:
        group = await tx.groups.get(product_id, name)
        if group is None:
            raise NotFound(f"Group {name} not found", code="Not Found")
        ids.append(group.id)
    return ids
