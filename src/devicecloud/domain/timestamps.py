"""
How the Particle API writes instants: ISO-8601 UTC with milliseconds and a Z (2026-01-01T12:00:00.000Z).
"""

from __future__ import annotations

from datetime import datetime


def iso(moment: datetime | None) -> str | None:
    """
    ``moment`` in the API's format, or None.
    """
    if moment is None:
        return None
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")
