"""The relay's logic, independent of HTTP: who may push, to which app, through which provider."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Generic, TypeVar

from prometheus_client import Counter, Histogram

from ucpush.config import RelaySettings
from ucpush.logging import get_logger
from ucpush.relay.identity import AccessClaims, AuthError, Identity
from ucpush.relay.onboarding import Onboarding
from ucpush.relay.providers.base import Outcome, Provider, ProviderPush, ProviderResult
from ucpush.store.repository import NotFound, ProviderApp, RelayRepository

log = get_logger("ucpush.relay")

SERVICES = ("APNS", "APNS:beta", "APNS:dev", "APNS:test", "APNS:load", "FCM", "FCM:dev")
# Short caches: a push must not cost a database round trip, yet a disabled account or a
# changed app takes effect within seconds on every relay process.
_CACHE_SECONDS = 5.0

PUSHES = Counter(
    "ucpush_relay_pushes",
    "Pushes handled by the relay, by subscriber service, push type and outcome",
    ["service", "push_type", "outcome"],
)
PUSH_SECONDS = Histogram(
    "ucpush_relay_push_seconds",
    "Time from accepting a push to the provider's final answer",
    ["service"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)


class ServiceNotConfigured(Exception):
    pass


def provider_name(service: str) -> str:
    return "apns" if service.startswith("APNS") else "fcm"


T = TypeVar("T")


@dataclass(slots=True)
class _Cached(Generic[T]):
    value: T
    until: float


class RelayService:
    def __init__(
        self,
        settings: RelaySettings,
        repo: RelayRepository,
        identity: Identity,
        providers: Mapping[str, Provider],
    ) -> None:
        self.settings = settings
        self.repo = repo
        self.identity = identity
        self.onboarding = Onboarding(repo, identity)
        self.providers = providers
        self._apps: dict[tuple[str, str], _Cached[ProviderApp | None]] = {}
        self._accounts: dict[str, _Cached[bool]] = {}

    async def authenticate(self, token: str) -> AccessClaims:
        claims = await self.identity.verify_access_token(token)
        now = time.monotonic()
        cached = self._accounts.get(claims.account_id)
        if cached is None or cached.until < now:
            try:
                account = await self.repo.get_machine_account(claims.account_id)
                active = account.disabled_at is None
            except NotFound:
                active = False
            cached = self._accounts[claims.account_id] = _Cached(active, now + _CACHE_SECONDS)
        if not cached.value:
            raise AuthError("invalid_token", "machine account is disabled")
        return claims

    def forget_account(self, account_id: str) -> None:
        self._accounts.pop(account_id, None)
        self.identity.forget_account(account_id)

    async def app_for(self, tenant_id: str, service: str) -> ProviderApp:
        key = (tenant_id, service)
        now = time.monotonic()
        cached = self._apps.get(key)
        if cached is None or cached.until < now:
            try:
                app: ProviderApp | None = await self.repo.get_app(tenant_id, service)
            except NotFound:
                app = None
            cached = self._apps[key] = _Cached(app, now + _CACHE_SECONDS)
        if cached.value is None:
            raise ServiceNotConfigured(f"no app is configured for subscriber service {service}")
        return cached.value

    async def push(self, service: str, push: ProviderPush) -> ProviderResult:
        """Send through the provider; ``PayloadTooLarge`` propagates to the caller."""
        provider = self.providers[provider_name(service)]
        started = time.perf_counter()
        result = await provider.send(push)
        PUSH_SECONDS.labels(service).observe(time.perf_counter() - started)
        PUSHES.labels(service, push.push_type.value, result.outcome.value).inc()
        if result.outcome is not Outcome.DELIVERED:
            # The payload is never logged; the token only by prefix.
            log.info(
                "push_not_delivered",
                service=service,
                tracking_id=push.tracking_id,
                target=push.target[:8],
                outcome=result.outcome.value,
                status=result.status,
                reason=result.reason,
            )
        return result
