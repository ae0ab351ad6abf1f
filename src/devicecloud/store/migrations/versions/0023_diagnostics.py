"""device vitals (diagnostics, catalogue §5)

Revision ID: 0023_diagnostics
Revises: 0019
Create Date: 2026-12-04 10:30:00.000000

Written beside other branches' migrations: the revision that precedes it is set when branches are merged.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0023_diagnostics"
down_revision = "0022_sims"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "device_vitals",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("device_id", sa.String(length=24), nullable=False),
        sa.Column("owner_id", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("payload", sa.JSON(), nullable=False),
        sa.ForeignKeyConstraint(
            ["device_id"], ["devices.id"], name=op.f("fk_device_vitals_device_id_devices"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["owner_id"], ["users.id"], name=op.f("fk_device_vitals_owner_id_users"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_device_vitals")),
        sqlite_autoincrement=True,
    )
    with op.batch_alter_table("device_vitals", schema=None) as batch_op:
        batch_op.create_index(
            "ix_device_vitals_device_id_created_at", ["device_id", "created_at"], unique=False
        )
        batch_op.create_index("ix_device_vitals_created_at", ["created_at"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("device_vitals", schema=None) as batch_op:
        batch_op.drop_index("ix_device_vitals_created_at")
        batch_op.drop_index("ix_device_vitals_device_id_created_at")
    op.drop_table("device_vitals")
