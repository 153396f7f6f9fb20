"""Small helpers shared by the provider plug-ins."""

from __future__ import annotations

import json
import time
from typing import Any

import structlog

from ucpush.relay.providers.base import Outcome, ProviderPush, ProviderResult

_QUIET_OUTCOMES = {Outcome.DELIVERED, Outcome.UNREGISTERED, Outcome.BAD_DEVICE_TOKEN}


def compact_json(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def json_object(content: bytes) -> dict[str, Any]:
    """Best-effort JSON object from an error body; providers and proxies send odd things."""
    try:
        value = json.loads(content)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def token_prefix(token: str) -> str:
    """Enough of a device token to correlate logs without making it usable."""
    return token[:8]


def log_result(
    log: structlog.typing.FilteringBoundLogger,
    push: ProviderPush,
    result: ProviderResult,
    started: float,
) -> None:
    """One line per push; never the payload, never the whole device token."""
    level = log.info if result.outcome in _QUIET_OUTCOMES else log.warning
    level(
        "push_result",
        tracking_id=push.tracking_id,
        tenant_id=push.app.tenant_id,
        service=push.app.service,
        push_type=push.push_type.value,
        token=token_prefix(push.target),
        outcome=result.outcome.value,
        status=result.status,
        reason=result.reason,
        attempts=result.attempts,
        retry_after=result.retry_after,
        latency_ms=round((time.monotonic() - started) * 1000, 1),
    )
