"""
Per-host throttling, so that one slow, failing or hostile target never costs the others anything.

Each target host has its own concurrency limit, adapted the way TCP adapts its window (AIMD): one more after
each success, halved after each failure, between 1 and ``max_concurrency``. When errors (4xx, 5xx, timeouts,
refused connections) outnumber successes among the last ``window`` outcomes — and there are at least
``min_errors`` of them — the host sleeps: nothing is sent to it for ``sleep`` seconds (doubling while it keeps
failing, up to ``max_sleep``), and events for it are skipped with the hosted cloud's "Sleeping, too many
errors, please wait and try again" and retried later.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

SLEEPING_MESSAGE = "Sleeping, too many errors, please wait and try again"


@dataclass(frozen=True, slots=True)
class ThrottlePolicy:
    max_concurrency: int = 32
    queue_bound: int = 256  # deliveries held in memory per host; beyond it the host's rows wait in the outbox
    window: int = 20
    min_errors: int = 5
    sleep: float = 30.0
    max_sleep: float = 300.0
    # Events skipped per second for a sleeping host at most: its backlog is worked off at this pace, so the
    # moment a busy host falls asleep is not one burst of thousands of skips that stalls everyone else.
    skip_rate: float = 500.0


@dataclass(slots=True)
class HostState:
    limit: float
    active: int = 0
    queue: deque[Any] = field(default_factory=deque)
    outcomes: deque[bool] = field(default_factory=lambda: deque(maxlen=20))
    sleep_until: float = 0.0
    next_sleep: float = 0.0
    skip_tokens: float = 0.0
    skip_stamp: float = 0.0


class HostThrottle:
    def __init__(self, policy: ThrottlePolicy) -> None:
        self.policy = policy
        self._hosts: dict[str, HostState] = {}

    def state(self, host: str) -> HostState:
        state = self._hosts.get(host)
        if state is None:
            state = HostState(
                limit=float(self.policy.max_concurrency),
                outcomes=deque(maxlen=self.policy.window),
                next_sleep=self.policy.sleep,
            )
            self._hosts[host] = state
        return state

    def queued(self) -> Iterator[Any]:
        """
        Everything waiting in a host's queue, all hosts.
        """
        for state in self._hosts.values():
            yield from state.queue

    def sleeping(self, host: str, now: float) -> bool:
        state = self._hosts.get(host)
        return state is not None and state.sleep_until > now

    def may_start(self, state: HostState) -> bool:
        return state.active < max(1, int(state.limit))

    def hosts_to_leave(self, now: float) -> list[str]:
        """
        Hosts whose deliveries claims should leave in the outbox for now: their in-memory queue is full, or
        they sleep and have used up this second's skips.
        """
        return [
            host
            for host, state in self._hosts.items()
            if len(state.queue) >= self.policy.queue_bound
            or (state.sleep_until > now and self._skip_tokens(state, now) < 1.0)
        ]

    def _skip_tokens(self, state: HostState, now: float) -> float:
        rate = self.policy.skip_rate
        state.skip_tokens = min(rate, state.skip_tokens + (now - state.skip_stamp) * rate)
        state.skip_stamp = now
        return state.skip_tokens

    def skipped(self, host: str, now: float) -> None:
        state = self.state(host)
        self._skip_tokens(state, now)
        state.skip_tokens -= 1.0

    def succeeded(self, host: str) -> None:
        state = self.state(host)
        state.outcomes.append(True)
        state.limit = min(float(self.policy.max_concurrency), state.limit + 1.0)
        state.next_sleep = self.policy.sleep

    def failed(self, host: str, now: float) -> None:
        state = self.state(host)
        state.outcomes.append(False)
        state.limit = max(1.0, state.limit / 2.0)
        errors = state.outcomes.count(False)
        if errors >= self.policy.min_errors and errors > len(state.outcomes) - errors:
            state.sleep_until = now + state.next_sleep
            state.next_sleep = min(state.next_sleep * 2.0, self.policy.max_sleep)
            state.outcomes.clear()
            state.skip_tokens, state.skip_stamp = self.policy.skip_rate, now

    def forget_idle(self, now: float) -> None:
        """
        Drop the state of hosts with nothing going on, no recent outcome and no sleep (bounded memory).
        """
        idle = [
            host
            for host, s in self._hosts.items()
            if not s.active and not s.queue and not s.outcomes and s.sleep_until <= now
        ]
        for host in idle:
            del self._hosts[host]
