"""
The device gateway: the asyncio TCP server around the sans-IO `protocol.Connection` (cloud role).

Modules, outside in:

- `server`: `DeviceGateway` listens, caps the number of sockets, runs one `Link` task per socket and
  stops them all on shutdown; `statistics()` counts what happened.
- `link`: one socket's loop (read → feed → events → services → write → re-arm one timer).
- `context`: what the links of one gateway share (sessions, clock, settings, counters, the event hooks)
  and the hooks' plain value types (`DeviceSubscription`, `EventFeed`).
- `registry`: device id → its current link (a newer link replaces an older one), per-device ordering of
  reports to `services.ports.DeviceSessions`.
- `control`: `GatewayControl`, the `services.ports.DeviceControl` that `runtime` hands to services.
- `translate`: protocol values → domain values (services never see protocol types).

The gateway imports `protocol`, `services.ports`, `domain`, `errors` and `clock`; never `api`, `store`,
`webhooks`, `runtime` or `cli` (import contracts in pyproject.toml).
"""

from devicecloud.gateway.context import DeviceSubscription, EventFeed, EventHook, SubscribeHook
from devicecloud.gateway.control import GatewayControl
from devicecloud.gateway.link import Link
from devicecloud.gateway.server import DeviceGateway, GatewayStatistics

__all__ = [
    "DeviceGateway",
    "DeviceSubscription",
    "EventFeed",
    "EventHook",
    "GatewayControl",
    "GatewayStatistics",
    "Link",
    "SubscribeHook",
]
