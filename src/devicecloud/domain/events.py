"""
Events as the cloud carries them: from devices, from the API, and from the cloud itself (special events).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

# coreid of events that no device published (catalogue §9.3 uses this for cloud-made events).
INTERNAL_COREID = "particle-internal"
# coreid of events published through POST /v1/devices/events.
API_COREID = "api"
DEFAULT_TTL = 60
# The limits of an event, wherever it comes from (the API, a device): characters of name, bytes of data.
MAX_NAME_LENGTH = 64
MAX_DATA_LENGTH = 1024


def is_valid_text(text: str) -> bool:
    """
    True when ``text`` can be written as UTF-8, i.e. holds no lone surrogate (which strict UTF-8 decoding
    never yields, but ``json.loads`` of ``"\\ud800"`` does). Streams, devices and webhooks cannot send
    anything else.
    """
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def loggable(text: str, limit: int = MAX_NAME_LENGTH) -> str:
    """
    Text from outside for a log line: at most ``limit`` characters (with the full length when cut), lone
    surrogates escaped (``\\ud800``), since the log's own output would fail on them.
    """
    shown = text[:limit].encode("utf-8", "backslashreplace").decode("utf-8")
    return shown if len(text) <= limit else f"{shown}… ({len(text)} characters)"


@dataclass(frozen=True, slots=True)
class CloudEvent:
    """
    One event. ``owner_id`` is the user it belongs to (the device's owner, or the API publisher); public
    events are visible to everyone, private ones only to their owner.
    """

    name: str
    data: str | None
    ttl: int
    published_at: datetime
    coreid: str
    public: bool
    owner_id: int | None
    device_id: str | None = None
    product_id: int | None = None


@dataclass(frozen=True, slots=True)
class EventFilter:
    """
    What a subscriber wants: a name prefix, and whose events.

    - ``owner_id`` set and ``include_public`` off: only that user's events (``/v1/devices/events``);
    - ``owner_id`` set and ``include_public`` on: that user's events plus everyone's public ones
      (``/v1/events``, device subscriptions to all events);
    - ``device_id`` set: only that device's events (still subject to the owner rule above).
    """

    prefix: str = ""
    owner_id: int | None = None
    include_public: bool = False
    device_id: str | None = None

    def matches(self, event: CloudEvent) -> bool:
        """
        Whether this subscriber may and wants to see ``event``.
        """
        if not event.name.startswith(self.prefix):
            return False
        if self.device_id is not None and event.device_id != self.device_id:
            return False
        if self.owner_id is not None and event.owner_id == self.owner_id:
            return True
        return self.include_public and event.public


@dataclass(frozen=True, slots=True)
class AnyFilter:
    """
    The union of several filters: one bus subscription serves all of a device's Subscribe messages.
    """

    parts: tuple[EventFilter, ...]

    @property
    def prefix(self) -> str:
        return ",".join(part.prefix for part in self.parts)

    def matches(self, event: CloudEvent) -> bool:
        return any(part.matches(event) for part in self.parts)


@dataclass(frozen=True, slots=True)
class AllEvents:
    """
    Every event whatever its owner, except names starting with ``exclude`` (the cloud's own consumers,
    such as webhook delivery, subscribe with this; never a user-facing stream).
    """

    exclude: str = ""
    prefix: str = "*"

    def matches(self, event: CloudEvent) -> bool:
        return not (self.exclude and event.name.startswith(self.exclude))


Filter = EventFilter | AnyFilter | AllEvents
