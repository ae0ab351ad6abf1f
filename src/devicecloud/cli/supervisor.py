"""
``serve --workers N``: the parent process that keeps N worker processes running (decision 0024).

Rules kept here:
- each worker is a plain ``devicecloud serve --worker`` child (its own interpreter, event loop, node id and
  database pool) listening with SO_REUSEPORT on the same HTTP and device ports: the kernel spreads new
  connections over the workers, and a worker that stops listening gets none;
- a worker that exits while the supervisor runs is started again, after a delay that doubles with each
  exit in a row that came soon after its start (0.5 s up to 30 s), and resets once a worker ran a while;
- SIGTERM or SIGINT to the supervisor is forwarded as SIGTERM to every worker, which drains (stops
  accepting, lets HTTP calls finish within the drain timeout, then closes its device links so the devices
  reconnect to a worker still running); a worker still alive ``grace`` seconds later is killed.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import structlog

logger = structlog.get_logger("devicecloud.supervisor")

FIRST_DELAY = 0.5
MAX_DELAY = 30.0
STEADY_AFTER = 10.0  # a worker that ran this long before exiting restarts without delay


@dataclass
class WorkerSlot:
    """One of the N places a worker runs in, and its restart history."""

    index: int
    process: asyncio.subprocess.Process | None = None
    started_at: float = 0.0
    quick_exits: int = 0
    restarts: int = 0
    pids: list[int] = field(default_factory=list)

    def next_delay(self, lived: float) -> float:
        """Seconds to wait before starting this slot again, after a worker that ran ``lived`` seconds."""
        if lived >= STEADY_AFTER:
            self.quick_exits = 0
            return 0.0
        self.quick_exits += 1
        return min(MAX_DELAY, FIRST_DELAY * 2.0 ** (self.quick_exits - 1))


class Supervisor:
    """
    Runs ``workers`` copies of ``command`` until `stop` (or a signal), restarting those that exit.

    Args:
        command: the worker's argv (``python -m devicecloud serve --worker …``).
        env: the environment of every worker (each gets ``DEVICECLOUD_WORKER_INDEX`` besides).
        grace: seconds a worker has to drain after SIGTERM before it is killed.
    """

    def __init__(self, command: Sequence[str], *, workers: int, env: dict[str, str], grace: float) -> None:
        self._command = list(command)
        self._env = env
        self._grace = grace
        self.slots = [WorkerSlot(index) for index in range(workers)]
        self._stopping = asyncio.Event()

    def stop(self) -> None:
        self._stopping.set()

    async def run(self) -> None:
        """
        Start the workers, keep them running, and on `stop` drain and end them all.
        """
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, self.stop)
        try:
            await asyncio.gather(*(self._keep(slot) for slot in self.slots))
        finally:
            for signum in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(signum)

    async def _keep(self, slot: WorkerSlot) -> None:
        while not self._stopping.is_set():
            process = await self._spawn(slot)
            stopping = asyncio.ensure_future(self._stopping.wait())
            exited = asyncio.ensure_future(process.wait())
            try:
                await asyncio.wait({stopping, exited}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                stopping.cancel()
            if self._stopping.is_set():
                await self._end(slot, process, exited)
                return
            lived = time.monotonic() - slot.started_at
            delay = slot.next_delay(lived)
            logger.warning(
                "worker exited; starting it again",
                worker=slot.index,
                pid=process.pid,
                returncode=process.returncode,
                after=round(lived, 1),
                delay=delay,
            )
            slot.restarts += 1
            if delay:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), delay)

    async def _spawn(self, slot: WorkerSlot) -> asyncio.subprocess.Process:
        env = {**self._env, "DEVICECLOUD_WORKER_INDEX": str(slot.index)}
        if slot.index > 0:  # one demo device is enough: worker 0 runs it (when it is on)
            env["DEVICECLOUD_DEMO_DEVICE"] = "false"
        process = await asyncio.create_subprocess_exec(
            *self._command, env=env, stdin=asyncio.subprocess.DEVNULL
        )
        slot.process, slot.started_at = process, time.monotonic()
        slot.pids.append(process.pid)
        logger.info("worker started", worker=slot.index, pid=process.pid)
        return process

    async def _end(
        self, slot: WorkerSlot, process: asyncio.subprocess.Process, exited: asyncio.Future[int]
    ) -> None:
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(asyncio.shield(exited), self._grace)
        except TimeoutError:
            logger.warning("worker did not drain in time; killing it", worker=slot.index, pid=process.pid)
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await exited
        if process.returncode not in (0, -signal.SIGTERM):
            logger.warning("worker ended uncleanly", worker=slot.index, returncode=process.returncode)


def worker_command(*, host: str, port: int, device_port: int, data_dir: str, only: str | None) -> list[str]:
    """The argv of one worker: this interpreter running ``serve --worker`` with the resolved addresses."""
    command = [
        sys.executable,
        "-m",
        "devicecloud",
        "serve",
        "--worker",
        "--host",
        host,
        "--port",
        str(port),
        "--device-port",
        str(device_port),
        "--data-dir",
        data_dir,
    ]
    if only is not None:
        command += ["--only", only]
    return command


def worker_environment(node_id: str | None, *, demo_device: bool) -> dict[str, str]:
    """
    The workers' environment: this one, with SO_REUSEPORT on and the demo device as the supervisor was told
    (worker 0 runs it); a configured node id is not shared (each worker is its own node): a worker's is
    ``<id>-w<index>``, or generated.
    """
    env = {
        **os.environ,
        "DEVICECLOUD_REUSE_PORT": "true",
        "DEVICECLOUD_DEMO_DEVICE": "true" if demo_device else "false",
    }
    env.pop("DEVICECLOUD_NODE_ID", None)
    if node_id:
        env["DEVICECLOUD_NODE_ID_PREFIX"] = node_id
    return env
