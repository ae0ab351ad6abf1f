"""
:class:`VirtualDevice`: a Particle device in software, speaking the TCP protocol to a devicecloud gateway.

Theory of operation:
    The device object outlives its connections. A :class:`~.connector.Connector` keeps it connected
    (reconnecting with backoff); each connection is a :class:`~.link.DeviceLink` around a fresh protocol
    ``Connection``. What the device *is* stays here across links: its identity and Hello, its variables and
    functions (:mod:`.application`), its subscriptions and counters. After every Hello it does what Device
    OS does: 2.x style volunteers its Describe, then every subscription is sent again. Requests from the
    cloud are answered by the :class:`~.responder.Responder`; requests *to* the cloud (publish, subscribe,
    ping, time) are methods here and need an established session (else :class:`NotConnectedError`).

    Late setup (``late_setup``): as on Device OS 0.x, where the application's ``setup()`` registers its
    functions and variables only once the cloud connection is up, the cloud sees none of them at first (an
    empty Describe, 4.04 to calls). The application starts right after the first Describe it answers, or
    ``late_setup`` seconds after the first session came up, whichever is first; once per device object,
    as ``setup()`` runs once per boot. A 2.x-style device then volunteers its Describe; a 0.x one waits to
    be asked.

    Logging (structlog, logger ``devicecloud.virtualdevice``): INFO for what a user of a demo device wants
    to see (connected, function called, variable read, signal, published, event received), WARNING for a
    misbehaving peer or a failing connection, DEBUG for the rest.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from types import TracebackType
from typing import Literal, Self

import structlog
from cryptography.hazmat.primitives.asymmetric import ec

from devicecloud.protocol import (
    CoapSession,
    Command,
    Connection,
    DescribeFlags,
    DescribeRequested,
    DeviceHello,
    Event,
    HelloFlags,
    LocalProtocolError,
    Ping,
    PublishEvent,
    RandomBytes,
    RequestCompleted,
    RequestTime,
    ResponseStyle,
    Role,
    SendDescribe,
    ServerHelloReceived,
    Subscribe,
    SubscriptionScope,
    TimeReceived,
    Timing,
    VariableType,
    build_describe,
)
from devicecloud.protocol.dtls import ClientConfig, DtlsClient, SessionState, ecdsa_signer
from devicecloud.protocol.system_describe import SYSTEM_DESCRIBE_CONTENT_FORMAT, encode_system_describe
from devicecloud.protocol.udp import UDP_DEVICE_TIMING, UdpSession
from devicecloud.virtualdevice.application import (
    CloudFunction,
    CloudFunctions,
    CloudVariables,
    VariableSource,
)
from devicecloud.virtualdevice.connector import Connector
from devicecloud.virtualdevice.demo import Tinker, install_demo
from devicecloud.virtualdevice.identity import (
    PrivateKeyLike,
    PublicKeyLike,
    as_private_key,
    as_public_key,
    normalize_device_id,
)
from devicecloud.virtualdevice.link import DeviceLink, RequestResult
from devicecloud.virtualdevice.responder import Responder, shorten
from devicecloud.virtualdevice.support import (
    Backoff,
    Counters,
    DeviceStatistics,
    EventHandler,
    NotConnectedError,
    RequestError,
    Subscription,
)
from devicecloud.virtualdevice.updates import V3_MAX_FILE, AppliedUpdate, UpdateBehaviour, Updater
from devicecloud.virtualdevice.vitals import Vitals

__all__ = [
    "MAX_EVENT_DATA",
    "SYSTEM_MODULE_VERSIONS",
    "VIRTUAL_DEVICE_TIMING",
    "VirtualDevice",
    "system_modules",
]

logger = structlog.get_logger("devicecloud.virtualdevice")

#: Device OS 2.x limits on an event's name and data and on a function argument.
MAX_EVENT_NAME = 64
MAX_EVENT_DATA = 622
MAX_FUNCTION_ARGUMENT = 622

#: Device OS 0.7 keep-alive (ping after 15 s of silence), plus 2.x's "no answer 10 s after the ping = dead
#: link" so a reconnecting device notices a vanished server.
VIRTUAL_DEVICE_TIMING = Timing(
    handshake_timeout=30.0, request_timeout=30.0, ping_after=15.0, idle_timeout=25.0
)

#: The system module version a device's Describe reports by default, per response style: Device OS 2.3.0
#: (2301) for 2.x, 0.7.0 (207) for 0.x, both real Photon releases. The cloud shows the release as
#: ``system_firmware_version``.
SYSTEM_MODULE_VERSIONS = {ResponseStyle.SEPARATE: 2301, ResponseStyle.PIGGYBACK: 207}
#: The system version of an ``ota_v3`` device (Device OS 5.7.0; OTA v3 exists from 3.0.0).
OTA_V3_SYSTEM_VERSION = 5700


def system_modules(version: int) -> tuple[dict[str, object], ...]:
    """
    A Describe module list with one system part at ``version`` (module function ``"s"``, index 1), in the
    shape Device OS writes; the other modules a real device lists (bootloader, user part) are left out.
    """
    return ({"f": "s", "n": "1", "v": version, "d": []},)


class VirtualDevice:
    """
    A virtual Particle device (Photon by default) connected to a devicecloud device gateway.

    Args:
        host: the gateway's address.
        port: its TCP port.
        device_id: 24 hex characters (or 12 bytes).
        device_key: the RSA-1024 device private key (object, PEM or DER).
        server_public_key: the server's RSA-2048 public key (object, PEM or DER).
        platform_id: 6 Photon, 8 P1, 0 Core, …
        product_id: the Hello's product id (default: the platform id, as non-product firmware sends).
        product_firmware_version: the Hello's firmware version (0xFFFF = unset).
        response_style: ``SEPARATE`` (Device OS 1.5+/2.x, with a device-initiated Describe) or ``PIGGYBACK``
            (0.x–1.4).
        demo: install Tinker's functions and the demo variables (see :mod:`~.demo`).
        reconnect: connect again after a session ends (with ``backoff``); off = one connection only.
        backoff: the reconnect delays.
        timing: protocol timeouts and keep-alive (default :data:`VIRTUAL_DEVICE_TIMING`).
        connect_timeout: seconds allowed for the TCP connect.
        max_argument_length: longer function arguments are refused with 4.00, as 2.x does.
        modules: the Describe's ``"m"`` module list (default: one system part of the style's release, see
            :data:`SYSTEM_MODULE_VERSIONS`; ``()`` for none).
        late_setup: register the application only after connecting, as Device OS 0.x does (see above);
            ``None`` = registered from the start.
        updates: how over-the-air updates are taken (faults for tests; see :mod:`~.updates`).
        firmware_path: where an applied update's image is written (None = memory only).
        hardware_limits: (max binary size, OTA chunk size) to announce after each Hello as Device OS ≤ 2.x
            does (``spark/hardware/max_binary`` and ``…/ota_chunk_size`` events); None = not announced.
        diagnostics: announce diagnostics in the Hello (0x02, Device OS 0.8+) and answer the metrics
            Describe with :attr:`vitals`; off = a Device OS 0.7 device (its metrics Describe is ``{}``).
        now: the clock for protocol deadlines (monotonic seconds).
        random_bytes: the protocol's randomness source.
        protocol: ``"tcp"`` (RSA keys, port 5683) or ``"udp"`` (a Gen3 device: CoAP over DTLS to port 5684,
            EC P-256 ``device_key`` and ``server_public_key`` objects; e.g. ``platform_id=12``, an Argon).
        ota_v3: a Gen3 device on Device OS ≥ 3.0 (UDP only): its Hello carries flag 0x80 and the ≥ 3.0
            limits (system version, max binary size, OTA chunk size 512), and it takes updates over OTA
            protocol v3 only; its Describe's system part is that version (`OTA_V3_SYSTEM_VERSION`).
        system_describe: ``"json"``, or ``"protobuf"`` as Device OS ≥ 5.5 sends it: the system Describe
            apart from the application's, as a ``SystemDescribe`` message with Content-Format 42.
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        device_id: str | bytes,
        device_key: PrivateKeyLike | ec.EllipticCurvePrivateKey,
        server_public_key: PublicKeyLike | ec.EllipticCurvePublicKey,
        platform_id: int = 6,
        product_id: int | None = None,
        product_firmware_version: int = 0xFFFF,
        response_style: ResponseStyle = ResponseStyle.SEPARATE,
        demo: bool = False,
        reconnect: bool = True,
        backoff: Backoff | None = None,
        timing: Timing | None = None,
        connect_timeout: float = 10.0,
        max_argument_length: int = MAX_FUNCTION_ARGUMENT,
        modules: tuple[object, ...] | None = None,
        late_setup: float | None = None,
        updates: UpdateBehaviour | None = None,
        firmware_path: Path | None = None,
        hardware_limits: tuple[int, int] | None = None,
        diagnostics: bool = True,
        now: Callable[[], float] = time.monotonic,
        random_bytes: RandomBytes = os.urandom,
        protocol: Literal["tcp", "udp"] = "tcp",
        ota_v3: bool = False,
        system_describe: Literal["json", "protobuf"] = "json",
    ) -> None:
        self.host, self.port = host, port
        self.device_id = normalize_device_id(device_id)
        self.protocol = protocol
        self.system_describe = system_describe
        self._ec_key: ec.EllipticCurvePrivateKey | None = None
        #: UDP: the DTLS session kept over a sleep; the next connection resumes it without a handshake.
        self.kept_session: SessionState | None = None
        self._ec_server_key: ec.EllipticCurvePublicKey | None = None
        if protocol == "udp":
            if not isinstance(device_key, ec.EllipticCurvePrivateKey):
                raise ValueError("a UDP device needs an EC P-256 device key object")
            if not isinstance(server_public_key, ec.EllipticCurvePublicKey):
                raise ValueError("a UDP device needs the server's EC P-256 public key object")
            self._ec_key, self._ec_server_key = device_key, server_public_key
        else:
            self._device_key = as_private_key(device_key)  # type: ignore[arg-type]
            if self._device_key.key_size != 1024:
                raise ValueError(f"device keys are RSA-1024, not {self._device_key.key_size} bits")
            self._server_key = as_public_key(server_public_key)  # type: ignore[arg-type]
        self.platform_id = platform_id
        flags = HelloFlags.DEVICE_INITIATED_DESCRIBE if response_style is ResponseStyle.SEPARATE else 0
        if diagnostics:
            flags |= HelloFlags.DIAGNOSTICS_SUPPORT
        if ota_v3 and protocol != "udp":
            raise ValueError("OTA protocol v3 is a UDP device's")
        self.ota_v3 = ota_v3
        if ota_v3:
            flags |= HelloFlags.OTA_PROTOCOL_V3
        self.diagnostics = diagnostics
        #: What the device reports when the cloud asks for its vitals (tests may change any figure).
        self.vitals = Vitals(platform_id=platform_id)
        self.hello = DeviceHello(
            product_id=platform_id if product_id is None else product_id,
            product_firmware_version=product_firmware_version,
            flags=int(flags),
            platform_id=platform_id,
            limits=(OTA_V3_SYSTEM_VERSION, V3_MAX_FILE, 512) if ota_v3 else None,
        )
        self.response_style = response_style
        self.timing = timing or VIRTUAL_DEVICE_TIMING
        #: Over UDP: Device OS's keep-alive (25 s on Wi-Fi) unless ``timing`` says otherwise.
        self.udp_timing = timing or UDP_DEVICE_TIMING
        default_system = OTA_V3_SYSTEM_VERSION if ota_v3 else SYSTEM_MODULE_VERSIONS[response_style]
        self.modules = modules if modules is not None else system_modules(default_system)
        self._now = now
        self._born = now()
        self._random_bytes = random_bytes
        self.log = logger.bind(device_id=self.device_id)
        self.counters = Counters()
        self._connector = Connector(
            host=host,
            port=port,
            new_connection=self._new_connection,
            owner=self,
            reconnect=reconnect,
            backoff=backoff or Backoff(),
            connect_timeout=connect_timeout,
            now=now,
            counters=self.counters,
            log=self.log,
        )
        self._describe_pending = False
        self.variables = CloudVariables()
        self.functions = CloudFunctions()
        self.variables.on_change = self.functions.on_change = self._app_changed
        self.subscriptions: list[Subscription] = []
        self.tinker: Tinker | None = install_demo(self.functions, self.variables) if demo else None
        self.late_setup = late_setup
        self._setup_timer: asyncio.TimerHandle | None = None
        # Until the application starts, the cloud is answered from empty registries (nothing registered).
        started = late_setup is None
        self._responder = Responder(
            functions=self.functions if started else CloudFunctions(),
            variables=self.variables if started else CloudVariables(),
            subscriptions=self.subscriptions,
            counters=self.counters,
            describe=self.describe_answer,
            max_argument_length=max_argument_length,
            log=self.log,
        )
        self.hardware_limits = hardware_limits
        #: The SHA-256 of the application the device runs (set by an applied update).
        self.app_hash: str | None = None
        self.firmware: bytes | None = None
        self.updater = Updater(
            platform_id=platform_id,
            legacy=response_style is ResponseStyle.PIGGYBACK,
            behaviour=updates or UpdateBehaviour(),
            firmware_path=firmware_path,
            on_applied=self._update_applied,
            reset=lambda link, reason: link.close(reason),
            log=self.log,
        )

    def _update_applied(self, update: AppliedUpdate) -> None:
        """The new application runs after the reset: Describe lists it, the next Hello says it worked."""
        self.app_hash, self.firmware = update.app_hash, update.image
        user_part = {"f": "u", "n": "1", "v": 6, "u": update.app_hash, "d": []}
        self.modules = (
            *[m for m in self.modules if not (isinstance(m, dict) and m.get("f") == "u")],
            user_part,
        )
        self.hello = replace(self.hello, flags=self.hello.flags | HelloFlags.OTA_UPGRADE_SUCCESSFUL)
        if update.product is not None:  # product firmware: the next Hello names its product and version
            product_id, version = update.product
            self.hello = replace(self.hello, product_id=product_id, product_firmware_version=version)

    def _new_connection(self) -> CoapSession:
        if self._ec_key is not None and self._ec_server_key is not None:
            config = ClientConfig(
                signer=ecdsa_signer(self._ec_key),
                device_public_key=self._ec_key.public_key(),
                server_public_key=self._ec_server_key,
                device_id=bytes.fromhex(self.device_id),
            )
            kept, self.kept_session = self.kept_session, None  # one attempt; a refusal means a handshake
            endpoint = (
                DtlsClient.resume(config, kept, now=self._now())
                if kept is not None
                else DtlsClient(config, now=self._now(), random_bytes=self._random_bytes)
            )
            return UdpSession(
                Role.DEVICE,
                endpoint=endpoint,
                now=self._now(),
                device_id=self.device_id,
                hello=self.hello,
                response_style=self.response_style,
                timing=self.udp_timing,
                random_bytes=self._random_bytes,
            )
        return Connection(
            Role.DEVICE,
            now=self._now(),
            server_public_key=self._server_key,
            device_private_key=self._device_key,
            device_id=self.device_id,
            hello=self.hello,
            response_style=self.response_style,
            timing=self.timing,
            random_bytes=self._random_bytes,
        )

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Start connecting in the background (returns at once; see :meth:`wait_connected`)."""
        await self._connector.start(f"virtual-device-{self.device_id}")

    async def stop(self) -> None:
        """Close the session, stop reconnecting, and wait until the socket is closed."""
        if self._setup_timer is not None:
            self._setup_timer.cancel()
            self._setup_timer = None
        await self._connector.stop()
        await self._responder.aclose()

    async def wait_connected(self, timeout: float | None = None) -> None:
        """
        Wait until a session is established (handshake done, Hello exchanged).

        Raises:
            TimeoutError: not within ``timeout`` seconds.
            NotConnectedError: the device is not started, or gave up (``reconnect`` off and the link ended).
        """
        await self._connector.wait_connected(timeout)

    @property
    def connected(self) -> bool:
        """A session is established right now."""
        return self._connector.connected

    @property
    def signaling(self) -> bool:
        """The cloud asked for the rainbow LED and has not stopped it."""
        return self._responder.signaling

    @property
    def last_disconnect_reason(self) -> str | None:
        """Why the last session or connection attempt ended."""
        return self._connector.last_disconnect_reason

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    def link_event(self, link: DeviceLink, event: Event) -> None:
        """Session events are handled here, the cloud's requests by the responder."""
        if isinstance(event, ServerHelloReceived):
            # The cloud heard the "OTA succeeded" flag; Device OS clears it on the server Hello.
            self.hello = replace(self.hello, flags=self.hello.flags & ~HelloFlags.OTA_UPGRADE_SUCCESSFUL)
            self._on_established(link)
        elif self.updater.handle(link, event):
            return
        else:
            self._responder.handle(link, event)
            if isinstance(event, DescribeRequested) and not self.application_started:
                asyncio.get_running_loop().call_soon(self._start_application)

    @property
    def application_started(self) -> bool:
        """The application's functions and variables are registered with the cloud (see ``late_setup``)."""
        return self._responder.functions is self.functions

    def _start_application(self) -> None:
        if self.application_started:
            return
        if self._setup_timer is not None:
            self._setup_timer.cancel()
            self._setup_timer = None
        self._responder.functions, self._responder.variables = self.functions, self.variables
        self.log.info("application started", functions=len(self.functions), variables=len(self.variables))
        self._app_changed()

    def _on_established(self, link: DeviceLink) -> None:
        self.log.info(
            "connected",
            server=f"{self.host}:{self.port}",
            platform_id=self.platform_id,
            style="2.x" if self.response_style is ResponseStyle.SEPARATE else "0.x",
        )
        if not self.application_started and self._setup_timer is None and self.late_setup is not None:
            self._setup_timer = asyncio.get_running_loop().call_later(
                self.late_setup, self._start_application
            )
        if self.hardware_limits is not None:  # what Device OS ≤ 2.x says first: the OTA limits
            max_binary, chunk_size = self.hardware_limits
            link.send(PublishEvent("spark/hardware/max_binary", str(max_binary)))
            link.send(PublishEvent("spark/hardware/ota_chunk_size", str(chunk_size)))
        # As Device OS does after every Hello: 2.x volunteers its Describe, then the subscriptions go again.
        if self.response_style is ResponseStyle.SEPARATE:
            self._send_describes(link)
        for s in self.subscriptions:
            link.send(Subscribe(s.prefix, s.scope, s.device_id))

    # ------------------------------------------------------------------ the application

    def set_variable(
        self, name: str, value: VariableSource, type: VariableType | int | str | None = None
    ) -> None:
        """Create or update a variable (see :meth:`CloudVariables.set`; or ``variables[name] = v``)."""
        self.variables.set(name, value, type)

    def add_function(self, name: str, function: CloudFunction) -> None:
        """Register a function ``function(argument: str) -> int`` (sync or async)."""
        self.functions.add(name, function)

    def function(self, name: str | None = None) -> Callable[[CloudFunction], CloudFunction]:
        """Decorator form of :meth:`add_function`; the name defaults to the function's ``__name__``."""

        def register(function: CloudFunction) -> CloudFunction:
            self.functions.add(name or str(getattr(function, "__name__", "")), function)
            return function

        return register

    def describe_payload(self, flags: int | None = None) -> bytes:
        """
        The Describe this device sends now: JSON (all parts unless ``flags`` says otherwise), or its vitals in
        binary for the metrics flag alone.
        """
        if flags == DescribeFlags.METRICS and self.diagnostics:
            return self.vitals.payload(
                uptime=self._now() - self._born,
                connects=self.counters.connects,
                disconnects=self.counters.disconnects,
            )
        return build_describe(
            functions=list(self._responder.functions),
            variables=self._responder.variables.types(),
            platform_id=self.platform_id,
            modules=self.modules,
            **({"flags": flags} if flags else {}),
        )

    def describe_answer(self, flags: int) -> tuple[bytes, int | None] | None:
        """
        The answer to the cloud's Describe request for ``flags``: (payload, Content-Format). A ``protobuf``
        device answers as Device OS ≥ 5.5 does: the system part in protobuf (Content-Format 42), the
        application part in JSON, one part per request; None (refused, 4.00) for any other flags.
        """
        if self.system_describe == "protobuf":
            if flags == DescribeFlags.SYSTEM:
                return self._system_pb(), SYSTEM_DESCRIBE_CONTENT_FORMAT
            if flags not in (DescribeFlags.APPLICATION, DescribeFlags.METRICS):
                return None
        return self.describe_payload(flags), None

    def _system_pb(self) -> bytes:
        return encode_system_describe(m for m in self.modules if isinstance(m, dict))

    def _app_changed(self) -> None:
        # 2.x devices tell the cloud about new functions/variables; coalesce a burst of changes into one.
        if (
            self.response_style is ResponseStyle.SEPARATE
            and self.connected
            and self.application_started
            and not self._describe_pending
        ):
            self._describe_pending = True
            asyncio.get_running_loop().call_soon(self._send_describe)

    def _send_describe(self) -> None:
        self._describe_pending = False
        link = self._connector.link
        if link is not None and link.is_open and self.connected:
            self._send_describes(link)

    def _send_describes(self, link: DeviceLink) -> None:
        if self.system_describe == "protobuf":  # Device OS ≥ 5.5: the system part apart, in protobuf
            app = DescribeFlags.APPLICATION
            link.send(SendDescribe(self._system_pb(), DescribeFlags.SYSTEM, SYSTEM_DESCRIBE_CONTENT_FORMAT))
            link.send(SendDescribe(self.describe_payload(app), app))
            self.counters.describes += 2
        else:
            link.send(SendDescribe(self.describe_payload()))
            self.counters.describes += 1

    # ------------------------------------------------------------------ requests to the cloud

    def _require_link(self) -> DeviceLink:
        link = self._connector.link
        if link is None or not self.connected or not link.is_open:
            raise NotConnectedError("the virtual device is not connected")
        return link

    async def _request(self, what: str, command: Command) -> RequestResult:
        link = self._require_link()
        try:
            result = await link.request(command)
        except LocalProtocolError as exc:
            raise NotConnectedError(str(exc)) from exc
        if isinstance(result, RequestCompleted | TimeReceived):
            return result
        code = getattr(result, "code", None)
        raise RequestError(what, code, getattr(result, "reason", "no answer in time"))

    async def publish(
        self,
        name: str | bytes,
        data: str | bytes | None = None,
        *,
        private: bool = True,
        ttl: int = 60,
        with_ack: bool = False,
        check_limits: bool = True,
    ) -> None:
        """
        Publish an event: NON, or CON when ``with_ack`` (then this waits for the cloud's ACK).

        ``check_limits=False`` sends whatever it is given, as broken or hostile firmware could (a name of
        any length, bytes that are not UTF-8, data of any size): for tests of the cloud's own limits.

        Raises:
            ValueError: name or data too long (Device OS 2.x limits: 64 characters, 622 bytes).
            NotConnectedError: no session.
            RequestError: ``with_ack`` and the cloud refused or did not answer.
        """
        raw = data.encode("utf-8") if isinstance(data, str) else data
        if check_limits and (not name or len(name) > MAX_EVENT_NAME):
            raise ValueError(f"an event name is 1 to {MAX_EVENT_NAME} characters")
        if check_limits and raw is not None and len(raw) > MAX_EVENT_DATA:
            raise ValueError(f"event data is at most {MAX_EVENT_DATA} bytes, not {len(raw)}")
        command = PublishEvent(name, raw, private=private, ttl=ttl, with_ack=with_ack)
        if with_ack:
            await self._request(f"publish {name!r}", command)
        else:
            self._require_link().send(command)
        self.counters.events_published += 1
        self.log.info("published", event_name=shorten(name), data=shorten(raw), private=private)

    async def publish_vitals(self) -> None:
        """
        Send the vitals unasked, as ``Particle.publishVitals()`` does: CON ``POST /d?\x04`` with the binary
        payload; waits for the cloud's ACK.

        Raises:
            NotConnectedError: no session.
            RequestError: the cloud refused it or did not answer.
        """
        payload = self.describe_payload(DescribeFlags.METRICS)
        await self._request("vitals", SendDescribe(payload, DescribeFlags.METRICS))
        self.counters.describes += 1

    async def subscribe(
        self,
        prefix: str,
        handler: EventHandler,
        *,
        scope: SubscriptionScope = SubscriptionScope.ALL_DEVICES,
        device_id: str | None = None,
    ) -> Subscription:
        """
        Subscribe to events whose name starts with ``prefix``; ``handler(name, data)`` gets each one.

        The subscription is kept and sent again on every new session; when connected, this waits for the
        cloud's ACK.

        Raises:
            ValueError: a device scope without ``device_id``.
            RequestError: the cloud refused the subscription (it is not kept).
        """
        if scope is SubscriptionScope.DEVICE and not device_id:
            raise ValueError("a device-scoped subscription needs device_id")
        subscription = Subscription(prefix, scope, device_id, handler)
        if self.connected:
            await self._request(f"subscribe {prefix!r}", Subscribe(prefix, scope, device_id))
        self.subscriptions.append(subscription)
        self.log.info("subscribed", prefix=prefix, scope=scope.name.lower())
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        """Stop delivering to a subscription (the protocol has no unsubscribe: the cloud may keep sending)."""
        self.subscriptions.remove(subscription)

    async def sleep(self) -> None:
        """
        UDP only: keep the DTLS session and go away without a word (no close_notify, no Goodbye), as a Gen3
        device entering sleep does; `wake` continues the session without a handshake.
        """
        link = self._require_link()
        connection = link.connection
        if not isinstance(connection, UdpSession):
            raise RuntimeError("only a UDP device keeps its session over a sleep")
        session = connection.endpoint.export_session()
        link.go_silent()
        await self._connector.stop()
        self.kept_session = session

    async def wake(self) -> None:
        """Connect again after `sleep`: a resumed session (a CoAP ping, no Hello), else a handshake."""
        await self._connector.start(f"virtual-device-{self.device_id}")

    async def rebind(self) -> None:
        """UDP only: move to a new local port mid-session, as behind a NAT that rebinds (no new handshake)."""
        await self._require_link().rebind((self.host, self.port))

    async def ping(self) -> None:
        """Ping the cloud and wait for its ACK."""
        await self._request("ping", Ping())

    async def request_time(self) -> int:
        """
        Ask the cloud for the time.

        Returns:
            Unix seconds.
        """
        result = await self._request("time", RequestTime())
        if not isinstance(result, TimeReceived):  # pragma: no cover - RequestTime always answers with one
            raise RequestError("time", None, "no time in the answer")
        return result.unix_time

    def go_silent(self) -> None:
        """
        Keep the socket open but say and answer nothing, like a device that lost power (for tests of the
        cloud's keep-alive handling). ``stop()`` still closes it.
        """
        link = self._connector.link
        if link is not None:
            link.go_silent()

    def statistics(self) -> DeviceStatistics:
        """A snapshot of the counters and state."""
        link = self._connector.link
        live = (link.bytes_sent, link.bytes_received) if link is not None else (0, 0)
        counts = vars(self.counters) | {
            "bytes_sent": self.counters.bytes_sent + live[0],
            "bytes_received": self.counters.bytes_received + live[1],
        }
        return DeviceStatistics(
            connected=self.connected,
            signaling=self.signaling,
            last_disconnect_reason=self.last_disconnect_reason,
            **counts,
        )
