"""product devices: lock fields and quarantine (issue 11 section 3)

Revision ID: 0020_product_devices
Revises: 0019
Create Date: 2026-12-04 10:30:00.000000

Written beside other branches' migrations: the revision that precedes it is set when branches are merged.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0020_product_devices"
down_revision = "0020"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("product_devices", schema=None) as batch_op:
        batch_op.add_column(sa.Column("development", sa.Boolean(), server_default=sa.false(), nullable=False))
        batch_op.add_column(sa.Column("desired_firmware_version", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("quarantined", sa.Boolean(), server_default=sa.false(), nullable=False))
        batch_op.add_column(sa.Column("denied", sa.Boolean(), server_default=sa.false(), nullable=False))
        batch_op.create_index("ix_product_devices_product_id_device_id", ["product_id", "device_id"])
        batch_op.create_index(
            "ix_product_devices_product_id_firmware_version", ["product_id", "firmware_version", "device_id"]
        )


    if op.get_context().dialect.name == "postgresql":  # SQLite has no NULLS LAST in an index
        op.create_index(
            "ix_devices_last_connection", "devices", [sa.text("last_handshake_at DESC NULLS LAST"), "id"]
        )


def downgrade() -> None:
    if op.get_context().dialect.name == "postgresql":
        op.drop_index("ix_devices_last_connection", table_name="devices")
    with op.batch_alter_table("product_devices", schema=None) as batch_op:
        batch_op.drop_index("ix_product_devices_product_id_firmware_version")
        batch_op.drop_index("ix_product_devices_product_id_device_id")
        batch_op.drop_column("denied")
        batch_op.drop_column("quarantined")
        batch_op.drop_column("desired_firmware_version")
        batch_op.drop_column("development")
