"""HTTP API for mobile clients on the call node: sign-in, devices, client configuration.

``create_app(service)`` returns the FastAPI app (OpenAPI at ``/docs``). Endpoints:

``POST /oauth/token`` (form-encoded, RFC 6749)
    ``grant_type=password`` with ``username``, ``password`` and optional ``device_id``
    (RFC 6749 §4.3). The resource-owner password grant, not authorization code: our clients
    are native softphones holding the user's credentials anyway (the same ones they use for
    SIP digest), there is no browser or third party to protect them from, and the node is
    its own authorization server. ``grant_type=refresh_token`` with ``refresh_token``
    (§6), only while the enterprise parameter "OAuth with refresh login flow" is on; refresh
    tokens are single use (a new one comes with every grant) and turning the flow off revokes
    them all. Answer: ``access_token`` (JWT, HS256, see ``tokens``), ``token_type``,
    ``expires_in`` and, with refresh login on, ``refresh_token`` and
    ``refresh_token_expires_in``. Errors follow RFC 6749 §5.2: 400 with ``error``
    (``invalid_grant``, ``invalid_request``, ``unsupported_grant_type``) and
    ``error_description``.
``PUT /v1/devices/{device_id}``
    Register or update a device: platform, subscriber service, push token, 256-bit push key
    (``push_key`` base64, ``push_key_id``), capabilities, SIP instance id / pn-prid. A new key
    id rotates the key; the previous one stays valid for ``[signin] push_key_grace``.
    Registering again after a sign-out resumes pushes.
``GET /v1/devices``, ``DELETE /v1/devices/{device_id}``
    List the caller's devices (keys are never returned); delete one (its local push session
    closes).
``POST /v1/signout``
    Body ``{"device_id": ...}`` or empty for the device the token was issued to: revokes the
    device's refresh tokens, stops pushes to it, closes its local push session.
``GET /v1/config``
    The caller's merged client configuration as ``application/xml`` (see ``clientconfig``).

Everything under ``/v1`` needs ``Authorization: Bearer <access token>``; a bad or expired one
gets 401 with ``WWW-Authenticate``. Other errors are JSON ``{"error", "detail"}``. Passwords,
tokens and keys are never logged or echoed.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Callable
from datetime import datetime
from typing import Annotated, Any, Literal
from urllib.parse import parse_qs

from fastapi import Depends, FastAPI, Path, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, field_validator

from ucpush import __version__
from ucpush.httpapi import BodyLimit, describe_validation_errors, error_response
from ucpush.signin.service import DeviceRegistration, SigninError, SigninService, TokenGrant
from ucpush.store.repository import Device, EndUser, Platform, PushState

_ID_CHARS = r"[A-Za-z0-9._:-]{1,128}"
_ID_PATTERN = f"^{_ID_CHARS}$"
DeviceId = Annotated[str, Path(pattern=_ID_PATTERN, description="client-chosen device id")]
Service = Literal["APNS", "APNS:beta", "APNS:dev", "APNS:test", "APNS:load", "FCM", "FCM:dev"]
_NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


class Capabilities(BaseModel):
    model_config = ConfigDict(extra="forbid")
    single_channel: bool = Field(False, description="legacy iOS 12: VoIP and IM on one channel")
    china_region: bool = Field(False, description="no CallKit: calls arrive as message pushes")
    callkit: bool = True


class DeviceBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    platform: Platform
    service: Service
    # Real tokens are far shorter (APNs 64 hex digits, FCM ~160 characters); the bound
    # keeps them indexable (PostgreSQL btree entries stop near 2.7 kB).
    push_token: str = Field(min_length=1, max_length=1024, pattern=r"^[\x21-\x7e]+$")
    push_key: str = Field(description="256-bit AES key, base64 (standard or URL-safe)")
    push_key_id: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._:-]+$")
    capabilities: Capabilities = Capabilities()
    sip_instance_id: str = Field("", max_length=255)
    pn_prid: str = Field("", max_length=4096)

    @field_validator("push_key")
    @classmethod
    def _key_is_32_bytes(cls, value: str) -> str:
        if len(_decode_key(value)) != 32:
            raise ValueError("push_key must be 32 bytes (AES-256), base64-encoded")
        return value


def _decode_key(value: str) -> bytes:
    try:
        return base64.b64decode(
            value.replace("-", "+").replace("_", "/") + "=" * (-len(value) % 4), validate=True
        )
    except (binascii.Error, ValueError):
        raise ValueError("push_key must be 32 bytes (AES-256), base64-encoded") from None


class DeviceOut(BaseModel):
    id: str
    platform: Platform
    service: str
    push_token: str
    push_key_id: str
    previous_push_key_id: str | None
    previous_key_until: datetime | None
    capabilities: Capabilities
    sip_instance_id: str
    pn_prid: str
    push_state: PushState
    created_at: datetime
    updated_at: datetime

    @classmethod
    def of(cls, device: Device) -> DeviceOut:
        return cls(
            id=device.id,
            platform=device.platform,
            service=device.service,
            push_token=device.push_token,
            push_key_id=device.push_key_id,
            previous_push_key_id=device.previous_push_key_id or None,
            previous_key_until=device.previous_key_until,
            capabilities=Capabilities(
                single_channel=device.single_channel,
                china_region=device.china_region,
                callkit=device.callkit,
            ),
            sip_instance_id=device.sip_instance_id,
            pn_prid=device.pn_prid,
            push_state=device.push_state,
            created_at=device.created_at,
            updated_at=device.updated_at,
        )


class SignoutBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    device_id: str | None = Field(None, pattern=_ID_PATTERN)


class TokenOut(BaseModel):
    access_token: str
    token_type: str = "Bearer"
    expires_in: int
    refresh_token: str | None = None
    refresh_token_expires_in: int | None = None


def _oauth_error(error: str, description: str) -> JSONResponse:
    return JSONResponse(
        {"error": error, "error_description": description}, status_code=400, headers=_NO_STORE
    )


async def _caller(request: Request) -> tuple[EndUser, str]:
    """The authenticated user and the device id their token was issued to."""
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise SigninError(401, "invalid_request", "missing bearer access token")
    service: SigninService = request.app.state.signin
    user, claims = await service.authenticate(token.strip())
    return user, claims.device_id


Caller = Annotated[tuple[EndUser, str], Depends(_caller)]


def _token_answer(grant: TokenGrant) -> JSONResponse:
    body = TokenOut(
        access_token=grant.access_token,
        expires_in=grant.expires_in,
        refresh_token=grant.refresh_token,
        refresh_token_expires_in=grant.refresh_expires_in,
    )
    return JSONResponse(body.model_dump(exclude_none=True), headers=_NO_STORE)


class ChatPushOut(BaseModel):
    """What the app puts in its XEP-0357 ``<enable/>`` to its chat server."""

    jid: str = Field(description="the push app server (XMPP component) to enable")
    node: str
    secret: str = Field(description="publish-options secret; keep it like a password")


def create_app(
    service: SigninService,
    *,
    max_body_bytes: int = 16384,
    chat_push: Callable[[str], ChatPushOut] | None = None,
) -> FastAPI:
    """``chat_push``: device id → its chat push registration, when the node runs chat push."""
    app = FastAPI(
        title="ucpush sign-in",
        version=__version__,
        summary="Client sign-in (OAuth 2), device registry and client configuration.",
    )
    app.state.signin = service

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(400, "invalid_request", describe_validation_errors(exc.errors()))

    @app.exception_handler(SigninError)
    async def _signin_error(_: Request, exc: SigninError) -> JSONResponse:
        headers = None
        if exc.status == 401:
            headers = {"WWW-Authenticate": f'Bearer error="{exc.error}"'}
        return error_response(exc.status, exc.error, exc.detail, headers)

    @app.post("/oauth/token", response_model=TokenOut, tags=["oauth"])
    async def token(request: Request) -> Any:
        """OAuth 2.0 token endpoint: grants ``password`` and ``refresh_token``."""
        try:
            form = parse_qs((await request.body()).decode())
        except UnicodeDecodeError:
            form = {}

        def field(name: str) -> str:
            return form.get(name, [""])[0]

        grant = field("grant_type")
        try:
            if grant == "password":
                username, password, device_id = (
                    field("username"),
                    field("password"),
                    field("device_id"),
                )
                if not username or not password:
                    return _oauth_error("invalid_request", "username and password are required")
                if device_id and not _valid_id(device_id):
                    return _oauth_error("invalid_request", "device_id: 1-128 of A-Z a-z 0-9 ._:-")
                return _token_answer(await service.password_grant(username, password, device_id))
            if grant == "refresh_token":
                if not field("refresh_token"):
                    return _oauth_error("invalid_request", "refresh_token is required")
                return _token_answer(await service.refresh_grant(field("refresh_token")))
        except SigninError as exc:
            return _oauth_error(exc.error, exc.detail)
        return _oauth_error("unsupported_grant_type", "use password or refresh_token")

    @app.get("/v1/devices", response_model=list[DeviceOut], tags=["devices"])
    async def list_devices(caller: Caller) -> Any:
        return [DeviceOut.of(d) for d in await service.list_devices(caller[0])]

    @app.put("/v1/devices/{device_id}", response_model=DeviceOut, tags=["devices"])
    async def put_device(device_id: DeviceId, body: DeviceBody, caller: Caller) -> Any:
        registration = DeviceRegistration(
            platform=body.platform,
            service=body.service,
            push_token=body.push_token,
            push_key=_decode_key(body.push_key),
            push_key_id=body.push_key_id,
            single_channel=body.capabilities.single_channel,
            china_region=body.capabilities.china_region,
            callkit=body.capabilities.callkit,
            sip_instance_id=body.sip_instance_id,
            pn_prid=body.pn_prid,
        )
        return DeviceOut.of(await service.register_device(caller[0], device_id, registration))

    @app.get("/v1/devices/{device_id}/chat-push", response_model=ChatPushOut, tags=["devices"])
    async def device_chat_push(device_id: DeviceId, caller: Caller) -> Any:
        """The device's chat push registration (XEP-0357 enable parameters)."""
        if chat_push is None:
            return error_response(404, "not_found", "chat push is not enabled on this node")
        if device_id not in {d.id for d in await service.list_devices(caller[0])}:
            return error_response(404, "not_found", "no such device of this user")
        return chat_push(device_id)

    @app.delete("/v1/devices/{device_id}", status_code=204, tags=["devices"])
    async def delete_device(device_id: DeviceId, caller: Caller) -> Response:
        await service.delete_device(caller[0], device_id)
        return Response(status_code=204)

    @app.post("/v1/signout", status_code=204, tags=["devices"])
    async def signout(caller: Caller, body: SignoutBody | None = None) -> Response:
        device_id = body.device_id if body and body.device_id else caller[1]
        if not device_id:
            return error_response(
                400, "invalid_request", "device_id needed: the token names no device"
            )
        await service.sign_out(caller[0], device_id)
        return Response(status_code=204)

    @app.get("/v1/config", tags=["configuration"], response_class=Response)
    async def config(caller: Caller) -> Response:
        """Merged client configuration (jabber-config.xml style)."""
        return Response(await service.config_xml(caller[0]), media_type="application/xml")

    app.add_middleware(BodyLimit, limit=max_body_bytes)
    return app


def _valid_id(value: str) -> bool:
    return re.fullmatch(_ID_CHARS, value) is not None
