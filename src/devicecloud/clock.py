"""
Time as a collaborator: everything that expires or times out takes a Clock, so tests can move time by hand.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Protocol


class TimerHandle(Protocol):
    """
    A scheduled callback that can still be called off (`asyncio.TimerHandle` is one).
    """

    def cancel(self) -> None: ...


class Clock(Protocol):
    """
    A source of wall-clock time (for expiries stored in the database) and monotonic time (for timeouts).
    """

    def now(self) -> datetime:
        """
        Current UTC time, timezone-aware.
        """
        ...

    def monotonic(self) -> float:
        """
        Seconds from an arbitrary origin, never going backwards.
        """
        ...

    def call_at(self, deadline: float, callback: Callable[[], object]) -> TimerHandle:
        """
        Run ``callback`` in the event loop once ``monotonic()`` has reached ``deadline``.
        """
        ...

    async def sleep_until(self, deadline: float) -> None:
        """
        Return once ``monotonic()`` has reached ``deadline``.
        """
        ...


class SystemClock:
    """
    The real clock.
    """

    def now(self) -> datetime:
        return datetime.now(UTC)

    def monotonic(self) -> float:
        return time.monotonic()

    def call_at(self, deadline: float, callback: Callable[[], object]) -> TimerHandle:
        # call_later, not call_at: the loop's own time base need not be time.monotonic() (uvloop).
        return asyncio.get_running_loop().call_later(max(0.0, deadline - time.monotonic()), callback)

    async def sleep_until(self, deadline: float) -> None:
        await asyncio.sleep(max(0.0, deadline - time.monotonic()))
