"""
Operability: Prometheus metrics and the readiness checks, for `/metrics`, `/healthz` and `/readyz`.

Cheap on the hot paths: almost everything is read at scrape time from counters the components keep anyway
(`DeviceGateway.statistics()`, the bus's, the webhook dispatcher's, the presence book's), so a device
message or an event costs nothing more. The one thing measured as it happens is the duration of device
requests (function calls, variable reads, pings, signals): `MeteredControl` wraps the `DeviceControl`
the devices service is given, and observes one histogram per request. No label has a device id or a name.
Only `runtime` imports this module (a concrete backend, like `notify`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, TypeVar

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric, SummaryMetricFamily
from prometheus_client.registry import Collector

from devicecloud.errors import DeviceOffline, DeviceTimedOut

if TYPE_CHECKING:
    from devicecloud.bus.interfaces import EventBus
    from devicecloud.domain.devices import DeviceDescription, VariableReading
    from devicecloud.domain.diagnostics import VitalsReading
    from devicecloud.gateway import DeviceGateway
    from devicecloud.gateway.udp import UdpTotals
    from devicecloud.services.device_presence import DevicePresenceBook
    from devicecloud.services.ports import DeviceControl
    from devicecloud.webhooks.dispatcher import WebhookDispatcher

T = TypeVar("T")
# Device requests take from a few ms (a LAN device) to the request timeout (20 s).
CALL_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0)
PROBE_TIMEOUT = 5.0  # seconds a readiness check waits for the database or the bus


@dataclass(frozen=True, slots=True)
class Sources:
    """
    What the metrics are read from. ``outbox`` counts the webhook deliveries waiting (a database read, so
    it is taken once per scrape, before the collectors run); ``database`` and ``bus`` answer the probes.
    """

    node_id: str
    gateway: DeviceGateway
    bus: EventBus
    dispatcher: WebhookDispatcher
    presence: DevicePresenceBook
    outbox: Callable[[], Awaitable[int]]
    database: Callable[[], Awaitable[None]]
    bus_ping: Callable[[], Awaitable[None]]


class HttpConnectionCounts(Protocol):
    """
    What the HTTP server's connection book tells (`devicecloud.httpserver.ConnectionBook`).
    """

    total: int
    proxy_headers_refused: int


class Metrics:
    """
    One process's metrics registry (not the library's global one: tests run many runtimes in one process).
    """

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.calls = Histogram(
            "devicecloud_device_request_seconds",
            "Duration of device requests made through the API (function, variable, ping, signal).",
            ("kind",),
            buckets=CALL_BUCKETS,
            registry=self.registry,
        )
        self.call_outcomes = Counter(
            "devicecloud_device_requests",
            "Device requests made through the API, by kind and outcome (ok, offline, timeout, error).",
            ("kind", "outcome"),
            registry=self.registry,
        )
        self._sources: Sources | None = None
        self._http: HttpConnectionCounts | None = None
        self.outbox = 0

    def watch_http(self, book: HttpConnectionCounts) -> None:
        """
        Report the HTTP server's open connections and refused PROXY headers too (``devicecloud serve``
        calls this with its server's book; an app served otherwise has none).
        """
        self._http = book

    def attach(self, sources: Sources) -> None:
        """
        Read the rest from these components (the runtime calls this once they exist).
        """
        self._sources = sources
        self.registry.register(_Snapshot(self, sources))

    async def render(self) -> tuple[bytes, str]:
        """
        The exposition text and its content type.
        """
        if self._sources is not None:
            try:
                self.outbox = await asyncio.wait_for(self._sources.outbox(), PROBE_TIMEOUT)
            except Exception:
                self.outbox = -1  # unknown this time: the database did not answer
        return generate_latest(self.registry), CONTENT_TYPE_LATEST

    async def readiness(self) -> dict[str, str]:
        """
        Each dependency and "ok", or what is wrong with it.
        """
        if self._sources is None:
            return {}
        checks = {"database": self._sources.database, "bus": self._sources.bus_ping}
        found: dict[str, str] = {}
        for name, check in checks.items():
            try:
                await asyncio.wait_for(check(), PROBE_TIMEOUT)
                found[name] = "ok"
            except Exception as exc:
                found[name] = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        return found

    def metered(self, control: DeviceControl) -> MeteredControl:
        return MeteredControl(control, self)


class _Snapshot(Collector):
    """
    Reads the components' running totals at scrape time.
    """

    def __init__(self, metrics: Metrics, sources: Sources) -> None:
        self._metrics = metrics
        self._sources = sources

    def collect(self) -> Iterable[Metric]:
        s = self._sources
        gateway = s.gateway.statistics()
        bus = s.bus.statistics()
        hooks = s.dispatcher.statistics()
        presence = s.presence.statistics()
        info = GaugeMetricFamily("devicecloud_node", "This process's node id (value 1).", labels=("node",))
        info.add_metric((s.node_id,), 1)
        yield info
        gauges = (
            ("devices_connected", "Devices with a live link to this node.", gateway.online),
            ("device_links", "Device sockets open on this node.", gateway.links),
            ("handshakes_in_progress", "Device handshakes in progress.", gateway.handshakes_in_progress),
            ("bus_subscriptions", "Event subscriptions on this node.", bus.get("subscriptions", 0)),
            (
                "webhook_outbox",
                "Webhook deliveries in the outbox (-1: unknown).",
                self._metrics.outbox,
            ),
            ("webhook_in_flight", "Webhook deliveries held by this node.", hooks.get("held", 0)),
            ("webhook_intake", "Events taken for webhooks, not yet written.", hooks.get("incoming", 0)),
        )
        for name, documentation, value in gauges:
            yield GaugeMetricFamily(f"devicecloud_{name}", documentation, value=value)
        http = self._metrics._http
        if http is not None:
            yield GaugeMetricFamily(
                "devicecloud_http_connections", "HTTP connections open.", value=http.total
            )
        refused = CounterMetricFamily(
            "devicecloud_proxy_headers_refused",
            "Sockets from a trusted proxy closed for a malformed, missing or late PROXY header, by port.",
            labels=("port",),
        )
        refused.add_metric(("device",), gateway.proxy_headers_refused)
        if http is not None:
            refused.add_metric(("http",), http.proxy_headers_refused)
        yield refused
        counters = (
            ("device_links_refused", "Device sockets refused (over the limit).", gateway.refused),
            ("device_commands", "Requests sent to devices.", gateway.requests),
            (
                "device_commands_timed_out",
                "Device requests unanswered in time.",
                gateway.requests_timed_out,
            ),
            ("subscribers_dropped", "Streams closed for falling behind.", bus.get("dropped_subscribers", 0)),
            ("presence_flushes", "Batched writes of device facts.", presence.flushes),
            (
                "presence_flush_failures",
                "Failed batched writes of device facts.",
                presence.flush_failures,
            ),
        )
        for name, documentation, value in counters:
            yield CounterMetricFamily(f"devicecloud_{name}", documentation, value=value)
        labelled = (
            (
                "handshakes",
                "Device handshakes by outcome.",
                "outcome",
                {
                    "ok": gateway.handshakes_ok,
                    "failed": gateway.handshakes_failed,
                },
            ),
            (
                "events_in",
                "Events received, by source.",
                "source",
                {
                    "device": gateway.events_received,
                    "bus": bus.get("published", 0),
                },
            ),
            (
                "events_out",
                "Events handed on, by destination.",
                "destination",
                {
                    "device": gateway.events_sent,
                    "subscription": bus.get("delivered", 0),
                },
            ),
            (
                "events_dropped",
                "Events lost, by where.",
                "where",
                {
                    "device_link": gateway.events_dropped,
                    "subscription": bus.get("dropped_events", 0),
                },
            ),
            (
                "webhook_attempts",
                "Webhook requests by outcome.",
                "outcome",
                {kind: hooks.get(f"outcomes_{kind}", 0) for kind in ("sent", "retry", "failed", "skipped")},
            ),
        )
        for name, documentation, label, values in labelled:
            family = CounterMetricFamily(f"devicecloud_{name}", documentation, labels=(label,))
            for key, value in values.items():
                family.add_metric((key,), value)
            yield family
        yield from _udp_metrics(s.gateway.udp_totals())
        lag = SummaryMetricFamily(
            "devicecloud_bus_lag_seconds", "From an event's publication to its arrival at this node (NATS)."
        )
        lag.add_metric((), bus.get("received", 0), bus.get("lag_microseconds", 0) / 1e6)
        yield lag


class MeteredControl:
    """
    A `DeviceControl` that times each device request it forwards (see the module docstring).
    """

    def __init__(self, inner: DeviceControl, metrics: Metrics) -> None:
        self._inner = inner
        self._metrics = metrics

    def is_online(self, device_id: str) -> bool:
        return self._inner.is_online(device_id)

    async def call_function(self, device_id: str, name: str, argument: str, *, timeout: float) -> int:
        return await self._timed(
            "function", self._inner.call_function(device_id, name, argument, timeout=timeout)
        )

    async def read_variable(
        self, device_id: str, name: str, var_type: str | None, *, timeout: float
    ) -> VariableReading:
        return await self._timed(
            "variable", self._inner.read_variable(device_id, name, var_type, timeout=timeout)
        )

    async def ping(self, device_id: str, *, timeout: float) -> bool:
        started = time.perf_counter()
        answered = await self._inner.ping(device_id, timeout=timeout)  # False, never raises, when silent
        self._metrics.calls.labels("ping").observe(time.perf_counter() - started)
        self._metrics.call_outcomes.labels("ping", "ok" if answered else "offline").inc()
        return answered

    async def signal(self, device_id: str, on: bool, *, timeout: float) -> None:
        await self._timed("signal", self._inner.signal(device_id, on, timeout=timeout))

    async def refresh_describe(self, device_id: str, *, timeout: float) -> DeviceDescription:
        return await self._inner.refresh_describe(device_id, timeout=timeout)

    async def read_vitals(self, device_id: str, *, timeout: float) -> VitalsReading:
        return await self._inner.read_vitals(device_id, timeout=timeout)

    async def disconnect(self, device_id: str) -> None:
        await self._inner.disconnect(device_id)

    async def _timed(self, kind: str, request: Awaitable[T]) -> T:
        started = time.perf_counter()
        outcome = "error"
        try:
            result = await request
            outcome = "ok"
            return result
        except DeviceOffline:
            outcome = "offline"
            raise
        except DeviceTimedOut:
            outcome = "timeout"
            raise
        finally:
            self._metrics.calls.labels(kind).observe(time.perf_counter() - started)
            self._metrics.call_outcomes.labels(kind, outcome).inc()


def _udp_metrics(udp: UdpTotals | None) -> Iterable[Metric]:
    """The UDP/DTLS gateway's figures (issue 13), none when it does not run."""
    if udp is None:
        return
    gauges = (
        ("udp_sessions", "DTLS sessions on this node (handshaking or established).", udp.sessions),
        ("udp_devices_connected", "Devices with a live UDP/DTLS link to this node.", udp.online),
        ("dtls_sessions_kept", "DTLS sessions kept for devices that went silent (asleep).", udp.kept),
    )
    for name, documentation, value in gauges:
        yield GaugeMetricFamily(f"devicecloud_{name}", documentation, value=value)
    counters = (
        ("udp_datagrams_in", "UDP datagrams received.", udp.datagrams_in),
        ("udp_datagrams_out", "UDP datagrams sent.", udp.datagrams_out),
        ("dtls_cookies_sent", "HelloVerifyRequests sent (no state kept).", udp.cookies_sent),
        ("dtls_sessions_moved", "DTLS sessions that followed their CID to a new address.", udp.moved),
    )
    for name, documentation, value in counters:
        yield CounterMetricFamily(f"devicecloud_{name}", documentation, value=value)
    labelled = (
        (
            "dtls_handshakes",
            "DTLS sessions established: full handshakes, stored sessions resumed without one.",
            "kind",
            udp.handshakes,
        ),
        (
            "dtls_handshakes_failed",
            "DTLS handshakes that failed, by reason.",
            "reason",
            udp.handshakes_failed,
        ),
        ("udp_datagrams_dropped", "UDP datagrams dropped, by reason.", "reason", udp.datagrams_dropped),
        (
            "udp_retransmissions",
            "Retransmissions: DTLS flights, CoAP confirmables.",
            "layer",
            udp.retransmissions,
        ),
    )
    for name, documentation, label, values in labelled:
        family = CounterMetricFamily(f"devicecloud_{name}", documentation, labels=(label,))
        for key, value in values.items():
            family.add_metric((key,), value)
        yield family
