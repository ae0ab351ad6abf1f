"""
A clock that only moves when a test moves it.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import Callable
from datetime import UTC, datetime, timedelta


class _Timer:
    """
    A pending `FakeClock.call_at` callback.
    """

    __slots__ = ("callback", "cancelled")

    def __init__(self, callback: Callable[[], object]) -> None:
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class FakeClock:
    """
    Starts at a fixed instant; `advance` jumps both wall and monotonic time and runs, before it returns,
    every `call_at` callback (and wakes every `sleep_until`) whose deadline has come.
    """

    def __init__(self, start: datetime | None = None) -> None:
        self._now = start or datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
        self._monotonic = 1000.0
        self._timers: list[tuple[float, int, _Timer]] = []
        self._seq = itertools.count()

    def now(self) -> datetime:
        return self._now

    def monotonic(self) -> float:
        return self._monotonic

    def advance(self, seconds: float) -> None:
        self._now += timedelta(seconds=seconds)
        self._monotonic += seconds
        # Callbacks may schedule more timers; those already due run in the same call.
        while self._timers and self._timers[0][0] <= self._monotonic:
            _, _, timer = heapq.heappop(self._timers)
            if not timer.cancelled:
                timer.callback()

    def call_at(self, deadline: float, callback: Callable[[], object]) -> _Timer:
        timer = _Timer(callback)
        if deadline <= self._monotonic:
            # Already due: run soon, as the real loop would, rather than at the next advance().
            asyncio.get_running_loop().call_soon(lambda: timer.cancelled or timer.callback())
        else:
            heapq.heappush(self._timers, (deadline, next(self._seq), timer))
        return timer

    async def sleep_until(self, deadline: float) -> None:
        if deadline <= self._monotonic:
            return
        woken: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def wake() -> None:
            if not woken.done():
                woken.set_result(None)

        timer = self.call_at(deadline, wake)
        try:
            await woken
        finally:
            timer.cancel()

    def pending_timers(self) -> int:
        """
        How many scheduled callbacks are still live (tests check that closed links leave none behind).
        """
        return sum(1 for _, _, t in self._timers if not t.cancelled)
