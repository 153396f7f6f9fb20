"""``SipRepository`` on SQLAlchemy Core, sharing the engine and helpers of ``sql``."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from ucpush.store.repository import Binding, NotFound, SipUser
from ucpush.store.sql import SqlRepositoryBase, sip_bindings, sip_users

# Bound parameters per ... IN (...): under SQLite's default limit of 32,766 and far under
# PostgreSQL's 65,535.
_IDS_PER_DELETE = 500


# Built once: a statement made per call costs more than the query (and leaves cyclic garbage).
_USERS_IN_REALM = sip_users.select().where(
    sip_users.c.realm == sa.bindparam("realm"),
    sip_users.c.username.in_(sa.bindparam("names", expanding=True)),
)
_COLUMNS = [c.name for c in sip_bindings.c]
_SQLITE_UPSERT = (
    f"INSERT INTO sip_bindings ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' * len(_COLUMNS))})"
    " ON CONFLICT (id) DO UPDATE SET "
    + ", ".join(f"{c} = excluded.{c}" for c in _COLUMNS if c != "id")
)
_DATETIMES = frozenset({"expires_at", "updated_at", "purr_issued_at"})


def _sqlite_datetime(value: datetime | None) -> str | None:
    """As ``UTCDateTime`` stores it on SQLite: naive UTC in SQLAlchemy's text format (rows are
    compared as text, so the format must be exactly that one)."""
    if value is None:
        return None
    if value.utcoffset() is None:
        raise ValueError(f"naive datetime {value!r}: pass a timezone-aware one")
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")


def _sqlite_row(binding: Binding) -> tuple[Any, ...]:
    row: list[Any] = []
    for name in _COLUMNS:
        value = getattr(binding, name)
        if name in _DATETIMES:
            value = _sqlite_datetime(value)
        elif name == "path":
            value = json.dumps(list(value))
        elif name == "pn_extra":
            value = json.dumps(dict(value))
        elif name == "pnsreg":
            value = int(value)
        row.append(value)
    return tuple(row)


def _binding_values(binding: Binding) -> dict[str, Any]:
    values = {f.name: getattr(binding, f.name) for f in dataclasses.fields(binding)}
    values["path"] = list(binding.path)
    values["pn_extra"] = dict(binding.pn_extra)
    return values


def _binding(row: sa.Row[Any]) -> Binding:
    values = dict(row._mapping)
    values["path"] = tuple(values["path"])
    return Binding(**values)


class SqlSipRepository(SqlRepositoryBase):
    """``SipRepository`` on one engine. Updating or removing a missing row raises ``NotFound``."""

    _upsert_cached: Any = None

    # users

    async def add_user(self, user: SipUser) -> None:
        await self._insert(sip_users, dataclasses.asdict(user))

    async def get_user(self, username: str, realm: str) -> SipUser:
        row = await self._one(
            sip_users.select().where(sip_users.c.username == username, sip_users.c.realm == realm),
            "SIP user",
        )
        return SipUser(**row._mapping)

    async def get_users(self, keys: Sequence[tuple[str, str]]) -> list[SipUser]:
        """The accounts among ``keys`` ((username, realm) pairs) that exist, in one query."""
        by_realm: dict[str, list[str]] = {}
        for username, realm in keys:
            by_realm.setdefault(realm, []).append(username)
        found: list[SipUser] = []
        if not by_realm:
            return found
        async with self._begin() as conn:
            for realm, names in by_realm.items():
                for start in range(0, len(names), _IDS_PER_DELETE):
                    chunk = names[start : start + _IDS_PER_DELETE]
                    rows = await conn.execute(_USERS_IN_REALM, {"realm": realm, "names": chunk})
                    found += [SipUser(**r._mapping) for r in rows]
        return found

    async def list_users(self) -> list[SipUser]:
        """Ordered by realm, then username."""
        query = sip_users.select().order_by(sip_users.c.realm, sip_users.c.username)
        return [SipUser(**r._mapping) for r in await self._all(query)]

    async def delete_user(self, username: str, realm: str) -> None:
        """NotFound if missing; the user's bindings go too."""
        async with self._begin() as conn:
            aor = (
                await conn.execute(
                    sa.delete(sip_users)
                    .where(sip_users.c.username == username, sip_users.c.realm == realm)
                    .returning(sip_users.c.aor)
                )
            ).scalar()
            if aor is None:
                raise NotFound("SIP user")
            await conn.execute(sa.delete(sip_bindings).where(sip_bindings.c.aor == aor))

    # bindings

    async def list_bindings(self, aor: str | None = None) -> list[Binding]:
        """Ordered by AOR, then most recently updated first (the order of a 200 OK)."""
        query = sip_bindings.select().order_by(
            sip_bindings.c.aor, sip_bindings.c.updated_at.desc(), sip_bindings.c.id
        )
        if aor is not None:
            query = query.where(sip_bindings.c.aor == aor)
        return [_binding(r) for r in await self._all(query)]

    async def list_bindings_page(self, after: str = "", limit: int = 5000) -> list[Binding]:
        """Up to ``limit`` bindings with ids above ``after``, by id: loads everything in
        pages (a location cache holding 100,000 bindings must not also hold 100,000 rows)."""
        query = (
            sip_bindings.select()
            .where(sip_bindings.c.id > after)
            .order_by(sip_bindings.c.id)
            .limit(limit)
        )
        return [_binding(r) for r in await self._all(query)]

    async def get_binding(self, binding_id: str) -> Binding:
        row = await self._one(
            sip_bindings.select().where(sip_bindings.c.id == binding_id), "binding"
        )
        return _binding(row)

    async def find_binding_by_purr(self, purr: str) -> Binding:
        """The binding whose current or previous PURR is ``purr`` (for a mid-dialog request,
        RFC 8599 §6); NotFound if none. The caller checks ``expires_at``."""
        if not purr:
            raise NotFound("binding")  # "" means "no PURR", never a key
        row = await self._one(
            sip_bindings.select().where(
                sa.or_(sip_bindings.c.purr == purr, sip_bindings.c.purr_previous == purr)
            ),
            "binding",
        )
        return _binding(row)

    async def add_binding(self, binding: Binding) -> None:
        await self._insert(sip_bindings, _binding_values(binding))

    async def update_binding(self, binding: Binding) -> None:
        values = _binding_values(binding)
        del values["id"]
        await self._change_one(
            sip_bindings.update().where(sip_bindings.c.id == binding.id).values(values), "binding"
        )

    async def remove_binding(self, binding_id: str) -> None:
        await self._change_one(
            sip_bindings.delete().where(sip_bindings.c.id == binding_id), "binding"
        )

    async def save_bindings(self, aor: str, upsert: list[Binding], remove: list[str]) -> None:
        """Apply one REGISTER's outcome atomically: insert or replace ``upsert`` and delete the
        bindings of ``aor`` whose ids are in ``remove`` (missing ones are ignored)."""
        async with self._begin() as conn:
            if remove:
                await conn.execute(
                    sa.delete(sip_bindings).where(
                        sip_bindings.c.aor == aor, sip_bindings.c.id.in_(remove)
                    )
                )
            for binding in upsert:
                await self._upsert(conn, binding)

    async def apply_bindings(self, upsert: Sequence[Binding], remove: Sequence[str]) -> None:
        """Write a batch of binding changes in one transaction: insert or replace ``upsert``,
        delete the ids in ``remove`` (missing ones are ignored). An id must not be in both.
        The location cache's write-behind calls this with many AORs' changes at once."""
        if not upsert and not remove:
            return
        async with self._begin() as conn:
            for start in range(0, len(remove), _IDS_PER_DELETE):
                chunk = list(remove[start : start + _IDS_PER_DELETE])
                await conn.execute(sa.delete(sip_bindings).where(sip_bindings.c.id.in_(chunk)))
            if not upsert:
                return
            if self._engine.dialect.name == "sqlite":
                # The driver's executemany with rows made here: SQLAlchemy's per-value type
                # processing cost more than SQLite's own work on a write-behind batch.
                await conn.exec_driver_sql(_SQLITE_UPSERT, [_sqlite_row(b) for b in upsert])
            else:
                await conn.execute(self._upsert_statement(), [_binding_values(b) for b in upsert])

    def _upsert_statement(self) -> Any:
        if self._upsert_cached is None:
            dialect = postgresql if self._engine.dialect.name == "postgresql" else sqlite
            insert = dialect.insert(sip_bindings)
            self._upsert_cached = insert.on_conflict_do_update(
                index_elements=[sip_bindings.c.id],
                set_={c.name: insert.excluded[c.name] for c in sip_bindings.c if c.name != "id"},
            )
        return self._upsert_cached

    async def _upsert(self, conn: AsyncConnection, binding: Binding) -> None:
        await conn.execute(self._upsert_statement(), _binding_values(binding))

    async def remove_expired(self, now: datetime) -> list[Binding]:
        """Delete every binding with ``expires_at <= now`` and return them."""
        async with self._begin() as conn:
            rows = await conn.execute(
                sa.delete(sip_bindings)
                .where(sip_bindings.c.expires_at <= now)
                .returning(*sip_bindings.c)
            )
            return sorted((_binding(r) for r in rows), key=lambda b: (b.aor, b.id))
