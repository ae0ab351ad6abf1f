"""
The system Describe of Device OS ≥ 5.5: protobuf (CoAP Content-Format 42) instead of JSON.

Theory of operation:
    From 5.5.0 a device sends its system Describe (the module list, and IMEI/ICCID/modem firmware on
    cellular devices) as a ``particle.cloud.SystemDescribe`` protobuf message, marked with Content-Format 42
    (application/octet-stream); the application Describe (functions, variables) stays JSON. The message has
    no platform id: the Hello carries it.

    :func:`decode_system_describe` turns the message into the JSON Describe's shape (``"m"`` entries with
    ``f``/``n``/``v``/``s``/``l``/``vc``/``vv``/``u``/``d``, and ``imei``/``iccid``/``cellfw``), so everything
    after the parser reads one shape whatever the device's release. :func:`encode_system_describe` is the
    inverse, for the virtual device.

    The message types are built at import from a descriptor written here (field numbers and wire types of
    Device OS's ``cloud/describe.proto``), so no generated code and no ``protoc`` are needed; the
    ``protobuf`` runtime does the wire format.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import DecodeError

from devicecloud.protocol.errors import RemoteProtocolError

__all__ = ["SYSTEM_DESCRIBE_CONTENT_FORMAT", "decode_system_describe", "encode_system_describe"]

#: CoAP Content-Format of a protobuf system Describe (application/octet-stream).
SYSTEM_DESCRIBE_CONTENT_FORMAT = 42

# FirmwareModuleType → the JSON Describe's module function letter (Device OS `module_function_string`:
# settings and asset modules have no letter there, "_").
_FUNCTIONS = {1: "r", 2: "b", 3: "m", 4: "s", 5: "u", 6: "_", 7: "c", 8: "a", 9: "_"}
_FUNCTION_TYPES = {letter: number for number, letter in _FUNCTIONS.items() if letter != "_"}
# FirmwareModuleStore → `module_store_string`.
_STORES = {0: "m", 1: "f", 2: "b", 3: "t"}
_STORE_TYPES = {letter: number for number, letter in _STORES.items()}

_F = descriptor_pb2.FieldDescriptorProto
_PACKAGE = "devicecloud.particle_cloud"


def _message(name: str, *fields: tuple[str, int, int, int, str | None]) -> descriptor_pb2.DescriptorProto:
    message = descriptor_pb2.DescriptorProto(name=name)
    for field_name, number, kind, label, type_name in fields:
        field = message.field.add(name=field_name, number=number, type=kind, label=label)
        if type_name is not None:
            field.type_name = f".{_PACKAGE}.{type_name}"
    return message


def _descriptor() -> descriptor_pb2.FileDescriptorProto:
    one, many = _F.LABEL_OPTIONAL, _F.LABEL_REPEATED
    # Enums are varints on the wire: read as uint32, they keep values this code does not know.
    file = descriptor_pb2.FileDescriptorProto(
        name="devicecloud/system_describe.proto", package=_PACKAGE, syntax="proto3"
    )
    file.message_type.extend(
        [
            _message(
                "FirmwareModuleDependency",
                ("type", 1, _F.TYPE_UINT32, one, None),
                ("index", 2, _F.TYPE_UINT32, one, None),
                ("version", 3, _F.TYPE_UINT32, one, None),
            ),
            _message(
                "FirmwareModuleAsset",
                ("hash", 1, _F.TYPE_BYTES, one, None),
                ("name", 2, _F.TYPE_STRING, one, None),
                ("size", 3, _F.TYPE_UINT32, one, None),
                ("storage_size", 4, _F.TYPE_UINT32, one, None),
            ),
            _message(
                "FirmwareModuleSecurity",
                ("mode", 1, _F.TYPE_UINT32, one, None),
                ("certificate_fingerprint", 2, _F.TYPE_BYTES, one, None),
            ),
            _message(
                "FirmwareModule",
                ("type", 1, _F.TYPE_UINT32, one, None),
                ("index", 2, _F.TYPE_UINT32, one, None),
                ("version", 3, _F.TYPE_UINT32, one, None),
                ("store", 4, _F.TYPE_UINT32, one, None),
                ("max_size", 5, _F.TYPE_UINT32, one, None),
                ("checked_flags", 6, _F.TYPE_FIXED32, one, None),
                ("passed_flags", 7, _F.TYPE_FIXED32, one, None),
                ("hash", 8, _F.TYPE_BYTES, one, None),
                ("dependencies", 9, _F.TYPE_MESSAGE, many, "FirmwareModuleDependency"),
                ("asset_dependencies", 10, _F.TYPE_MESSAGE, many, "FirmwareModuleAsset"),
                ("size", 11, _F.TYPE_UINT32, one, None),
                ("security", 12, _F.TYPE_MESSAGE, one, "FirmwareModuleSecurity"),
            ),
            _message(
                "SystemDescribe",
                ("firmware_modules", 1, _F.TYPE_MESSAGE, many, "FirmwareModule"),
                ("imei", 2, _F.TYPE_STRING, one, None),
                ("iccid", 3, _F.TYPE_STRING, one, None),
                ("modem_firmware_version", 4, _F.TYPE_STRING, one, None),
                ("assets", 5, _F.TYPE_MESSAGE, many, "FirmwareModuleAsset"),
                ("protected_state", 6, _F.TYPE_BOOL, one, None),
            ),
        ]
    )
    return file


_POOL = descriptor_pool.DescriptorPool()
_POOL.Add(_descriptor())
_SystemDescribe: Any = message_factory.GetMessageClass(
    _POOL.FindMessageTypeByName(f"{_PACKAGE}.SystemDescribe")
)


def _dependency(dep: Any) -> dict[str, Any]:
    return {"f": _FUNCTIONS.get(dep.type, "_"), "n": str(dep.index), "v": dep.version}


def _module(module: Any) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "s": module.max_size,
        "l": _STORES.get(module.store, "_"),
        "vc": module.checked_flags,
        "vv": module.passed_flags,
    }
    if module.hash:
        entry["u"] = module.hash.hex()
    entry |= {
        "f": _FUNCTIONS.get(module.type, "_"),
        "n": str(module.index),
        "v": module.version,
        "d": [_dependency(dep) for dep in module.dependencies],
    }
    return entry


def decode_system_describe(payload: bytes) -> dict[str, Any]:
    """
    A protobuf system Describe as the JSON Describe's document (``m``, and ``imei``/``iccid``/``cellfw``
    when the device sent them).

    Raises:
        RemoteProtocolError: not a SystemDescribe message (bad wire format, a string that is not UTF-8).
    """
    message = _SystemDescribe()
    try:
        message.ParseFromString(payload)
    except (DecodeError, RecursionError) as exc:
        raise RemoteProtocolError(f"system Describe is not a SystemDescribe protobuf: {exc}") from exc
    cellular = {"imei": message.imei, "iccid": message.iccid, "cellfw": message.modem_firmware_version}
    return {"m": [_module(module) for module in message.firmware_modules]} | {
        key: value for key, value in cellular.items() if value
    }


def encode_system_describe(modules: Iterable[Mapping[str, Any]], *, iccid: str | None = None) -> bytes:
    """
    The protobuf a Device OS ≥ 5.5 device sends for ``modules`` (JSON-shaped entries as in a Describe's
    ``"m"`` list; missing keys are zero).
    """
    message = _SystemDescribe()
    for entry in modules:
        module = message.firmware_modules.add()
        module.type = _FUNCTION_TYPES.get(str(entry.get("f", "")), 0)
        module.index = int(entry.get("n", 0))
        module.version = int(entry.get("v", 0))
        module.store = _STORE_TYPES.get(str(entry.get("l", "m")), 0)
        module.max_size = int(entry.get("s", 0))
        module.checked_flags = int(entry.get("vc", 0))
        module.passed_flags = int(entry.get("vv", 0))
        if entry.get("u"):
            module.hash = bytes.fromhex(str(entry["u"]))
        for dep in entry.get("d", ()):
            added = module.dependencies.add()
            added.type = _FUNCTION_TYPES.get(str(dep.get("f", "")), 0)
            added.index = int(dep.get("n", 0))
            added.version = int(dep.get("v", 0))
    if iccid:
        message.iccid = iccid
    payload: bytes = message.SerializeToString()
    return payload
