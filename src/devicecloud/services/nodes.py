"""
This process as a node of a cluster: its id, its lease, and who marks a dead node's devices offline.

Rules kept here:
- a node that holds device links registers itself (``nodes`` row) and renews its lease every third of
  ``lease`` seconds; one statement per renewal, never on a device's path;
- a starting node marks offline only the devices whose latest link was its own (a configured id that ran
  before), or held by a node whose lease ran out, or by no node (written before nodes existed). Devices
  held by a live node stay as they are: restarting one node never marks another's devices offline;
- each renewal also marks offline the devices of every node whose lease ran out (it died without stopping)
  and forgets those nodes; any node may do it, the statement is the same whoever runs it first;
- whoever marks devices offline that way publishes their ``spark/status`` offline (``on_swept``): the
  statement changes a device once, so one node publishes it;
- a node that finds its own row gone (it was too slow to renew, and another node swept its devices) comes
  back: it registers again and has its presence book write every device it holds again
  (``on_lost``), which the presence fence lets through, since its links are still the latest.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import socket
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import structlog

if TYPE_CHECKING:
    from devicecloud.clock import Clock, TimerHandle
    from devicecloud.store.interfaces import Store

logger = structlog.get_logger("devicecloud.nodes")
_LONG_AGO = datetime(2000, 1, 1, tzinfo=UTC)


def generate_node_id() -> str:
    """
    A fresh node id: this host's name, the process id and a random suffix (a restart gets a new one).
    """
    host = "".join(c if c.isalnum() or c in "-_" else "-" for c in socket.gethostname())[:32] or "node"
    return f"{host}-{os.getpid()}-{secrets.token_hex(3)}"


class NodeService:
    """
    This node's registration and lease (see the module docstring).

    Args:
        node_id: this process's id in the cluster.
        lease: seconds without a renewal after which the node counts as dead.
        on_lost: called when this node finds it was taken for dead (its devices must be written again).
    """

    def __init__(
        self, *, store: Store, clock: Clock, node_id: str, lease: float, on_lost: Callable[[], None]
    ) -> None:
        self.node_id = node_id
        self._store = store
        self._clock = clock
        self._lease = lease
        self._on_lost = on_lost
        #: Told the devices a sweep marked offline (the runtime publishes their ``spark/status`` offline).
        self.on_swept: Callable[[Sequence[str]], Awaitable[None]] | None = None
        self._timer: TimerHandle | None = None
        self._task: asyncio.Task[None] | None = None
        self._running = False
        self.renewals = 0
        self.swept = 0  # devices this node marked offline for dead nodes (and itself at start)

    async def start(self) -> int:
        """
        Register, mark offline the devices no live node holds (this node's own from a run before included),
        and renew the lease from now on.

        Returns:
            The number of devices marked offline.
        """
        changed = await self._sweep(starting=True)
        logger.info("node started", node_id=self.node_id, devices_marked_offline=changed)
        self._running = True
        self._arm()
        return changed

    async def renew(self) -> int:
        """
        Renew the lease, then mark offline the devices no live node holds (their node died).

        Returns:
            The number of devices marked offline.
        """
        changed = await self._sweep(starting=False)
        self.renewals += 1
        return changed

    async def _sweep(self, *, starting: bool) -> int:
        now = self._clock.now()
        cutoff = now - timedelta(seconds=self._lease)
        async with self._store.transaction() as tx:
            renewed = await tx.nodes.renew(self.node_id, now)
            if not renewed:
                await tx.nodes.register(self.node_id, now)
            dead = [node for node in await tx.nodes.expired(cutoff) if node != self.node_id]
            offline = await tx.devices.set_offline_unless_held(
                now, live_since=cutoff, stale=self.node_id if starting else None
            )
            await tx.nodes.remove_expired(cutoff)
        changed = len(offline)
        self.swept += changed
        if offline and self.on_swept is not None:
            try:
                await self.on_swept(offline)
            except Exception:  # the store is right; a stream misses the news, as with a lost event
                logger.warning("could not publish the swept devices' status", exc_info=True)
        if dead:
            logger.warning(
                "nodes stopped renewing their lease", dead_nodes=dead, devices_marked_offline=changed
            )
        if not renewed and not starting:
            logger.warning("this node was taken for dead; writing its devices again", node_id=self.node_id)
            self._on_lost()
        return changed

    async def stop(self) -> None:
        """
        Stop renewing and leave the cluster (call once no link is left: its devices are all offline).
        """
        self._running = False
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        task, self._task = self._task, None
        if task is not None and not task.done():
            with contextlib.suppress(asyncio.CancelledError):
                await task
        try:
            # Expired at once, not deleted: a device whose offline state could not be written is still
            # marked offline by the next sweep of any node, which then forgets this one.
            async with self._store.transaction() as tx:
                await tx.nodes.renew(self.node_id, _LONG_AGO)
        except Exception:  # its lease runs out anyway
            logger.warning("could not leave the cluster cleanly", node_id=self.node_id, exc_info=True)

    def _arm(self) -> None:
        if self._running and self._timer is None:
            self._timer = self._clock.call_at(self._clock.monotonic() + self._lease / 3, self._due)

    def _due(self) -> None:
        self._timer = None
        if self._running:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="node-lease")

    async def _run(self) -> None:
        try:
            await self.renew()
        except Exception:
            logger.warning("renewing the node's lease failed; retrying", node_id=self.node_id, exc_info=True)
        finally:
            self._task = None
            self._arm()
