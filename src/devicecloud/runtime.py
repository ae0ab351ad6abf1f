"""
The composition root: the only place that picks concrete backends and wires services together.

`build_runtime(settings)` constructs everything without doing I/O; `start()` creates the data dir and applies
migrations; `stop()` releases connections. The CLI (and tests) drive those steps; nothing is global.
"""

from __future__ import annotations

import logging
import secrets
import sys
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Literal

import structlog
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from fastapi import FastAPI
from sqlalchemy import text

from devicecloud.api.app import create_app
from devicecloud.api.deps import ApiDeps
from devicecloud.bus.interfaces import DeviceCommands, EventBus
from devicecloud.bus.memory import MemoryBus
from devicecloud.clock import Clock, SystemClock
from devicecloud.compiler import CommandCompiler
from devicecloud.domain.accounts import User
from devicecloud.domain.devices import ProductMembership
from devicecloud.domain.library_archives import ArchiveLimits
from devicecloud.domain.usage import UsageLimits
from devicecloud.errors import Conflict
from devicecloud.gateway import DeviceGateway, DeviceSubscription, EventFeed
from devicecloud.gateway.cluster import RoutedControl
from devicecloud.gateway.kept_sessions import PersistentSessionStore
from devicecloud.metrics import Metrics, Sources
from devicecloud.notify import LogNotifier, SmtpNotifier
from devicecloud.protocol import EventPublished, LocalProtocolError
from devicecloud.protocol.keyslot import server_key_slot, udp_server_key_slot
from devicecloud.services.accounts import AccountPolicy, AccountService
from devicecloud.services.clients import ClientService
from devicecloud.services.customers import CustomerService
from devicecloud.services.device_keys import DeviceKeyService
from devicecloud.services.device_sessions import DeviceSessionService, SessionPolicy, StatusHook
from devicecloud.services.devices import DevicePolicy, DeviceService
from devicecloud.services.diagnostics import DiagnosticsPolicy, DiagnosticsService
from devicecloud.services.events import EventPolicy, EventService
from devicecloud.services.firmware import FirmwareService
from devicecloud.services.firmware_rollout import UPDATES_PREFIX, FirmwareRollout, RolloutPolicy
from devicecloud.services.groups import GroupService
from devicecloud.services.libraries import LibraryPolicy, LibraryService
from devicecloud.services.nodes import NodeService, generate_node_id
from devicecloud.services.passwords import Passwords
from devicecloud.services.ports import DeviceControl, Notifier
from devicecloud.services.product_devices import ProductDeviceService
from devicecloud.services.product_firmware import ProductFirmwareService
from devicecloud.services.products import ProductService
from devicecloud.services.sims import SimService
from devicecloud.services.tokens import TokenPolicy, TokenService
from devicecloud.services.usage import UsageBook, UsagePolicy, UsageService
from devicecloud.services.webhooks import WebhookPolicy, WebhookService
from devicecloud.settings import Settings
from devicecloud.store import migrate
from devicecloud.store.archives import FileArchiveStorage
from devicecloud.store.binaryfiles import BinaryFiles
from devicecloud.store.keyfiles import load_or_create_server_key, load_or_create_udp_server_key
from devicecloud.store.sql import PoolLimits, SqlStore
from devicecloud.webhooks.dispatcher import DispatchPolicy, WebhookDispatcher
from devicecloud.webhooks.http import HttpSender, SenderLimits
from devicecloud.webhooks.throttle import ThrottlePolicy


def configure_logging(settings: Settings) -> None:
    """
    Structured logs on stderr, quiet (WARNING) unless asked otherwise.
    """
    level = getattr(logging, settings.log_level.upper(), logging.WARNING)
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer()
        if settings.log_format == "json"
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
    logging.basicConfig(level=level, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")


def build_notifier(settings: Settings) -> Notifier:
    if settings.smtp_host:
        return SmtpNotifier(
            host=settings.smtp_host,
            port=settings.smtp_port,
            sender=settings.smtp_from,
            username=settings.smtp_username,
            password=settings.smtp_password,
            starttls=settings.smtp_starttls,
        )
    return LogNotifier()


@dataclass
class Runtime:
    """
    Everything one devicecloud process runs on.
    """

    settings: Settings
    clock: Clock
    store: SqlStore
    passwords: Passwords
    accounts: AccountService
    tokens: TokenService
    clients: ClientService
    notifier: Notifier
    server_key: rsa.RSAPrivateKey
    node: NodeService
    sessions: DeviceSessionService
    gateway: DeviceGateway
    devices: DeviceService
    device_keys: DeviceKeyService
    bus: EventBus
    events: EventService
    webhooks: WebhookService
    dispatcher: WebhookDispatcher
    firmware: FirmwareService
    products: ProductService
    groups: GroupService
    product_devices: ProductDeviceService
    libraries: LibraryService
    metrics: Metrics
    sims: SimService
    diagnostics: DiagnosticsService
    customers: CustomerService
    product_firmware: ProductFirmwareService
    rollout: FirmwareRollout
    usage: UsageService
    started: bool = field(default=False)
    gateway_started: bool = field(default=False)
    node_started: bool = field(default=False)
    dispatcher_started: bool = field(default=False)

    def api_deps(self) -> ApiDeps:
        return ApiDeps(
            settings=self.settings,
            clock=self.clock,
            accounts=self.accounts,
            tokens=self.tokens,
            clients=self.clients,
            devices=self.devices,
            device_keys=self.device_keys,
            events=self.events,
            webhooks=self.webhooks,
            firmware=self.firmware,
            products=self.products,
            groups=self.groups,
            product_devices=self.product_devices,
            libraries=self.libraries,
            probes=self.metrics,
            sims=self.sims,
            diagnostics=self.diagnostics,
            customers=self.customers,
            product_firmware=self.product_firmware,
            usage=self.usage,
        )

    @property
    def gateway_port(self) -> int:
        """
        The TCP port devices connect to (the real one when the setting is 0).
        """
        return self.gateway.port

    def asgi_app(self, *, manage_lifecycle: bool = True) -> FastAPI:
        """
        The HTTP application; with ``manage_lifecycle`` its lifespan starts and stops this runtime.
        """
        if manage_lifecycle:
            return create_app(self.api_deps(), on_startup=self.start_webhooks, on_shutdown=self.stop)
        return create_app(self.api_deps())

    async def start(self) -> None:
        """
        Create the data dir and bring the database schema up to date. Idempotent.
        """
        if self.started:
            return
        self.settings.data_dir.mkdir(parents=True, exist_ok=True)
        await migrate.upgrade(self.store.engine)
        await self.bus.start()
        self.started = True

    async def start_webhooks(self) -> None:
        """
        Deliver webhooks from this process (when ``webhooks_enabled``). Only serving processes do this: a
        one-off command such as ``users list`` must not send what waits in the outbox.
        """
        await self.start()
        self.diagnostics.start()  # retention: old vitals are deleted by serving processes
        await self.usage.start()  # usage reports a stopped process left pending are made now
        if self.settings.webhooks_enabled and not self.dispatcher_started:
            await self.dispatcher.start()
            self.dispatcher_started = True

    async def start_gateway(self) -> None:
        """
        Listen for devices. First this node joins the cluster: no link exists before this, so devices it
        held in a previous run (and those of nodes whose lease ran out) are offline; other nodes' stay.
        """
        await self.start()
        if self.gateway_started:
            return
        await self.node.start()
        self.node_started = True
        self.rollout.start()  # product firmware reaches the devices linked here
        await self.gateway.start()
        self.gateway_started = True

    async def stop(self) -> None:
        if self.dispatcher_started:
            await self.dispatcher.stop()
            self.dispatcher_started = False
        if self.gateway_started:
            # Before the store closes: links report their devices offline while they stop.
            await self.gateway.stop()
            self.gateway_started = False
        await self.rollout.aclose()
        await self.firmware.aclose()
        await self.product_devices.aclose()
        await self.diagnostics.stop()  # vitals devices sent are written behind: the rest of them
        await self.usage.stop()  # usage counters are written behind: the rest of them
        await self.sessions.close()  # presence is written behind: the rest of it, before the store closes
        if self.node_started:
            await self.node.stop()
            self.node_started = False
        await self.bus.close()
        await self.notifier.drain()
        await self.store.close()
        self.started = False

    async def ensure_first_account(self) -> tuple[User, str] | None:
        """
        When there is no account yet, create one (from settings, or with a generated password).

        Returns the new user and its plain password, or None when accounts already exist.
        """
        if await self.accounts.count_users() > 0:
            return None
        email = self.settings.admin_email or "admin@devicecloud.local"
        password = self.settings.admin_password or secrets.token_urlsafe(12)
        try:
            user = await self.accounts.create_user(email, password)
        except Conflict:
            return None
        return user, password


def load_server_key(settings: Settings) -> rsa.RSAPrivateKey:
    """
    The server's RSA-2048 key from the data dir, created on first use.
    """
    return load_or_create_server_key(settings.data_dir)


def server_key_slot_image(key: rsa.RSAPrivateKey, host: str, port: int) -> bytes:
    """
    The 512-byte key slot a device needs to reach this server at ``host:port``. Raises ValueError.
    """
    der = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    try:
        return server_key_slot(der, host, port)
    except LocalProtocolError as exc:
        raise ValueError(str(exc)) from exc


def load_udp_server_key(settings: Settings) -> ec.EllipticCurvePrivateKey:
    """The UDP gateway's EC P-256 key from the data dir, created on first use."""
    return load_or_create_udp_server_key(settings.data_dir)


def udp_server_key_slot_image(key: ec.EllipticCurvePrivateKey, host: str, port: int) -> bytes:
    """The 320-byte UDP key slot a Gen3 device needs to reach this server at ``host:port`` (or ValueError)."""
    der = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    try:
        return udp_server_key_slot(der, host, port)
    except LocalProtocolError as exc:
        raise ValueError(str(exc)) from exc


def build_bus(settings: Settings, node_id: str) -> tuple[EventBus, DeviceCommands | None]:
    """
    The event bus the settings name, and its device request/reply when it has one: in-process by default,
    NATS (imported only then: nats-py is the extra "nats") for a cluster.
    """
    if settings.bus_url.startswith("memory://"):
        return MemoryBus(), None
    try:
        from devicecloud.bus.nats import NatsBus
    except ImportError as exc:
        msg = "DEVICECLOUD_BUS_URL=nats://… needs nats-py: pip install 'devicecloud[nats]'"
        raise RuntimeError(msg) from exc

    bus = NatsBus(settings.bus_url, name=f"devicecloud-{node_id}")
    return bus, bus


def _forgetting(
    webhooks: WebhookService,
    events: EventService,
    rollout: FirmwareRollout,
    product_devices: ProductDeviceService,
    gateway: DeviceGateway,
) -> Callable[[str, str], None]:
    def forget(topic: str, key: str) -> None:
        if topic == "hooks":
            webhooks.forget_cache()
        elif topic == "owner":  # first forget the owner, then subscribe again: the new one is read afresh
            events.forget_device(key)  # its owner, and its product membership with its customer
            gateway.owner_changed(key)
        elif topic == "release":  # "<product id>:<1 = intelligent>", from any node's API
            product_id, _, immediate = key.partition(":")
            if product_id.isdigit():
                product_devices.forget_releases(int(product_id))
                rollout.release_changed(int(product_id), immediate=immediate == "1")
        elif topic == "flash":  # a device locked with flash=true: the node holding it checks it now
            rollout.check_now(key)

    return forget


def _serving(routed: RoutedControl, publish_status: StatusHook) -> StatusHook:
    """
    A cluster node's status hook: it answers for a device over the bus while the device is linked here.
    """

    async def on_status(
        device_id: str,
        online: bool,
        *,
        owner_id: int | Literal["unread"] | None = "unread",
        membership: ProductMembership | Literal["unread"] | None = "unread",
    ) -> None:
        (routed.held if online else routed.released)(device_id)
        await publish_status(device_id, online, owner_id=owner_id, membership=membership)

    return on_status


def _announcing_offline(events: EventService) -> Callable[[Sequence[str]], Awaitable[None]]:
    """
    What a node does with the devices its sweep marked offline (their node died): ``spark/status`` offline.
    """

    async def announce(device_ids: Sequence[str]) -> None:
        for device_id in device_ids:
            await events.publish_status(device_id, False)

    return announce


def build_libraries(settings: Settings, store: SqlStore, clock: Clock) -> LibraryService:
    """
    The library registry, its archives as files under ``<data dir>/libraries`` (decision 0019).
    """
    limits = ArchiveLimits(
        max_archive=settings.library_max_archive_bytes, max_unpacked=settings.library_max_unpacked_bytes
    )
    storage = FileArchiveStorage(settings.data_dir / "libraries")
    return LibraryService(store=store, clock=clock, storage=storage, policy=LibraryPolicy(limits=limits))


def build_runtime(
    settings: Settings,
    *,
    clock: Clock | None = None,
    notifier: Notifier | None = None,
    server_key: rsa.RSAPrivateKey | None = None,
) -> Runtime:
    """
    Wire a runtime from settings. The only I/O is reading (or, the first time, creating) the server key.
    """
    clock = clock or SystemClock()
    notifier = notifier or build_notifier(settings)
    server_key = server_key or load_server_key(settings)
    store = SqlStore.from_url(
        settings.effective_database_url,
        PoolLimits(
            size=settings.database_pool_size,
            overflow=settings.database_max_overflow,
            timeout=settings.database_pool_timeout,
        ),
    )
    passwords = Passwords(
        time_cost=settings.password_time_cost,
        memory_cost=settings.password_memory_cost,
        parallelism=settings.password_parallelism,
    )
    accounts = AccountService(
        store=store,
        clock=clock,
        passwords=passwords,
        notifier=notifier,
        policy=AccountPolicy(
            signup_open=settings.signup_open,
            reset_lifetime=settings.password_reset_lifetime,
            mfa_lifetime=settings.mfa_token_lifetime,
            public_url=settings.effective_public_url,
        ),
    )
    tokens = TokenService(
        store=store,
        clock=clock,
        accounts=accounts,
        policy=TokenPolicy(
            access_lifetime=settings.access_token_lifetime,
            refresh_lifetime=settings.refresh_token_lifetime,
            mfa_lifetime=settings.mfa_token_lifetime,
            builtin_clients=frozenset(settings.builtin_clients),
        ),
    )
    clients = ClientService(store=store, clock=clock)
    products = ProductService(store=store, clock=clock, tokens=tokens)
    groups = GroupService(store=store, clock=clock)
    node_id = settings.node_id or generate_node_id()
    sessions = DeviceSessionService(
        store=store,
        clock=clock,
        node_id=node_id,
        policy=SessionPolicy(
            accept_unknown_devices=settings.accept_unknown_devices,
            # Waiting longer than the device has for its handshake serves nobody.
            key_check_timeout=settings.device_handshake_timeout,
        ),
    )
    node = NodeService(
        store=store,
        clock=clock,
        node_id=node_id,
        lease=settings.node_lease,
        on_lost=sessions.presence.rewrite,
    )
    devices: DeviceService | None = None
    events: EventService | None = None
    rollout: FirmwareRollout | None = None

    async def on_device_event(device_id: str, event: EventPublished) -> bool:
        # The gateway knows protocol events, services know plain values: this is the translation.
        # False = over the device's publish limit, InvalidInput = against the rules (the service decodes
        # the data strictly): the gateway refuses either (ACK 4.00 to a CON event).
        if devices is None or events is None:
            return True
        published = await events.publish_from_device(
            device_id, event.name, event.data, private=event.private, ttl=event.ttl
        )
        if published is not None:
            await devices.handle_device_event(device_id, published.name, published.data)
            if rollout is not None and published.name.startswith(UPDATES_PREFIX):
                rollout.device_event(device_id, published.name, published.data)
        return published is not None

    async def open_device_feed(device_id: str, wanted: tuple[DeviceSubscription, ...]) -> EventFeed | None:
        if events is None:
            return None
        return await events.device_feed(device_id, [(s.prefix, s.scope, s.device_id) for s in wanted])

    gateway = DeviceGateway(
        sessions,
        server_key,
        clock=clock,
        host=settings.device_host,
        port=settings.device_port,
        max_links=settings.max_device_links,
        handshake_slots=settings.device_handshake_slots,
        listen_backlog=settings.device_listen_backlog,
        reuse_port=settings.reuse_port,
        handshake_timeout=settings.device_handshake_timeout,
        ping_after=settings.device_keepalive,
        idle_timeout=settings.device_keepalive * 1.75,
        request_timeout=settings.device_request_timeout,
        on_event=on_device_event,
        on_subscribe=open_device_feed,
        udp_server_key=load_or_create_udp_server_key(settings.data_dir)
        if settings.device_udp_enabled
        else None,
        udp_port=settings.device_udp_port if settings.device_udp_enabled else None,
        udp_sessions=PersistentSessionStore(store, clock),
        proxy_protocol_from=settings.device_proxy_protocol,
        proxy_header_timeout=settings.proxy_protocol_timeout,
        udp_address_rate=settings.device_udp_address_rate,
        udp_address_handshakes=settings.device_udp_address_handshakes,
    )
    metrics = Metrics()
    bus, commands = build_bus(settings, node_id)
    # Over NATS a device linked to another node is reached through it (request/reply); in one process, here.
    routed = RoutedControl(gateway.control, commands) if commands is not None else None
    control: DeviceControl = routed if routed is not None else gateway.control
    devices = DeviceService(
        store=store,
        clock=clock,
        control=metrics.metered(control),
        policy=DevicePolicy(request_timeout=settings.device_request_timeout),
        presence=sessions.presence,
    )
    device_keys = DeviceKeyService(store=store, clock=clock, control=control)
    product_devices = ProductDeviceService(store=store, clock=clock, devices=devices, control=control)
    events = EventService(
        store=store,
        clock=clock,
        bus=bus,
        devices=devices,
        policy=EventPolicy(max_pending=settings.event_queue_bound),
    )
    devices.on_owner_change(events.forget_device)  # a customer's claim changes its events' customer
    webhooks = WebhookService(
        store=store,
        clock=clock,
        events=events,
        policy=WebhookPolicy(
            retry_delays=tuple(settings.webhook_retry_delays), lease=2 * settings.webhook_timeout + 10
        ),
    )
    dispatcher = WebhookDispatcher(
        webhooks,
        clock=clock,
        sender=HttpSender(
            SenderLimits(
                timeout=settings.webhook_timeout,
                max_body=settings.webhook_max_response_bytes,
                max_redirects=settings.webhook_max_redirects,
                block_private=settings.effective_webhook_block_private,
            )
        ),
        policy=DispatchPolicy(
            max_in_flight=settings.webhook_max_in_flight,
            throttle=ThrottlePolicy(max_concurrency=settings.webhook_host_concurrency),
        ),
    )
    webhooks.runner = dispatcher
    binaries = BinaryFiles(settings.data_dir / "binaries", clock.now)
    firmware = FirmwareService(
        devices=devices,
        updates=gateway.updates,
        events=events,
        clock=clock,
        binaries=binaries,
        compiler=(
            CommandCompiler(settings.compile_command, timeout=settings.compile_timeout)
            if settings.compile_command
            else None
        ),
        remote=routed,
    )
    product_firmware = ProductFirmwareService(store=store, clock=clock, binaries=binaries, events=events)
    rollout = FirmwareRollout(
        store=store,
        clock=clock,
        updates=gateway.updates,
        firmware=firmware,
        events=events,
        binaries=binaries,
        policy=RolloutPolicy(delay=settings.release_delay),
    )
    sessions.watcher = rollout

    # Releases and locks with flash=true reach the node that holds the devices (every node, this one too).
    def released(product_id: int, immediate: bool) -> None:
        product_devices.forget_releases(product_id)  # at once here; other processes when the note arrives
        bus.broadcast("release", f"{product_id}:{int(immediate)}")

    product_firmware.on_release = released
    product_firmware.on_delete = rollout.forget_binary
    product_devices.on_flash = lambda device_id: bus.broadcast("flash", device_id)
    if routed is not None:
        routed.flash_handler = firmware.flash_stored
    # Caches of other processes on the bus forget what changed here (hooks; a device's owner).
    webhooks.on_change(lambda: bus.broadcast("hooks", ""))
    devices.on_owner_change(lambda device_id: bus.broadcast("owner", device_id))
    bus.on_broadcast(_forgetting(webhooks, events, rollout, product_devices, gateway))
    sessions.on_status = events.publish_status if routed is None else _serving(routed, events.publish_status)
    node.on_swept = _announcing_offline(events)

    async def database_answers() -> None:
        async with store.engine.connect() as conn:
            await conn.execute(text("SELECT 1"))

    metrics.attach(
        Sources(
            node_id=node_id,
            gateway=gateway,
            bus=bus,
            dispatcher=dispatcher,
            presence=sessions.presence,
            outbox=webhooks.pending,
            database=database_answers,
            bus_ping=bus.ping,
        )
    )

    # Events carry the product (and customer) they belong to: every node forgets a changed membership, the
    # one holding the device's link included (a removed device's events stop reaching its customer).
    def membership_changed(device_id: str) -> None:
        events.forget_product(device_id)  # at once here; other processes when the note arrives
        bus.broadcast("owner", device_id)

    product_devices.on_membership_change = membership_changed
    products.on_settings_change = sessions.forget_product  # quarantine on/off applies to the next Hello
    diagnostics = DiagnosticsService(
        store=store,
        clock=clock,
        devices=devices,
        control=control,
        events=events,
        product_devices=product_devices,
        policy=DiagnosticsPolicy(
            retention=timedelta(days=settings.diagnostics_retention_days),
            prune_interval=settings.diagnostics_prune_interval,
            request_timeout=settings.device_request_timeout,
        ),
    )
    sessions.on_vitals = diagnostics.volunteered
    book = UsageBook(store=store, clock=clock, flush_interval=settings.usage_flush_interval, node_id=node_id)
    sessions.usage = events.usage = devices.usage = book  # counted on the device paths, written behind
    usage = UsageService(
        store=store,
        clock=clock,
        book=book,
        notifier=notifier,
        policy=UsagePolicy(
            limits=UsageLimits(
                max_devices=settings.usage_max_devices,
                max_messages=settings.usage_max_messages,
                max_data=settings.usage_max_data,
            ),
            report_lifetime=timedelta(days=settings.usage_report_days),
        ),
    )
    return Runtime(
        settings=settings,
        clock=clock,
        store=store,
        passwords=passwords,
        accounts=accounts,
        tokens=tokens,
        clients=clients,
        notifier=notifier,
        server_key=server_key,
        node=node,
        sessions=sessions,
        gateway=gateway,
        devices=devices,
        device_keys=device_keys,
        bus=bus,
        events=events,
        webhooks=webhooks,
        dispatcher=dispatcher,
        firmware=firmware,
        products=products,
        groups=groups,
        product_devices=product_devices,
        libraries=build_libraries(settings, store, clock),
        metrics=metrics,
        sims=SimService(store=store, clock=clock, presence=sessions.presence),
        diagnostics=diagnostics,
        customers=CustomerService(
            store=store, clock=clock, accounts=accounts, tokens=tokens, devices=devices
        ),
        product_firmware=product_firmware,
        rollout=rollout,
        usage=usage,
    )
