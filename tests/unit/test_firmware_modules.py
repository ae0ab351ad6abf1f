"""
The module format (prefix at each offset, suffix, CRC-32, SHA-256) and the fit checks, in the reference's
order.

Binaries are built here byte by byte from the layout tables (not with `build_module`), so the parser is
checked against the format and not against itself; `build_module` is then checked against the same bytes.
"""

from __future__ import annotations

import hashlib
import random
import zlib
from typing import Any

import pytest
from tests.support.conformance import load_transcript

from devicecloud.domain.firmware import (
    Dependency,
    FirmwareRejected,
    ModuleFlags,
    ModuleFunction,
    UpdateTarget,
    build_module,
    check_fit,
    parse_firmware,
)

PHOTON = 6
START = 0x80A0000


def hand_built(
    code: bytes,
    *,
    platform: int = PHOTON,
    function: int = 5,
    prefix_at: int = 0,
    flags: int = 0,
    deps: tuple[tuple[int, int, int], ...] = ((4, 2, 1406),),
    product: tuple[int, int] | None = None,
) -> bytes:
    """A module file from ota-and-dtls.md §A.5's tables."""
    head, tail = code[:prefix_at].ljust(prefix_at, b"\0"), code[prefix_at:]
    extra = b"" if product is None else product[0].to_bytes(2, "little") + product[1].to_bytes(2, "little")
    length = prefix_at + 24 + len(tail) + len(extra) + 2 + 32 + 2 + 4
    dep_bytes = b"".join(bytes([f, n]) + v.to_bytes(2, "little") for f, n, v in deps).ljust(8, b"\0")
    prefix = (
        START.to_bytes(4, "little")
        + (START + length - 4).to_bytes(4, "little")
        + bytes([0, flags])
        + (7).to_bytes(2, "little")  # module version
        + platform.to_bytes(2, "little")
        + bytes([function, 1])
        + dep_bytes
    )
    hashed = head + prefix + tail + extra + b"\0\0"
    body = hashed + hashlib.sha256(hashed).digest() + (36 + len(extra)).to_bytes(2, "little")
    return body + zlib.crc32(body).to_bytes(4, "big")


CODE = random.Random(12).randbytes(4000)
SYSTEM_2_3 = ({"f": "s", "n": "2", "v": 2301, "d": []},)


@pytest.mark.parametrize("prefix_at", [0, 0x200, 0x184, 0x10C, 0x40])
def test_the_prefix_is_found_at_every_offset(prefix_at: int) -> None:
    data = hand_built(CODE, prefix_at=prefix_at)
    image = parse_firmware(data)
    (module,) = image.modules
    assert (module.prefix_offset, module.platform_id, module.function, module.index, module.version) == (
        prefix_at,
        PHOTON,
        ModuleFunction.USER_PART,
        1,
        7,
    )
    assert module.dependencies == (Dependency(4, 2, 1406),)
    assert module.sha256 == hashlib.sha256(data[:-38]).digest()
    assert module.crc32 == zlib.crc32(data[:-4])
    assert module.length == len(data) == image.size


def test_build_module_makes_the_same_bytes_as_the_layout_tables() -> None:
    for prefix_at in (0, 0x184):
        built = build_module(
            CODE,
            platform_id=PHOTON,
            version=7,
            dependencies=[Dependency(4, 2, 1406)],
            start_address=START,
            prefix_offset=prefix_at,
            product=(1234, 5),
        )
        assert built == hand_built(CODE, prefix_at=prefix_at, product=(1234, 5))
        module = parse_firmware(built).main
        assert (module.product_id, module.product_version) == (1234, 5)


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (lambda d: d[:-100], "truncated"),
        (lambda d: d[:40], "too short"),
        (lambda d: d[:-4] + bytes(4), "CRC-32"),
        (lambda d: _recrc(d[:100] + bytes([d[100] ^ 1]) + d[101:]), "SHA-256"),
        (lambda d: bytes(len(d)), "not a Particle firmware module"),
        (lambda d: d + b"\0" * 8, "not a Particle firmware module"),
    ],
)
def test_a_broken_binary_is_refused_with_the_reason(damage: Any, reason: str) -> None:
    with pytest.raises(FirmwareRejected, match=reason):
        parse_firmware(damage(hand_built(CODE)))


def _recrc(data: bytes) -> bytes:
    return data[:-4] + zlib.crc32(data[:-4]).to_bytes(4, "big")


@pytest.mark.parametrize("name", ["session_tinker", "session_ota_legacy"])
def test_the_recorded_ota_payloads_are_not_modules(name: str) -> None:
    """The recordings flashed random bytes (the gcc device writes anything): the cloud refuses them."""
    payload = bytes.fromhex(load_transcript(name)["artifacts"]["ota_firmware"]["hex"])
    with pytest.raises(FirmwareRejected, match=r"not a Particle firmware module|too short"):
        parse_firmware(payload)


def test_combined_files_are_walked_module_by_module() -> None:
    system = hand_built(CODE[:1000], function=4, flags=ModuleFlags.COMBINED, deps=())
    app = hand_built(CODE, deps=((4, 2, 2301),))
    image = parse_firmware(system + app)
    assert [m.function for m in image.modules] == [4, 5]
    assert image.combined
    assert image.main.offset == len(system)
    with pytest.raises(FirmwareRejected, match="at most 2"):
        parse_firmware(system + system + app)


# ------------------------------------------------------------------------------------------------- fit


def fit(data: bytes, **target: Any) -> None:
    check_fit(parse_firmware(data), UpdateTarget(**{"platform_id": PHOTON, **target}))


def test_a_matching_binary_fits() -> None:
    fit(hand_built(CODE, deps=((4, 2, 2301),)), max_binary=len(CODE) + 100, modules=SYSTEM_2_3)


@pytest.mark.parametrize(
    ("data", "target", "reason"),
    [
        (hand_built(CODE, platform=12), {}, "for platform 12, but the device is platform 6"),
        (hand_built(CODE), {"max_binary": 1000}, r"bytes; the device takes at most 1000"),
        (hand_built(CODE, function=6), {}, "settings module, which cannot be flashed"),
        (hand_built(CODE, deps=((4, 2, 3005),)), {"modules": SYSTEM_2_3}, "version 3005 or later; .* 2301"),
        (hand_built(CODE, deps=((4, 3, 2301),)), {"modules": SYSTEM_2_3}, "system part 3 .* does not have"),
        (hand_built(CODE, flags=ModuleFlags.COMPRESSED), {}, "does not accept compressed"),
    ],
)
def test_a_binary_that_does_not_fit_is_refused_naming_the_check(
    data: bytes, target: dict[str, Any], reason: str
) -> None:
    with pytest.raises(FirmwareRejected, match=reason):
        fit(data, **target)


def test_checks_run_in_the_reference_order() -> None:
    """Platform before size before function before dependencies (§A.6)."""
    data = hand_built(CODE, platform=12, function=6, deps=((4, 2, 9999),))
    with pytest.raises(FirmwareRejected, match="platform"):
        fit(data, max_binary=10, modules=SYSTEM_2_3)
    with pytest.raises(FirmwareRejected, match="at most 10"):
        fit(hand_built(CODE, function=6, deps=((4, 2, 9999),)), max_binary=10, modules=SYSTEM_2_3)


def test_unknown_modules_leave_dependencies_unchecked_and_compressed_needs_the_hello_flag() -> None:
    fit(hand_built(CODE, deps=((4, 2, 9999),)), modules=None)
    fit(hand_built(CODE, deps=((4, 2, 9999),)), modules=())
    fit(hand_built(CODE, flags=ModuleFlags.COMPRESSED), hello_flags=0x40)


def test_a_combined_file_brings_its_own_dependency() -> None:
    # The system part inside is function 4, index 1, version 7.
    system = hand_built(CODE[:1000], function=4, flags=ModuleFlags.COMBINED, deps=())
    app = hand_built(CODE, deps=((4, 1, 7),))
    with pytest.raises(FirmwareRejected, match="combined"):
        fit(system + app, modules=SYSTEM_2_3)
    fit(system + app, modules=SYSTEM_2_3, hello_flags=0x40)


def test_describe_entries_that_are_not_modules_are_ignored() -> None:
    odd = (
        {"f": "s", "n": "x", "v": 1},
        "junk",
        {"f": "s", "n": "2", "v": "2301"},
        {"f": "s", "n": "2", "l": "b"},
    )
    with pytest.raises(FirmwareRejected, match="does not have"):
        fit(hand_built(CODE, deps=((4, 2, 1),)), modules=odd)
