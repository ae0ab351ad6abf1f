"""
Protocol values → domain values, and back, at the gateway's edge.

Services never see protocol types (an import contract), so everything a link reports goes through here:
the Hello becomes a `DeviceHelloInfo`, a Describe a `DeviceDescription`, a variable answer a
`VariableReading`. Type codes become the names the Particle API shows (``bool``, ``int32``, ``double``,
``string``), and the system modules' version number the Device OS release (``2301`` → ``"2.3.0"``).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from devicecloud.domain.device_os_versions import system_version_name
from devicecloud.domain.devices import DeviceDescription, DeviceHelloInfo, VariableReading
from devicecloud.protocol import Description, HelloReceived, VariableType, VariableValue

__all__ = [
    "describe_to_domain",
    "hello_to_domain",
    "reading_to_domain",
    "system_firmware_version",
    "system_module_version",
    "variable_type_code",
]

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
    API cannot show (NULL, unknown codes) are left out; the Device OS release comes from the system parts in
    the module list (``None`` when it cannot be told, so the stored one stays).
    """
    variables = None
    if description.variables is not None:
        variables = {
            name: _TYPE_NAMES[code] for name, code in description.variables.items() if code in _TYPE_NAMES
        }
    return DeviceDescription(
        functions=description.functions,
        variables=variables,
        system_firmware_version=system_firmware_version(description.modules),
        modules=list(description.modules) if description.modules is not None else None,
    )


def system_firmware_version(modules: Iterable[Any] | None) -> str | None:
    """
    The Device OS release the module list shows (see `system_module_version`); ``None`` when no system part
    is listed or its number is not in the release table.
    """
    version = system_module_version(modules)
    return system_version_name(version) if version is not None else None


def system_module_version(modules: Iterable[Any] | None) -> int | None:
    """
    The version number of the system parts (function ``"s"``) in a Describe's module list; the numbers grow
    with each Device OS release (1.5.0-rc.1 is 1500). A monolithic build (function ``"m"``: system and
    application in one module, as the gcc virtual device and debug builds run) counts when no system part is
    listed.

    Mid-upgrade the parts can disagree; the lowest counts (the newer release is not complete yet).
    Entries that are not modules, modules in another store than the main one (``"l"``: backup, factory, OTA
    scratchpad) and versions that are not integers are ignored. ``None`` when no system part is listed.
    """
    main = [
        module
        for module in modules or ()
        if isinstance(module, dict) and module.get("l", "m") == "m" and type(module.get("v")) is int
    ]
    for function in ("s", "m"):
        versions: list[int] = [module["v"] for module in main if module.get("f") == function]
        if versions:
            return min(versions)
    return None


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
