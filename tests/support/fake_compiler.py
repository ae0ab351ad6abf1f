"""
A stand-in for a Device OS toolchain, for the compile-backend tests.

``fake_compiler.py SOURCES OUTPUT PLATFORM VERSION`` writes a user-part module holding the sources'
bytes, or fails like a compiler when a source has ``#error <text>`` in it (printing
``<file>:<line>: error: <text>``).
Standalone (stdlib only): the server runs it in a temporary directory, outside any checkout.
"""

from __future__ import annotations

import hashlib
import struct
import sys
import zlib
from pathlib import Path


def module(code: bytes, platform: int) -> bytes:
    """A module file (ota-and-dtls.md §A.5): prefix at 0, code, bare suffix, CRC-32."""
    start = 0x80A0000
    length = 24 + len(code) + 36 + 4
    prefix = struct.pack("<IIBBHHBB", start, start + length - 4, 0, 0, 6, platform, 5, 1) + bytes(8)
    hashed = prefix + code + b"\0\0"
    body = hashed + hashlib.sha256(hashed).digest() + (36).to_bytes(2, "little")
    return body + zlib.crc32(body).to_bytes(4, "big")


def main(sources: str, output: str, platform: str, version: str) -> int:
    code = b""
    for path in sorted(Path(sources).rglob("*")):
        if not path.is_file():
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if line.startswith("#error"):
                print(f"{path.relative_to(sources)}:{number}: error: {line[6:].strip()}")
                return 1
        code += path.read_bytes()
    print(f"compiled for platform {platform}, Device OS {version}")
    Path(output).write_bytes(module(code.ljust(1024, b"\0"), int(platform)))
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:5]))
