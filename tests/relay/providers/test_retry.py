"""The shared retry loop, Retry-After parsing and transport-error reasons."""

from __future__ import annotations

from datetime import UTC, datetime
from email.utils import format_datetime

import pytest

from ucpush.relay.providers.base import Outcome, ProviderResult
from ucpush.relay.providers.h2client import (
    H2ConnectError,
    H2ConnectionLost,
    H2NotProcessed,
    H2QueueTimeout,
    H2StreamReset,
    H2Timeout,
)
from ucpush.relay.providers.retry import Retry, RetryPolicy, parse_retry_after, run_with_retries

POLICY = RetryPolicy(attempts=3, base_delay=0.25, max_delay=2.0, wait_limit=3.0)
DOWN = ProviderResult(Outcome.PROVIDER_DOWN, status=503)
DELIVERED = ProviderResult(Outcome.DELIVERED, status=200)


class Script:
    """Plays back attempt outcomes and records the sleeps asked for."""

    def __init__(self, *steps: ProviderResult | Retry) -> None:
        self.steps = list(steps)
        self.calls = 0
        self.sleeps: list[float] = []

    async def attempt(self) -> ProviderResult | Retry:
        self.calls += 1
        return self.steps.pop(0)

    async def sleep(self, delay: float) -> None:
        self.sleeps.append(delay)


async def test_final_result_is_returned_at_once() -> None:
    script = Script(DELIVERED)
    result = await run_with_retries(script.attempt, POLICY, script.sleep)
    assert result == DELIVERED
    assert result.attempts == 1
    assert script.sleeps == []


async def test_retries_until_success_with_jittered_backoff() -> None:
    script = Script(Retry(DOWN), Retry(DOWN), DELIVERED)
    result = await run_with_retries(script.attempt, POLICY, script.sleep)
    assert result.outcome is Outcome.DELIVERED
    assert result.attempts == 3
    assert len(script.sleeps) == 2
    assert 0 <= script.sleeps[0] <= 0.25
    assert 0 <= script.sleeps[1] <= 0.5


async def test_exhausted_attempts_return_last_failure() -> None:
    script = Script(Retry(DOWN), Retry(DOWN), Retry(DOWN), DELIVERED)
    result = await run_with_retries(script.attempt, POLICY, script.sleep)
    assert result.outcome is Outcome.PROVIDER_DOWN
    assert result.attempts == 3
    assert script.calls == 3


async def test_retry_after_within_limit_is_waited_for() -> None:
    script = Script(Retry(DOWN, retry_after=2.0), DELIVERED)
    result = await run_with_retries(script.attempt, POLICY, script.sleep)
    assert result.attempts == 2
    assert script.sleeps == [2.0]


async def test_retry_after_beyond_limit_is_handed_back() -> None:
    script = Script(Retry(DOWN, retry_after=30.0), DELIVERED)
    result = await run_with_retries(script.attempt, POLICY, script.sleep)
    assert result.outcome is Outcome.PROVIDER_DOWN
    assert result.retry_after == 30.0
    assert result.attempts == 1
    assert script.sleeps == []


async def test_credential_renewal_is_an_extra_immediate_attempt() -> None:
    rejected = ProviderResult(Outcome.REJECTED, status=403, reason="ExpiredProviderToken")
    script = Script(Retry(rejected, renewed=True), Retry(DOWN), Retry(DOWN), DELIVERED)
    result = await run_with_retries(script.attempt, POLICY, script.sleep)
    assert result.outcome is Outcome.DELIVERED
    assert result.attempts == 4
    assert len(script.sleeps) == 2


def test_backoff_is_capped() -> None:
    policy = RetryPolicy(attempts=10, base_delay=1.0, max_delay=2.0, wait_limit=3.0)
    assert all(0 <= policy.backoff(attempt) <= 2.0 for attempt in range(1, 10) for _ in range(50))


@pytest.mark.parametrize(
    ("value", "expected"),
    [(None, None), ("", None), ("7", 7.0), (" 120 ", 120.0), ("soon", None), ("-1", None)],
)
def test_parse_retry_after_seconds(value: str | None, expected: float | None) -> None:
    assert parse_retry_after(value) == expected


def test_parse_retry_after_http_date() -> None:
    now = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC).timestamp()
    later = format_datetime(datetime(2026, 1, 1, 12, 0, 30, tzinfo=UTC), usegmt=True)
    assert parse_retry_after(later, now=lambda: now) == 30.0
    assert parse_retry_after(later, now=lambda: now + 60) == 0.0


def test_transport_reasons() -> None:
    """The reasons providers report for failed requests, and which of them are safe to resend."""
    assert H2ConnectError("refused").reason == "connect_error"
    assert H2QueueTimeout("busy").reason == "pool_timeout"
    assert H2Timeout("slow").reason == "timeout"
    assert H2NotProcessed("refused").reason == "refused_stream"
    assert H2StreamReset("cancelled").reason == "stream_reset"
    assert H2NotProcessed("above", reason="goaway").reason == "goaway"
    assert H2ConnectionLost("Server disconnected").reason == "connection_lost"
    never_seen = (H2ConnectError, H2QueueTimeout, H2NotProcessed)
    assert all(error("x").not_processed for error in never_seen)
    maybe_seen = (H2Timeout, H2StreamReset, H2ConnectionLost)
    assert not any(error("x").not_processed for error in maybe_seen)
