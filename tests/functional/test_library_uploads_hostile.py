"""
Hostile library uploads over HTTP: each one answers 400 with a JSON:API error, and nothing changes — no
library, no version, no archive file. The limits are lowered for this module so the bombs stay small.
"""

from __future__ import annotations

import gzip
import io
import os
import tarfile
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from tests.support.api import Account, make_account
from tests.support.libraries import library_archive, library_files, properties, tar_gz, upload

from devicecloud.runtime import Runtime

MAX_ARCHIVE = 200_000
MAX_UNPACKED = 5_000_000


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    return {"library_max_archive_bytes": MAX_ARCHIVE, "library_max_unpacked_bytes": MAX_UNPACKED}


def entry(name: str, kind: bytes, **fields: Any) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    for key, value in fields.items():
        setattr(info, key, value)
    return info


def with_files(**extra_files: bytes) -> bytes:
    return tar_gz({**library_files("Evil"), **extra_files})


def raw_tar_gz(build: Callable[[tarfile.TarFile], None]) -> bytes:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w:", format=tarfile.GNU_FORMAT) as tar:
        build(tar)
    return gzip.compress(raw.getvalue())


def bad_name_bytes() -> bytes:
    """A member whose name is not UTF-8 (Latin-1 é), as an old tar on Windows might write it."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w:", format=tarfile.GNU_FORMAT, encoding="latin-1") as tar:
        for path, content in [*library_files("Evil", "2.0.0").items(), ("src/caf\xe9.h", b"x")]:
            tar.addfile(_sized(path, len(content)), io.BytesIO(content))
    return gzip.compress(raw.getvalue())


def bomb() -> bytes:
    """20 MB of zeros in a ~20 KB archive: inflating it stops at the ratio, long before the size cap."""
    return raw_tar_gz(lambda tar: tar.addfile(_sized("zeros.txt", 20_000_000), io.BytesIO(bytes(20_000_000))))


def _sized(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = size
    return info


def unpacks_too_far() -> bytes:
    """Incompressible bytes keep the ratio low; the total still passes the unpacked cap."""
    noise = os.urandom(150_000)
    zeros = bytes(MAX_UNPACKED)

    def build(tar: tarfile.TarFile) -> None:
        tar.addfile(_sized("noise.bin", len(noise)), io.BytesIO(noise))
        tar.addfile(_sized("zeros.bin", len(zeros)), io.BytesIO(zeros))

    return raw_tar_gz(build)


def twice(name: str) -> bytes:
    """The library's files, then ``name`` again (or below one of them): which copy would a client keep?"""

    def build(tar: tarfile.TarFile) -> None:
        for path, content in [*library_files("Evil").items(), (name, b"other")]:
            tar.addfile(_sized(path, len(content)), io.BytesIO(content))

    return raw_tar_gz(build)


def too_many_entries() -> bytes:
    return tar_gz({**library_files("Evil"), **{f"src/f{i}.h": b"" for i in range(2_001)}})


HOSTILE: dict[str, Callable[[], bytes]] = {
    "zip bomb by ratio": bomb,
    "unpacks past the cap": unpacks_too_far,
    "larger than the archive limit": lambda: os.urandom(MAX_ARCHIVE + 10),
    "path traversal": lambda: with_files(**{"../escape.h": b"x"}),
    "path traversal inside": lambda: with_files(**{"src/../../escape.h": b"x"}),
    "absolute path": lambda: with_files(**{"/etc/cron.d/evil": b"x"}),
    "backslash path": lambda: with_files(**{"..\\escape.h": b"x"}),
    "symlink": lambda: tar_gz(
        library_files("Evil"), extra=[entry("src/link.h", tarfile.SYMTYPE, linkname="/etc/passwd")]
    ),
    "hard link": lambda: tar_gz(
        library_files("Evil"), extra=[entry("src/hard.h", tarfile.LNKTYPE, linkname="README.md")]
    ),
    "device": lambda: tar_gz(
        library_files("Evil"), extra=[entry("dev", tarfile.CHRTYPE, devmajor=1, devminor=3)]
    ),
    "fifo": lambda: tar_gz(library_files("Evil"), extra=[entry("fifo", tarfile.FIFOTYPE)]),
    "non-UTF-8 file name": bad_name_bytes,
    "duplicate entry": lambda: twice("README.md"),
    "file and folder": lambda: twice("src/Evil.h/inner.h"),
    "too many entries": too_many_entries,
    "not gzip": lambda: b"PK\x03\x04 this is a zip file",
    "truncated gzip": lambda: library_archive("Evil")[:-20],
    "gzip of garbage": lambda: gzip.compress(b"not a tar archive at all" * 40),
    "no library.properties": lambda: tar_gz({"README.md": b"# nothing\n"}),
    "library.properties in a folder": lambda: tar_gz({"Evil/library.properties": properties("Evil")}),
    "huge library.properties": lambda: tar_gz(
        {"library.properties": properties("Evil") + b"paragraph=" + b"x" * 20_000}
    ),
    "huge value": lambda: tar_gz({"library.properties": properties("Evil", sentence="s" * 1_001)}),
    "non-UTF-8 library.properties": lambda: tar_gz(
        {"library.properties": properties("Evil") + b"license=caf\xe9\n"}
    ),
    "NUL in library.properties": lambda: tar_gz({"library.properties": properties("Evil", license="a\x00b")}),
    "missing author": lambda: tar_gz({"library.properties": b"name=Evil\nversion=1.0.0\nsentence=s\n"}),
    "bad name": lambda: tar_gz({"library.properties": properties("../Evil")}),
    "name with a space": lambda: tar_gz({"library.properties": properties("Evil Lib")}),
    "long name": lambda: tar_gz({"library.properties": properties("E" * 65)}),
    "bad version": lambda: tar_gz({"library.properties": properties("Evil", "1.0")}),
    "version with letters": lambda: tar_gz({"library.properties": properties("Evil", "1.0.0-beta")}),
    "bad architectures": lambda: tar_gz(
        {"library.properties": properties("Evil", architectures="photon,../x")}
    ),
    "bad dependency": lambda: tar_gz(
        {"library.properties": properties("Evil") + b"dependencies.a/b=1.0.0\n"}
    ),
}


async def state(client: httpx.AsyncClient, account: Account, runtime: Runtime) -> tuple[Any, list[str]]:
    listed = await client.get("/v1/libraries", params={"scope": "mine"}, headers=account.auth)
    root = runtime.settings.data_dir / "libraries"
    files = sorted(str(p) for p in root.rglob("*")) if root.exists() else []
    return listed.json(), files


@pytest.mark.parametrize("build", HOSTILE.values(), ids=HOSTILE.keys())
async def test_hostile_upload_is_refused_and_changes_nothing(
    client: httpx.AsyncClient, runtime: Runtime, build: Callable[[], bytes]
) -> None:
    ada = await make_account(client, "ada@example.com")
    assert 201 == (await upload(client, ada, library_archive("Evil", "1.0.0"))).status_code
    before = await state(client, ada, runtime)
    reply = await upload(client, ada, build())
    assert 400 == reply.status_code, reply.text
    body = reply.json()
    assert (False, "invalid_library") == (body["ok"], body["error"])
    assert [{"message": body["error_description"]}] == body["errors"]
    assert before == await state(client, ada, runtime)


async def test_bodies_that_are_not_one_archive(client: httpx.AsyncClient, runtime: Runtime) -> None:
    ada = await make_account(client, "ada@example.com")
    before = await state(client, ada, runtime)
    archive = library_archive("Evil")
    attempts = [
        client.post("/v1/libraries", json={"archive": "x"}, headers=ada.auth),
        client.post("/v1/libraries", data={"archive": "x"}, headers=ada.auth),
        client.post(
            "/v1/libraries",
            files=[("archive", ("a.tar.gz", archive)), ("file2", ("b.tar.gz", archive))],
            headers=ada.auth,
        ),
        client.post("/v1/libraries", files={"other": ("a.tar.gz", archive)}, headers=ada.auth),
        client.post(
            "/v1/libraries",
            content=b'--x\r\nContent-Disposition: form-data; name="archive"; filename="a"\r\n\r\n'
            + os.urandom(MAX_ARCHIVE + 70_000),
            headers={**ada.auth, "Content-Type": "multipart/form-data; boundary=x"},
        ),
    ]
    for attempt in attempts:
        reply = await attempt
        assert 400 == reply.status_code, reply.text
        assert reply.json()["errors"][0]["message"]
    assert before == await state(client, ada, runtime)


async def test_upload_needs_a_token(client: httpx.AsyncClient, runtime: Runtime) -> None:
    reply = await client.post("/v1/libraries", files={"archive": ("a.tar.gz", library_archive("Evil"))})
    assert 400 == reply.status_code
    assert "invalid_request" == reply.json()["error"]
    wrong = await client.post(
        "/v1/libraries",
        files={"archive": ("a.tar.gz", library_archive("Evil"))},
        headers={"Authorization": "Bearer " + "0" * 40},
    )
    assert 401 == wrong.status_code
    assert not (runtime.settings.data_dir / "libraries").exists()
