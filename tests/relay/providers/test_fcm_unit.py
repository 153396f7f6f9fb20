"""FCM pure parts: request body, TTL, size limit, error parsing and mapping, token refresh."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from typing import Any

import pytest

from ucpush.relay.providers.base import Outcome, PayloadTooLarge, Priority, PushType
from ucpush.relay.providers.fcm import (
    _AccessToken,
    build_body,
    error_code,
    interpret_response,
)
from ucpush.relay.providers.retry import Retry
from ucpush.store.repository import ProviderApp

from .conftest import PAYLOAD, make_push

NOW = 1_800_000_000.0
APP = ProviderApp(
    tenant_id="tenant-1", service="FCM", topic="example-softphone", credentials_file="sa.json"
)
FCM_ERROR = "type.googleapis.com/google.firebase.fcm.v1.FcmError"


def test_voip_body_is_compact_high_priority_with_short_ttl() -> None:
    push = make_push(APP, "reg-token", push_type=PushType.VOIP, tracking_id="t-1")
    assert build_body(push, NOW) == (
        b'{"message":{"token":"reg-token","data":{"jwe":"'
        + PAYLOAD.encode()
        + b'","type":"voip","tid":"t-1"},"android":{"priority":"high","ttl":"30s"}}}'
    )


def test_message_body_without_expiration_leaves_ttl_to_fcm() -> None:
    push = make_push(APP, "reg-token", priority=Priority.NORMAL, collapse_id="chat-1")
    android = json.loads(build_body(push, NOW))["message"]["android"]
    assert android == {"priority": "normal", "collapse_key": "chat-1"}


@pytest.mark.parametrize(
    ("expiration", "ttl"),
    [(NOW + 90, "90s"), (NOW - 10, "0s"), (NOW + 10**8, "2419200s"), (NOW, "0s")],
)
def test_ttl_follows_expiration_clamped(expiration: float, ttl: str) -> None:
    push = make_push(APP, "reg-token", push_type=PushType.VOIP, expiration=int(expiration))
    assert json.loads(build_body(push, NOW))["message"]["android"]["ttl"] == ttl


def test_data_values_are_strings() -> None:
    push = make_push(APP, "reg-token", push_type=PushType.MISSED_CALL)
    data = json.loads(build_body(push, NOW))["message"]["data"]
    assert data == {"jwe": PAYLOAD, "type": "missed-call", "tid": push.tracking_id}


def test_size_limit_is_on_the_whole_message() -> None:
    empty = make_push(APP, "reg-token", tracking_id="t", payload="")
    overhead = len(json.dumps(json.loads(build_body(empty, NOW))["message"], separators=(",", ":")))
    fits = make_push(APP, "reg-token", tracking_id="t", payload="x" * (4096 - overhead))
    assert len(build_body(fits, NOW)) == 4096 + len('{"message":}')
    too_big = make_push(APP, "reg-token", tracking_id="t", payload="x" * (4097 - overhead))
    with pytest.raises(PayloadTooLarge) as raised:
        build_body(too_big, NOW)
    assert (raised.value.size, raised.value.limit) == (4097, 4096)


def _error(status: str, fcm_code: str | None = None, **extra: Any) -> dict[str, Any]:
    details = [{"@type": FCM_ERROR, "errorCode": fcm_code}] if fcm_code else []
    return {"code": 0, "message": "m", "status": status, "details": details, **extra}


def test_error_code_prefers_fcm_detail() -> None:
    assert error_code(_error("NOT_FOUND", "UNREGISTERED")) == "UNREGISTERED"
    assert error_code(_error("UNAVAILABLE")) == "UNAVAILABLE"
    assert error_code({"details": "odd"}) is None


def _answer(status: int, error: dict[str, Any] | None = None, **headers: str):
    content = json.dumps({"error": error}).encode() if error is not None else b"<html>"
    return interpret_response(status, {k.replace("_", "-"): v for k, v in headers.items()}, content)


def test_delivered_carries_message_name() -> None:
    content = json.dumps({"name": "projects/p/messages/0:1"}).encode()
    result = interpret_response(200, {}, content)
    assert (result.outcome, result.provider_id) == (Outcome.DELIVERED, "projects/p/messages/0:1")


def test_unregistered() -> None:
    result = _answer(404, _error("NOT_FOUND", "UNREGISTERED"))
    assert (result.outcome, result.reason) == (Outcome.UNREGISTERED, "UNREGISTERED")


def test_invalid_token_is_bad_device_token() -> None:
    by_field = _error(
        "INVALID_ARGUMENT",
        "INVALID_ARGUMENT",
        details=[
            {"@type": FCM_ERROR, "errorCode": "INVALID_ARGUMENT"},
            {
                "@type": "type.googleapis.com/google.rpc.BadRequest",
                "fieldViolations": [{"field": "message.token", "description": "Invalid"}],
            },
        ],
    )
    assert _answer(400, by_field).outcome is Outcome.BAD_DEVICE_TOKEN
    by_message = _error(
        "INVALID_ARGUMENT",
        "INVALID_ARGUMENT",
        message="The registration token is not a valid FCM registration token",
    )
    assert _answer(400, by_message).outcome is Outcome.BAD_DEVICE_TOKEN


def test_other_invalid_argument_is_rejected() -> None:
    error = _error("INVALID_ARGUMENT", "INVALID_ARGUMENT", message="Invalid value at 'ttl'")
    result = _answer(400, error)
    assert (result.outcome, result.reason) == (Outcome.REJECTED, "INVALID_ARGUMENT")


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (403, _error("PERMISSION_DENIED", "SENDER_ID_MISMATCH")),
        (401, _error("UNAUTHENTICATED", "THIRD_PARTY_AUTH_ERROR")),
        (403, _error("PERMISSION_DENIED")),
        (401, _error("UNAUTHENTICATED")),
    ],
)
def test_auth_and_permission_errors_are_rejected(status: int, error: dict[str, Any]) -> None:
    # The provider renews its access token once on a plain UNAUTHENTICATED before giving up.
    result = _answer(status, error)
    assert result.outcome is Outcome.REJECTED
    assert result.reason == error_code(error)


def test_quota_exceeded_is_throttled_for_at_least_a_minute() -> None:
    result = _answer(429, _error("RESOURCE_EXHAUSTED", "QUOTA_EXCEEDED"), retry_after="5")
    assert (result.outcome, result.reason, result.retry_after) == (
        Outcome.THROTTLED,
        "QUOTA_EXCEEDED",
        60.0,
    )
    longer = _answer(429, _error("RESOURCE_EXHAUSTED", "QUOTA_EXCEEDED"), retry_after="300")
    assert longer.retry_after == 300.0


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (503, _error("UNAVAILABLE", "UNAVAILABLE")),
        (500, _error("INTERNAL", "INTERNAL")),
        (502, None),
    ],
)
def test_server_errors_are_retried(status: int, error: dict[str, Any] | None) -> None:
    step = _answer(status, error, retry_after="2")
    assert isinstance(step, Retry)
    assert step.retry_after == 2.0
    assert step.result.outcome is Outcome.PROVIDER_DOWN


class FakeCredentials:
    """Stands in for google-auth credentials: counts (slow, threaded) refreshes."""

    def __init__(self) -> None:
        self.token: str | None = None
        self.expired = False
        self.refreshes = 0
        self._lock = threading.Lock()

    def refresh(self, request: object) -> None:
        time.sleep(0.05)
        with self._lock:
            self.refreshes += 1
            self.token = f"access-{self.refreshes}"
            self.expired = False


async def test_access_token_refreshes_once_for_concurrent_callers() -> None:
    credentials = FakeCredentials()
    access = _AccessToken(credentials)  # type: ignore[arg-type]
    tokens = await asyncio.gather(*(access.get(None) for _ in range(20)))  # type: ignore[arg-type]
    assert set(tokens) == {"access-1"}
    assert credentials.refreshes == 1
    credentials.expired = True  # google-auth says so 3 min 45 s before the real expiry
    assert await access.get(None) == "access-2"  # type: ignore[arg-type]


async def test_access_token_renewed_once_after_401() -> None:
    credentials = FakeCredentials()
    access = _AccessToken(credentials)  # type: ignore[arg-type]
    stale = await access.get(None)  # type: ignore[arg-type]
    await asyncio.gather(*(access.renew(None, stale) for _ in range(5)))  # type: ignore[arg-type]
    assert credentials.refreshes == 2
    assert await access.get(None) == "access-2"  # type: ignore[arg-type]
