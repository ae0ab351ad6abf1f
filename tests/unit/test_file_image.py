"""
`domain.images.FileImage`: an uploaded binary read from its file as an update sends it (decision 0033).
"""

from __future__ import annotations

import hashlib
import os
import random
import tempfile
from collections.abc import Iterator

import pytest

from devicecloud.domain import images
from devicecloud.domain.firmware import build_module, parse_firmware
from devicecloud.domain.images import FileImage, image_bytes, image_sha256, readable
from devicecloud.protocol.ota import OtaTransfer


@pytest.fixture
def data() -> bytes:
    return build_module(random.Random(7).randbytes(3 * images.BLOCK + 123), platform_id=6)


@pytest.fixture
def spooled(data: bytes) -> Iterator[int]:
    with tempfile.TemporaryFile() as file:
        file.write(data)
        file.flush()
        yield file.fileno()


def test_every_range_reads_what_the_bytes_hold(data: bytes, spooled: int) -> None:
    """Within a block, across blocks, past the end, empty: the same bytes as slicing the file's content."""
    image = FileImage.adopt(spooled)
    assert image is not None
    assert len(image) == len(data)
    size, end = images.BLOCK, len(data)
    ranges = [(0, 512), (512, 1024), (size - 10, size + 10), (0, end), (end - 5, end + 100), (100, 100),
              (size * 2, size * 2 + 594), (end + 1, end + 9)]  # fmt: skip
    for start, stop in ranges:
        assert image[start:stop] == data[start:stop], (start, stop)
    assert (image_bytes(image), image_sha256(image)) == (data, hashlib.sha256(data).digest())
    with readable(image) as whole:
        assert parse_firmware(whole).size == len(data)


def test_a_transfer_sends_the_file_chunk_by_chunk(data: bytes, spooled: int) -> None:
    image = FileImage.adopt(spooled)
    assert image is not None
    from_file, from_bytes = OtaTransfer(image), OtaTransfer(data)
    assert from_file.chunk_count == from_bytes.chunk_count
    assert b"".join(image[i * 512 : (i + 1) * 512] for i in range(from_file.chunk_count)) == data


def test_its_descriptor_is_its_own_and_closes_with_it(data: bytes) -> None:
    """The spooled file may close at once; the image reads on, and gives its descriptor back when closed."""
    before = FileImage.open_count
    with tempfile.TemporaryFile() as file:
        file.write(data)
        file.flush()
        image = FileImage.adopt(file.fileno())
    assert image is not None
    assert image[0:64] == data[:64]
    assert FileImage.open_count == before + 1
    image.close()
    assert image.closed
    assert FileImage.open_count == before
    fd = os.open(os.devnull, os.O_RDONLY)
    dropped = FileImage.adopt(fd)
    os.close(fd)
    assert FileImage.open_count == before + 1
    del dropped  # the last reference going closes it too
    assert FileImage.open_count == before


def test_past_the_cap_no_file_is_kept(spooled: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """At `MAX_OPEN` images open, an upload is read into memory instead (the caller falls back to bytes)."""
    monkeypatch.setattr(FileImage, "open_count", images.MAX_OPEN)
    assert FileImage.adopt(spooled) is None
