"""kept DTLS sessions of the UDP gateway (ADR 0027)

Revision ID: 0027_dtls_sessions
Revises: 0026_usage
Create Date: 2026-12-04 13:10:00.000000

Written beside other branches' migrations: the revision that precedes it is set when branches are merged.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0027_dtls_sessions"
down_revision = "0026_usage"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "dtls_sessions",
        sa.Column("device_id", sa.String(length=24), nullable=False),
        sa.Column("cid", sa.LargeBinary(), nullable=True),
        sa.Column("state", sa.Text(), nullable=False),
        sa.Column("hello", sa.LargeBinary(), nullable=False),
        sa.Column("reserved", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("device_id", name=op.f("pk_dtls_sessions")),
    )
    with op.batch_alter_table("dtls_sessions", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_dtls_sessions_cid"), ["cid"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("dtls_sessions", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_dtls_sessions_cid"))
    op.drop_table("dtls_sessions")
