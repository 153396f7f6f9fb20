"""``LpnsService.from_settings``: TLS from the configured files, plain without, and the
LocalPushStartFailed alarm when the port cannot be bound."""

from __future__ import annotations

import json
import socket
import ssl
from pathlib import Path

import pytest
import trustme
from structlog.testing import capture_logs
from websockets.asyncio.client import connect

from ucpush.config import LpnsSettings
from ucpush.lpns.service import LpnsService
from ucpush.lpns.session import LocalPushGrant


class AcceptAll:
    async def authorize_local_push(
        self, access_token: str, ssid: str, device_id: str
    ) -> LocalPushGrant:
        return LocalPushGrant("u", device_id, frozenset({ssid}), 4_000_000_000.0)

    async def recheck_local_push(
        self, sessions: list[tuple[LocalPushGrant, str]]
    ) -> dict[str, tuple[int, str]]:
        return {}


HELLO = json.dumps({"type": "hello", "access_token": "t", "ssid": "A", "device_id": "d"})


async def test_tls_from_settings(tmp_path: Path) -> None:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    cert_file, key_file = tmp_path / "c.pem", tmp_path / "k.pem"
    cert.cert_chain_pems[0].write_to_path(str(cert_file))
    cert.private_key_pem.write_to_path(str(key_file))
    settings = LpnsSettings(port=0, tls_cert=str(cert_file), tls_key=str(key_file))
    client_ssl = ssl.create_default_context()
    ca.configure_trust(client_ssl)
    async with LpnsService.from_settings(settings, AcceptAll()) as lpns:
        assert lpns.url.startswith("wss://127.0.0.1:")
        async with connect(lpns.url, ssl=client_ssl) as ws:
            await ws.send(HELLO)
            assert json.loads(await ws.recv())["type"] == "hello-ok"
            assert lpns.session_count == 1


async def test_plain_without_tls_files() -> None:
    async with LpnsService.from_settings(LpnsSettings(port=0), AcceptAll()) as lpns:
        assert lpns.url.startswith("ws://")
        async with connect(lpns.url) as ws:
            await ws.send(HELLO)
            assert json.loads(await ws.recv())["type"] == "hello-ok"


async def test_port_in_use_raises_alarm() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        lpns = LpnsService(LpnsSettings(port=taken.getsockname()[1]), AcceptAll())
        with capture_logs() as logs, pytest.raises(OSError):
            await lpns.start()
    assert [(e["alarm"], e["severity"]) for e in logs if e["event"] == "alarm"] == [
        ("LocalPushStartFailed", "ALERT")
    ]
    await lpns.stop()  # never started: a no-op
