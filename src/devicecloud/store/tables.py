"""
The schema: one SQLAlchemy Core metadata for SQLite and PostgreSQL alike.

Timestamps are stored as UTC and always come back timezone-aware (`UtcDateTime`), whatever the dialect does.
JSON columns use SQLAlchemy's generic JSON type (TEXT on SQLite, JSON on PostgreSQL).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    Date,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    false,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

metadata = MetaData(naming_convention=NAMING)


def json_value(value: Any) -> Any:
    """
    A JSON column's value as a read gives it: text from the drivers' own reads (SQLite inline, asyncpg),
    already parsed through SQLAlchemy.
    """
    return json.loads(value) if isinstance(value, str) else value


class UtcDateTime(TypeDecorator[datetime]):
    """
    A DateTime that refuses naive values going in and is always aware coming out.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            msg = "naive datetime given to a UTC column"
            raise ValueError(msg)
        return value.astimezone(UTC)

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if isinstance(value, str):
            value = datetime.fromisoformat(value)
        moment: datetime = value
        if moment.tzinfo is None:
            return moment.replace(tzinfo=UTC)
        return moment.astimezone(UTC)


users = Table(
    "users",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("username", String(254), nullable=False, unique=True),
    Column("password_hash", String(255), nullable=False),
    Column("account_info", JSON, nullable=False, default=dict),
    Column("mfa_enabled", Boolean, nullable=False, default=False),
    Column("mfa_secret", String(64), nullable=True),
    Column("created_at", UtcDateTime, nullable=False),
    Column("updated_at", UtcDateTime, nullable=False),
)

oauth_clients = Table(
    "oauth_clients",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("name", String(255), nullable=False),
    Column("type", String(16), nullable=False),
    Column("secret_hash", String(128), nullable=True),
    Column("owner_id", Integer, ForeignKey("users.id", ondelete="CASCADE"), nullable=True, index=True),
    Column("product_id", BigInteger, nullable=True, index=True),
    Column("redirect_uri", Text, nullable=True),
    Column("scopes", JSON, nullable=False, default=list),
    Column("created_at", UtcDateTime, nullable=False),
)

access_tokens = Table(
    "access_tokens",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("token_hash", String(64), nullable=False, unique=True),
    Column("hint", String(16), nullable=False),
    # A person's token has user_id; a product's (API user, product client) has product_id (decision 0016).
    Column("user_id", Integer, ForeignKey("users.id", ondelete="CASCADE"), nullable=True, index=True),
    Column("client_id", String(64), nullable=False, index=True),
    Column("scopes", JSON, nullable=False, default=list),
    Column("created_at", UtcDateTime, nullable=False),
    Column("expires_at", UtcDateTime, nullable=True),
    Column("refresh_token_hash", String(64), nullable=True, unique=True),
    Column("refresh_expires_at", UtcDateTime, nullable=True),
    Column("product_id", Integer, ForeignKey("products.id", ondelete="CASCADE"), nullable=True, index=True),
    Column(
        "api_user_id",
        Integer,
        ForeignKey("product_api_users.id", ondelete="CASCADE"),
        nullable=True,
        index=True,
    ),
    # A customer's token (issue 11 section 6) has product_id and customer_id; its deletion revokes it
    Column("customer_id", Integer, ForeignKey("customers.id", ondelete="CASCADE"), nullable=True, index=True),
)

one_time_secrets = Table(
    "one_time_secrets",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("kind", String(32), nullable=False),
    Column("secret_hash", String(64), nullable=False),
    Column("user_id", Integer, ForeignKey("users.id", ondelete="CASCADE"), nullable=False, index=True),
    Column("expires_at", UtcDateTime, nullable=False),
    Column("payload", JSON, nullable=False, default=dict),
    Index("ix_one_time_secrets_kind_hash", "kind", "secret_hash", unique=True),
)

devices = Table(
    "devices",
    metadata,
    Column("id", String(24), primary_key=True),
    Column("owner_id", Integer, ForeignKey("users.id", ondelete="SET NULL"), nullable=True, index=True),
    Column("name", String(64), nullable=True),
    Column("platform_id", Integer, nullable=True),
    Column("product_id", Integer, nullable=True),
    Column("public_key", LargeBinary, nullable=True),
    Column("last_ip_address", String(64), nullable=True),
    Column("last_heard", UtcDateTime, nullable=True),
    Column("last_handshake_at", UtcDateTime, nullable=True),
    Column("online", Boolean, nullable=False, default=False),
    Column("describe", JSON, nullable=False, default=dict),
    Column("system_firmware_version", String(32), nullable=True),
    Column("notes", Text, nullable=True),
    Column("serial_number", String(64), nullable=True),
    Column("created_at", UtcDateTime, nullable=False),
    Column("updated_at", UtcDateTime, nullable=False),
    # The node holding the device's latest link and that link's epoch: presence writes are fenced on them
    # (a link that ended after its device moved to another node writes nothing).
    Column("node_id", String(64), nullable=True, index=True),
    Column("session_epoch", BigInteger, nullable=True),
    # Names are unique per owner (NULLs never clash, so unowned devices may share a generated name).
    UniqueConstraint("owner_id", "name", name="uq_devices_owner_id_name"),
)

# The processes holding device links, each with a lease it renews: the devices of a node whose lease ran
# out (it died) are marked offline by whichever node notices first.
nodes = Table(
    "nodes",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("started_at", UtcDateTime, nullable=False),
    Column("seen_at", UtcDateTime, nullable=False),
)

# The product device list's default order, most recently connected first (decision 0020). PostgreSQL only:
# SQLite has no NULLS LAST in an index (its lists are small).
Index("ix_devices_last_connection", devices.c.last_handshake_at.desc().nulls_last(), devices.c.id).ddl_if(
    dialect="postgresql"
)

pending_device_keys = Table(
    "pending_device_keys",
    metadata,
    Column("device_id", String(24), primary_key=True),
    Column("public_key", LargeBinary, nullable=False),
    Column("ip_address", String(64), nullable=True),
    Column("first_seen", UtcDateTime, nullable=False),
    Column("last_seen", UtcDateTime, nullable=False),
    Column("attempts", Integer, nullable=False, default=1),
)

claim_codes = Table(
    "claim_codes",
    metadata,
    Column("code_hash", String(64), primary_key=True),
    # A user's code, or a product customer's (issue 11 section 6): exactly one of the two.
    Column("user_id", Integer, ForeignKey("users.id", ondelete="CASCADE"), nullable=True, index=True),
    Column("expires_at", UtcDateTime, nullable=False),
    Column("customer_id", Integer, ForeignKey("customers.id", ondelete="CASCADE"), nullable=True, index=True),
)

webhooks = Table(
    "webhooks",
    metadata,
    Column("id", String(24), primary_key=True),
    # A user's hook has owner_id; a product's has product_id and no user (decision 0016).
    Column("owner_id", Integer, ForeignKey("users.id", ondelete="CASCADE"), nullable=True, index=True),
    Column("product_id", Integer, ForeignKey("products.id", ondelete="CASCADE"), nullable=True, index=True),
    Column("event", String(64), nullable=False),
    Column("config", JSON, nullable=False),
    Column("created_at", UtcDateTime, nullable=False),
)

# The durable outbox: one row per (event, hook) until it is delivered or given up.
webhook_deliveries = Table(
    "webhook_deliveries",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("hook_id", String(24), ForeignKey("webhooks.id", ondelete="CASCADE"), nullable=False, index=True),
    Column("owner_id", Integer, nullable=True),  # NULL for a product's hook
    Column("host", String(255), nullable=False, default=""),  # the rendered URL's host: per-host throttling
    Column("event", JSON, nullable=False),
    Column("attempt", Integer, nullable=False, default=0),
    Column("next_attempt_at", UtcDateTime, nullable=False),
    Column("lease_until", UtcDateTime, nullable=True),
    Column("created_at", UtcDateTime, nullable=False),
    Index("ix_webhook_deliveries_due", "next_attempt_at", "id"),
    # Ids are never reused (SQLite hands a deleted row's id out again): an id names one delivery for good.
    sqlite_autoincrement=True,
)

webhook_logs = Table(
    "webhook_logs",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("hook_id", String(24), ForeignKey("webhooks.id", ondelete="CASCADE"), nullable=False),
    Column("at", UtcDateTime, nullable=False),
    Column("entry", JSON, nullable=False),
    Index("ix_webhook_logs_hook_id_id", "hook_id", "id"),
)

# Products (decision 0016): everything a product owns references products.id, never a user.
products = Table(
    "products",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("slug", String(64), nullable=False, unique=True),
    Column("name", String(255), nullable=False),
    Column("description", Text, nullable=True),
    Column("platform_id", Integer, nullable=False),
    Column("owner_id", Integer, ForeignKey("users.id", ondelete="SET NULL"), nullable=True),
    Column("settings", JSON, nullable=False, default=dict),
    Column("created_at", UtcDateTime, nullable=False),
    Column("updated_at", UtcDateTime, nullable=False),
)

product_members = Table(
    "product_members",
    metadata,
    Column("product_id", Integer, ForeignKey("products.id", ondelete="CASCADE"), primary_key=True),
    Column("user_id", Integer, ForeignKey("users.id", ondelete="CASCADE"), primary_key=True, index=True),
    Column("role", String(32), nullable=False),
    Column("created_at", UtcDateTime, nullable=False),
)

product_api_users = Table(
    "product_api_users",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("product_id", Integer, ForeignKey("products.id", ondelete="CASCADE"), nullable=False, index=True),
    Column("username", String(254), nullable=False, unique=True),
    Column("friendly_name", String(255), nullable=False),
    Column("scopes", JSON, nullable=False, default=list),
    Column("created_at", UtcDateTime, nullable=False),
)

# A product's customers (issue 11 section 6, decision 0016): people of the product's app, not users. A
# shadow customer (``no_password``) has no password and gets tokens only through the product's client.
customers = Table(
    "customers",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("product_id", Integer, ForeignKey("products.id", ondelete="CASCADE"), nullable=False),
    Column("username", String(254), nullable=False),
    Column("password_hash", String(255), nullable=True),
    Column("created_at", UtcDateTime, nullable=False),
    UniqueConstraint("product_id", "username", name="uq_customers_product_id_username"),
)

device_groups = Table(
    "device_groups",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("product_id", Integer, ForeignKey("products.id", ondelete="CASCADE"), nullable=False),
    Column("name", String(64), nullable=False),
    Column("description", Text, nullable=True),
    Column("color", String(7), nullable=False),
    Column("created_at", UtcDateTime, nullable=False),
    UniqueConstraint("product_id", "name", name="uq_device_groups_product_id_name"),
)

# A product's devices: membership and the product-only fields (issue 11 section 3 writes them). Kept apart
# from devices.product_id, which is what the device's Hello declares.
product_devices = Table(
    "product_devices",
    metadata,
    Column("device_id", String(24), ForeignKey("devices.id", ondelete="CASCADE"), primary_key=True),
    Column("product_id", Integer, ForeignKey("products.id", ondelete="CASCADE"), nullable=False, index=True),
    Column("firmware_version", Integer, nullable=True),
    Column("created_at", UtcDateTime, nullable=False),
    # Issue 11 section 3: the lock fields (the flashing comes with product firmware) and quarantine. A
    # quarantined device joined by its Hello and waits for approval; a denied one is refused at connect.
    Column("development", Boolean, nullable=False, default=False, server_default=false()),
    Column("desired_firmware_version", Integer, nullable=True),
    Column("quarantined", Boolean, nullable=False, default=False, server_default=false()),
    Column("denied", Boolean, nullable=False, default=False, server_default=false()),
    # The customer that claimed it (issue 11 section 6); a customer-owned device has no user owner.
    Column(
        "customer_id", Integer, ForeignKey("customers.id", ondelete="SET NULL"), nullable=True, index=True
    ),
    # The list's orders within a product (decision 0020): by id, and by product firmware version.
    Index("ix_product_devices_product_id_device_id", "product_id", "device_id"),
    Index("ix_product_devices_product_id_firmware_version", "product_id", "firmware_version", "device_id"),
)

device_group_members = Table(
    "device_group_members",
    metadata,
    Column("group_id", Integer, ForeignKey("device_groups.id", ondelete="CASCADE"), primary_key=True),
    Column(
        "device_id",
        String(24),
        ForeignKey("product_devices.device_id", ondelete="CASCADE"),
        primary_key=True,
        index=True,
    ),
)

# Firmware libraries (decision 0019). A name is owned by its first uploader; owner_id becomes NULL when that
# account is deleted, so public libraries others depend on survive it. The two version pointers say which
# version the owner sees (the latest) and which everyone else sees (the latest public one); they are kept by
# the repository in the transaction that adds, publishes or deletes versions.
libraries = Table(
    "libraries",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("name", String(64), nullable=False),
    Column("name_key", String(64), nullable=False, unique=True),  # lower-cased: names are case-insensitive
    Column("owner_id", Integer, ForeignKey("users.id", ondelete="SET NULL"), nullable=True, index=True),
    Column("official", Boolean, nullable=False, default=False),
    Column("verified", Boolean, nullable=False, default=False),
    Column("installs", Integer, nullable=False, default=0),
    Column("created_at", UtcDateTime, nullable=False),
    Column("published_at", UtcDateTime, nullable=True),
    Column("latest_version_id", Integer, nullable=True),
    Column("latest_public_version_id", Integer, nullable=True),
    sqlite_autoincrement=True,
)

library_versions = Table(
    "library_versions",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("library_id", Integer, ForeignKey("libraries.id", ondelete="CASCADE"), nullable=False),
    Column("version", String(32), nullable=False),
    Column("major", BigInteger, nullable=False),
    Column("minor", BigInteger, nullable=False),
    Column("patch", BigInteger, nullable=False),
    Column("visibility", String(8), nullable=False),
    Column("details", JSON, nullable=False),
    # ",photon,electron," (empty: every architecture), for the list's architectures filter
    Column("architectures", Text, nullable=False, default=""),
    Column("archive_key", String(64), nullable=False),
    Column("download_key", String(32), nullable=False, unique=True),
    Column("size", Integer, nullable=False),
    Column("sha256", String(64), nullable=False),
    Column("uploaded_at", UtcDateTime, nullable=False),
    Column("published_at", UtcDateTime, nullable=True),
    UniqueConstraint("library_id", "version", name="uq_library_versions_library_id_version"),
    Index("ix_library_versions_library_id_order", "library_id", "major", "minor", "patch"),
    sqlite_autoincrement=True,
)

# SIM cards (decision 0022): owned by a user or a product, never both; usage per SIM and day is what devices
# reported or an operator imported, in bytes.
sims = Table(
    "sims",
    metadata,
    Column("iccid", String(22), primary_key=True),
    Column("user_id", Integer, ForeignKey("users.id", ondelete="CASCADE"), nullable=True, index=True),
    Column("product_id", Integer, ForeignKey("products.id", ondelete="CASCADE"), nullable=True, index=True),
    Column("status", String(16), nullable=False),
    Column("activations_count", Integer, nullable=False, default=0),
    Column("deactivations_count", Integer, nullable=False, default=0),
    Column("first_activated_on", UtcDateTime, nullable=True),
    Column("last_activated_on", UtcDateTime, nullable=True),
    Column("last_activated_via", String(16), nullable=True),
    Column("last_status_change_action", String(16), nullable=True),
    Column("last_status_change_action_error", Boolean, nullable=False, default=False),
    Column("carrier", String(32), nullable=False),
    Column("last_device_id", String(24), nullable=True),
    Column("created_at", UtcDateTime, nullable=False),
    Column("updated_at", UtcDateTime, nullable=False),
    CheckConstraint("(user_id IS NULL) <> (product_id IS NULL)", name="ck_sims_one_owner"),
)

sim_usage = Table(
    "sim_usage",
    metadata,
    Column("iccid", String(22), ForeignKey("sims.iccid", ondelete="CASCADE"), primary_key=True),
    Column("day", Date, primary_key=True),
    Column("bytes_used", BigInteger, nullable=False),
)

# Device vitals (catalogue §5), one row per report. A report belongs to the device's owner at the time it was
# made: after a transfer the new owner does not read the previous owner's history. Pruned past retention.
device_vitals = Table(
    "device_vitals",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("device_id", String(24), ForeignKey("devices.id", ondelete="CASCADE"), nullable=False),
    Column("owner_id", Integer, ForeignKey("users.id", ondelete="CASCADE"), nullable=True),
    # The device's product when it reported (read by the product's twins), beside or instead of an owner.
    Column("product_id", Integer, ForeignKey("products.id", ondelete="CASCADE"), nullable=True),
    Column("created_at", UtcDateTime, nullable=False),
    Column("payload", JSON, nullable=False),
    Index("ix_device_vitals_device_id_created_at", "device_id", "created_at"),
    Index("ix_device_vitals_created_at", "created_at"),
    sqlite_autoincrement=True,
)

# Product firmware (issue 12 section 4, catalogue §12; decision 0025). The binary is a file in the binary
# store (``binary_id``); ``released_at`` is set the first time a version is released (as the product default
# or to a group) and never cleared, so a version that ever reached devices cannot be deleted. At most one
# version of a product is its default (kept by the repository in the release's transaction).
product_firmware = Table(
    "product_firmware",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("product_id", Integer, ForeignKey("products.id", ondelete="CASCADE"), nullable=False),
    Column("version", Integer, nullable=False),
    Column("title", String(255), nullable=False),
    Column("description", Text, nullable=True),
    Column("name", String(255), nullable=False),
    Column("size", Integer, nullable=False),
    Column("sha256", String(64), nullable=False),
    Column("platform_id", Integer, nullable=False),
    Column("binary_id", String(24), nullable=False),
    Column("uploaded_by", Integer, ForeignKey("users.id", ondelete="SET NULL"), nullable=True),
    Column("uploaded_at", UtcDateTime, nullable=False),
    Column("updated_at", UtcDateTime, nullable=False),
    Column("product_default", Boolean, nullable=False, default=False, server_default=false()),
    Column("intelligent", Boolean, nullable=False, default=False, server_default=false()),
    Column("mandatory", Boolean, nullable=False, default=False, server_default=false()),
    Column("released_at", UtcDateTime, nullable=True),
    UniqueConstraint("product_id", "version", name="uq_product_firmware_product_id_version"),
    sqlite_autoincrement=True,
)

# Which groups a version is released to (a group release).
product_firmware_groups = Table(
    "product_firmware_groups",
    metadata,
    Column("firmware_id", Integer, ForeignKey("product_firmware.id", ondelete="CASCADE"), primary_key=True),
    Column(
        "group_id", Integer, ForeignKey("device_groups.id", ondelete="CASCADE"), primary_key=True, index=True
    ),
)

# The UDP gateway's kept DTLS sessions (ADR 0027): a device that slept, or a server that restarted, resumes
# without a handshake. ``state`` is `SessionState.to_dict()` as JSON text; ``reserved`` the send sequence
# number up to which this session may already have sent: a restored session continues from there, so its
# counter never goes back.
dtls_sessions = Table(
    "dtls_sessions",
    metadata,
    Column("device_id", String(24), primary_key=True),
    Column("cid", LargeBinary, nullable=True, index=True),
    Column("state", Text, nullable=False),
    Column("hello", LargeBinary, nullable=False),
    Column("reserved", BigInteger, nullable=False),
    Column("updated_at", UtcDateTime, nullable=False),
)

# Reports of past hours, compacted (decision 0023, issue 15 benchmark): one row per device, owner, product and
# hour holding the history answer's items for that hour already rendered (UTF-8, ",\n" between them: the
# answer's own separator, so a whole hour is copied into it as it is), oldest first. A
# 30-day history reads 720 of these instead of 43,200 reports and joins their text.
device_vitals_hours = Table(
    "device_vitals_hours",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("device_id", String(24), ForeignKey("devices.id", ondelete="CASCADE"), nullable=False),
    Column("owner_id", Integer, ForeignKey("users.id", ondelete="CASCADE"), nullable=True),
    Column("product_id", Integer, ForeignKey("products.id", ondelete="CASCADE"), nullable=True),
    Column("hour", UtcDateTime, nullable=False),
    Column("reports", Integer, nullable=False),
    Column("body", LargeBinary, nullable=False),
    Index("ix_device_vitals_hours_device_id_hour", "device_id", "hour"),
    Index("ix_device_vitals_hours_hour", "hour"),
    sqlite_autoincrement=True,
)

# Usage counters (catalogue §17, decision 0026): one row per device, day and writer (a process incarnation:
# its node id and start), holding that writer's counts for the day — absolute values, so a flush written
# twice (a retry after a commit whose answer was lost) counts once. An account's usage sums the rows; the
# owner and product are the device's when the writer last flushed it.
usage_counters = Table(
    "usage_counters",
    metadata,
    Column("device_id", String(24), primary_key=True),
    Column("day", Date, primary_key=True),
    Column("writer", String(160), primary_key=True),
    Column("owner_id", Integer, nullable=True),
    Column("product_id", Integer, nullable=True),
    Column("connected", Boolean, nullable=False),
    Column("events", BigInteger, nullable=False),
    Column("calls", BigInteger, nullable=False),
    Column("reads", BigInteger, nullable=False),
    Column("data_bytes", BigInteger, nullable=False),
    Index("ix_usage_counters_owner_id_day", "owner_id", "day"),
    Index("ix_usage_counters_product_id_day", "product_id", "day"),
)

# Usage reports: jobs made by POST …/usage_reports (pending → available), their CSV kept until they expire.
usage_reports = Table(
    "usage_reports",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("account_kind", String(8), nullable=False),
    Column("account_id", Integer, nullable=False),
    Column("state", String(16), nullable=False),
    Column("report_type", String(16), nullable=False),
    Column("date_period_start", Date, nullable=False),
    Column("date_period_end", Date, nullable=False),
    Column("devices", JSON, nullable=False),
    Column("products", JSON, nullable=False),
    Column("created_at", UtcDateTime, nullable=False),
    Column("expires_at", UtcDateTime, nullable=False),
    Column("download_key", String(64), nullable=True),
    Column("content", Text, nullable=True),
    Index("ix_usage_reports_account_kind_account_id", "account_kind", "account_id"),
)

# A limit an account crossed in a billing period: one notification per account, period and limit.
usage_notifications = Table(
    "usage_notifications",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("account_kind", String(8), nullable=False),
    Column("account_id", Integer, nullable=False),
    Column("event_name", String(64), nullable=False),
    Column("period_start", Date, nullable=False),
    Column("period_end", Date, nullable=False),
    Column("limit_name", String(32), nullable=False),
    Column("used", BigInteger, nullable=False),
    Column("allowed", BigInteger, nullable=False),
    Column("created_at", UtcDateTime, nullable=False),
    UniqueConstraint("account_kind", "account_id", "period_start", "limit_name"),
)
