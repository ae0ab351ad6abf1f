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
  reconnect to a worker still running); a worker still alive ``grace`` seconds later is killed;
- a supervisor that dies without doing so (SIGKILL, a crash, the OOM killer) takes its workers with it, so
  none keeps the ports: each worker asks Linux for SIGTERM when its parent dies (``PR_SET_PDEATHSIG``,
  `die_with_parent`), and everywhere watches a pipe whose only write end the supervisor holds
  (`watch_supervisor`): the kernel closes it with the supervisor, the worker reads end-of-file, drains as
  on SIGTERM and exits, at the latest ``grace`` seconds later, by itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import signal
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import structlog

logger = structlog.get_logger("devicecloud.supervisor")

FIRST_DELAY = 0.5
MAX_DELAY = 30.0
STEADY_AFTER = 10.0  # a worker that ran this long before exiting restarts without delay
# How a worker finds its supervisor: the read end of the supervisor's pipe, and the supervisor's pid.
SUPERVISOR_FD = "DEVICECLOUD_SUPERVISOR_FD"
SUPERVISOR_PID = "DEVICECLOUD_SUPERVISOR_PID"
SUPERVISOR_GRACE = "DEVICECLOUD_SUPERVISOR_GRACE"
PARENT_DEATH_SIGNAL = "DEVICECLOUD_WORKER_PDEATHSIG"  # "0": the pipe alone (how the tests check it alone)
_PR_SET_PDEATHSIG = 1


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
        self._lifeline: tuple[int, int] | None = None  # (read end for the workers, write end kept here)

    def stop(self) -> None:
        self._stopping.set()

    async def run(self) -> None:
        """
        Start the workers, keep them running, and on `stop` drain and end them all.
        """
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, self.stop)
        # Neither end is inherited by default; each worker gets the read end only (pass_fds), so the write
        # end lives in this process alone and closes with it, whatever kills it.
        self._lifeline = os.pipe()
        try:
            await asyncio.gather(*(self._keep(slot) for slot in self.slots))
        finally:
            for signum in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(signum)
            for fd in self._lifeline:
                os.close(fd)
            self._lifeline = None

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
        env = {
            **self._env,
            "DEVICECLOUD_WORKER_INDEX": str(slot.index),
            SUPERVISOR_PID: str(os.getpid()),
            SUPERVISOR_GRACE: str(self._grace),
        }
        if slot.index > 0:  # one demo device is enough: worker 0 runs it (when it is on)
            env["DEVICECLOUD_DEMO_DEVICE"] = "false"
        pass_fds: tuple[int, ...] = ()
        if self._lifeline is not None:
            env[SUPERVISOR_FD] = str(self._lifeline[0])
            pass_fds = (self._lifeline[0],)
        process = await asyncio.create_subprocess_exec(
            *self._command, env=env, stdin=asyncio.subprocess.DEVNULL, pass_fds=pass_fds
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


def die_with_parent() -> bool:
    """
    In a worker, before anything else: ask Linux to send SIGTERM when the supervisor dies, and exit at once
    if it died already (before the request). Returns whether the request was made (Linux with libc only;
    elsewhere `watch_supervisor` alone notices).
    """
    supervisor = os.environ.get(SUPERVISOR_PID)
    if supervisor is None:  # `serve --worker` started by hand: its parent is not ours to follow
        return False
    armed = False
    if sys.platform.startswith("linux") and os.environ.get(PARENT_DEATH_SIGNAL) != "0":
        with contextlib.suppress(OSError, AttributeError):
            libc = ctypes.CDLL(None, use_errno=True)  # this process's symbols: libc's prctl among them
            armed = libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) == 0
    if str(os.getppid()) != supervisor:
        logger.warning("the supervisor is gone before this worker started; exiting", supervisor=supervisor)
        sys.exit(1)
    return armed


def watch_supervisor(
    loop: asyncio.AbstractEventLoop, on_gone: Callable[[], None]
) -> Callable[[], None] | None:
    """
    In a worker: call ``on_gone`` once when the supervisor's pipe reads end-of-file (the supervisor died),
    then exit the process ``grace`` seconds later if it is still running (a drain that hangs, with nobody
    left to kill it). Returns the function that stops watching, or ``None`` outside a supervisor.
    """
    found = os.environ.get(SUPERVISOR_FD)
    if found is None:
        return None
    fd = int(found)
    grace = float(os.environ.get(SUPERVISOR_GRACE, "30"))
    os.set_blocking(fd, False)

    def readable() -> None:
        try:
            if os.read(fd, 1):
                return  # nothing is ever written; ignore it
        except BlockingIOError:
            return
        except OSError:
            pass
        loop.remove_reader(fd)
        logger.warning("the supervisor is gone; this worker drains and exits", grace=grace)
        loop.call_later(grace, os._exit, 1)
        on_gone()

    loop.add_reader(fd, readable)

    def unwatch() -> None:
        loop.remove_reader(fd)

    return unwatch


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
