"""product firmware and its releases (issue 12 section 4, catalogue §12)

Revision ID: 0025_product_firmware
Revises: 0024_customers
Create Date: 2026-12-04 12:45:00.000000

Written beside other branches' migrations: the revision that precedes it is set when branches are merged.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0025_product_firmware"
down_revision = "0024_customers"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "product_firmware",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("product_id", sa.Integer(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("title", sa.String(length=255), nullable=False),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("size", sa.Integer(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("platform_id", sa.Integer(), nullable=False),
        sa.Column("binary_id", sa.String(length=24), nullable=False),
        sa.Column("uploaded_by", sa.Integer(), nullable=True),
        sa.Column("uploaded_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("product_default", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column("intelligent", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column("mandatory", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column("released_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["product_id"],
            ["products.id"],
            name=op.f("fk_product_firmware_product_id_products"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["uploaded_by"], ["users.id"], name=op.f("fk_product_firmware_uploaded_by_users"), ondelete="SET NULL"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_product_firmware")),
        sa.UniqueConstraint("product_id", "version", name="uq_product_firmware_product_id_version"),
        sqlite_autoincrement=True,
    )
    op.create_table(
        "product_firmware_groups",
        sa.Column("firmware_id", sa.Integer(), nullable=False),
        sa.Column("group_id", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["firmware_id"],
            ["product_firmware.id"],
            name=op.f("fk_product_firmware_groups_firmware_id_product_firmware"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["group_id"],
            ["device_groups.id"],
            name=op.f("fk_product_firmware_groups_group_id_device_groups"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("firmware_id", "group_id", name=op.f("pk_product_firmware_groups")),
    )
    with op.batch_alter_table("product_firmware_groups", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_product_firmware_groups_group_id"), ["group_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("product_firmware_groups", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_product_firmware_groups_group_id"))
    op.drop_table("product_firmware_groups")
    op.drop_table("product_firmware")
