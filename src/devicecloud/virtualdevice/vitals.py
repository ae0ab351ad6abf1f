"""
What a virtual device reports as its vitals (the metrics Describe), in Device OS's binary diagnostics format.

The figures are plausible for the platform and change the way a real device's do: uptime and the cloud
counters follow the device's life, memory use and signal drift a little between reports (seeded, so a
test can rely on them), and tests may set any figure (``vitals.rssi = -90``) before the cloud asks.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from devicecloud.protocol import DiagnosticId, build_diagnostics

__all__ = ["Vitals"]

# Device OS's "not supported" system error, what a Photon reports for its (absent) fuel gauge.
NOT_SUPPORTED = -120
# Platforms with a cellular modem and a fuel gauge: Electron (10), Boron (13), B SoM (23), Tracker (26).
CELLULAR_PLATFORMS = frozenset({10, 13, 23, 26})


@dataclass
class Vitals:
    """
    The figures a virtual device reports; ``values()`` is one report (ids → raw 32-bit values).

    Attributes:
        platform_id: decides Wi-Fi or cellular and whether there is a battery.
        rssi: the signal value, dBm (Wi-Fi RSSI or LTE RSRP).
        snr: the signal quality value, dB.
        total_ram, used_ram: bytes.
        battery_charge: percent, ``None`` = no fuel gauge (reported as an error, as Device OS does).
        round_trip: the device's CoAP round trip, ms.
    """

    platform_id: int = 6
    rssi: float = -58.0
    snr: float = 31.0
    total_ram: int = 82_944
    used_ram: int = 27_100
    battery_charge: float | None = None
    round_trip: int = 310
    seed: int = 0
    _random: random.Random = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._random = random.Random(self.seed)  # noqa: S311 - test figures, not secrets
        if self.platform_id in CELLULAR_PLATFORMS:
            self.rssi, self.snr, self.total_ram, self.used_ram = -97.0, -11.0, 168_096, 61_200
            if self.battery_charge is None:
                self.battery_charge = 87.5

    @property
    def cellular(self) -> bool:
        return self.platform_id in CELLULAR_PLATFORMS

    def _drift(self) -> None:
        self.used_ram = max(1, min(self.total_ram, self.used_ram + self._random.randint(-512, 512)))
        self.rssi = max(-110.0, min(-30.0, self.rssi + self._random.choice((-1.0, 0.0, 1.0))))

    def values(
        self, *, uptime: float, connects: int, disconnects: int
    ) -> tuple[dict[int, int], dict[int, int]]:
        """One report: (values, errors) for `build_diagnostics`; figures drift a little between reports."""
        self._drift()
        strength = max(0.0, min(100.0, (self.rssi + 110.0) * 100.0 / 80.0))
        quality = max(0.0, min(100.0, (self.snr + 20.0) * 100.0 / 60.0))
        values = {
            DiagnosticId.SYSTEM_UPTIME: int(uptime),
            DiagnosticId.SYSTEM_TOTAL_RAM: self.total_ram,
            DiagnosticId.SYSTEM_USED_RAM: self.used_ram,
            DiagnosticId.NETWORK_CONNECTION_STATUS: 4,  # connected
            DiagnosticId.NETWORK_CONNECTION_ATTEMPTS: 1,
            DiagnosticId.NETWORK_DISCONNECTS: 0,
            DiagnosticId.CLOUD_CONNECTION_STATUS: 2,  # connected
            DiagnosticId.CLOUD_CONNECTION_ATTEMPTS: connects,
            DiagnosticId.CLOUD_DISCONNECTS: disconnects,
            DiagnosticId.CLOUD_COAP_ROUND_TRIP: self.round_trip,
            DiagnosticId.CLOUD_RATE_LIMITED_EVENTS: 0,
            DiagnosticId.NETWORK_ACCESS_TECHNOLOGY: 8 if self.cellular else 1,  # LTE Cat-M1 / Wi-Fi
            DiagnosticId.NETWORK_SIGNAL_STRENGTH: round(strength * 256),
            DiagnosticId.NETWORK_SIGNAL_STRENGTH_VALUE: round(self.rssi * 65536),
            DiagnosticId.NETWORK_SIGNAL_QUALITY: round(quality * 256),
            DiagnosticId.NETWORK_SIGNAL_QUALITY_VALUE: round(self.snr * 65536),
        }
        errors: dict[int, int] = {}
        if self.battery_charge is None:
            errors[DiagnosticId.BATTERY_CHARGE] = NOT_SUPPORTED
        else:
            values[DiagnosticId.BATTERY_CHARGE] = round(self.battery_charge * 256)
            values[DiagnosticId.BATTERY_STATE] = 4  # discharging
            values[DiagnosticId.POWER_SOURCE] = 5  # battery
        if self.cellular:
            values[DiagnosticId.CELL_MOBILE_COUNTRY_CODE] = 310
            values[DiagnosticId.CELL_MOBILE_NETWORK_CODE] = 410
            values[DiagnosticId.CELL_LOCATION_AREA_CODE] = 0x2B0C
            values[DiagnosticId.CELL_ID] = 0x0A1B2C3
        return {int(k): v for k, v in values.items()}, {int(k): v for k, v in errors.items()}

    def payload(self, *, uptime: float, connects: int, disconnects: int) -> bytes:
        """One report in the binary metrics Describe format."""
        values, errors = self.values(uptime=uptime, connects=connects, disconnects=disconnects)
        return build_diagnostics(values, errors)
