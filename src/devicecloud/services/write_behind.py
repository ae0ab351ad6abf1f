"""
The write-behind timer the in-memory books share (device presence, usage counters): a change asks for a
flush; one is scheduled ``interval`` seconds later on the injected clock, never two at once, and one that
leaves work behind schedules the next.

Theory of operation:
    A book records on a device's path without touching the database (decision 0013) and calls `schedule()`.
    When no flush is due or running, a timer is set ``interval`` later; when it fires, a task runs the
    book's ``flush`` (which takes what is dirty, writes it in one transaction, and gives it back on a
    failure). After the task, ``pending()`` says whether anything is left (written meanwhile, or given back
    by a failed flush): if so the next flush is scheduled. `close()` cancels the timer, waits for a running
    flush and runs a last one; nothing is scheduled after it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from devicecloud.clock import Clock, TimerHandle


class WriteBehind:
    """
    Schedules a book's flushes (see the module docstring).

    Args:
        clock: the injected clock the timers run on.
        interval: seconds from the first unwritten change to the flush that writes it.
        flush: writes what is dirty (must not raise: failures are the book's to log and give back).
        pending: whether anything is left to write after a flush.
        name: the flush task's name (for debugging).
    """

    def __init__(
        self,
        *,
        clock: Clock,
        interval: float,
        flush: Callable[[], Awaitable[object]],
        pending: Callable[[], bool],
        name: str,
    ) -> None:
        self._clock = clock
        self._interval = interval
        self._flush = flush
        self._pending = pending
        self._name = name
        self._timer: TimerHandle | None = None
        self._task: asyncio.Task[None] | None = None
        self.closed = False

    def schedule(self) -> None:
        """
        A change waits: make sure a flush will write it (a due or running one counts).
        """
        if self._timer is not None or self.closed or (self._task is not None and not self._task.done()):
            return  # a flush is due or running; a running one reschedules itself if anything is left
        self._timer = self._clock.call_at(self._clock.monotonic() + self._interval, self._due)

    def reopen(self) -> None:
        """
        Schedule again after a `close()` (a runtime started again).
        """
        self.closed = False

    async def close(self) -> None:
        """
        Stop scheduling, wait for a running flush, and run a last one. Idempotent.
        """
        self.closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        task, self._task = self._task, None
        if task is not None and not task.done():
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self._flush()

    def _due(self) -> None:
        self._timer = None
        if not self.closed:
            self._task = asyncio.get_running_loop().create_task(self._run(), name=self._name)

    async def _run(self) -> None:
        try:
            await self._flush()
        finally:
            self._task = None
            if self._pending():
                self.schedule()
