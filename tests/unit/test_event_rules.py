"""
Event rules that need no network: validation, the private flag, and the device publish rate limit.
"""

from __future__ import annotations

import pytest

from devicecloud.domain.events import loggable
from devicecloud.errors import InvalidInput
from devicecloud.services.events import check_event, is_private


@pytest.mark.parametrize(
    ("name", "data", "ttl"),
    [("", None, 60), ("x" * 65, None, 60), ("ok", "x" * 1025, 60), ("ok", None, "soon"), ("ok", None, -1)],
)
def test_bad_events_are_refused(name: str, data: str | None, ttl: object) -> None:
    """Empty or long names, long data and bad ttls are InvalidInput."""
    with pytest.raises(InvalidInput):
        check_event(name, data, ttl)


@pytest.mark.parametrize(
    ("name", "data", "code"),
    [("n\ud800", None, "Invalid event name"), ("n", "\udfff", "Invalid event data")],
)
def test_text_that_cannot_be_encoded_is_refused(name: str, data: str | None, code: str) -> None:
    """A lone surrogate (JSON can carry one, UTF-8 cannot) in the name or data is InvalidInput."""
    with pytest.raises(InvalidInput) as refused:
        check_event(name, data, None)
    assert code == refused.value.code


def test_defaults() -> None:
    """A missing ttl is 60; numbers given as text are read."""
    assert ("n", None, 60) == check_event("n", None, None)
    assert ("n", "d", 30) == check_event("n", "d", "30")


@pytest.mark.parametrize(
    ("value", "expected"),
    [(True, True), ("true", True), ("1", True), (False, False), ("false", False), ("", False), (None, False)],
)
def test_private_flag(value: object, expected: bool) -> None:
    """private is true unless absent, empty, false or 0."""
    assert expected == is_private(value)


def test_names_in_log_lines_are_cut_and_escaped() -> None:
    """A lone surrogate would break the log's output; a 3,000-character name would flood it."""
    assert "a\\ud800é" == loggable("a\ud800é")
    assert f"{'n' * 64}… (3009 characters)" == loggable("n" * 3009)
