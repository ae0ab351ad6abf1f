"""
NATS subjects and the event encoding (bus/wire.py): any name routes by exact prefix, and survives the trip.
"""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from devicecloud.bus import wire
from devicecloud.domain.events import CloudEvent

names = st.text(max_size=64)
AUDIENCES = [
    ("all", ""),
    ("owner", 7),
    ("product", 7),
    ("customer", 7),
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


ids = st.none() | st.integers(min_value=1, max_value=2**31)


@given(
    name=names,
    data=st.none() | st.text(max_size=1024),
    public=st.booleans(),
    product=ids,
    version=ids,
    customer=ids,
)
def test_an_event_survives_encoding(
    name: str, data: str | None, public: bool, product: int | None, version: int | None, customer: int | None
) -> None:
    event = CloudEvent(
        name=name,
        data=data,
        ttl=60,
        published_at=datetime(2026, 12, 4, 9, 30, 0, 123456, tzinfo=UTC),
        coreid="0123456789abcdef01234567",
        public=public,
        owner_id=3,
        device_id="0123456789abcdef01234567",
        product_id=product,
        to_device=None,
        product_version=version,
        customer_id=customer,
    )
    assert ("id-1", event) == wire.decode(wire.encode(event, "id-1"))


def test_the_previous_releases_encoding_still_decodes_and_is_still_made_when_it_can_be() -> None:
    """
    During a rolling upgrade: an event of the previous release (11 fields) decodes; an event with no
    product version nor customer is encoded as that release did, so its nodes still decode it.
    """
    old = (
        b'["n1-7","temp","21",60,"2026-12-04T09:30:00+00:00","0123456789abcdef01234567",false,3,'
        b'"0123456789abcdef01234567",5,null]'
    )
    event_id, event = wire.decode(old)
    assert (event_id, event.product_id, event.product_version, event.customer_id) == ("n1-7", 5, None, None)
    assert wire.encode(event, "n1-7") == old
    with_customer = wire.encode(replace(event, customer_id=9), "n1-8")
    assert len(json.loads(with_customer)) == 13
    assert wire.decode(with_customer)[1].customer_id == 9
    for bad in (b"[]", b'{"a":1}', old[:-1] + b",1,2,3]"):
        with pytest.raises(ValueError, match="not an encoded event"):
            wire.decode(bad)


def test_different_audiences_never_share_a_subject() -> None:
    subjects = {wire.event_subject("dc", audience, "n") for audience in AUDIENCES}  # type: ignore[arg-type]
    assert len(AUDIENCES) == len(subjects)
