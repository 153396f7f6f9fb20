"""A relay over real TLS (tests/relay's stack) and a node store of its own, on SQLite or
PostgreSQL."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from tests.relay.conftest import Stack, relay_store_url, stack
from tests.support.pg import pg_database
from ucpush.cloud import CloudConnection
from ucpush.config import CloudSettings, Settings
from ucpush.store import Store, open_store

__all__ = ["Stack", "relay_store_url", "stack"]


@pytest.fixture
def node_store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """SQLite by default; ``indirect`` parametrisation with "postgres" runs on PostgreSQL."""
    if getattr(request, "param", "sqlite") == "postgres":
        with pg_database() as url:
            yield url
    else:
        yield f"sqlite+aiosqlite:///{tmp_path / 'node.db'}"


@pytest.fixture
def node_settings(tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path / "node", cloud=CloudSettings(reload_seconds=3600))


@pytest.fixture
async def node_store(node_store_url: str) -> AsyncIterator[Store]:
    async with await open_store(node_store_url) as store:
        yield store


@pytest.fixture
async def cloud(node_settings: Settings, node_store: Store) -> AsyncIterator[CloudConnection]:
    async with await CloudConnection.open(node_settings, node_store) as connection:
        yield connection
