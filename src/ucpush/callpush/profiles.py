"""Per-AOR call settings call push reads for each held INVITE (SPEC §2): the callee's
mobility identity (the number a call is extended to when no woken device took it in time)
and the caller's external presentation (the name and number payloads show instead of the
caller's own). One table, on the shared engine and metadata of ``ucpush.store.sql``."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa

from ucpush.store.sql import SqlRepositoryBase, UTCDateTime, metadata

call_profiles = sa.Table(
    "call_profiles",
    metadata,
    sa.Column("aor", sa.String(255), primary_key=True),
    sa.Column("mobility_number", sa.String(64), nullable=False),
    sa.Column("presentation_name", sa.String(255), nullable=False),
    sa.Column("presentation_number", sa.String(64), nullable=False),
    sa.Column("updated_at", UTCDateTime(), nullable=False),
)


@dataclass(frozen=True, slots=True)
class CallProfile:
    aor: str  # canonical AOR (``ucpush.sip.registrar.canonical_aor``)
    mobility_number: str = ""
    presentation_name: str = ""
    presentation_number: str = ""

    @property
    def presentation(self) -> tuple[str, str]:
        return self.presentation_name, self.presentation_number


class SqlCallProfiles(SqlRepositoryBase):
    async def put(self, profile: CallProfile, now: datetime) -> None:
        """Insert or replace; a profile with nothing set is deleted."""
        async with self._begin() as conn:
            await conn.execute(call_profiles.delete().where(call_profiles.c.aor == profile.aor))
            if profile.mobility_number or profile.presentation_name or profile.presentation_number:
                await conn.execute(
                    call_profiles.insert().values(
                        aor=profile.aor,
                        mobility_number=profile.mobility_number,
                        presentation_name=profile.presentation_name,
                        presentation_number=profile.presentation_number,
                        updated_at=now,
                    )
                )

    async def get_many(self, aors: Collection[str]) -> dict[str, CallProfile]:
        """The profiles of ``aors`` that have one (one query per call: callee and caller)."""
        rows = await self._all(call_profiles.select().where(call_profiles.c.aor.in_(set(aors))))
        return {
            r.aor: CallProfile(r.aor, r.mobility_number, r.presentation_name, r.presentation_number)
            for r in rows
        }

    async def list(self) -> list[CallProfile]:
        rows = await self._all(call_profiles.select().order_by(call_profiles.c.aor))
        return [
            CallProfile(r.aor, r.mobility_number, r.presentation_name, r.presentation_number)
            for r in rows
        ]
