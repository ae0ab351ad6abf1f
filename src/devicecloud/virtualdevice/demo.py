"""
Built-in demo firmware: Tinker's four functions over in-memory pins, and a few variables of every type.

Theory of operation:
    Tinker is the app every Photon ships with, so ``particle call <dev> digitalwrite D7,HIGH`` is what people
    try first. :class:`Tinker` keeps the pins in memory and answers exactly as the firmware does: ``1`` for
    a successful write, the pin value for a read, ``-1`` for a bad pin or value (wrong pin class, unknown
    level, out-of-range number). Pins are ``D0``–``D7`` and ``A0``–``A7``; analog writes go to PWM values
    0–255, analog reads give 0–4095 (a written ``A`` pin reads back its value scaled, as a loop-back).

    :func:`install_demo` registers Tinker and the demo variables on a device's registries:
    ``uptime`` (int32, seconds since install), ``temperature`` (double), ``greeting`` (string) and ``led``
    (bool, mirrors ``D7``).
"""

from __future__ import annotations

import time
from collections.abc import Callable

from devicecloud.protocol import VariableType
from devicecloud.virtualdevice.application import CloudFunctions, CloudVariables

__all__ = ["DEMO_FUNCTIONS", "DEMO_VARIABLES", "Tinker", "install_demo"]

DEMO_FUNCTIONS = ("digitalread", "digitalwrite", "analogread", "analogwrite")
DEMO_VARIABLES = ("uptime", "temperature", "greeting", "led")

_DIGITAL_PINS = tuple(f"D{i}" for i in range(8))
_ANALOG_PINS = tuple(f"A{i}" for i in range(8))


class Tinker:
    """The Tinker app's pins and functions."""

    def __init__(self) -> None:
        self.pins: dict[str, int] = dict.fromkeys(_DIGITAL_PINS + _ANALOG_PINS, 0)

    @staticmethod
    def _pin(text: str) -> str | None:
        pin = text.strip().upper()
        return pin if pin in _DIGITAL_PINS or pin in _ANALOG_PINS else None

    def digitalread(self, argument: str) -> int:
        """``D7`` → 0/1; a written analog pin reads as high when its value is non-zero."""
        pin = self._pin(argument)
        if pin is None:
            return -1
        return 1 if self.pins[pin] else 0

    def digitalwrite(self, argument: str) -> int:
        """``D7,HIGH`` / ``D7,LOW`` → 1; anything else → -1."""
        pin_text, _, level = argument.partition(",")
        pin = self._pin(pin_text)
        level = level.strip().upper()
        if pin is None or level not in ("HIGH", "LOW"):
            return -1
        self.pins[pin] = 1 if level == "HIGH" else 0
        return 1

    def analogread(self, argument: str) -> int:
        """``A0`` → 0–4095 (PWM value × 4095 / 255 for a written pin); ``D`` pins read 0 or 4095."""
        pin = self._pin(argument)
        if pin is None:
            return -1
        if pin.startswith("D"):
            return 4095 if self.pins[pin] else 0
        return self.pins[pin] * 4095 // 255

    def analogwrite(self, argument: str) -> int:
        """``A0,128`` → 1 (value 0–255); anything else → -1."""
        pin_text, _, value_text = argument.partition(",")
        pin = self._pin(pin_text)
        try:
            value = int(value_text.strip())
        except ValueError:
            return -1
        if pin is None or not 0 <= value <= 255:
            return -1
        self.pins[pin] = value
        return 1


def install_demo(
    functions: CloudFunctions,
    variables: CloudVariables,
    *,
    monotonic: Callable[[], float] = time.monotonic,
) -> Tinker:
    """
    Register Tinker's functions and the demo variables.

    Args:
        functions: where the functions go.
        variables: where the variables go.
        monotonic: the clock ``uptime`` counts on.

    Returns:
        The Tinker instance (its ``pins`` can be inspected or preset).
    """
    tinker = Tinker()
    for name in DEMO_FUNCTIONS:
        functions.add(name, getattr(tinker, name))
    started = monotonic()
    variables.set("uptime", lambda: int(monotonic() - started), type=VariableType.INT)
    variables.set("temperature", 21.5)
    variables.set("greeting", "Hello from a devicecloud virtual device")
    variables.set("led", lambda: bool(tinker.pins["D7"]), type=VariableType.BOOL)
    return tinker
