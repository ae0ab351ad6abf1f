"""
Time as a collaborator: everything that expires or times out takes a Clock, so tests can move time by hand.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Protocol


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


class SystemClock:
    """
    The real clock.
    """

    def now(self) -> datetime:
        return datetime.now(UTC)

    def monotonic(self) -> float:
        return time.monotonic()
