"""``RelayRepository`` on SQLAlchemy Core: SQLite (aiosqlite) or PostgreSQL (asyncpg); the SIP
tables too (their repository is in ``sql_sip``).

The tables below describe the schema at the newest migration; the schema itself is created and
upgraded only by the Alembic scripts in ``migrations/`` (a test checks that both agree).
"""

from __future__ import annotations

import asyncio
import dataclasses
import weakref
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager, nullcontext
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import URL, Dialect, make_url
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.pool import StaticPool

from ucpush.store.repository import (
    Conflict,
    MachineAccount,
    NotFound,
    ProviderApp,
    RefreshToken,
    SigningKey,
    StoreError,
    Tenant,
    TenantStatus,
    Voucher,
    VoucherUnusable,
)

_ASYNC_DRIVERS = {"sqlite": "aiosqlite", "postgresql": "asyncpg"}
# Execution option naming the SQLite BEGIN mode of a connection's transactions (default DEFERRED).
SQLITE_BEGIN = "ucpush_sqlite_begin"
_SQLITE_PRAGMAS = (
    "PRAGMA foreign_keys=ON",
    "PRAGMA journal_mode=WAL",
    "PRAGMA busy_timeout=10000",
)


class UTCDateTime(sa.TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes in and out; naive datetimes are refused."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.utcoffset() is None:
            raise ValueError(f"naive datetime {value!r}: pass a timezone-aware one")
        value = value.astimezone(UTC)
        # SQLite stores no offset and compares timestamps as text: keep them all naive UTC.
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


metadata = sa.MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_name)s",
        "uq": "uq_%(table_name)s_%(column_0_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

tenants = sa.Table(
    "tenants",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("name", sa.String(255), nullable=False, unique=True),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("created_at", UTCDateTime(), nullable=False),
)

vouchers = sa.Table(
    "vouchers",
    metadata,
    sa.Column("code_hash", sa.String(64), primary_key=True),
    sa.Column("tenant_id", sa.String(64), sa.ForeignKey("tenants.id"), nullable=False, index=True),
    sa.Column("created_at", UTCDateTime(), nullable=False),
    sa.Column("expires_at", UTCDateTime(), nullable=False),
    sa.Column("used_at", UTCDateTime(), nullable=True),
)

machine_accounts = sa.Table(
    "machine_accounts",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("tenant_id", sa.String(64), sa.ForeignKey("tenants.id"), nullable=False, index=True),
    sa.Column("cluster_id", sa.String(255), nullable=False),
    sa.Column("cluster_name", sa.String(255), nullable=False),
    sa.Column("created_at", UTCDateTime(), nullable=False),
    sa.Column("disabled_at", UTCDateTime(), nullable=True),
)

refresh_tokens = sa.Table(
    "refresh_tokens",
    metadata,
    sa.Column("token_hash", sa.String(64), primary_key=True),
    sa.Column(
        "account_id",
        sa.String(64),
        sa.ForeignKey("machine_accounts.id"),
        nullable=False,
        index=True,
    ),
    sa.Column("created_at", UTCDateTime(), nullable=False),
    sa.Column("revoked_at", UTCDateTime(), nullable=True),
)

signing_keys = sa.Table(
    "signing_keys",
    metadata,
    sa.Column("kid", sa.String(64), primary_key=True),
    sa.Column("private_pem", sa.LargeBinary(), nullable=False),
    sa.Column("created_at", UTCDateTime(), nullable=False),
    sa.Column("retired_at", UTCDateTime(), nullable=True),
)

provider_apps = sa.Table(
    "provider_apps",
    metadata,
    sa.Column("tenant_id", sa.String(64), sa.ForeignKey("tenants.id"), primary_key=True),
    sa.Column("service", sa.String(32), primary_key=True),
    sa.Column("topic", sa.String(255), nullable=False),
    sa.Column("credentials_file", sa.String(1024), nullable=False),
    sa.Column("environment", sa.String(16), nullable=False),
    sa.Column("team_id", sa.String(32), nullable=False),
    sa.Column("key_id", sa.String(32), nullable=False),
)


sip_users = sa.Table(
    "sip_users",
    metadata,
    sa.Column("username", sa.String(255), primary_key=True),
    sa.Column("realm", sa.String(255), primary_key=True),
    sa.Column("aor", sa.String(512), nullable=False, unique=True),
    sa.Column("ha1_md5", sa.String(32), nullable=False),
    sa.Column("ha1_sha256", sa.String(64), nullable=False),
    sa.Column("display_name", sa.String(255), nullable=False),
    sa.Column("created_at", UTCDateTime(), nullable=False),
)

# No foreign key to sip_users: a registrar running without authentication keeps bindings for
# AORs that have no account.
sip_bindings = sa.Table(
    "sip_bindings",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("aor", sa.String(512), nullable=False, index=True),
    sa.Column("contact", sa.Text(), nullable=False),
    sa.Column("expires_at", UTCDateTime(), nullable=False, index=True),
    sa.Column("call_id", sa.String(255), nullable=False),
    sa.Column("cseq", sa.BigInteger(), nullable=False),
    sa.Column("updated_at", UTCDateTime(), nullable=False),
    sa.Column("instance_id", sa.String(255), nullable=False),
    sa.Column("reg_id", sa.BigInteger(), nullable=True),
    sa.Column("q", sa.Float(), nullable=True),
    sa.Column("path", sa.JSON(), nullable=False),
    sa.Column("source_transport", sa.String(16), nullable=False),
    sa.Column("source_host", sa.String(255), nullable=False),
    sa.Column("source_port", sa.Integer(), nullable=False),
    sa.Column("pn_provider", sa.String(64), nullable=False),
    sa.Column("pn_prid", sa.Text(), nullable=False, index=True),
    sa.Column("pn_param", sa.Text(), nullable=False),
    sa.Column("pn_extra", sa.JSON(), nullable=False),
    sa.Column("purr", sa.String(64), nullable=False, index=True),
    sa.Column("purr_previous", sa.String(64), nullable=False, index=True),
    sa.Column("purr_issued_at", UTCDateTime(), nullable=True),
    sa.Column("pnsreg", sa.Boolean(), nullable=False),
    sa.Column("user_agent", sa.Text(), nullable=False),
)


def normalise_url(url: str) -> URL:
    """Parse ``url`` and pick the asyncio driver when none is named (``postgresql://``)."""
    parsed = make_url(url)
    backend, _, driver = parsed.drivername.partition("+")
    backend = "postgresql" if backend == "postgres" else backend
    wanted = _ASYNC_DRIVERS.get(backend)
    if wanted is None:
        raise ValueError(f"unsupported database {backend!r}: use sqlite or postgresql")
    if driver not in ("", wanted):
        raise ValueError(f"unsupported driver {driver!r}: use {backend}+{wanted}")
    return parsed.set(drivername=f"{backend}+{wanted}")


def is_sqlite_memory(url: URL) -> bool:
    return url.get_backend_name() == "sqlite" and url.database in (None, "", ":memory:")


def create_engine(url: str) -> AsyncEngine:
    """Engine for ``url``; a SQLite file's parent directory is created if missing."""
    parsed = normalise_url(url)
    if parsed.get_backend_name() != "sqlite":
        # Cluster nodes outlive database restarts and failovers.
        return create_async_engine(parsed, pool_pre_ping=True)
    if is_sqlite_memory(parsed):
        # One connection holds the whole database; the repository serialises access to it.
        engine = create_async_engine(parsed, poolclass=StaticPool)
    else:
        assert parsed.database is not None
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_async_engine(parsed)
    _configure_sqlite(engine)
    return engine


def _configure_sqlite(engine: AsyncEngine) -> None:
    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # The driver's implicit BEGIN skips SELECT and DDL; SQLAlchemy emits it instead
        # (below), so reads are consistent and migrations are transactional.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        for pragma in _SQLITE_PRAGMAS:
            cursor.execute(pragma)
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(connection: sa.Connection) -> None:
        mode = connection.get_execution_options().get(SQLITE_BEGIN, "DEFERRED")
        connection.exec_driver_sql(f"BEGIN {mode}")


def _is_foreign_key_violation(exc: IntegrityError) -> bool:
    orig = exc.orig
    # sqlite3 names the constraint kind; the asyncpg adapter carries the SQLSTATE.
    return (
        getattr(orig, "sqlite_errorname", None) == "SQLITE_CONSTRAINT_FOREIGNKEY"
        or getattr(orig, "sqlstate", None) == "23503"
    )


def _tenant(row: sa.Row[Any]) -> Tenant:
    return Tenant(
        id=row.id, name=row.name, status=TenantStatus(row.status), created_at=row.created_at
    )


def _values(record: Any) -> dict[str, Any]:
    return {f.name: getattr(record, f.name) for f in dataclasses.fields(record)}


# One lock per in-memory SQLite engine, shared by every repository on it: that engine has a
# single connection, which two transactions must not use at once.
_memory_locks: weakref.WeakKeyDictionary[AsyncEngine, asyncio.Lock] = weakref.WeakKeyDictionary()


class SqlRepositoryBase:
    """Transaction and query helpers the repositories share."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        self._serial: AbstractAsyncContextManager[Any] = (
            _memory_locks.setdefault(engine, asyncio.Lock())
            if isinstance(engine.pool, StaticPool)
            else nullcontext()
        )

    @asynccontextmanager
    async def _begin(self) -> AsyncIterator[AsyncConnection]:
        """One transaction; constraint violations become ``Conflict`` or ``NotFound``."""
        try:
            async with self._serial, self._engine.begin() as conn:
                yield conn
        except IntegrityError as exc:
            error: StoreError = (
                NotFound("referenced row not found")
                if _is_foreign_key_violation(exc)
                else Conflict(str(exc.orig))
            )
            raise error from exc

    async def _insert(self, table: sa.Table, values: dict[str, Any]) -> None:
        async with self._begin() as conn:
            await conn.execute(table.insert().values(values))

    async def _change_one(self, statement: sa.Update | sa.Delete, what: str) -> None:
        async with self._begin() as conn:
            if (await conn.execute(statement)).rowcount == 0:
                raise NotFound(what)

    async def _one(self, statement: sa.Select[Any], what: str) -> sa.Row[Any]:
        async with self._begin() as conn:
            row = (await conn.execute(statement)).first()
        if row is None:
            raise NotFound(what)
        return row

    async def _all(self, statement: sa.Select[Any]) -> list[sa.Row[Any]]:
        async with self._begin() as conn:
            return list(await conn.execute(statement))


class SqlRelayRepository(SqlRepositoryBase):
    """``RelayRepository`` on one engine.

    Besides the documented errors, adding a row that refers to a missing tenant, account... raises
    ``NotFound``; updating or deleting a missing row raises ``NotFound``. Disabling or retiring
    twice keeps the first timestamp.
    """

    # tenants

    async def create_tenant(self, tenant: Tenant) -> None:
        await self._insert(tenants, {**_values(tenant), "status": tenant.status.value})

    async def get_tenant(self, tenant_id: str) -> Tenant:
        row = await self._one(tenants.select().where(tenants.c.id == tenant_id), "tenant")
        return _tenant(row)

    async def get_tenant_by_name(self, name: str) -> Tenant:
        row = await self._one(tenants.select().where(tenants.c.name == name), "tenant")
        return _tenant(row)

    async def list_tenants(self) -> list[Tenant]:
        """Ordered by name."""
        return [_tenant(r) for r in await self._all(tenants.select().order_by(tenants.c.name))]

    async def set_tenant_status(self, tenant_id: str, status: TenantStatus) -> None:
        await self._change_one(
            tenants.update().where(tenants.c.id == tenant_id).values(status=status.value),
            "tenant",
        )

    # vouchers

    async def add_voucher(self, voucher: Voucher) -> None:
        await self._insert(vouchers, _values(voucher))

    async def use_voucher(self, code_hash: str, now: datetime) -> Voucher:
        """Atomically mark an unused, unexpired voucher used and return it (with used_at set).
        Raises VoucherUnusable("unknown" | "used" | "expired"). Two concurrent callers with
        the same code: exactly one succeeds."""
        # One conditional UPDATE: the database, not this process, decides who wins.
        claim = (
            vouchers.update()
            .where(
                vouchers.c.code_hash == code_hash,
                vouchers.c.used_at.is_(None),
                vouchers.c.expires_at > now,
            )
            .values(used_at=now)
            .returning(*vouchers.c)
        )
        async with self._begin() as conn:
            row = (await conn.execute(claim)).first()
            if row is None:
                row = (
                    await conn.execute(vouchers.select().where(vouchers.c.code_hash == code_hash))
                ).first()
                reason = "unknown" if row is None else "used" if row.used_at else "expired"
                raise VoucherUnusable(reason)
        return Voucher(**row._mapping)

    # machine accounts

    async def add_machine_account(self, account: MachineAccount) -> None:
        await self._insert(machine_accounts, _values(account))

    async def get_machine_account(self, account_id: str) -> MachineAccount:
        row = await self._one(
            machine_accounts.select().where(machine_accounts.c.id == account_id),
            "machine account",
        )
        return MachineAccount(**row._mapping)

    async def list_machine_accounts(self, tenant_id: str | None = None) -> list[MachineAccount]:
        """Oldest first."""
        query = machine_accounts.select().order_by(
            machine_accounts.c.created_at, machine_accounts.c.id
        )
        if tenant_id is not None:
            query = query.where(machine_accounts.c.tenant_id == tenant_id)
        return [MachineAccount(**r._mapping) for r in await self._all(query)]

    async def disable_machine_account(self, account_id: str, now: datetime) -> None:
        await self._change_one(
            machine_accounts.update()
            .where(machine_accounts.c.id == account_id)
            .values(disabled_at=sa.func.coalesce(machine_accounts.c.disabled_at, now)),
            "machine account",
        )

    # refresh tokens

    async def add_refresh_token(self, token: RefreshToken) -> None:
        await self._insert(refresh_tokens, _values(token))

    async def get_refresh_token(self, token_hash: str) -> RefreshToken:
        row = await self._one(
            refresh_tokens.select().where(refresh_tokens.c.token_hash == token_hash),
            "refresh token",
        )
        return RefreshToken(**row._mapping)

    async def revoke_refresh_tokens(self, account_id: str, now: datetime) -> int:
        """Revoke every unrevoked refresh token of the account; return how many."""
        async with self._begin() as conn:
            result = await conn.execute(
                refresh_tokens.update()
                .where(
                    refresh_tokens.c.account_id == account_id,
                    refresh_tokens.c.revoked_at.is_(None),
                )
                .values(revoked_at=now)
            )
            return result.rowcount

    # relay signing keys

    async def add_signing_key(self, key: SigningKey) -> None:
        await self._insert(signing_keys, _values(key))

    async def list_signing_keys(self) -> list[SigningKey]:
        """Oldest first."""
        query = signing_keys.select().order_by(signing_keys.c.created_at, signing_keys.c.kid)
        return [SigningKey(**r._mapping) for r in await self._all(query)]

    async def retire_signing_key(self, kid: str, now: datetime) -> None:
        await self._change_one(
            signing_keys.update()
            .where(signing_keys.c.kid == kid)
            .values(retired_at=sa.func.coalesce(signing_keys.c.retired_at, now)),
            "signing key",
        )

    # provider apps

    async def put_app(self, app: ProviderApp) -> None:
        """Insert or replace the app for (tenant_id, service)."""
        values = _values(app)
        insert = (
            postgresql.insert(provider_apps)
            if self._engine.dialect.name == "postgresql"
            else sqlite.insert(provider_apps)
        ).values(values)
        keys = ("tenant_id", "service")
        upsert = insert.on_conflict_do_update(
            index_elements=[provider_apps.c[k] for k in keys],
            set_={k: insert.excluded[k] for k in values if k not in keys},
        )
        async with self._begin() as conn:
            await conn.execute(upsert)

    async def get_app(self, tenant_id: str, service: str) -> ProviderApp:
        row = await self._one(
            provider_apps.select().where(
                provider_apps.c.tenant_id == tenant_id, provider_apps.c.service == service
            ),
            "provider app",
        )
        return ProviderApp(**row._mapping)

    async def list_apps(self, tenant_id: str | None = None) -> list[ProviderApp]:
        """Ordered by tenant, then service."""
        query = provider_apps.select().order_by(provider_apps.c.tenant_id, provider_apps.c.service)
        if tenant_id is not None:
            query = query.where(provider_apps.c.tenant_id == tenant_id)
        return [ProviderApp(**r._mapping) for r in await self._all(query)]

    async def delete_app(self, tenant_id: str, service: str) -> None:
        await self._change_one(
            provider_apps.delete().where(
                provider_apps.c.tenant_id == tenant_id, provider_apps.c.service == service
            ),
            "provider app",
        )
