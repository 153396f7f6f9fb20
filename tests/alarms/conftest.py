"""Alarm test fixtures: a node store (SQLite, or PostgreSQL by indirect parametrisation), an
alarm center on it, and the relay stack of ``tests.relay.conftest`` for uploads."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from tests.relay.conftest import relay_store_url, stack
from tests.support.pg import pg_database
from ucpush.alarms.center import AlarmCenter
from ucpush.config import AlarmSettings
from ucpush.store import Store, open_store

__all__ = ["center", "node_store", "node_store_url", "relay_store_url", "stack"]


@pytest.fixture
def node_store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if getattr(request, "param", "sqlite") == "postgres":
        with pg_database() as url:
            yield url
    else:
        yield f"sqlite+aiosqlite:///{tmp_path / 'node.db'}"


@pytest.fixture
async def node_store(node_store_url: str) -> AsyncIterator[Store]:
    store = await open_store(node_store_url)
    yield store
    await store.close()


@pytest.fixture
async def center(node_store: Store) -> AsyncIterator[AlarmCenter]:
    async with AlarmCenter(
        node_store.alarms, AlarmSettings(node_name="node-a", history_size=10)
    ) as running:
        yield running
