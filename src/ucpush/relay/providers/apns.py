"""APNs provider: HTTP/2 provider API with token-based (.p8, ES256 JWT) authentication.

One ``ApnsProvider`` serves every APNs ``ProviderApp``: the base URL follows the app's
environment and the provider token its (team_id, key_id).
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import jwt
from cryptography.hazmat.primitives.asymmetric.ec import EllipticCurvePrivateKey
from cryptography.hazmat.primitives.serialization import load_pem_private_key

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
from ucpush.relay.providers.pool import PoolSet
from ucpush.relay.providers.retry import (
    Retry,
    RetryPolicy,
    parse_retry_after,
    run_with_retries,
)
from ucpush.store.repository import ProviderApp

log = get_logger(__name__)

PAYLOAD_LIMIT = 4096
VOIP_PAYLOAD_LIMIT = 5120
# APNs answers TooManyProviderTokenUpdates when a token is replaced more often than this.
MIN_TOKEN_LIFETIME = 20 * 60
# APNs blocks a connection whose token changes too often (see ProviderTokens).
TOKEN_UPDATE_BLOCK = "TooManyProviderTokenUpdates"
# APNs sends no Retry-After with its 429s; this is what callers are told to wait.
DEFAULT_THROTTLE_RETRY_AFTER = 60.0

# Apple's tokens are hex (32 bytes today, documented as variable length).
_DEVICE_TOKEN = re.compile(r"[0-9A-Fa-f]{1,256}")

# Neutral placeholder text, shown only if the notification service extension cannot decrypt the
# payload: the real content (caller, message) travels encrypted in "jwe" and never in clear.
_ALERTS: dict[PushType, tuple[str, str]] = {
    PushType.MESSAGE: ("New message", "Open the app to read it."),
    PushType.MISSED_CALL: ("Missed call", "Open the app to see who called."),
    PushType.CANCEL: ("Call ended", "Open the app for details."),
    PushType.TERMINATED: ("Session ended", "Open the app to sign in again."),
}


def apns_push_type(push_type: PushType) -> str:
    """The ``apns-push-type`` header for a ucpush push type.

    Only a new call is a ``voip`` push: iOS 13+ kills an app that does not report a CallKit call
    for every VoIP push, and stops delivering VoIP pushes to it. Everything else, including the
    cancel/terminated follow-ups of a call, is an ``alert`` with mutable-content, so the
    notification service extension decrypts it and replaces or withdraws the ringing/missed-call
    notification. ``background`` would be the silent alternative but iOS throttles it to a few
    an hour, drops it for force-quit apps and delays it (priority 5 only), which is too
    unreliable for ending a ringing call.
    """
    return "voip" if push_type is PushType.VOIP else "alert"


def build_body(push: ProviderPush) -> bytes:
    """The exact request body; raises ``PayloadTooLarge`` over APNs' limit for the push type."""
    if push.push_type is PushType.VOIP:
        # PushKit ignores aps; the app reads jwe and reports the call to CallKit.
        aps: dict[str, object] = {}
        limit = VOIP_PAYLOAD_LIMIT
    else:
        title, text = _ALERTS[push.push_type]
        aps = {"alert": {"title": title, "body": text}, "mutable-content": 1, "sound": "default"}
        limit = PAYLOAD_LIMIT
    body = compact_json(
        {"aps": aps, "jwe": push.payload, "type": push.push_type.value, "tid": push.tracking_id}
    )
    if len(body) > limit:
        raise PayloadTooLarge(len(body), limit)
    return body


def build_headers(push: ProviderPush, apns_id: str) -> dict[str, str]:
    voip = push.push_type is PushType.VOIP
    headers = {
        "apns-topic": push.app.topic + ".voip" if voip else push.app.topic,
        "apns-push-type": apns_push_type(push.push_type),
        "apns-priority": "10" if push.priority is Priority.HIGH else "5",
        "apns-id": apns_id,
    }
    if push.expiration is not None:
        headers["apns-expiration"] = str(push.expiration)
    elif voip:
        # A call push is useful now or never: 0 tells APNs not to store it.
        headers["apns-expiration"] = "0"
    if push.collapse_id:
        headers["apns-collapse-id"] = push.collapse_id
    return headers


def interpret_response(
    status: int, headers: Mapping[str, str], content: bytes
) -> ProviderResult | Retry:
    """Map one APNs answer to a final result, or to a ``Retry`` for 429/5xx."""
    if 200 <= status < 300:  # APNs sends 200; any 2xx means it took the push, never resend
        return ProviderResult(Outcome.DELIVERED, status=status, provider_id=headers.get("apns-id"))
    error = json_object(content)
    reason = error.get("reason")
    reason = reason if isinstance(reason, str) else f"HTTP {status}"
    if status == 410:
        timestamp = error.get("timestamp")
        return ProviderResult(
            Outcome.UNREGISTERED,
            status=status,
            reason=reason,
            unregistered_at=int(timestamp) if isinstance(timestamp, int | float) else None,
        )
    if status == 400 and reason == "BadDeviceToken":
        # Usually a sandbox token sent to production or the reverse: not a dead token.
        return ProviderResult(Outcome.BAD_DEVICE_TOKEN, status=status, reason=reason)
    retry_after = parse_retry_after(headers.get("retry-after"))
    if status == 429:
        result = ProviderResult(
            Outcome.THROTTLED,
            status=status,
            reason=reason,
            retry_after=retry_after if retry_after is not None else DEFAULT_THROTTLE_RETRY_AFTER,
        )
        # TooManyRequests: one device pushed too fast. TooManyProviderTokenUpdates: this
        # connection is blocked, the caller retries on a new one.
        return Retry(result, retry_after)
    if status >= 500:
        return Retry(
            ProviderResult(
                Outcome.PROVIDER_DOWN, status=status, reason=reason, retry_after=retry_after
            ),
            retry_after,
        )
    return ProviderResult(Outcome.REJECTED, status=status, reason=reason)


@dataclass(frozen=True, slots=True)
class _Token:
    value: str
    issued_at: float
    forced: bool  # issued because APNs said the previous one expired


class ProviderTokens:
    """One provider JWT per (team_id, key_id), shared by every connection and app.

    Renewed every ``refresh_after`` seconds (Apple: at least hourly, at most every 20 minutes).
    """

    def __init__(self, refresh_after: float, clock: Callable[[], float] = time.time) -> None:
        self._refresh_after = max(refresh_after, MIN_TOKEN_LIFETIME)
        self._clock = clock
        self._keys: dict[str, EllipticCurvePrivateKey] = {}
        self._tokens: dict[tuple[str, str], _Token] = {}

    def current(self, app: ProviderApp) -> str:
        """The token to use now; raises OSError/ValueError if the .p8 key cannot be loaded."""
        token = self._tokens.get((app.team_id, app.key_id))
        # A negative age means the wall clock was set back: start over rather than wait.
        if token is None or not 0 <= self._clock() - token.issued_at < self._refresh_after:
            token = self._issue(app, forced=False)
        return token.value

    def renew_expired(self, app: ProviderApp, stale: str) -> bool:
        """APNs rejected ``stale`` as expired: make a fresh token current; False to give up.

        If another request already renewed it, nothing is issued. A forced renewal is allowed
        once per 20 minutes: if a fresh token is "expired" too, the clock is wrong and renewing
        on every push would only add TooManyProviderTokenUpdates.
        """
        token = self._tokens.get((app.team_id, app.key_id))
        if token is not None and token.value != stale:
            return True
        if (
            token is not None
            and token.forced
            and self._clock() - token.issued_at < MIN_TOKEN_LIFETIME
        ):
            return False
        self._issue(app, forced=True)
        return True

    def _issue(self, app: ProviderApp, *, forced: bool) -> _Token:
        now = self._clock()
        value = jwt.encode(
            {"iss": app.team_id, "iat": int(now)},
            self._key(app.credentials_file),
            algorithm="ES256",
            headers={"kid": app.key_id, "typ": None},  # Apple's header is just alg and kid
        )
        token = _Token(value, now, forced)
        self._tokens[(app.team_id, app.key_id)] = token
        return token

    def _key(self, path: str) -> EllipticCurvePrivateKey:
        key = self._keys.get(path)
        if key is None:
            loaded = load_pem_private_key(Path(path).read_bytes(), password=None)
            if not isinstance(loaded, EllipticCurvePrivateKey):
                raise ValueError("APNs signing key is not an EC (P-256) key")
            key = self._keys[path] = loaded
        return key


class ApnsProvider:
    name = "apns"

    def __init__(self, settings: RelaySettings, *, clock: Callable[[], float] = time.time) -> None:
        self._base_urls = {
            "production": settings.apns_production_url.rstrip("/"),
            "sandbox": settings.apns_sandbox_url.rstrip("/"),
        }
        self._pools = PoolSet(settings.apns_connections, settings)
        self._tokens = ProviderTokens(settings.apns_token_refresh, clock)
        self._policy = RetryPolicy.from_settings(settings)

    async def send(self, push: ProviderPush) -> ProviderResult:
        started = time.monotonic()
        body = build_body(push)
        result = await self._send(push, body)
        log_result(log, push, result, started)
        return result

    async def _send(self, push: ProviderPush, body: bytes) -> ProviderResult:
        app = push.app
        base_url = self._base_urls.get(app.environment)
        if base_url is None:
            return ProviderResult(Outcome.REJECTED, reason="UnknownEnvironment", attempts=0)
        if not _DEVICE_TOKEN.fullmatch(push.target):
            # Never sent: APNs would refuse it, and it must not shape the request path.
            return ProviderResult(Outcome.BAD_DEVICE_TOKEN, reason="BadDeviceToken", attempts=0)
        try:
            self._tokens.current(app)  # fail early if the .p8 key is unusable
        except (OSError, ValueError) as exc:
            log.error("apns_key_unusable", team_id=app.team_id, key_id=app.key_id, error=str(exc))
            return ProviderResult(Outcome.REJECTED, reason="ProviderKeyUnusable", attempts=0)

        # Generated once and reused by every retry. APNs offers no idempotency (the id is only
        # echoed), so a retry after a connection lost mid-request may show a call twice; losing
        # a call push is worse, which is the accepted trade-off.
        headers = build_headers(push, str(uuid.uuid4()))
        # APNs binds a connection to the team of the first token it sees (Apple forum 702056).
        pool = self._pools.get(base_url, app.team_id)
        path = f"/3/device/{push.target}"
        renewed = False

        async def attempt() -> ProviderResult | Retry:
            nonlocal renewed
            # Looked up per attempt: a renewal by this or another push is picked up at once.
            token = self._tokens.current(app)
            headers["authorization"] = f"bearer {token}"
            try:
                async with pool.connection() as conn:
                    response = await conn.client.post(path, content=body, headers=headers)
                    step = interpret_response(
                        response.status_code, response.headers, response.content
                    )
                    result = step if isinstance(step, ProviderResult) else step.result
                    if response.status_code >= 500 or result.reason == TOKEN_UPDATE_BLOCK:
                        # A server error or a token-update block belongs to the connection: the
                        # retry, and later pushes, get a fresh one.
                        pool.retire(conn)
            except H2Error as exc:
                # Retried whether or not the provider may have seen it (exc.not_processed):
                # losing a push is worse than a rare duplicate.
                return Retry(ProviderResult(Outcome.PROVIDER_DOWN, reason=exc.reason))
            if (
                isinstance(step, ProviderResult)
                and step.reason == "ExpiredProviderToken"
                and not renewed
            ):
                renewed = True
                if self._tokens.renew_expired(app, stale=token):
                    return Retry(step, renewed=True)
            return step

        return await run_with_retries(attempt, self._policy)

    async def aclose(self) -> None:
        await self._pools.aclose()
