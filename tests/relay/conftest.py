"""A whole relay over real TLS, in front of the APNs (production + sandbox) and FCM simulators."""

from __future__ import annotations

import json
import ssl
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pytest
import trustme

from tests.support.pg import pg_database
from ucpush.config import RelaySettings, Settings
from ucpush.relay.client import RelayClient
from ucpush.relay.server import RunningRelay, run_relay
from ucpush.sim.apns import ApnsSimulator, DeviceRegistry
from ucpush.sim.credentials import make_apns_key, make_service_account
from ucpush.sim.fcm import FcmSimulator
from ucpush.store import Store, open_store
from ucpush.store.repository import ProviderApp

TEAM_ID = "TEAM123456"
KEY_ID = "KEY1234567"
BUNDLE = "org.example.softphone"
FCM_PROJECT = "example-softphone"
DEVICE_KEY = bytes(range(32))


@dataclass
class Stack:
    relay: RunningRelay
    store: Store
    apns: ApnsSimulator
    apns_sandbox: ApnsSimulator
    fcm: FcmSimulator
    ca: trustme.CA
    ca_file: Path
    tenant_id: str

    def client_ssl(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context()
        self.ca.configure_trust(ctx)
        return ctx

    async def voucher(self, tenant: str = "acme", ttl: timedelta = timedelta(hours=1)) -> str:
        return (await self.relay.service.onboarding.create_voucher(tenant, ttl)).code

    async def enrolled_client(self, **kwargs: object) -> RelayClient:
        enrollment = await RelayClient.enroll(
            self.relay.url, await self.voucher(), "cluster-1", "lab", verify=self.client_ssl()
        )
        return RelayClient(
            self.relay.url, enrollment.refresh_token, verify=self.client_ssl(), **kwargs
        )


def _server_ssl(ca: trustme.CA) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(ctx)
    return ctx


@pytest.fixture
def relay_store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """SQLite by default; ``indirect`` parametrisation with "postgres" runs on PostgreSQL."""
    if getattr(request, "param", "sqlite") == "postgres":
        with pg_database() as url:
            yield url
    else:
        yield f"sqlite+aiosqlite:///{tmp_path / 'relay.db'}"


@pytest.fixture
async def stack(tmp_path: Path, relay_store_url: str) -> AsyncIterator[Stack]:
    ca = trustme.CA()
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    relay_cert = ca.issue_cert("127.0.0.1", "localhost")
    cert_file, key_file = tmp_path / "relay.pem", tmp_path / "relay.key"
    relay_cert.cert_chain_pems[0].write_to_path(str(cert_file))
    relay_cert.private_key_pem.write_to_path(str(key_file))

    registry = DeviceRegistry()
    apns = ApnsSimulator("production", registry, ssl_context=_server_ssl(ca))
    apns_sandbox = ApnsSimulator("sandbox", registry, ssl_context=_server_ssl(ca))
    fcm = FcmSimulator(ssl_context=_server_ssl(ca))
    await apns.start()
    await apns_sandbox.start()
    await fcm.start()

    p8, public = make_apns_key()
    p8_file = tmp_path / "AuthKey.p8"
    p8_file.write_bytes(p8)
    for sim in (apns, apns_sandbox):
        sim.add_signing_key(TEAM_ID, KEY_ID, public)
    sa, sa_public = make_service_account(FCM_PROJECT, fcm.token_uri)
    sa_file = tmp_path / "service-account.json"
    sa_file.write_text(json.dumps(sa))
    fcm.add_service_account(sa["client_email"], FCM_PROJECT, sa_public, sa["private_key_id"])

    settings = Settings(
        data_dir=tmp_path,
        relay=RelaySettings(
            port=0,
            tls_cert=str(cert_file),
            tls_key=str(key_file),
            apns_production_url=apns.url,
            apns_sandbox_url=apns_sandbox.url,
            fcm_url=fcm.url,
            provider_ca_file=str(ca_file),
            retry_base_delay=0.01,
            retry_max_delay=0.05,
        ),
    )
    store = await open_store(relay_store_url)
    async with run_relay(settings, store) as relay:
        tenant = await relay.service.onboarding.tenant("acme", create=True)
        for service, env in (("APNS", "production"), ("APNS:dev", "sandbox")):
            await store.relay.put_app(
                ProviderApp(
                    tenant_id=tenant.id,
                    service=service,
                    topic=BUNDLE,
                    credentials_file=str(p8_file),
                    environment=env,
                    team_id=TEAM_ID,
                    key_id=KEY_ID,
                )
            )
        await store.relay.put_app(
            ProviderApp(
                tenant_id=tenant.id,
                service="FCM",
                topic=FCM_PROJECT,
                credentials_file=str(sa_file),
            )
        )
        yield Stack(relay, store, apns, apns_sandbox, fcm, ca, ca_file, tenant.id)
    await store.close()
    for sim in (apns, apns_sandbox, fcm):
        await sim.stop()
