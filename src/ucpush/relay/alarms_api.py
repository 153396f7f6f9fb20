"""``POST /v1/alarms``: the tenants' troubleshooting uploads (SPEC §7).

A call node's alarm uploader (``ucpush.alarms.uploader``) sends its alarms here with the
cluster's machine-account access token; they are stored under the token's tenant, one row per
alarm (a later upload of the same alarm updates it), at most ``KEEP_PER_TENANT`` per tenant.
Personal data arrives only as a JWE sealed with the cluster's PII support token, which the
relay never has.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, field_validator

from ucpush.alarms.store import SqlTenantAlarmRepository, TenantAlarm
from ucpush.crypto.jwe import JweError, parse_compact
from ucpush.httpapi import error_response
from ucpush.relay.identity import AccessClaims, AuthError
from ucpush.relay.service import RelayService

KEEP_PER_TENANT = 10_000

Detail = str | int | float | bool | None


class UploadedAlarm(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")
    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z][A-Za-z0-9]*$")
    severity: Literal["ALERT", "CRITICAL", "ERROR", "WARNING", "NOTICE", "INFO"]
    raised_at: datetime
    last_raised_at: datetime
    cleared_at: datetime | None = None
    count: int = Field(ge=1)
    details: dict[Annotated[str, Field(max_length=64)], Detail] = Field(
        default_factory=dict, max_length=16
    )
    pii: str | None = Field(None, max_length=8192, description="compact JWE (dir, A256GCM)")

    @field_validator("details")
    @classmethod
    def _short_values(cls, value: dict[str, Detail]) -> dict[str, Detail]:
        if any(isinstance(v, str) and len(v) > 1024 for v in value.values()):
            raise ValueError("detail values are at most 1024 characters")
        return value

    @field_validator("pii")
    @classmethod
    def _sealed(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                parse_compact(value)
            except JweError as exc:
                raise ValueError(f"pii must be a compact JWE: {exc}") from None
        return value

    @field_validator("raised_at", "last_raised_at", "cleared_at")
    @classmethod
    def _aware(cls, value: datetime | None) -> datetime | None:
        if value is not None and value.utcoffset() is None:
            raise ValueError("timestamps need a UTC offset")
        return value


class AlarmUpload(BaseModel):
    model_config = ConfigDict(extra="forbid")

    cluster_id: str = Field(min_length=1, max_length=128)
    node: str = Field(min_length=1, max_length=255)
    # Empty: a check-in, proving the cluster reaches the relay with a valid token.
    alarms: list[UploadedAlarm] = Field(max_length=500)


class AlarmUploadResult(BaseModel):
    stored: int


async def _claims(request: Request) -> AccessClaims:
    """The caller's machine account, from its bearer access token (``AuthError`` → 401)."""
    relay: RelayService = request.app.state.relay
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise AuthError("invalid_request", "missing bearer access token")
    return await relay.authenticate(token.strip())


Claims = Annotated[AccessClaims, Depends(_claims)]


def alarm_upload_router(relay: RelayService) -> APIRouter:
    """The router ``create_app`` includes (it sets ``app.state.relay``); the alarms share the
    relay repository's engine."""
    repo = SqlTenantAlarmRepository.sharing(relay.repo)
    router = APIRouter(tags=["operations"])

    @router.post(
        "/v1/alarms",
        response_model=AlarmUploadResult,
        responses={
            400: {"description": "invalid upload (names the field, never its value)"},
            401: {"description": "missing, expired or revoked access token"},
            409: {"description": "cluster_id is not the machine account's cluster"},
        },
    )
    async def upload_alarms(body: AlarmUpload, who: Claims) -> Any:
        """Store a cluster's alarms under its tenant (troubleshooting upload). Bearer access
        token of the cluster's machine account required."""
        account = await relay.repo.get_machine_account(who.account_id)
        if body.cluster_id != account.cluster_id:
            return error_response(
                409, "cluster_mismatch", "cluster_id is not this machine account's cluster"
            )
        records = [
            TenantAlarm(
                tenant_id=who.tenant_id,
                alarm_id=alarm.id,
                account_id=who.account_id,
                cluster_id=body.cluster_id,
                node=body.node,
                name=alarm.name,
                severity=alarm.severity,
                raised_at=alarm.raised_at,
                last_raised_at=alarm.last_raised_at,
                cleared_at=alarm.cleared_at,
                count=alarm.count,
                details=alarm.details,
                pii=alarm.pii,
            )
            for alarm in body.alarms
        ]
        await repo.store_uploads(records, datetime.now(UTC), KEEP_PER_TENANT)
        return JSONResponse({"stored": len(records)})

    return router
