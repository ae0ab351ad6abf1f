"""
Reading an uploaded library archive without trusting it, and writing the archive this server serves.

Nothing is ever extracted to disk. The gzip stream is inflated in memory with a hard cap on the output
(`ArchiveLimits.max_unpacked`) and a cap on the inflation ratio, so a gzip bomb stops after a bounded amount
of work. The tar inside is then read member by member: only regular files and directories, with relative
UTF-8 names without ``..``, NUL or backslashes, at most `max_members` of them and no name twice. What was read
is packed again into a new tar.gz (regular files 0644, directories 0755, no owners, no links, fixed gzip
header), and that is what gets stored and downloaded: the bytes clients unpack are exactly the bytes that
were checked here, whatever tricks the upload's headers held (parser differentials between tar readers are a
known way to smuggle a path past a validator).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import tarfile
import zlib
from dataclasses import dataclass

from devicecloud.domain.libraries import LibraryMetadata, library_error, parse_properties
from devicecloud.domain.text import is_valid_text

PROPERTIES = "library.properties"
CHUNK = 64 * 1024
RATIO_FLOOR = 1_048_576  # below this much output the ratio is not judged: tar's padding compresses very well


@dataclass(frozen=True, slots=True)
class ArchiveLimits:
    max_archive: int = 10_000_000
    max_unpacked: int = 50_000_000
    max_ratio: int = 100
    max_members: int = 2_000
    max_path: int = 255


@dataclass(frozen=True, slots=True)
class LibraryArchive:
    """
    A checked upload: its metadata, its files, and the canonical archive built from them.
    """

    metadata: LibraryMetadata
    files: dict[str, bytes]
    archive: bytes
    sha256: str


def inflate(data: bytes, limits: ArchiveLimits) -> bytes:
    """
    The gzip member's content, refused once it would pass the size or ratio limits.
    """
    if len(data) > limits.max_archive:
        raise library_error(f"The archive is larger than {limits.max_archive} bytes")
    decompressor = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
    out = bytearray()
    pending = data
    try:
        while True:
            chunk = decompressor.decompress(pending, CHUNK)
            out += chunk
            if len(out) > limits.max_unpacked:
                raise library_error(f"The archive unpacks to more than {limits.max_unpacked} bytes")
            if len(out) > RATIO_FLOOR and len(out) > limits.max_ratio * max(len(data), 1):
                raise library_error(f"The archive inflates more than {limits.max_ratio} times")
            pending = decompressor.unconsumed_tail
            if decompressor.eof or (not pending and not chunk):
                break
    except zlib.error as exc:
        raise library_error("The archive is not a valid tar.gz file") from exc
    if not decompressor.eof:
        raise library_error("The archive is not a valid tar.gz file (truncated)")
    return bytes(out)


def _clean_name(raw: str, limits: ArchiveLimits) -> str:
    if not raw or "\x00" in raw or "\\" in raw or not is_valid_text(raw):
        raise library_error("The archive holds a file whose name is not text")
    if raw.startswith("/"):
        raise library_error(f"The archive holds an absolute path: {raw[:100]}")
    parts = [part for part in raw.split("/") if part not in ("", ".")]
    if ".." in parts:
        raise library_error(f"The archive holds a path outside the library: {raw[:100]}")
    name = "/".join(parts)
    if len(name.encode()) > limits.max_path:
        raise library_error(f"The archive holds a path longer than {limits.max_path} bytes")
    return name


def read_members(tar_bytes: bytes, limits: ArchiveLimits) -> tuple[dict[str, bytes], set[str]]:
    """
    Regular files (name → content) and directories of the tar, after every rule above.
    """
    files: dict[str, bytes] = {}
    directories: set[str] = set()
    try:
        with tarfile.open(
            fileobj=io.BytesIO(tar_bytes), mode="r:", encoding="utf-8", errors="surrogateescape"
        ) as tar:
            count = 0
            for member in tar:
                count += 1
                if count > limits.max_members:
                    raise library_error(f"The archive holds more than {limits.max_members} entries")
                name = _clean_name(member.name, limits)
                if member.isdir():
                    if name:
                        directories.add(name)
                    continue
                if not member.isreg() or member.sparse is not None or member.type == tarfile.GNUTYPE_SPARSE:
                    raise library_error(
                        f"The archive holds {name[:100]}, which is not a regular file or folder"
                    )
                if name in files or name in directories or not name:
                    raise library_error(f"The archive holds {name[:100] or 'an unnamed entry'} twice")
                reader = tar.extractfile(member)
                if reader is None:
                    raise library_error(f"The archive's entry {name[:100]} cannot be read")
                files[name] = reader.read()
    except tarfile.TarError as exc:
        raise library_error("The archive is not a valid tar.gz file") from exc
    for name in files:
        parent = name.rpartition("/")[0]
        while parent:
            if parent in files:
                raise library_error(f"The archive holds {parent[:100]} as both a file and a folder")
            directories.add(parent)
            parent = parent.rpartition("/")[0]
    return files, directories


def pack(files: dict[str, bytes], directories: set[str]) -> bytes:
    """
    The canonical tar.gz of these files: sorted, no owners or times, stable bytes for equal content.
    """
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w:", format=tarfile.PAX_FORMAT, encoding="utf-8") as tar:
        for name in sorted(directories):
            info = tarfile.TarInfo(name)
            info.type = tarfile.DIRTYPE
            info.mode = 0o755
            tar.addfile(info)
        for name in sorted(files):
            info = tarfile.TarInfo(name)
            info.size = len(files[name])
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(files[name]))
    return gzip.compress(raw.getvalue(), mtime=0)


def read_archive(data: bytes, limits: ArchiveLimits) -> LibraryArchive:
    """
    An upload → its checked content and canonical archive, or `InvalidInput` saying what is wrong.
    """
    files, directories = read_members(inflate(data, limits), limits)
    if PROPERTIES not in files:
        raise library_error("The archive has no library.properties at its top level")
    metadata = parse_properties(files[PROPERTIES])
    archive = pack(files, directories)
    return LibraryArchive(
        metadata=metadata, files=files, archive=archive, sha256=hashlib.sha256(archive).hexdigest()
    )
