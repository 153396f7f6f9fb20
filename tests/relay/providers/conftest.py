"""Fixtures for the provider plug-ins: throw-away keys, fake clocks, simulators on loopback."""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from ucpush.config import RelaySettings
from ucpush.relay.providers.apns import ApnsProvider
from ucpush.relay.providers.base import Priority, ProviderPush, PushType
from ucpush.relay.providers.fcm import FcmProvider
from ucpush.sim.apns import ApnsSimulator, DeviceRegistry
from ucpush.sim.credentials import make_apns_key, make_service_account
from ucpush.sim.fcm import FcmSimulator
from ucpush.store.repository import ProviderApp

TEAM_ID = "TEAM123456"
KEY_ID = "KEY1234567"
BUNDLE = "org.example.softphone"
FCM_PROJECT = "example-softphone"
# Stands in for the relay's compact JWE; the providers never look inside.
PAYLOAD = "eyJhbGciOiJkaXIiLCJlbmMiOiJBMjU2R0NNIn0..c2VjcmV0LWl2.Y2lwaGVydGV4dA.dGFn"


class FakeClock:
    """A settable wall clock (epoch seconds) shared by a provider and a simulator."""

    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def fast_settings(**overrides: Any) -> RelaySettings:
    """Settings with short retry delays so fault tests run quickly."""
    values: dict[str, Any] = {
        "retry_base_delay": 0.01,
        "retry_max_delay": 0.05,
        "request_timeout": 2.0,
        **overrides,
    }
    return RelaySettings(**values)


def device_token() -> str:
    return secrets.token_hex(32)


@pytest.fixture
def apns_key(tmp_path: Path) -> tuple[Path, bytes]:
    """(.p8 file written for this test, public PEM for the simulator)."""
    private_pem, public_pem = make_apns_key()
    p8 = tmp_path / "AuthKey_KEY1234567.p8"
    p8.write_bytes(private_pem)
    return p8, public_pem


@pytest.fixture
def apns_app(apns_key: tuple[Path, bytes]) -> ProviderApp:
    return ProviderApp(
        tenant_id="tenant-1",
        service="APNS",
        topic=BUNDLE,
        credentials_file=str(apns_key[0]),
        environment="production",
        team_id=TEAM_ID,
        key_id=KEY_ID,
    )


def make_push(app: ProviderApp, target: str, **fields: Any) -> ProviderPush:
    values: dict[str, Any] = {
        "push_type": PushType.MESSAGE,
        "priority": Priority.HIGH,
        "payload": PAYLOAD,
        "tracking_id": secrets.token_hex(8),
        **fields,
    }
    return ProviderPush(app=app, target=target, **values)


@dataclass
class ApnsWorld:
    production: ApnsSimulator
    sandbox: ApnsSimulator
    clock: FakeClock
    app: ProviderApp

    def settings(self, **overrides: Any) -> RelaySettings:
        return fast_settings(
            apns_production_url=self.production.url,
            apns_sandbox_url=self.sandbox.url,
            **overrides,
        )

    def device(self, environment: str = "production", topic: str = BUNDLE) -> str:
        token = device_token()
        sim = self.production if environment == "production" else self.sandbox
        sim.register_device(token, topic)
        return token


@pytest.fixture
async def apns_world(
    apns_key: tuple[Path, bytes], apns_app: ProviderApp
) -> AsyncIterator[ApnsWorld]:
    """Production and sandbox APNs simulators (h2c) sharing a device registry and a clock."""
    clock = FakeClock()
    registry = DeviceRegistry()
    production = ApnsSimulator("production", registry, clock=clock)
    sandbox = ApnsSimulator("sandbox", registry, clock=clock)
    async with production, sandbox:
        for sim in (production, sandbox):
            sim.add_signing_key(TEAM_ID, KEY_ID, apns_key[1])
        yield ApnsWorld(production, sandbox, clock, apns_app)


@pytest.fixture
async def apns_provider_factory(
    apns_world: ApnsWorld,
) -> AsyncIterator[Callable[..., ApnsProvider]]:
    """Builds providers on the world's clock and closes them after the test."""
    providers: list[ApnsProvider] = []

    def build(clock: Callable[[], float] | None = None, **overrides: Any) -> ApnsProvider:
        provider = ApnsProvider(apns_world.settings(**overrides), clock=clock or apns_world.clock)
        providers.append(provider)
        return provider

    yield build
    for provider in providers:
        await provider.aclose()


@pytest.fixture
def apns_provider(apns_provider_factory: Callable[..., ApnsProvider]) -> ApnsProvider:
    return apns_provider_factory()


@dataclass
class FcmWorld:
    sim: FcmSimulator
    # The simulator's clock stays near real time: google-auth signs its grant with the real
    # clock and the token endpoint checks it.
    sim_clock: FakeClock
    # The provider's clock (TTLs, quota back-off), free to move.
    clock: FakeClock
    app: ProviderApp

    def settings(self, **overrides: Any) -> RelaySettings:
        return fast_settings(fcm_url=self.sim.url, **overrides)

    def device(self, project: str = FCM_PROJECT) -> str:
        token = "fcm-" + secrets.token_urlsafe(48)
        self.sim.register_device(token, project)
        return token


def write_service_account(sim: FcmSimulator, path: Path, project: str = FCM_PROJECT) -> None:
    """A fresh service account trusted by ``sim``, written where an operator would put it."""
    info, public_pem = make_service_account(project, sim.token_uri)
    path.write_text(json.dumps(info))
    sim.add_service_account(info["client_email"], project, public_pem, info["private_key_id"])


@pytest.fixture
async def fcm_world(tmp_path: Path) -> AsyncIterator[FcmWorld]:
    sim_clock = FakeClock(time.time())
    async with FcmSimulator(clock=sim_clock) as sim:
        sa_file = tmp_path / "service-account.json"
        write_service_account(sim, sa_file)
        app = ProviderApp(
            tenant_id="tenant-1", service="FCM", topic=FCM_PROJECT, credentials_file=str(sa_file)
        )
        yield FcmWorld(sim, sim_clock, FakeClock(), app)


@pytest.fixture
async def fcm_provider_factory(fcm_world: FcmWorld) -> AsyncIterator[Callable[..., FcmProvider]]:
    providers: list[FcmProvider] = []

    def build(**overrides: Any) -> FcmProvider:
        provider = FcmProvider(fcm_world.settings(**overrides), clock=fcm_world.clock)
        providers.append(provider)
        return provider

    yield build
    for provider in providers:
        await provider.aclose()


@pytest.fixture
def fcm_provider(fcm_provider_factory: Callable[..., FcmProvider]) -> FcmProvider:
    return fcm_provider_factory()
