"""
Slow clients never starve the server (issue 10, item 3): 2,000 slowloris sockets against a real
``devicecloud serve`` while a user calls the API and a device function from another address.

The attacker (``tests/support/slowloris.py``, its own process) spreads its sockets over loopback source
addresses within the per-address cap, plus more from one address than that cap allows; each sends a partial
request head and drips a header line a second, and opens again when the server closes it.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from tests.support.server import live_server
from tests.support.slowloris import raise_own_descriptor_limit, start_attack

HEAD_TIMEOUT = 12  # longer than the measurement, which runs while every slow socket is held
PER_IP = 50
SPREAD = [f"127.0.0.{2 + n // PER_IP}" for n in range(1950)]  # 39 addresses, each at its cap
GREEDY = ["127.0.0.250"] * (PER_IP + 50)  # one address asking for 50 more than its cap
SAMPLES = 300
SLACK = 5  # descriptors the server may open lazily meanwhile (e.g. SQLite's connection for busy reads)

pytestmark = pytest.mark.slow


def open_descriptors(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def wait_for(condition: Callable[[], bool], timeout: float, what: Callable[[], str]) -> None:
    """
    Poll a cheap condition (a /proc read, a shared counter) until it holds, or fail after ``timeout``.
    """
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not reached in {timeout} s: {what()}")
        time.sleep(0.05)


def p99(samples: list[float]) -> float:
    return statistics.quantiles(samples, n=100)[98]


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="counts descriptors through /proc")
def test_two_thousand_slow_sockets_do_not_starve_the_api_or_the_devices(tmp_path: Path) -> None:
    raise_own_descriptor_limit()
    environment = {
        "DEVICECLOUD_HTTP_HEAD_TIMEOUT": str(HEAD_TIMEOUT),
        "DEVICECLOUD_HTTP_MAX_CONNECTIONS_PER_IP": str(PER_IP),
        "DEVICECLOUD_MAX_DEVICE_LINKS": "100",
    }
    with live_server(tmp_path, **environment) as server, httpx.Client(base_url=server.url, timeout=5) as http:
        pid = server.process.pid
        token = http.post(
            "/oauth/token",
            data={"grant_type": "password", "username": server.email, "password": server.password},
            auth=("particle", "particle"),
        ).json()["access_token"]
        auth = {"Authorization": f"Bearer {token}"}

        def user() -> httpx.Response:
            return http.get("/v1/user", headers=auth)

        def call() -> httpx.Response:
            return http.post("/v1/devices/demo/digitalwrite", data={"arg": "D7,HIGH"}, headers=auth)

        wait_for(lambda: call().status_code == 200, 15, lambda: "the demo device answers")
        assert 200 == user().status_code
        baseline = open_descriptors(pid)

        port = int(server.url.rsplit(":", 1)[1])
        with start_attack(port, SPREAD + GREEDY) as attack:
            counters = attack.counters
            everyone = len(SPREAD) + len(GREEDY)
            wait_for(
                lambda: counters.opened.value >= everyone,
                30,
                lambda: f"slow sockets opened: {counters.opened.value}",
            )
            peak = open_descriptors(pid)

            timings: dict[str, list[float]] = {"GET /v1/user": [], "POST /v1/devices/demo/digitalwrite": []}
            for _ in range(SAMPLES):
                for samples, request in zip(timings.values(), (user, call), strict=True):
                    started = time.perf_counter()
                    assert 200 == request().status_code
                    samples.append(time.perf_counter() - started)
                peak = max(peak, open_descriptors(pid))
            # From now on the sockets stay open and silent: only the server's head deadline can close them.
            attack.stop_dripping()
            back = HEAD_TIMEOUT + 10
            wait_for(
                lambda: open_descriptors(pid) <= baseline + SLACK,
                back,
                lambda: f"descriptors {open_descriptors(pid)}, baseline {baseline}",
            )
            refused = counters.refused.value

        assert peak >= baseline + len(SPREAD), "the attack held the sockets it claims to"
        assert refused >= len(GREEDY) - PER_IP, "one address cannot hold more than its cap"
        slowest = {name: p99(samples) for name, samples in timings.items()}
        print(f"p99 {slowest}; descriptors {baseline} -> {peak}; refused {refused}")
        assert all(value < 0.1 for value in slowest.values()), slowest
