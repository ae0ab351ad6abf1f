"""
A NATS bus for a test: the server at DEVICECLOUD_TEST_NATS_URL (default nats://127.0.0.1:4222), on a
subject root and JetStream stream of the test's own, deleted afterwards; skipped (failed in CI) without one.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress

from devicecloud.bus.nats import NatsBus
from tests.support import unavailable

NATS_URL = os.environ.get("DEVICECLOUD_TEST_NATS_URL", "nats://127.0.0.1:4222")


def fresh_bus_url() -> str:
    """A bus URL with a fresh subject root: tests running side by side never see each other's events."""
    return f"{NATS_URL}/t{secrets.token_hex(6)}"


@asynccontextmanager
async def nats_bus(url: str | None = None, **options: object) -> AsyncIterator[NatsBus]:
    bus = NatsBus(url or fresh_bus_url(), **options)  # type: ignore[arg-type]
    try:
        await bus.start()
    except Exception as exc:
        unavailable(f"NATS with JetStream at {NATS_URL} is unusable: {exc}")
    try:
        yield bus
    finally:
        await drop_stream(bus)
        await bus.close()


async def drop_stream(bus: NatsBus) -> None:
    with suppress(Exception):
        await bus._jetstream().delete_stream(bus.stream_name)
