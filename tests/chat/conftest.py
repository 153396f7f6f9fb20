"""Chat push fixtures: a real chat server (Prosody or ejabberd), the relay stack with the
APNs/FCM simulators (``tests.relay.conftest``), sign-in devices in the relay's store, and
the app server connected as a component."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from tests.chat.phone import Client
from tests.chat.servers import ChatServer, available, ejabberd, prosody
from tests.relay.conftest import BUNDLE, FCM_PROJECT, Stack, relay_store_url, stack
from ucpush.chat import PushDone, RunningChatPush, registration_for, run_chat_push
from ucpush.config import ChatSettings, Settings
from ucpush.crypto import jwe
from ucpush.relay.client import RelayClient
from ucpush.store.repository import Device, EndUser, Platform

__all__ = ["relay_store_url", "stack"]

PUSH_KEY = bytes(range(32))
TOKEN = "ab" * 32
DESKTOP = "desktop"
PHONE = "iphone-1"  # the device id: push node and XMPP resource of the phone


@pytest.fixture(params=["prosody", "ejabberd"])
def chat_server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ChatServer]:
    kind = request.param
    if not available(kind):
        pytest.skip(f"{kind} is not installed (deploy/debian-packages.txt)")
    start = prosody if kind == "prosody" else ejabberd
    with start(tmp_path, ["alice", "bob"]) as server:
        yield server


@dataclass
class Chat:
    server: ChatServer
    stack: Stack
    running: RunningChatPush
    settings: Settings
    relay: RelayClient | None
    done: list[PushDone] = field(default_factory=list)
    clients: list[Client] = field(default_factory=list)

    def registration(self, device_id: str = PHONE) -> tuple[str, str]:
        reg = registration_for(self.running.service.node_key, self.server.component, device_id)
        return reg.node, reg.secret

    async def client(self, user: str, resource: str) -> Client:
        client = Client(self.server, user, resource)
        self.clients.append(client)
        return await client.start()

    async def phone(self, user: str = "alice", resource: str = PHONE) -> Client:
        """A phone with push enabled under its device's node and secret."""
        client = await self.client(user, resource)
        node, secret = self.registration(resource)
        await client.enable_push(self.server.component, node, secret)
        return client

    def pushes(self) -> list[dict[str, Any]]:
        """Every push at the APNs simulator, its payload opened with the device key."""
        out = []
        for delivery in self.stack.apns.delivered:
            body = json.loads(delivery.payload)
            fields = json.loads(jwe.decrypt(body["jwe"], PUSH_KEY))
            out.append({"delivery": delivery, "body": body, **fields})
        return out


async def add_device(
    stack: Stack, device_id: str = PHONE, username: str = "alice", **kwargs: Any
) -> Device:
    now = datetime.now(UTC)
    user_id = f"u-{username}"
    if username not in {u.username for u in await stack.store.signin.list_users()}:
        await stack.store.signin.add_user(EndUser(user_id, username, "scrypt$x", now))
    values: dict[str, Any] = {
        "id": device_id,
        "user_id": user_id,
        "platform": Platform.IOS,
        "service": "APNS",
        "push_token": TOKEN,
        "push_key": PUSH_KEY,
        "push_key_id": "k1",
        "created_at": now,
        "updated_at": now,
    }
    values.update(kwargs)
    device = Device(**values)
    await stack.store.signin.put_device(device)
    if device.service.startswith("APNS"):
        stack.apns.register_device(device.push_token, BUNDLE)
    else:
        stack.fcm.register_device(device.push_token, FCM_PROJECT)
    return device


def chat_settings(tmp_path: Path, server: ChatServer, **chat: Any) -> Settings:
    secret_file = tmp_path / "component-secret"
    secret_file.write_text(server.component_secret)
    values: dict[str, Any] = {
        "enabled": True,
        "server_port": server.component_port,
        "component_jid": server.component,
        "component_secret_file": str(secret_file),
        "reconnect_delay": 0.2,
    }
    values.update(chat)
    return Settings(data_dir=tmp_path / "node", chat=ChatSettings(**values))


@pytest.fixture
async def chat(tmp_path: Path, chat_server: ChatServer, stack: Stack) -> AsyncIterator[Chat]:
    await add_device(stack)
    settings = chat_settings(tmp_path, chat_server)
    done: list[PushDone] = []
    async with (
        await stack.enrolled_client() as relay,
        run_chat_push(settings, stack.store, lambda: relay, on_push_done=done.append) as running,
    ):
        harness = Chat(chat_server, stack, running, settings, relay, done)
        try:
            yield harness
        finally:
            for client in harness.clients:
                await client.close()
