"""Throwaway PostgreSQL databases for tests (127.0.0.1:5432, user postgres, trust auth).

Tests that need PostgreSQL fail, rather than skip, when the server is unreachable: CI has it.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Iterator
from contextlib import contextmanager

import asyncpg
import pytest

PG_HOST = "127.0.0.1"
PG_PORT = 5432
PG_HINT = (
    f"PostgreSQL on {PG_HOST}:{PG_PORT} is unreachable; start it with "
    "`pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start`"
)


async def _pg_admin(statement: str) -> None:
    try:
        conn = await asyncpg.connect(
            host=PG_HOST, port=PG_PORT, user="postgres", database="test", timeout=10
        )
    except (OSError, asyncpg.PostgresError) as exc:
        pytest.fail(f"{PG_HINT}: {exc}")
    try:
        await conn.execute(statement)
    finally:
        await conn.close()


@contextmanager
def pg_database() -> Iterator[str]:
    """A new, empty database, dropped afterwards; yields its URL."""
    name = f"ucpush_test_{secrets.token_hex(6)}"
    asyncio.run(_pg_admin(f'CREATE DATABASE "{name}"'))
    try:
        yield f"postgresql+asyncpg://postgres@{PG_HOST}:{PG_PORT}/{name}"
    finally:
        # FORCE: engines a failed test left open must not keep the database alive.
        asyncio.run(_pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
