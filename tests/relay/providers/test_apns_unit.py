"""APNs pure parts: request body and headers, size limits, response mapping, token timing."""

from __future__ import annotations

import json
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from ucpush.relay.providers.apns import (
    ProviderTokens,
    apns_push_type,
    build_body,
    build_headers,
    interpret_response,
)
from ucpush.relay.providers.base import Outcome, PayloadTooLarge, Priority, PushType
from ucpush.relay.providers.retry import Retry
from ucpush.store.repository import ProviderApp

from .conftest import BUNDLE, KEY_ID, PAYLOAD, TEAM_ID, FakeClock, device_token, make_push

APNS_ID = "2d5f3e0a-8f3c-4a2b-9a70-5a1f2b9c1d11"


def test_voip_body_is_compact_with_empty_aps(apns_app: ProviderApp) -> None:
    push = make_push(apns_app, device_token(), push_type=PushType.VOIP, tracking_id="t-1")
    assert build_body(push) == (
        b'{"aps":{},"jwe":"' + PAYLOAD.encode() + b'","type":"voip","tid":"t-1"}'
    )


@pytest.mark.parametrize(
    "push_type", [PushType.MESSAGE, PushType.MISSED_CALL, PushType.CANCEL, PushType.TERMINATED]
)
def test_alert_body_has_neutral_mutable_alert(apns_app: ProviderApp, push_type: PushType) -> None:
    push = make_push(apns_app, device_token(), push_type=push_type, tracking_id="t-2")
    body = build_body(push)
    decoded = json.loads(body)
    assert body == json.dumps(decoded, separators=(",", ":")).encode()
    assert decoded["jwe"] == PAYLOAD
    assert decoded["type"] == push_type.value
    assert decoded["tid"] == "t-2"
    aps = decoded["aps"]
    assert aps["mutable-content"] == 1
    assert aps["sound"] == "default"
    assert set(aps["alert"]) == {"title", "body"}
    assert apns_push_type(push_type) == "alert"


@pytest.mark.parametrize(("push_type", "limit"), [(PushType.MESSAGE, 4096), (PushType.VOIP, 5120)])
def test_size_limit_per_push_type(apns_app: ProviderApp, push_type: PushType, limit: int) -> None:
    overhead = len(build_body(make_push(apns_app, "ab", push_type=push_type, payload="")))
    fits = make_push(apns_app, "ab", push_type=push_type, payload="x" * (limit - overhead))
    assert len(build_body(fits)) == limit
    too_big = make_push(apns_app, "ab", push_type=push_type, payload="x" * (limit - overhead + 1))
    with pytest.raises(PayloadTooLarge) as raised:
        build_body(too_big)
    assert (raised.value.size, raised.value.limit) == (limit + 1, limit)


def test_voip_headers(apns_app: ProviderApp) -> None:
    push = make_push(apns_app, device_token(), push_type=PushType.VOIP, collapse_id="call-1")
    assert build_headers(push, APNS_ID) == {
        "apns-topic": BUNDLE + ".voip",
        "apns-push-type": "voip",
        "apns-priority": "10",
        "apns-id": APNS_ID,
        "apns-expiration": "0",
        "apns-collapse-id": "call-1",
    }


def test_alert_headers(apns_app: ProviderApp) -> None:
    push = make_push(
        apns_app,
        device_token(),
        push_type=PushType.MISSED_CALL,
        priority=Priority.NORMAL,
        expiration=1_800_000_600,
    )
    assert build_headers(push, APNS_ID) == {
        "apns-topic": BUNDLE,
        "apns-push-type": "alert",
        "apns-priority": "5",
        "apns-id": APNS_ID,
        "apns-expiration": "1800000600",
    }
    # No expiration on a non-call push: APNs' own default applies.
    assert "apns-expiration" not in build_headers(make_push(apns_app, "ab"), APNS_ID)


def _answer(status: int, body: dict[str, object] | None = None, **headers: str):
    content = json.dumps(body).encode() if body is not None else b""
    return interpret_response(status, {k.replace("_", "-"): v for k, v in headers.items()}, content)


def test_delivered_carries_apns_id() -> None:
    result = _answer(200, apns_id=APNS_ID)
    assert result.outcome is Outcome.DELIVERED
    assert result.provider_id == APNS_ID


def test_unregistered_carries_timestamp() -> None:
    result = _answer(410, {"reason": "Unregistered", "timestamp": 1_700_000_000_123})
    assert result.outcome is Outcome.UNREGISTERED
    assert result.unregistered_at == 1_700_000_000_123
    assert result.reason == "Unregistered"


def test_bad_device_token_is_not_unregistered() -> None:
    result = _answer(400, {"reason": "BadDeviceToken"})
    assert result.outcome is Outcome.BAD_DEVICE_TOKEN


@pytest.mark.parametrize(
    ("status", "reason"),
    [
        (400, "DeviceTokenNotForTopic"),
        (400, "TopicDisallowed"),
        (403, "InvalidProviderToken"),
        (403, "ExpiredProviderToken"),
        (404, "BadPath"),
        (405, "MethodNotAllowed"),
        (413, "PayloadTooLarge"),
    ],
)
def test_client_errors_are_rejected_with_reason(status: int, reason: str) -> None:
    result = _answer(status, {"reason": reason})
    assert result.outcome is Outcome.REJECTED
    assert (result.status, result.reason) == (status, reason)


def test_too_many_requests_is_retried_then_throttled() -> None:
    step = _answer(429, {"reason": "TooManyRequests"}, retry_after="2")
    assert isinstance(step, Retry)
    assert step.retry_after == 2.0
    assert step.result.outcome is Outcome.THROTTLED
    assert step.result.retry_after == 2.0
    # Without a Retry-After the caller still gets a hint.
    no_hint = _answer(429, {"reason": "TooManyRequests"})
    assert isinstance(no_hint, Retry)
    assert no_hint.retry_after is None
    assert no_hint.result.retry_after is not None and no_hint.result.retry_after > 0


@pytest.mark.parametrize(
    ("status", "body"), [(500, {"reason": "InternalServerError"}), (503, None), (502, None)]
)
def test_server_errors_are_retried(status: int, body: dict[str, object] | None) -> None:
    step = _answer(status, body)
    assert isinstance(step, Retry)
    assert step.result.outcome is Outcome.PROVIDER_DOWN
    assert step.result.reason == (body["reason"] if body else f"HTTP {status}")


def _claims(token: str, public_pem: bytes) -> tuple[dict[str, object], dict[str, object]]:
    key = load_pem_public_key(public_pem)
    return jwt.get_unverified_header(token), jwt.decode(
        token, key, algorithms=["ES256"], options={"verify_iat": False}
    )


def test_token_is_es256_with_kid_and_team(
    apns_app: ProviderApp, apns_key: tuple[Path, bytes]
) -> None:
    clock = FakeClock()
    token = ProviderTokens(3000, clock).current(apns_app)
    header, claims = _claims(token, apns_key[1])
    assert header == {"alg": "ES256", "kid": KEY_ID}
    assert claims == {"iss": TEAM_ID, "iat": int(clock.now)}


def test_token_is_shared_and_renewed_on_schedule(apns_app: ProviderApp) -> None:
    clock = FakeClock()
    tokens = ProviderTokens(3000, clock)
    first = tokens.current(apns_app)
    other_app = _fields(apns_app, topic="x.y")
    clock.advance(2999)
    assert tokens.current(apns_app) == first
    assert tokens.current(other_app) == first  # one token per (team, key)
    clock.advance(1)
    assert tokens.current(apns_app) != first


def test_token_refresh_never_below_twenty_minutes(apns_app: ProviderApp) -> None:
    clock = FakeClock()
    tokens = ProviderTokens(60, clock)
    first = tokens.current(apns_app)
    clock.advance(1199)
    assert tokens.current(apns_app) == first
    clock.advance(1)
    assert tokens.current(apns_app) != first


def test_expired_token_is_renewed_once(apns_app: ProviderApp) -> None:
    clock = FakeClock()
    tokens = ProviderTokens(3000, clock)
    stale = tokens.current(apns_app)
    assert tokens.renew_expired(apns_app, stale)
    fresh = tokens.current(apns_app)
    assert fresh != stale
    # A second request that failed with the old token reuses the renewed one.
    assert tokens.renew_expired(apns_app, stale)
    assert tokens.current(apns_app) == fresh
    # The fresh token "expired" too: the clock is off; don't churn tokens.
    clock.advance(60)
    assert not tokens.renew_expired(apns_app, fresh)
    assert tokens.current(apns_app) == fresh
    clock.advance(1200)
    assert tokens.renew_expired(apns_app, fresh)
    assert tokens.current(apns_app) != fresh


def test_unusable_key_raises(apns_app: ProviderApp, tmp_path: Path) -> None:
    tokens = ProviderTokens(3000, FakeClock())
    with pytest.raises(OSError):
        tokens.current(_fields(apns_app, credentials_file=str(tmp_path / "missing.p8")))
    garbage = tmp_path / "garbage.p8"
    garbage.write_text("not a key")
    with pytest.raises(ValueError):
        tokens.current(_fields(apns_app, credentials_file=str(garbage), key_id="OTHERKEY12"))


def _fields(app: ProviderApp, **changes: str) -> ProviderApp:
    return ProviderApp(**{**{f: getattr(app, f) for f in app.__slots__}, **changes})
