"""
Firmware images that stay in their file: an update reads each chunk when it sends it.

A flash upload arrives spooled to a temporary file (`api.params`); read into a ``bytes`` it would cost its
whole size in memory for as long as its update runs, and a hundred concurrent uploads also leave the heap
fragmented by the reads. A `FileImage` keeps the file instead (a duplicate of the spooled file's descriptor,
its name already unlinked): transfers take byte ranges with ``os.pread`` through a one-block cache, the
integrity checks read it through a read-only mapping that is unmapped when they end, and the page cache, not
the process, holds the bytes. Its descriptor is closed when the image is dropped (`close`, or the last
reference going). At most `MAX_OPEN` are open at once; past that an upload is read into memory as before, so
a burst of uploads cannot use up the descriptors the device links and HTTP need.

`Image` is what an update sends: ``bytes`` (releases, stored and compiled binaries) or a `FileImage`.
"""

from __future__ import annotations

import contextlib
import hashlib
import mmap
import os
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from typing import ClassVar

__all__ = ["MAX_OPEN", "FileImage", "Image", "image_bytes", "image_sha256", "readable"]

#: File images open at once (each holds a descriptor for the length of its update).
MAX_OPEN = 256
#: Bytes read from the file at once: eight 512-byte chunks, so one read serves a batch of a transfer's chunks.
BLOCK = 4096
_HASH_BLOCK = 64 * 1024


def _close(fd: int) -> None:
    FileImage.open_count -= 1
    os.close(fd)


class FileImage:
    """A read-only image in a file, read on demand; see the module docstring."""

    __slots__ = ("__weakref__", "_block", "_block_at", "_closer", "_fd", "_size")

    #: Open file images in this process (bounded by `MAX_OPEN`).
    open_count: ClassVar[int] = 0

    def __init__(self, fd: int, size: int) -> None:
        """Take ownership of ``fd`` (closed with the image) for a file of ``size`` bytes."""
        FileImage.open_count += 1
        self._fd = fd
        self._size = size
        self._block_at = -1
        self._block = b""
        self._closer = weakref.finalize(self, _close, fd)

    @classmethod
    def adopt(cls, fileno: int) -> FileImage | None:
        """
        An image of the open file ``fileno`` as it is now (its own duplicate descriptor, so the caller may
        close its file), or None when `MAX_OPEN` images are open already.
        """
        if cls.open_count >= MAX_OPEN:
            return None
        fd = os.dup(fileno)
        try:
            size = os.fstat(fd).st_size
        except BaseException:
            os.close(fd)
            raise
        return cls(fd, size)

    def __len__(self) -> int:
        return self._size

    def __getitem__(self, index: slice) -> bytes:
        start, stop, step = index.indices(self._size)
        if step != 1:
            raise ValueError("a FileImage reads contiguous ranges only")
        if stop <= start:
            return b""
        block_at = start - start % BLOCK
        if stop > block_at + BLOCK:  # spans two blocks: read it directly
            return self._pread(start, stop - start)
        if block_at != self._block_at:
            self._block = self._pread(block_at, BLOCK)
            self._block_at = block_at
        return self._block[start - block_at : stop - block_at]

    def _pread(self, offset: int, length: int) -> bytes:
        length = min(length, self._size - offset)
        data = os.pread(self._fd, length, offset)
        while len(data) < length:  # a regular file reads short only at its end; the loop is for safety
            more = os.pread(self._fd, length - len(data), offset + len(data))
            if not more:
                raise OSError(f"the image file ended at {offset + len(data)} of {self._size} bytes")
            data += more
        return data

    def read(self) -> bytes:
        """The whole file as bytes (for a consumer that needs them all, e.g. another node)."""
        return self._pread(0, self._size)

    def sha256(self) -> bytes:
        digest = hashlib.sha256()
        for at in range(0, self._size, _HASH_BLOCK):
            digest.update(self._pread(at, _HASH_BLOCK))
        return digest.digest()

    @contextmanager
    def view(self) -> Iterator[memoryview]:
        """The whole file as a read-only view, valid inside the ``with`` only (the mapping ends with it)."""
        mapped = mmap.mmap(self._fd, 0, access=mmap.ACCESS_READ)
        try:
            with memoryview(mapped) as whole:
                yield whole
        finally:
            # Views of it still held (by the traceback of a refused binary) keep it mapped until they go.
            with contextlib.suppress(BufferError):
                mapped.close()

    @property
    def closed(self) -> bool:
        return not self._closer.alive

    def close(self) -> None:
        self._block = b""
        self._closer()


Image = bytes | FileImage


def image_sha256(image: Image) -> bytes:
    return hashlib.sha256(image).digest() if isinstance(image, bytes) else image.sha256()


def image_bytes(image: Image) -> bytes:
    return image if isinstance(image, bytes) else image.read()


@contextmanager
def readable(image: Image) -> Iterator[bytes | memoryview]:
    """The image as a buffer for checks that read all of it (`firmware.parse_firmware`), for a ``with``."""
    if isinstance(image, bytes):
        yield image
    else:
        with image.view() as whole:
            yield whole
