"""
Product firmware and its releases (issue 12 section 4, catalogue §12; decision 0025). Stdlib only.

`target_firmware` is the one rule for which product firmware a device should run, used alike by the
rollout on connect, by a lock with ``flash=true``, by intelligent releases and by the impact preview. It
follows the hosted cloud's precedence (ota-and-dtls.md §A.7):

1. a development device is never updated automatically (no target);
2. a device locked to a version (``desired_firmware_version``) gets exactly that version;
3. otherwise the highest version released to any of its groups;
4. otherwise the product's default release;
5. otherwise nothing.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum

__all__ = [
    "FleetDevice",
    "ProductFirmware",
    "Release",
    "Releases",
    "Rule",
    "Target",
    "needs_update",
    "release_impact",
    "target_firmware",
    "with_release",
]


@dataclass(frozen=True, slots=True)
class ProductFirmware:
    """
    One uploaded version of a product's firmware (the binary itself is in the binary store).
    """

    id: int
    product_id: int
    version: int
    title: str
    description: str | None
    name: str
    size: int
    sha256: str
    platform_id: int
    binary_id: str
    uploaded_by: str | None
    uploaded_at: datetime
    updated_at: datetime
    product_default: bool = False
    intelligent: bool = False
    mandatory: bool = False
    released_at: datetime | None = None
    groups: tuple[str, ...] = ()
    group_ids: tuple[int, ...] = ()

    @property
    def released(self) -> bool:
        return self.released_at is not None


@dataclass(frozen=True, slots=True)
class Release:
    """
    How one version is released: as the product default and/or to groups (by id).
    """

    version: int
    product_default: bool = False
    group_ids: frozenset[int] = frozenset()


@dataclass(frozen=True, slots=True)
class Releases:
    """
    A product's releases, as the precedence needs them: the default version and, per group, the highest
    version released to it.
    """

    product_default: int | None = None
    by_group: Mapping[int, int] = field(default_factory=dict)

    @classmethod
    def of(cls, releases: Iterable[Release]) -> Releases:
        default: int | None = None
        by_group: dict[int, int] = {}
        for release in releases:
            if release.product_default:
                default = release.version if default is None else max(default, release.version)
            for group_id in release.group_ids:
                by_group[group_id] = max(by_group.get(group_id, release.version), release.version)
        return cls(default, by_group)


@dataclass(frozen=True, slots=True)
class FleetDevice:
    """
    What the precedence reads of one product device.
    """

    device_id: str
    development: bool = False
    desired_firmware_version: int | None = None
    group_ids: frozenset[int] = frozenset()
    firmware_version: int | None = None  # the product firmware version its latest Hello reported


class Rule(StrEnum):
    """
    Which rule chose a device's target (for logs and tests).
    """

    DEVELOPMENT = "development"
    LOCKED = "locked"
    GROUP = "group"
    PRODUCT_DEFAULT = "product_default"
    NONE = "none"


@dataclass(frozen=True, slots=True)
class Target:
    """
    The version a device should run (None: leave it alone) and the rule that said so.
    """

    version: int | None
    rule: Rule


def target_firmware(device: FleetDevice, releases: Releases) -> Target:
    """
    The product firmware version ``device`` should run under ``releases`` (see the module docstring).
    """
    if device.development:
        return Target(None, Rule.DEVELOPMENT)
    if device.desired_firmware_version is not None:
        return Target(device.desired_firmware_version, Rule.LOCKED)
    released = [releases.by_group[g] for g in device.group_ids if g in releases.by_group]
    if released:
        return Target(max(released), Rule.GROUP)
    if releases.product_default is not None:
        return Target(releases.product_default, Rule.PRODUCT_DEFAULT)
    return Target(None, Rule.NONE)


def needs_update(
    target: int | None,
    running_version: int | None,
    *,
    running_hash: str | None = None,
    target_hash: str | None = None,
) -> bool:
    """
    Whether a device must be flashed to reach ``target``: its Hello's product firmware version says so
    when it reports one; otherwise the application's SHA-256 from its Describe, compared with the target
    binary's; a device that reports neither is flashed.
    """
    if target is None:
        return False
    if running_version is not None:
        return running_version != target
    if running_hash is not None and target_hash is not None:
        return running_hash.lower() != target_hash.lower()
    return True


def with_release(releases: Iterable[Release], change: Release) -> list[Release]:
    """
    ``releases`` with ``change`` applied: ``change`` replaces its version's release; a new default
    takes the default from every other version.
    """
    changed = [r for r in releases if r.version != change.version]
    if change.product_default:
        changed = [Release(r.version, False, r.group_ids) for r in changed]
    return [*changed, change]


def release_impact(
    fleet: Iterable[FleetDevice], releases: Iterable[Release], change: Release
) -> list[tuple[int | None, int]]:
    """
    The devices a release would update, by the version they run (None last: not reported): those whose
    target under ``releases`` with ``change`` applied is ``change.version`` and that do not run it already.
    """
    after = Releases.of(with_release(releases, change))
    counts: dict[int | None, int] = {}
    for device in fleet:
        if device.firmware_version == change.version:
            continue
        if target_firmware(device, after).version == change.version:
            counts[device.firmware_version] = counts.get(device.firmware_version, 0) + 1
    return sorted(counts.items(), key=lambda item: (item[0] is None, item[0] or 0))
