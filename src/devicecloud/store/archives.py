"""
Library archives as files under the data directory (decision 0019): ``<root>/<key[:2]>/<key>.tar.gz``.

Keys are random hex chosen by the service, never user input, so no path is built from what a client sent.
Writes go to a temporary file first and are renamed into place, so a reader never sees half an archive. The
blocking file work runs in a worker thread. An object store would implement the same three methods.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import tempfile
from pathlib import Path

KEY = re.compile(r"[0-9a-f]{32}")


class FileArchiveStorage:
    def __init__(self, root: Path) -> None:
        self.root = root

    def _path(self, key: str) -> Path:
        if not KEY.fullmatch(key):
            msg = f"not an archive key: {key!r}"
            raise ValueError(msg)
        return self.root / key[:2] / f"{key}.tar.gz"

    async def put(self, key: str, data: bytes) -> None:
        await asyncio.to_thread(self._put, self._path(key), data)

    @staticmethod
    def _put(path: Path, data: bytes) -> None:
        for attempt in range(3):  # a delete may remove the empty folder between mkdir and mkstemp
            path.parent.mkdir(parents=True, exist_ok=True)
            try:
                fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=".upload-")
                break
            except FileNotFoundError:
                if attempt == 2:
                    raise
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temporary, path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise

    async def get(self, key: str) -> bytes | None:
        path = self._path(key)
        try:
            return await asyncio.to_thread(path.read_bytes)
        except FileNotFoundError:
            return None

    async def delete(self, key: str) -> None:
        await asyncio.to_thread(self._delete, self._path(key))

    @staticmethod
    def _delete(path: Path) -> None:
        path.unlink(missing_ok=True)
        with contextlib.suppress(OSError):  # only when empty: no trace of a refused or deleted archive
            path.parent.rmdir()
