"""Fixtures for the simulator tests: TLS material, keys, running simulators, clients."""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import google.auth.transport
import httpx
import jwt
import pytest
import trustme
from google.oauth2 import service_account

from ucpush.sim.apns import ApnsSimulator, DeviceRegistry
from ucpush.sim.credentials import FCM_SCOPE, make_apns_key, make_service_account
from ucpush.sim.fcm import FcmSimulator

TEAM_ID = "TEAM123456"
KEY_ID = "KEY1234567"
BUNDLE = "com.example.phone"
TOKEN = "a1" * 32
SANDBOX_TOKEN = "b2" * 32
PROJECT = "ucpush-test"
FCM_TOKEN = "fcm-token-1:APA91bH" + "x" * 140


class FakeClock:
    """Injectable clock so tests can jump past APNs' 20-minute and 1-hour limits."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture(scope="session")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def server_ssl(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(context)
    return context


@pytest.fixture
def client_ssl(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return context


@pytest.fixture(scope="session")
def apns_key() -> tuple[bytes, bytes]:
    return make_apns_key()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def make_jwt(apns_key: tuple[bytes, bytes], clock: FakeClock) -> Callable[..., str]:
    def make(
        team_id: str = TEAM_ID,
        key_id: str = KEY_ID,
        iat: float | None = None,
        key: bytes | None = None,
    ) -> str:
        claims = {"iss": team_id, "iat": int(clock() if iat is None else iat)}
        return jwt.encode(claims, key or apns_key[0], algorithm="ES256", headers={"kid": key_id})

    return make


@dataclass
class ApnsEnv:
    sim: ApnsSimulator
    sandbox: ApnsSimulator
    client: httpx.AsyncClient
    clock: FakeClock
    make_jwt: Callable[..., str]
    verify: ssl.SSLContext | bool
    # ES256 signatures differ on every signing: reuse one token, as APNs requires per connection.
    provider_token: str = ""

    def new_client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(http1=False, http2=True, verify=self.verify)

    def headers(self, **overrides: str | None) -> dict[str, str]:
        headers: dict[str, str | None] = {
            "authorization": f"bearer {self.provider_token}",
            "apns-topic": BUNDLE,
            "apns-push-type": "alert",
            "apns-priority": "10",
        }
        headers.update(overrides)
        return {k: v for k, v in headers.items() if v is not None}

    async def push(
        self,
        token: str = TOKEN,
        payload: bytes = b'{"aps":{"alert":"hi"}}',
        client: httpx.AsyncClient | None = None,
        **headers: str | None,
    ) -> httpx.Response:
        return await (client or self.client).post(
            f"{self.sim.url}/3/device/{token}", content=payload, headers=self.headers(**headers)
        )


@pytest.fixture(params=["h2c", "tls"])
async def apns(
    request: pytest.FixtureRequest,
    apns_key: tuple[bytes, bytes],
    clock: FakeClock,
    make_jwt: Callable[..., str],
    server_ssl: ssl.SSLContext,
    client_ssl: ssl.SSLContext,
) -> AsyncIterator[ApnsEnv]:
    tls = request.param == "tls"
    registry = DeviceRegistry()
    sim = ApnsSimulator(
        "production", registry, ssl_context=server_ssl if tls else None, clock=clock
    )
    sandbox = ApnsSimulator("sandbox", registry, clock=clock)
    for s in (sim, sandbox):
        s.add_signing_key(TEAM_ID, KEY_ID, apns_key[1])
    sim.register_device(TOKEN, BUNDLE)
    sandbox.register_device(SANDBOX_TOKEN, BUNDLE)
    async with sim, sandbox:
        verify: ssl.SSLContext | bool = client_ssl if tls else False
        async with httpx.AsyncClient(http1=False, http2=True, verify=verify) as client:
            yield ApnsEnv(sim, sandbox, client, clock, make_jwt, verify, make_jwt())


class HttpxGoogleRequest(google.auth.transport.Request):
    """google.auth transport over a sync httpx client (``requests`` is not installed)."""

    def __init__(self, verify: ssl.SSLContext | bool) -> None:
        self.client = httpx.Client(http1=False, http2=True, verify=verify)

    def __call__(
        self,
        url: str,
        method: str = "GET",
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
        timeout: float | None = None,
        **kwargs: Any,
    ) -> google.auth.transport.Response:
        response = self.client.request(
            method, url, content=body, headers=headers, timeout=timeout or 10
        )
        return _GoogleResponse(response)


class _GoogleResponse(google.auth.transport.Response):
    def __init__(self, response: httpx.Response) -> None:
        self._response = response

    @property
    def status(self) -> int:
        return self._response.status_code

    @property
    def headers(self) -> dict[str, str]:
        return dict(self._response.headers)

    @property
    def data(self) -> bytes:
        return self._response.content


@dataclass
class FcmEnv:
    sim: FcmSimulator
    client: httpx.AsyncClient
    info: dict[str, str]
    credentials: service_account.Credentials
    google_request: HttpxGoogleRequest
    clock: FakeClock

    @property
    def send_url(self) -> str:
        return f"{self.sim.url}/v1/projects/{PROJECT}/messages:send"

    async def access_token(self) -> str:
        if not self.credentials.valid:
            await asyncio.to_thread(self.credentials.refresh, self.google_request)
        return self.credentials.token

    async def send(
        self, body: Any, url: str | None = None, token: str | None = None
    ) -> httpx.Response:
        token = token or await self.access_token()
        kwargs: dict[str, Any] = {"content": body} if isinstance(body, bytes) else {"json": body}
        return await self.client.post(
            url or self.send_url, headers={"authorization": f"Bearer {token}"}, **kwargs
        )


@pytest.fixture(scope="session")
def service_account_key() -> Iterator[tuple[dict[str, str], bytes]]:
    # RSA generation is slow: one key for the session, token_uri patched per simulator.
    yield make_service_account(PROJECT, "http://placeholder/token")


@pytest.fixture(params=["h2c", "tls"])
async def fcm(
    request: pytest.FixtureRequest,
    service_account_key: tuple[dict[str, str], bytes],
    clock: FakeClock,
    server_ssl: ssl.SSLContext,
    client_ssl: ssl.SSLContext,
) -> AsyncIterator[FcmEnv]:
    tls = request.param == "tls"
    sim = FcmSimulator(ssl_context=server_ssl if tls else None, clock=clock)
    async with sim:
        info = {**service_account_key[0], "token_uri": sim.token_uri}
        sim.add_service_account(
            info["client_email"], PROJECT, service_account_key[1], info["private_key_id"]
        )
        sim.register_device(FCM_TOKEN, PROJECT)
        credentials = service_account.Credentials.from_service_account_info(
            info, scopes=[FCM_SCOPE]
        )
        verify: ssl.SSLContext | bool = client_ssl if tls else False
        google_request = HttpxGoogleRequest(verify)
        async with httpx.AsyncClient(http1=False, http2=True, verify=verify) as client:
            yield FcmEnv(sim, client, info, credentials, google_request, clock)
        google_request.client.close()
