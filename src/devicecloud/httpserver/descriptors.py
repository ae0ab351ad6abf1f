"""
File descriptors for one process that serves HTTP and devices: raise the soft limit, then share it out.

Every HTTP connection and every device link is a descriptor. Without a plan, a flood of one kind takes the
descriptors the other needs and both stop. ``plan_descriptors`` gives the device gateway its
``max_device_links`` and HTTP the rest, after a reserve for the database, webhook connections and logs; when
the limit cannot hold everything, HTTP keeps a floor and the gateway gets what remains, and the plan says so.
"""

from __future__ import annotations

import resource
from dataclasses import dataclass

# Never ask for more than Linux's default fs.nr_open, whatever an unlimited hard limit says.
_CEILING = 1 << 20
# When descriptors are short, HTTP keeps at least this many (or a quarter of what is available).
_HTTP_FLOOR = 1024


def raise_descriptor_limit() -> int:
    """
    Raise the soft RLIMIT_NOFILE to the hard limit (as far as the system lets us); return the soft limit.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = _CEILING if hard == resource.RLIM_INFINITY else min(hard, _CEILING)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):  # e.g. macOS refuses more than OPEN_MAX: keep what we have
            pass
    return _CEILING if soft == resource.RLIM_INFINITY else soft


@dataclass(frozen=True, slots=True)
class DescriptorPlan:
    """
    How the descriptor limit is shared: HTTP connections, device links, and what was cut to fit.
    """

    limit: int
    http_connections: int
    device_links: int
    shortfall: str | None


def plan_descriptors(
    limit: int,
    *,
    reserve: int,
    device_links: int,
    http_connections: int | None,
    serve_http: bool = True,
    serve_devices: bool = True,
) -> DescriptorPlan:
    """
    Share ``limit`` descriptors: ``reserve`` aside, the gateway's links, and HTTP (``None``: all the rest).
    """
    available = max(limit - reserve, 0)
    wanted_links = device_links if serve_devices else 0
    if not serve_http:
        http = 0
    elif http_connections is not None:
        http = min(http_connections, available)
    else:
        http = min(max(available - wanted_links, min(available // 4, _HTTP_FLOOR)), available)
    links = min(wanted_links, available - http)
    cuts = []
    if links < wanted_links:
        cuts.append(f"device links {links} of max_device_links {wanted_links}")
    if http_connections is not None and serve_http and http < http_connections:
        cuts.append(f"HTTP connections {http} of http_max_connections {http_connections}")
    shortfall = None
    if cuts:
        shortfall = (
            f"the descriptor limit is {limit} (with {reserve} reserved): "
            + ", ".join(cuts)
            + "; raise the hard limit (ulimit -Hn, LimitNOFILE=) or lower the settings"
        )
    return DescriptorPlan(limit=limit, http_connections=http, device_links=links, shortfall=shortfall)
