"""
Events and routes as NATS carries them: subjects that let the server do the owner and prefix filtering, and
one encoding of an event, made once per publish.

Subjects (``<root>`` from the bus URL, ``devicecloud`` by default):
    ``<root>.ev.<audience>.<name>``, where ``<audience>`` is one or two tokens (``all``, ``pub``, ``pdev``;
    ``own.<owner>``, ``prod.<product>``, ``cust.<customer>``, ``odev.<owner>``, ``to.<device>``; see
    `domain.events.audiences`) and ``<name>`` is the event name with ONE TOKEN PER CHARACTER, ended by the
    token ``_``. An event is published once per audience (a few). A route (audience, prefix) subscribes
    ``<root>.ev.<audience>.<prefix tokens>.>``: ``>`` needs at least one more token, the end token at least,
    so the prefix matches the whole name too.

Tokens: a letter, digit or ``-`` stands for itself; any other character (``.``, ``*``, ``>``, space, ``_``,
``/``, non-ASCII...) is ``_`` followed by its code point in hex, so no name can make a wildcard, an empty
token or a token boundary. Ids inside one token escape the same way, with a closing ``_``.
"""

from __future__ import annotations

import json
from collections.abc import Hashable
from datetime import datetime
from functools import lru_cache

from devicecloud.domain.events import Audience, CloudEvent

END = "_"
_AUDIENCE_KINDS = {
    "all": "all",
    "public": "pub",
    "public-devices": "pdev",
    "owner": "own",
    "product": "prod",  # a product's events, whoever owns the device (`/v1/products/:p/events`)
    "customer": "cust",  # a product customer's devices' events (decision 0032)
    "owner-devices": "odev",
    "product-devices": "prdev",  # what a product publishes, to its devices' subscriptions
    "customer-devices": "cdev",  # a customer's devices' events, to its other devices
    "to": "to",
}


@lru_cache(maxsize=4096)
def _char_token(char: str) -> str:
    if char.isascii() and (char.isalnum() or char == "-"):
        return char
    return f"_{ord(char):x}"


def name_tokens(text: str) -> str:
    """
    ``text`` as dot-separated tokens, one per character (empty text: no token at all).
    """
    return ".".join(_char_token(char) for char in text)


def id_token(value: Hashable) -> str:
    """
    One token for an id (an owner number, a device id): unsafe characters escaped as ``_<hex>_``.
    """
    return (
        "".join(c if c.isascii() and (c.isalnum() or c == "-") else f"_{ord(c):x}_" for c in str(value))
        or "_"
    )


def audience_subject(audience: Audience) -> str:
    kind, key = audience
    token = _AUDIENCE_KINDS[kind]
    return token if key == "" else f"{token}.{id_token(key)}"


def event_subject(root: str, audience: Audience, name: str) -> str:
    tokens = name_tokens(name)
    middle = f"{tokens}.{END}" if tokens else END
    return f"{root}.ev.{audience_subject(audience)}.{middle}"


def route_subject(root: str, audience: Audience, prefix: str) -> str:
    tokens = name_tokens(prefix)
    middle = f"{tokens}.>" if tokens else ">"
    return f"{root}.ev.{audience_subject(audience)}.{middle}"


#: Fields of the first encoding; later fields are appended after them, and left out while they (and all
#: after them) are empty, so a node of the previous release still decodes every event that has none.
BASE_FIELDS = 11


def encode(event: CloudEvent, event_id: str) -> bytes:
    """
    The event as one compact JSON array, its id first (a receiver drops copies it already took). The fields
    after the first `BASE_FIELDS` (``product_version``, ``customer_id``) are appended only when set, so during
    a rolling upgrade a node of the previous release decodes every event but those that carry them.
    """
    fields = [
        event_id,
        event.name,
        event.data,
        event.ttl,
        event.published_at.isoformat(),
        event.coreid,
        event.public,
        event.owner_id,
        event.device_id,
        event.product_id,
        event.to_device,
        event.product_version,
        event.customer_id,
    ]
    while len(fields) > BASE_FIELDS and fields[-1] is None:
        fields.pop()
    # ASCII: a lone surrogate the in-process bus would carry survives too
    return json.dumps(fields, separators=(",", ":")).encode("ascii")


def decode(payload: bytes) -> tuple[str, CloudEvent]:
    """
    The id and event ``encode`` made (this release's or the previous one's, `BASE_FIELDS` long). Raises
    ValueError (or a JSON error, one of its kind) on anything else.
    """
    fields = json.loads(payload)
    if not isinstance(fields, list) or not BASE_FIELDS <= len(fields) <= BASE_FIELDS + 2:
        raise ValueError("not an encoded event")
    (event_id, name, data, ttl, published_at, coreid, public, owner_id, device_id, product_id, to_device) = (
        fields[:BASE_FIELDS]
    )
    product_version, customer_id = [*fields[BASE_FIELDS:], None, None][:2]
    return str(event_id), CloudEvent(
        name=name,
        data=data,
        ttl=ttl,
        published_at=datetime.fromisoformat(published_at),
        coreid=coreid,
        public=public,
        owner_id=owner_id,
        device_id=device_id,
        product_id=product_id,
        to_device=to_device,
        product_version=product_version,
        customer_id=customer_id,
    )
