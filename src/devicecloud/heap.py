"""
Python's full garbage collections, kept proportional to what changed instead of to the fleet.

A connected device costs the server about a hundred objects the cyclic collector tracks (its link, connection,
cipher, timers, buffers). CPython's full collection scans every tracked object: with 10,000 devices held,
each one stops the event loop for 0.3–1 s, and while a fleet connects there is one every few seconds
(measured: ten of them, 4 s in all, during a 10,000-device connect storm; one in a 60 s quiet minute is
enough to push every keep-alive that waits behind it over the ping round-trip target).

What this does (decision 0028): after every full collection, what survived it is frozen (``gc.freeze``), so
later full collections scan only what was allocated since. Frozen objects are still freed by reference
counting, like any object; only garbage *cycles* among them wait. So that such cycles never pile up, a
**sweep** unfreezes everything and lets the next full collection scan the whole heap once, when the
frozen set has grown by ``sweep_growth`` since the last sweep (a fleet connecting: geometric, so all
sweeps together cost about one or two scans of the final heap) or ``sweep_interval`` seconds have passed
(a fleet that churns without growing). Memory held by cycles waiting for a sweep is bounded by the live
heap times ``sweep_growth - 1``. A sweep runs as soon as it is decided when a ``schedule`` is given (the
event loop's ``call_soon_threadsafe``): a fleet that finished connecting then pays its last sweep at once,
not at the next full collection the collector schedules, which in a quiet minute may be much later.

Paced collections (``CollectionPacer``, decision 0034): CPython starts a collection when the *net* count of
tracked objects (allocations minus deallocations) passes 700. An idle fleet churns without growing: every
keep-alive replaces a link's read coroutine, future and timer, which live one keep-alive period, so
deallocations keep pace with allocations and the young generations grow for seconds between collections
(measured with 3,000 idle devices: 4,000 objects in the youngest, 24,000-31,000 in the middle one, 12-35 ms
each time; with 10,000, 30-50 ms, and a full collection of what was promoted since the last one, 40-65 ms,
every 10 s). Collecting on a timer instead keeps each pass to what the last interval left: the same total
work in short slices.

Installed by ``devicecloud serve`` for its own process only (never by a library user or a test's
runtime): freezing and pacing are process-wide.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import structlog

log = structlog.get_logger("devicecloud.heap")

_OLDEST = 2  # CPython's generations are 0, 1 and 2; a collection of 2 is a full one


@dataclass
class FrozenHeap:
    """The policy above; ``install`` once per process, ``uninstall`` to give the collector back its state."""

    sweep_growth: float = 2.0
    sweep_interval: float = 3600.0
    clock: Callable[[], float] = time.monotonic
    #: Runs a callable soon on the owner's thread (``loop.call_soon_threadsafe``); None: the collector's time.
    schedule: Callable[[Callable[[], object]], object] | None = None
    #: Full collections of the whole heap so far (the first one at install counts).
    sweeps: int = 0
    installed: bool = field(default=False, init=False)
    _baseline: int = field(default=0, init=False)
    _bound: int = field(default=0, init=False)  # at least the frozen count (see _after_collection)
    _count_at: float = field(default=0.0, init=False)  # the bound at which the frozen set is counted next
    _swept_at: float = field(default=0.0, init=False)
    _sweeping: bool = field(default=False, init=False)

    def __post_init__(self) -> None:
        if self.sweep_growth <= 1.0:
            raise ValueError("sweep_growth must be greater than 1")
        if self.sweep_interval <= 0:
            raise ValueError("sweep_interval must be positive")

    def install(self) -> None:
        """Collect what start-up left, freeze the rest, and freeze the survivors of every full collection."""
        if self.installed:
            return
        gc.collect()
        self._swept()
        gc.callbacks.append(self._after_collection)
        self.installed = True

    def uninstall(self) -> None:
        if not self.installed:
            return
        gc.callbacks.remove(self._after_collection)
        gc.unfreeze()
        self.installed = False
        self._sweeping = False

    @property
    def frozen(self) -> int:
        return gc.get_freeze_count()

    def _swept(self) -> None:
        gc.freeze()
        self.sweeps += 1
        self._baseline = self._bound = max(gc.get_freeze_count(), 1)
        self._count_at = self._baseline * self.sweep_growth
        self._swept_at = self.clock()
        self._sweeping = False

    def _after_collection(self, phase: str, info: dict[str, Any]) -> None:
        # Called by the collector itself, on whichever thread allocated; the collection is over at "stop" and
        # freezing only moves list heads, so doing it here is safe and costs microseconds.
        if phase != "stop" or info.get("generation") != _OLDEST:
            return
        if self._sweeping:
            self._swept()
            log.debug("heap swept", frozen=self._baseline, collected=info.get("collected", 0))
            return
        # Counting the frozen set walks it (gc.get_freeze_count is a list walk: ~100 ms for 10,000 devices'
        # million objects), so it is counted only when an upper bound says it may have grown enough: the last
        # count plus everything frozen since (frozen objects that died meanwhile make it an overestimate).
        # Counting what this collection left is the order of the collection itself.
        # A count that finds the set just short of the mark waits for a quarter of the growth before the next
        # (a sweep at most that late), or a fleet holding near the mark would be counted at every collection.
        self._bound += len(gc.get_objects(generation=_OLDEST))
        gc.freeze()
        grown = False
        if self._bound >= self._count_at:
            self._bound = gc.get_freeze_count()
            mark = self._baseline * self.sweep_growth
            grown = self._bound >= mark
            self._count_at = max(mark, self._bound + self._baseline * (self.sweep_growth - 1) / 4)
        if grown or self.clock() - self._swept_at >= self.sweep_interval:
            # The next full collection scans everything once: ours, now, when we may schedule one.
            gc.unfreeze()
            self._sweeping = True
            if self.schedule is not None:
                self.schedule(gc.collect)


class _Cancellable(Protocol):
    def cancel(self) -> None: ...


@dataclass
class CollectionPacer:
    """
    Collect the youngest generation every ``interval`` seconds, the middle one every ``middle_every``-th
    time (CPython's own ratio) and, with ``full_every``, everything unfrozen every ``full_every``-th time,
    on the owner's event loop: pauses bounded by time, not by net growth.

    ``full_every`` is for a process under `FrozenHeap` only, where a full collection scans what survived
    since the last one (without it, a full collection scans the whole heap).
    """

    #: ``loop.call_later``: runs a callable after a delay on the owner's loop.
    call_later: Callable[[float, Callable[[], object]], _Cancellable]
    interval: float = 0.1
    middle_every: int = 10
    full_every: int = 0  # 0: full collections when the collector decides
    #: Collections run so far.
    ticks: int = 0
    _handle: _Cancellable | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        if self.interval <= 0:
            raise ValueError("interval must be positive")
        if self.middle_every < 1 or self.full_every < 0:
            raise ValueError("middle_every must be at least 1 and full_every at least 0")

    @property
    def running(self) -> bool:
        return self._handle is not None

    def start(self) -> None:
        if self._handle is None:
            self._handle = self.call_later(self.interval, self._tick)

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _tick(self) -> None:
        self.ticks += 1
        if self.full_every and self.ticks % self.full_every == 0:
            generation = _OLDEST
        else:
            generation = 1 if self.ticks % self.middle_every == 0 else 0
        # An explicit young collection counts toward the older ones as an automatic one does, so full
        # collections still come when the collector would run them.
        gc.collect(generation)
        self._handle = self.call_later(self.interval, self._tick)
