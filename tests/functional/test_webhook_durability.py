"""
The outbox survives a crash: deliveries queued for a target that is down are still delivered after the server
is killed with SIGKILL and started again on the same database.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import httpx
from pytest_httpserver import HTTPServer
from sqlalchemy import func, insert, select
from tests.support.server import LiveServer, free_port, live_server

from devicecloud.store.sql import create_engine
from devicecloud.store.tables import webhook_deliveries

EVENTS = 20
KILLED_EVENTS = 12  # each hook's logs (the newest 10) still show the rows it gave up
SETTINGS = {
    "DEVICECLOUD_DEMO_DEVICE": "false",
    "DEVICECLOUD_WEBHOOK_TIMEOUT": "1",
    "DEVICECLOUD_WEBHOOK_RETRY_DELAYS": "1,1,1,1,1,1",
    "DEVICECLOUD_RATE_LIMITS_ENABLED": "false",
}


def token(server: LiveServer, email: str | None = None, password: str | None = None) -> dict[str, str]:
    username, secret = email or server.email, password or server.password
    reply = httpx.post(
        f"{server.url}/oauth/token",
        data={"grant_type": "password", "username": username, "password": secret},
        auth=("particle", "particle"),
    )
    return {"Authorization": f"Bearer {reply.json()['access_token']}"}


def wait_for(check: object, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.1)


def test_queued_deliveries_survive_sigkill(tmp_path: Path) -> None:
    sink_port = free_port()
    data_dir = tmp_path / "data"
    database_url = f"sqlite+aiosqlite:///{(data_dir / 'devicecloud.db').resolve()}"  # the server's default
    with live_server(data_dir, **SETTINGS) as server:
        auth = token(server)
        created = httpx.post(
            f"{server.url}/v1/webhooks",
            json={"event": "durable", "url": f"http://127.0.0.1:{sink_port}/sink"},
            headers=auth,
        )
        assert 201 == created.status_code, created.text
        hook_id = created.json()["id"]
        for i in range(EVENTS):
            published = httpx.post(
                f"{server.url}/v1/devices/events", json={"name": "durable", "data": str(i)}, headers=auth
            )
            assert 200 == published.status_code

        def attempted() -> bool:
            got = httpx.get(f"{server.url}/v1/webhooks/{hook_id}", headers=auth).json()
            return len(got["logs"]) >= 10 and all(log["error"] for log in got["logs"])

        # The target is down: deliveries fail ("could not connect", then "Sleeping, too many errors") and wait
        # in the outbox for their retries.
        wait_for(attempted)
        os.kill(server.process.pid, signal.SIGKILL)
        server.process.wait(timeout=10)

    sink = HTTPServer(port=sink_port)
    sink.expect_request("/sink").respond_with_data("ok")
    sink.start()
    try:
        with live_server(data_dir, **SETTINGS):
            wait_for(lambda: len(sink.log) >= EVENTS)
            # A row leaves the outbox only once its request was answered (and logged by the sink): when none
            # is left, no duplicate can still come.
            wait_for(lambda: outbox_rows(database_url) == 0)
        bodies = sorted(int(dict(request.form)["data"]) for request, _response in sink.log)
    finally:
        sink.stop()
    assert list(range(EVENTS)) == bodies


@contextmanager
def silent_target(port: int) -> Iterator[list[socket.socket]]:
    """
    A target that takes connections and never answers: the requests sent to it stay in flight.
    """
    listener = socket.create_server(("127.0.0.1", port))
    connections: list[socket.socket] = []

    def accept() -> None:
        with contextlib.suppress(OSError):
            while True:
                connections.append(listener.accept()[0])

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield connections
    finally:
        listener.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept(); close() alone would not
        listener.close()
        for connection in connections:
            connection.close()
        thread.join(timeout=5)


def write_poison_rows(database_url: str, hook_id: str) -> None:
    """
    Rows the dispatcher cannot turn into a request, first in line: a damaged event and one that is not text.
    """

    async def write() -> None:
        engine = create_engine(database_url)
        try:
            async with engine.begin() as conn:
                owner = (await conn.execute(select(webhook_deliveries.c.owner_id).limit(1))).scalar_one()
                first = datetime(2000, 1, 1, tzinfo=UTC)
                row = {"hook_id": hook_id, "owner_id": owner, "host": "127.0.0.1", "next_attempt_at": first}
                event = {"id": "e", "name": "durable", "coreid": "api", "published_at": first.isoformat()}
                await conn.execute(
                    insert(webhook_deliveries),
                    [
                        {**row, "created_at": first, "event": {"name": 5}},
                        {**row, "created_at": first, "event": {**event, "data": "\ud800"}},
                    ],
                )
        finally:
            await engine.dispose()

    asyncio.run(write())


def outbox_rows(database_url: str, *, leased: bool = False) -> int:
    query = select(func.count()).select_from(webhook_deliveries)
    if leased:
        query = query.where(webhook_deliveries.c.lease_until.is_not(None))

    async def count() -> int:
        engine = create_engine(database_url)
        try:
            async with engine.connect() as conn:
                return int((await conn.execute(query)).scalar_one())
        finally:
            await engine.dispose()

    return asyncio.run(count())


def test_deliveries_claimed_by_a_killed_worker_are_all_sent(tmp_path: Path, database_url: str) -> None:
    """
    The server is killed while it holds every delivery (one in flight to a target that never answers, the
    rest queued behind it), and rows that cannot be sent are put first in line: after a restart every
    delivery, of both accounts, is sent once, the bad rows end in their hook's logs, and the outbox empties.
    """
    sink_port = free_port()
    settings = {
        **SETTINGS,
        "DEVICECLOUD_DATABASE_URL": database_url,
        "DEVICECLOUD_WEBHOOK_HOST_CONCURRENCY": "1",
        # The first request hangs this long before it fails and its row is booked: time to see all claimed.
        # The lease, 2 × 4 + 10 s, is what a restart waits for the dead process's rows.
        "DEVICECLOUD_WEBHOOK_TIMEOUT": "4",
    }
    url = f"http://127.0.0.1:{sink_port}/sink"
    with silent_target(sink_port) as connections, live_server(tmp_path / "data", **settings) as server:
        ada = token(server)
        signed_up = httpx.post(
            f"{server.url}/v1/users", json={"username": "bob@example.com", "password": "bob password"}
        )
        assert 200 == signed_up.status_code, signed_up.text
        bob = token(server, "bob@example.com", "bob password")
        hooks = [
            httpx.post(f"{server.url}/v1/webhooks", json={"event": "durable", "url": url}, headers=auth)
            for auth in (ada, bob)
        ]
        assert [201, 201] == [created.status_code for created in hooks], [h.text for h in hooks]
        for i in range(KILLED_EVENTS // 2):
            for who, auth in (("ada", ada), ("bob", bob)):
                published = httpx.post(
                    f"{server.url}/v1/devices/events",
                    json={"name": "durable", "data": f"{who}-{i}"},
                    headers=auth,
                )
                assert 200 == published.status_code
        # Every delivery claimed (an event not yet written to the outbox dies with the process), one sent.
        wait_for(lambda: connections and outbox_rows(database_url, leased=True) == KILLED_EVENTS)
        os.kill(server.process.pid, signal.SIGKILL)
        server.process.wait(timeout=10)
    write_poison_rows(database_url, hooks[0].json()["id"])

    sink = HTTPServer(port=sink_port)
    sink.expect_request("/sink").respond_with_data("ok")
    sink.start()
    try:
        with live_server(tmp_path / "data", **settings) as server:
            wait_for(lambda: outbox_rows(database_url) == 0, timeout=60)  # leases of the dead run out first
            logs = httpx.get(
                f"{server.url}/v1/webhooks/{hooks[0].json()['id']}", headers=token(server)
            ).json()
        sent = sorted(dict(request.form)["data"] for request, _response in sink.log)
    finally:
        sink.stop()
    assert sorted(f"{who}-{i}" for who in ("ada", "bob") for i in range(KILLED_EVENTS // 2)) == sent
    errors = [log["error"] for log in logs["logs"] if log["error"]]
    assert 2 == sum(error.startswith("the queued event could not be read") for error in errors), errors
