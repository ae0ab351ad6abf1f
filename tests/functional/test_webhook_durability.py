"""
The outbox survives a crash: deliveries queued for a target that is down are still delivered after the server
is killed with SIGKILL and started again on the same database.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import httpx
from pytest_httpserver import HTTPServer
from tests.support.server import LiveServer, free_port, live_server

EVENTS = 20
SETTINGS = {
    "DEVICECLOUD_DEMO_DEVICE": "false",
    "DEVICECLOUD_WEBHOOK_TIMEOUT": "1",
    "DEVICECLOUD_WEBHOOK_RETRY_DELAYS": "1,1,1,1,1,1",
    "DEVICECLOUD_RATE_LIMITS_ENABLED": "false",
}


def token(server: LiveServer) -> dict[str, str]:
    reply = httpx.post(
        f"{server.url}/oauth/token",
        data={"grant_type": "password", "username": server.email, "password": server.password},
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
            time.sleep(1.5)  # a duplicate would have arrived by now
        bodies = sorted(int(dict(request.form)["data"]) for request, _response in sink.log)
    finally:
        sink.stop()
    assert list(range(EVENTS)) == bodies
