"""product customers: customers, their tokens, claim codes and devices (issue 11 section 6)

Revision ID: 0024_customers
Revises: 0023_diagnostics
Create Date: 2026-12-04 12:45:00.000000

Written beside other branches' migrations: the revision that precedes it is set when branches are merged.

``product_devices`` gains its column by a plain ``ALTER TABLE … ADD COLUMN`` on SQLite too: a batch rebuild
would drop the table, and with foreign keys on (always: store/sql) that cascades into the group memberships.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0024_customers"
down_revision = "0023_diagnostics"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "customers",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("product_id", sa.Integer(), nullable=False),
        sa.Column("username", sa.String(length=254), nullable=False),
        sa.Column("password_hash", sa.String(length=255), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["product_id"], ["products.id"], name=op.f("fk_customers_product_id_products"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_customers")),
        sa.UniqueConstraint("product_id", "username", name="uq_customers_product_id_username"),
    )
    with op.batch_alter_table("access_tokens", schema=None) as batch_op:
        batch_op.add_column(sa.Column("customer_id", sa.Integer(), nullable=True))
        batch_op.create_index(batch_op.f("ix_access_tokens_customer_id"), ["customer_id"], unique=False)
        batch_op.create_foreign_key(
            batch_op.f("fk_access_tokens_customer_id_customers"),
            "customers",
            ["customer_id"],
            ["id"],
            ondelete="CASCADE",
        )
    with op.batch_alter_table("claim_codes", schema=None) as batch_op:
        batch_op.alter_column("user_id", existing_type=sa.Integer(), nullable=True)
        batch_op.add_column(sa.Column("customer_id", sa.Integer(), nullable=True))
        batch_op.create_index(batch_op.f("ix_claim_codes_customer_id"), ["customer_id"], unique=False)
        batch_op.create_foreign_key(
            batch_op.f("fk_claim_codes_customer_id_customers"),
            "customers",
            ["customer_id"],
            ["id"],
            ondelete="CASCADE",
        )
    if op.get_bind().dialect.name == "sqlite":
        op.execute(
            "ALTER TABLE product_devices ADD COLUMN customer_id INTEGER "
            "CONSTRAINT fk_product_devices_customer_id_customers REFERENCES customers (id) ON DELETE SET NULL"
        )
    else:
        op.add_column("product_devices", sa.Column("customer_id", sa.Integer(), nullable=True))
        op.create_foreign_key(
            op.f("fk_product_devices_customer_id_customers"),
            "product_devices",
            "customers",
            ["customer_id"],
            ["id"],
            ondelete="SET NULL",
        )
    op.create_index(op.f("ix_product_devices_customer_id"), "product_devices", ["customer_id"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_product_devices_customer_id"), table_name="product_devices")
    if op.get_bind().dialect.name == "sqlite":
        op.execute("ALTER TABLE product_devices DROP COLUMN customer_id")
    else:
        op.drop_constraint(
            op.f("fk_product_devices_customer_id_customers"), "product_devices", type_="foreignkey"
        )
        op.drop_column("product_devices", "customer_id")
    op.execute("DELETE FROM claim_codes WHERE user_id IS NULL")  # customers' codes have no user
    with op.batch_alter_table("claim_codes", schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f("fk_claim_codes_customer_id_customers"), type_="foreignkey")
        batch_op.drop_index(batch_op.f("ix_claim_codes_customer_id"))
        batch_op.drop_column("customer_id")
        batch_op.alter_column("user_id", existing_type=sa.Integer(), nullable=False)
    op.execute("DELETE FROM access_tokens WHERE customer_id IS NOT NULL")
    with op.batch_alter_table("access_tokens", schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f("fk_access_tokens_customer_id_customers"), type_="foreignkey")
        batch_op.drop_index(batch_op.f("ix_access_tokens_customer_id"))
        batch_op.drop_column("customer_id")
    op.drop_table("customers")
