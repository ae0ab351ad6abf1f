"""
System module version numbers become Device OS releases, and a Describe's module list becomes the device's
``system_firmware_version``.
"""

from __future__ import annotations

from typing import Any

import pytest

from devicecloud.domain.device_os_versions import _RELEASES, system_version_name
from devicecloud.gateway.translate import describe_to_domain
from devicecloud.protocol import Description, parse_describe


def system_part(version: Any, index: str = "1", **extra: Any) -> dict[str, Any]:
    """A module entry as Device OS writes it for a system part."""
    return {"s": 262144, "l": "m", "vc": 30, "vv": 30, "f": "s", "n": index, "v": version, "d": [], **extra}


@pytest.mark.parametrize(
    ("number", "expected"),
    [
        (0, "0.4.0"),
        (207, "0.7.0"),
        (1406, "1.4.4"),
        (2301, "2.3.0"),
        (3201, "3.2.0"),
        (4006, "4.0.2"),
        (5501, "5.5.0"),
        (6201, "6.2.1"),
    ],
)
def test_final_releases(number: int, expected: str) -> None:
    """Numbers of final releases, old and new, map to their release."""
    assert expected == system_version_name(number)


@pytest.mark.parametrize(
    ("number", "expected"),
    [(300, "0.8.0-rc.1"), (1200, "1.2.0-alpha.1"), (1503, "1.5.1-tracker.1"), (3300, "3.3.0-rc.1")],
)
def test_prereleases(number: int, expected: str) -> None:
    """A prerelease's number maps to the prerelease."""
    assert expected == system_version_name(number)


@pytest.mark.parametrize(
    ("number", "expected"),
    [(13, "0.5.0"), (15, "0.5.1"), (4, "0.4.4-rc.6"), (312, "0.8.0-rc.14")],
)
def test_shared_numbers(number: int, expected: str) -> None:
    """A number several builds used names the final release, or else the last prerelease."""
    assert expected == system_version_name(number)


@pytest.mark.parametrize("number", [24, 99, 313, 2303, 4004, 6000, 99999, -1])
def test_unknown_numbers(number: int) -> None:
    """A number not in the table gives None, even between two known ones."""
    assert system_version_name(number) is None


def test_table_is_sorted_and_holds_releases() -> None:
    """The table stays sorted by number and every value looks like a semver."""
    assert sorted(_RELEASES) == list(_RELEASES)
    assert all(name[0].isdigit() and name.count(".") >= 2 for name in _RELEASES.values())


def test_describe_with_one_system_part() -> None:
    """A real-shaped Describe with a bootloader, a system part and a user part shows the system's release."""
    payload = (
        b'{"f":[],"v":{},"p":6,"m":['
        b'{"s":16384,"l":"m","vc":30,"vv":30,"f":"b","n":"0","v":1006,"d":[]},'
        b'{"s":262144,"l":"m","vc":30,"vv":30,"f":"s","n":"1","v":2301,"d":[{"f":"b","n":"0","v":1006,"_":""}]},'
        b'{"s":131072,"l":"m","vc":30,"vv":30,"u":"00","f":"u","n":"1","v":6,"d":[]}]}'
    )
    assert "2.3.0" == describe_to_domain(parse_describe(payload)).system_firmware_version


def test_describe_with_system_parts_that_disagree() -> None:
    """Mid-upgrade, the lowest system part's release is shown."""
    modules = (system_part(1406, "1"), system_part(2301, "2"), system_part(1512, "3"))
    assert "1.4.4" == describe_to_domain(Description(modules=modules)).system_firmware_version


def test_describe_ignores_garbage_modules() -> None:
    """Entries that are not system parts in the main store with an integer version are skipped."""
    modules = (
        "s",
        42,
        None,
        ["f", "s"],
        {"f": "s"},
        {"f": "s", "v": "100"},
        {"f": "s", "v": True},
        {"f": "s", "v": 1.5},
        {"f": "s", "v": None},
        {"f": "b", "v": 100},
        {"f": "u", "v": 6},
        system_part(102, l="t"),
        system_part(2301),
    )
    assert "2.3.0" == describe_to_domain(Description(modules=modules)).system_firmware_version


@pytest.mark.parametrize(
    "modules",
    [
        None,
        (),
        ({"f": "b", "n": "0", "v": 1006, "d": []}, {"f": "u", "n": "1", "v": 6, "d": []}),
        ({"f": "s", "v": "2301"}, "junk"),
        (system_part(2303),),
    ],
    ids=["absent", "empty", "no-system-part", "only-garbage", "unknown-number"],
)
def test_describe_without_a_known_release(modules: tuple[Any, ...] | None) -> None:
    """No usable system part, or an unknown number, gives None (the stored version is kept)."""
    assert describe_to_domain(Description(modules=modules)).system_firmware_version is None
