"""Chat push end to end: a real chat server (Prosody, ejabberd), slixmpp clients as the
phone and the desktop, the app server as a component, the relay and the APNs simulator."""

from __future__ import annotations

import asyncio

from tests.chat.conftest import PHONE, Chat
from tests.relay.conftest import BUNDLE


async def eventually(predicate, timeout: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.02)


async def test_suspended_phone_gets_a_push_and_every_queued_stanza_on_resume(chat: Chat) -> None:
    phone = await chat.phone()
    bob = await chat.client("bob", "laptop")
    bob.send_message(mto=chat.server.jid("alice"), mbody="while in foreground", mtype="chat")
    await phone.wait_for(1)
    await asyncio.sleep(1.5)
    assert chat.stack.apns.delivered == []  # foreground: no push

    await phone.suspend()
    for n in range(3):
        bob.send_message(mto=chat.server.jid("alice", PHONE), mbody=f"queued {n}", mtype="chat")
    await eventually(lambda: len(chat.stack.apns.delivered) >= 1)
    [push, *_] = chat.pushes()
    assert push["delivery"].topic == BUNDLE and push["delivery"].push_type == "alert"
    assert push["type"] == "message" and push["count"] >= 1
    await phone.resume()
    await phone.wait_for(3)
    assert phone.bodies() == ["queued 0", "queued 1", "queued 2"]
