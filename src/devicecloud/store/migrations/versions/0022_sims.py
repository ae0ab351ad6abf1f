"""SIM cards and their daily data usage (decision 0022)

Revision ID: 0022_sims
Revises: 0019
Create Date: 2026-12-04 10:35:00.000000

Written beside other branches' migrations: the revision that precedes it is set when branches are merged.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0022_sims"
down_revision = "0021_product_twins"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "sims",
        sa.Column("iccid", sa.String(length=22), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=True),
        sa.Column("product_id", sa.Integer(), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("activations_count", sa.Integer(), nullable=False),
        sa.Column("deactivations_count", sa.Integer(), nullable=False),
        sa.Column("first_activated_on", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_activated_on", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_activated_via", sa.String(length=16), nullable=True),
        sa.Column("last_status_change_action", sa.String(length=16), nullable=True),
        sa.Column("last_status_change_action_error", sa.Boolean(), nullable=False),
        sa.Column("carrier", sa.String(length=32), nullable=False),
        sa.Column("last_device_id", sa.String(length=24), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("(user_id IS NULL) <> (product_id IS NULL)", name="ck_sims_one_owner"),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_sims_user_id_users"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["product_id"], ["products.id"], name=op.f("fk_sims_product_id_products"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("iccid", name=op.f("pk_sims")),
    )
    with op.batch_alter_table("sims", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_sims_user_id"), ["user_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_sims_product_id"), ["product_id"], unique=False)

    op.create_table(
        "sim_usage",
        sa.Column("iccid", sa.String(length=22), nullable=False),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("bytes_used", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["iccid"], ["sims.iccid"], name=op.f("fk_sim_usage_iccid_sims"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("iccid", "day", name=op.f("pk_sim_usage")),
    )


def downgrade() -> None:
    op.drop_table("sim_usage")
    with op.batch_alter_table("sims", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_sims_product_id"))
        batch_op.drop_index(batch_op.f("ix_sims_user_id"))
    op.drop_table("sims")
