"""
What the HTTP layer is handed by the composition root: services, settings and the clock, nothing concrete.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from devicecloud.clock import Clock
from devicecloud.services.accounts import AccountService
from devicecloud.services.clients import ClientService
from devicecloud.services.customers import CustomerService
from devicecloud.services.device_keys import DeviceKeyService
from devicecloud.services.devices import DeviceService
from devicecloud.services.diagnostics import DiagnosticsService
from devicecloud.services.events import EventService
from devicecloud.services.firmware import FirmwareService
from devicecloud.services.groups import GroupService
from devicecloud.services.libraries import LibraryService
from devicecloud.services.product_devices import ProductDeviceService
from devicecloud.services.product_firmware import ProductFirmwareService
from devicecloud.services.products import ProductService
from devicecloud.services.sims import SimService
from devicecloud.services.tokens import TokenService
from devicecloud.services.usage import UsageService
from devicecloud.services.webhooks import WebhookService
from devicecloud.settings import Settings


class Probes(Protocol):
    """
    What `/metrics` and `/readyz` show (`devicecloud.metrics.Metrics`).
    """

    async def render(self) -> tuple[bytes, str]:
        """
        The Prometheus exposition text and its content type.
        """
        ...

    async def readiness(self) -> dict[str, str]:
        """
        Each dependency (database, bus) and "ok", or what is wrong with it.
        """
        ...


@dataclass(frozen=True, slots=True)
class ApiDeps:
    settings: Settings
    clock: Clock
    accounts: AccountService
    tokens: TokenService
    clients: ClientService
    devices: DeviceService
    device_keys: DeviceKeyService
    events: EventService
    webhooks: WebhookService
    firmware: FirmwareService
    products: ProductService
    groups: GroupService
    product_devices: ProductDeviceService
    libraries: LibraryService
    sims: SimService
    diagnostics: DiagnosticsService
    customers: CustomerService
    product_firmware: ProductFirmwareService
    usage: UsageService
    probes: Probes | None = None
