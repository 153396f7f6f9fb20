"""Local FCM simulator: the HTTP v1 send API plus Google's OAuth2 token endpoint.

Service-account credentials made with ``token_uri = sim.token_uri`` work unchanged with
google-auth: ``POST /token`` accepts the JWT-bearer grant it sends and hands out access tokens
that ``POST /v1/projects/{project}/messages:send`` checks. Validation, status codes and error
bodies follow FCM (``{"error": {"code", "message", "status", "details": [FcmError]}}``).
Accepted messages are recorded in ``sim.delivered``. Only token targets are delivered.

Control API (same server, JSON bodies; never subject to faults):

- ``GET /_sim/health`` -> ``{"status": "ok"}``
- ``GET /_sim/delivered`` -> list of ``{"project_id", "token", "message", "raw" (base64),
  "name", "received_at"}``; ``DELETE /_sim/delivered`` -> 204
- ``POST /_sim/accounts`` ``{"client_email", "project_id", "public_key_pem",
  "private_key_id"}`` -> 204
- ``POST /_sim/devices`` ``{"token", "project_id"}`` -> 204
- ``DELETE /_sim/devices/<token>`` -> 204; later sends get 404 UNREGISTERED
- ``POST /_sim/faults`` ``{"kind": "status"|"latency"|"reset"|"goaway", "status", "fcm_error",
  "count", "delay", "retry_after"}`` -> 204 (faults hit ``messages:send`` only);
  ``DELETE /_sim/faults`` clears the queue

Errors in control requests answer 400 ``{"error": "..."}``.
"""

from __future__ import annotations

import base64
import json
import re
import secrets
import ssl
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, unquote

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from ucpush.sim.common import (
    Clock,
    Fault,
    SimulatorBase,
    json_response,
    parse_json_body,
    require_object,
    require_str,
)
from ucpush.sim.credentials import FCM_SCOPE
from ucpush.sim.h2server import Request, Response

JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
# google-auth always signs its grant for Google's endpoint, whatever token_uri it posts to.
GOOGLE_TOKEN_URI = "https://oauth2.googleapis.com/token"
CLOUD_PLATFORM_SCOPE = "https://www.googleapis.com/auth/cloud-platform"
ACCESS_TOKEN_LIFETIME = 3600  # s
MAX_ASSERTION_LIFETIME = 3600  # s, exp - iat
CLOCK_SKEW = 300  # s tolerated on iat in the future
MAX_MESSAGE = 4096
MAX_TTL = 2_419_200  # s, 28 days

FCM_ERROR_TYPE = "type.googleapis.com/google.firebase.fcm.v1.FcmError"
GRPC_STATUS = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    503: "UNAVAILABLE",
}
DEFAULT_FCM_ERROR = {
    400: "INVALID_ARGUMENT",
    401: "THIRD_PARTY_AUTH_ERROR",
    403: "SENDER_ID_MISMATCH",
    404: "UNREGISTERED",
    429: "QUOTA_EXCEEDED",
    500: "INTERNAL",
    503: "UNAVAILABLE",
}
MISSING_CREDENTIALS = (
    "Request is missing required authentication credential. Expected OAuth 2 access token, "
    "login cookie or other valid authentication credential. See "
    "https://developers.google.com/identity/sign-in/web/devconsole-project."
)
INVALID_CREDENTIALS = (
    "Request had invalid authentication credentials. Expected OAuth 2 access token, login "
    "cookie or other valid authentication credential. See "
    "https://developers.google.com/identity/sign-in/web/devconsole-project."
)
BAD_IAT_EXP = (
    "Invalid JWT: Token must be a short-lived token (60 minutes) and in a reasonable "
    "timeframe. Check your iat and exp values in the JWT claim."
)

_SEND_PATH = re.compile(r"/v1/projects/([^/]+)/messages:send")
_TTL = re.compile(r"([0-9]+)(?:\.([0-9]{1,9}))?s")
_REQUEST_FIELDS = frozenset({"message", "validate_only", "validateOnly"})
_MESSAGE_FIELDS = frozenset(
    {
        "name",
        "token",
        "topic",
        "condition",
        "data",
        "notification",
        "android",
        "webpush",
        "apns",
        "fcm_options",
        "fcmOptions",
    }
)
_ANDROID_FIELDS = frozenset(
    {
        "collapse_key",
        "collapseKey",
        "priority",
        "ttl",
        "restricted_package_name",
        "restrictedPackageName",
        "data",
        "notification",
        "fcm_options",
        "fcmOptions",
        "direct_boot_ok",
        "directBootOk",
    }
)


@dataclass(frozen=True, slots=True)
class FcmDelivery:
    project_id: str
    token: str
    message: dict[str, Any]
    raw: bytes  # the request body exactly as received
    name: str
    received_at: float

    def to_json(self) -> dict[str, Any]:
        return {
            "project_id": self.project_id,
            "token": self.token,
            "message": self.message,
            "raw": base64.b64encode(self.raw).decode(),
            "name": self.name,
            "received_at": self.received_at,
        }


@dataclass(frozen=True, slots=True)
class _Account:
    client_email: str
    project_id: str
    key: rsa.RSAPublicKey


@dataclass(frozen=True, slots=True)
class _AccessToken:
    client_email: str
    project_id: str
    expires_at: float


@dataclass(slots=True)
class _FcmDevice:
    project_id: str
    registered: bool = True


class _FcmError(Exception):
    def __init__(self, status: int, message: str, fcm_error: str | None = None) -> None:
        self.status = status
        self.message = message
        self.fcm_error = fcm_error


def error_body(status: int, message: str, fcm_error: str | None) -> dict[str, Any]:
    """FCM's error JSON; ``fcm_error`` adds the FcmError detail carrying the error code."""
    error: dict[str, Any] = {
        "code": status,
        "message": message,
        "status": GRPC_STATUS.get(status, "UNKNOWN"),
    }
    if fcm_error is not None:
        error["details"] = [{"@type": FCM_ERROR_TYPE, "errorCode": fcm_error}]
    return {"error": error}


class FcmSimulator(SimulatorBase):
    def __init__(
        self,
        ssl_context: ssl.SSLContext | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        clock: Clock | None = None,
    ) -> None:
        super().__init__(ssl_context, host, port, clock, max_body=64 * 1024)
        self.delivered: list[FcmDelivery] = []
        self._accounts: dict[str, _Account] = {}  # by private_key_id
        self._access_tokens: dict[str, _AccessToken] = {}
        self._devices: dict[str, _FcmDevice] = {}

    @property
    def token_uri(self) -> str:
        return self.url + "/token"

    # -- set-up API -------------------------------------------------------------------

    def add_service_account(
        self, client_email: str, project_id: str, public_key_pem: bytes, private_key_id: str
    ) -> None:
        key = serialization.load_pem_public_key(public_key_pem)
        if not isinstance(key, rsa.RSAPublicKey):
            raise ValueError("service-account keys are RSA keys")
        self._accounts[private_key_id] = _Account(client_email, project_id, key)

    def register_device(self, token: str, project_id: str) -> None:
        if not token or not project_id:
            raise ValueError("token and project_id must be non-empty")
        self._devices[token] = _FcmDevice(project_id)

    def unregister_device(self, token: str) -> None:
        device = self._devices.get(token)
        if device is None:
            raise ValueError("unknown registration token")
        device.registered = False

    def clear_delivered(self) -> None:
        self.delivered.clear()

    def issue_access_token(
        self, client_email: str, project_id: str, lifetime: float = ACCESS_TOKEN_LIFETIME
    ) -> str:
        """An access token as ``POST /token`` grants; lets benchmarks skip the OAuth round."""
        access_token = "ya29.sim-" + secrets.token_urlsafe(32)
        self._access_tokens[access_token] = _AccessToken(
            client_email, project_id, self.clock() + lifetime
        )
        return access_token

    # -- dispatch ---------------------------------------------------------------------

    def _is_push(self, request: Request) -> bool:
        return request.path != "/token"

    def _handle(self, request: Request) -> Response:
        if request.path == "/token" and request.method == "POST":
            return self._token(request)
        match = _SEND_PATH.fullmatch(request.path)
        if match is None or request.method != "POST":
            return _error(404, "Method not found.", None)
        try:
            return self._send(request, unquote(match.group(1)))
        except _FcmError as exc:
            headers = []
            if exc.status == 401:
                headers.append(("www-authenticate", 'Bearer realm="https://accounts.google.com/"'))
            return _error(exc.status, exc.message, exc.fcm_error, headers)

    # -- OAuth2 token endpoint --------------------------------------------------------

    def _token(self, request: Request) -> Response:
        try:
            form = parse_qs(request.body.decode(), strict_parsing=True)
        except (UnicodeDecodeError, ValueError):
            form = {}
        grant_type = form.get("grant_type", [""])[0]
        if grant_type != JWT_BEARER:
            return _oauth_error("unsupported_grant_type", f"Invalid grant_type: {grant_type}")
        assertion = form.get("assertion", [""])[0]
        try:
            header = jwt.get_unverified_header(assertion)
        except jwt.PyJWTError:
            return _oauth_error("invalid_grant", "Invalid JWT Signature.")
        account = self._accounts.get(header.get("kid", ""))
        if account is None or header.get("alg") != "RS256":
            return _oauth_error("invalid_grant", "Invalid JWT Signature.")
        try:
            claims = jwt.decode(
                assertion,
                account.key,
                algorithms=["RS256"],
                options={"verify_exp": False, "verify_iat": False, "verify_aud": False},
            )
        except jwt.PyJWTError:
            return _oauth_error("invalid_grant", "Invalid JWT Signature.")
        if claims.get("iss") != account.client_email:
            return _oauth_error("invalid_grant", "Invalid email or User ID")
        audiences = {
            GOOGLE_TOKEN_URI,
            self.token_uri,
            f"{request.scheme}://{request.authority}/token",
        }
        if claims.get("aud") not in audiences:
            return _oauth_error(
                "invalid_grant",
                f"Invalid JWT: Failed audience check. The right audience is {self.token_uri}",
            )
        iat, exp, now = claims.get("iat"), claims.get("exp"), self.clock()
        if (
            not isinstance(iat, int | float)
            or not isinstance(exp, int | float)
            or exp - iat > MAX_ASSERTION_LIFETIME
            or exp <= now
            or iat > now + CLOCK_SKEW
        ):
            return _oauth_error("invalid_grant", BAD_IAT_EXP)
        scopes = str(claims.get("scope", "")).split()
        if FCM_SCOPE not in scopes and CLOUD_PLATFORM_SCOPE not in scopes:
            return _oauth_error("invalid_scope", "Invalid OAuth scope or ID token audience.")
        access_token = self.issue_access_token(account.client_email, account.project_id)
        return json_response(
            200,
            {"access_token": access_token, "expires_in": 3599, "token_type": "Bearer"},
            [("cache-control", "no-cache, no-store, max-age=0, must-revalidate")],
        )

    # -- messages:send ----------------------------------------------------------------

    def _send(self, request: Request, project_id: str) -> Response:
        self._authorize(request, project_id)
        try:
            body = json.loads(request.body)
        except (ValueError, UnicodeDecodeError) as exc:
            raise _FcmError(400, f"Invalid JSON payload received. {exc}") from exc
        message, validate_only = _validate_request(body)
        token = message.get("token")
        if not isinstance(token, str) or not token:
            raise _FcmError(400, "Recipient of the message is not set.", "INVALID_ARGUMENT")
        device = self._devices.get(token)
        if device is None:
            raise _FcmError(
                400,
                "The registration token is not a valid FCM registration token",
                "INVALID_ARGUMENT",
            )
        if device.project_id != project_id:
            raise _FcmError(403, "SenderId mismatch", "SENDER_ID_MISMATCH")
        if not device.registered:
            raise _FcmError(404, "Requested entity was not found.", "UNREGISTERED")
        if validate_only:
            return json_response(200, {"name": f"projects/{project_id}/messages/fake_message_id"})
        now = self.clock()
        name = f"projects/{project_id}/messages/0:{int(now * 1e6)}%{secrets.token_hex(8)}"
        self.delivered.append(FcmDelivery(project_id, token, message, request.body, name, now))
        return json_response(200, {"name": name})

    def _authorize(self, request: Request, project_id: str) -> None:
        authorization = request.header("authorization")
        if not authorization:
            raise _FcmError(401, MISSING_CREDENTIALS)
        scheme, _, value = authorization.partition(" ")
        access = self._access_tokens.get(value.strip()) if scheme.lower() == "bearer" else None
        if access is None or access.expires_at <= self.clock():
            raise _FcmError(401, INVALID_CREDENTIALS)
        if access.project_id != project_id:
            raise _FcmError(
                403,
                f"Permission 'cloudmessaging.messages.create' denied on resource "
                f"'//cloudresourcemanager.googleapis.com/projects/{project_id}' "
                f"(or it may not exist).",
            )

    # -- faults and limits ------------------------------------------------------------

    def _fault_response(self, request: Request, fault: Fault) -> Response:
        fcm_error = fault.fcm_error or DEFAULT_FCM_ERROR.get(fault.status, "INTERNAL")
        headers = []
        if fault.retry_after is not None:
            headers.append(("retry-after", str(fault.retry_after)))
        return _error(fault.status, fault.reason or "Simulated fault.", fcm_error, headers)

    def _oversize(self, request: Request) -> Response:
        return _error(400, "Message is too big", "INVALID_ARGUMENT")

    # -- control API ------------------------------------------------------------------

    def _delivered_json(self) -> list[dict[str, Any]]:
        return [delivery.to_json() for delivery in self.delivered]

    def _control_extra(self, request: Request, route: str) -> Response:
        if route == "accounts" and request.method == "POST":
            data = require_object(parse_json_body(request))
            self.add_service_account(
                require_str(data, "client_email"),
                require_str(data, "project_id"),
                require_str(data, "public_key_pem").encode(),
                require_str(data, "private_key_id"),
            )
            return Response(204)
        if route == "devices" and request.method == "POST":
            data = require_object(parse_json_body(request))
            self.register_device(require_str(data, "token"), require_str(data, "project_id"))
            return Response(204)
        if route.startswith("devices/") and request.method == "DELETE":
            self.unregister_device(unquote(route[len("devices/") :]))
            return Response(204)
        return json_response(404, {"error": "unknown control endpoint"})


def _error(
    status: int,
    message: str,
    fcm_error: str | None,
    headers: list[tuple[str, str]] | None = None,
) -> Response:
    return json_response(status, error_body(status, message, fcm_error), headers)


def _oauth_error(error: str, description: str) -> Response:
    return json_response(400, {"error": error, "error_description": description})


def _invalid(message: str) -> _FcmError:
    return _FcmError(400, message, "INVALID_ARGUMENT")


def _unknown_fields(obj: dict[str, Any], allowed: frozenset[str], where: str) -> None:
    for name in obj:
        if name not in allowed:
            raise _invalid(
                f"Invalid JSON payload received. Unknown name \"{name}\" at '{where}': "
                "Cannot find field."
            )


def _string_map(value: Any, where: str) -> None:
    if not isinstance(value, dict):
        raise _invalid(f"Invalid value at '{where}' (type.googleapis.com/map), {value!r}")
    for index, item in enumerate(value.values()):
        if not isinstance(item, str):
            raise _invalid(
                f"Invalid value at '{where}[{index}].value' (TYPE_STRING), {json.dumps(item)}"
            )


def _validate_request(body: Any) -> tuple[dict[str, Any], bool]:
    if not isinstance(body, dict):
        raise _invalid("Invalid JSON payload received. Expected an object.")
    _unknown_fields(body, _REQUEST_FIELDS, "")
    message = body.get("message")
    if not isinstance(message, dict):
        raise _invalid("Request contains an invalid argument.")
    _unknown_fields(message, _MESSAGE_FIELDS, "message")
    if "data" in message:
        _string_map(message["data"], "message.data")
    for name in ("notification", "webpush", "apns", "fcm_options", "fcmOptions"):
        if name in message and not isinstance(message[name], dict):
            raise _invalid(f"Invalid value at 'message.{name}', {json.dumps(message[name])}")
    android = message.get("android")
    if android is not None:
        _validate_android(android)
    if len(json.dumps(message, separators=(",", ":")).encode()) > MAX_MESSAGE:
        raise _invalid(f"Message is too big; the maximum size is {MAX_MESSAGE} bytes")
    validate_only = body.get("validate_only", body.get("validateOnly", False))
    if not isinstance(validate_only, bool):
        raise _invalid(f"Invalid value at 'validate_only' (TYPE_BOOL), {json.dumps(validate_only)}")
    return message, validate_only


def _validate_android(android: Any) -> None:
    if not isinstance(android, dict):
        raise _invalid(f"Invalid value at 'message.android', {json.dumps(android)}")
    _unknown_fields(android, _ANDROID_FIELDS, "message.android")
    priority = android.get("priority")
    if priority is not None and (
        not isinstance(priority, str) or priority.upper() not in ("HIGH", "NORMAL")
    ):
        raise _invalid(
            "Invalid value at 'message.android.priority' "
            f"(type.googleapis.com/google.firebase.fcm.v1.AndroidMessagePriority), "
            f"{json.dumps(priority)}"
        )
    ttl = android.get("ttl")
    if ttl is not None:
        match = _TTL.fullmatch(ttl) if isinstance(ttl, str) else None
        if match is None:
            raise _invalid(
                "Invalid value at 'message.android.ttl' (type.googleapis.com/"
                f"google.protobuf.Duration), {json.dumps(ttl)}"
            )
        if float(ttl[:-1]) > MAX_TTL:
            raise _invalid("The ttl value is out of range; it must be within 0 and 28 days")
    if "data" in android:
        _string_map(android["data"], "message.android.data")
    collapse_key = android.get("collapse_key", android.get("collapseKey"))
    if collapse_key is not None and not isinstance(collapse_key, str):
        raise _invalid(
            f"Invalid value at 'message.android.collapse_key' (TYPE_STRING), "
            f"{json.dumps(collapse_key)}"
        )
