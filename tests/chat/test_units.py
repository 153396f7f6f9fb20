"""Sans-IO parts of chat push: publish parsing and replies, presence, the last-active-session
rule, node secrets and the 60-second counter windows."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from xml.etree import ElementTree as ET

import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from ucpush.chat.metrics import ChatCounters, service_label
from ucpush.chat.protocol import (
    ErrorType,
    PresenceUpdate,
    StanzaError,
    error_reply,
    parse_presence,
    parse_publish,
    result_reply,
)
from ucpush.chat.registration import node_secret, registration_for, secret_matches
from ucpush.chat.sessions import LastActiveSessions

PROSODY_PUBLISH = """
<iq xmlns='jabber:component:accept' type='set' from='example.test' to='push.example.test'
    id='p1'>
  <pubsub xmlns='http://jabber.org/protocol/pubsub'>
    <publish node='iphone-1'>
      <item>
        <notification xmlns='urn:xmpp:push:0'>
          <x xmlns='jabber:x:data' type='submit'>
            <field var='FORM_TYPE'><value>urn:xmpp:push:summary</value></field>
            <field var='message-count'><value>1</value></field>
            <field var='last-message-sender'><value>bob@example.test/laptop</value></field>
            <field var='last-message-body'><value>New Message!</value></field>
          </x>
        </notification>
      </item>
    </publish>
    <publish-options>
      <x xmlns='jabber:x:data' type='submit'>
        <field var='FORM_TYPE'>
          <value>http://jabber.org/protocol/pubsub#publish-options</value>
        </field>
        <field var='secret'><value>s3cret</value></field>
      </x>
    </publish-options>
  </pubsub>
</iq>
"""


def test_prosody_publish_is_parsed() -> None:
    publish = parse_publish(ET.fromstring(PROSODY_PUBLISH))
    assert (publish.node, publish.secret, publish.message_count) == ("iphone-1", "s3cret", 1)
    assert publish.sender == "bob@example.test/laptop" and publish.has_message


def test_publish_without_summary_is_a_silent_push() -> None:
    iq = ET.fromstring(
        "<iq><pubsub xmlns='http://jabber.org/protocol/pubsub'><publish node='n'><item>"
        "<notification xmlns='urn:xmpp:push:0'/></item></publish></pubsub></iq>"
    )
    publish = parse_publish(iq)
    assert publish.secret is None and not publish.has_message


@given(st.text(max_size=200))
def test_arbitrary_node_and_count_text_never_crash(text: str) -> None:
    clean = "".join(c for c in text if c.isprintable())
    iq = ET.Element("iq")
    pubsub = ET.SubElement(iq, "{http://jabber.org/protocol/pubsub}pubsub")
    publish = ET.SubElement(pubsub, "{http://jabber.org/protocol/pubsub}publish", node=clean)
    item = ET.SubElement(publish, "{http://jabber.org/protocol/pubsub}item")
    note = ET.SubElement(item, "{urn:xmpp:push:0}notification")
    x = ET.SubElement(note, "{jabber:x:data}x")
    field = ET.SubElement(x, "{jabber:x:data}field", var="message-count")
    ET.SubElement(field, "{jabber:x:data}value").text = clean
    try:
        parsed = parse_publish(iq)
    except StanzaError as error:
        assert error.type is ErrorType.MODIFY
    else:
        assert parsed.node == clean


def test_error_reply_is_in_the_stream_namespace() -> None:
    reply = error_reply(
        "p1",
        "push.example.test",
        "example.test",
        StanzaError(ErrorType.WAIT, "internal-server-error", "provider <down>"),
    )
    # Parsed as it would be inside a jabber:component:accept stream.
    wrapped = ET.fromstring(f"<s xmlns='jabber:component:accept'>{reply}</s>")
    error = wrapped.find("{jabber:component:accept}iq/{jabber:component:accept}error")
    assert error is not None and error.get("type") == "wait"
    assert error.find("{urn:ietf:params:xml:ns:xmpp-stanzas}internal-server-error") is not None
    assert "provider &lt;down&gt;" in reply
    assert result_reply(None, "a", "b\"'") == '<iq type=\'result\' from="a" to="b&quot;\'"/>'


def test_presence_parsing() -> None:
    since = "2026-11-25T01:00:00Z"
    presence = ET.fromstring(
        "<presence from='Alice@example.test/desktop'><show>away</show>"
        f"<idle xmlns='urn:xmpp:idle:1' since='{since}'/></presence>"
    )
    update = parse_presence(presence)
    assert update == PresenceUpdate(
        "alice@example.test", "desktop", True, "away", datetime(2026, 11, 25, 1, tzinfo=UTC)
    )
    assert parse_presence(ET.fromstring("<presence from='example.test'/>")) is None
    assert parse_presence(ET.fromstring("<presence from='a@b/c' type='subscribe'/>")) is None
    bad_idle = ET.fromstring(
        "<presence from='a@b/c'><idle xmlns='urn:xmpp:idle:1' since='x'/></presence>"
    )
    assert parse_presence(bad_idle).idle_since is None  # type: ignore[union-attr]


ALICE = "alice@example.test"


def seen(rule: LastActiveSessions, resource: str, now: float, **kwargs: object) -> None:
    rule.presence(PresenceUpdate(ALICE, resource, True, **kwargs), now)  # type: ignore[arg-type]


def test_last_active_session_rule() -> None:
    rule = LastActiveSessions(inactive_after=300)
    assert rule.should_push(ALICE, "phone", 0)  # no session at all
    seen(rule, "phone", 100)
    seen(rule, "desktop", 200)
    assert not rule.should_push(ALICE, "phone", 250)  # desktop used last
    assert rule.should_push(ALICE, "phone", 500)  # desktop inactive for 300 s
    seen(rule, "phone", 300)
    assert rule.should_push(ALICE, "phone", 310)  # phone used last
    seen(rule, "desktop", 320, show="away")  # away keeps the last interaction time
    assert rule.should_push(ALICE, "phone", 330)
    seen(rule, "desktop", 340)
    assert not rule.should_push(ALICE, "phone", 350)
    rule.set_in_call("U-1", True)
    assert rule.should_push(ALICE, "phone", 350, user_id="u-1")
    rule.set_in_call("u-1", False)
    rule.presence(PresenceUpdate(ALICE, "desktop", False), 360)  # signed out
    assert rule.should_push(ALICE, "phone", 360)


def test_idle_since_counts_as_the_last_interaction() -> None:
    rule = LastActiveSessions(inactive_after=300)
    now = datetime(2026, 11, 25, 2, tzinfo=UTC)
    seen(rule, "phone", now.timestamp() - 100)
    seen(rule, "desktop", now.timestamp(), show="away", idle_since=now - timedelta(seconds=301))
    assert rule.should_push(ALICE, "phone", now.timestamp())
    seen(rule, "desktop", now.timestamp(), show="away", idle_since=now - timedelta(seconds=50))
    assert not rule.should_push(ALICE, "phone", now.timestamp())


def test_node_secrets() -> None:
    key = bytes(32)
    reg = registration_for(key, "push.example.test", "iphone-1")
    assert reg.node == "iphone-1" and secret_matches(key, "iphone-1", reg.secret)
    assert not secret_matches(key, "iphone-2", reg.secret)
    assert not secret_matches(bytes([1]) * 32, "iphone-1", reg.secret)
    assert node_secret(key, "iphone-1") == reg.secret and len(reg.secret) == 43


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_windowed_counters_reset_every_60_seconds() -> None:
    clock, registry = FakeClock(), CollectorRegistry()
    counters = ChatCounters(clock, registry)
    for _ in range(3):
        counters.errors.inc("APNS")
    counters.errors.inc("FCM:dev")
    assert counters.errors.window_count("APNS") == 3
    clock.now += 61
    counters.roll()
    window = registry.get_sample_value
    assert window("PushErrorsLastWindow", {"service": "Apns"}) == 3
    assert window("PushErrorsLastWindow", {"service": "FcmDev"}) == 1
    assert counters.errors.window_count("APNS") == 0
    counters.errors.inc("APNS")
    clock.now += 60
    counters.roll()
    assert window("PushErrorsLastWindow", {"service": "Apns"}) == 1
    assert window("PushErrorsLastWindow", {"service": "FcmDev"}) == 0
    clock.now += 600  # long silence: the last window is empty
    counters.roll()
    assert window("PushErrorsLastWindow", {"service": "Apns"}) == 0
    assert window("PushErrors_total", {"service": "Apns"}) == 4


@pytest.mark.parametrize(
    ("service", "label"),
    [("APNS", "Apns"), ("APNS:dev", "ApnsDev"), ("APNS:beta", "ApnsBeta"), ("FCM", "Fcm")],
)
def test_service_labels(service: str, label: str) -> None:
    assert service_label(service) == label


def test_chat_settings_need_a_component_jid_when_enabled() -> None:
    from pydantic import ValidationError

    from ucpush.config import ChatSettings

    with pytest.raises(ValidationError, match="component_jid"):
        ChatSettings(enabled=True)
    assert ChatSettings(component_jid="push.example.org").user_domain == "example.org"
    assert ChatSettings(component_jid="push.a.b", domain="c.d").user_domain == "c.d"
