"""
Protocol values → domain values, and back, at the gateway's edge.

Services never see protocol types (an import contract), so everything a link reports goes through here:
the Hello becomes a `DeviceHelloInfo`, a Describe a `DeviceDescription`, a variable answer a
`VariableReading`. Type codes become the names the Particle API shows (``bool``, ``int32``, ``double``,
``string``).
"""

from __future__ import annotations

from devicecloud.domain.devices import DeviceDescription, DeviceHelloInfo, VariableReading
from devicecloud.protocol import Description, HelloReceived, VariableType, VariableValue

__all__ = ["describe_to_domain", "hello_to_domain", "reading_to_domain", "variable_type_code"]

_TYPE_NAMES: dict[int, str] = {
    VariableType.BOOL: "bool",
    VariableType.INT: "int32",
    VariableType.DOUBLE: "double",
    VariableType.STRING: "string",
}
_TYPE_CODES = {name: VariableType(code) for code, name in _TYPE_NAMES.items()}


def hello_to_domain(event: HelloReceived) -> DeviceHelloInfo:
    """
    What the device said in its Hello.
    """
    return DeviceHelloInfo(
        platform_id=event.platform_id,
        product_id=event.product_id,
        product_firmware_version=event.product_firmware_version,
        flags=event.flags,
    )


def describe_to_domain(description: Description) -> DeviceDescription:
    """
    A Describe as services store it. Parts the device did not send stay ``None``; variables of a type the
    API cannot show (NULL, unknown codes) are left out.
    """
    variables = None
    if description.variables is not None:
        variables = {
            name: _TYPE_NAMES[code] for name, code in description.variables.items() if code in _TYPE_NAMES
        }
    return DeviceDescription(
        functions=description.functions,
        variables=variables,
        # The module list carries version numbers, not the semver string the API shows; mapping one to
        # the other needs Particle's release table, which we do not have yet.
        system_firmware_version=None,
        modules=list(description.modules) if description.modules is not None else None,
    )


def variable_type_code(name: str | None) -> VariableType | None:
    """
    The wire type code for an API type name (``None`` when unknown).
    """
    return _TYPE_CODES.get(name) if name is not None else None


def reading_to_domain(event: VariableValue) -> VariableReading:
    """
    A variable answer as the API shows it; a value of unknown type is shown as a string.
    """
    if event.var_type is not None and event.var_type in _TYPE_NAMES:
        return VariableReading(name=event.name, value=event.value, type=_TYPE_NAMES[event.var_type])
    return VariableReading(name=event.name, value=event.raw.decode("utf-8", "replace"), type="string")
