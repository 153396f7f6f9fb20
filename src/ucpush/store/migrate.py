"""Run the Alembic migrations in ``migrations/`` programmatically: no alembic.ini needed."""

from __future__ import annotations

import asyncio
import weakref

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Connection, text
from sqlalchemy.ext.asyncio import AsyncEngine

from ucpush.store.sql import SQLITE_BEGIN

# Arbitrary constant naming the PostgreSQL advisory lock that serialises migrations.
_PG_LOCK_KEY = 0x75637075_7368  # "ucpush"

# Alembic keeps the running migration in module globals (alembic.context, alembic.op), so two
# migrations interleaving on one event loop would clobber each other.
_loop_locks: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock] = (
    weakref.WeakKeyDictionary()
)


def alembic_config(connection: Connection | None = None) -> Config:
    """Alembic configuration whose ``env.py`` migrates ``connection``.

    Without a connection it serves to inspect the scripts (``ScriptDirectory.from_config``).
    """
    config = Config()
    config.set_main_option("script_location", "ucpush.store:migrations")
    if connection is not None:
        config.attributes["connection"] = connection
    return config


async def upgrade(engine: AsyncEngine, revision: str = "heads") -> str | None:
    """Migrate the database to ``revision`` in one transaction; return the revision reached
    (heads joined by "," while components' migrations branch off a common parent).

    A no-op when the database is already there.
    """
    lock = _loop_locks.setdefault(asyncio.get_running_loop(), asyncio.Lock())
    async with lock, engine.connect() as conn:
        # Processes may start together on a new database: one migrates, the others wait for it
        # (SQLite: BEGIN IMMEDIATE takes the write lock up front; see sql.SQLITE_BEGIN).
        conn = await conn.execution_options(**{SQLITE_BEGIN: "IMMEDIATE"})
        async with conn.begin():
            if conn.dialect.name == "postgresql":
                await conn.execute(
                    text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_LOCK_KEY}
                )
            return await conn.run_sync(_upgrade, revision)


async def current_revision(engine: AsyncEngine) -> str | None:
    """The database's revision, None when it has never been migrated."""
    async with engine.connect() as conn:
        return await conn.run_sync(_current)


def _upgrade(connection: Connection, revision: str) -> str | None:
    command.upgrade(alembic_config(connection), revision)
    return _current(connection)


def _current(connection: Connection) -> str | None:
    heads = MigrationContext.configure(connection).get_current_heads()
    return ",".join(sorted(heads)) or None
