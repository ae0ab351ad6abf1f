"""
Fixtures for two nodes of a cluster in one test: node A is the ``runtime`` fixture, on a NATS bus of the
test's own (skipped, failed in CI, without a usable NATS server); node B shares its database and bus. A test
module imports ``bus_url``, ``settings_overrides`` and ``node_b`` from here.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from devicecloud.runtime import Runtime, build_runtime
from devicecloud.settings import Settings
from tests.support.clock import FakeClock
from tests.support.nats import fresh_bus_url, nats_bus
from tests.support.notifier import RecordingNotifier


@pytest.fixture
async def bus_url() -> AsyncIterator[str]:
    """A subject root of the test's own; its JetStream stream is deleted once every node has stopped."""
    url = fresh_bus_url()
    async with nats_bus(url):  # skipped (failed in CI) without a usable NATS server
        pass
    yield url
    async with nats_bus(url):  # deletes the stream on the way out
        pass


@pytest.fixture
def settings_overrides(bus_url: str) -> dict[str, Any]:
    return {"bus_url": bus_url}


@pytest.fixture
async def node_b(
    runtime: Runtime,
    settings: Settings,
    clock: FakeClock,
    notifier: RecordingNotifier,
    server_key: rsa.RSAPrivateKey,
) -> AsyncIterator[Callable[[], Awaitable[Runtime]]]:
    """Node B on node A's database and bus, started on demand, stopped before node A."""
    started: list[Runtime] = []

    async def start() -> Runtime:
        node = build_runtime(settings, clock=clock, notifier=notifier, server_key=server_key)
        await node.start_gateway()
        await node.start_webhooks()
        started.append(node)
        return node

    yield start
    for node in started:
        await node.stop()


def api_of(node: Runtime) -> httpx.AsyncClient:
    """An HTTP client on one node's API (in-process)."""
    transport = httpx.ASGITransport(app=node.asgi_app(manage_lifecycle=False), client=("203.0.113.9", 40000))
    return httpx.AsyncClient(transport=transport, base_url="http://testserver")
