"""
NATS subjects and the event encoding (bus/wire.py): any name routes by exact prefix, and survives the trip.
"""

from __future__ import annotations

from datetime import UTC, datetime

from hypothesis import given
from hypothesis import strategies as st

from devicecloud.bus import wire
from devicecloud.domain.events import CloudEvent

names = st.text(max_size=64)
AUDIENCES = [
    ("all", ""),
    ("owner", 7),
    ("product", 7),
    ("to", "0123456789abcdef01234567"),
    ("owner", "a.b *>"),
]


def nats_matches(pattern: str, subject: str) -> bool:
    """The NATS server's rule: ``*`` is one token, ``>`` one or more; tokens otherwise equal."""
    want, have = pattern.split("."), subject.split(".")
    for index, token in enumerate(want):
        if token == ">":
            return len(have) > index
        if index >= len(have) or (token != "*" and token != have[index]):
            return False
    return len(want) == len(have)


@given(name=names, prefix=st.text(max_size=64), audience=st.sampled_from(AUDIENCES))
def test_a_route_matches_exactly_the_names_starting_with_its_prefix(
    name: str, prefix: str, audience: tuple[str, object]
) -> None:
    subject = wire.event_subject("dc", audience, name)  # type: ignore[arg-type]
    pattern = wire.route_subject("dc", audience, prefix)  # type: ignore[arg-type]
    assert name.startswith(prefix) == nats_matches(pattern, subject)


@given(name=names)
def test_no_name_makes_a_wildcard_an_empty_token_or_whitespace(name: str) -> None:
    tokens = wire.event_subject("dc", ("owner", "x y.*"), name).split(".")  # type: ignore[arg-type]
    assert all(
        token and token not in ("*", ">") and token.isascii() and token.isprintable() for token in tokens
    )
    assert not any(char.isspace() for token in tokens for char in token)


@given(name=names, data=st.none() | st.text(max_size=1024), public=st.booleans())
def test_an_event_survives_encoding(name: str, data: str | None, public: bool) -> None:
    event = CloudEvent(
        name=name,
        data=data,
        ttl=60,
        published_at=datetime(2026, 12, 4, 9, 30, 0, 123456, tzinfo=UTC),
        coreid="0123456789abcdef01234567",
        public=public,
        owner_id=3,
        device_id="0123456789abcdef01234567",
        product_id=None,
        to_device=None,
    )
    assert ("id-1", event) == wire.decode(wire.encode(event, "id-1"))


def test_different_audiences_never_share_a_subject() -> None:
    subjects = {wire.event_subject("dc", audience, "n") for audience in AUDIENCES}  # type: ignore[arg-type]
    assert len(AUDIENCES) == len(subjects)
