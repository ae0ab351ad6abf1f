"""
Device OS release names for system module version numbers.

A device's Describe lists its firmware modules with a plain version number each (``"v": 2301``); the API shows
the Device OS release instead (``"2.3.0"``). Particle numbers system modules per release, and the table below
maps one to the other.

Sources (facts only):
    - up to 3.2.0: ``system/system-versions.md`` in ``particle-iot/device-os`` (the release table);
    - 2.0.2, 2.3.1 and 3.3.0-rc.1 to 6.3.2: the ``system-part1`` module version in the Device OS restore
      images Particle publishes with its docs (``src/assets/files/device-restore/<release>/*.json`` in
      ``particle-iot/docs``). Releases with no readable image there (6.0.0, 6.3.1, …) are left out.

A few numbers were reused by several builds. The table keeps the final release when one shares the number
(13 is 0.5.0, not 0.5.0-rc.2), otherwise the last prerelease listed (4 is 0.4.4-rc.6, 312 is 0.8.0-rc.14).
"""

from __future__ import annotations

__all__ = ["known_releases", "system_version_name"]

# System module version → Device OS release, sorted; one line per minor release. Shared numbers: the final
# release, else the last prerelease listed (see above).
# fmt: off
_RELEASES: dict[int, str] = {
    0: "0.4.0", 1: "0.4.1", 2: "0.4.2", 3: "0.4.3", 4: "0.4.4-rc.6", 5: "0.4.4", 6: "0.4.5", 7: "0.4.6",
    8: "0.4.7", 9: "0.4.8-rc.1", 10: "0.4.8-rc.6", 11: "0.4.9",
    12: "0.5.0-rc.1", 13: "0.5.0", 14: "0.5.1-rc.1", 15: "0.5.1", 16: "0.5.2-rc.1", 17: "0.5.2",
    18: "0.5.3-rc.1", 19: "0.5.3-rc.2", 20: "0.5.3-rc.3", 21: "0.5.3", 22: "0.5.4", 23: "0.5.5",
    100: "0.6.0-rc.1", 101: "0.6.0-rc.2", 102: "0.6.0", 103: "0.6.1-rc.1", 104: "0.6.1-rc.2", 105: "0.6.1",
    106: "0.6.2-rc.1", 107: "0.6.2-rc.2", 108: "0.6.2", 109: "0.6.3", 110: "0.6.4",
    200: "0.7.0-rc.1", 201: "0.7.0-rc.2", 202: "0.7.0-rc.3", 203: "0.7.0-rc.4", 204: "0.7.0-rc.5",
    205: "0.7.0-rc.6", 206: "0.7.0-rc.7", 207: "0.7.0",
    300: "0.8.0-rc.1", 301: "0.8.0-rc.2", 302: "0.8.0-rc.3", 303: "0.8.0-rc.4", 304: "0.8.0-rc.5",
    305: "0.8.0-rc.6", 306: "0.8.0-rc.7", 307: "0.8.0-rc.8", 308: "0.8.0-rc.9", 309: "0.8.0-rc.10",
    310: "0.8.0-rc.11", 311: "0.8.0-rc.12", 312: "0.8.0-rc.14", 314: "0.8.0-rc.15", 315: "0.8.0-rc.16",
    316: "0.8.0-rc.17", 317: "0.8.0-rc.18", 318: "0.8.0-rc.19", 319: "0.8.0-rc.20", 320: "0.8.0-rc.21",
    321: "0.8.0-rc.22", 322: "0.8.0-rc.23", 323: "0.8.0-rc.24", 324: "0.8.0-rc.25", 325: "0.8.0-rc.26",
    326: "0.8.0-rc.27",
    400: "0.9.0-rc.1", 401: "0.9.0-rc.2", 402: "0.9.0-rc.3", 403: "0.9.0",
    1000: "1.0.0", 1001: "1.0.1-rc.1", 1002: "1.0.1",
    1100: "1.1.0-rc.1", 1101: "1.1.0-rc.2", 1102: "1.1.0",
    1200: "1.2.0-alpha.1", 1201: "1.2.0-beta.1", 1202: "1.2.0-rc.1", 1210: "1.2.1-rc.1", 1211: "1.2.1-rc.2",
    1212: "1.2.1-rc.3", 1213: "1.2.1",
    1300: "1.3.0-alpha.1", 1301: "1.3.0-rc.1", 1320: "1.3.1-rc.1", 1321: "1.3.1",
    1400: "1.4.0-rc.1", 1401: "1.4.0", 1402: "1.4.1-rc.1", 1403: "1.4.1", 1404: "1.4.2", 1405: "1.4.3",
    1406: "1.4.4", 1407: "1.4.5-b5som.1", 1408: "1.4.5-b5som.2",
    1500: "1.5.0-rc.1", 1501: "1.5.0-rc.2", 1502: "1.5.0", 1503: "1.5.1-tracker.1", 1504: "1.5.1-tracker.2",
    1505: "1.5.1-tracker.3", 1510: "1.5.1-rc.1", 1511: "1.5.1", 1512: "1.5.2", 1513: "1.5.3-tracker.1",
    1514: "1.5.4-rc.1", 1515: "1.5.4-rc.2",
    2000: "2.0.0-alpha.1", 2001: "2.0.0-alpha.2", 2002: "2.0.0-alpha.3", 2003: "2.0.0-alpha.4",
    2004: "2.0.0-rc.1", 2005: "2.0.0-rc.2", 2006: "2.0.0-rc.3", 2007: "2.0.0-rc.4", 2008: "2.0.0",
    2009: "2.0.1-alpha.1", 2010: "2.0.1-alpha.2", 2011: "2.0.1", 2021: "2.0.2",
    2100: "2.1.0-rc.1", 2101: "2.1.0",
    2200: "2.2.0-rc.1", 2201: "2.2.0-rc.2", 2202: "2.2.0",
    2300: "2.3.0-rc.1", 2301: "2.3.0", 2302: "2.3.1",
    3000: "3.0.0-alpha.1", 3001: "3.0.0-alpha.2", 3002: "3.0.0-beta.1", 3003: "3.0.0-rc.1",
    3004: "3.0.0-rc.2", 3005: "3.0.0",
    3100: "3.1.0-alpha.1", 3101: "3.1.0-alpha.2", 3102: "3.1.0-rc.1", 3103: "3.1.0",
    3200: "3.2.0-rc.1", 3201: "3.2.0",
    3300: "3.3.0-rc.1", 3301: "3.3.0", 3302: "3.3.1",
    4002: "4.0.0-beta.1", 4003: "4.0.0", 4005: "4.0.1", 4006: "4.0.2",
    4100: "4.1.0",
    4200: "4.2.0",
    5001: "5.0.0-alpha.2", 5002: "5.0.0", 5003: "5.0.1", 5004: "5.1.0",
    5200: "5.2.0",
    5300: "5.3.0", 5301: "5.3.1", 5302: "5.3.2",
    5400: "5.4.0", 5410: "5.4.1",
    5501: "5.5.0",
    5600: "5.6.0",
    5700: "5.7.0",
    5800: "5.8.0", 5802: "5.8.2",
    5901: "5.9.0",
    6100: "6.1.0", 6101: "6.1.1",
    6200: "6.2.0", 6201: "6.2.1",
    6302: "6.3.0", 6303: "6.3.2",
}
# fmt: on


def system_version_name(module_version: int) -> str | None:
    """
    The Device OS release (``"2.3.0"``) whose system modules carry ``module_version``, or ``None`` when the
    number is not in the table (never a guess from neighbouring numbers).
    """
    return _RELEASES.get(module_version)


def known_releases() -> list[tuple[int, str]]:
    """
    Every (system module version, release name) in the table, oldest first.
    """
    return sorted(_RELEASES.items())
