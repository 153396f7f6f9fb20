"""HTTP interface of the relay (FastAPI; OpenAPI at ``/docs`` and ``/openapi.json``).

Every error is JSON ``{"error": <code>, "detail": <sentence>}`` with a 4xx/5xx status; the
OAuth token endpoint uses RFC 6749's ``error``/``error_description``. Payloads are never
echoed back, logged or stored: validation messages name the field, not its value.
"""

from __future__ import annotations

import time
import uuid
from typing import Annotated, Any, Literal
from urllib.parse import parse_qs

from fastapi import Depends, FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from starlette.types import ASGIApp, Receive, Scope, Send

from ucpush import __version__
from ucpush.crypto.jwe import JweError, parse_compact
from ucpush.httpapi import BodyLimit, describe_validation_errors, error_response
from ucpush.relay.alarms_api import alarm_upload_router
from ucpush.relay.identity import AccessClaims, AuthError
from ucpush.relay.providers.base import (
    Outcome,
    PayloadTooLarge,
    Priority,
    ProviderPush,
    PushType,
)
from ucpush.relay.service import RelayService, ServiceNotConfigured, provider_name
from ucpush.store.repository import NotFound, VoucherUnusable

Service = Literal["APNS", "APNS:beta", "APNS:dev", "APNS:test", "APNS:load", "FCM", "FCM:dev"]

_OUTCOME_STATUS = {
    Outcome.DELIVERED: 200,
    Outcome.UNREGISTERED: 410,
    Outcome.BAD_DEVICE_TOKEN: 422,
    Outcome.REJECTED: 422,
    Outcome.THROTTLED: 429,
    Outcome.PROVIDER_DOWN: 503,
}


class PushRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    target: str = Field(
        min_length=1,
        max_length=4096,
        pattern=r"^[\x21-\x7e]+$",
        description="APNs device token (hex) or FCM registration token, in clear",
    )
    service: Service = Field(description="subscriber service; picks the app and environment")
    push_type: PushType
    priority: Priority = Priority.HIGH
    expiration: int | None = Field(
        None, ge=0, description="epoch seconds after which the provider drops it; 0 = now or never"
    )
    collapse_id: str | None = Field(None, min_length=1, max_length=64)
    tracking_id: str = Field(
        default_factory=lambda: uuid.uuid4().hex,
        min_length=1,
        max_length=128,
        pattern=r"^[A-Za-z0-9._:-]+$",
        description="caller-chosen id for tracing one push through the system",
    )
    payload: str = Field(description="compact JWE, alg 'dir', enc 'A256GCM'")

    @field_validator("payload")
    @classmethod
    def _must_be_jwe(cls, value: str) -> str:
        try:
            parse_compact(value)
        except JweError as exc:
            raise ValueError(
                f"payload must be a compact JWE with alg 'dir' and enc 'A256GCM': {exc}"
            ) from None
        return value


class PushResponse(BaseModel):
    outcome: Outcome
    tracking_id: str
    provider: str
    provider_status: int | None = None
    reason: str | None = None
    provider_id: str | None = None
    unregistered_at: int | None = Field(None, description="APNs 410 timestamp, ms since epoch")
    retry_after: float | None = None
    attempts: int


class OnboardRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    voucher: str = Field(min_length=1, max_length=200)
    cluster_id: str = Field(min_length=1, max_length=128)
    cluster_name: str = Field("", max_length=200)


class OnboardResponse(BaseModel):
    account_id: str
    tenant: str
    status: str
    refresh_token: str
    token_endpoint: str
    push_endpoint: str


class OnboardStatus(BaseModel):
    account_id: str
    cluster_id: str
    tenant: str
    status: str


class TokenResponse(BaseModel):
    access_token: str
    token_type: str = "Bearer"
    expires_in: int


def _inline_schema(model: type[BaseModel]) -> dict[str, Any]:
    """The model's JSON schema with its ``$defs`` inlined, for ``openapi_extra``."""
    schema = model.model_json_schema()
    defs = schema.pop("$defs", {})

    def resolve(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/$defs/"):
                return resolve(defs[ref.removeprefix("#/$defs/")])
            return {k: resolve(v) for k, v in node.items()}
        if isinstance(node, list):
            return [resolve(v) for v in node]
        return node

    return resolve(schema)


def _outcome(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": _inline_schema(PushResponse)}},
    }


_PUSH_OPENAPI = {
    "post": {
        "tags": ["push"],
        "summary": "Push",
        "description": "Forward one encrypted push to APNs or FCM and return the provider's "
        "outcome. Bearer access token required.",
        "operationId": "push_v1_push_post",
        "security": [{"bearer": []}],
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": _inline_schema(PushRequest)}},
        },
        "responses": {
            "200": _outcome("delivered"),
            "400": {"description": "invalid request (names the field, never its value)"},
            "401": {"description": "missing, expired or revoked access token"},
            "404": {"description": "no app configured for the subscriber service"},
            "410": _outcome("target unregistered: pause the device"),
            "413": {"description": "body or provider payload too large"},
            "422": _outcome("bad device token or rejected by the provider"),
            "429": _outcome("throttled, see retry_after"),
            "503": _outcome("provider down"),
        },
    }
}


async def handle_push(relay: RelayService, authorization: str, body: bytes) -> JSONResponse:
    """``POST /v1/push``: forward one encrypted push and return the provider's outcome."""
    try:
        claims = await relay.authenticate(_bearer_token(authorization))
    except AuthError as exc:
        return _unauthorised(exc)
    try:
        request = PushRequest.model_validate_json(body)
    except ValidationError as exc:
        return error_response(400, "invalid_request", describe_validation_errors(exc.errors()))
    try:
        app_config = await relay.app_for(claims.tenant_id, request.service)
    except ServiceNotConfigured as exc:
        return error_response(404, "service_not_configured", str(exc))
    outgoing = ProviderPush(
        app=app_config,
        target=request.target,
        push_type=request.push_type,
        priority=request.priority,
        payload=request.payload,
        tracking_id=request.tracking_id,
        expiration=request.expiration,
        collapse_id=request.collapse_id,
    )
    try:
        result = await relay.push(request.service, outgoing)
    except PayloadTooLarge as exc:
        return error_response(413, "payload_too_large", str(exc))
    answer = {
        "outcome": result.outcome.value,
        "tracking_id": request.tracking_id,
        "provider": provider_name(request.service),
        "provider_status": result.status,
        "reason": result.reason,
        "provider_id": result.provider_id,
        "unregistered_at": result.unregistered_at,
        "retry_after": result.retry_after,
        "attempts": result.attempts,
    }
    headers = {}
    if result.retry_after is not None:
        headers["Retry-After"] = str(max(1, round(result.retry_after)))
    return JSONResponse(
        {k: v for k, v in answer.items() if v is not None},
        status_code=_OUTCOME_STATUS[result.outcome],
        headers=headers,
    )


class PushEndpoint:
    """Serves ``POST /v1/push`` ahead of FastAPI and Starlette's middleware, routing,
    dependency and exit-stack layers, which cost more per push than the relay's own work;
    everything else goes on to ``app``."""

    def __init__(self, app: ASGIApp, relay: RelayService, limit: int) -> None:
        self.app = app
        self.relay = relay
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != "/v1/push":
            await self.app(scope, receive, send)
            return
        if scope["method"] != "POST":
            response = error_response(405, "method_not_allowed", "use POST", {"Allow": "POST"})
            await response(scope, receive, send)
            return
        authorization = ""
        for name, value in scope["headers"]:
            if name == b"authorization":
                authorization = value.decode("latin-1")
        chunks: list[bytes] = []
        size = 0
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.limit:
                response = error_response(413, "body_too_large", f"body over {self.limit} bytes")
                await response(scope, receive, send)
                return
            chunks.append(chunk)
            more = message.get("more_body", False)
        response = await handle_push(self.relay, authorization, b"".join(chunks))
        await response(scope, receive, send)


def _bearer_token(authorization: str) -> str:
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise AuthError("invalid_request", "missing bearer access token")
    return token.strip()


def _unauthorised(exc: AuthError) -> JSONResponse:
    header = f'Bearer error="{exc.error}", error_description="{exc.description}"'
    return error_response(401, exc.error, exc.description, {"WWW-Authenticate": header})


async def _bearer(request: Request) -> AccessClaims:
    relay: RelayService = request.app.state.relay
    return await relay.authenticate(_bearer_token(request.headers.get("authorization", "")))


Claims = Annotated[AccessClaims, Depends(_bearer)]


def create_app(relay: RelayService, public_url: str) -> PushEndpoint:
    """The relay's ASGI application: ``PushEndpoint`` in front of the FastAPI app
    (``.app``), so pushes skip Starlette's middleware stack entirely."""
    app = FastAPI(
        title="ucpush relay",
        version=__version__,
        summary="Multi-tenant push relay: onboarding, machine-account OAuth, encrypted pushes.",
    )
    app.state.relay = relay

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(400, "invalid_request", describe_validation_errors(exc.errors()))

    @app.exception_handler(AuthError)
    async def _auth_failed(_: Request, exc: AuthError) -> JSONResponse:
        return _unauthorised(exc)

    @app.post("/oauth/token", response_model=TokenResponse, tags=["identity"])
    async def token(request: Request) -> Any:
        """OAuth 2.0 token endpoint; grant ``refresh_token`` (form-encoded, RFC 6749 §6)."""
        headers = {"Cache-Control": "no-store"}
        try:
            form = parse_qs((await request.body()).decode(), strict_parsing=False)
        except UnicodeDecodeError:
            form = {}
        grant = form.get("grant_type", [""])[0]
        if grant != "refresh_token":
            return JSONResponse(
                {"error": "unsupported_grant_type", "error_description": "use refresh_token"},
                400,
                headers,
            )
        refresh = form.get("refresh_token", [""])[0]
        if not refresh:
            return JSONResponse(
                {"error": "invalid_request", "error_description": "refresh_token is missing"},
                400,
                headers,
            )
        try:
            issued = await relay.identity.exchange_refresh_token(refresh)
        except AuthError as exc:
            return JSONResponse(
                {"error": exc.error, "error_description": exc.description}, 400, headers
            )
        return JSONResponse(
            TokenResponse(access_token=issued.token, expires_in=issued.expires_in).model_dump(),
            headers=headers,
        )

    @app.get("/.well-known/jwks.json", tags=["identity"])
    async def jwks() -> dict[str, Any]:
        return relay.identity.jwks()

    @app.post("/v1/onboard", status_code=201, response_model=OnboardResponse, tags=["onboarding"])
    async def onboard(body: OnboardRequest) -> Any:
        """Redeem a voucher: the cluster gets a machine account and its refresh token."""
        try:
            done = await relay.onboarding.redeem(body.voucher, body.cluster_id, body.cluster_name)
        except VoucherUnusable as exc:
            return error_response(400, f"voucher_{exc.reason}", f"voucher is {exc.reason}")
        tenant = await relay.repo.get_tenant(done.account.tenant_id)
        return OnboardResponse(
            account_id=done.account.id,
            tenant=tenant.name,
            status=tenant.status.value,
            refresh_token=done.refresh_token,
            token_endpoint=f"{public_url}/oauth/token",
            push_endpoint=f"{public_url}/v1/push",
        )

    @app.get("/v1/onboard", response_model=OnboardStatus, tags=["onboarding"])
    async def onboard_status(claims: Claims) -> Any:
        account = await relay.repo.get_machine_account(claims.account_id)
        tenant = await relay.repo.get_tenant(account.tenant_id)
        return OnboardStatus(
            account_id=account.id,
            cluster_id=account.cluster_id,
            tenant=tenant.name,
            status=tenant.status.value,
        )

    @app.delete("/v1/onboard", status_code=204, tags=["onboarding"])
    async def offboard(claims: Claims) -> Response:
        """Disable push for this cluster; onboard again with a new voucher."""
        await relay.onboarding.offboard(claims.account_id)
        relay.forget_account(claims.account_id)
        return Response(status_code=204)

    app.include_router(alarm_upload_router(relay))

    @app.get("/healthz", tags=["operations"])
    async def healthz() -> dict[str, Any]:
        return {"status": "ok", "version": __version__, "time": int(time.time())}

    @app.get("/metrics", tags=["operations"], include_in_schema=False)
    async def metrics() -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    @app.exception_handler(NotFound)
    async def _gone(_: Request, exc: NotFound) -> JSONResponse:
        return error_response(
            401, "invalid_token", f"credential refers to something removed: {exc}"
        )

    def openapi() -> dict[str, Any]:
        # /v1/push is served by PushEndpoint, not a route: describe it here.
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title, version=app.version, summary=app.summary, routes=app.routes
            )
            schema["paths"]["/v1/push"] = _PUSH_OPENAPI
            schema.setdefault("components", {}).setdefault("securitySchemes", {})["bearer"] = {
                "type": "http",
                "scheme": "bearer",
                "bearerFormat": "JWT",
            }
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    app.add_middleware(BodyLimit, limit=relay.settings.max_body_bytes)
    return PushEndpoint(app, relay, relay.settings.max_body_bytes)
