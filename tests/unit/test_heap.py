"""
The serving process's garbage-collection policy (devicecloud.heap): full collections scan only what changed,
and garbage cycles among frozen objects are still collected by a sweep.
"""

from __future__ import annotations

import gc
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest

from devicecloud.heap import CollectionPacer, FrozenHeap


class Node:
    def __init__(self) -> None:
        self.other: Node | None = None


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@contextmanager
def installed(policy: FrozenHeap) -> Iterator[FrozenHeap]:
    was_enabled = gc.isenabled()
    gc.disable()  # only the collections a test asks for: automatic ones would make counts depend on timing
    policy.install()
    try:
        yield policy
    finally:
        policy.uninstall()
        if was_enabled:
            gc.enable()
    assert gc.get_freeze_count() == 0


@pytest.fixture
def heap(clock: Clock) -> Iterator[FrozenHeap]:
    with installed(FrozenHeap(sweep_growth=2.0, sweep_interval=600.0, clock=clock)) as policy:
        yield policy


def cycle() -> tuple[Node, weakref.ref[Node]]:
    a, b = Node(), Node()
    a.other, b.other = b, a
    return a, weakref.ref(a)


def test_install_freezes_what_survived_and_uninstall_gives_it_back(heap: FrozenHeap) -> None:
    assert heap.frozen > 0
    assert heap.sweeps == 1
    heap.uninstall()
    assert gc.get_freeze_count() == 0
    assert heap._after_collection not in gc.callbacks


def test_survivors_of_a_full_collection_are_frozen(heap: FrozenHeap) -> None:
    before = heap.frozen
    kept = [Node() for _ in range(5000)]
    gc.collect()
    assert heap.frozen >= before + len(kept)
    assert heap.sweeps == 1  # grew far less than twofold: no sweep


def test_a_cycle_among_frozen_objects_waits_for_a_sweep_then_goes(heap: FrozenHeap, clock: Clock) -> None:
    obj, alive = cycle()
    gc.collect()  # the cycle survives (it is referenced) and is frozen
    del obj
    gc.collect()
    assert alive() is not None, "frozen objects are not scanned by an ordinary full collection"
    clock.now += 600  # the sweep interval has passed
    gc.collect()  # this collection's end decides on a sweep: the next full one scans everything
    gc.collect()
    assert alive() is None
    assert heap.sweeps == 2
    assert heap.frozen > 0  # and the survivors of the sweep are frozen again


def test_growth_brings_a_sweep(heap: FrozenHeap) -> None:
    grow = [Node() for _ in range(heap.frozen * 2)]
    gc.collect()
    assert heap.frozen == 0, "grew twofold: everything unfrozen for the next full collection"
    gc.collect()
    assert heap.sweeps == 2
    assert heap.frozen >= len(grow)


def test_young_collections_change_nothing(heap: FrozenHeap) -> None:
    frozen = heap.frozen
    gc.collect(0)
    gc.collect(1)
    # Nothing is frozen by them (a frozen object that reference counting frees meanwhile may leave the set).
    assert heap.frozen <= frozen
    assert heap.sweeps == 1


@pytest.mark.parametrize(("growth", "interval"), [(1.0, 60.0), (2.0, 0.0)])
def test_settings_out_of_range_are_refused(growth: float, interval: float) -> None:
    with pytest.raises(ValueError, match="must be"):
        FrozenHeap(sweep_growth=growth, sweep_interval=interval)


def test_a_decided_sweep_runs_when_scheduled_not_at_the_collectors_leisure(clock: Clock) -> None:
    scheduled: list[object] = []
    policy = FrozenHeap(sweep_growth=2.0, sweep_interval=600.0, clock=clock, schedule=scheduled.append)
    with installed(policy):
        gc.collect()
        assert scheduled == []
        clock.now += 600
        gc.collect()
        assert scheduled == [gc.collect]
        gc.collect()  # what the owner's loop runs
        assert policy.sweeps == 2
        assert policy.frozen > 0


class Timers:
    """``loop.call_later`` by hand: a test fires the pending callback when it says time has passed."""

    def __init__(self) -> None:
        self.pending: list[tuple[float, Callable[[], object]]] = []
        self.cancelled = 0

    def __call__(self, delay: float, callback: Callable[[], object]) -> Timers:
        self.pending.append((delay, callback))
        return self

    def cancel(self) -> None:
        self.cancelled += 1
        self.pending.clear()

    def fire(self) -> None:
        _, callback = self.pending.pop(0)
        callback()


@contextmanager
def generations_collected() -> Iterator[list[int]]:
    seen: list[int] = []

    def note(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            seen.append(info["generation"])

    was_enabled = gc.isenabled()
    gc.disable()  # only the pacer's collections
    gc.callbacks.append(note)
    try:
        yield seen
    finally:
        gc.callbacks.remove(note)
        if was_enabled:
            gc.enable()


def test_the_pacer_collects_the_youngest_on_its_timer_and_the_middle_one_every_tenth_time() -> None:
    timers = Timers()
    pacer = CollectionPacer(timers, interval=0.1)
    with generations_collected() as seen:
        pacer.start()
        assert seen == []  # nothing before the first interval
        for _ in range(20):
            assert [delay for delay, _ in timers.pending] == [0.1]
            timers.fire()
    assert seen == ([0] * 9 + [1]) * 2
    assert pacer.ticks == 20


def test_the_pacer_collects_everything_unfrozen_every_full_every_th_time() -> None:
    timers = Timers()
    pacer = CollectionPacer(timers, interval=0.1, full_every=20)
    with generations_collected() as seen:
        pacer.start()
        for _ in range(40):
            timers.fire()
    assert seen == ([0] * 9 + [1] + [0] * 9 + [2]) * 2


def test_a_stopped_pacer_collects_nothing_more() -> None:
    timers = Timers()
    pacer = CollectionPacer(timers, interval=0.1)
    pacer.start()
    pacer.start()  # once
    assert len(timers.pending) == 1
    pacer.stop()
    assert timers.pending == []
    assert timers.cancelled == 1
    assert not pacer.running
    pacer.stop()
    assert timers.cancelled == 1


def test_young_collections_free_a_young_cycle_without_touching_the_frozen(heap: FrozenHeap) -> None:
    timers = Timers()
    frozen = heap.frozen
    a, ref = cycle()
    del a
    CollectionPacer(timers, interval=0.1).start()
    timers.fire()
    assert ref() is None
    assert heap.frozen <= frozen
    assert heap.sweeps == 1


@pytest.mark.parametrize(("interval", "every", "full"), [(0.0, 10, 0), (0.1, 0, 0), (0.1, 10, -1)])
def test_pacer_settings_out_of_range_are_refused(interval: float, every: int, full: int) -> None:
    with pytest.raises(ValueError, match="must be"):
        CollectionPacer(Timers(), interval=interval, middle_every=every, full_every=full)


def test_the_frozen_set_is_counted_only_when_it_may_have_grown(
    heap: FrozenHeap, monkeypatch: pytest.MonkeyPatch
) -> None:
    counts = 0
    count = gc.get_freeze_count

    def counted() -> int:
        nonlocal counts
        counts += 1
        return count()

    monkeypatch.setattr(gc, "get_freeze_count", counted)
    for _ in range(5):
        gc.collect()  # nothing new survives: walking the frozen set (O(heap)) would be wasted
    assert counts == 0
    baseline = count()
    dead = [Node() for _ in range(baseline // 2)]
    gc.collect()
    del dead  # frozen, then freed: the bound (1.5 x the baseline) cannot see them leave
    assert counts == 0
    live = [Node() for _ in range(baseline - baseline // 20)]
    gc.collect()  # frozen: 1.95 x, the bound 2.45 x
    assert counts == 1, "the bound reached twofold: counted"
    assert heap.sweeps == 1
    assert heap.frozen > 0, "not grown twofold yet: no sweep"
    counts = 0
    live += [Node() for _ in range(baseline // 10)]
    gc.collect()
    assert counts == 0, "just short of the mark: not counted again at every collection"
    live += [Node() for _ in range(baseline // 5)]
    gc.collect()
    assert counts == 1
    assert heap.frozen == 0, "grew twofold: everything unfrozen for the next full collection"
    del live
