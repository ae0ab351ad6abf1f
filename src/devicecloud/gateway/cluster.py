"""
`services.ports.DeviceControl` for a cluster: a request for a device linked to this node goes to its link; one
for a device linked elsewhere goes to that node over the bus (NATS request/reply), and comes back as the same
value or the same domain error as locally.

Theory of operation:
    - every node answers on one subject per device it holds (``<root>.cmd.<device>``): the runtime calls
      `held` when a device comes online here and `released` when it goes offline;
    - a request for a device not linked here is sent to that subject: the node holding it runs it on its
      `GatewayControl`, with the caller's timeout, and replies with the result or the error (class, code,
      description), rebuilt here, so the HTTP answer is byte for byte the local one;
    - no node holds it: the server says so at once (no responders), and the answer is `DeviceOffline`
      without waiting; a node that holds no live link for it (it just went away) stays silent rather than
      say "offline", so a newer holder's answer wins;
    - the bus waits ``timeout`` plus `MARGIN` for the reply, so the holder's own "Timed out." arrives first.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import structlog

from devicecloud.domain.devices import DeviceDescription, VariableReading
from devicecloud.domain.diagnostics import VitalsReading
from devicecloud.errors import Busy, DeviceOffline, DeviceTimedOut, DomainError, InvalidInput, NotFound

if TYPE_CHECKING:
    from devicecloud.bus.interfaces import DeviceCommands
    from devicecloud.services.ports import DeviceControl

logger = structlog.get_logger("devicecloud.gateway")

MARGIN = 2.0  # seconds the bus waits past the device's own timeout
FLASH_TIMEOUT = 30.0  # the holder checks the binary and starts the update; it does not wait for the end
_ERRORS: dict[str, type[DomainError]] = {
    cls.__name__: cls for cls in (DeviceOffline, DeviceTimedOut, NotFound, InvalidInput, Busy, DomainError)
}


class RoutedControl:
    """
    Requests to devices linked to any node (see the module docstring).

    Args:
        local: this node's `GatewayControl`.
        commands: the bus's request/reply for devices.
    """

    def __init__(self, local: DeviceControl, commands: DeviceCommands) -> None:
        self._local = local
        self._commands = commands
        commands.command_handler = self.answer
        #: The holder's side of an update asked for by another node (`FirmwareService.flash_stored`).
        self.flash_handler: Callable[[str, str, int | None], Awaitable[None]] | None = None

    # ------------------------------------------------------------------ which devices this node answers for

    def held(self, device_id: str) -> None:
        self._commands.serve_device(device_id)

    def released(self, device_id: str) -> None:
        self._commands.stop_serving_device(device_id)

    # ------------------------------------------------------------------ DeviceControl

    def is_online(self, device_id: str) -> bool:
        """
        True when linked here or possibly elsewhere: a request will tell (no node: offline at once).
        """
        return True

    async def call_function(self, device_id: str, name: str, argument: str, *, timeout: float) -> int:
        if self._local.is_online(device_id):
            return await self._local.call_function(device_id, name, argument, timeout=timeout)
        result = await self._remote(
            device_id, {"op": "function", "name": name, "argument": argument}, timeout
        )
        return int(result)

    async def read_variable(
        self, device_id: str, name: str, var_type: str | None, *, timeout: float
    ) -> VariableReading:
        if self._local.is_online(device_id):
            return await self._local.read_variable(device_id, name, var_type, timeout=timeout)
        result = await self._remote(device_id, {"op": "variable", "name": name, "type": var_type}, timeout)
        return VariableReading(name=result["name"], value=result["value"], type=result["type"])

    async def ping(self, device_id: str, *, timeout: float) -> bool:
        if self._local.is_online(device_id):
            return await self._local.ping(device_id, timeout=timeout)
        try:
            return bool(await self._remote(device_id, {"op": "ping"}, timeout))
        except (DeviceOffline, DeviceTimedOut):
            return False

    async def signal(self, device_id: str, on: bool, *, timeout: float) -> None:
        if self._local.is_online(device_id):
            await self._local.signal(device_id, on, timeout=timeout)
            return
        await self._remote(device_id, {"op": "signal", "on": on}, timeout)

    async def refresh_describe(self, device_id: str, *, timeout: float) -> DeviceDescription:
        if self._local.is_online(device_id):
            return await self._local.refresh_describe(device_id, timeout=timeout)
        result = await self._remote(device_id, {"op": "describe"}, timeout)
        functions = result["functions"]
        return DeviceDescription(
            functions=tuple(functions) if functions is not None else None,
            variables=result["variables"],
            system_firmware_version=result["system_firmware_version"],
            modules=result["modules"],
        )

    async def read_vitals(self, device_id: str, *, timeout: float) -> VitalsReading:
        if self._local.is_online(device_id):
            return await self._local.read_vitals(device_id, timeout=timeout)
        result = await self._remote(device_id, {"op": "vitals"}, timeout)
        return VitalsReading(
            device=result["device"],
            round_trip_ms=result["round_trip_ms"],
            session_seconds=result["session_seconds"],
        )

    async def disconnect(self, device_id: str) -> None:
        if self._local.is_online(device_id):
            await self._local.disconnect(device_id)
            return
        with contextlib.suppress(DomainError):  # held nowhere, or gone meanwhile: nothing to disconnect
            await self._remote(device_id, {"op": "disconnect"}, 5.0)

    # ------------------------------------------------------------------ RemoteUpdates

    async def flash_elsewhere(self, device_id: str, binary_id: str, owner_id: int | None) -> None:
        request = {"op": "flash", "binary": binary_id, "owner": owner_id}
        await self._remote(device_id, request, FLASH_TIMEOUT)

    # ------------------------------------------------------------------ the two ends of the bus

    async def _remote(self, device_id: str, request: dict[str, Any], timeout: float) -> Any:
        payload = json.dumps({**request, "device": device_id, "timeout": timeout}).encode()
        try:
            raw = await self._commands.request_device(device_id, payload, timeout=timeout + MARGIN)
        except LookupError:
            raise DeviceOffline("Device is not connected") from None
        except TimeoutError:
            raise DeviceTimedOut("Timed out.") from None
        reply = json.loads(raw)
        if "error" in reply:
            cls = _ERRORS.get(reply["error"], DomainError)
            raise cls(reply["description"], code=reply["code"], **reply["extra"])
        return reply["result"]

    async def answer(self, payload: bytes) -> bytes | None:
        """
        Run a request from another node on this node's link; None when the device is not linked here.
        """
        request = json.loads(payload)
        device_id = request["device"]
        if not self._local.is_online(device_id):
            return None
        try:
            result = await self._run(device_id, request)
        except DomainError as exc:
            body = {"error": type(exc).__name__, "description": exc.description, "code": exc.code}
            return json.dumps({**body, "extra": exc.extra}).encode()
        return json.dumps({"result": result}).encode()

    async def _run(self, device_id: str, request: dict[str, Any]) -> Any:
        local, timeout, op = self._local, float(request["timeout"]), request["op"]
        if op == "function":
            return await local.call_function(device_id, request["name"], request["argument"], timeout=timeout)
        if op == "variable":
            reading = await local.read_variable(device_id, request["name"], request["type"], timeout=timeout)
            return dataclasses.asdict(reading)
        if op == "ping":
            return await local.ping(device_id, timeout=timeout)
        if op == "signal":
            await local.signal(device_id, bool(request["on"]), timeout=timeout)
            return None
        if op == "describe":
            return dataclasses.asdict(await local.refresh_describe(device_id, timeout=timeout))
        if op == "vitals":
            return dataclasses.asdict(await local.read_vitals(device_id, timeout=timeout))
        if op == "disconnect":
            await local.disconnect(device_id)
            return None
        if op == "flash":
            if self.flash_handler is None:
                raise DeviceOffline("Device is not connected")
            await self.flash_handler(device_id, str(request["binary"]), request["owner"])
            return None
        raise InvalidInput(f"Unknown device command: {op}")
