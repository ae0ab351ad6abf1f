"""
The composition root: the only place that picks concrete backends and wires services together.

`build_runtime(settings)` constructs everything without doing I/O; `start()` creates the data dir and applies
migrations; `stop()` releases connections. The CLI (and tests) drive those steps; nothing is global.
"""

from __future__ import annotations

import logging
import secrets
import sys
from dataclasses import dataclass, field

import structlog
from fastapi import FastAPI

from devicecloud.api.app import create_app
from devicecloud.api.deps import ApiDeps
from devicecloud.clock import Clock, SystemClock
from devicecloud.domain.accounts import User
from devicecloud.errors import Conflict
from devicecloud.notify import LogNotifier, SmtpNotifier
from devicecloud.services.accounts import AccountPolicy, AccountService
from devicecloud.services.clients import ClientService
from devicecloud.services.passwords import Passwords
from devicecloud.services.ports import Notifier
from devicecloud.services.tokens import TokenPolicy, TokenService
from devicecloud.settings import Settings
from devicecloud.store import migrate
from devicecloud.store.sql import SqlStore


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
    started: bool = field(default=False)

    def api_deps(self) -> ApiDeps:
        return ApiDeps(
            settings=self.settings, accounts=self.accounts, tokens=self.tokens, clients=self.clients
        )

    def asgi_app(self, *, manage_lifecycle: bool = True) -> FastAPI:
        """
        The HTTP application; with ``manage_lifecycle`` its lifespan starts and stops this runtime.
        """
        if manage_lifecycle:
            return create_app(self.api_deps(), on_startup=self.start, on_shutdown=self.stop)
        return create_app(self.api_deps())

    async def start(self) -> None:
        """
        Create the data dir and bring the database schema up to date. Idempotent.
        """
        if self.started:
            return
        self.settings.data_dir.mkdir(parents=True, exist_ok=True)
        await migrate.upgrade(self.store.engine)
        self.started = True

    async def stop(self) -> None:
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


def build_runtime(
    settings: Settings, *, clock: Clock | None = None, notifier: Notifier | None = None
) -> Runtime:
    """
    Wire a runtime from settings. Does no I/O.
    """
    clock = clock or SystemClock()
    notifier = notifier or build_notifier(settings)
    store = SqlStore.from_url(settings.effective_database_url)
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
    return Runtime(
        settings=settings,
        clock=clock,
        store=store,
        passwords=passwords,
        accounts=accounts,
        tokens=tokens,
        clients=clients,
        notifier=notifier,
    )
