"""
The Describe: what functions and variables a device has, and its system modules.

Theory of operation:
    The device answers a Describe request (or, on 2.x, volunteers one) with a compact JSON object: ``"f"`` a
    list of function names, ``"v"`` an object ``name → variable type code``, ``"p"`` the platform id and
    ``"m"`` the module list. Which keys are present depends on the Describe flags (system = ``p``/``m``,
    application = ``f``/``v``). From Device OS 5.5 the system part is protobuf instead, with Content-Format
    42 (`system_describe`), read into the same shape.
    :func:`parse_describe` reads either and validates the shape; :func:`build_describe` writes the JSON in the
    key order the 0.7.0 firmware uses, so the virtual device produces the recorded bytes.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from devicecloud.protocol.codes import DescribeFlags, VariableType
from devicecloud.protocol.errors import RemoteProtocolError
from devicecloud.protocol.system_describe import SYSTEM_DESCRIBE_CONTENT_FORMAT, decode_system_describe

__all__ = ["Description", "build_describe", "parse_describe"]


@dataclass(frozen=True)
class Description:
    """A parsed Describe payload. Absent parts are ``None``."""

    functions: tuple[str, ...] | None = None
    variables: Mapping[str, VariableType | int] | None = None
    platform_id: int | None = None
    modules: tuple[Any, ...] | None = None
    raw: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)


def _variable_type(code: int) -> VariableType | int:
    try:
        return VariableType(code)
    except ValueError:
        return code


def parse_describe(payload: bytes, content_format: int | None = None) -> Description:
    """
    Parse a Describe payload: JSON, or with ``content_format`` 42 the protobuf system Describe of Device OS
    ≥ 5.5 (`system_describe`), read into the same shape.

    Returns:
        The description.

    Raises:
        RemoteProtocolError: not UTF-8 JSON (not a SystemDescribe protobuf), or a key has the wrong shape.
    """
    if content_format == SYSTEM_DESCRIBE_CONTENT_FORMAT:
        doc: Any = decode_system_describe(payload)
    else:
        try:
            doc = json.loads(payload.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError) as exc:
            raise RemoteProtocolError(f"Describe payload is not JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise RemoteProtocolError("Describe payload is not a JSON object")
    functions = doc.get("f")
    if functions is not None and (
        not isinstance(functions, list) or not all(isinstance(f, str) for f in functions)
    ):
        raise RemoteProtocolError('Describe "f" is not a list of names')
    variables = doc.get("v")
    if variables is not None and (
        not isinstance(variables, dict)
        or not all(isinstance(t, int) and not isinstance(t, bool) for t in variables.values())
    ):
        raise RemoteProtocolError('Describe "v" is not an object of type codes')
    platform_id = doc.get("p")
    if platform_id is not None and (not isinstance(platform_id, int) or isinstance(platform_id, bool)):
        raise RemoteProtocolError('Describe "p" is not an integer')
    modules = doc.get("m")
    if modules is not None and not isinstance(modules, list):
        raise RemoteProtocolError('Describe "m" is not a list')
    return Description(
        functions=tuple(functions) if functions is not None else None,
        variables={k: _variable_type(t) for k, t in variables.items()} if variables is not None else None,
        platform_id=platform_id,
        modules=tuple(modules) if modules is not None else None,
        raw=doc,
    )


def build_describe(
    *,
    functions: Iterable[str] = (),
    variables: Mapping[str, VariableType | int] | None = None,
    platform_id: int = 0,
    modules: Iterable[Any] = (),
    flags: DescribeFlags | int = DescribeFlags.SYSTEM | DescribeFlags.APPLICATION,
) -> bytes:
    """
    Build a Describe payload as the device firmware does.

    Args:
        functions: function names.
        variables: name → type code.
        platform_id: the ``"p"`` value.
        modules: the ``"m"`` list.
        flags: which parts to include (application = ``f``/``v``, system = ``p``/``m``).

    Returns:
        Compact JSON bytes, keys in the order ``f, v, p, m``.
    """
    doc: dict[str, Any] = {}
    if flags & DescribeFlags.APPLICATION:
        doc["f"] = list(functions)
        doc["v"] = {k: int(t) for k, t in (variables or {}).items()}
    if flags & DescribeFlags.SYSTEM:
        doc["p"] = platform_id
        doc["m"] = list(modules)
    return json.dumps(doc, separators=(",", ":")).encode("utf-8")
