"""
Particle firmware module binaries: the format (prefix, suffix, CRC-32, SHA-256) and whether one fits a device.

Theory of operation:
    A module file is ``module_info_t`` (24 bytes, little-endian) somewhere near the start, the code, then a
    suffix read backwards from the end: CRC-32 of everything before it (stored big-endian), the suffix size,
    the SHA-256 of everything before the last 38 bytes (the "app hash"), and optional product fields. The
    prefix sits at 0, or after an interrupt vector table (0x200 Gen3, 0x184 Gen2, 0x10C Core); like the
    device's own parser we try the known offsets, then every 4 bytes up to 8 KiB, and take the first place
    whose fields are plausible. A *combined* file is several modules back to back (at most 2), each with its
    own CRC and hash; a *compressed* module carries raw-deflate data between prefix and suffix (its hash is
    of the uncompressed module, so only its CRC is checked here).

    `parse_firmware` reads and checks a file's integrity (truncated, CRC, hash) and raises `FirmwareRejected`
    naming the first thing wrong. `check_fit` then runs the cloud's acceptance checks against what is known
    about one device (`UpdateTarget`), in the order of the reference (ota-and-dtls.md §A.6): platform, size,
    module function, dependencies on the device's modules, compressed/combined support. Stdlib only, so the
    virtual device checks an image with the same code the cloud does.
"""

from __future__ import annotations

import hashlib
import struct
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from enum import IntEnum, IntFlag
from typing import Any

__all__ = [
    "COMPRESSED_OTA_HELLO_FLAG",
    "FLASHABLE_FUNCTIONS",
    "MAX_COMBINED_MODULES",
    "PREFIX_SIZE",
    "SUFFIX_SIZE",
    "CompileResult",
    "Dependency",
    "FirmwareImage",
    "FirmwareRejected",
    "ModuleFlags",
    "ModuleFunction",
    "ModuleInfo",
    "SourceFile",
    "StoredBinary",
    "UpdateOutcome",
    "UpdateTarget",
    "build_module",
    "check_fit",
    "parse_firmware",
]

PREFIX_SIZE = 24
#: The bare suffix: reserved u16, SHA-256, suffix size u16 (the CRC-32 after it is counted apart).
SUFFIX_SIZE = 36
_CRC_SIZE = 4
_MIN_MODULE = PREFIX_SIZE + SUFFIX_SIZE + _CRC_SIZE
# Where the prefix is found after a vector table: Gen3, Gen2, (BVR's 0xC0), Core; then a scan.
_KNOWN_OFFSETS = (0, 0x200, 0x184, 0xC0, 0x10C)
_SCAN_LIMIT = 8 * 1024
_PREFIX = struct.Struct("<IIBBHHBB")
_DEPENDENCY = struct.Struct("<BBH")
#: Device OS refuses combined files with more modules than this.
MAX_COMBINED_MODULES = 2
#: The Hello flag a device sets when it accepts compressed and combined files.
COMPRESSED_OTA_HELLO_FLAG = 0x40
KNOWN_PLATFORMS = frozenset({0, 3, 6, 8, 10, 12, 13, 14, 22, 23, 25, 26, 28, 32, 35})


class ModuleFunction(IntEnum):
    """``module_function`` of the prefix."""

    NONE = 0
    RESOURCE = 1
    BOOTLOADER = 2
    MONO_FIRMWARE = 3
    SYSTEM_PART = 4
    USER_PART = 5
    SETTINGS = 6
    NCP_FIRMWARE = 7
    RADIO_STACK = 8
    ASSET = 9


class ModuleFlags(IntFlag):
    """``flags`` of the prefix."""

    DROP_MODULE_INFO = 0x01
    COMPRESSED = 0x02
    COMBINED = 0x04
    ENCRYPTED = 0x08
    PREFIX_EXTENSIONS = 0x10


#: What a device takes over the air: its application, Device OS pieces, monolithic (Core) firmware.
FLASHABLE_FUNCTIONS = frozenset(
    {
        ModuleFunction.USER_PART,
        ModuleFunction.SYSTEM_PART,
        ModuleFunction.BOOTLOADER,
        ModuleFunction.MONO_FIRMWARE,
        ModuleFunction.NCP_FIRMWARE,
        ModuleFunction.RADIO_STACK,
    }
)
# The letter a Describe's module list uses for each function ("f").
_FUNCTION_LETTERS = {
    ModuleFunction.RESOURCE: "r",
    ModuleFunction.BOOTLOADER: "b",
    ModuleFunction.MONO_FIRMWARE: "m",
    ModuleFunction.SYSTEM_PART: "s",
    ModuleFunction.USER_PART: "u",
    ModuleFunction.NCP_FIRMWARE: "c",
    ModuleFunction.RADIO_STACK: "a",
}
_FUNCTION_NAMES = {
    ModuleFunction.BOOTLOADER: "bootloader",
    ModuleFunction.SYSTEM_PART: "Device OS system part",
    ModuleFunction.RADIO_STACK: "radio stack",
    ModuleFunction.NCP_FIRMWARE: "network co-processor firmware",
}


class FirmwareRejected(ValueError):
    """A binary that is not a valid module, or does not fit the device; the message says why."""


@dataclass(frozen=True, slots=True)
class Dependency:
    """A module another module needs: function, index, minimum version."""

    function: int
    index: int
    version: int


@dataclass(frozen=True, slots=True)
class ModuleInfo:
    """One module of a file, as its prefix and suffix describe it."""

    offset: int  # where the module starts in the file
    length: int
    prefix_offset: int  # where its prefix starts, relative to the module
    start_address: int
    end_address: int
    flags: ModuleFlags
    version: int
    platform_id: int
    function: int
    index: int
    dependencies: tuple[Dependency, ...]
    sha256: bytes  # the hash the suffix carries (the app hash for a user part)
    crc32: int
    product_id: int | None = None
    product_version: int | None = None


@dataclass(frozen=True, slots=True)
class FirmwareImage:
    """A parsed, integrity-checked firmware file."""

    size: int
    modules: tuple[ModuleInfo, ...]

    @property
    def main(self) -> ModuleInfo:
        """The last module: the one a combined file is for (the others are what it needs)."""
        return self.modules[-1]

    @property
    def compressed(self) -> bool:
        return any(ModuleFlags.COMPRESSED in m.flags for m in self.modules)

    @property
    def combined(self) -> bool:
        return len(self.modules) > 1


@dataclass(frozen=True, slots=True)
class UpdateTarget:
    """
    What is known about a device that is about to be updated.

    Attributes:
        platform_id: from its Hello.
        max_binary: the largest file it takes (``spark/hardware/max_binary``; None = not said).
        hello_flags: its Hello flags (0x40: compressed and combined files accepted).
        modules: its Describe's module list (``"m"``); None or empty = not known, dependencies unchecked.
    """

    platform_id: int | None
    max_binary: int | None = None
    hello_flags: int = 0
    modules: tuple[Mapping[str, Any], ...] | None = None


@dataclass(frozen=True, slots=True)
class UpdateOutcome:
    """How an over-the-air update ended: ``ok``, and why in words."""

    ok: bool
    reason: str


@dataclass(frozen=True, slots=True)
class SourceFile:
    """One uploaded source file: its name as sent (a relative path) and its content."""

    name: str
    data: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class CompileResult:
    """What a compile gave: the binary on success, the compiler's output either way."""

    binary: bytes | None
    output: str
    errors: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class StoredBinary:
    """A compiled binary kept for its owner to download until it expires."""

    id: str
    owner_id: int
    platform_id: int
    version: str
    created_at: datetime
    expires_at: datetime
    data: bytes = field(repr=False)


# ---------------------------------------------------------------------------------------------- parsing


def _prefix_at(
    data: bytes | memoryview, module_offset: int, prefix_offset: int, remaining: int
) -> ModuleInfo | None:
    """The module whose prefix is at ``module_offset + prefix_offset``, if the fields there are plausible."""
    at = module_offset + prefix_offset
    if at + PREFIX_SIZE > len(data):
        return None
    start, end, _reserved, flags, version, platform, function, index = _PREFIX.unpack_from(data, at)
    deps = [Dependency(*_DEPENDENCY.unpack_from(data, at + 16 + 4 * i)) for i in range(2)]
    if not start < end or function > max(ModuleFunction) or platform not in KNOWN_PLATFORMS:
        return None
    length = end - start + _CRC_SIZE
    if length < _MIN_MODULE or prefix_offset + PREFIX_SIZE > length:
        return None
    combined = bool(flags & ModuleFlags.COMBINED)
    if length > remaining or (length < remaining and not combined) or (combined and length == remaining):
        return None
    if any(d.function == 0 and (d.index or d.version) for d in deps):
        return None  # an empty dependency is all zeros
    return ModuleInfo(
        offset=module_offset,
        length=length,
        prefix_offset=prefix_offset,
        start_address=start,
        end_address=end,
        flags=ModuleFlags(flags),
        version=version,
        platform_id=platform,
        function=function,
        index=index,
        dependencies=tuple(d for d in deps if d.function != 0),
        sha256=b"",
        crc32=0,
    )


def _find_prefix(data: bytes | memoryview, offset: int, remaining: int) -> ModuleInfo | None:
    for candidate in _KNOWN_OFFSETS:
        found = _prefix_at(data, offset, candidate, remaining)
        if found is not None:
            return found
    for candidate in range(4, min(_SCAN_LIMIT, remaining - _MIN_MODULE) + 1, 4):
        if candidate not in _KNOWN_OFFSETS:
            found = _prefix_at(data, offset, candidate, remaining)
            if found is not None:
                return found
    return None


def _with_suffix(data: bytes | memoryview, module: ModuleInfo) -> ModuleInfo:
    """Check the module's CRC and hash; fill in what its suffix says."""
    # A view, not slices: the CRC and the hash read the caller's buffer, so checking a 1 MB file costs no
    # copy of it (100 concurrent flashes would otherwise churn 3 MB each through the allocator).
    with memoryview(data) as whole:
        body = whole[module.offset : module.offset + module.length]
        stored_crc = int.from_bytes(body[-4:], "big")
        if zlib.crc32(body[:-4]) != stored_crc:
            raise FirmwareRejected("The binary is corrupt: its CRC-32 does not match")
        suffix_size = int.from_bytes(body[-6:-4], "little")
        if suffix_size < SUFFIX_SIZE or suffix_size + _CRC_SIZE + PREFIX_SIZE > len(body):
            raise FirmwareRejected("The binary is corrupt: its module suffix is invalid")
        sha = bytes(body[-38:-6])
        compressed = ModuleFlags.COMPRESSED in module.flags
        if not compressed and hashlib.sha256(body[:-38]).digest() != sha:
            raise FirmwareRejected("The binary is corrupt: its SHA-256 does not match")
        product_id = product_version = None
        if suffix_size >= SUFFIX_SIZE + 4:
            product_version = int.from_bytes(body[-42:-40], "little")
            product_id = int.from_bytes(body[-44:-42], "little")
    return replace(
        module, sha256=sha, crc32=stored_crc, product_id=product_id, product_version=product_version
    )


def parse_firmware(data: bytes | memoryview) -> FirmwareImage:
    """
    Parse and integrity-check a module file (or a combined file of several modules); ``data`` is read, not
    kept (a view of a mapped file is fine: `images.readable`).

    Raises:
        FirmwareRejected: not a Particle module, truncated, or a CRC/hash mismatch; the message says which.
    """
    if len(data) < _MIN_MODULE:
        raise FirmwareRejected(
            f"The binary is too short to be a Particle firmware module ({len(data)} bytes)"
        )
    modules: list[ModuleInfo] = []
    offset = 0
    while offset < len(data):
        if len(modules) == MAX_COMBINED_MODULES:
            raise FirmwareRejected(f"A combined binary holds at most {MAX_COMBINED_MODULES} modules")
        found = _find_prefix(data, offset, len(data) - offset)
        if found is None:
            if not modules and _looks_truncated(data):
                raise FirmwareRejected("The binary is truncated: shorter than its module prefix says")
            raise FirmwareRejected("The binary is not a Particle firmware module (no valid module prefix)")
        modules.append(_with_suffix(data, found))
        offset += found.length
    return FirmwareImage(len(data), tuple(modules))


def _looks_truncated(data: bytes | memoryview) -> bool:
    """A plausible prefix whose length runs past the end of the file."""
    for at in _KNOWN_OFFSETS:
        if at + PREFIX_SIZE <= len(data):
            start, end, *_ = _PREFIX.unpack_from(data, at)
            if start < end and end - start + _CRC_SIZE > len(data) and end - start < 64 * 1024 * 1024:
                return True
    return False


# ---------------------------------------------------------------------------------------------- fitting


def _describe_modules(modules: Iterable[Mapping[str, Any]]) -> dict[tuple[str, int], int]:
    """(function letter, index) → version, for the main-store modules of a Describe."""
    found: dict[tuple[str, int], int] = {}
    for module in modules:
        if not isinstance(module, Mapping) or module.get("l", "m") != "m":
            continue
        letter, version = module.get("f"), module.get("v")
        try:
            index = int(module.get("n", 0))
        except (TypeError, ValueError):
            continue
        if isinstance(letter, str) and type(version) is int:
            found[(letter, index)] = max(version, found.get((letter, index), version))
    return found


def check_fit(image: FirmwareImage, target: UpdateTarget) -> None:
    """
    Refuse an image the device would refuse or could not run (checks in the reference's order).

    Raises:
        FirmwareRejected: the first check that fails, in words a user can act on.
    """
    main = image.main
    if target.platform_id is not None:
        for module in image.modules:
            if module.platform_id != target.platform_id:
                raise FirmwareRejected(
                    f"The binary is for platform {module.platform_id}, "
                    f"but the device is platform {target.platform_id}"
                )
    if target.max_binary is not None and image.size > target.max_binary:
        raise FirmwareRejected(
            f"The binary is {image.size} bytes; the device takes at most {target.max_binary}"
        )
    for module in image.modules:
        if module.function not in FLASHABLE_FUNCTIONS:
            name = ModuleFunction(module.function).name.lower().replace("_", " ")
            raise FirmwareRejected(f"The binary is a {name} module, which cannot be flashed over the air")
    if (image.compressed or image.combined) and not target.hello_flags & COMPRESSED_OTA_HELLO_FLAG:
        kind = "compressed" if image.compressed else "combined"
        raise FirmwareRejected(f"The device does not accept {kind} binaries")
    if target.modules:
        _check_dependencies(image, main, _describe_modules(target.modules))


def _check_dependencies(image: FirmwareImage, main: ModuleInfo, present: dict[tuple[str, int], int]) -> None:
    # Modules the file brings along count as present (a combined file carries what the last one needs).
    for module in image.modules[:-1]:
        letter = _FUNCTION_LETTERS.get(ModuleFunction(module.function))
        if letter is not None:
            present[(letter, module.index)] = max(module.version, present.get((letter, module.index), 0))
    for dep in main.dependencies:
        letter = _FUNCTION_LETTERS.get(ModuleFunction(dep.function)) if dep.function <= 9 else None
        if letter is None:
            continue
        have = present.get((letter, dep.index))
        what = _FUNCTION_NAMES.get(ModuleFunction(dep.function), f"module function {dep.function}")
        if have is None:
            raise FirmwareRejected(
                f"The binary needs {what} {dep.index} version {dep.version}, which the device does not have"
            )
        if have < dep.version:
            raise FirmwareRejected(
                f"The binary needs {what} {dep.index} version {dep.version} or later; the device has "
                f"version {have}. Update its Device OS first"
            )


# ---------------------------------------------------------------------------------------------- building


def build_module(
    code: bytes,
    *,
    platform_id: int,
    function: ModuleFunction | int = ModuleFunction.USER_PART,
    index: int = 1,
    version: int = 6,
    dependencies: Iterable[Dependency] = (),
    start_address: int = 0x80A0000,
    prefix_offset: int = 0,
    flags: ModuleFlags | int = 0,
    product: tuple[int, int] | None = None,
) -> bytes:
    """
    A well-formed module file around ``code`` (tests, benchmarks and the virtual device's demo firmware).

    ``prefix_offset`` puts the prefix after that many bytes of ``code`` (a vector table); ``product`` =
    (product id, product version) adds the legacy product suffix fields.
    """
    deps = list(dependencies)[:2]
    deps += [Dependency(0, 0, 0)] * (2 - len(deps))
    suffix_extra = b"" if product is None else struct.pack("<HH", product[0], product[1])
    suffix_size = SUFFIX_SIZE + len(suffix_extra)
    head, tail = code[:prefix_offset], code[prefix_offset:]
    if len(head) < prefix_offset:
        head += bytes(prefix_offset - len(head))
    length = prefix_offset + PREFIX_SIZE + len(tail) + suffix_size + _CRC_SIZE
    prefix = _PREFIX.pack(
        start_address,
        start_address + length - _CRC_SIZE,
        0,
        int(flags),
        version,
        platform_id,
        int(function),
        index,
    ) + b"".join(_DEPENDENCY.pack(d.function, d.index, d.version) for d in deps)
    before_hash = head + prefix + tail + suffix_extra + b"\x00\x00"
    sha = hashlib.sha256(before_hash).digest()
    body = before_hash + sha + suffix_size.to_bytes(2, "little")
    return body + zlib.crc32(body).to_bytes(4, "big")
