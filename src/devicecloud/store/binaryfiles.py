"""
Binaries as files in the data directory: ``binaries/<id>.bin`` and ``<id>.json`` (owner, platform, version,
times). Compiled binaries are short-lived build products (the hosted cloud lets them expire), so files and no
database table; expired ones are deleted when read and when new ones are saved. Product firmware binaries are
kept the same way with an expiry that never comes and owner 0 (nobody: they are reached only through their
product firmware row, decision 0025), and deleted with their version.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

from devicecloud.domain.firmware import StoredBinary

__all__ = ["BinaryFiles"]

_ID = re.compile(r"^[0-9a-f]{24}$")


class BinaryFiles:
    """`services.ports.BinaryStore` on files; ids are 24 hex characters (checked before any path is built)."""

    def __init__(self, directory: Path, now: Callable[[], datetime]) -> None:
        self._dir = directory
        self._now = now

    async def save(self, binary: StoredBinary) -> None:
        await asyncio.to_thread(self._save, binary)

    async def load(self, binary_id: str) -> StoredBinary | None:
        if not _ID.match(binary_id):
            return None
        return await asyncio.to_thread(self._load, binary_id)

    async def delete(self, binary_id: str) -> None:
        if _ID.match(binary_id):
            await asyncio.to_thread(self._delete, binary_id)

    def _save(self, binary: StoredBinary) -> None:
        if not _ID.match(binary.id):
            raise ValueError("binary ids are 24 hex characters")
        self._dir.mkdir(parents=True, exist_ok=True)
        self._sweep()
        meta = {
            "owner_id": binary.owner_id,
            "platform_id": binary.platform_id,
            "version": binary.version,
            "created_at": binary.created_at.isoformat(),
            "expires_at": binary.expires_at.isoformat(),
        }
        (self._dir / f"{binary.id}.bin").write_bytes(binary.data)
        (self._dir / f"{binary.id}.json").write_text(json.dumps(meta))

    def _load(self, binary_id: str) -> StoredBinary | None:
        try:
            meta = json.loads((self._dir / f"{binary_id}.json").read_text())
            data = (self._dir / f"{binary_id}.bin").read_bytes()
        except (OSError, ValueError):
            return None
        expires = datetime.fromisoformat(meta["expires_at"])
        if expires <= self._now():
            self._delete(binary_id)
            return None
        return StoredBinary(
            id=binary_id,
            owner_id=int(meta["owner_id"]),
            platform_id=int(meta["platform_id"]),
            version=str(meta["version"]),
            created_at=datetime.fromisoformat(meta["created_at"]),
            expires_at=expires,
            data=data,
        )

    def _sweep(self) -> None:
        current = self._now()
        for meta_path in self._dir.glob("*.json"):
            try:
                expires = datetime.fromisoformat(json.loads(meta_path.read_text())["expires_at"])
            except (OSError, ValueError, KeyError):
                continue
            if expires <= current:
                self._delete(meta_path.stem)

    def _delete(self, binary_id: str) -> None:
        for suffix in (".bin", ".json"):
            with contextlib.suppress(OSError):
                (self._dir / f"{binary_id}{suffix}").unlink()
