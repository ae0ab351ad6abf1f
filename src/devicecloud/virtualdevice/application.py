"""
The "user firmware" of a virtual device: its cloud variables and cloud functions.

Theory of operation:
    A real device registers ``Particle.variable()`` / ``Particle.function()`` in ``setup()`` and the cloud
    learns them from the Describe. Here :class:`CloudVariables` (a mutable mapping) and
    :class:`CloudFunctions` hold the same things and can change at run time; each change bumps
    ``version`` and calls the ``on_change`` hook, which the device uses to re-describe itself (2.x style).

    A variable has a fixed wire type (bool, int32, double, string). Assigning a new name infers the type
    from the Python value (``bool`` before ``int``: ``True`` is an ``int`` too); assigning to an existing
    name keeps its type and coerces where that is lossless (an ``int`` into a double). A value can also be
    a zero-argument callable, read each time the cloud asks (``uptime``), which needs an explicit type.

    A function takes the argument string and returns an int32, synchronously or as a coroutine.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Iterator, Mapping, MutableMapping
from dataclasses import dataclass

from devicecloud.protocol import VariableData, VariableType, encode_variable

__all__ = [
    "MAX_NAME_LENGTH",
    "CloudFunction",
    "CloudFunctions",
    "CloudVariables",
    "VariableSource",
    "infer_variable_type",
]

#: Device OS 2.x limit on function and variable names (0.7 allowed only 12 characters).
MAX_NAME_LENGTH = 64

CloudFunction = Callable[[str], int | Awaitable[int]]
VariableSource = VariableData | Callable[[], VariableData]

_TYPE_NAMES = {"bool": VariableType.BOOL, "int": VariableType.INT, "int32": VariableType.INT}
_TYPE_NAMES |= {"double": VariableType.DOUBLE, "float": VariableType.DOUBLE, "string": VariableType.STRING}
_TYPE_NAMES |= {"str": VariableType.STRING}


def infer_variable_type(value: object) -> VariableType:
    """
    The wire type a Python value maps to.

    Returns:
        ``BOOL`` for bool, ``INT`` for int, ``DOUBLE`` for float, ``STRING`` for str.

    Raises:
        TypeError: any other value (callables need an explicit type).
    """
    if isinstance(value, bool):
        return VariableType.BOOL
    if isinstance(value, int):
        return VariableType.INT
    if isinstance(value, float):
        return VariableType.DOUBLE
    if isinstance(value, str):
        return VariableType.STRING
    raise TypeError(f"cannot infer a variable type for {value!r}; pass type=")


def _parse_type(var_type: VariableType | int | str) -> VariableType:
    if isinstance(var_type, str):
        try:
            return _TYPE_NAMES[var_type.lower()]
        except KeyError:
            raise ValueError(f"unknown variable type {var_type!r}") from None
    return VariableType(var_type)


def _check_name(name: str) -> None:
    if not name or len(name) > MAX_NAME_LENGTH:
        raise ValueError(f"a name is 1 to {MAX_NAME_LENGTH} characters: {name!r}")


def _coerce(var_type: VariableType, value: VariableData) -> VariableData:
    """The value in the variable's own type; raises TypeError if that would lose meaning."""
    if var_type is VariableType.DOUBLE and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if var_type is VariableType.BOOL and isinstance(value, bool):
        return value
    if var_type is VariableType.INT and isinstance(value, int) and not isinstance(value, bool):
        if not -(2**31) <= value < 2**31:
            raise ValueError(f"{value} does not fit in an int32")
        return value
    if (var_type is VariableType.DOUBLE and isinstance(value, float)) or (
        var_type is VariableType.STRING and isinstance(value, str)
    ):
        return value
    raise TypeError(f"{value!r} is not a {var_type.name.lower()} value")


class _Registry:
    """What both registries share: a change counter and a hook."""

    def __init__(self) -> None:
        self.version = 0
        self.on_change: Callable[[], None] | None = None

    def _changed(self) -> None:
        self.version += 1
        if self.on_change is not None:
            self.on_change()


@dataclass
class _Variable:
    var_type: VariableType
    source: VariableSource


class CloudVariables(_Registry, MutableMapping[str, VariableData]):
    """
    The device's cloud variables: ``variables["temp"] = 21.5``, ``variables["temp"]`` → the current value.
    """

    def __init__(self) -> None:
        super().__init__()
        self._items: dict[str, _Variable] = {}

    def set(self, name: str, value: VariableSource, type: VariableType | int | str | None = None) -> None:
        """
        Create or update a variable.

        Args:
            name: 1–64 characters.
            value: a bool/int/float/str, or a zero-argument callable producing one (then ``type`` is needed).
            type: the wire type (``VariableType``, its code, or "bool"/"int"/"double"/"string"); inferred
                from ``value`` for new names, kept for existing ones when omitted.

        Raises:
            TypeError: the value does not fit the type, or a callable without a type.
            ValueError: a bad name, type or out-of-range int.
        """
        _check_name(name)
        existing = self._items.get(name)
        if type is not None:
            var_type = _parse_type(type)
        elif existing is not None:
            var_type = existing.var_type
        else:
            var_type = infer_variable_type(value)
        if not callable(value):
            value = _coerce(var_type, value)
        self._items[name] = _Variable(var_type, value)
        if existing is None or existing.var_type is not var_type:
            self._changed()  # only the names and types are in the Describe

    def type_of(self, name: str) -> VariableType:
        """The wire type of a variable (KeyError if there is none)."""
        return self._items[name].var_type

    def types(self) -> dict[str, VariableType]:
        """Name → wire type, as the Describe lists them."""
        return {name: item.var_type for name, item in self._items.items()}

    def read(self, name: str) -> tuple[VariableType, bytes]:
        """
        A variable's type and its value encoded for the wire (getters are called now).

        Raises:
            KeyError: no such variable.
            TypeError / ValueError: a getter produced a value that does not fit.
        """
        item = self._items[name]
        return item.var_type, encode_variable(item.var_type, self[name])

    def __getitem__(self, name: str) -> VariableData:
        item = self._items[name]
        source = item.source
        return _coerce(item.var_type, source()) if callable(source) else source

    def __setitem__(self, name: str, value: VariableData) -> None:
        self.set(name, value)

    def __delitem__(self, name: str) -> None:
        del self._items[name]
        self._changed()

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)


class CloudFunctions(_Registry, Mapping[str, CloudFunction]):
    """The device's cloud functions: name → ``callable(argument: str) -> int`` (sync or async)."""

    def __init__(self) -> None:
        super().__init__()
        self._items: dict[str, CloudFunction] = {}

    def add(self, name: str, function: CloudFunction) -> None:
        """
        Register (or replace) a function.

        Raises:
            ValueError: a bad name.
            TypeError: not callable.
        """
        _check_name(name)
        if not callable(function):
            raise TypeError(f"{function!r} is not callable")
        is_new = name not in self._items
        self._items[name] = function
        if is_new:
            self._changed()

    def remove(self, name: str) -> None:
        """Unregister a function (KeyError if there is none)."""
        del self._items[name]
        self._changed()

    def invoke(self, name: str, argument: str) -> int | Awaitable[int]:
        """
        Start a function: a sync one has finished (its result is checked), an async one is returned to await.

        Returns:
            The int32 result, or an awaitable for it (pass its result to :meth:`check_result`).

        Raises:
            KeyError: no such function.
            TypeError / ValueError: a sync function did not return an int32.
        """
        result = self._items[name](argument)
        if inspect.isawaitable(result):
            return result
        return self.check_result(name, result)

    async def call(self, name: str, argument: str) -> int:
        """
        Run a function to completion, awaiting it if needed.

        Returns:
            Its int32 result.
        """
        result = self.invoke(name, argument)
        return self.check_result(name, await result) if inspect.isawaitable(result) else result

    @staticmethod
    def check_result(name: str, result: object) -> int:
        """
        A function's result if it is an int32.

        Raises:
            TypeError / ValueError: it is not.
        """
        if isinstance(result, bool) or not isinstance(result, int):
            raise TypeError(f"function {name!r} returned {result!r}, not an int")
        if not -(2**31) <= result < 2**31:
            raise ValueError(f"function {name!r} returned {result}, which does not fit in an int32")
        return result

    def __getitem__(self, name: str) -> CloudFunction:
        return self._items[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)
