"""
What services need from the outside world and adapters implement.

- `Notifier`: messages to users (password-reset tokens).
- `DeviceControl`: requests to a live device (implemented by `gateway/control.py`).
- `DeviceSessions` is the other direction: what the gateway reports to services about links. It is
  implemented by `services.device_sessions.DeviceSessionService` and is declared here so the gateway can be
  written and tested against the contract.

All values crossing these ports are plain domain values; protocol types never do.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from devicecloud.domain.devices import DeviceDescription, DeviceHelloInfo, VariableReading
from devicecloud.domain.diagnostics import VitalsReading
from devicecloud.domain.firmware import CompileResult, SourceFile, StoredBinary, UpdateOutcome, UpdateTarget
from devicecloud.domain.images import Image
from devicecloud.domain.webhooks import HookEvent, Webhook, WebhookConfig


class Notifier(Protocol):
    """
    Delivers messages to users (password-reset tokens). Implementations: the log (default) or SMTP.
    """

    async def send_password_reset(self, *, email: str, token: str, reset_url: str) -> None: ...

    async def send_usage_alert(
        self, *, email: str, account: str, limit: str, used: int, allowed: int
    ) -> None:
        """
        Tell a person that an account reached a usage limit of its service agreement (decision 0026).
        """
        ...

    async def drain(self) -> None:
        """
        Finish messages still in flight (called on shutdown).
        """
        ...


class DeviceControl(Protocol):
    """
    Requests to a connected device. Requests raise `errors.DeviceOffline` when the device has no live link in
    this process, `errors.DeviceTimedOut` when it does not answer within ``timeout`` seconds,
    `errors.NotFound` when it has no such function or variable, and `errors.InvalidInput` for any other
    refusal (an argument too long for its firmware, a 5.xx). ``ping`` answers False instead of raising, and
    ``disconnect`` never raises.
    """

    def is_online(self, device_id: str) -> bool: ...

    async def call_function(self, device_id: str, name: str, argument: str, *, timeout: float) -> int:
        """
        Call a cloud function; returns its int32 return value.
        """
        ...

    async def read_variable(
        self, device_id: str, name: str, var_type: str | None, *, timeout: float
    ) -> VariableReading:
        """
        Read a variable; ``var_type`` is the type from the device's describe (None when unknown).
        """
        ...

    async def ping(self, device_id: str, *, timeout: float) -> bool:
        """
        True when the device answers a ping in time; False when offline or silent (never raises for that).
        """
        ...

    async def signal(self, device_id: str, on: bool, *, timeout: float) -> None:
        """
        Start (``on``) or stop the rainbow LED signal.
        """
        ...

    async def refresh_describe(self, device_id: str, *, timeout: float) -> DeviceDescription:
        """
        Ask the device for its describe again and return it (also reported through `DeviceSessions`).
        """
        ...

    async def read_vitals(self, device_id: str, *, timeout: float) -> VitalsReading:
        """
        The device's vitals (the metrics Describe); `errors.InvalidInput` when its firmware has none.
        """
        ...

    async def disconnect(self, device_id: str) -> None:
        """
        Close the device's link, if any (used when a device is removed or its key replaced).
        """
        ...


class UpdateHandle(Protocol):
    """
    One over-the-air update under way.
    """

    async def finished(self) -> UpdateOutcome:
        """
        Wait for the update to end (never raises for a failed update: the outcome says so).
        """
        ...


class DeviceUpdates(Protocol):
    """
    Over-the-air updates of connected devices (implemented by the gateway). Both methods raise
    `errors.DeviceOffline` when the device has no live link here.
    """

    def update_target(self, device_id: str) -> UpdateTarget:
        """
        What the live link knows about the device for deciding whether a binary fits it.
        """
        ...

    def start_update(self, device_id: str, image: Image) -> UpdateHandle:
        """
        Start sending ``image`` (bytes, or a file read as the chunks go out); returns at once. Raises
        `errors.Busy` while the device is being updated.
        """
        ...


class RemoteUpdates(Protocol):
    """
    An update of a device linked to another node of the cluster (`gateway.cluster.RoutedControl`): the
    holder reads the binary from the shared `BinaryStore` by id (binaries are larger than a bus message).
    """

    async def flash_elsewhere(self, device_id: str, binary_id: str, owner_id: int | None) -> None:
        """
        Have the node holding the device check the binary and start the update. Raises `errors.DeviceOffline`
        when no node holds it, else what the holder's check raised (`InvalidInput`, `Busy`).
        """
        ...


class Compiler(Protocol):
    """
    Cloud compile: turns uploaded sources into a binary (implemented by `compiler.CommandCompiler`).
    """

    async def compile(
        self, sources: list[SourceFile], platform_id: int, version: str | None
    ) -> CompileResult:
        """
        Compile; a failed compile is a result without a binary (never an exception).
        """
        ...


class BinaryStore(Protocol):
    """
    Binaries kept for download and flashing: compiled ones and product firmware (implemented by
    `store.binaryfiles.BinaryFiles`).
    """

    async def save(self, binary: StoredBinary) -> None: ...

    async def delete(self, binary_id: str) -> None:
        """
        Forget the binary (no error when unknown).
        """
        ...

    async def load(self, binary_id: str) -> StoredBinary | None:
        """
        The binary, or None when unknown (expired ones may be gone).
        """
        ...


class DeviceSessions(Protocol):
    """
    What the gateway tells services about device links, in order: key check, connected, described*,
    vitals*, heard*, disconnected. Calls for one device never overlap.
    """

    async def check_device_key(
        self, device_id: str, offered_public_key_der: bytes, ip_address: str | None
    ) -> bytes | None:
        """
        The public key (DER) to run the handshake with, or None to refuse the device.

        An unknown device's offered key is recorded for an operator to approve; it is accepted at once only
        when the server is configured to accept unknown devices.
        """
        ...

    async def device_connected(self, device_id: str, ip_address: str | None, hello: DeviceHelloInfo) -> None:
        """
        The handshake completed and the device said Hello: it is online.
        """
        ...

    async def device_described(self, device_id: str, description: DeviceDescription) -> None:
        """
        The device sent (part of) its describe; parts that are None are left as they were.
        """
        ...

    def device_heard(self, device_id: str) -> None:
        """
        Any message arrived from the device (the service may throttle how often it writes this down).
        Synchronous and must not block: it runs for every keep-alive of every device, so the gateway calls
        it without the device's lock (a call that cannot wait cannot overlap another).
        """
        ...

    def device_vitals(self, device_id: str, vitals: Mapping[str, Any]) -> None:
        """
        The device sent its vitals unasked (the ``device`` part of the vitals JSON). Synchronous and must not
        block: kept in memory and written behind (decision 0013).
        """
        ...

    async def device_disconnected(self, device_id: str) -> None:
        """
        The link closed (cleanly, by error, or by keep-alive timeout).
        """
        ...


class WebhookRunner(Protocol):
    """
    What the webhook service needs from the delivery adapter (`webhooks/`): template checks and one test
    request. Implemented by `webhooks.dispatcher.WebhookDispatcher`.
    """

    def check(self, config: WebhookConfig) -> None:
        """
        Raise ValueError (with a readable message) if a template of ``config`` cannot be rendered.
        """
        ...

    async def test(self, hook: Webhook, event: HookEvent) -> str | None:
        """
        Send ``event`` through ``hook`` once, now, bypassing the queue; the error text, or None on success.
        """
        ...
