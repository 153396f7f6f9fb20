"""Persistent state behind one repository interface (see ``repository``).

Open the database with ``open_store``, which also creates or upgrades its schema::

    async with await open_store("sqlite+aiosqlite:///var/ucpush.db") as store:
        tenant = await store.relay.get_tenant_by_name("acme")

or keep the store for the life of the process and ``await store.close()`` at shutdown.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

    from ucpush.alarms.store import SqlAlarmRepository, SqlTenantAlarmRepository
    from ucpush.callpush.profiles import SqlCallProfiles
    from ucpush.cloud.sql import SqlAdminRepository, SqlCloudRepository
    from ucpush.cluster.sql import SqlClusterRepository
    from ucpush.store.sql import SqlRelayRepository
    from ucpush.store.sql_signin import SqlSigninRepository
    from ucpush.store.sql_sip import SqlSipRepository

__all__ = ["Store", "open_store"]


@dataclass(frozen=True, slots=True)
class Store:
    """An open database: ``relay``, ``sip`` and ``signin`` are the repositories, ``close()``
    releases the connections."""

    engine: AsyncEngine
    relay: SqlRelayRepository
    sip: SqlSipRepository
    signin: SqlSigninRepository
    cloud: SqlCloudRepository  # the node's relay onboarding state
    admins: SqlAdminRepository  # users of the node's admin page and API
    alarms: SqlAlarmRepository  # the nodes' alarms and upload settings
    tenant_alarms: SqlTenantAlarmRepository  # relay: alarms tenants uploaded
    cluster: SqlClusterRepository  # node groups and device pools (docs/cluster.md)
    call_profiles: SqlCallProfiles  # mobility identities and external presentation

    async def close(self) -> None:
        await self.engine.dispose()

    async def __aenter__(self) -> Store:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()


async def open_store(url: str) -> Store:
    """Connect to ``url`` and migrate its schema to the newest version.

    ``url``: ``sqlite+aiosqlite:///path/to.db`` (parent directory created if missing),
    ``sqlite+aiosqlite:///:memory:`` (one private database per store, for tests), or
    ``postgresql+asyncpg://user:password@host:port/db``; ``sqlite://`` and ``postgresql://``
    select those drivers.
    """
    # Imported here so that components needing only the records in ``repository`` (and CLI
    # start-up) do not load SQLAlchemy and Alembic.
    from ucpush.alarms.store import SqlAlarmRepository, SqlTenantAlarmRepository
    from ucpush.callpush.profiles import SqlCallProfiles
    from ucpush.cloud.sql import SqlAdminRepository, SqlCloudRepository
    from ucpush.cluster.sql import SqlClusterRepository
    from ucpush.store.migrate import upgrade
    from ucpush.store.sql import SqlRelayRepository, create_engine
    from ucpush.store.sql_signin import SqlSigninRepository
    from ucpush.store.sql_sip import SqlSipRepository

    engine = create_engine(url)
    try:
        await upgrade(engine)
    except BaseException:
        await engine.dispose()
        raise
    return Store(
        engine=engine,
        relay=SqlRelayRepository(engine),
        sip=SqlSipRepository(engine),
        signin=SqlSigninRepository(engine),
        cloud=SqlCloudRepository(engine),
        admins=SqlAdminRepository(engine),
        alarms=SqlAlarmRepository(engine),
        tenant_alarms=SqlTenantAlarmRepository(engine),
        cluster=SqlClusterRepository(engine),
        call_profiles=SqlCallProfiles(engine),
    )
