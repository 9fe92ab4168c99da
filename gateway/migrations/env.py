"""Alembic environment: runs against the connection numfed hands it (see gateway.store)."""

from __future__ import annotations

from alembic import context

from gateway.schema import metadata

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("numfed runs its migrations through gateway.store.migrate()")
context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
