"""Chat push end to end: a real chat server (Prosody, ejabberd), slixmpp clients as the
phone and the desktop, the app server as a component, the relay and the APNs simulator."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime

from prometheus_client import REGISTRY

from tests.chat.conftest import DESKTOP, PHONE, Chat
from tests.chat.phone import Client
from tests.relay.conftest import BUNDLE
from ucpush.sim.common import Fault
from ucpush.store.repository import PushState

SETTLE = 2.5  # seconds: Prosody batches pushes for 1 s; no push may come within this


async def until(predicate: Callable[[], bool], seconds: float = 10.0) -> None:
    async with asyncio.timeout(seconds):
        while not predicate():  # noqa: ASYNC110 - polling state other tasks change
            await asyncio.sleep(0.02)


def counter(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(f"{name}_total", labels or None) or 0.0


async def presence_seen(chat: Chat, *resources: str) -> None:
    """The app server got the presence of these sessions (XEP-0356)."""
    await until(
        lambda: (
            set(resources) <= set(chat.running.service.sessions.online(chat.server.jid("alice")))
        )
    )


async def test_foreground_no_push_suspended_push_resume_gets_everything_in_order(
    chat: Chat,
) -> None:
    phone = await chat.phone()
    bob = await chat.client("bob", "laptop")
    success = counter("NumberOfPushSuccess")
    bob.send_message(mto=chat.server.jid("alice"), mbody="in foreground", mtype="chat")
    await phone.wait_for(1)
    await asyncio.sleep(SETTLE)
    assert chat.stack.apns.delivered == []  # a foreground client gets no push (SPEC §1)

    await phone.suspend()
    bob.send_message(mto=chat.server.jid("alice", PHONE), mbody="queued 1", mtype="chat")
    await until(lambda: len(chat.stack.apns.delivered) >= 1)
    bob.send_presence(pto=chat.server.jid("alice", PHONE), pshow="dnd", pstatus="in a meeting")
    bob.plugin["xep_0249"].send_invitation(
        chat.server.jid("alice", PHONE), "room@conference.example.test", reason="standup"
    )
    bob.send_message(mto=chat.server.jid("alice", PHONE), mbody="queued 2", mtype="chat")
    await asyncio.sleep(SETTLE)
    assert phone.received == []  # nothing is delivered while suspended

    [first, *_] = chat.pushes()
    delivery = first["delivery"]
    assert (delivery.token, delivery.topic, delivery.push_type) == ("ab" * 32, BUNDLE, "alert")
    assert delivery.priority == 10
    assert first["body"]["type"] == "message"
    assert first["type"] == "message" and first["count"] >= 1
    assert first["sender"].startswith(chat.server.jid("bob"))
    assert counter("NumberOfPushSuccess") > success

    await phone.resume()
    await phone.wait_for(4)
    kinds = [
        s["body"]
        if s.name == "message" and s["body"] and "queued" in s["body"]
        else s.name + ":" + (s["type"] if s.name == "presence" else "invite")
        for s in phone.received
        if s["from"].bare == chat.server.jid("bob")
    ]
    assert kinds[0] == "queued 1" and kinds[-1] == "queued 2"
    assert kinds.index("presence:dnd") < kinds.index("message:invite") < kinds.index("queued 2")

    # Resumed: back in the foreground, no more pushes.
    pushed = len(chat.stack.apns.delivered)
    bob.send_message(mto=chat.server.jid("alice", PHONE), mbody="after resume", mtype="chat")
    await until(lambda: "after resume" in phone.bodies())
    await asyncio.sleep(SETTLE)
    assert len(chat.stack.apns.delivered) == pushed


async def suspended_phone_and_desktop(chat: Chat) -> tuple[Client, Client, Client]:
    desktop = await chat.client("alice", DESKTOP)
    phone = await chat.phone()
    bob = await chat.client("bob", "laptop")
    await presence_seen(chat, DESKTOP, PHONE)
    return phone, desktop, bob


async def message_pushes(chat: Chat, bob: Client, body: str) -> bool:
    """Send ``body`` to alice's bare JID; whether the phone was pushed for it."""
    before = len(chat.stack.apns.delivered)
    decided = len(chat.done)
    bob.send_message(mto=chat.server.jid("alice"), mbody=body, mtype="chat")
    await until(lambda: len(chat.done) > decided)  # the server published, we decided
    await asyncio.sleep(0.3)
    return len(chat.stack.apns.delivered) > before


async def test_active_desktop_suppresses_the_phone_push(chat: Chat) -> None:
    phone, desktop, bob = await suspended_phone_and_desktop(chat)
    await phone.suspend()
    desktop.active()  # the user works on the desktop
    await asyncio.sleep(0.3)
    assert not await message_pushes(chat, bob, "you are at your desk")
    assert chat.done[-1].outcome == "suppressed"
    assert "you are at your desk" in desktop.bodies()


async def test_idle_desktop_lets_the_push_through(chat: Chat) -> None:
    phone, desktop, bob = await suspended_phone_and_desktop(chat)
    await phone.suspend()
    desktop.idle(seconds_ago=301)  # XEP-0319: last used more than 300 s ago
    await asyncio.sleep(0.3)
    assert await message_pushes(chat, bob, "are you there?")


async def test_phone_used_last_is_pushed_although_the_desktop_is_online(chat: Chat) -> None:
    phone, desktop, bob = await suspended_phone_and_desktop(chat)
    desktop.idle(seconds_ago=10)
    await asyncio.sleep(0.2)
    phone.active()  # the user switched to the phone
    await asyncio.sleep(0.3)
    await phone.suspend()
    assert await message_pushes(chat, bob, "on the go")


async def test_desktop_signed_out_lets_the_push_through(chat: Chat) -> None:
    phone, desktop, bob = await suspended_phone_and_desktop(chat)
    await phone.suspend()
    desktop.active()
    await asyncio.sleep(0.3)
    await desktop.sign_out()
    online = chat.running.service.sessions.online
    await until(lambda: DESKTOP not in online(chat.server.jid("alice")))
    assert await message_pushes(chat, bob, "desktop is gone")


async def test_user_in_a_call_gets_message_pushes_on_the_phone(chat: Chat) -> None:
    phone, desktop, bob = await suspended_phone_and_desktop(chat)
    await phone.suspend()
    desktop.active()
    await asyncio.sleep(0.3)
    chat.running.set_in_call("u-alice", True)  # the call node's sign-in user id
    assert await message_pushes(chat, bob, "during the call")
    chat.running.set_in_call("u-alice", False)
    assert not await message_pushes(chat, bob, "after the call")


async def test_disable_stops_pushes(chat: Chat) -> None:
    phone = await chat.phone()
    bob = await chat.client("bob", "laptop")
    await phone.disable_push(chat.server.component, PHONE)
    await phone.suspend()
    bob.send_message(mto=chat.server.jid("alice", PHONE), mbody="no push", mtype="chat")
    await asyncio.sleep(SETTLE)
    assert chat.stack.apns.delivered == [] and chat.done == []


async def test_sign_out_stops_pushes(chat: Chat) -> None:
    phone = await chat.phone()
    bob = await chat.client("bob", "laptop")
    await chat.stack.store.signin.set_push_state(PHONE, PushState.SIGNED_OUT, datetime.now(UTC))
    expired = counter("ExpiredTarget")
    await phone.suspend()
    bob.send_message(mto=chat.server.jid("alice", PHONE), mbody="signed out", mtype="chat")
    await until(lambda: counter("ExpiredTarget") > expired)
    await asyncio.sleep(SETTLE)
    assert chat.stack.apns.delivered == []
    assert chat.running.service.enabled_sessions == {}


async def test_relay_trouble_answers_wait_and_keeps_the_registration(chat: Chat) -> None:
    phone = await chat.phone()
    bob = await chat.client("bob", "laptop")
    await phone.suspend()
    chat.stack.apns.inject(Fault("status", 503, "ServiceUnavailable", count=1000))
    bob.send_message(mto=chat.server.jid("alice", PHONE), mbody="provider down", mtype="chat")
    errors = counter("NumberOfPushFailed")
    await until(lambda: counter("NumberOfPushFailed") > errors, 20)
    if chat.server.kind == "prosody":
        # The error is read with its type: a wait error is not counted against the device.
        await until(lambda: "NOT increasing error count" in chat.server.log())
        assert "Got error <(nil)" not in chat.server.log()
    chat.stack.apns.faults.clear()
    # The registration survived: the next message is pushed.
    bob.send_message(mto=chat.server.jid("alice", PHONE), mbody="provider back", mtype="chat")
    await until(lambda: len(chat.stack.apns.delivered) >= 1, 15)
