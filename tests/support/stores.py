"""A call node's store for tests: SQLite by default, PostgreSQL by ``indirect``
parametrisation (``@pytest.mark.parametrize("node_store_url", ["postgres"], indirect=True)``).
Import the fixtures into a conftest to use them."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from tests.support.pg import pg_database
from ucpush.store import Store, open_store


@pytest.fixture
def node_store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if getattr(request, "param", "sqlite") == "postgres":
        with pg_database() as url:
            yield url
    else:
        yield f"sqlite+aiosqlite:///{tmp_path / 'node.db'}"


@pytest.fixture
async def node_store(node_store_url: str) -> AsyncIterator[Store]:
    async with await open_store(node_store_url) as store:
        yield store
