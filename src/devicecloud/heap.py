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

Installed by ``devicecloud serve`` for its own process only (never by a library user or a test's
runtime): freezing is process-wide.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

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
        self._bound += len(gc.get_objects(generation=_OLDEST))
        gc.freeze()
        grown = False
        if self._bound >= self._baseline * self.sweep_growth:
            self._bound = gc.get_freeze_count()
            grown = self._bound >= self._baseline * self.sweep_growth
        if grown or self.clock() - self._swept_at >= self.sweep_interval:
            # The next full collection scans everything once: ours, now, when we may schedule one.
            gc.unfreeze()
            self._sweeping = True
            if self.schedule is not None:
                self.schedule(gc.collect)
