"""
The SIM registry's rules as data (decision 0022): which action applies in which state, what an ICCID list
and an operator's usage file may contain.
"""

from __future__ import annotations

from datetime import date

import pytest

from devicecloud.domain.sims import (
    MAX_IMPORT,
    SimAction,
    SimStatus,
    UsageRow,
    parse_iccids,
    parse_usage_csv,
    transition,
)
from devicecloud.errors import InvalidInput

A = "8934076500002589174"
B = "89340765000025891750"


@pytest.mark.parametrize(
    ("status", "action", "activations", "after"),
    [
        (SimStatus.INACTIVE, SimAction.ACTIVATE, 0, SimStatus.ACTIVE),
        (SimStatus.ACTIVE, SimAction.DEACTIVATE, 1, SimStatus.INACTIVE),
        (SimStatus.INACTIVE, SimAction.REACTIVATE, 1, SimStatus.ACTIVE),
        (SimStatus.INACTIVE, SimAction.ACTIVATE, 3, SimStatus.ACTIVE),
    ],
)
def test_allowed_transitions(
    status: SimStatus, action: SimAction, activations: int, after: SimStatus
) -> None:
    step = transition(status, action, activations)
    assert step.status is after
    assert step.activation == (after is SimStatus.ACTIVE)
    assert step.deactivation == (action is SimAction.DEACTIVATE)


@pytest.mark.parametrize(
    ("status", "action", "activations"),
    [
        (SimStatus.ACTIVE, SimAction.ACTIVATE, 1),
        (SimStatus.ACTIVE, SimAction.REACTIVATE, 1),
        (SimStatus.INACTIVE, SimAction.DEACTIVATE, 1),
        (SimStatus.INACTIVE, SimAction.REACTIVATE, 0),  # never activated: activate, not reactivate
        (SimStatus.ACTIVE, SimAction.RELEASE, 1),  # release is its own route, not a PUT action
    ],
)
def test_refused_transitions(status: SimStatus, action: SimAction, activations: int) -> None:
    with pytest.raises(InvalidInput):
        transition(status, action, activations)


def test_iccid_lists() -> None:
    assert parse_iccids(f" {A}\r\n{B},{A};\t{B}\n") == [A, B]  # any separator, repeats once, order kept
    assert parse_iccids([A, f" {B} "]) == [A, B]
    for bad in ([], "", [A, 12345678901234567890], [A, "1" * 17], "x" * 19, {"sims": A}, [A, "1" * 23]):
        with pytest.raises(InvalidInput):
            parse_iccids(bad)
    with pytest.raises(InvalidInput, match="At most"):
        parse_iccids([str(10**18 + n) for n in range(MAX_IMPORT + 1)])


def test_usage_csv() -> None:
    text = (
        "date,iccid,mbs_used,device_id,note\n"
        f"2026-01-02,{A},1.5,0123456789ABCDEF01234567,ignored\n"
        f"2026-01-03,{B},0,,\n"
    )
    assert parse_usage_csv(text) == [
        UsageRow(A, date(2026, 1, 2), 1_500_000, "0123456789abcdef01234567"),
        UsageRow(B, date(2026, 1, 3), 0, None),
    ]
    assert parse_usage_csv("iccid,date,mbs_used\n") == []


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("iccid,date\n", "missing: mbs_used"),
        (f"iccid,date,mbs_used\n{A},2026-01-02,1,extra\n", "line 2: more values"),
        (f"iccid,date,mbs_used\n{A},2026-02-30,1\n", "line 2: date"),
        (f"iccid,date,mbs_used\n{A},2026-01-02,-1\n", "line 2: mbs_used must be between"),
        (f"iccid,date,mbs_used\n{A},2026-01-02,NaN\n", "line 2: mbs_used must be between"),
        (f"iccid,date,mbs_used\n{A},2026-01-02,1e9\n", "line 2: mbs_used must be between"),
        (f"iccid,date,mbs_used\n{A},2026-01-02,lots\n", "line 2: mbs_used must be a decimal"),
        (f"iccid,date,mbs_used\n{A},2026-01-02,1\n123,2026-01-02,1\n", "line 3: An ICCID"),
        (f"iccid,date,mbs_used,device_id\n{A},2026-01-02,1,nope\n", "line 2: device_id"),
    ],
)
def test_bad_usage_rows_name_their_line(text: str, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        parse_usage_csv(text)
