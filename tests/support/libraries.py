"""
Library archives for tests: well-formed ones as particle-cli builds them, and hostile ones.
"""

from __future__ import annotations

import gzip
import io
import tarfile
from collections.abc import Iterable

import httpx

from tests.support.api import Account


def properties(name: str, version: str = "1.0.0", **extra: str) -> bytes:
    fields = {
        "name": name,
        "version": version,
        "author": "Ada <ada@example.com>",
        "sentence": "A test library",
    }
    fields.update(extra)
    return "".join(f"{key}={value}\n" for key, value in fields.items()).encode()


def library_files(name: str, version: str = "1.0.0", **extra: str) -> dict[str, bytes]:
    return {
        "library.properties": properties(name, version, **extra),
        "README.md": f"# {name}\n".encode(),
        "LICENSE": b"MIT\n",
        f"src/{name}.h": b"#pragma once\nint answer();\n",
        f"src/{name}.cpp": f'#include "{name}.h"\nint answer() {{ return 42; }}\n'.encode(),
    }


def tar_gz(
    files: dict[str, bytes], *, extra: Iterable[tarfile.TarInfo] = (), directories: Iterable[str] = ()
) -> bytes:
    """
    A tar.gz of ``files`` (names as given, no top folder, like tar-fs packs a library folder), plus raw
    ``extra`` entries (links, devices…) and directory entries.
    """
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w:", format=tarfile.GNU_FORMAT) as tar:
        for directory in directories:
            info = tarfile.TarInfo(directory)
            info.type = tarfile.DIRTYPE
            tar.addfile(info)
        for name, content in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))
        for info in extra:
            tar.addfile(info)
    return gzip.compress(raw.getvalue())


def library_archive(name: str, version: str = "1.0.0", **extra: str) -> bytes:
    return tar_gz(library_files(name, version, **extra), directories=["src"])


def unpack(data: bytes) -> dict[str, bytes]:
    """
    The regular files of a tar.gz (what a client writes to disk).
    """
    files: dict[str, bytes] = {}
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        for member in tar:
            if member.isreg():
                reader = tar.extractfile(member)
                assert reader is not None
                files[member.name] = reader.read()
    return files


async def upload(
    client: httpx.AsyncClient,
    account: Account,
    archive: bytes,
    *,
    path: str = "/v1/libraries",
    field: str = "archive",
) -> httpx.Response:
    return await client.post(
        path, files={field: ("archive.tar.gz", archive, "application/gzip")}, headers=account.auth
    )
