"""
`services.ports.DeviceControl` for the devices linked to this process.

Theory of operation:
    Each call finds the device's current link in the registry, sends one protocol command through
    `Link.request` and turns the answer into a domain value or a domain error:

    - no established link → `errors.DeviceOffline`;
    - no answer within the caller's ``timeout`` (or the gateway's ``request_timeout``) →
      `errors.DeviceTimedOut` ("Timed out.");
    - the device answers 4.04, or its Describe does not list the name → `errors.NotFound`
      ("Function <x> not found" / "Variable <x> not found"). Asking the Describe first matters: Device OS
      0.7 crashes on a request for an unknown variable and never answers an unknown function;
    - the link closes while waiting → `errors.DeviceOffline`; any other refusal (4.00 for an argument
      that is too long, 5.xx, RST) → `errors.InvalidInput` with the device's reason.

    Devices held by other nodes (a cluster, over the bus) are not routed yet: a device is online here or
    it is offline.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from devicecloud.domain.devices import DeviceDescription, VariableReading
from devicecloud.domain.diagnostics import VitalsReading
from devicecloud.errors import DeviceOffline, DeviceTimedOut, DomainError, InvalidInput, NotFound
from devicecloud.gateway.translate import describe_to_domain, reading_to_domain, variable_type_code
from devicecloud.protocol import (
    CallFunction,
    Code,
    DescribeFlags,
    DescribeReceived,
    DiagnosticsReceived,
    Event,
    FunctionReturned,
    HelloFlags,
    Ping,
    ReadVariable,
    RequestCompleted,
    RequestDescribe,
    RequestFailed,
    Signal,
    VariableType,
    VariableValue,
    vitals_payload,
)
from devicecloud.protocol.udp import UdpSession

if TYPE_CHECKING:
    from devicecloud.gateway.link import Link
    from devicecloud.gateway.registry import LinkRegistry

__all__ = ["GatewayControl"]


def _function_not_found(name: str) -> NotFound:
    return NotFound(f"Function {name} not found", code="Function not found")


def _variable_not_found(name: str) -> NotFound:
    return NotFound(f"Variable {name} not found", code="Variable not found")


def _refusal(link: Link, result: Event, not_found: DomainError) -> DomainError:
    """
    The domain error for an answer that is not the expected result.
    """
    if isinstance(result, RequestFailed):
        if result.code == Code.NOT_FOUND:
            return not_found
        if result.code is None and not link.online:
            return DeviceOffline("Device is not connected")
        return InvalidInput(f"The device refused the request: {result.reason}")
    return InvalidInput(f"Unexpected answer from the device: {type(result).__name__}")


def _no_vitals() -> InvalidInput:
    return InvalidInput(
        "This device does not report vitals (its Device OS predates diagnostics, added in 0.8.0)",
        code="Vitals not supported",
    )


class GatewayControl:
    """
    Requests to devices with a live link on this gateway (implements `services.ports.DeviceControl`).
    """

    def __init__(self, registry: LinkRegistry[Link]) -> None:
        self._registry = registry

    def _link(self, device_id: str) -> Link:
        link = self._registry.get(device_id)
        if link is None or not link.online:
            raise DeviceOffline("Device is not connected")
        return link

    def is_online(self, device_id: str) -> bool:
        link = self._registry.get(device_id)
        return link is not None and link.online

    async def call_function(self, device_id: str, name: str, argument: str, *, timeout: float) -> int:
        link = self._link(device_id)
        if link.functions is not None and name not in link.functions:
            raise _function_not_found(name)
        result = await link.request(CallFunction(name, argument), timeout=timeout)
        if isinstance(result, FunctionReturned):
            return result.return_value
        raise _refusal(link, result, _function_not_found(name))

    async def read_variable(
        self, device_id: str, name: str, var_type: str | None, *, timeout: float
    ) -> VariableReading:
        link = self._link(device_id)
        code = variable_type_code(var_type)
        if link.variables is not None:
            if name not in link.variables:
                raise _variable_not_found(name)
            known = link.variables[name]
            code = code or (known if isinstance(known, VariableType) else None)
        # Without a type (no Describe yet) the raw value comes back as a string.
        result = await link.request(ReadVariable(name, code), timeout=timeout)
        if isinstance(result, VariableValue):
            return reading_to_domain(result)
        raise _refusal(link, result, _variable_not_found(name))

    async def ping(self, device_id: str, *, timeout: float) -> bool:
        link = self._registry.get(device_id)
        if link is None or not link.online:
            return False
        try:
            result = await link.request(Ping(), timeout=timeout)
        except (DeviceOffline, DeviceTimedOut):
            return False
        return isinstance(result, RequestCompleted)

    async def signal(self, device_id: str, on: bool, *, timeout: float) -> None:
        link = self._link(device_id)
        result = await link.request(Signal(on), timeout=timeout)
        if not isinstance(result, RequestCompleted):
            raise _refusal(link, result, NotFound("Signal not supported", code="not_found"))

    async def refresh_describe(self, device_id: str, *, timeout: float) -> DeviceDescription:
        link = self._link(device_id)
        # Over UDP ask for the application part alone: Device OS ≥ 3.3 answers one part per request and
        # refuses a request without flags (4.00); the functions and variables are what a refresh is for.
        flags = DescribeFlags.APPLICATION if isinstance(link.connection, UdpSession) else None
        result = await link.request(RequestDescribe(flags), timeout=timeout)
        if isinstance(result, DescribeReceived):
            # The link reports it to DeviceSessions as well, in order with everything else.
            return describe_to_domain(result.description)
        raise _refusal(link, result, NotFound("Describe not supported", code="not_found"))

    async def read_vitals(self, device_id: str, *, timeout: float) -> VitalsReading:
        link = self._link(device_id)
        if not link.hello_flags & HelloFlags.DIAGNOSTICS_SUPPORT:
            raise _no_vitals()
        clock = link.clock
        asked = clock.monotonic()
        result = await link.request(RequestDescribe(DescribeFlags.METRICS), timeout=timeout)
        if isinstance(result, DiagnosticsReceived):
            answered = clock.monotonic()
            return VitalsReading(
                device=vitals_payload(result.report).get("device", {}),
                round_trip_ms=round((answered - asked) * 1000),
                session_seconds=int(answered - (link.online_since or answered)),
            )
        raise _refusal(link, result, _no_vitals())

    async def disconnect(self, device_id: str) -> None:
        link = self._registry.get(device_id)
        if link is not None:
            link.close("disconnected by the cloud")
