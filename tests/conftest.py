"""
Root fixtures, kept few: settings, a started runtime on each database backend, and an in-process API client.

Every test that uses ``runtime`` runs on SQLite and again on PostgreSQL (``-m "not postgres"`` skips the
latter). The PostgreSQL leg runs in a database of this run's own, created on the server of
DEVICECLOUD_TEST_POSTGRES_URL (default: the local server's ``test`` database) and dropped at the end, so
that two runs on one machine (a developer's and CI's) never empty each other's schema mid-test. It is
skipped, with the reason, only when that server cannot be reached.
"""

from __future__ import annotations

import asyncio
import os
import secrets
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import structlog
from cryptography.hazmat.primitives.asymmetric import rsa

from devicecloud.runtime import Runtime, build_runtime
from devicecloud.settings import Settings
from tests.support import unavailable
from tests.support.clock import FakeClock
from tests.support.notifier import RecordingNotifier

POSTGRES_SERVER_URL = os.environ.get(
    "DEVICECLOUD_TEST_POSTGRES_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
)
FAST_HASH = {"password_time_cost": 1, "password_memory_cost": 8, "password_parallelism": 1}


def _dsn(url: str) -> str:
    return url.replace("postgresql+asyncpg://", "postgresql://")


async def _create_database(server_url: str) -> tuple[str | None, str]:
    """
    A new, empty database on ``server_url``'s server: (its URL, "") or (None, why PostgreSQL is unusable).
    """
    try:
        import asyncpg
    except ImportError:
        return None, "asyncpg is not installed (pip install devicecloud[postgres])"
    try:
        conn = await asyncpg.connect(_dsn(server_url), timeout=5)
    except (OSError, asyncpg.PostgresError) as exc:
        return None, f"PostgreSQL at {_dsn(server_url)} is unreachable: {exc}"
    name = f"devicecloud_test_{os.getpid()}_{secrets.token_hex(3)}"
    try:
        await _drop_abandoned(conn)
        await conn.execute(f'CREATE DATABASE "{name}"')
    except asyncpg.PostgresError as exc:
        return None, f"cannot create a test database on {_dsn(server_url)}: {exc}"
    finally:
        await conn.close()
    return server_url.rsplit("/", 1)[0] + f"/{name}", ""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


async def _drop_abandoned(conn: Any) -> None:
    """
    Drop the databases of earlier runs on this machine that were killed before their end (their process is
    gone), so that they never pile up. Only for a server on this machine, where a process id means something.
    """
    if conn._addr[0] not in ("127.0.0.1", "::1", "localhost") and not str(conn._addr[0]).startswith("/"):
        return
    rows = await conn.fetch("SELECT datname FROM pg_database WHERE datname LIKE 'devicecloud_test_%'")
    for row in rows:
        pid = row["datname"].split("_")[2]
        if pid.isdigit() and not _alive(int(pid)):
            await conn.execute(f'DROP DATABASE IF EXISTS "{row["datname"]}" WITH (FORCE)')


async def _drop_database(server_url: str, url: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(_dsn(server_url), timeout=5)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{url.rsplit("/", 1)[1]}" WITH (FORCE)')
    finally:
        await conn.close()


async def _reset_postgres(url: str) -> None:
    """
    Empty the test database's public schema.
    """
    import asyncpg

    conn = await asyncpg.connect(_dsn(url), timeout=5)
    try:
        await conn.execute("DROP SCHEMA IF EXISTS public CASCADE; CREATE SCHEMA public;")
    finally:
        await conn.close()


@pytest.fixture(scope="session")
def postgres_database() -> Iterator[str]:
    """
    This run's own PostgreSQL database (its URL), dropped when the run ends.
    """
    url, problem = asyncio.run(_create_database(POSTGRES_SERVER_URL))
    if url is None:
        unavailable(problem)
    yield url
    asyncio.run(_drop_database(POSTGRES_SERVER_URL, url))


@pytest.fixture
def postgres_url(postgres_database: str) -> str:
    """
    This run's PostgreSQL database, emptied for the test.
    """
    asyncio.run(_reset_postgres(postgres_database))
    return postgres_database


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'devicecloud.db'}"
    url: str = request.getfixturevalue("postgres_url")
    return url


@pytest.fixture(autouse=True)
def _logging_configured_per_test(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """
    Commands run in-process (the CLI tests) configure structlog as ``serve`` does, caching each logger at its
    first use: a logger cached so stays bound to that test's stderr and level for the rest of the run, and a
    later test's ``capture_logs`` sees nothing. Here configurations never cache, and end with their test.
    """
    configure = structlog.configure

    def uncached(*args: Any, **kwargs: Any) -> None:
        configure(*args, **{**kwargs, "cache_logger_on_first_use": False})

    monkeypatch.setattr(structlog, "configure", uncached)
    yield
    structlog.reset_defaults()


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
