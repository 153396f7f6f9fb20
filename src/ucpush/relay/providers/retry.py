"""Retry policy shared by the providers: exponential backoff with full jitter, Retry-After.

A provider describes each attempt as either a final ``ProviderResult`` or a ``Retry``; the loop
here decides whether and how long to wait. It never repeats an attempt the provider answered
with 2xx, because providers return those as final results.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from email.utils import parsedate_to_datetime

from ucpush.config import RelaySettings
from ucpush.relay.providers.base import ProviderResult


@dataclass(frozen=True, slots=True)
class Retry:
    """An attempt that may succeed if repeated (429, 5xx, connection trouble)."""

    result: ProviderResult  # returned as is when no attempt is left
    retry_after: float | None = None  # the provider's Retry-After, seconds
    # Credentials were just renewed (APNs ExpiredProviderToken, FCM 401): repeat at once, in
    # addition to the normal attempts. Providers make sure this happens once per push.
    renewed: bool = False


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    attempts: int
    base_delay: float
    max_delay: float
    wait_limit: float

    @classmethod
    def from_settings(cls, settings: RelaySettings) -> RetryPolicy:
        return cls(
            attempts=settings.retry_attempts,
            base_delay=settings.retry_base_delay,
            max_delay=settings.retry_max_delay,
            wait_limit=settings.retry_wait_limit,
        )

    def backoff(self, attempt: int) -> float:
        """Full jitter: uniform in [0, min(cap, base * 2^(attempt-1))] (AWS architecture blog)."""
        return random.uniform(0, min(self.max_delay, self.base_delay * 2 ** (attempt - 1)))


async def run_with_retries(
    attempt: Callable[[], Awaitable[ProviderResult | Retry]],
    policy: RetryPolicy,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> ProviderResult:
    """Call ``attempt`` until it gives a final result or the policy is exhausted.

    ``ProviderResult.attempts`` of the returned result counts every request made.
    """
    made = 0
    budget = policy.attempts
    while True:
        made += 1
        step = await attempt()
        if isinstance(step, ProviderResult):
            return replace(step, attempts=made)
        if step.renewed:
            budget += 1
            continue
        if step.retry_after is not None and step.retry_after > policy.wait_limit:
            # Too long to hold the caller (a call push is worthless by then): hand it back.
            return replace(step.result, retry_after=step.retry_after, attempts=made)
        if made >= budget:
            return replace(step.result, attempts=made)
        delay = step.retry_after if step.retry_after is not None else policy.backoff(made)
        await sleep(delay)


def parse_retry_after(value: str | None, now: Callable[[], float] = time.time) -> float | None:
    """Retry-After as seconds: either delta-seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, when.timestamp() - now())
