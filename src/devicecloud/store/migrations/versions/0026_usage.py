"""usage counters, usage reports and their notifications (catalogue §17); vitals of products, compacted hours

Revision ID: 0026_usage
Revises: 0025_product_firmware
Create Date: 2026-12-04 12:40:00.000000

Written beside other branches' migrations: the revision that precedes it is set when branches are merged.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0026_usage"
down_revision = "0025_product_firmware"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("device_vitals", schema=None) as batch_op:
        batch_op.alter_column("owner_id", existing_type=sa.Integer(), nullable=True)
        batch_op.add_column(sa.Column("product_id", sa.Integer(), nullable=True))
        batch_op.create_foreign_key(
            op.f("fk_device_vitals_product_id_products"), "products", ["product_id"], ["id"], ondelete="CASCADE"
        )
    op.create_table(
        "device_vitals_hours",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("device_id", sa.String(length=24), nullable=False),
        sa.Column("owner_id", sa.Integer(), nullable=True),
        sa.Column("product_id", sa.Integer(), nullable=True),
        sa.Column("hour", sa.DateTime(timezone=True), nullable=False),
        sa.Column("reports", sa.Integer(), nullable=False),
        sa.Column("body", sa.LargeBinary(), nullable=False),
        sa.ForeignKeyConstraint(
            ["device_id"], ["devices.id"], name=op.f("fk_device_vitals_hours_device_id_devices"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["owner_id"], ["users.id"], name=op.f("fk_device_vitals_hours_owner_id_users"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["product_id"],
            ["products.id"],
            name=op.f("fk_device_vitals_hours_product_id_products"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_device_vitals_hours")),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_device_vitals_hours_device_id_hour", "device_vitals_hours", ["device_id", "hour"])
    op.create_index("ix_device_vitals_hours_hour", "device_vitals_hours", ["hour"])
    op.create_table(
        "usage_counters",
        sa.Column("device_id", sa.String(length=24), nullable=False),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("writer", sa.String(length=160), nullable=False),
        sa.Column("owner_id", sa.Integer(), nullable=True),
        sa.Column("product_id", sa.Integer(), nullable=True),
        sa.Column("connected", sa.Boolean(), nullable=False),
        sa.Column("events", sa.BigInteger(), nullable=False),
        sa.Column("calls", sa.BigInteger(), nullable=False),
        sa.Column("reads", sa.BigInteger(), nullable=False),
        sa.Column("data_bytes", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("device_id", "day", "writer", name=op.f("pk_usage_counters")),
    )
    op.create_index("ix_usage_counters_owner_id_day", "usage_counters", ["owner_id", "day"])
    op.create_index("ix_usage_counters_product_id_day", "usage_counters", ["product_id", "day"])
    op.create_table(
        "usage_reports",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("account_kind", sa.String(length=8), nullable=False),
        sa.Column("account_id", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("report_type", sa.String(length=16), nullable=False),
        sa.Column("date_period_start", sa.Date(), nullable=False),
        sa.Column("date_period_end", sa.Date(), nullable=False),
        sa.Column("devices", sa.JSON(), nullable=False),
        sa.Column("products", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("download_key", sa.String(length=64), nullable=True),
        sa.Column("content", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_usage_reports")),
    )
    op.create_index(
        "ix_usage_reports_account_kind_account_id", "usage_reports", ["account_kind", "account_id"]
    )
    op.create_table(
        "usage_notifications",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("account_kind", sa.String(length=8), nullable=False),
        sa.Column("account_id", sa.Integer(), nullable=False),
        sa.Column("event_name", sa.String(length=64), nullable=False),
        sa.Column("period_start", sa.Date(), nullable=False),
        sa.Column("period_end", sa.Date(), nullable=False),
        sa.Column("limit_name", sa.String(length=32), nullable=False),
        sa.Column("used", sa.BigInteger(), nullable=False),
        sa.Column("allowed", sa.BigInteger(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_usage_notifications")),
        sa.UniqueConstraint(
            "account_kind",
            "account_id",
            "period_start",
            "limit_name",
            name=op.f("uq_usage_notifications_account_kind"),
        ),
    )


def downgrade() -> None:
    op.drop_index("ix_device_vitals_hours_hour", table_name="device_vitals_hours")
    op.drop_index("ix_device_vitals_hours_device_id_hour", table_name="device_vitals_hours")
    op.drop_table("device_vitals_hours")
    op.execute("DELETE FROM device_vitals WHERE owner_id IS NULL")
    with op.batch_alter_table("device_vitals", schema=None) as batch_op:
        batch_op.drop_constraint(op.f("fk_device_vitals_product_id_products"), type_="foreignkey")
        batch_op.drop_column("product_id")
        batch_op.alter_column("owner_id", existing_type=sa.Integer(), nullable=False)
    op.drop_table("usage_notifications")
    op.drop_index("ix_usage_reports_account_kind_account_id", table_name="usage_reports")
    op.drop_table("usage_reports")
    op.drop_index("ix_usage_counters_product_id_day", table_name="usage_counters")
    op.drop_index("ix_usage_counters_owner_id_day", table_name="usage_counters")
    op.drop_table("usage_counters")
