"""``SigninRepository`` on SQLAlchemy Core, sharing the engine, metadata and helpers of ``sql``.

The tables are declared here, on ``sql.metadata``, so the migration test compares them too;
``open_store`` imports this module.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from ucpush.store.repository import (
    ClientRefreshToken,
    Device,
    EndUser,
    EnterpriseParams,
    NotFound,
    Platform,
    PushState,
    ServiceProfile,
    UcService,
)
from ucpush.store.sql import SqlRepositoryBase, UTCDateTime, metadata

# One row (id 1) once an administrator has set the parameters; defaults until then.
enterprise_params = sa.Table(
    "enterprise_params",
    metadata,
    sa.Column("id", sa.Integer(), primary_key=True, autoincrement=False),
    sa.Column("oauth_refresh_login", sa.Boolean(), nullable=False),
    sa.Column("access_token_minutes", sa.Integer(), nullable=False),
    sa.Column("refresh_token_days", sa.Integer(), nullable=False),
    sa.Column("updated_at", UTCDateTime(), nullable=False),
)

uc_services = sa.Table(
    "uc_services",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("name", sa.String(255), nullable=False, unique=True),
    sa.Column("type", sa.String(64), nullable=False),
    sa.Column("params", sa.JSON(), nullable=False),
)

service_profiles = sa.Table(
    "service_profiles",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("name", sa.String(255), nullable=False, unique=True),
)

service_profile_ucservices = sa.Table(
    "service_profile_ucservices",
    metadata,
    sa.Column("profile_id", sa.String(64), sa.ForeignKey("service_profiles.id"), primary_key=True),
    sa.Column("ucservice_id", sa.String(64), sa.ForeignKey("uc_services.id"), primary_key=True),
    sa.Column("position", sa.Integer(), nullable=False),
)

end_users = sa.Table(
    "end_users",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("username", sa.String(255), nullable=False, unique=True),
    sa.Column("display_name", sa.String(255), nullable=False),
    sa.Column("password_hash", sa.String(255), nullable=False),
    sa.Column("profile_id", sa.String(64), sa.ForeignKey("service_profiles.id"), nullable=True),
    sa.Column("created_at", UTCDateTime(), nullable=False),
)

client_refresh_tokens = sa.Table(
    "client_refresh_tokens",
    metadata,
    sa.Column("token_hash", sa.String(64), primary_key=True),
    sa.Column("user_id", sa.String(64), sa.ForeignKey("end_users.id"), nullable=False, index=True),
    sa.Column("device_id", sa.String(128), nullable=False),
    sa.Column("created_at", UTCDateTime(), nullable=False),
    sa.Column("expires_at", UTCDateTime(), nullable=False),
    sa.Column("revoked_at", UTCDateTime(), nullable=True),
)

devices = sa.Table(
    "devices",
    metadata,
    sa.Column("id", sa.String(128), primary_key=True),
    sa.Column("user_id", sa.String(64), sa.ForeignKey("end_users.id"), nullable=False, index=True),
    sa.Column("platform", sa.String(16), nullable=False),
    sa.Column("service", sa.String(32), nullable=False),
    sa.Column("push_token", sa.String(4096), nullable=False, index=True),
    sa.Column("push_key", sa.LargeBinary(), nullable=False),
    sa.Column("push_key_id", sa.String(64), nullable=False),
    sa.Column("previous_push_key", sa.LargeBinary(), nullable=False),
    sa.Column("previous_push_key_id", sa.String(64), nullable=False),
    sa.Column("previous_key_until", UTCDateTime(), nullable=True),
    sa.Column("single_channel", sa.Boolean(), nullable=False),
    sa.Column("china_region", sa.Boolean(), nullable=False),
    sa.Column("callkit", sa.Boolean(), nullable=False),
    sa.Column("sip_instance_id", sa.String(255), nullable=False, index=True),
    sa.Column("pn_prid", sa.Text(), nullable=False, index=True),
    sa.Column("push_state", sa.String(32), nullable=False),
    sa.Column("created_at", UTCDateTime(), nullable=False),
    sa.Column("updated_at", UTCDateTime(), nullable=False),
    sa.Column("signed_out_at", UTCDateTime(), nullable=True),
)


def _values(record: Any) -> dict[str, Any]:
    return {f.name: getattr(record, f.name) for f in dataclasses.fields(record)}


def _device(row: sa.Row[Any]) -> Device:
    values = dict(row._mapping)
    values["platform"] = Platform(values["platform"])
    values["push_state"] = PushState(values["push_state"])
    return Device(**values)


def _ucservice(row: sa.Row[Any]) -> UcService:
    return UcService(**row._mapping)


class SqlSigninRepository(SqlRepositoryBase):
    """``SigninRepository`` on one engine. Updating or removing a missing row raises
    ``NotFound``; a row referring to a missing one raises ``NotFound`` too."""

    # enterprise parameters

    async def get_enterprise(self) -> EnterpriseParams:
        rows = await self._all(enterprise_params.select().where(enterprise_params.c.id == 1))
        if not rows:
            return EnterpriseParams()
        row = rows[0]
        return EnterpriseParams(
            oauth_refresh_login=row.oauth_refresh_login,
            access_token_minutes=row.access_token_minutes,
            refresh_token_days=row.refresh_token_days,
        )

    async def set_enterprise(self, params: EnterpriseParams, now: datetime) -> int:
        """Store ``params``; when refresh login is off, revoke every refresh token in the same
        transaction. Return how many were revoked."""
        values = {**_values(params), "updated_at": now}
        async with self._begin() as conn:
            insert = self._dialect_insert(enterprise_params).values(id=1, **values)
            await conn.execute(
                insert.on_conflict_do_update(
                    index_elements=[enterprise_params.c.id],
                    set_={k: insert.excluded[k] for k in values},
                )
            )
            if params.oauth_refresh_login:
                return 0
            revoked = await conn.execute(
                client_refresh_tokens.update()
                .where(client_refresh_tokens.c.revoked_at.is_(None))
                .values(revoked_at=now)
            )
            return revoked.rowcount

    # UC services and service profiles

    async def add_ucservice(self, service: UcService) -> None:
        await self._insert(uc_services, {**_values(service), "params": dict(service.params)})

    async def get_ucservice_by_name(self, name: str) -> UcService:
        row = await self._one(uc_services.select().where(uc_services.c.name == name), "UC service")
        return _ucservice(row)

    async def list_ucservices(self) -> list[UcService]:
        """Ordered by name."""
        rows = await self._all(uc_services.select().order_by(uc_services.c.name))
        return [_ucservice(r) for r in rows]

    async def set_ucservice_params(self, service_id: str, params: dict[str, str]) -> None:
        await self._change_one(
            uc_services.update().where(uc_services.c.id == service_id).values(params=params),
            "UC service",
        )

    async def add_profile(self, profile: ServiceProfile) -> None:
        """Conflict on duplicate name, NotFound if a UC service is missing."""
        async with self._begin() as conn:
            await conn.execute(service_profiles.insert().values(id=profile.id, name=profile.name))
            if profile.ucservice_ids:
                await conn.execute(
                    service_profile_ucservices.insert(),
                    [
                        {"profile_id": profile.id, "ucservice_id": sid, "position": i}
                        for i, sid in enumerate(profile.ucservice_ids)
                    ],
                )

    async def get_profile_by_name(self, name: str) -> ServiceProfile:
        async with self._begin() as conn:
            row = (
                await conn.execute(service_profiles.select().where(service_profiles.c.name == name))
            ).first()
            if row is None:
                raise NotFound("service profile")
            return await self._profile(conn, row.id, row.name)

    async def list_profiles(self) -> list[ServiceProfile]:
        """Ordered by name."""
        async with self._begin() as conn:
            rows = list(
                await conn.execute(service_profiles.select().order_by(service_profiles.c.name))
            )
            return [await self._profile(conn, r.id, r.name) for r in rows]

    async def _profile(self, conn: AsyncConnection, profile_id: str, name: str) -> ServiceProfile:
        ids = await conn.execute(
            sa.select(service_profile_ucservices.c.ucservice_id)
            .where(service_profile_ucservices.c.profile_id == profile_id)
            .order_by(service_profile_ucservices.c.position)
        )
        return ServiceProfile(id=profile_id, name=name, ucservice_ids=tuple(ids.scalars()))

    async def profile_ucservices(self, profile_id: str) -> list[UcService]:
        """The profile's UC services in profile order; NotFound if the profile is missing."""
        async with self._begin() as conn:
            exists = await conn.execute(
                sa.select(service_profiles.c.id).where(service_profiles.c.id == profile_id)
            )
            if exists.first() is None:
                raise NotFound("service profile")
            rows = await conn.execute(
                sa.select(uc_services)
                .join(
                    service_profile_ucservices,
                    service_profile_ucservices.c.ucservice_id == uc_services.c.id,
                )
                .where(service_profile_ucservices.c.profile_id == profile_id)
                .order_by(service_profile_ucservices.c.position)
            )
            return [_ucservice(r) for r in rows]

    # end users

    async def add_user(self, user: EndUser) -> None:
        await self._insert(end_users, _values(user))

    async def get_user(self, user_id: str) -> EndUser:
        row = await self._one(end_users.select().where(end_users.c.id == user_id), "user")
        return EndUser(**row._mapping)

    async def get_user_by_name(self, username: str) -> EndUser:
        row = await self._one(end_users.select().where(end_users.c.username == username), "user")
        return EndUser(**row._mapping)

    async def list_users(self) -> list[EndUser]:
        """Ordered by username."""
        rows = await self._all(end_users.select().order_by(end_users.c.username))
        return [EndUser(**r._mapping) for r in rows]

    async def set_user_profile(self, user_id: str, profile_id: str | None) -> None:
        await self._change_one(
            end_users.update().where(end_users.c.id == user_id).values(profile_id=profile_id),
            "user",
        )

    async def delete_user(self, user_id: str) -> None:
        """NotFound if missing; the user's devices and refresh tokens go too."""
        async with self._begin() as conn:
            await conn.execute(devices.delete().where(devices.c.user_id == user_id))
            await conn.execute(
                client_refresh_tokens.delete().where(client_refresh_tokens.c.user_id == user_id)
            )
            gone = await conn.execute(end_users.delete().where(end_users.c.id == user_id))
            if gone.rowcount == 0:
                raise NotFound("user")

    # refresh tokens

    async def add_refresh_token(self, token: ClientRefreshToken) -> None:
        await self._insert(client_refresh_tokens, _values(token))

    async def get_refresh_token(self, token_hash: str) -> ClientRefreshToken:
        row = await self._one(
            client_refresh_tokens.select().where(client_refresh_tokens.c.token_hash == token_hash),
            "refresh token",
        )
        return ClientRefreshToken(**row._mapping)

    async def revoke_refresh_token(self, token_hash: str, now: datetime) -> bool:
        """Revoke one token; False if it was already revoked (a replayed refresh token)."""
        # Conditional UPDATE: of two concurrent refreshes with one token, one wins.
        async with self._begin() as conn:
            result = await conn.execute(
                client_refresh_tokens.update()
                .where(
                    client_refresh_tokens.c.token_hash == token_hash,
                    client_refresh_tokens.c.revoked_at.is_(None),
                )
                .values(revoked_at=now)
            )
            return result.rowcount == 1

    async def revoke_device_refresh_tokens(
        self, user_id: str, device_id: str, now: datetime
    ) -> int:
        """Revoke the user's unrevoked tokens issued to ``device_id``; return how many."""
        async with self._begin() as conn:
            result = await conn.execute(
                client_refresh_tokens.update()
                .where(
                    client_refresh_tokens.c.user_id == user_id,
                    client_refresh_tokens.c.device_id == device_id,
                    client_refresh_tokens.c.revoked_at.is_(None),
                )
                .values(revoked_at=now)
            )
            return result.rowcount

    # devices

    async def put_device(self, device: Device) -> None:
        values = {
            **_values(device),
            "platform": device.platform.value,
            "push_state": device.push_state.value,
        }
        insert = self._dialect_insert(devices).values(values)
        async with self._begin() as conn:
            await conn.execute(
                insert.on_conflict_do_update(
                    index_elements=[devices.c.id],
                    set_={k: insert.excluded[k] for k in values if k != "id"},
                )
            )

    async def get_device(self, device_id: str) -> Device:
        return _device(await self._one(devices.select().where(devices.c.id == device_id), "device"))

    async def list_devices(self, user_id: str | None = None) -> list[Device]:
        """Oldest first."""
        query = devices.select().order_by(devices.c.created_at, devices.c.id)
        if user_id is not None:
            query = query.where(devices.c.user_id == user_id)
        return [_device(r) for r in await self._all(query)]

    async def find_devices(
        self, instance_ids: Collection[str], tokens: Collection[str]
    ) -> list[Device]:
        """Devices whose SIP instance id is in ``instance_ids`` or whose pn-prid or push token
        is in ``tokens`` (indexed: a call looks its callee's devices up this way)."""
        instance_ids, tokens = set(instance_ids) - {""}, set(tokens) - {""}
        if not instance_ids and not tokens:
            return []
        query = devices.select().where(
            sa.or_(
                devices.c.sip_instance_id.in_(instance_ids),
                devices.c.pn_prid.in_(tokens),
                devices.c.push_token.in_(tokens),
            )
        )
        return [_device(r) for r in await self._all(query.order_by(devices.c.created_at))]

    async def set_push_state(self, device_id: str, state: PushState, now: datetime) -> None:
        """NotFound if missing; SIGNED_OUT also stamps ``signed_out_at``."""
        values: dict[str, Any] = {"push_state": state.value, "updated_at": now}
        if state is PushState.SIGNED_OUT:
            values["signed_out_at"] = now
        await self._change_one(
            devices.update().where(devices.c.id == device_id).values(values), "device"
        )

    async def delete_device(self, device_id: str) -> None:
        await self._change_one(devices.delete().where(devices.c.id == device_id), "device")

    def _dialect_insert(self, table: sa.Table) -> Any:
        if self._engine.dialect.name == "postgresql":
            return postgresql.insert(table)
        return sqlite.insert(table)
