"""
Product devices as the services and the store exchange them (issue 11 section 3): a list query, what an
import knows of an id, and what a device's Hello reports about its product.
"""

from __future__ import annotations

from dataclasses import dataclass

from devicecloud.domain.devices import ProductMembership

SORT_ATTRIBUTES = ("deviceId", "firmwareVersion", "lastConnection")


@dataclass(frozen=True, slots=True)
class DeviceListQuery:
    """
    One page of ``GET /v1/products/:p/devices``: filters (``None``: not filtered), order and page.
    """

    device_id: str | None = None
    device_name: str | None = None
    serial_number: str | None = None
    groups: tuple[str, ...] | None = None
    quarantined: bool | None = None
    sort_attr: str = "lastConnection"
    sort_dir: str = "desc"
    page: int = 1
    per_page: int = 25


@dataclass(frozen=True, slots=True)
class KnownDevice:
    """
    What an import needs to know of an id: its owner and its product membership, if any.
    """

    owner_id: int | None
    membership: ProductMembership | None


@dataclass(frozen=True, slots=True)
class ProductReport:
    """
    What a device's Hello says about its product, written behind: it joins the product if it is not a member
    of any (``quarantined`` as the product's setting says), and its product firmware version is recorded.
    """

    device_id: str
    product_id: int
    firmware_version: int | None
    quarantined: bool
