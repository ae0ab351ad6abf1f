"""
The product firmware release precedence (issue 12 section 4 acceptance): a table over the four rules —
development, locked, group release (the highest of the device's groups), product default — and what the
impact preview and the rollout derive from it.
"""

from __future__ import annotations

import pytest

from devicecloud.domain.product_firmware import (
    FleetDevice,
    Release,
    Releases,
    Rule,
    Target,
    needs_update,
    release_impact,
    target_firmware,
)

EU, US, BETA = 1, 2, 3
# The product's releases: 10 is the default; 11 to EU; 12 to US and BETA; 13 to BETA only.
RELEASES = Releases.of(
    [
        Release(10, product_default=True),
        Release(11, group_ids=frozenset({EU})),
        Release(12, group_ids=frozenset({US, BETA})),
        Release(13, group_ids=frozenset({BETA})),
    ]
)


@pytest.mark.parametrize(
    ("device", "releases", "expected"),
    [
        # 1. development devices are never updated automatically, whatever else holds
        (FleetDevice("d", development=True), RELEASES, Target(None, Rule.DEVELOPMENT)),
        (
            FleetDevice("d", development=True, desired_firmware_version=7, group_ids=frozenset({EU})),
            RELEASES,
            Target(None, Rule.DEVELOPMENT),
        ),
        # 2. a lock wins over groups and the default, even to a version released nowhere, even lower
        (FleetDevice("l", desired_firmware_version=7), RELEASES, Target(7, Rule.LOCKED)),
        (
            FleetDevice("l", desired_firmware_version=9, group_ids=frozenset({BETA})),
            RELEASES,
            Target(9, Rule.LOCKED),
        ),
        (FleetDevice("l", desired_firmware_version=7), Releases(), Target(7, Rule.LOCKED)),
        # 3. a group release wins over the default; the highest among the device's groups
        (FleetDevice("g", group_ids=frozenset({EU})), RELEASES, Target(11, Rule.GROUP)),
        (FleetDevice("g", group_ids=frozenset({EU, US})), RELEASES, Target(12, Rule.GROUP)),
        (FleetDevice("g", group_ids=frozenset({US, BETA})), RELEASES, Target(13, Rule.GROUP)),
        # ... even when the group release is older than the default
        (
            FleetDevice("g", group_ids=frozenset({EU})),
            Releases.of([Release(20, product_default=True), Release(11, group_ids=frozenset({EU}))]),
            Target(11, Rule.GROUP),
        ),
        # a group with no release falls through to the default
        (FleetDevice("g", group_ids=frozenset({99})), RELEASES, Target(10, Rule.PRODUCT_DEFAULT)),
        # 4. the product default
        (FleetDevice("p"), RELEASES, Target(10, Rule.PRODUCT_DEFAULT)),
        # nothing released: nothing to do
        (FleetDevice("n"), Releases(), Target(None, Rule.NONE)),
        (FleetDevice("n", group_ids=frozenset({EU})), Releases(), Target(None, Rule.NONE)),
    ],
)
def test_precedence(device: FleetDevice, releases: Releases, expected: Target) -> None:
    assert target_firmware(device, releases) == expected


def test_running_firmware_decides_whether_to_flash() -> None:
    assert not needs_update(None, 3)  # no target
    assert not needs_update(4, 4)  # the Hello says it runs it
    assert needs_update(4, 3)
    assert needs_update(4, 3, running_hash="ab", target_hash="ab")  # the Hello's version wins
    assert not needs_update(4, None, running_hash="AB", target_hash="ab")  # no version: by app hash
    assert needs_update(4, None, running_hash="cd", target_hash="ab")
    assert needs_update(4, None)  # nothing known: flash


def test_impact_uses_the_same_precedence() -> None:
    fleet = [
        FleetDevice("a", group_ids=frozenset({EU}), firmware_version=10),
        FleetDevice("b", group_ids=frozenset({BETA}), firmware_version=10),  # kept on 13 by BETA
        FleetDevice("c", firmware_version=10),
        FleetDevice("d", firmware_version=None),
        FleetDevice("e", development=True, firmware_version=10),  # never flashed
        FleetDevice("f", desired_firmware_version=10, firmware_version=10),  # locked
        FleetDevice("g", firmware_version=14),  # runs it already
    ]
    current = [
        Release(10, product_default=True),
        Release(11, group_ids=frozenset({EU})),
        Release(13, group_ids=frozenset({BETA})),
    ]
    # 14 as the product default: devices without a group release, not locked, not development
    assert release_impact(fleet, current, Release(14, product_default=True)) == [(10, 1), (None, 1)]
    # 14 to EU: it beats 11 there
    assert release_impact(fleet, current, Release(14, group_ids=frozenset({EU}))) == [(10, 1)]
    # 12 to BETA: 13 stays higher there, nobody moves
    assert release_impact(fleet, current, Release(12, group_ids=frozenset({BETA}))) == []
    # a new default takes the default from 10
    assert Releases.of([*current, Release(14, product_default=True)]).product_default == 14
