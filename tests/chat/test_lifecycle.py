"""Graceful shutdown sends every push-enabled session a 'terminated' push; a crash sends
none; chat counters per subscriber service."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from tests.chat.conftest import PHONE, PUSH_KEY, add_device, chat_settings
from tests.chat.phone import Client
from tests.chat.servers import ChatServer, free_port
from tests.relay.conftest import Stack
from ucpush.chat import registration_for, run_chat_push
from ucpush.crypto import jwe

pytestmark = pytest.mark.parametrize("chat_server", ["prosody"], indirect=True)


def gauge(name: str, service: str) -> float:
    return REGISTRY.get_sample_value(name, {"service": service}) or 0.0


async def pushed_once(server: ChatServer, stack: Stack, running: object, key: bytes) -> Client:
    phone = Client(server, "alice", PHONE)
    await phone.start()
    reg = registration_for(key, server.component, PHONE)
    await phone.enable_push(server.component, reg.node, reg.secret)
    bob = await Client(server, "bob", "laptop").start()
    await phone.suspend()
    bob.send_message(mto=server.jid("alice", PHONE), mbody="hello", mtype="chat")
    async with asyncio.timeout(10):
        while not stack.apns.delivered:  # noqa: ASYNC110 - the simulator records pushes
            await asyncio.sleep(0.02)
    await bob.close()
    return phone


async def test_graceful_shutdown_sends_terminated_pushes(
    tmp_path: Path, chat_server: ChatServer, stack: Stack
) -> None:
    await add_device(stack)
    settings = chat_settings(tmp_path, chat_server)
    enabled = gauge("PushEnabledSessions", "Apns")
    enable_requests = REGISTRY.get_sample_value("PushEnableReqRcvd_total", {"service": "Apns"})
    async with await stack.enrolled_client() as relay:
        async with run_chat_push(settings, stack.store, lambda: relay) as running:
            phone = await pushed_once(chat_server, stack, running, running.service.node_key)
            assert running.service.enabled_sessions == {PHONE: "APNS"}
            assert gauge("PushEnabledSessions", "Apns") == enabled + 1
            assert running.service.counters.sent_disconnected.window_count("APNS") >= 1
        assert gauge("PushEnabledSessions", "Apns") == enabled
    after = REGISTRY.get_sample_value("PushEnableReqRcvd_total", {"service": "Apns"})
    assert after == (enable_requests or 0.0) + 1
    last = stack.apns.delivered[-1]
    assert json.loads(last.payload)["type"] == "terminated"
    fields = json.loads(jwe.decrypt(json.loads(last.payload)["jwe"], PUSH_KEY))
    assert fields["type"] == "terminated"
    phone.abort()


async def test_crash_sends_no_terminated_push(
    tmp_path: Path, chat_server: ChatServer, stack: Stack
) -> None:
    await add_device(stack)
    settings = chat_settings(tmp_path, chat_server)
    async with await stack.enrolled_client() as relay:
        with pytest.raises(RuntimeError, match="crash"):
            async with run_chat_push(settings, stack.store, lambda: relay) as running:
                phone = await pushed_once(chat_server, stack, running, running.service.node_key)
                raise RuntimeError("crash")
    assert [json.loads(d.payload)["type"] for d in stack.apns.delivered] == ["message"]
    phone.abort()


async def test_wrong_component_secret_fails_start_with_a_clear_error(
    tmp_path: Path, chat_server: ChatServer, stack: Stack
) -> None:
    settings = chat_settings(tmp_path, chat_server)
    Path(settings.chat.component_secret_file).write_text("wrong")  # noqa: ASYNC240
    with pytest.raises(ConnectionError, match="component_secret"):
        async with run_chat_push(settings, stack.store, lambda: None, connect_timeout=3):
            pass


async def test_component_reconnects_after_the_chat_server_drops_it(
    tmp_path: Path, chat_server: ChatServer, stack: Stack
) -> None:
    await add_device(stack)
    settings = chat_settings(tmp_path, chat_server)
    async with (
        await stack.enrolled_client() as relay,
        run_chat_push(settings, stack.store, lambda: relay) as running,
    ):
        component = running.component
        assert component.transport is not None
        component.transport.abort()  # the stream is lost (chat server restart, network)
        await asyncio.sleep(0.1)
        async with asyncio.timeout(10):
            await component.connected_event.wait()
        phone = await pushed_once(chat_server, stack, running, running.service.node_key)
    phone.abort()


async def test_start_without_waiting_runs_while_the_chat_server_is_away(
    tmp_path: Path, chat_server: ChatServer, stack: Stack
) -> None:
    settings = chat_settings(tmp_path, chat_server, server_port=free_port())  # nobody there
    async with asyncio.timeout(10):
        async with run_chat_push(settings, stack.store, lambda: None, wait_connected=False) as chat:
            await asyncio.sleep(0.5)  # a few reconnect attempts
            assert not chat.component.connected_event.is_set()
