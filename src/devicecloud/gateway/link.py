"""
One device link: the short, dumb loop around a cloud-role `protocol.CoapSession` (a TCP `Connection` over a
socket, or a `protocol.udp.UdpSession` over one UDP peer of the gateway's datagram socket).

Theory of operation:
    The link's task repeats: read → ``receive_data(data, now)`` → drain events → await the service calls
    they need → write ``data_to_send()`` → re-arm one timer at ``get_timer()``. The timer is a clock
    callback (`Clock.call_at`), not a second task: it calls ``handle_timer(now)``, drains, writes and
    re-arms. Every protocol rule (ACKs, pings, counters, deadlines) lives in the Connection, not here.

    Draining is synchronous and sorts events in two kinds:

    - events that need no await are handled on the spot: a result resolves the future of the request
      waiting for it, ``TimeRequested`` is answered with the clock's wall time, ``ConnectionClosed`` closes
      the socket. Everything ``handle_timer`` can produce is of this kind, so the timer never waits for the
      task (which may be blocked in a read);
    - events that need services (``DeviceIdentified`` → key check, ``HelloReceived`` → connected,
      ``DescribeReceived`` → described, ``EventPublished`` → the ``on_event`` hook, ``SubscribeRequested``
      → the ``on_subscribe`` hook) are queued, and the task awaits them in order before it reads again.
      While it awaits, it does not read: a slow service slows that one device down and nothing else.

    Device events: the hook says whether the event was accepted (False = over the device's publish limit)
    or raises `InvalidInput` when it breaks the API's rules (too long, not UTF-8, …); a name that is not
    UTF-8 is refused here without asking. A CON event (published WITH_ACK) is answered only then: an empty
    ACK, or ACK 4.00 when refused; a refused NON event is simply dropped. Invalid events are counted, and
    the first of each link is logged at INFO (the rest at DEBUG: a device cannot flood the log). Without
    a hook every valid event is accepted.

    Device subscriptions: the link keeps the distinct subscriptions its device asked for (devices send them
    again after every Hello; a repeat changes nothing) and ONE feed covering all of them, opened by the
    ``on_subscribe`` hook; a new subscription opens a wider feed and closes the old one. One forwarder task
    per link (started with the first feed) reads the feed and sends each event once as a NON ``/e/``
    (``/E/`` when private) message, the name split into Uri-Path segments, Max-Age when the ttl is not 60.
    When the link ends, the feed is closed and the forwarder stopped. Events to devices are NON, lossy by
    protocol: a link that falls behind loses events, never its connection. The feed is lossy (the bus
    drops what does not fit its queue), and while `EVENT_WRITE_LIMIT` bytes wait in the socket's buffer
    (the device reads slowly) the forwarder drops events instead of writing them. Both are counted
    (``events_dropped``) and logged at most once per `DROP_LOG_INTERVAL` per link. A feed that ends by
    itself (the bus closed) closes the link. An event that cannot be sent (a name the protocol cannot
    carry, text that cannot be encoded) is skipped, logged and counted: one bad event never ends the link
    of a device that merely subscribed to it.

    Describe: after the Hello the link asks for the device's Describe, unless the device announces that it
    sends one itself (2.x, which also sends it again whenever its application registers something). Device
    OS before 1.5 runs the application's ``setup()``, where functions and variables are registered, only
    once the cloud connection is up, so that first answer may come too early. The link therefore asks
    again, on the clock, after `DESCRIBE_RETRY_DELAYS`: once when the Describe shows a Device OS before 1.5,
    and up to three times while it lists no function and no variable at all.

    A link reports ``device_connected`` once, after the Hello, and then ``device_disconnected`` exactly
    once when it ends, unless a newer link of the same device has taken its place (see `registry`). Once
    ``device_connected`` has returned it calls ``on_online`` (the server frees the handshake's slot).

    Any exception ends that link only: a `RemoteProtocolError` is the peer's fault (WARNING), anything
    else is ours (ERROR with the traceback). Each link logs one line when it ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import structlog

from devicecloud.domain.events import loggable
from devicecloud.errors import DeviceOffline, DeviceTimedOut, InvalidInput
from devicecloud.gateway.context import DeviceSubscription
from devicecloud.gateway.flash import DeviceFacts
from devicecloud.gateway.translate import describe_to_domain, hello_to_domain, system_module_version
from devicecloud.protocol import (
    NEED_DATA,
    AcceptDevice,
    AcknowledgeEvent,
    ChunkReceived,
    Close,
    CoapSession,
    Command,
    ConnectionClosed,
    ConnectionState,
    DescribeReceived,
    DeviceIdentified,
    DiagnosticsReceived,
    Event,
    EventPublished,
    FunctionReturned,
    GoodbyeReceived,
    HelloFlags,
    HelloReceived,
    LocalProtocolError,
    RejectDevice,
    RemoteProtocolError,
    RequestCompleted,
    RequestDescribe,
    RequestFailed,
    RequestTimedOut,
    SendEvent,
    SendTime,
    SubscribeRequested,
    SubscriptionScope,
    TimeRequested,
    UpdateFinished,
    UpdateReady,
    VariableType,
    VariableValue,
    load_device_public_key,
    vitals_payload,
)

if TYPE_CHECKING:
    from devicecloud.clock import Clock, TimerHandle
    from devicecloud.domain.events import CloudEvent
    from devicecloud.gateway.context import (
        EventFeed,
        LinkContext,
        LinkReader,
        LinkWriter,
        SubscriptionScopeName,
    )
    from devicecloud.gateway.flash import FlashJob

__all__ = ["Link"]

logger = structlog.get_logger("devicecloud.gateway")

READ_SIZE = 16 * 1024
# A device that stops reading while we keep writing is dropped rather than buffered without end.
MAX_WRITE_BUFFER = 256 * 1024
# Events that answer a request we sent; they resolve the future of whoever is waiting for that request.
_RESULTS = (
    RequestCompleted,
    RequestFailed,
    RequestTimedOut,
    FunctionReturned,
    VariableValue,
    DescribeReceived,
    DiagnosticsReceived,
    UpdateReady,
    ChunkReceived,
    UpdateFinished,
)
_AWAITED = (DeviceIdentified, HelloReceived, DescribeReceived)
# Events to a device are dropped, not written, while this much waits in its socket's write buffer: a
# slow reader loses events instead of reaching MAX_WRITE_BUFFER (which ends the link).
EVENT_WRITE_LIMIT = MAX_WRITE_BUFFER // 4
# Seconds (on the clock) between two log lines of one link about the events it dropped.
DROP_LOG_INTERVAL = 60.0
#: A link's timer that fires this close before its deadline counts as on time (the loop may run it early).
TIMER_SLACK = 0.001
# Device OS keeps a handful of subscriptions; more distinct ones than this from one link are ignored.
MAX_SUBSCRIPTIONS = 32
# Events to devices carry Max-Age only when their ttl differs from this.
DEFAULT_EVENT_TTL = 60
# The system module version of Device OS 1.5.0-rc.1: older releases run the application's setup() only
# once the cloud connection is up, after the Describe we ask for at once.
SETUP_BEFORE_CLOUD_SINCE = 1500
# Seconds (on the clock) from a Describe that may have come too early to asking again; one per retry.
DESCRIBE_RETRY_DELAYS = (3.0, 10.0, 30.0)
# Hello flags as plain ints: an int & IntFlag builds a flag member through the enum machinery (~1 µs).
_OTA_DONE = int(HelloFlags.OTA_UPGRADE_SUCCESSFUL)
_SENDS_DESCRIBE = int(HelloFlags.DEVICE_INITIATED_DESCRIBE)
_SCOPE_NAMES: dict[SubscriptionScope, SubscriptionScopeName] = {
    SubscriptionScope.ALL_DEVICES: "all",
    SubscriptionScope.MY_DEVICES: "mine",
    SubscriptionScope.DEVICE: "device",
}


_RESUBSCRIBING: set[asyncio.Task[None]] = set()


class Link:
    """
    One accepted socket and its protocol connection; `run()` is the link's task.
    """

    # Slots: a link per idle device, and with more than 30 attributes CPython 3.11 gives each instance a
    # full dict (~1.6 KB). ``__dict__`` keeps attributes added later working (in a dict made on first use).
    __slots__ = (
        "__dict__",
        "_asks_describe",
        "_closed",
        "_closed_locally",
        "_conn",
        "_connected",
        "_ctx",
        "_describe_retries",
        "_describe_timer",
        "_drops_logged_at",
        "_drops_unlogged",
        "_ending",
        "_feed",
        "_feed_lock",
        "_forwarder",
        "_got_bytes",
        "_heard",
        "_invalid_logged",
        "_log",
        "_on_online",
        "_reader",
        "_subscriptions",
        "_timer",
        "_timer_at",
        "_waiters",
        "_work",
        "_writer",
        "events_dropped",
        "facts",
        "functions",
        "hello_flags",
        "ip_address",
        "online_since",
        "update",
        "variables",
    )

    def __init__(
        self,
        ctx: LinkContext,
        conn: CoapSession,
        reader: LinkReader,
        writer: LinkWriter,
        ip_address: str | None,
        on_online: Callable[[], None] | None = None,
    ) -> None:
        self.ip_address = ip_address
        self._on_online = on_online
        #: What the device's last Describe said (``None`` until it says); parts are kept across partial ones.
        self.functions: tuple[str, ...] | None = None
        self.variables: Mapping[str, VariableType | int] | None = None
        #: The Hello's flags (0 before it) and when it came (the clock's monotonic time): what vitals need.
        self.hello_flags = 0
        self.online_since: float | None = None
        self._ctx = ctx
        self._conn = conn
        self._reader = reader
        self._writer = writer
        self._waiters: dict[int, asyncio.Future[Event]] = {}
        self._work: list[Event] = []  # a list: an empty deque costs ~600 bytes per idle link
        self._timer: TimerHandle | None = None
        self._timer_at: float | None = None
        self._connected = False  # device_connected was (or is being) reported: the end must be reported
        self._heard = False  # bytes arrived since device_heard was last reported
        self._got_bytes = False  # the peer ever sent anything (health checks and scanners do not)
        self._closed: ConnectionClosed | None = None
        self._closed_locally = False
        self._subscriptions: list[DeviceSubscription] = []
        self._feed: EventFeed | None = None
        self._forwarder: asyncio.Task[None] | None = None
        self._feed_lock: asyncio.Lock | None = None  # made on the first Subscribe
        #: Events this link's device lost because the link fell behind (see the module doc).
        self.events_dropped = 0
        self._drops_unlogged = 0
        self._drops_logged_at: float | None = None
        self._ending = False
        self._invalid_logged = False  # the link's first invalid event is logged at INFO, the rest at DEBUG
        self._asks_describe = False  # the link asked for the Describe (the device does not volunteer it)
        self._describe_retries = 0
        self._describe_timer: TimerHandle | None = None
        self._log = logger.bind(ip=ip_address)
        #: What an update needs to know about the device, and the update under way (see `flash`).
        self.facts = DeviceFacts()
        self.update: FlashJob | None = None

    @property
    def connection(self) -> CoapSession:
        """The protocol connection (an update job drives it beside the link)."""
        return self._conn

    @property
    def writer(self) -> LinkWriter:
        return self._writer

    @property
    def device_id(self) -> str | None:
        """
        The id the device gave in the handshake (``None`` before).
        """
        return self._conn.device_id

    @property
    def clock(self) -> Clock:
        """
        The gateway's clock (requests' deadlines and round trips are measured on it).
        """
        return self._ctx.clock

    @property
    def online(self) -> bool:
        """
        True while the session is up and reported: requests can be sent.
        """
        return self._connected and self._conn.state is ConnectionState.ESTABLISHED

    # ------------------------------------------------------------------------------------------ the task

    async def run(self) -> None:
        """
        Serve the socket until either side closes it; never raises except `CancelledError`.
        """
        try:
            self._transmit()  # the nonce
            while True:
                await self._do_work()
                if self._conn.state is ConnectionState.CLOSED:
                    break
                try:
                    data = await self._reader.read(READ_SIZE)
                except OSError:  # reset by peer and the like: the same as EOF for us
                    data = b""
                self._heard = self._heard or bool(data)
                self._got_bytes = self._got_bytes or bool(data)
                # On RemoteProtocolError the connection is closed; ConnectionClosed(error=True) says why.
                with contextlib.suppress(RemoteProtocolError):
                    self._conn.receive_data(data, self._ctx.clock.monotonic())
                self._pump()
                if not self._work:
                    self._flush()
                    self._rearm()
                # Else the handlers run first and one write carries the replies and what they send (a Hello's
                # answer and the Describe request go together): `_do_work` transmits when it is done.
        except asyncio.CancelledError:
            self.close("gateway stopping")
            raise
        except Exception:
            self._log.exception("device link failed", device_id=self.device_id)
            self.close("internal error")
        finally:
            await self._finish()

    async def _do_work(self) -> None:
        worked = bool(self._work)
        while self._work:
            event = self._work.pop(0)
            if isinstance(event, DeviceIdentified):
                await self._check_key(event)
            elif isinstance(event, HelloReceived):
                await self._came_online(event)
            elif isinstance(event, DescribeReceived):
                await self._report_describe(event)
            elif isinstance(event, EventPublished):
                await self._publish(event)
            elif isinstance(event, SubscribeRequested):
                await self._subscribe(event)
        if worked:
            self._transmit()
        if self._heard and self._connected and self.device_id:
            self._heard = False
            self._ctx.sessions.device_heard(self.device_id)  # in memory, never waits: no lock needed

    async def _check_key(self, event: DeviceIdentified) -> None:
        async with self._ctx.registry.serial(event.device_id):
            der = await self._ctx.sessions.check_device_key(
                event.device_id, event.offered_public_key_der, self.ip_address
            )
        if self._conn.state is not ConnectionState.AWAIT_DEVICE_KEY:
            return  # the handshake deadline passed while we asked
        command: AcceptDevice | RejectDevice = RejectDevice("unknown device")
        if der is not None:
            try:
                command = AcceptDevice(load_device_public_key(der))
            except LocalProtocolError:
                self._log.error("the stored device key is unusable", device_id=event.device_id)
                command = RejectDevice("unusable device key")
        # Bytes that arrived behind the handshake may be bad: RemoteProtocolError, ConnectionClosed says so.
        with contextlib.suppress(RemoteProtocolError):
            self._conn.send(command, self._ctx.clock.monotonic())
        self._transmit()

    async def _came_online(self, event: HelloReceived) -> None:
        device_id = self.device_id
        if device_id is None or self._conn.state is ConnectionState.CLOSED:
            return  # the link died in the same breath as its Hello: it never was online
        self._connected = True
        self.facts.on_hello(event)
        self.hello_flags, self.online_since = event.flags, self._ctx.clock.monotonic()
        self._ctx.counters.handshakes_ok += 1
        if self._ctx.registry.claim(device_id, self) is not None:
            self._ctx.counters.replaced += 1
            self._log.info("device reconnected; its older link is closed", device_id=device_id)
        async with self._ctx.registry.serial(device_id):
            await self._ctx.sessions.device_connected(device_id, self.ip_address, hello_to_domain(event))
        if self._on_online is not None:
            self._on_online()
        self._heard = False  # connected means heard now: the Hello's own bytes need no second report
        self._log = self._log.bind(device_id=device_id)
        self._log.debug("device link up", platform_id=event.platform_id, flags=event.flags)
        if event.flags & _OTA_DONE:
            self._log.info("device back after an over-the-air update")
        # A 2.x device that announces device-initiated Describe sends it by itself.
        wants_request = not event.flags & _SENDS_DESCRIBE
        if self._ctx.describe_on_connect and wants_request and self.online:
            self._asks_describe = True
            # Written with the Hello's answer: `_do_work`, which called us, transmits once it is done.
            self._conn.send(RequestDescribe(), self._ctx.clock.monotonic())

    async def _report_describe(self, event: DescribeReceived) -> None:
        if self._connected and self.device_id:
            async with self._ctx.registry.serial(self.device_id):
                description = describe_to_domain(event.description)
                await self._ctx.sessions.device_described(self.device_id, description)
            self._plan_redescribe(system_module_version(event.description.modules))

    def _plan_redescribe(self, version: int | None) -> None:
        """
        Ask for the Describe again later if this one may have come before the application registered
        (``version``: its system modules', see `system_module_version`).
        """
        retries = self._describe_retries
        if (
            not self._asks_describe
            or self._describe_timer is not None
            or retries >= len(DESCRIBE_RETRY_DELAYS)
        ):
            return
        empty = not self.functions and not self.variables
        before_setup = version is not None and version < SETUP_BEFORE_CLOUD_SINCE and retries == 0
        if empty or before_setup:
            self._describe_retries += 1
            deadline = self._ctx.clock.monotonic() + DESCRIBE_RETRY_DELAYS[retries]
            self._describe_timer = self._ctx.clock.call_at(deadline, self._redescribe)

    def _redescribe(self) -> None:
        self._describe_timer = None
        if not self.online:
            return
        self._log.debug("asking for the Describe again", retry=self._describe_retries)
        try:
            self._conn.send(RequestDescribe(), self._ctx.clock.monotonic())
            self._transmit()
        except Exception:  # a timer callback: nobody above would see it
            self._log.exception("asking the device for its Describe again failed")
            self._writer.transport.abort()

    async def _publish(self, event: EventPublished) -> None:
        """
        Hand a device's event to the hook; answer a CON event with the hook's verdict.
        """
        self._ctx.counters.events_received += 1
        accepted, invalid = True, None if event.name_utf8 else "The event name is not UTF-8"
        if invalid is None and self._ctx.on_event is not None and self.device_id and self._connected:
            try:
                accepted = await self._ctx.on_event(self.device_id, event)
            except InvalidInput as exc:
                invalid = exc.description
        if invalid is not None:
            accepted = False
            self._ctx.counters.events_invalid += 1
            log = self._log.debug if self._invalid_logged else self._log.info
            self._invalid_logged = True
            log("device event refused", reason=invalid, event_name=loggable(event.name), size=_size(event))
        elif not accepted and _debugging(self._log):
            self._log.debug("device event over the publish limit", event_name=loggable(event.name))
        if not accepted:
            self._ctx.counters.events_refused += 1
        if event.request_id is not None and self._conn.state is ConnectionState.ESTABLISHED:
            self._conn.send(AcknowledgeEvent(event.request_id, accepted), self._ctx.clock.monotonic())
            self._transmit()

    async def _subscribe(self, event: SubscribeRequested) -> None:
        """
        Widen the link's feed to a new subscription; a repeated one changes nothing.
        """
        if self._ctx.on_subscribe is None or self.device_id is None or not self._connected or self._ending:
            return
        wanted = DeviceSubscription(
            event.prefix,
            _SCOPE_NAMES[event.scope],
            event.device_id if event.scope is SubscriptionScope.DEVICE else None,
        )
        if wanted in self._subscriptions:
            return
        if len(self._subscriptions) >= MAX_SUBSCRIPTIONS:
            self._log.warning("too many device subscriptions; ignored", prefix=event.prefix)
            return
        if await self._open_feed((*self._subscriptions, wanted)):
            self._log.debug("device subscribed", prefix=event.prefix, scope=wanted.scope)

    def resubscribe(self) -> None:
        """
        The device changed hands: open its feed again under the new owner's visibility (the same
        subscriptions), as the hosted cloud decides who receives what when an event is sent. A no-op for a
        link with no subscription.
        """
        if self._subscriptions and not self._ending:
            task = asyncio.get_running_loop().create_task(self._resubscribe())
            _RESUBSCRIBING.add(task)  # a strong reference until it is done
            task.add_done_callback(_RESUBSCRIBING.discard)

    async def _resubscribe(self) -> None:
        try:
            await self._open_feed(tuple(self._subscriptions))
        except Exception:  # a task of its own: nobody above would see it
            self._log.exception("subscribing again for the device's new owner failed")
            self.close("internal error")

    async def _open_feed(self, subscriptions: tuple[DeviceSubscription, ...]) -> bool:
        """
        Replace the link's feed with one for ``subscriptions``; False when the link ended meanwhile. One at a
        time (a Subscribe and an owner change may overlap), so the last feed opened has every subscription.
        """
        device_id, hook = self.device_id, self._ctx.on_subscribe
        if device_id is None or hook is None:
            return False
        if self._feed_lock is None:
            self._feed_lock = asyncio.Lock()
        async with self._feed_lock:
            subscriptions = (*subscriptions, *(s for s in self._subscriptions if s not in subscriptions))
            feed = await hook(device_id, subscriptions)
            if self._ending or self._conn.state is ConnectionState.CLOSED:
                if feed is not None:
                    feed.close("link ended")
                return False
            self._subscriptions[:] = subscriptions
            # No await between the provider's subscribe and this swap: nothing is lost or sent twice. The
            # forwarder drains what the old feed still holds, then moves on to the new one.
            old, self._feed = self._feed, feed
            if old is not None:
                old.close("replaced by a feed for more subscriptions")
            # A feed that can call the link back needs no task; one that cannot (or a forwarder already
            # running, which moves on to the new feed by itself) is iterated.
            if feed is not None and self._forwarder is None and not self._listen(feed):
                self._forwarder = asyncio.create_task(self._forward(), name=f"device-events-{device_id}")
            return True

    async def _forward(self) -> None:
        """
        The link's one forwarder: feed → device, until the feed is gone.
        """
        try:
            while (feed := self._feed) is not None:
                known = 0  # the feed's drops counted so far (they happen while its queue is full)
                async for event in feed:
                    known = self._count_feed_drops(feed, known)
                    self._deliver(event)
                self._count_feed_drops(feed, known)
                if feed is self._feed:  # it ended by itself: the bus closed it
                    self._feed = None
                    self._log.warning("device event feed dropped", reason=feed.closed_reason)
                    self.close("the device's event feed was dropped")
        except Exception:
            self._log.exception("forwarding events to the device failed", device_id=self.device_id)
            self.close("internal error")
        finally:
            self._forwarder = None

    def _listen(self, feed: EventFeed) -> bool:
        known = 0  # the feed's drops counted so far

        def on_event(event: CloudEvent) -> None:
            nonlocal known
            known = self._count_feed_drops(feed, known)
            self._feed_event(event)

        return feed.listen(on_event, self._feed_ended)

    def _feed_event(self, event: CloudEvent) -> None:
        """
        A listened feed's event (on the loop, in order; a replaced feed's last events come before the new's).
        """
        if self._ending:
            return
        try:
            self._deliver(event)
        except Exception:
            self._log.exception("forwarding events to the device failed", device_id=self.device_id)
            self.close("internal error")

    def _feed_ended(self, reason: str) -> None:
        feed = self._feed
        if feed is None or feed.closed_reason is None or self._ending:
            return  # we closed it ourselves, or it was replaced
        self._feed = None
        self._log.warning("device event feed dropped", reason=reason)
        self.close("the device's event feed was dropped")

    def _count_feed_drops(self, feed: EventFeed, known: int) -> int:
        if feed.dropped > known:
            self._drop(feed.dropped - known)
        return feed.dropped

    def _drop(self, count: int) -> None:
        """
        Count events the device lost; log at most one line per `DROP_LOG_INTERVAL`, with the sum.
        """
        self.events_dropped += count
        self._ctx.counters.events_dropped += count
        self._drops_unlogged += count
        now = self._ctx.clock.monotonic()
        if self._drops_logged_at is None or now - self._drops_logged_at >= DROP_LOG_INTERVAL:
            self._log_drops()
            self._drops_logged_at = now

    def _log_drops(self) -> None:
        self._log.warning(
            "events to the device dropped: its link fell behind",
            dropped=self._drops_unlogged,
            total=self.events_dropped,
        )
        self._drops_unlogged = 0

    def _deliver(self, event: CloudEvent) -> None:
        if self._writer.transport.get_write_buffer_size() > EVENT_WRITE_LIMIT:
            self._drop(1)  # NON: a slow reader loses events, not its link
            return
        max_age = event.ttl if event.ttl != DEFAULT_EVENT_TTL else None
        try:
            sent = self.send_event(
                event.name, event.data, private=not event.public, max_age=max_age, split_path=True
            )
        except (LocalProtocolError, ValueError) as exc:  # UnicodeEncodeError included: skip this event only
            self._ctx.counters.events_undeliverable += 1
            self._log.warning(
                "event not deliverable to the device", event_name=loggable(event.name), reason=str(exc)
            )
            return
        if sent:
            self._ctx.counters.events_sent += 1

    async def _stop_forwarding(self) -> None:
        self._ending = True
        feed, self._feed = self._feed, None
        if feed is not None:
            feed.close("link ended")
        task = self._forwarder
        if task is not None and task is not asyncio.current_task():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        if self._drops_unlogged:  # the drops since the last line are not lost from the log
            self._log_drops()

    async def _finish(self) -> None:
        self.close("link ended")
        await self._stop_forwarding()
        for timer in (self._timer, self._describe_timer):
            if timer is not None:
                timer.cancel()
        self._timer = self._describe_timer = None
        device_id = self.device_id
        current = device_id is not None and self._ctx.registry.release(device_id, self)
        self._log_end()
        try:
            if current and self._connected and device_id is not None:
                async with self._ctx.registry.serial(device_id):
                    await self._ctx.sessions.device_disconnected(device_id)
        except Exception:
            self._log.exception("reporting the device offline failed", device_id=device_id)
        finally:
            with contextlib.suppress(OSError):  # a reset socket is closed all the same
                await self._writer.wait_closed()

    def _log_end(self) -> None:
        closed = self._closed
        reason, device_id = (closed.reason if closed else "unknown"), self.device_id
        if not self._connected:
            self._ctx.counters.handshakes_failed += 1
        if closed is not None and closed.error:
            self._log.warning("device broke the protocol; link closed", reason=reason, device_id=device_id)
        elif not self._connected:
            quiet = self._closed_locally or not self._got_bytes
            log = self._log.debug if quiet else self._log.warning
            log("device handshake failed", reason=reason, device_id=device_id)
        else:
            self._log.debug("device link closed", reason=reason)

    # ------------------------------------------------------------------------------------------ sync core

    def transmit(self) -> None:
        """
        After anything that may have changed the connection: drain, write, re-arm (aioquic's transmit).
        """
        self._transmit()

    def _transmit(self) -> None:
        self._pump()
        self._flush()
        self._rearm()

    def _pump(self) -> None:
        """
        Drain the connection's events; handle what needs no await, queue the rest for the task.
        """
        while (event := self._conn.next_event()) is not NEED_DATA:
            if self.update is not None and isinstance(event, Event) and self.update.offer(event):
                continue  # an answer to the update's own requests
            if isinstance(event, _RESULTS) and event.request_id is not None:
                waiter = self._waiters.pop(event.request_id, None)
                if waiter is not None and not waiter.done():
                    waiter.set_result(event)
                elif isinstance(event, RequestFailed | RequestTimedOut):
                    self._log.debug("unclaimed request result", result=repr(event))
            if isinstance(event, _AWAITED):
                self._work.append(event)
            if isinstance(event, DescribeReceived):
                self.facts.on_describe(event.description)
                described = event.description
                self.functions = described.functions if described.functions is not None else self.functions
                self.variables = described.variables if described.variables is not None else self.variables
            elif isinstance(event, TimeRequested):
                if self._conn.state is ConnectionState.ESTABLISHED:
                    unix_time = int(self._ctx.clock.now().timestamp())
                    self._conn.send(SendTime(event.request_id, unix_time), self._ctx.clock.monotonic())
            elif isinstance(event, EventPublished):
                self.facts.on_event(event)
                if _debugging(self._log):  # the name is made loggable only for a line that is written
                    self._log.debug(
                        "device published", event_name=loggable(event.name), private=event.private
                    )
                self._work.append(event)  # the hook decides; a CON event is ACKed after it
            elif isinstance(event, SubscribeRequested):
                if _debugging(self._log):
                    self._log.debug("device subscribes", prefix=event.prefix, scope=event.scope.name.lower())
                if self._ctx.on_subscribe is not None:
                    self._work.append(event)
            elif isinstance(event, DiagnosticsReceived) and event.request_id is None:
                # Particle.publishVitals(): in memory at once, written behind by the service (decision 0013).
                if self._connected and self.device_id:
                    vitals = vitals_payload(event.report).get("device", {})
                    self._ctx.sessions.device_vitals(self.device_id, vitals)
            elif isinstance(event, GoodbyeReceived):
                self._log.debug("device message", message=repr(event))
            elif isinstance(event, ConnectionClosed):
                self._closed = event
                if event.error:
                    self._ctx.counters.protocol_errors += 1

    def _flush(self) -> None:
        """
        Write what the connection has to send; close the socket once the connection is closed.
        """
        transport = self._writer.transport
        while (data := self._conn.data_to_send()) and not transport.is_closing():  # UDP: one datagram each
            transport.write(data)
            if transport.get_write_buffer_size() > MAX_WRITE_BUFFER:
                self.close("the device does not read what we send")
                return
        if self._conn.state is ConnectionState.CLOSED and not transport.is_closing():
            transport.close()

    def _rearm(self) -> None:
        deadline = self._conn.get_timer()
        if deadline is None:
            if self._timer is not None:
                self._timer.cancel()
            self._timer = self._timer_at = None
            return
        if self._timer is not None and self._timer_at is not None and self._timer_at <= deadline:
            # Every message received moves the keep-alive deadline later: the armed timer stays, and when it
            # fires it arms the later one. One timer per keep-alive period instead of one per message.
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer, self._timer_at = self._ctx.clock.call_at(deadline, self._on_timer), deadline

    def _on_timer(self) -> None:
        self._timer = self._timer_at = None
        try:
            deadline = self._conn.get_timer()
            if deadline is not None:
                now = self._ctx.clock.monotonic()
                if deadline - now > TIMER_SLACK:  # moved later since this timer was armed
                    self._rearm()
                    return
                # A timer may fire a hair early; the deadline it was set for has come by definition.
                self._conn.handle_timer(max(deadline, now))
            self._transmit()
        except Exception:
            self._log.exception("device link timer failed", device_id=self.device_id)
            self._writer.transport.abort()

    # ------------------------------------------------------------------------------------------ commands

    def close(self, reason: str) -> None:
        """
        Close the link (a no-op when closed); pending requests fail and the task ends soon after.
        """
        if self._conn.state is not ConnectionState.CLOSED:
            self._closed_locally = True
            self._conn.send(Close(reason), self._ctx.clock.monotonic())
        self._transmit()  # also closes the socket and drops the timer of a connection closed otherwise

    async def request(self, command: Command, *, timeout: float) -> Event:
        """
        Send a request and wait for the event that answers it.

        Args:
            command: a command that expects an answer (``send`` returns a request id for it).
            timeout: seconds on the gateway's clock.

        Returns:
            The result event; it may be ``RequestFailed``.

        Raises:
            DeviceOffline: the link is not up.
            DeviceTimedOut: no answer within ``timeout`` (or the protocol's own request deadline).
        """
        if not self.online:
            raise DeviceOffline("Device is not connected")
        now = self._ctx.clock.monotonic()
        request_id = self._conn.send(command, now)
        if request_id is None:
            raise LocalProtocolError(f"{type(command).__name__} expects no answer")
        self._ctx.counters.requests += 1
        waiter: asyncio.Future[Event] = asyncio.get_running_loop().create_future()
        self._waiters[request_id] = waiter
        self._transmit()

        def expire() -> None:
            if not waiter.done():
                waiter.set_result(RequestTimedOut(request_id))

        timer = self._ctx.clock.call_at(now + timeout, expire)
        try:
            result = await waiter
        finally:
            timer.cancel()
            self._waiters.pop(request_id, None)
        if isinstance(result, RequestTimedOut):
            self._ctx.counters.requests_timed_out += 1
            raise DeviceTimedOut("Timed out.")
        return result

    def send_event(
        self,
        name: str,
        data: str | bytes | None = None,
        *,
        private: bool = False,
        max_age: int | None = None,
        split_path: bool = False,
    ) -> bool:
        """
        Deliver an event to the device (fire and forget: devices do not ACK events over TCP).

        Returns:
            False when the link is not up.
        """
        if not self.online:
            return False
        command = SendEvent(name, data, private=private, max_age=max_age, split_path=split_path)
        self._conn.send(command, self._ctx.clock.monotonic())
        self._transmit()
        return True


def _debugging(log: Any) -> bool:
    """
    Whether ``log`` writes DEBUG lines (a filtering logger says; any other is asked to write them).
    """
    enabled = getattr(log, "is_enabled_for", None)
    return enabled is None or bool(enabled(logging.DEBUG))


def _size(event: EventPublished) -> int:
    return len(event.data) if event.data is not None else 0
