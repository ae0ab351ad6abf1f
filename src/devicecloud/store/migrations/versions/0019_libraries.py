"""libraries and library versions (decision 0019)

Revision ID: 0019
Revises: 0003
Create Date: 2026-12-04 10:20:00.000000

Written beside other branches' migrations: the revision that precedes it is set when branches are merged.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0019"
down_revision = "0004_products"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "libraries",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("name_key", sa.String(length=64), nullable=False),
        sa.Column("owner_id", sa.Integer(), nullable=True),
        sa.Column("official", sa.Boolean(), nullable=False),
        sa.Column("verified", sa.Boolean(), nullable=False),
        sa.Column("installs", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("published_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("latest_version_id", sa.Integer(), nullable=True),
        sa.Column("latest_public_version_id", sa.Integer(), nullable=True),
        sa.ForeignKeyConstraint(
            ["owner_id"], ["users.id"], name=op.f("fk_libraries_owner_id_users"), ondelete="SET NULL"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_libraries")),
        sa.UniqueConstraint("name_key", name=op.f("uq_libraries_name_key")),
        sqlite_autoincrement=True,
    )
    with op.batch_alter_table("libraries", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_libraries_owner_id"), ["owner_id"], unique=False)

    op.create_table(
        "library_versions",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("library_id", sa.Integer(), nullable=False),
        sa.Column("version", sa.String(length=32), nullable=False),
        sa.Column("major", sa.BigInteger(), nullable=False),
        sa.Column("minor", sa.BigInteger(), nullable=False),
        sa.Column("patch", sa.BigInteger(), nullable=False),
        sa.Column("visibility", sa.String(length=8), nullable=False),
        sa.Column("details", sa.JSON(), nullable=False),
        sa.Column("architectures", sa.Text(), nullable=False),
        sa.Column("archive_key", sa.String(length=64), nullable=False),
        sa.Column("download_key", sa.String(length=32), nullable=False),
        sa.Column("size", sa.Integer(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("uploaded_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("published_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["library_id"],
            ["libraries.id"],
            name=op.f("fk_library_versions_library_id_libraries"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_library_versions")),
        sa.UniqueConstraint("download_key", name=op.f("uq_library_versions_download_key")),
        sa.UniqueConstraint("library_id", "version", name="uq_library_versions_library_id_version"),
        sqlite_autoincrement=True,
    )
    with op.batch_alter_table("library_versions", schema=None) as batch_op:
        batch_op.create_index(
            "ix_library_versions_library_id_order", ["library_id", "major", "minor", "patch"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("library_versions", schema=None) as batch_op:
        batch_op.drop_index("ix_library_versions_library_id_order")
    op.drop_table("library_versions")
    with op.batch_alter_table("libraries", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_libraries_owner_id"))
    op.drop_table("libraries")
