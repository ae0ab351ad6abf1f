"""
Settings: the one place that reads the environment and the optional TOML file.

Every value comes from, in order of precedence: keyword arguments (tests), ``DEVICECLOUD_*`` environment
variables, the TOML file named by ``DEVICECLOUD_CONFIG`` (or ``devicecloud.toml`` in the data dir), then the
defaults below. The result is frozen; other modules receive it (or single values from it) and never read
``os.environ`` themselves.
"""

from __future__ import annotations

import ipaddress
import json
import os
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

BUILTIN_CLIENTS = ("particle", "particle-cli", "particle-api", "CLI2", "user")


class Settings(BaseSettings):
    """
    The whole configuration of one devicecloud process.
    """

    model_config = SettingsConfigDict(env_prefix="DEVICECLOUD_", frozen=True, extra="forbid")

    data_dir: Path = Field(default=Path("./data"), description="Where the database and keys live.")
    http_host: str = Field(default="127.0.0.1", description="Address the HTTP API listens on.")
    http_port: int = Field(default=8080, ge=0, le=65535, description="Port of the HTTP API.")
    http_head_timeout: float = Field(
        default=10.0,
        gt=0,
        description="Seconds to send a request's line and headers, from connecting or the last reply.",
    )
    http_body_timeout: float = Field(
        default=30.0, gt=0, description="Seconds a client has to send a request's whole body after its head."
    )
    http_max_connections_per_ip: int = Field(
        default=256, ge=1, description="HTTP connections open at once from one address (IPv6: one /64)."
    )
    http_proxy_protocol: Annotated[list[str], NoDecode] = Field(
        default=[],
        description="Addresses or networks of proxies whose HTTP connections must start with a PROXY "
        "protocol v1/v2 header naming the client (then the client for every per-address limit).",
    )
    http_max_connections: int | None = Field(
        default=None,
        ge=1,
        description="HTTP connections open at once; default: what device links and the reserve leave.",
    )
    descriptor_reserve: int = Field(
        default=1500,
        ge=0,
        description="File descriptors kept for the database, webhook connections and logs.",
    )
    device_host: str = Field(
        default="0.0.0.0",  # noqa: S104 - devices connect from the network
        description="Address the device gateway listens on.",
    )
    device_port: int = Field(default=5683, ge=0, le=65535, description="TCP port of the device gateway.")
    device_udp_port: int = Field(
        default=5684,
        ge=0,
        le=65535,
        description="UDP port of the device gateway (DTLS: Gen3 devices, Electron).",
    )
    device_udp_enabled: bool = Field(default=True, description="Listen for UDP/DTLS devices beside TCP.")
    device_udp_address_rate: float = Field(
        default=10.0,
        gt=0,
        description="Datagrams a second one source IP may send the UDP gateway outside a DTLS session "
        "(ClientHellos, resumptions; bursts of twice as many). Raise it when many devices share an address.",
    )
    device_udp_address_handshakes: int = Field(
        default=16, ge=1, description="DTLS handshakes in progress from one source IP at most."
    )
    accept_unknown_devices: bool = Field(
        default=False,
        description="Accept an unknown device's key on its first handshake (else it awaits approval).",
    )
    max_device_links: int = Field(default=20_000, ge=1, description="Most devices connected at once.")
    heap_freeze: bool = Field(
        default=True,
        description="Freeze what survives a full garbage collection, so later ones scan only new objects.",
    )
    heap_sweep_growth: float = Field(
        default=2.0, gt=1.0, description="Scan the whole heap once when the frozen part grew this many times."
    )
    heap_sweep_interval: float = Field(
        default=3600.0, gt=0, description="Seconds after which the whole heap is scanned once anyway."
    )
    heap_young_interval: float = Field(
        default=0.1,
        ge=0,
        le=60,
        description="Seconds between two collections of the youngest objects (0: as the collector decides).",
    )
    device_handshake_slots: int = Field(
        default=512,
        ge=1,
        description="Handshakes in progress at once; in a connect storm the rest wait in the listen backlog.",
    )
    device_listen_backlog: int = Field(
        default=4096,
        ge=1,
        description="Connections the kernel holds for the gateway (capped by net.core.somaxconn).",
    )
    device_handshake_timeout: float = Field(
        default=30.0, gt=0, description="Seconds a device has to finish the handshake, from its admission."
    )
    device_proxy_protocol: Annotated[list[str], NoDecode] = Field(
        default=[],
        description="Addresses or networks of TCP proxies (HAProxy send-proxy-v2) whose device sockets must "
        "start with a PROXY protocol v1/v2 header naming the device's address; others connect directly.",
    )
    proxy_protocol_timeout: float = Field(
        default=5.0, gt=0, description="Seconds a trusted proxy has to send a socket's PROXY protocol header."
    )
    device_keepalive: float = Field(
        default=20.0,
        gt=0,
        description="Ping a device silent this many seconds; drop it after 1.75 times that.",
    )
    device_request_timeout: float = Field(
        default=20.0,
        gt=0,
        description="Seconds to wait for a device to answer a function call or variable read.",
    )
    compile_command: str | None = Field(
        default=None,
        description="Cloud compile: a command run for each compile, with {sources} {output} {platform} "
        "{version} filled in; unset = cloud compile is not configured.",
    )
    compile_timeout: float = Field(default=300.0, gt=0, description="Seconds one compile may take.")
    release_delay: float = Field(
        default=5.0,
        ge=0,
        description="Seconds after a product device connects before its released firmware is checked.",
    )
    node_id: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z0-9_-]{1,64}$",
        description="This process's name in the cluster and its logs; default: generated at each start.",
    )
    reuse_port: bool = Field(
        default=False,
        description="Listen with SO_REUSEPORT (HTTP and device ports), so several processes share them; "
        "set by `serve --workers N` for its workers.",
    )
    drain_timeout: float = Field(
        default=10.0,
        gt=0,
        description="Seconds a stopping server lets HTTP calls in flight finish before closing them.",
    )
    node_lease: float = Field(
        default=26.0,
        gt=0,
        # Renewed every third of it: a dead node's devices are offline within 4/3 of it, 34.7 s, inside the
        # 35 s keep-alive window devices use to notice a dead link (decision 0024).
        description="Seconds without renewing its lease after which a node's devices are marked offline.",
    )
    bus_url: str = Field(
        default="memory://",
        pattern=r"^(memory://|nats://.+|tls://.+)$",
        description="Event bus: memory:// (in-process) or nats://host:4222 (NATS with JetStream).",
    )
    event_queue_bound: int = Field(
        default=1000,
        ge=1,
        description="Events a stream may fall behind before it is dropped; a device loses those past it.",
    )
    environment: Literal["development", "production"] = Field(
        default="development",
        description="production turns on the safer defaults (webhooks may not reach private addresses).",
    )
    webhooks_enabled: bool = Field(default=True, description="Deliver webhooks from this process.")
    webhook_block_private: bool | None = Field(
        default=None,
        description="Refuse webhook requests to non-public addresses; default: on in production.",
    )
    webhook_timeout: float = Field(default=20.0, gt=0, description="Seconds a webhook target has to answer.")
    webhook_max_response_bytes: int = Field(
        default=102_400, ge=1024, description="Bytes of a webhook response that are read."
    )
    webhook_max_redirects: int = Field(default=5, ge=0, description="Redirects a webhook request follows.")
    webhook_host_concurrency: int = Field(
        default=32, ge=1, description="Requests in flight to one target host at most (adapts downwards)."
    )
    webhook_max_in_flight: int = Field(
        default=2000, ge=1, description="Webhook deliveries in memory at once (the rest wait in the outbox)."
    )
    webhook_retry_delays: Annotated[list[float], NoDecode] = Field(
        default=[30.0, 60.0], description="Seconds before each retry of a failed webhook (comma-separated)."
    )
    library_max_archive_bytes: int = Field(
        default=10_000_000, ge=1024, description="Largest library archive (tar.gz) an upload may send."
    )
    library_max_unpacked_bytes: int = Field(
        default=50_000_000,
        ge=1024,
        description="Most bytes a library archive may unpack to (read in memory).",
    )
    diagnostics_retention_days: int = Field(
        default=30, ge=1, le=3650, description="Days device vitals are kept (and may be asked for)."
    )
    diagnostics_prune_interval: float = Field(
        default=3600.0, gt=0, description="Seconds between two deletions of vitals past their retention."
    )
    usage_flush_interval: float = Field(
        default=1.0,
        gt=0,
        le=3600,
        description="Seconds usage counters wait in memory before they are written.",
    )
    usage_max_devices: int = Field(
        default=100, ge=1, description="Devices an account's service agreement allows (the sandbox's 100)."
    )
    usage_max_messages: int = Field(
        default=100_000, ge=1, description="Device messages a service agreement allows a billing period."
    )
    usage_max_data: int = Field(
        default=45_000_000,
        ge=1,
        description="Bytes of device data a service agreement allows a billing period.",
    )
    usage_report_days: int = Field(
        default=7, ge=1, le=365, description="Days a usage report can be downloaded after it was asked for."
    )
    database_url: str | None = Field(
        default=None,
        description="SQLAlchemy async URL; default sqlite+aiosqlite:///<data_dir>/devicecloud.db.",
    )
    database_pool_size: int = Field(
        default=20, ge=1, description="Database connections kept open (SQLite and PostgreSQL alike)."
    )
    database_max_overflow: int = Field(
        default=10,
        ge=0,
        description="Connections opened beyond the pool size at peaks, closed as soon as returned.",
    )
    database_pool_timeout: float = Field(
        default=30.0, gt=0, description="Seconds a database user waits for a free connection."
    )

    access_token_lifetime: int = Field(default=7_776_000, ge=0, description="Seconds; 0 = never expires.")
    refresh_token_lifetime: int = Field(default=1_209_600, ge=0, description="Seconds after token expiry.")
    mfa_token_lifetime: int = Field(default=300, gt=0, description="Seconds an MFA login challenge lives.")
    password_reset_lifetime: int = Field(default=3600, gt=0, description="Seconds a reset token lives.")

    signup_open: bool = Field(default=True, description="Whether POST /v1/users creates accounts.")
    cors_origins: Annotated[list[str], NoDecode] = Field(
        default=["*"], description="Origins allowed by CORS."
    )
    builtin_clients: Annotated[list[str], NoDecode] = Field(
        default=list(BUILTIN_CLIENTS), description="OAuth client ids accepted with any secret."
    )

    rate_limits_enabled: bool = Field(default=True, description="Apply the per-IP limits of the API.")
    rate_limit_storage: str = Field(
        default="memory://", description="limits storage URI (memory:// or redis://)."
    )
    rate_limit_all: str = Field(default="10000/5minutes", description="Every API route, per IP.")
    rate_limit_token: str = Field(default="100/5minutes", description="POST /oauth/token, per IP.")
    rate_limit_token_list: str = Field(default="100/5minutes", description="Token list/revoke, per IP.")
    rate_limit_account: str = Field(default="100/5minutes", description="Sign-up, delete, reset, per IP.")
    rate_limit_events: str = Field(default="100/5minutes", description="Event streams opened, per IP.")
    max_streams_per_ip: int = Field(default=100, ge=1, description="Event streams open at once, per IP.")
    sse_keepalive: float = Field(
        default=9.0, gt=0, le=12, description="Seconds of silence after which a stream gets a keep-alive."
    )
    login_failure_limit: int = Field(
        default=10,
        ge=1,
        description="Failed logins from one IP (within the lockout window) before lockout; a success resets.",
    )
    login_lockout_seconds: int = Field(default=1800, ge=1, description="Lockout after too many failures.")
    login_account_failure_limit: int = Field(
        default=30,
        ge=1,
        description="Failed password logins for one account, from any IPs, before its password logins pause.",
    )
    login_account_lockout_seconds: int = Field(
        default=900, ge=1, description="The window of those failures, and how long that pause lasts."
    )
    rate_limit_reset_mail: str = Field(
        default="3/hour",
        description="Password-reset mails to one address (whether it has an account or not).",
    )
    trusted_proxies: Annotated[list[str], NoDecode] = Field(
        default=[],
        description="Addresses or networks of reverse proxies whose X-Forwarded-For/-Proto are believed.",
    )

    password_time_cost: int = Field(default=3, ge=1, description="argon2 time cost.")
    password_memory_cost: int = Field(default=65536, ge=8, description="argon2 memory cost in KiB.")
    password_parallelism: int = Field(default=4, ge=1, description="argon2 parallelism.")

    smtp_host: str | None = Field(default=None, description="SMTP server for password-reset mail.")
    smtp_port: int = Field(default=587, description="SMTP port.")
    smtp_username: str | None = Field(default=None, description="SMTP login.")
    smtp_password: str | None = Field(default=None, description="SMTP password.")
    smtp_starttls: bool = Field(default=True, description="Use STARTTLS.")
    smtp_from: str = Field(default="devicecloud@localhost", description="Sender of password-reset mail.")
    public_url: str | None = Field(default=None, description="Base URL shown to users (reset links, hints).")

    demo_device: bool = Field(
        default=True, description="serve runs a demo virtual device owned by the first account."
    )
    admin_email: str | None = Field(default=None, description="First account created by serve.")
    admin_password: str | None = Field(default=None, description="Its password (generated when unset).")
    log_level: str = Field(default="WARNING", description="Root log level.")
    log_format: Literal["console", "json"] = Field(default="console", description="Log line format.")

    @field_validator(
        "cors_origins",
        "builtin_clients",
        "webhook_retry_delays",
        "trusted_proxies",
        "device_proxy_protocol",
        "http_proxy_protocol",
        mode="before",
    )
    @classmethod
    def _split_commas(cls, value: Any) -> Any:
        # Lists come from the environment as "a,b" or as JSON ("[...]"); NoDecode leaves both to us.
        if isinstance(value, str):
            if value.strip().startswith("["):
                return json.loads(value)
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("trusted_proxies", "device_proxy_protocol", "http_proxy_protocol")
    @classmethod
    def _check_networks(cls, value: list[str]) -> list[str]:
        # A typo must not silently trust nothing (or the wrong hosts): each entry is an address or a network.
        for entry in value:
            try:
                ipaddress.ip_network(entry, strict=False)
            except ValueError as exc:
                raise ValueError(f"{entry!r} is not an IP address or network") from exc
        return value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        init_kwargs = getattr(init_settings, "init_kwargs", {})
        toml_file = _toml_path(init_kwargs.get("data_dir"))
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        if toml_file is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=toml_file))
        return tuple(sources)

    @property
    def effective_database_url(self) -> str:
        """
        The database URL, defaulting to SQLite in the data dir.
        """
        if self.database_url:
            return self.database_url
        return f"sqlite+aiosqlite:///{(self.data_dir / 'devicecloud.db').resolve()}"

    @property
    def effective_webhook_block_private(self) -> bool:
        """
        Whether webhooks may not reach private addresses (explicit setting, else on in production).
        """
        if self.webhook_block_private is not None:
            return self.webhook_block_private
        return self.environment == "production"

    @property
    def effective_public_url(self) -> str:
        """
        The base URL users reach the API at.
        """
        if self.public_url:
            return self.public_url.rstrip("/")
        host = "127.0.0.1" if self.http_host in ("0.0.0.0", "::") else self.http_host  # noqa: S104
        return f"http://{host}:{self.http_port}"


def _toml_path(data_dir_override: Any = None) -> Path | None:
    explicit = os.environ.get("DEVICECLOUD_CONFIG")
    if explicit:
        return Path(explicit)
    data_dir = Path(data_dir_override or os.environ.get("DEVICECLOUD_DATA_DIR", "./data"))
    candidate = data_dir / "devicecloud.toml"
    return candidate if candidate.is_file() else None


def load_settings(**overrides: Any) -> Settings:
    """
    Read the settings from overrides, the environment and the TOML file.
    """
    return Settings(**overrides)
