"""Fixtures: each test runs once on SQLite (a file in tmp_path) and once on PostgreSQL.

PostgreSQL tests use throwaway databases on 127.0.0.1:5432 (user postgres, trust auth) and
fail, rather than skip, when the server is unreachable.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from sqlalchemy import text

from tests.support.pg import pg_database
from ucpush.store import Store, open_store
from ucpush.store.sql import metadata


@pytest.fixture(
    params=[
        pytest.param("sqlite", id="sqlite"),
        pytest.param("postgres", id="postgres", marks=pytest.mark.postgres),
    ]
)
def backend(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture(scope="session")
def pg_session_url() -> Iterator[str]:
    with pg_database() as url:
        yield url


@pytest.fixture
def empty_url(backend: str, tmp_path: Path) -> Iterator[str]:
    """URL of a database no store has opened yet."""
    if backend == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'empty.db'}"
    else:
        with pg_database() as url:
            yield url


@pytest.fixture
def store_url(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    """URL of a database the ``store`` fixture opens (shared by the session on PostgreSQL)."""
    if backend == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'relay.db'}"
    # Resolved here, outside the event loop, because creating the database runs its own loop.
    return request.getfixturevalue("pg_session_url")


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[Store]:
    async with await open_store(store_url) as opened:
        if opened.engine.dialect.name == "postgresql":
            # The session database is shared: start every test from empty tables.
            tables = ", ".join(t.name for t in metadata.sorted_tables)
            async with opened.engine.begin() as conn:
                await conn.execute(text(f"TRUNCATE {tables}"))
        yield opened
