"""Alembic environment: runs on the connection ``ucpush.store.migrate`` passes in."""

from alembic import context

from ucpush.store.sql import metadata

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations through ucpush.store.migrate (ucpush db upgrade)")

# Batch mode lets later revisions alter SQLite tables (it copies them); PostgreSQL alters in place.
context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
