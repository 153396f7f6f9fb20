"""Schema creation and upgrades through ``open_store`` and ``ucpush db upgrade``."""

from __future__ import annotations

import asyncio
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, inspect, make_url, text
from sqlalchemy.ext.asyncio import AsyncEngine
from typer.testing import CliRunner

from ucpush.store import open_store
from ucpush.store.cli import app
from ucpush.store.migrate import alembic_config, current_revision, upgrade
from ucpush.store.repository import Tenant, TenantStatus, Voucher, VoucherUnusable
from ucpush.store.sql import metadata, normalise_url

T0 = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)


def head_revision() -> str | None:
    return ",".join(sorted(ScriptDirectory.from_config(alembic_config()).get_heads())) or None


async def table_names(engine: AsyncEngine) -> set[str]:
    async with engine.connect() as conn:
        return set(await conn.run_sync(lambda c: inspect(c).get_table_names()))


def test_one_base_and_one_head() -> None:
    script = ScriptDirectory.from_config(alembic_config())
    assert script.get_bases() == ["0001"]
    assert script.get_heads() == ["0011"]


async def test_open_store_creates_schema(empty_url: str) -> None:
    async with await open_store(empty_url) as store:
        assert await current_revision(store.engine) == head_revision()
        assert await table_names(store.engine) == {*metadata.tables, "alembic_version"}


async def test_reopen_is_a_no_op(empty_url: str) -> None:
    async with await open_store(empty_url) as store:
        await store.relay.create_tenant(Tenant("t1", "acme", TenantStatus.PENDING, T0))
        assert await upgrade(store.engine) == head_revision()
    async with await open_store(empty_url) as store:
        assert await current_revision(store.engine) == head_revision()
        assert [t.name for t in await store.relay.list_tenants()] == ["acme"]
        async with store.engine.connect() as conn:
            versions = (await conn.execute(text("SELECT version_num FROM alembic_version"))).all()
        assert ",".join(sorted(v for (v,) in versions)) == head_revision()


async def test_schema_matches_tables(empty_url: str) -> None:
    """The migrations build exactly the tables ``sql.py`` queries."""

    def diff(conn: Connection) -> list[object]:
        return compare_metadata(MigrationContext.configure(conn), metadata)

    async with await open_store(empty_url) as store, store.engine.connect() as conn:
        assert await conn.run_sync(diff) == []


async def test_downgrade_and_upgrade_again(empty_url: str) -> None:
    async with await open_store(empty_url) as store:
        async with store.engine.begin() as conn:
            await conn.run_sync(lambda c: command.downgrade(alembic_config(c), "base"))
        assert await table_names(store.engine) == {"alembic_version"}
        assert await current_revision(store.engine) is None
        assert await upgrade(store.engine) == head_revision()
        assert await table_names(store.engine) == {*metadata.tables, "alembic_version"}


async def test_concurrent_first_opens(empty_url: str) -> None:
    # Cluster nodes starting together against a new database.
    stores = await asyncio.gather(*(open_store(empty_url) for _ in range(3)))
    try:
        for store in stores:
            assert await current_revision(store.engine) == head_revision()
    finally:
        for store in stores:
            await store.close()


OPEN_STORE = """
import asyncio, sys
from ucpush.store import open_store

async def main() -> None:
    async with await open_store(sys.argv[1]):
        pass

asyncio.run(main())
"""


@pytest.mark.slow
async def test_processes_migrate_together(empty_url: str) -> None:
    """Separate processes (cluster nodes, parallel CLI runs) race on a new database."""
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable, "-c", OPEN_STORE, empty_url, stderr=asyncio.subprocess.PIPE
        )
        for _ in range(3)
    ]
    for proc in procs:
        _, stderr = await proc.communicate()
        assert proc.returncode == 0, stderr.decode()
    async with await open_store(empty_url) as store:
        assert await current_revision(store.engine) == head_revision()


async def test_sqlite_creates_parent_directory(tmp_path: Path) -> None:
    path = tmp_path / "var" / "lib" / "ucpush.db"
    async with await open_store(f"sqlite+aiosqlite:///{path}"):
        pass
    assert path.is_file()


async def test_sqlite_connection_settings(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'relay.db'}"
    async with await open_store(url) as store, store.engine.connect() as conn:
        pragma = (await conn.execute(text("PRAGMA foreign_keys"))).scalar()
        journal = (await conn.execute(text("PRAGMA journal_mode"))).scalar()
        busy = (await conn.execute(text("PRAGMA busy_timeout"))).scalar()
    assert (pragma, journal) == (1, "wal")
    assert busy is not None and busy >= 1000


async def test_sqlite_memory() -> None:
    async with await open_store("sqlite+aiosqlite:///:memory:") as store:
        relay = store.relay
        await relay.create_tenant(Tenant("t1", "acme", TenantStatus.PENDING, T0))
        await relay.add_voucher(Voucher("h1", "t1", T0, T0 + timedelta(days=1)))
        # One shared connection: the repository must serialise concurrent transactions.
        results = await asyncio.gather(
            *(relay.use_voucher("h1", T0) for _ in range(5)), return_exceptions=True
        )
        assert sum(isinstance(r, Voucher) for r in results) == 1
        assert all(isinstance(r, Voucher | VoucherUnusable) for r in results)
    async with await open_store("sqlite+aiosqlite:///:memory:") as store:
        assert await store.relay.list_tenants() == []


@pytest.mark.postgres
async def test_plain_postgresql_url(pg_session_url: str) -> None:
    plain = pg_session_url.replace("postgresql+asyncpg://", "postgresql://")
    async with await open_store(plain) as store:
        assert store.engine.dialect.driver == "asyncpg"
        assert await current_revision(store.engine) == head_revision()


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("postgresql://u@h:5432/db", "postgresql+asyncpg://u@h:5432/db"),
        ("postgres://u@h/db", "postgresql+asyncpg://u@h/db"),
        ("postgresql+asyncpg://u:pw@h/db", "postgresql+asyncpg://u:pw@h/db"),
        ("sqlite:///var/ucpush.db", "sqlite+aiosqlite:///var/ucpush.db"),
        ("sqlite+aiosqlite:///:memory:", "sqlite+aiosqlite:///:memory:"),
    ],
)
def test_normalise_url(url: str, expected: str) -> None:
    assert normalise_url(url) == make_url(expected)


@pytest.mark.parametrize(
    "url", ["postgresql+psycopg2://u@h/db", "sqlite+pysqlite:///x.db", "mysql://u@h/db"]
)
def test_normalise_url_refuses(url: str) -> None:
    with pytest.raises(ValueError, match="unsupported"):
        normalise_url(url)


def test_cli_upgrade(tmp_path: Path) -> None:
    path = tmp_path / "db" / "relay.db"
    for _ in range(2):
        result = CliRunner().invoke(app, ["upgrade", "--url", f"sqlite+aiosqlite:///{path}"])
        assert result.exit_code == 0, result.output
        assert result.output.strip() == f"database schema at revision {head_revision()}"
    assert path.is_file()


def test_cli_upgrade_default_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # no ucpush.toml here: defaults plus environment
    monkeypatch.delenv("UCPUSH_CONFIG", raising=False)
    monkeypatch.setenv("UCPUSH_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv("UCPUSH_STORE__URL", raising=False)
    result = CliRunner().invoke(app, ["upgrade"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "data" / "ucpush.db").is_file()
