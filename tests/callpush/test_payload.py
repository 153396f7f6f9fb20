"""Call push payloads: sealed with the device key, PII-free without one, and the INVITE
summary they are built from."""

from __future__ import annotations

import json

import pytest
from structlog.testing import capture_logs

from tests.callpush.conftest import invite
from ucpush.callpush.dispatcher import invite_summary
from ucpush.callpush.engine import CancelReason, PushKind, SendPush
from ucpush.callpush.payload import PUBLIC_KEY, PayloadBuilder, PayloadPolicy
from ucpush.crypto import jwe
from ucpush.relay.providers.base import PushType
from ucpush.sip.message import SipRequest, parse_message

KEY = bytes(range(32))
NODE = "sip:node2.example.org;transport=tls"
CALL = SendPush("iphone", PushKind.CALL, PushType.VOIP)


def opened(token: str, key: bytes) -> dict[str, object]:
    return json.loads(jwe.decrypt(token, key))


def builder(**policy: bool) -> PayloadBuilder:
    return PayloadBuilder(NODE, PayloadPolicy(**policy), clock=lambda: 1_764_032_400.7)


def test_call_payload_carries_caller_node_and_tracking_id() -> None:
    token = builder().build(
        invite(hunt_pilot="5000"), CALL, key=KEY, key_id="k7", tracking_id="trk-1"
    )
    assert token is not None
    assert jwe.parse_compact(token).header["kid"] == "k7"
    assert opened(token, KEY) == {
        "type": "call",
        "call_id": "call-1@pbx",
        "caller_name": "Bob Caller",
        "caller_number": "+15550001",
        "hunt_pilot": "5000",
        "active_node": NODE,
        "tracking_id": "trk-1",
        "timestamp": 1_764_032_400,
    }
    with pytest.raises(jwe.JweDecryptError):
        jwe.decrypt(token, PUBLIC_KEY)


def test_external_presentation_replaces_the_caller() -> None:
    summary = invite(presentation_name="Example Corp", presentation_number="+15550100")
    token = builder().build(summary, CALL, key=KEY, key_id="k1", tracking_id="t")
    assert token is not None
    fields = opened(token, KEY)
    assert (fields["caller_name"], fields["caller_number"]) == ("Example Corp", "+15550100")
    assert "hunt_pilot" not in fields


def test_cancel_payload_names_its_reason() -> None:
    push = SendPush("iphone", PushKind.CANCEL, PushType.CANCEL, CancelReason.DECLINED_ELSEWHERE)
    token = builder().build(invite(), push, key=KEY, key_id="k1", tracking_id="t")
    assert token is not None
    fields = opened(token, KEY)
    assert (fields["type"], fields["reason"]) == ("cancel", "declined-elsewhere")


def test_keyless_device_gets_a_pii_free_payload_logged_once() -> None:
    b = builder()
    with capture_logs() as logs:
        first = b.build(invite(hunt_pilot="5000"), CALL, key=b"", key_id="", tracking_id="t1")
        b.build(invite(), CALL, key=b"", key_id="", tracking_id="t2")
        b.build(
            invite(),
            SendPush("other", PushKind.CALL, PushType.VOIP),
            key=b"",
            key_id="",
            tracking_id="t3",
        )
    assert first is not None
    assert opened(first, PUBLIC_KEY) == {
        "type": "call",
        "call_id": "call-1@pbx",
        "active_node": NODE,
        "tracking_id": "t1",
        "timestamp": 1_764_032_400,
    }
    assert jwe.parse_compact(first).header["kid"] == "public"
    events = [(e["event"], e["device_id"]) for e in logs if e["event"] == "pii_free_push"]
    assert events == [("pii_free_push", "iphone"), ("pii_free_push", "other")]


def test_keyless_device_gets_nothing_when_the_policy_says_so() -> None:
    b = builder(pii_free_without_key=False)
    assert b.build(invite(), CALL, key=b"", key_id="", tracking_id="t") is None


def request(*headers: str) -> SipRequest:
    raw = "\r\n".join(
        [
            "INVITE sip:alice@example.org SIP/2.0",
            "Via: SIP/2.0/TCP 192.0.2.9:5060;branch=z9hG4bK-1",
            'From: "Bob Caller" <sip:%2B15550001@pbx.example.org>;tag=f1',
            "To: <sip:alice@example.org>",
            "Call-ID: call-77@pbx",
            "CSeq: 1 INVITE",
            "Max-Forwards: 70",
            *headers,
            "Content-Length: 0",
            "",
            "",
        ]
    )
    message = parse_message(raw.encode())
    assert isinstance(message, SipRequest)
    return message


def test_invite_summary_from_from_header() -> None:
    summary = invite_summary(request(), mobility_number="+15559999")
    assert summary.call_id == "call-77@pbx"
    assert (summary.caller_name, summary.caller_number) == ("Bob Caller", "+15550001")
    assert summary.hunt_pilot == "" and not summary.supports_push_sent
    assert summary.mobility_number == "+15559999"


def test_invite_summary_prefers_asserted_identity_and_reads_diversion() -> None:
    summary = invite_summary(
        request(
            'P-Asserted-Identity: "Front Desk" <sip:1000@pbx.example.org>',
            "Diversion: <sip:5000@pbx.example.org>;reason=unconditional",
            "Supported: timer, Push-Sent",
        ),
        push_sent_option="push-sent",
        presentation=("Example Corp", "+15550100"),
    )
    assert (summary.caller_name, summary.caller_number) == ("Front Desk", "1000")
    assert summary.hunt_pilot == "5000"
    assert summary.supports_push_sent
    assert summary.presentation_name == "Example Corp"
