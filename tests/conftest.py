"""
Root fixtures, kept few: settings, a started runtime on each database backend, and an in-process API client.

Every test that uses ``runtime`` runs on SQLite and again on PostgreSQL (``-m "not postgres"`` skips the
latter). The PostgreSQL leg uses DEVICECLOUD_TEST_POSTGRES_URL (default: the local server's ``test``
database) and is skipped, with the reason, only when that server cannot be reached.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from devicecloud.runtime import Runtime, build_runtime
from devicecloud.settings import Settings
from tests.support import unavailable
from tests.support.clock import FakeClock
from tests.support.notifier import RecordingNotifier

POSTGRES_URL = os.environ.get(
    "DEVICECLOUD_TEST_POSTGRES_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
)
FAST_HASH = {"password_time_cost": 1, "password_memory_cost": 8, "password_parallelism": 1}


async def _reset_postgres(url: str) -> str | None:
    """
    Empty the test database's public schema; returns why PostgreSQL is unusable, or None.
    """
    try:
        import asyncpg
    except ImportError:
        return "asyncpg is not installed (pip install devicecloud[postgres])"
    dsn = url.replace("postgresql+asyncpg://", "postgresql://")
    try:
        conn = await asyncpg.connect(dsn, timeout=5)
    except (OSError, asyncpg.PostgresError) as exc:
        return f"PostgreSQL at {dsn} is unreachable: {exc}"
    try:
        await conn.execute("DROP SCHEMA IF EXISTS public CASCADE; CREATE SCHEMA public;")
    finally:
        await conn.close()
    return None


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'devicecloud.db'}"
    problem = asyncio.run(_reset_postgres(POSTGRES_URL))
    if problem:
        unavailable(problem)
    return POSTGRES_URL


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    """
    Per-module tweaks: override this fixture in a test module to change settings.
    """
    return {}


@pytest.fixture
def settings(tmp_path: Path, database_url: str, settings_overrides: dict[str, Any]) -> Settings:
    values: dict[str, Any] = {
        "data_dir": tmp_path / "data",
        "database_url": database_url,
        "device_host": "127.0.0.1",
        "device_port": 0,
        "device_udp_port": 0,
        "rate_limits_enabled": False,
        **FAST_HASH,
        **settings_overrides,
    }
    return Settings(**values)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def notifier() -> RecordingNotifier:
    return RecordingNotifier()


@pytest.fixture(scope="session")
def server_key() -> rsa.RSAPrivateKey:
    """
    One server key for the whole run: generating RSA-2048 per test would cost more than most tests.
    """
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture
async def runtime(
    settings: Settings, clock: FakeClock, notifier: RecordingNotifier, server_key: rsa.RSAPrivateKey
) -> AsyncIterator[Runtime]:
    """
    A started runtime, device gateway and webhook delivery included (the gateway on a free port of 127.0.0.1).
    """
    rt = build_runtime(settings, clock=clock, notifier=notifier, server_key=server_key)
    await rt.start_gateway()
    await rt.start_webhooks()
    try:
        yield rt
    finally:
        await rt.stop()


@pytest.fixture
async def client(runtime: Runtime) -> AsyncIterator[httpx.AsyncClient]:
    """
    An HTTP client talking to the app in-process (the runtime is started by its own fixture).
    """
    app = runtime.asgi_app(manage_lifecycle=False)
    transport = httpx.ASGITransport(app=app, client=("203.0.113.7", 40000))
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
        yield http
