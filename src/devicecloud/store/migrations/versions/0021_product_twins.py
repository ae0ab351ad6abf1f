"""product-owned webhooks: webhooks.owner_id nullable, webhooks.product_id → products (issue 11 section 4)

Revision ID: 0021_product_twins
Revises: 0019
Create Date: 2026-12-04 10:25:00.000000

Written beside other branches' migrations: the revision that precedes it is set when branches are merged.

On SQLite a column becomes nullable only by rebuilding its table, and dropping the old ``webhooks`` with
foreign keys on (they always are: store/sql) would cascade into its queued deliveries and logs. Those rows
are set aside in temporary tables first and put back, ids kept, after the rebuild.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0021_product_twins"
down_revision = "0020_product_devices"
branch_labels = None
depends_on = None

_CHILDREN = ("webhook_deliveries", "webhook_logs")


def _set_children_aside() -> bool:
    if op.get_bind().dialect.name != "sqlite":
        return False
    for table in _CHILDREN:
        op.execute(f"CREATE TEMP TABLE keep_{table} AS SELECT * FROM {table}")  # noqa: S608 - fixed names
    return True


def _restore_children() -> None:
    for table in _CHILDREN:
        op.execute(f"DELETE FROM {table}")  # noqa: S608 - fixed names
        op.execute(f"INSERT INTO {table} SELECT * FROM keep_{table}")  # noqa: S608 - fixed names
        op.execute(f"DROP TABLE keep_{table}")


def upgrade() -> None:
    aside = _set_children_aside()
    with op.batch_alter_table("webhooks", schema=None) as batch_op:
        batch_op.alter_column("owner_id", existing_type=sa.Integer(), nullable=True)
        batch_op.create_index(batch_op.f("ix_webhooks_product_id"), ["product_id"], unique=False)
        batch_op.create_foreign_key(
            batch_op.f("fk_webhooks_product_id_products"),
            "products",
            ["product_id"],
            ["id"],
            ondelete="CASCADE",
        )
    with op.batch_alter_table(
        "webhook_deliveries", schema=None, table_kwargs={"sqlite_autoincrement": True}
    ) as batch_op:
        batch_op.alter_column("owner_id", existing_type=sa.Integer(), nullable=True)
    if aside:
        _restore_children()


def downgrade() -> None:
    aside = _set_children_aside()
    op.execute("DELETE FROM webhooks WHERE owner_id IS NULL")  # product hooks have no user to fall back on
    with op.batch_alter_table(
        "webhook_deliveries", schema=None, table_kwargs={"sqlite_autoincrement": True}
    ) as batch_op:
        batch_op.alter_column("owner_id", existing_type=sa.Integer(), nullable=False)
    with op.batch_alter_table("webhooks", schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f("fk_webhooks_product_id_products"), type_="foreignkey")
        batch_op.drop_index(batch_op.f("ix_webhooks_product_id"))
        batch_op.alter_column("owner_id", existing_type=sa.Integer(), nullable=False)
    if aside:
        _restore_children()
