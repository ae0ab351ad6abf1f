"""
A clock that only moves when a test moves it.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta


class FakeClock:
    """
    Starts at a fixed instant; `advance` jumps both wall and monotonic time.
    """

    def __init__(self, start: datetime | None = None) -> None:
        self._now = start or datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
        self._monotonic = 1000.0

    def now(self) -> datetime:
        return self._now

    def monotonic(self) -> float:
        return self._monotonic

    def advance(self, seconds: float) -> None:
        self._now += timedelta(seconds=seconds)
        self._monotonic += seconds
