"""
Which link speaks for which device, and the per-device order of reports to services.

Theory of operation:
    A link *claims* its device id once the device has said Hello (a peer that only knows the id cannot
    get that far: it would need the device's private key to read the session key). A claim replaces any
    older link of the same device, which is closed. When a link ends it *releases* its claim; `release`
    says whether it was still the current link, and only then does the link report the device
    disconnected. So a replaced link never marks the device offline behind its successor's back.

    `serial(device_id)` is a per-device lock around every call into `DeviceSessions`, which keeps the
    port's promise that calls for one device never overlap, even across an old and a new link.
"""

from __future__ import annotations

import asyncio
from types import TracebackType
from typing import Generic, Protocol, TypeVar

__all__ = ["LinkRegistry", "RegisteredLink"]


class RegisteredLink(Protocol):
    """
    What the registry needs from a link.
    """

    @property
    def device_id(self) -> str | None: ...

    def close(self, reason: str) -> None: ...


L = TypeVar("L", bound=RegisteredLink)


class LinkRegistry(Generic[L]):
    """
    Device id → its current link; waiters for a device to come online; per-device locks.
    """

    def __init__(self) -> None:
        self._links: dict[str, L] = {}
        self._online_waiters: dict[str, list[asyncio.Future[None]]] = {}
        # device id → (lock, users); dropped when the last user leaves so idle devices cost nothing.
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}

    def __len__(self) -> int:
        return len(self._links)

    def get(self, device_id: str) -> L | None:
        """
        The device's current link, if it has one.
        """
        return self._links.get(device_id)

    def links(self) -> list[L]:
        """
        Every registered link (a copy).
        """
        return list(self._links.values())

    def claim(self, device_id: str, link: L) -> L | None:
        """
        Make ``link`` the device's link; an older one is closed and returned.
        """
        old = self._links.get(device_id)
        self._links[device_id] = link
        if old is not None and old is not link:
            old.close("replaced by a newer connection of the same device")
        for waiter in self._online_waiters.pop(device_id, []):
            if not waiter.done():
                waiter.set_result(None)
        return old if old is not link else None

    def release(self, device_id: str, link: L) -> bool:
        """
        Drop ``link``'s claim. True when it was the device's current link (the device is now offline).
        """
        if self._links.get(device_id) is link:
            del self._links[device_id]
            return True
        return False

    async def wait_online(self, device_id: str) -> None:
        """
        Return once the device has a link (at once if it has one).
        """
        if device_id in self._links:
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._online_waiters.setdefault(device_id, []).append(waiter)
        try:
            await waiter
        finally:
            waiters = self._online_waiters.get(device_id)
            if waiters is not None and waiter in waiters:
                waiters.remove(waiter)
                if not waiters:
                    del self._online_waiters[device_id]

    def serial(self, device_id: str) -> _Serial:
        """
        ``async with registry.serial(id)``: hold the device's lock, so reports about one device run one at a
        time, in arrival order.
        """
        return _Serial(self._locks, device_id)


class _Serial:
    """
    The context manager of `LinkRegistry.serial` (a class: it runs several times per handshake, and a
    generator-based one costs several times more).
    """

    __slots__ = ("_device_id", "_lock", "_locks")

    def __init__(self, locks: dict[str, tuple[asyncio.Lock, int]], device_id: str) -> None:
        self._locks = locks
        self._device_id = device_id
        self._lock: asyncio.Lock | None = None

    async def __aenter__(self) -> None:
        lock, users = self._locks.get(self._device_id) or (asyncio.Lock(), 0)
        self._locks[self._device_id] = (lock, users + 1)
        self._lock = lock
        try:
            await lock.acquire()
        except BaseException:
            self._leave()
            raise

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._lock is not None:
            self._lock.release()
        self._leave()

    def _leave(self) -> None:
        lock, users = self._locks[self._device_id]
        if users == 1:
            del self._locks[self._device_id]
        else:
            self._locks[self._device_id] = (lock, users - 1)
