"""FCM provider: HTTP v1 API with service-account OAuth2 access tokens (google-auth).

One ``FcmProvider`` serves every FCM ``ProviderApp``: ``app.topic`` is the Firebase project id
and ``app.credentials_file`` the service-account JSON (its ``token_uri`` is used as is).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import google.auth.exceptions
import google.auth.transport
import httpx
from google.oauth2 import service_account

from ucpush.config import RelaySettings
from ucpush.logging import get_logger
from ucpush.relay.providers.base import (
    Outcome,
    PayloadTooLarge,
    Priority,
    ProviderPush,
    ProviderResult,
    PushType,
)
from ucpush.relay.providers.common import compact_json, json_object, log_result
from ucpush.relay.providers.h2client import H2Error
from ucpush.relay.providers.pool import PoolSet, provider_ssl_context
from ucpush.relay.providers.retry import (
    Retry,
    RetryPolicy,
    parse_retry_after,
    run_with_retries,
)

log = get_logger(__name__)

SCOPES = ["https://www.googleapis.com/auth/firebase.messaging"]
PAYLOAD_LIMIT = 4096
MAX_TTL = 2_419_200  # FCM's maximum, 28 days
# A call push is useless once the caller has given up.
VOIP_TTL = 30
# FCM asks for at least a minute after QUOTA_EXCEEDED, growing exponentially.
QUOTA_BACKOFF_MIN = 60.0
QUOTA_BACKOFF_MAX = 3600.0

_FCM_ERROR_TYPE = "type.googleapis.com/google.firebase.fcm.v1.FcmError"
_BAD_REQUEST_TYPE = "type.googleapis.com/google.rpc.BadRequest"
_REJECTED_CODES = {"SENDER_ID_MISMATCH", "THIRD_PARTY_AUTH_ERROR", "PERMISSION_DENIED"}


def build_body(push: ProviderPush, now: float) -> bytes:
    """The exact request body; raises ``PayloadTooLarge`` when the message exceeds 4096 bytes.

    The whole message (token and android options included) is measured, the strictest reading
    of FCM's limit, so nothing that passes here is refused as too big.
    """
    android: dict[str, str] = {"priority": "high" if push.priority is Priority.HIGH else "normal"}
    if push.expiration is not None:
        android["ttl"] = f"{max(0, min(MAX_TTL, push.expiration - int(now)))}s"
    elif push.push_type is PushType.VOIP:
        android["ttl"] = f"{VOIP_TTL}s"
    if push.collapse_id:
        android["collapse_key"] = push.collapse_id
    data = {"jwe": push.payload, "type": push.push_type.value, "tid": push.tracking_id}
    message = compact_json({"token": push.target, "data": data, "android": android})
    if len(message) > PAYLOAD_LIMIT:
        raise PayloadTooLarge(len(message), PAYLOAD_LIMIT)
    return b'{"message":' + message + b"}"


def error_code(error: Mapping[str, Any]) -> str | None:
    """FCM's specific ``errorCode`` from the details, else the generic ``status``."""
    details = error.get("details")
    for detail in details if isinstance(details, list) else []:
        if isinstance(detail, dict) and detail.get("@type") == _FCM_ERROR_TYPE:
            code = detail.get("errorCode")
            if isinstance(code, str):
                return code
    status = error.get("status")
    return status if isinstance(status, str) else None


def _about_token(error: Mapping[str, Any]) -> bool:
    """Whether an INVALID_ARGUMENT names the registration token rather than the message."""
    details = error.get("details")
    for detail in details if isinstance(details, list) else []:
        if isinstance(detail, dict) and detail.get("@type") == _BAD_REQUEST_TYPE:
            violations = detail.get("fieldViolations")
            for violation in violations if isinstance(violations, list) else []:
                if isinstance(violation, dict) and violation.get("field") == "message.token":
                    return True
    message = error.get("message")
    return isinstance(message, str) and "registration token" in message.lower()


def interpret_response(
    status: int, headers: Mapping[str, str], content: bytes
) -> ProviderResult | Retry:
    """Map one FCM answer to a final result, or to a ``Retry`` for 5xx.

    401 UNAUTHENTICATED and 429 QUOTA_EXCEEDED come back as REJECTED/THROTTLED results; the
    provider renews the access token or records the project's back-off around this.
    """
    answer = json_object(content)
    if 200 <= status < 300:  # FCM took the message: never resend
        name = answer.get("name")
        return ProviderResult(
            Outcome.DELIVERED, status=status, provider_id=name if isinstance(name, str) else None
        )
    error = answer.get("error")
    error = error if isinstance(error, dict) else {}
    code = error_code(error) or f"HTTP {status}"
    retry_after = parse_retry_after(headers.get("retry-after"))
    if code == "UNREGISTERED":
        return ProviderResult(Outcome.UNREGISTERED, status=status, reason=code)
    if code == "INVALID_ARGUMENT" and _about_token(error):
        return ProviderResult(Outcome.BAD_DEVICE_TOKEN, status=status, reason=code)
    if status == 429 or code in ("QUOTA_EXCEEDED", "RESOURCE_EXHAUSTED"):
        return ProviderResult(
            Outcome.THROTTLED,
            status=status,
            reason=code,
            retry_after=max(QUOTA_BACKOFF_MIN, retry_after or 0.0),
        )
    if status >= 500 or code in ("UNAVAILABLE", "INTERNAL"):
        return Retry(
            ProviderResult(
                Outcome.PROVIDER_DOWN, status=status, reason=code, retry_after=retry_after
            ),
            retry_after,
        )
    # INVALID_ARGUMENT about the message, _REJECTED_CODES, UNAUTHENTICATED, anything else.
    return ProviderResult(Outcome.REJECTED, status=status, reason=code)


class _AuthResponse(google.auth.transport.Response):
    def __init__(self, response: httpx.Response) -> None:
        self._response = response

    @property
    def status(self) -> int:
        return self._response.status_code

    @property
    def headers(self) -> Mapping[str, str]:
        return self._response.headers

    @property
    def data(self) -> bytes:
        return self._response.content


class HttpxAuthRequest(google.auth.transport.Request):
    """google-auth's transport interface over a sync httpx client (``requests`` is not used).

    ``http://`` token endpoints (the simulator) are spoken as h2c, like the provider APIs.
    """

    def __init__(self, settings: RelaySettings) -> None:
        context = provider_ssl_context(settings)
        self._tls = httpx.Client(http2=True, verify=context, timeout=settings.request_timeout)
        self._h2c = httpx.Client(http1=False, http2=True, timeout=settings.request_timeout)

    def __call__(
        self,
        url: str,
        method: str = "GET",
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: float | None = None,
        **kwargs: Any,
    ) -> _AuthResponse:
        client = self._h2c if url.startswith("http://") else self._tls
        try:
            response = client.request(
                method,
                url,
                content=body,
                headers=headers,
                timeout=timeout if timeout is not None else httpx.USE_CLIENT_DEFAULT,
            )
        except httpx.HTTPError as exc:
            raise google.auth.exceptions.TransportError(str(exc)) from exc
        return _AuthResponse(response)

    def close(self) -> None:
        self._tls.close()
        self._h2c.close()


class _AccessToken:
    """The OAuth2 access token of one service account; one refresh at a time."""

    def __init__(self, credentials: service_account.Credentials) -> None:
        self._credentials = credentials
        self._lock = asyncio.Lock()

    async def get(self, request: HttpxAuthRequest) -> str:
        # ``expired`` already includes google-auth's early-refresh margin (3 min 45 s).
        if self._credentials.token and not self._credentials.expired:
            return self._credentials.token
        async with self._lock:
            if not self._credentials.token or self._credentials.expired:
                await asyncio.to_thread(self._credentials.refresh, request)
            return self._credentials.token

    async def renew(self, request: HttpxAuthRequest, stale: str) -> None:
        """FCM said 401: refresh unless another request already did."""
        async with self._lock:
            if self._credentials.token == stale:
                await asyncio.to_thread(self._credentials.refresh, request)


@dataclass(slots=True)
class _QuotaBackoff:
    until: float = 0.0
    streak: int = 0  # consecutive QUOTA_EXCEEDED episodes


class FcmProvider:
    name = "fcm"

    def __init__(self, settings: RelaySettings, *, clock: Callable[[], float] = time.time) -> None:
        self._base_url = settings.fcm_url.rstrip("/")
        self._pools = PoolSet(settings.fcm_connections, settings)
        self._auth_request = HttpxAuthRequest(settings)
        self._tokens: dict[str, _AccessToken] = {}
        self._quota: dict[str, _QuotaBackoff] = {}
        self._policy = RetryPolicy.from_settings(settings)
        self._clock = clock

    async def send(self, push: ProviderPush) -> ProviderResult:
        started = time.monotonic()
        body = build_body(push, self._clock())
        result = await self._send(push, body)
        log_result(log, push, result, started)
        return result

    def _access_token(self, credentials_file: str) -> _AccessToken:
        token = self._tokens.get(credentials_file)
        if token is None:
            credentials = service_account.Credentials.from_service_account_file(
                credentials_file, scopes=SCOPES
            )
            token = self._tokens[credentials_file] = _AccessToken(credentials)
        return token

    async def _send(self, push: ProviderPush, body: bytes) -> ProviderResult:
        project = push.app.topic
        backoff = self._quota.get(project)
        remaining = backoff.until - self._clock() if backoff is not None else 0.0
        if remaining > 0:
            # FCM asked us to slow down for the whole project: don't even try.
            return ProviderResult(
                Outcome.THROTTLED, reason="QUOTA_EXCEEDED", retry_after=remaining, attempts=0
            )
        try:
            access = self._access_token(push.app.credentials_file)
        except (OSError, ValueError) as exc:
            log.error("fcm_credentials_unusable", project=project, error=str(exc))
            return ProviderResult(Outcome.REJECTED, reason="CredentialsUnusable", attempts=0)

        pool = self._pools.get(self._base_url)
        path = f"/v1/projects/{project}/messages:send"

        renewed = False

        async def attempt() -> ProviderResult | Retry:
            nonlocal renewed
            try:
                token = await access.get(self._auth_request)
            except google.auth.exceptions.GoogleAuthError as exc:
                return self._auth_failure(exc)
            headers = {"authorization": f"Bearer {token}", "content-type": "application/json"}
            try:
                async with pool.connection() as conn:
                    response = await conn.client.post(path, content=body, headers=headers)
                    if response.status_code >= 500:
                        pool.retire(conn)  # the retry may reach a healthier front end
            except H2Error as exc:
                # Retried whether or not the provider may have seen it (exc.not_processed):
                # losing a push is worse than a rare duplicate.
                return Retry(ProviderResult(Outcome.PROVIDER_DOWN, reason=exc.reason))
            step = interpret_response(response.status_code, response.headers, response.content)
            if not isinstance(step, ProviderResult):
                return step
            if step.reason == "UNAUTHENTICATED" and not renewed:
                renewed = True
                try:
                    await access.renew(self._auth_request, stale=token)
                except google.auth.exceptions.GoogleAuthError as exc:
                    return self._auth_failure(exc)
                return Retry(step, renewed=True)
            if step.outcome is Outcome.THROTTLED:
                return self._quota_exceeded(project, step)
            if step.outcome is Outcome.DELIVERED:
                self._quota_recovered(project)
            return step

        return await run_with_retries(attempt, self._policy)

    def _auth_failure(self, exc: google.auth.exceptions.GoogleAuthError) -> ProviderResult | Retry:
        log.warning("fcm_token_refresh_failed", error=str(exc), retryable=exc.retryable)
        if isinstance(exc, google.auth.exceptions.TransportError) or exc.retryable:
            return Retry(ProviderResult(Outcome.PROVIDER_DOWN, reason="TokenEndpointUnavailable"))
        return ProviderResult(Outcome.REJECTED, reason="TokenRefreshFailed")

    def _quota_exceeded(self, project: str, result: ProviderResult) -> ProviderResult:
        """Start (or extend) the project's back-off: 60 s, doubling per episode, capped."""
        now = self._clock()
        wait = result.retry_after or QUOTA_BACKOFF_MIN
        backoff = self._quota.setdefault(project, _QuotaBackoff())
        if now >= backoff.until:
            backoff.streak += 1
            doubled = QUOTA_BACKOFF_MIN * 2 ** min(backoff.streak - 1, 10)
            backoff.until = now + max(wait, min(QUOTA_BACKOFF_MAX, doubled))
        else:
            # An answer to a request sent before the episode began: same episode.
            backoff.until = max(backoff.until, now + wait)
        return ProviderResult(
            Outcome.THROTTLED,
            status=result.status,
            reason=result.reason,
            retry_after=backoff.until - now,
        )

    def _quota_recovered(self, project: str) -> None:
        # Answers to requests sent before an episode don't end it early.
        backoff = self._quota.get(project)
        if backoff is not None and self._clock() >= backoff.until:
            del self._quota[project]  # the next episode starts at 60 s again

    async def aclose(self) -> None:
        await self._pools.aclose()
        self._auth_request.close()
