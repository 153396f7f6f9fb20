"""Fixtures: a store on SQLite and PostgreSQL, and a private Redis key prefix per test (the
Redis on 127.0.0.1:6379 is shared by every test and engineer)."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from tests.support.pg import pg_database
from ucpush.store import Store, open_store

REDIS_URL = "redis://127.0.0.1:6379/0"


@pytest.fixture(
    params=[
        pytest.param("sqlite", id="sqlite"),
        pytest.param("postgres", id="postgres", marks=pytest.mark.postgres),
    ]
)
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'cluster.db'}"
    else:
        with pg_database() as url:
            yield url


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[Store]:
    async with await open_store(store_url) as opened:
        yield opened


@pytest.fixture
async def key_prefix() -> AsyncIterator[str]:
    """A fresh prefix; its keys are deleted afterwards."""
    prefix = f"ucpush-test-{secrets.token_hex(4)}"
    yield prefix
    client = aioredis.from_url(REDIS_URL)
    try:
        keys = [k async for k in client.scan_iter(f"{prefix}:*")]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()
