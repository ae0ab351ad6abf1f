"""
Password hashing with argon2id. Hashing is deliberately slow, so it runs in a worker thread and never on the
event loop; `verify` also runs a dummy hash for unknown users so timing does not reveal which emails exist.
"""

from __future__ import annotations

import asyncio

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

MIN_PASSWORD_LENGTH = 8
MAX_PASSWORD_LENGTH = 1024


class Passwords:
    """
    argon2id hashing with configurable cost.
    """

    def __init__(self, *, time_cost: int = 3, memory_cost: int = 65536, parallelism: int = 4) -> None:
        self._hasher = PasswordHasher(time_cost=time_cost, memory_cost=memory_cost, parallelism=parallelism)
        self._dummy_hash: str | None = None

    async def hash(self, password: str) -> str:
        """
        Hash a new password.
        """
        return await asyncio.to_thread(self._hasher.hash, password)

    async def verify(self, stored_hash: str | None, password: str) -> bool:
        """
        True when ``password`` matches ``stored_hash``; with no hash, spends the same time and returns False.
        """
        if stored_hash is None and self._dummy_hash is None:
            self._dummy_hash = await self.hash("devicecloud-dummy-password")
        target = stored_hash if stored_hash is not None else self._dummy_hash
        assert target is not None
        try:
            ok = await asyncio.to_thread(self._hasher.verify, target, password)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return False
        return bool(ok) and stored_hash is not None

    def hash_blocking(self, password: str) -> str:
        """
        Synchronous twin, for benchmarks that measure the raw cost of one hash.
        """
        return self._hasher.hash(password)
