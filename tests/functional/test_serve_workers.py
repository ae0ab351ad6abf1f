"""
``devicecloud serve --workers N`` as a user runs it (a real process tree, SQLite and PostgreSQL, one NATS):
the workers share the ports, each is its own node; the supervisor restarts a dead worker, and SIGTERM drains
(calls in flight finish, devices reconnect to a worker still running). One process drains the same way.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner
from sqlalchemy import select
from tests.support.cluster import bus_url
from tests.support.devices import wait_until
from tests.support.server import LiveServer, live_server

from devicecloud.cli import main as cli_main
from devicecloud.store.sql import create_engine
from devicecloud.store.tables import devices
from devicecloud.virtualdevice import VirtualDevice, generate_identity
from devicecloud.virtualdevice.support import Backoff

__all__ = ["bus_url"]  # fixture
FAST = {
    "DEVICECLOUD_DEMO_DEVICE": "false",
    "DEVICECLOUD_RATE_LIMITS_ENABLED": "false",
    "DEVICECLOUD_LOG_LEVEL": "warning",
}
NODE = re.compile(r'devicecloud_node\{node="([^"]+)"\}')


@pytest.fixture
def workers(tmp_path: Path, database_url: str, bus_url: str) -> Iterator[LiveServer]:
    """``serve --workers 2`` on the test's database (SQLite file or PostgreSQL) and NATS subject root."""
    env = {**FAST, "DEVICECLOUD_DATABASE_URL": database_url, "DEVICECLOUD_BUS_URL": bus_url}
    with live_server(tmp_path / "data", args=["--workers", "2"], **env) as server:
        yield server


def node_of_a_new_connection(server: LiveServer) -> str:
    """The node that answers one new HTTP connection (the kernel picks the worker per connection)."""
    with httpx.Client(base_url=server.url) as http:  # a fresh connection each time
        found = NODE.search(http.get("/metrics").text)
    assert found is not None
    return found.group(1)


def pid_of(node_id: str) -> int:
    """A generated node id is ``<host>-<pid>-<random>``."""
    return int(node_id.rsplit("-", 2)[1])


def nodes_answering(server: LiveServer, wanted: int, exclude: frozenset[str] = frozenset()) -> set[str]:
    seen: set[str] = set()
    for _ in range(200):
        try:
            seen.add(node_of_a_new_connection(server))
        except (httpx.ReadError, httpx.RemoteProtocolError):
            # It landed in the backlog of a worker that just died or closed its listener: the kernel resets
            # what waits there. The next connection goes to a listening worker.
            continue
        if len(seen - exclude) >= wanted:
            return seen - exclude
    raise AssertionError(f"only {seen} answered")


async def holder(database_url: str, device_id: str) -> tuple[bool, str | None]:
    engine = create_engine(database_url)
    try:
        async with engine.connect() as conn:
            row = (
                await conn.execute(
                    select(devices.c.online, devices.c.node_id).where(devices.c.id == device_id)
                )
            ).one()
    finally:
        await engine.dispose()
    return bool(row.online), row.node_id


def token(server: LiveServer) -> dict[str, str]:
    reply = httpx.post(
        f"{server.url}/oauth/token",
        data={"grant_type": "password", "username": server.email, "password": server.password},
        auth=("particle", "particle"),
    )
    assert 200 == reply.status_code, reply.text
    return {"Authorization": f"Bearer {reply.json()['access_token']}"}


def test_more_than_one_worker_on_the_in_process_bus_is_refused(tmp_path: Path) -> None:
    """With memory:// an event or a call would stay inside one worker: refused, saying why and what to do."""
    result = CliRunner().invoke(
        cli_main,
        ["serve", "--workers", "2", "--data-dir", str(tmp_path / "data")],
        env={"DEVICECLOUD_BUS_URL": "memory://"},
    )
    assert 1 == result.exit_code
    assert "needs a shared event bus" in result.output
    assert "DEVICECLOUD_BUS_URL=nats://" in result.output
    assert not (tmp_path / "data").exists()  # refused before doing anything


@pytest.mark.nats
async def test_workers_share_the_ports_restart_and_drain(workers: LiveServer, database_url: str) -> None:
    """
    Two workers answer on one HTTP port, each its own node, and take writes side by side. A device's worker
    is stopped with SIGTERM: the device reconnects to a worker still running and is called through any
    worker. A worker killed with SIGKILL is started again; SIGTERM to the supervisor ends all, exit 0.
    """
    first = await asyncio.to_thread(nodes_answering, workers, 2)
    auth = await asyncio.to_thread(token, workers)

    async def create_hook(i: int) -> int:
        async with httpx.AsyncClient(base_url=workers.url) as http:  # new connections: both workers write
            reply = await http.post(
                "/v1/webhooks", json={"event": f"e{i}", "url": "https://example.com/h"}, headers=auth
            )
        return reply.status_code

    assert [201] * 40 == await asyncio.gather(*(create_hook(i) for i in range(40)))

    identity = generate_identity()
    async with httpx.AsyncClient(base_url=workers.url, headers=auth) as http:
        sent = await http.post(
            f"/v1/provisioning/{identity.device_id}",
            json={"deviceID": identity.device_id, "publicKey": identity.public_key_pem(), "algorithm": "rsa"},
        )
        assert 200 == sent.status_code, sent.text
        assert 200 == (await http.post("/v1/devices", json={"id": identity.device_id})).status_code
    device = VirtualDevice(
        "127.0.0.1",
        workers.device_port,
        device_id=identity.device_id,
        device_key=identity.private_key,
        server_public_key=(workers.data_dir / "server_key.pub.pem").read_bytes(),
        reconnect=True,
        backoff=Backoff(initial=0.05, maximum=0.2, jitter=False),
    )
    device.add_function("double", lambda argument: 2 * len(argument))
    await device.start()
    try:
        await device.wait_connected(10)

        async def held_by_a_worker() -> bool:
            online, node = await holder(database_url, identity.device_id)
            return online and node in first

        await wait_until(held_by_a_worker, timeout=15)
        _, old_node = await holder(database_url, identity.device_id)
        assert old_node is not None
        os.kill(pid_of(old_node), signal.SIGTERM)  # drain that worker: its device goes elsewhere

        async def moved() -> bool:
            online, node = await holder(database_url, identity.device_id)
            return online and node != old_node

        await wait_until(moved, timeout=20)
        for _ in range(4):  # through whichever worker answers each new connection
            async with httpx.AsyncClient(base_url=workers.url, headers=auth) as http:
                called = await http.post(f"/v1/devices/{identity.device_id}/double", data={"arg": "abc"})
            assert 200 == called.status_code, called.text
            assert 6 == called.json()["return_value"]

        # The drained worker was started again, as a new node; now one dies without warning.
        second = await asyncio.to_thread(nodes_answering, workers, 2)
        assert old_node not in second
        victim = sorted(second)[0]
        os.kill(pid_of(victim), signal.SIGKILL)
        third = await asyncio.to_thread(nodes_answering, workers, 2, frozenset({victim}))
        assert len(third) == 2
    finally:
        await device.stop()

    workers.process.send_signal(signal.SIGTERM)
    assert 0 == await asyncio.to_thread(workers.process.wait, 30)
    for node in third:
        with pytest.raises(ProcessLookupError):
            os.kill(pid_of(node), 0)


def test_sigterm_lets_a_call_in_flight_finish_then_closes_device_links(tmp_path: Path) -> None:
    """
    One process drains as each worker does: after SIGTERM no new connection is taken, a function call in
    flight still gets its answer, then the device's link closes and the process exits 0.
    """
    asyncio.run(_drain(tmp_path))


async def _drain(tmp_path: Path) -> None:
    with live_server(tmp_path / "data", DEVICECLOUD_DRAIN_TIMEOUT="20", **FAST) as server:
        auth = token(server)
        identity = generate_identity()
        async with httpx.AsyncClient(base_url=server.url, headers=auth, timeout=30) as http:
            await http.post(
                f"/v1/provisioning/{identity.device_id}",
                json={
                    "deviceID": identity.device_id,
                    "publicKey": identity.public_key_pem(),
                    "algorithm": "rsa",
                },
            )
            assert 200 == (await http.post("/v1/devices", json={"id": identity.device_id})).status_code
            device = VirtualDevice(
                "127.0.0.1",
                server.device_port,
                device_id=identity.device_id,
                device_key=identity.private_key,
                server_public_key=(server.data_dir / "server_key.pub.pem").read_bytes(),
                reconnect=False,
            )
            entered, release = asyncio.Event(), asyncio.Event()

            async def slow(_argument: str) -> int:
                entered.set()
                await release.wait()
                return 7

            device.add_function("slow", slow)
            await device.start()
            try:
                await device.wait_connected(10)

                async def described() -> bool:
                    reply = await http.get(f"/v1/devices/{identity.device_id}")
                    return bool(reply.json().get("functions"))

                await wait_until(described)
                call = asyncio.create_task(
                    http.post(f"/v1/devices/{identity.device_id}/slow", data={"arg": ""})
                )
                await asyncio.wait_for(entered.wait(), 10)
                server.process.send_signal(signal.SIGTERM)

                async def refusing() -> bool:
                    try:
                        async with httpx.AsyncClient(base_url=server.url) as fresh:
                            await fresh.get("/healthz")
                    except httpx.ConnectError:
                        return True
                    except (httpx.ReadError, httpx.RemoteProtocolError):
                        return False  # taken into the backlog as the listener closed, and reset: look again
                    return False

                await wait_until(refusing)  # no new connection, no new device link
                assert device.connected  # the link stays while HTTP drains
                release.set()
                answered = await asyncio.wait_for(call, 10)
                assert 200 == answered.status_code, answered.text
                assert 7 == answered.json()["return_value"]

                async def closed() -> bool:
                    return not device.connected

                await wait_until(closed)
            finally:
                await device.stop()
        assert 0 == await asyncio.to_thread(server.process.wait, 20)


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie nobody reaped yet has exited: it holds no socket)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    except OSError:  # no /proc: ask the kernel
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT links do not count
        try:
            sock.bind(("127.0.0.1", port))
            sock.listen()
        except OSError:
            return False
        return True


@pytest.mark.nats
@pytest.mark.parametrize(
    "mechanism",
    [
        pytest.param({}, id="parent-death-signal-and-pipe"),
        pytest.param({"DEVICECLOUD_WORKER_PDEATHSIG": "0"}, id="pipe-alone"),
    ],
)
async def test_workers_end_when_the_supervisor_is_killed(
    tmp_path: Path, database_url: str, bus_url: str, mechanism: dict[str, str]
) -> None:
    """
    SIGKILL to the supervisor: its workers drain and exit by themselves, and the ports are free again (no
    orphan keeps serving, nor binds the port a restarted server needs).
    """
    env = {
        **FAST,
        "DEVICECLOUD_DATABASE_URL": database_url,
        "DEVICECLOUD_BUS_URL": bus_url,
        "DEVICECLOUD_DRAIN_TIMEOUT": "2",
        **mechanism,
    }
    with live_server(tmp_path / "data", args=["--workers", "2"], **env) as server:
        pids = {pid_of(node) for node in await asyncio.to_thread(nodes_answering, server, 2)}
        assert all(_alive(pid) for pid in pids)
        port = int(server.url.rsplit(":", 1)[1])
        server.process.kill()
        assert -signal.SIGKILL == await asyncio.to_thread(server.process.wait, 10)

        async def workers_gone() -> bool:
            return not any(_alive(pid) for pid in pids)

        await wait_until(workers_gone, timeout=30)
        assert _port_free(port)
        assert _port_free(server.device_port)
