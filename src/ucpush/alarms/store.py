"""Alarm tables and repositories, on the shared engine and metadata of ``ucpush.store.sql``.

Node side: ``alarms`` holds every node's active alarms and a bounded history of cleared ones;
``alarm_settings`` (one row) holds what ``ucpush alarms ...`` changed (NULL = the config
file's value) and the ``pushnow`` hand-shake with the running nodes.
Relay side: ``tenant_alarms`` holds what tenants uploaded, bounded per tenant.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from ucpush.alarms.catalogue import SEVERITY_RANK, PushLevel, Severity
from ucpush.store.sql import SqlRepositoryBase, UTCDateTime, metadata

alarms = sa.Table(
    "alarms",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("node", sa.String(255), nullable=False),
    sa.Column("name", sa.String(64), nullable=False),
    sa.Column("severity", sa.String(16), nullable=False),
    sa.Column("key", sa.String(512), nullable=False),
    sa.Column("details", sa.JSON(), nullable=False),
    sa.Column("raised_at", UTCDateTime(), nullable=False),
    sa.Column("last_raised_at", UTCDateTime(), nullable=False),
    sa.Column("count", sa.Integer(), nullable=False),
    sa.Column("cleared_at", UTCDateTime(), nullable=True, index=True),
    # Last raise or clear; the uploader sends rows changed since they were last uploaded.
    sa.Column("changed_at", UTCDateTime(), nullable=False),
    sa.Column("uploaded_at", UTCDateTime(), nullable=True),
    sa.Index("ix_alarms_node_name_key", "node", "name", "key"),
)

alarm_settings = sa.Table(
    "alarm_settings",
    metadata,
    sa.Column("id", sa.Integer(), primary_key=True, autoincrement=False),
    sa.Column("push_frequency_minutes", sa.Integer(), nullable=True),
    sa.Column("min_push_level", sa.String(16), nullable=True),
    sa.Column("push_requested_at", UTCDateTime(), nullable=True),
    sa.Column("push_result_at", UTCDateTime(), nullable=True),
    sa.Column("push_error", sa.Text(), nullable=False),
    sa.Column("updated_at", UTCDateTime(), nullable=False),
)

tenant_alarms = sa.Table(
    "tenant_alarms",
    metadata,
    sa.Column("tenant_id", sa.String(64), sa.ForeignKey("tenants.id"), primary_key=True),
    sa.Column("alarm_id", sa.String(64), primary_key=True),
    sa.Column("account_id", sa.String(64), nullable=False),
    sa.Column("cluster_id", sa.String(255), nullable=False),
    sa.Column("node", sa.String(255), nullable=False),
    sa.Column("name", sa.String(64), nullable=False),
    sa.Column("severity", sa.String(16), nullable=False),
    sa.Column("raised_at", UTCDateTime(), nullable=False),
    sa.Column("last_raised_at", UTCDateTime(), nullable=False),
    sa.Column("cleared_at", UTCDateTime(), nullable=True),
    sa.Column("count", sa.Integer(), nullable=False),
    sa.Column("details", sa.JSON(), nullable=False),
    sa.Column("pii", sa.Text(), nullable=True),
    sa.Column("received_at", UTCDateTime(), nullable=False, index=True),
)


@dataclass(frozen=True, slots=True)
class AlarmRecord:
    id: str
    node: str
    name: str
    severity: Severity
    key: str
    details: Mapping[str, Any]
    raised_at: datetime
    last_raised_at: datetime
    count: int
    cleared_at: datetime | None
    changed_at: datetime
    uploaded_at: datetime | None

    @property
    def active(self) -> bool:
        return self.cleared_at is None


@dataclass(frozen=True, slots=True)
class AlarmPrefs:
    """The ``alarm_settings`` row; ``None`` = the config file's value."""

    push_frequency_minutes: int | None
    min_push_level: PushLevel | None
    push_requested_at: datetime | None
    push_result_at: datetime | None
    push_error: str


@dataclass(frozen=True, slots=True)
class TenantAlarm:
    tenant_id: str
    alarm_id: str
    account_id: str
    cluster_id: str
    node: str
    name: str
    severity: str
    raised_at: datetime
    last_raised_at: datetime
    cleared_at: datetime | None
    count: int
    details: Mapping[str, Any] = field(default_factory=dict)
    pii: str | None = None
    received_at: datetime | None = None


def _record(row: sa.Row[Any]) -> AlarmRecord:
    return AlarmRecord(**row._asdict())


def _insert_ignoring_conflict(conn: AsyncConnection, table: sa.Table) -> Any:
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    return dialect.insert(table)


class SqlAlarmRepository(SqlRepositoryBase):
    """The call node's alarms. Instances are matched by (node, name, key); at most one of
    them is active at a time (the center writes them in order from one task)."""

    async def raise_alarm(
        self,
        node: str,
        name: str,
        severity: Severity,
        key: str,
        details: Mapping[str, Any],
        now: datetime,
    ) -> AlarmRecord:
        """Record a raise: a new active instance, or one more occurrence of the active one."""
        async with self._begin() as conn:
            row = (
                await conn.execute(
                    alarms.select().where(
                        alarms.c.node == node,
                        alarms.c.name == name,
                        alarms.c.key == key,
                        alarms.c.cleared_at.is_(None),
                    )
                )
            ).first()
            if row is None:
                values = {
                    "id": uuid.uuid4().hex,
                    "node": node,
                    "name": name,
                    "severity": severity,
                    "key": key,
                    "details": dict(details),
                    "raised_at": now,
                    "last_raised_at": now,
                    "count": 1,
                    "cleared_at": None,
                    "changed_at": now,
                    "uploaded_at": None,
                }
                await conn.execute(alarms.insert().values(values))
            else:
                values = {
                    **row._asdict(),
                    "details": dict(details),
                    "last_raised_at": now,
                    "count": row.count + 1,
                    "changed_at": now,
                }
                await conn.execute(
                    alarms.update()
                    .where(alarms.c.id == row.id)
                    .values(
                        details=values["details"],
                        last_raised_at=now,
                        count=values["count"],
                        changed_at=now,
                    )
                )
        return AlarmRecord(**values)

    async def clear_alarm(self, node: str, name: str, key: str, now: datetime) -> bool:
        """Clear the active instance; False when there was none."""
        async with self._begin() as conn:
            result = await conn.execute(
                alarms.update()
                .where(
                    alarms.c.node == node,
                    alarms.c.name == name,
                    alarms.c.key == key,
                    alarms.c.cleared_at.is_(None),
                )
                .values(cleared_at=now, changed_at=now)
            )
            return result.rowcount > 0

    async def list_alarms(
        self, *, active_only: bool = True, node: str | None = None, limit: int = 1000
    ) -> list[AlarmRecord]:
        """Newest first."""
        query = alarms.select().order_by(alarms.c.last_raised_at.desc(), alarms.c.id).limit(limit)
        if active_only:
            query = query.where(alarms.c.cleared_at.is_(None))
        if node is not None:
            query = query.where(alarms.c.node == node)
        return [_record(row) for row in await self._all(query)]

    async def pending_upload(self, node: str, min_rank: int) -> list[AlarmRecord]:
        """This node's alarms changed since their last upload, at or above ``min_rank``
        (``catalogue.SEVERITY_RANK``), oldest change first."""
        allowed = [s for s, rank in SEVERITY_RANK.items() if rank <= min_rank]
        query = (
            alarms.select()
            .where(
                alarms.c.node == node,
                alarms.c.severity.in_(allowed),
                sa.or_(alarms.c.uploaded_at.is_(None), alarms.c.uploaded_at < alarms.c.changed_at),
            )
            .order_by(alarms.c.changed_at, alarms.c.id)
        )
        return [_record(row) for row in await self._all(query)]

    async def mark_uploaded(self, uploaded: Iterable[AlarmRecord], now: datetime) -> None:
        """Mark rows sent; a row changed again since it was read stays pending."""
        async with self._begin() as conn:
            for record in uploaded:
                await conn.execute(
                    alarms.update()
                    .where(alarms.c.id == record.id, alarms.c.changed_at == record.changed_at)
                    .values(uploaded_at=now)
                )

    async def prune_history(self, keep: int) -> int:
        """Delete all but the newest ``keep`` cleared alarms; return how many went."""
        async with self._begin() as conn:
            newest = (
                sa.select(alarms.c.id)
                .where(alarms.c.cleared_at.is_not(None))
                .order_by(alarms.c.cleared_at.desc(), alarms.c.id)
                .limit(keep)
            )
            result = await conn.execute(
                alarms.delete().where(
                    alarms.c.cleared_at.is_not(None), alarms.c.id.not_in(newest.scalar_subquery())
                )
            )
            return result.rowcount

    # settings

    async def prefs(self, now: datetime) -> AlarmPrefs:
        """The settings row, created on first use."""
        async with self._begin() as conn:
            row = await self._prefs_row(conn, now)
        return AlarmPrefs(
            push_frequency_minutes=row.push_frequency_minutes,
            min_push_level=row.min_push_level,
            push_requested_at=row.push_requested_at,
            push_result_at=row.push_result_at,
            push_error=row.push_error,
        )

    async def _prefs_row(self, conn: AsyncConnection, now: datetime) -> sa.Row[Any]:
        query = alarm_settings.select().where(alarm_settings.c.id == 1)
        row = (await conn.execute(query)).first()
        if row is None:
            insert = _insert_ignoring_conflict(conn, alarm_settings).values(
                id=1, push_error="", updated_at=now
            )
            # Two nodes starting together: one row.
            await conn.execute(insert.on_conflict_do_nothing(index_elements=["id"]))
            row = (await conn.execute(query)).one()
        return row

    async def _update_prefs(self, now: datetime, **values: Any) -> None:
        async with self._begin() as conn:
            await self._prefs_row(conn, now)
            await conn.execute(
                alarm_settings.update()
                .where(alarm_settings.c.id == 1)
                .values(updated_at=now, **values)
            )

    async def set_push_frequency(self, minutes: int, now: datetime) -> None:
        if not 5 <= minutes <= 90:
            raise ValueError(f"push frequency must be 5..90 minutes, got {minutes}")
        await self._update_prefs(now, push_frequency_minutes=minutes)

    async def set_min_push_level(self, level: PushLevel, now: datetime) -> None:
        await self._update_prefs(now, min_push_level=level)

    async def request_push(self, now: datetime) -> None:
        """``pushnow``: the running nodes upload at their next poll."""
        await self._update_prefs(now, push_requested_at=now)

    async def record_push_result(self, now: datetime, error: str) -> None:
        await self._update_prefs(now, push_result_at=now, push_error=error)


class SqlTenantAlarmRepository(SqlRepositoryBase):
    """The relay's store of what tenants uploaded. Uploads are idempotent: the node's alarm
    id names the row, a later upload of the same alarm updates it."""

    @classmethod
    def sharing(cls, repo: SqlRepositoryBase) -> SqlTenantAlarmRepository:
        """On the engine (and, for in-memory SQLite, the lock) of another repository: the
        relay's HTTP app is built from its relay repository alone."""
        return cls(repo._engine)

    async def store_uploads(
        self, records: Sequence[TenantAlarm], now: datetime, keep_per_tenant: int
    ) -> None:
        tenants = {r.tenant_id for r in records}
        async with self._begin() as conn:
            for record in records:
                values = {
                    "account_id": record.account_id,
                    "cluster_id": record.cluster_id,
                    "node": record.node,
                    "name": record.name,
                    "severity": record.severity,
                    "raised_at": record.raised_at,
                    "last_raised_at": record.last_raised_at,
                    "cleared_at": record.cleared_at,
                    "count": record.count,
                    "details": dict(record.details),
                    "pii": record.pii,
                    "received_at": now,
                }
                insert = _insert_ignoring_conflict(conn, tenant_alarms).values(
                    tenant_id=record.tenant_id, alarm_id=record.alarm_id, **values
                )
                await conn.execute(
                    insert.on_conflict_do_update(
                        index_elements=["tenant_id", "alarm_id"],
                        set_={k: insert.excluded[k] for k in values},
                    )
                )
            for tenant_id in tenants:
                newest = (
                    sa.select(tenant_alarms.c.alarm_id)
                    .where(tenant_alarms.c.tenant_id == tenant_id)
                    .order_by(tenant_alarms.c.received_at.desc(), tenant_alarms.c.alarm_id)
                    .limit(keep_per_tenant)
                )
                await conn.execute(
                    tenant_alarms.delete().where(
                        tenant_alarms.c.tenant_id == tenant_id,
                        tenant_alarms.c.alarm_id.not_in(newest.scalar_subquery()),
                    )
                )

    async def list_for_tenant(self, tenant_id: str, limit: int = 1000) -> list[TenantAlarm]:
        """Newest received first."""
        rows = await self._all(
            tenant_alarms.select()
            .where(tenant_alarms.c.tenant_id == tenant_id)
            .order_by(tenant_alarms.c.received_at.desc(), tenant_alarms.c.last_raised_at.desc())
            .limit(limit)
        )
        return [TenantAlarm(**row._asdict()) for row in rows]
