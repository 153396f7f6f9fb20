"""The node's cloud onboarding state and the admin users, on SQLAlchemy Core.

Both tables hang off the shared ``sql.metadata`` (so the migration test compares them) and are
created by migration 0006. Secrets (refresh token, proxy password, PII support token) arrive
here already encrypted by ``ucpush.cloud.secrets``; this module never sees them in clear.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from ucpush.store.sql import SqlRepositoryBase, UTCDateTime, metadata

# One row (id 1): the cluster's single connection to its relay. Every node of the cluster reads
# the same row, so a change made on one node (or by the CLI) reaches all of them.
cloud_state = sa.Table(
    "cloud_state",
    metadata,
    sa.Column("id", sa.Integer(), primary_key=True, autoincrement=False),
    sa.Column("cluster_id", sa.String(64), nullable=False),
    sa.Column("relay_url", sa.String(1024), nullable=False),
    sa.Column("account_id", sa.String(64), nullable=False),
    sa.Column("refresh_token_sealed", sa.Text(), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("alarm", sa.String(128), nullable=False),
    sa.Column("detail", sa.String(1024), nullable=False),
    sa.Column("push_enabled", sa.Boolean(), nullable=False),
    sa.Column("system_ca", sa.Boolean(), nullable=False),
    sa.Column("ca_bundle", sa.Text(), nullable=False),
    sa.Column("proxy_host", sa.String(255), nullable=False),
    sa.Column("proxy_port", sa.Integer(), nullable=False),
    sa.Column("proxy_username", sa.String(255), nullable=False),
    sa.Column("proxy_password_sealed", sa.Text(), nullable=False),
    sa.Column("proxy_auth", sa.String(16), nullable=False),
    sa.Column("send_troubleshooting", sa.Boolean(), nullable=False),
    sa.Column("encrypt_pii", sa.Boolean(), nullable=False),
    sa.Column("pii_token_sealed", sa.Text(), nullable=False),
    sa.Column("push_high_availability", sa.Boolean(), nullable=False),
    sa.Column("updated_at", UTCDateTime(), nullable=False),
)

admin_users = sa.Table(
    "admin_users",
    metadata,
    sa.Column("username", sa.String(255), primary_key=True),
    sa.Column("password_hash", sa.String(255), nullable=False),
    sa.Column("created_at", UTCDateTime(), nullable=False),
)


@dataclass(frozen=True, slots=True)
class CloudRecord:
    """The stored row; ``*_sealed`` fields are ciphertexts ("" when unset)."""

    cluster_id: str
    updated_at: datetime
    relay_url: str = ""
    account_id: str = ""
    refresh_token_sealed: str = ""
    status: str = "pending"
    alarm: str = ""
    detail: str = ""
    push_enabled: bool = False
    system_ca: bool = True
    ca_bundle: str = ""
    proxy_host: str = ""
    proxy_port: int = 0
    proxy_username: str = ""
    proxy_password_sealed: str = ""
    proxy_auth: str = "digest"
    send_troubleshooting: bool = False
    encrypt_pii: bool = False
    pii_token_sealed: str = ""
    push_high_availability: bool = True


@dataclass(frozen=True, slots=True)
class AdminUser:
    username: str
    password_hash: str
    created_at: datetime


def _record(row: sa.Row[Any]) -> CloudRecord:
    values = dict(row._mapping)
    del values["id"]
    return CloudRecord(**values)


class SqlCloudRepository(SqlRepositoryBase):
    async def get(self) -> CloudRecord | None:
        rows = await self._all(cloud_state.select().where(cloud_state.c.id == 1))
        return _record(rows[0]) if rows else None

    async def create(self, record: CloudRecord) -> CloudRecord:
        """Insert the row unless another node did first; return the row that won."""
        values = {"id": 1, **dataclasses.asdict(record)}
        insert = (
            postgresql.insert(cloud_state)
            if self._engine.dialect.name == "postgresql"
            else sqlite.insert(cloud_state)
        )
        async with self._begin() as conn:
            await conn.execute(insert.values(values).on_conflict_do_nothing())
        stored = await self.get()
        assert stored is not None  # just inserted, and the row is never deleted
        return stored

    async def save(self, record: CloudRecord) -> None:
        values = dataclasses.asdict(record)
        await self._change_one(
            cloud_state.update().where(cloud_state.c.id == 1).values(values), "cloud state"
        )


class SqlAdminRepository(SqlRepositoryBase):
    async def add(self, user: AdminUser) -> None:
        """``Conflict`` if the username is taken."""
        await self._insert(admin_users, dataclasses.asdict(user))

    async def get(self, username: str) -> AdminUser:
        row = await self._one(
            admin_users.select().where(admin_users.c.username == username), "admin user"
        )
        return AdminUser(**row._mapping)

    async def list(self) -> list[AdminUser]:
        rows = await self._all(admin_users.select().order_by(admin_users.c.username))
        return [AdminUser(**r._mapping) for r in rows]

    async def set_password(self, username: str, password_hash: str) -> None:
        await self._change_one(
            admin_users.update()
            .where(admin_users.c.username == username)
            .values(password_hash=password_hash),
            "admin user",
        )

    async def delete(self, username: str) -> None:
        await self._change_one(
            admin_users.delete().where(admin_users.c.username == username), "admin user"
        )
