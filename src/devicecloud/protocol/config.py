"""
Connection options: the role, the device's response style, timeouts and the device Hello.

Kept apart from :mod:`~devicecloud.protocol.connection` so adapters can build and pass settings without
touching the state machine.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

__all__ = [
    "CLOUD_TIMING",
    "DEVICE_TIMING",
    "ConnectionState",
    "DeviceHello",
    "ResponseStyle",
    "Role",
    "Timing",
]


class Role(Enum):
    """Which end of the link this connection is."""

    CLOUD = "cloud"
    DEVICE = "device"


class ResponseStyle(Enum):
    """How a device-role connection answers variable and describe requests."""

    PIGGYBACK = "piggyback"  # Device OS 0.x–1.4: the answer rides in the ACK
    SEPARATE = "separate"  # Device OS 1.5+/2.x: empty ACK now, the answer as its own message later


class ConnectionState(Enum):
    """See the module docstring."""

    HANDSHAKE = "handshake"
    AWAIT_DEVICE_KEY = "await device key"
    AWAIT_HELLO = "await hello"
    ESTABLISHED = "established"
    CLOSED = "closed"


@dataclass(frozen=True)
class Timing:
    """
    Timeouts in seconds; ``None`` disables one.

    Attributes:
        handshake_timeout: from construction until the Hello exchange is done.
        request_timeout: how long a request waits for its answer.
        ping_after: send a keep-alive ping after this long without receiving anything (and again after the
        same
            time if nothing arrives).
        idle_timeout: declare the link dead after this long without receiving anything.
    """

    handshake_timeout: float | None = 30.0
    request_timeout: float | None = 30.0
    ping_after: float | None = 20.0
    idle_timeout: float | None = 35.0


#: Cloud defaults: the device itself pings after 15 s of silence, so 20 s of silence earns a ping from us and
#: 35 s (> 2 device ping intervals, like spark-protocol's 31 s socket timeout) means the link is dead.
CLOUD_TIMING = Timing()
#: Device defaults as in Device OS 0.7: ping after 15 s without receiving, never drop the link for silence
#: (2.x drops it 10 s after an unanswered ping: use ``idle_timeout=25.0``).
DEVICE_TIMING = Timing(handshake_timeout=30.0, request_timeout=30.0, ping_after=15.0, idle_timeout=None)


@dataclass(frozen=True)
class DeviceHello:
    """What a device-role connection says in its Hello."""

    product_id: int = 0xFFFF
    product_firmware_version: int = 0xFFFF
    flags: int = 0
    platform_id: int = 6
    #: Device OS ≥ 3.0 also says these (a 20-byte Hello): (system version, max binary, OTA chunk size).
    limits: tuple[int, int, int] | None = None

    def payload(self, device_id: bytes | None = None) -> bytes:
        """
        The 8-byte Hello payload, or the 20-byte one of Device OS ≥ 3.0 when ``limits`` are given. With a
        ``device_id`` (UDP, where the Hello names the device): 22 bytes (≤ 2.x: id length u16 = 12, the id),
        or 32 with ``limits``.
        """
        head = (
            self.product_id.to_bytes(2, "big")
            + self.product_firmware_version.to_bytes(2, "big")
            + bytes([0, self.flags])
            + self.platform_id.to_bytes(2, "big")
        )
        ident = b"" if device_id is None else device_id
        if self.limits is None:
            return head if device_id is None else head + bytes([0, len(ident)]) + ident
        system_version, max_binary, chunk_size = self.limits
        return (
            head
            + bytes([0, len(ident)])  # reserved, device id length (none over TCP)
            + ident
            + system_version.to_bytes(2, "big")
            + (1024).to_bytes(2, "big")  # max message size
            + max_binary.to_bytes(4, "big")
            + chunk_size.to_bytes(2, "big")
        )
