"""Alarm test fixtures: a node store (SQLite, or PostgreSQL by indirect parametrisation), an
alarm center on it, and the relay stack of ``tests.relay.conftest`` for uploads."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.relay.conftest import relay_store_url, stack
from tests.support.stores import node_store, node_store_url
from ucpush.alarms.center import AlarmCenter
from ucpush.config import AlarmSettings
from ucpush.store import Store

__all__ = ["center", "node_store", "node_store_url", "relay_store_url", "stack"]


@pytest.fixture
async def center(node_store: Store) -> AsyncIterator[AlarmCenter]:
    async with AlarmCenter(
        node_store.alarms, AlarmSettings(node_name="node-a", history_size=10)
    ) as running:
        yield running
