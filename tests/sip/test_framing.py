from __future__ import annotations

import pytest

from tests.sip.torture import VALID, wire
from ucpush.sip.errors import SipParseError
from ucpush.sip.framing import (
    InvalidMessage,
    MessageReceived,
    PongReceived,
    SendPong,
    StreamError,
    StreamFramer,
    parse_datagram,
)
from ucpush.sip.helpers import error_response
from ucpush.sip.message import SipRequest, SipResponse

OPTIONS = (
    b"OPTIONS sip:bob@example.com SIP/2.0\r\n"
    b"Via: SIP/2.0/TCP 192.0.2.1:5060;branch=z9hG4bKopt1\r\n"
    b"Max-Forwards: 70\r\n"
    b"From: <sip:alice@example.com>;tag=1\r\n"
    b"To: <sip:bob@example.com>\r\n"
    b"Call-ID: opt1@192.0.2.1\r\n"
    b"CSeq: 1 OPTIONS\r\n"
    b"Content-Length: 0\r\n"
    b"\r\n"
)
MESSAGE = (
    b"MESSAGE sip:bob@example.com SIP/2.0\r\n"
    b"Via: SIP/2.0/TCP 192.0.2.1:5060;branch=z9hG4bKmsg1\r\n"
    b"Max-Forwards: 70\r\n"
    b"From: <sip:alice@example.com>;tag=1\r\n"
    b"To: <sip:bob@example.com>\r\n"
    b"Call-ID: msg1@192.0.2.1\r\n"
    b"CSeq: 2 MESSAGE\r\n"
    b"Content-Type: text/plain\r\n"
    b"l: 12\r\n"
    b"\r\n"
    b"hello\r\nworld"
)


def messages(events: list) -> list[SipRequest | SipResponse]:
    return [e.message for e in events if isinstance(e, MessageReceived)]


def test_coalesced_messages() -> None:
    framer = StreamFramer()
    events = framer.feed(OPTIONS + MESSAGE + OPTIONS)
    got = messages(events)
    assert [m.method for m in got] == ["OPTIONS", "MESSAGE", "OPTIONS"]  # type: ignore[union-attr]
    assert got[1].body == b"hello\r\nworld"
    assert framer.buffered == 0


@pytest.mark.parametrize("chunk", [1, 2, 3, 7, 50])
def test_split_messages(chunk: int) -> None:
    framer = StreamFramer()
    stream = OPTIONS + MESSAGE + wire(VALID["wsinv"])
    events = []
    for i in range(0, len(stream), chunk):
        events += framer.feed(stream[i : i + chunk])
    got = messages(events)
    assert [m.cseq.method for m in got] == ["OPTIONS", "MESSAGE", "INVITE"]
    assert got[2].body == wire(VALID["wsinv"]).split(b"\r\n\r\n", 1)[1]
    assert len(events) == 3


def test_body_split_from_head() -> None:
    framer = StreamFramer()
    head, body = MESSAGE.split(b"\r\n\r\n")
    assert framer.feed(head + b"\r\n\r\n") == []
    assert framer.feed(body[:5]) == []
    [event] = framer.feed(body[5:])
    assert isinstance(event, MessageReceived) and event.message.body == body


def test_ping_pong() -> None:
    framer = StreamFramer()
    assert framer.feed(b"\r\n\r\n") == [SendPong()]
    assert SendPong().data == b"\r\n"
    assert framer.feed(b"\r\n") == [PongReceived()]
    events = framer.feed(b"\r\n\r\n" + OPTIONS + b"\r\n\r\n")
    assert isinstance(events[0], SendPong) and isinstance(events[1], MessageReceived)
    assert isinstance(events[2], SendPong) and len(events) == 3


def test_ping_split_across_reads() -> None:
    framer = StreamFramer()
    assert framer.feed(b"\r\n\r") == []
    assert framer.feed(b"\n") == [SendPong()]
    framer = StreamFramer()
    # Two halves in two reads: the first looks like a pong, the second completes the ping.
    assert framer.feed(b"\r\n") == [PongReceived()]
    assert framer.feed(b"\r\n") == [SendPong()]
    assert framer.feed(b"\r\n") == [PongReceived()]


def test_stray_line_ends_between_messages_ignored() -> None:
    framer = StreamFramer()
    events = framer.feed(b"\n" + OPTIONS + b"\n\r")
    assert [type(e) for e in events] == [MessageReceived]
    assert messages(framer.feed(b"\n" + OPTIONS))


def test_missing_content_length_is_fatal_but_answerable() -> None:
    framer = StreamFramer()
    [event] = framer.feed(OPTIONS.replace(b"Content-Length: 0\r\n", b""))
    assert isinstance(event, StreamError)
    assert "Content-Length" in event.error.reason
    response = error_response(event.error, to_tag="t")
    assert response is not None and response.status == 400 and response.to.tag == "t"
    with pytest.raises(RuntimeError):
        framer.feed(OPTIONS)


@pytest.mark.parametrize("value", [b"-1", b"abc", b"1" * 12, b""])
def test_bad_content_length_is_fatal(value: bytes) -> None:
    [event] = StreamFramer().feed(
        OPTIONS.replace(b"Content-Length: 0", b"Content-Length: " + value)
    )
    assert isinstance(event, StreamError)


def test_two_content_lengths_are_fatal() -> None:
    raw = OPTIONS.replace(b"Content-Length: 0\r\n", b"Content-Length: 0\r\nl: 4\r\n")
    [event] = StreamFramer().feed(raw)
    assert isinstance(event, StreamError)


def test_too_large() -> None:
    framer = StreamFramer(max_message_size=400)
    [event] = framer.feed(MESSAGE.replace(b"l: 12", b"l: 100000"))
    assert isinstance(event, StreamError) and event.error.status == 513
    assert event.error.reason == "Message too large"
    framer = StreamFramer(max_message_size=400)
    assert framer.feed(b"INVITE sip:a@b SIP/2.0\r\n" + b"X: y\r\n" * 40) == []
    [event] = framer.feed(b"X: y\r\n" * 40)
    assert isinstance(event, StreamError) and event.error.status == 513


def test_invalid_message_keeps_stream_usable() -> None:
    framer = StreamFramer()
    broken = OPTIONS.replace(b"CSeq: 1 OPTIONS", b"CSeq: 1 INVITE")
    events = framer.feed(broken + OPTIONS)
    assert isinstance(events[0], InvalidMessage)
    response = error_response(events[0].error)
    assert response is not None and response.status == 400
    assert isinstance(events[1], MessageReceived)


def test_datagram() -> None:
    assert parse_datagram(b"\r\n\r\n") is None
    assert parse_datagram(b"\r\n") is None
    msg = parse_datagram(OPTIONS.replace(b"Content-Length: 0\r\n", b"") + b"trailing")
    assert msg is not None and msg.body == b"trailing"  # no Content-Length: rest is body
    msg = parse_datagram(MESSAGE + b"junk after the body")
    assert msg is not None and msg.body == b"hello\r\nworld"
    with pytest.raises(SipParseError, match="too large"):
        parse_datagram(MESSAGE, max_message_size=100)
    with pytest.raises(SipParseError):
        parse_datagram(MESSAGE.replace(b"l: 12", b"l: 13"))
