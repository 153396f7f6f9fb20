"""A call node's client side over real TLS: the sign-in API served by uvicorn and the local
push service, both with trustme certificates, in front of a SQLite store."""

from __future__ import annotations

import asyncio
import json
import secrets
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import trustme
from websockets.asyncio.client import ClientConnection, connect

from tests.signin.helpers import Clock, provision, register, sign_in
from ucpush import aio
from ucpush.config import LpnsSettings
from ucpush.lpns.service import LpnsService, server_ssl_context
from ucpush.signin.api import create_app
from ucpush.signin.service import SigninService
from ucpush.signin.tokens import TokenSigner
from ucpush.store import open_store

KEEPALIVE = 1.0
ACK_TIMEOUT = 0.3


@dataclass
class Node:
    signin: SigninService
    lpns: LpnsService
    http: httpx.AsyncClient
    ssl: ssl.SSLContext
    clock: Clock
    tokens: dict[str, str] = field(default_factory=dict)  # device id → latest access token

    async def open(self) -> ClientConnection:
        return await connect(self.lpns.url, ssl=self.ssl, open_timeout=5, close_timeout=2)

    async def hello(
        self, token: str, ssid: str = "Ward4", device_id: str = "iphone-1"
    ) -> tuple[ClientConnection, dict[str, Any] | None]:
        """Connect and say hello; the answer is None when the node closed instead."""
        ws = await self.open()
        await ws.send(
            json.dumps(
                {"type": "hello", "access_token": token, "ssid": ssid, "device_id": device_id}
            )
        )
        try:
            return ws, json.loads(await asyncio.wait_for(ws.recv(), 5))
        except Exception:
            return ws, None

    async def ready_device(
        self, username: str = "alice", device_id: str = "iphone-1", **device: Any
    ) -> str:
        """A provisioned, signed-in user with a registered device; returns the access token."""
        await provision(self.signin, username=username)
        token = (await sign_in(self.http, username, device_id))["access_token"]
        await register(self.http, token, device_id, **device)
        self.tokens[device_id] = token
        return token

    async def session(
        self, username: str = "alice", device_id: str = "iphone-1"
    ) -> ClientConnection:
        token = await self.ready_device(username, device_id)
        ws, answer = await self.hello(token, device_id=device_id)
        assert answer is not None and answer["type"] == "hello-ok", answer
        return ws


async def closed_with(ws: ClientConnection) -> tuple[int | None, str | None]:
    """Read until the node closes; the close code and reason it sent."""
    try:
        while True:
            await asyncio.wait_for(ws.recv(), 10)
    except Exception:
        pass
    frame = ws.protocol.close_rcvd
    return (frame.code, frame.reason) if frame else (None, None)


@pytest.fixture
def lpns_settings() -> LpnsSettings:
    return LpnsSettings(
        port=0,
        keepalive_seconds=KEEPALIVE,
        hello_timeout=1.0,
        ack_timeout=ACK_TIMEOUT,
        max_message_bytes=4096,
        max_sessions=100,
        recheck_seconds=0.5,
    )


@pytest.fixture
async def node(tmp_path: Path, lpns_settings: LpnsSettings) -> AsyncIterator[Node]:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    cert_file, key_file = tmp_path / "node.pem", tmp_path / "node.key"
    cert.cert_chain_pems[0].write_to_path(str(cert_file))
    for extra in cert.cert_chain_pems[1:]:
        extra.write_to_path(str(cert_file), append=True)
    cert.private_key_pem.write_to_path(str(key_file))
    client_ssl = ssl.create_default_context()
    ca.configure_trust(client_ssl)

    clock = Clock()
    async with await open_store(f"sqlite+aiosqlite:///{tmp_path / 'node.db'}") as store:
        signin = SigninService(
            store.signin,
            TokenSigner(secrets.token_bytes(32), "ucpush-test"),
            push_key_grace=timedelta(hours=1),
            clock=clock,
        )
        lpns = LpnsService(
            lpns_settings,
            signin,
            ssl_context=server_ssl_context(str(cert_file), str(key_file)),
            clock=clock,
        )
        signin.sessions = lpns
        async with (
            aio.serve_http(
                create_app(signin),
                host="127.0.0.1",
                port=0,
                tls_cert=str(cert_file),
                tls_key=str(key_file),
            ) as server,
            lpns,
            httpx.AsyncClient(
                base_url=f"https://127.0.0.1:{aio.bound_port(server)}", verify=client_ssl
            ) as http,
        ):
            yield Node(signin, lpns, http, client_ssl, clock)
