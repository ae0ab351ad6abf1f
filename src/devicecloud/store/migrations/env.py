"""
Alembic environment: migrations always run on a connection handed in by `store.migrate`.
"""

from __future__ import annotations

from alembic import context

from devicecloud.store.tables import metadata

connection = context.config.attributes.get("connection")
if connection is None:
    msg = "run migrations through devicecloud (devicecloud db upgrade), not the alembic command"
    raise RuntimeError(msg)

context.configure(
    connection=connection,
    target_metadata=metadata,
    render_as_batch=connection.dialect.name == "sqlite",
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
