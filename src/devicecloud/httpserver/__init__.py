"""
The HTTP server's own limits, below the API: read deadlines, connection caps, descriptor budget (ADR 0011).
"""

from devicecloud.httpserver.connections import (
    ConnectionBook,
    GuardedHttpProtocol,
    HttpLimits,
    address_key,
    guarded_protocol,
)
from devicecloud.httpserver.descriptors import DescriptorPlan, plan_descriptors, raise_descriptor_limit

__all__ = [
    "ConnectionBook",
    "DescriptorPlan",
    "GuardedHttpProtocol",
    "HttpLimits",
    "address_key",
    "guarded_protocol",
    "plan_descriptors",
    "raise_descriptor_limit",
]
