"""Alembic scripts for the relay schema, run by ``ucpush.store.migrate``."""
