"""
A slowloris attacker in its own process: many sockets that send a partial request head and drip header lines.

It runs in a separate process (``start_attack``) so its work never competes for the test process's GIL
while the test measures the server's latency. Each socket opens from a chosen loopback source address,
sends the start of a request, and adds one header line per ``drip_interval`` until the server closes it;
then it opens again, until ``stop_dripping()``. Sockets refused with a 429/503 stay closed. After
``stop_dripping()`` the open sockets stay open and silent, so only the server can close them, and closed
ones are not opened again.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import resource
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from multiprocessing.sharedctypes import Synchronized
from typing import Any

HEAD_START = b"GET /v1/user HTTP/1.1\r\nHost: slow\r\n"
DRIP = b"X-Slow: 1\r\n"


@dataclass
class Counters:
    """
    What the attacker saw, shared with the test process.
    """

    opened: Synchronized[int]
    refused: Synchronized[int]
    closed_by_server: Synchronized[int]


def raise_own_descriptor_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


async def _socket(port: int, source: str, drip_interval: float, counters: Counters, dripping: Any) -> None:
    held: list[asyncio.StreamWriter] = []
    while dripping.is_set():
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
        except OSError:
            continue
        with counters.opened.get_lock():
            counters.opened.value += 1
        writer.write(HEAD_START)
        while True:
            try:
                data = await asyncio.wait_for(reader.read(1024), drip_interval)
            except TimeoutError:
                if not dripping.is_set():
                    held.append(writer)  # keep it open and silent: the server must close it
                    await asyncio.Event().wait()
                writer.write(DRIP)
                continue
            except ConnectionError:
                data = b""
            if data.startswith((b"HTTP/1.1 429", b"HTTP/1.1 503")):
                with counters.refused.get_lock():
                    counters.refused.value += 1
                writer.close()
                return
            with counters.closed_by_server.get_lock():
                counters.closed_by_server.value += 1
            writer.close()
            break


async def _attack(
    port: int, sources: list[str], drip_interval: float, counters: Counters, events: Any
) -> None:
    dripping, finished = events
    tasks = [asyncio.create_task(_socket(port, s, drip_interval, counters, dripping)) for s in sources]
    while not finished.is_set():
        await asyncio.to_thread(finished.wait, 1.0)
    for task in tasks:
        task.cancel()
    with suppress(asyncio.CancelledError):
        await asyncio.gather(*tasks, return_exceptions=True)


def _run(port: int, sources: list[str], drip_interval: float, counters: Counters, events: Any) -> None:
    raise_own_descriptor_limit()
    asyncio.run(_attack(port, sources, drip_interval, counters, events))


@dataclass
class Attack:
    counters: Counters
    dripping: Any
    finished: Any

    def stop_dripping(self) -> None:
        self.dripping.clear()


@contextmanager
def start_attack(port: int, sources: list[str], drip_interval: float = 1.0) -> Iterator[Attack]:
    """
    One attacking socket per entry of ``sources`` (a loopback address), in a child process.
    """
    context = multiprocessing.get_context("spawn")
    counters = Counters(context.Value("i", 0), context.Value("i", 0), context.Value("i", 0))
    dripping, finished = context.Event(), context.Event()
    dripping.set()
    process = context.Process(
        target=_run, args=(port, sources, drip_interval, counters, (dripping, finished)), daemon=True
    )
    process.start()
    try:
        yield Attack(counters, dripping, finished)
    finally:
        finished.set()
        process.join(15)
        if process.is_alive():
            process.kill()
            process.join()
