"""A relay over real TLS (tests/relay's stack) and a node store of its own, on SQLite or
PostgreSQL."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.relay.conftest import Stack, relay_store_url, stack
from tests.support.stores import node_store, node_store_url
from ucpush.cloud import CloudConnection
from ucpush.config import CloudSettings, Settings
from ucpush.store import Store

__all__ = ["Stack", "node_store", "node_store_url", "relay_store_url", "stack"]


@pytest.fixture
def node_settings(tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path / "node", cloud=CloudSettings(reload_seconds=3600))


@pytest.fixture
async def cloud(node_settings: Settings, node_store: Store) -> AsyncIterator[CloudConnection]:
    async with await CloudConnection.open(node_settings, node_store) as connection:
        yield connection
