"""Bad publishes reach the app server through a real Prosody and get XMPP errors; the
service keeps serving. A client can address the component directly, which is how these
requests are injected (the chat server itself only sends well-formed ones)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from prometheus_client import REGISTRY
from slixmpp.exceptions import IqError
from slixmpp.xmlstream import ET
from structlog.testing import capture_logs

from tests.chat.conftest import PHONE, PUSH_KEY, Chat, add_device
from ucpush.callpush.payload import PUBLIC_KEY
from ucpush.chat.protocol import Publish, StanzaError
from ucpush.crypto import jwe
from ucpush.store.repository import Platform, PushState

pytestmark = pytest.mark.parametrize("chat_server", ["prosody"], indirect=True)

PUBSUB = "http://jabber.org/protocol/pubsub"
DATA = "jabber:x:data"


def form(form_type: str | None, **fields: str) -> ET.Element:
    x = ET.Element(f"{{{DATA}}}x", type="submit")
    items = [(var.replace("_", "-"), value) for var, value in fields.items()]
    for var, value in ([("FORM_TYPE", form_type)] if form_type else []) + items:
        field = ET.SubElement(x, f"{{{DATA}}}field", var=var)
        ET.SubElement(field, f"{{{DATA}}}value").text = value
    return x


def publish(
    node: str | None,
    secret: str | None,
    summary: ET.Element | None = None,
    *,
    notification: bool = True,
    options: ET.Element | None = None,
) -> ET.Element:
    pubsub = ET.Element(f"{{{PUBSUB}}}pubsub")
    pub = ET.SubElement(pubsub, f"{{{PUBSUB}}}publish", **({"node": node} if node else {}))
    item = ET.SubElement(pub, f"{{{PUBSUB}}}item")
    if notification:
        note = ET.SubElement(item, "{urn:xmpp:push:0}notification")
        if summary is not None:
            note.append(summary)
    if options is None and secret is not None:
        options = form("http://jabber.org/protocol/pubsub#publish-options", secret=secret)
    if options is not None:
        ET.SubElement(pubsub, f"{{{PUBSUB}}}publish-options").append(options)
    return pubsub


async def answer(chat: Chat, client: Any, payload: ET.Element) -> tuple[str, str]:
    """("result", "") or (error type, condition) for an IQ set to the component."""
    iq = client.Iq(stype="set", sto=chat.server.component)
    iq.append(payload)
    try:
        await iq.send(timeout=10)
    except IqError as exc:
        return exc.iq["error"]["type"], exc.iq["error"]["condition"]
    return "result", ""


def counter(name: str) -> float:
    return REGISTRY.get_sample_value(f"{name}_total") or 0.0


async def test_malformed_unknown_and_unauthorised_publishes_get_errors(chat: Chat) -> None:
    client = await chat.client("bob", "tester")
    node, secret = chat.registration()
    summary = form("urn:xmpp:push:summary", message_count="1")
    bad_count = form("urn:xmpp:push:summary", message_count="many")
    no_var = ET.Element(f"{{{DATA}}}x", type="submit")
    ET.SubElement(no_var, f"{{{DATA}}}field")
    only_pubsub = ET.Element(f"{{{PUBSUB}}}pubsub")
    cases = {
        "no publish": (only_pubsub, ("cancel", "feature-not-implemented")),
        "no node": (publish(None, secret, summary), ("modify", "bad-request")),
        "no notification": (publish(node, secret, notification=False), ("modify", "bad-request")),
        "count not a number": (publish(node, secret, bad_count), ("modify", "bad-request")),
        "field without var": (publish(node, secret, no_var), ("modify", "bad-request")),
        "wrong form type": (publish(node, secret, form("urn:other")), ("modify", "bad-request")),
        "options without form": (
            publish(node, None, summary, options=ET.Element("{urn:x}y")),
            ("modify", "bad-request"),
        ),
        "long node": (publish("n" * 300, secret, summary), ("modify", "bad-request")),
        "wrong secret": (publish(node, "not-the-secret", summary), ("auth", "forbidden")),
        "no secret": (publish(node, None, summary), ("auth", "forbidden")),
    }
    invalid = counter("InvalidTarget")
    for name, (payload, expected) in cases.items():
        assert await answer(chat, client, payload) == expected, name
    assert counter("InvalidTarget") - invalid == 2
    ghost, ghost_secret = chat.registration("no-such-device")
    assert await answer(chat, client, publish(ghost, ghost_secret, summary)) == (
        "cancel",
        "item-not-found",
    )
    assert chat.stack.apns.delivered == []
    # Still serving: a well-formed publish is pushed.
    assert await answer(chat, client, publish(node, secret, summary)) == ("result", "")
    assert len(chat.stack.apns.delivered) == 1


async def test_a_flood_of_publishes_is_throttled_and_the_service_keeps_running(
    chat: Chat,
) -> None:
    client = await chat.client("bob", "tester")
    node, secret = chat.registration()
    summary = form("urn:xmpp:push:summary", message_count="1")
    answers = await asyncio.gather(
        *(answer(chat, client, publish(node, secret, summary)) for _ in range(60))
    )
    throttled = [a for a in answers if a == ("wait", "resource-constraint")]
    assert len(throttled) >= 60 - chat.settings.chat.node_burst - 5
    assert set(answers) == {("result", ""), ("wait", "resource-constraint")}
    # Another device is not affected by one node's flood.
    other, other_secret = chat.registration("ipad-2")
    await add_device(chat.stack, "ipad-2")
    assert await answer(chat, client, publish(other, other_secret, summary)) == ("result", "")
    assert chat.running.component.connected_event.is_set()


async def test_wrong_secrets_cannot_use_up_a_nodes_rate(chat: Chat) -> None:
    client = await chat.client("bob", "tester")
    node, secret = chat.registration()
    summary = form("urn:xmpp:push:summary", message_count="1")
    forged = await asyncio.gather(
        *(answer(chat, client, publish(node, "guess", summary)) for _ in range(40))
    )
    assert set(forged) == {("auth", "forbidden")}
    assert await answer(chat, client, publish(node, secret, summary)) == ("result", "")


async def test_disco_shows_a_push_app_server(chat: Chat) -> None:
    client = await chat.client("bob", "tester")
    info = await client.plugin["xep_0030"].get_info(jid=chat.server.component, timeout=10)
    identities = info["disco_info"]["identities"]
    assert any(i[0] == "pubsub" and i[1] == "push" for i in identities)
    assert "urn:xmpp:push:0" in info["disco_info"]["features"]


async def test_publish_from_a_stranger_domain_is_refused(chat: Chat) -> None:
    node, secret = chat.registration(PHONE)
    with pytest.raises(StanzaError) as refused:
        await chat.running.service.handle_publish(Publish(node, secret, 1), "evil.example")
    assert (refused.value.type.value, refused.value.condition) == ("auth", "forbidden")


def opened(delivery: Any, key: bytes) -> dict[str, Any]:
    return json.loads(jwe.decrypt(json.loads(delivery.payload)["jwe"], key))


async def test_publish_without_a_message_is_a_silent_normal_priority_push(chat: Chat) -> None:
    client = await chat.client("bob", "tester")
    node, secret = chat.registration()
    silent = REGISTRY.get_sample_value("PushSentSilent_total", {"service": "Apns"}) or 0.0
    assert await answer(chat, client, publish(node, secret)) == ("result", "")
    [delivery] = chat.stack.apns.delivered
    assert delivery.priority == 5
    assert opened(delivery, PUSH_KEY)["count"] == 0
    after = REGISTRY.get_sample_value("PushSentSilent_total", {"service": "Apns"})
    assert after == silent + 1


async def test_device_without_a_key_gets_a_pii_free_payload(chat: Chat) -> None:
    await add_device(chat.stack, "old-phone", push_key=b"", push_key_id="")
    client = await chat.client("bob", "tester")
    node, secret = chat.registration("old-phone")
    summary = form("urn:xmpp:push:summary", message_count="2", last_message_sender="bob@x")
    assert await answer(chat, client, publish(node, secret, summary)) == ("result", "")
    [delivery] = chat.stack.apns.delivered
    fields = opened(delivery, PUBLIC_KEY)
    assert fields["type"] == "message" and fields["count"] == 2
    assert "sender" not in fields and "body" not in fields


async def test_android_device_gets_a_high_priority_fcm_data_message(chat: Chat) -> None:
    await add_device(
        chat.stack, "pixel-1", platform=Platform.ANDROID, service="FCM", push_token="fcm-tok-1"
    )
    client = await chat.client("bob", "tester")
    node, secret = chat.registration("pixel-1")
    summary = form("urn:xmpp:push:summary", message_count="1", last_message_sender="bob@x")
    assert await answer(chat, client, publish(node, secret, summary)) == ("result", "")
    [delivery] = chat.stack.fcm.delivered
    assert delivery.message["android"]["priority"] == "high"
    assert delivery.message["data"]["type"] == "message"
    fields = json.loads(jwe.decrypt(delivery.message["data"]["jwe"], PUSH_KEY))
    assert fields["sender"] == "bob@x"


async def test_dead_token_pauses_the_device_and_cancels_the_registration(chat: Chat) -> None:
    client = await chat.client("bob", "tester")
    node, secret = chat.registration()
    chat.stack.apns.unregister_device("ab" * 32)
    summary = form("urn:xmpp:push:summary", message_count="1")
    with capture_logs() as logs:
        assert await answer(chat, client, publish(node, secret, summary)) == (
            "cancel",
            "item-not-found",
        )
    [alarm] = [e for e in logs if e["event"] == "alarm"]
    assert alarm["alarm"] == "PushNotificationFailedInvalidDeviceToken" and alarm["paused"]
    device = await chat.stack.store.signin.get_device(PHONE)
    assert device.push_state is PushState.PAUSED_INVALID_TOKEN
    # Paused: later publishes are refused without reaching the relay.
    assert await answer(chat, client, publish(node, secret, summary)) == (
        "cancel",
        "item-not-found",
    )


async def test_node_not_onboarded_answers_wait(chat: Chat) -> None:
    client = await chat.client("bob", "tester")
    node, secret = chat.registration()
    chat.running.service.relay = lambda: None
    summary = form("urn:xmpp:push:summary", message_count="1")
    with capture_logs() as logs:
        assert await answer(chat, client, publish(node, secret, summary)) == (
            "wait",
            "service-unavailable",
        )
    assert [e["alarm"] for e in logs if e["event"] == "alarm"] == ["XCPConfigMgrAccessTokenIsNull"]
