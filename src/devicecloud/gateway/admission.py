"""
Admission control for handshakes: at most ``slots`` handshakes in progress, the rest wait unread.

Theory of operation:
    The gateway takes a slot before it accepts a socket and gives it back when that link's handshake is
    over: the device is reported connected, or the link ended first (bad bytes, unknown key, EOF, the
    handshake deadline). While every slot is taken the gateway accepts nothing, so a connect storm waits
    in the kernel's listen backlog, where it costs the server nothing: no nonce, no RSA, no database. A
    device that waits there longer than it is willing to (Device OS 0.7.0 gives up on the nonce after
    20 s and connects again 0.75 s later) leaves on its own schedule, before the server has spent any
    work on it. Decision 0014 explains the choice of bound and where the handshake deadline starts.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

__all__ = ["HandshakeAdmission", "HandshakeSlot"]


@dataclass(slots=True)
class HandshakeSlot:
    """
    One handshake's place; `release` gives it back (once, however often it is called).
    """

    _admission: HandshakeAdmission | None

    def release(self) -> None:
        admission, self._admission = self._admission, None
        if admission is not None:
            admission._released()


class HandshakeAdmission:
    """
    A bound on handshakes in progress, with the figures `DeviceGateway.statistics` reports.

    Args:
        slots: the most handshakes in progress at once (>= 1).
    """

    def __init__(self, slots: int) -> None:
        if slots < 1:
            raise ValueError("a gateway needs at least one handshake slot")
        self.slots = slots
        self.in_progress = 0
        self.peak = 0  # the most in progress at once since start
        self._free = asyncio.Semaphore(slots)

    async def acquire(self) -> HandshakeSlot:
        """
        Wait for a free slot (first come, first served) and take it.
        """
        await self._free.acquire()
        self.in_progress += 1
        self.peak = max(self.peak, self.in_progress)
        return HandshakeSlot(self)

    def _released(self) -> None:
        self.in_progress -= 1
        self._free.release()
