"""The message parser and the session under arbitrary input: only ``ProtocolError`` escapes the
parser, and a session answers every frame with actions, never an exception."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ucpush.lpns.protocol import (
    Ack,
    Hello,
    Keepalive,
    Nack,
    ProtocolError,
    SsidChange,
    parse_client_message,
)
from ucpush.lpns.session import Close, LocalPushGrant, Session, State

T0 = 1_800_000_000.0
_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=12,
)
_fields = st.fixed_dictionaries(
    {"type": st.sampled_from(["hello", "keepalive", "ssid", "ack", "nack", "push", 1, None])},
    optional={
        "access_token": _json | st.text(max_size=50),
        "ssid": _json | st.text(max_size=70),
        "device_id": _json | st.from_regex(r"[A-Za-z0-9._:-]{1,130}", fullmatch=True),
        "id": _json | st.from_regex(r"[A-Za-z0-9._:-]{0,70}", fullmatch=True),
        "reason": _json,
    },
)
frames = (
    st.text(max_size=200)
    | _json.map(json.dumps)
    | _fields.map(json.dumps)
    | st.just("[" * 5000 + "]" * 5000)
)


@settings(max_examples=500, deadline=None)
@given(frames)
def test_parser_raises_only_protocol_error(frame: str) -> None:
    try:
        message = parse_client_message(frame)
    except ProtocolError as exc:
        assert str(exc)
    else:
        assert isinstance(message, Hello | Keepalive | SsidChange | Ack | Nack)


@settings(max_examples=300, deadline=None)
@given(st.lists(frames, max_size=6), st.booleans())
def test_session_never_raises(frames_in: list[str], authenticate_first: bool) -> None:
    session = Session(T0, keepalive_seconds=120, hello_timeout=10)
    if authenticate_first:
        session.receive_text('{"type":"hello","access_token":"t","ssid":"A","device_id":"d"}', T0)
        session.authorized(LocalPushGrant("u", "d", frozenset({"A"}), T0 + 60), "A", T0)
    for n, frame in enumerate(frames_in):
        actions = session.receive_text(frame, T0 + n)
        for action in actions:
            if isinstance(action, Close):
                assert session.state is State.CLOSED
                assert len(action.reason.encode()) <= 200


@pytest.mark.parametrize(
    ("frame", "message"),
    [
        (
            '{"type":"hello","access_token":"t","ssid":"Ward4","device_id":"d-1"}',
            Hello("t", "Ward4", "d-1"),
        ),
        ('{"type":"keepalive","extra":[1,2]}', Keepalive()),
        ('{"type":"ssid","ssid":"Ward5"}', SsidChange("Ward5")),
        ('{"type":"ack","id":"abc"}', Ack("abc")),
        ('{"type":"nack","id":"abc","reason":"busy"}', Nack("abc", "busy")),
    ],
)
def test_valid_messages(frame: str, message: object) -> None:
    assert parse_client_message(frame) == message


@pytest.mark.parametrize(
    ("frame", "error"),
    [
        ("", "frame is not JSON"),
        ("[1]", "frame is not a JSON object"),
        ('{"type":7}', "type must be a string"),
        ('{"type":"push"}', "unknown message type"),
        ('{"type":"hello","access_token":"","ssid":"A","device_id":"d"}', "access_token is empty"),
        ('{"type":"hello","access_token":"t","ssid":5,"device_id":"d"}', "ssid must be a string"),
        ('{"type":"ack","id":"has space"}', "id must match"),
        ('{"type":"nack","id":"a","reason":' + json.dumps("r" * 300) + "}", "reason longer"),
    ],
)
def test_invalid_messages(frame: str, error: str) -> None:
    with pytest.raises(ProtocolError, match=error):
        parse_client_message(frame)
