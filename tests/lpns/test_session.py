"""The sans-IO session with a fake clock: states, deadlines, keepalive, expiry, refusals."""

from __future__ import annotations

import pytest

from ucpush.lpns.session import (
    Acked,
    Authenticate,
    Close,
    CloseCause,
    LocalPushGrant,
    LocalPushRefused,
    Nacked,
    Send,
    Session,
    State,
)

T0 = 1_800_000_000.0
HELLO = '{"type":"hello","access_token":"tok","ssid":"Ward4","device_id":"iphone-1"}'
GRANT = LocalPushGrant("u1", "iphone-1", frozenset({"Ward4", "Ward5"}), T0 + 3600)


def connected(now: float = T0) -> Session:
    return Session(now, keepalive_seconds=120, hello_timeout=10)


def authenticated(now: float = T0, grant: LocalPushGrant = GRANT) -> Session:
    session = connected(now)
    assert session.receive_text(HELLO, now) == [Authenticate("tok", "Ward4", "iphone-1")]
    actions = session.authorized(grant, "Ward4", now)
    assert actions == [
        Send(
            {
                "type": "hello-ok",
                "keepalive_seconds": 120,
                "token_expires_at": grant.token_expires_at,
            }
        )
    ]
    return session


def test_hello_deadline() -> None:
    session = connected()
    assert session.state is State.CONNECTING and session.deadline == T0 + 10
    assert session.tick(T0 + 9.99) == []
    assert session.tick(T0 + 10) == [Close(4401, "401 no hello in time", CloseCause.HELLO_TIMEOUT)]
    assert session.state is State.CLOSED and session.deadline is None
    assert session.tick(T0 + 20) == [] and session.receive_text(HELLO, T0 + 20) == []


def test_keepalive_window() -> None:
    session = authenticated()
    assert session.deadline == T0 + 120
    assert session.receive_text('{"type":"keepalive"}', T0 + 100) == [
        Send({"type": "keepalive-ack"})
    ]
    assert session.deadline == T0 + 220
    assert session.tick(T0 + 219) == []
    assert session.tick(T0 + 220) == [
        Close(4401, "401 no keepalive within 120 s", CloseCause.KEEPALIVE_TIMEOUT)
    ]


def test_token_expiry_wins_over_keepalive() -> None:
    grant = LocalPushGrant("u1", "iphone-1", frozenset({"Ward4"}), T0 + 60)
    session = authenticated(grant=grant)
    assert session.deadline == T0 + 60
    # A keepalive arriving after expiry does not save the session.
    assert session.receive_text('{"type":"keepalive"}', T0 + 61) == [
        Close(4401, "401 access token expired", CloseCause.TOKEN_EXPIRED)
    ]


def test_token_expired_by_the_time_it_was_checked() -> None:
    session = connected()
    session.receive_text(HELLO, T0)
    expired = LocalPushGrant("u1", "iphone-1", frozenset({"Ward4"}), T0 + 1)
    assert session.authorized(expired, "Ward4", T0 + 2) == [
        Close(4401, "401 access token expired", CloseCause.TOKEN_EXPIRED)
    ]


@pytest.mark.parametrize(
    ("refusal", "cause"),
    [
        (LocalPushRefused(4401, "401 bad", invalid_token=True), CloseCause.INVALID_TOKEN),
        (LocalPushRefused(4403, "403 SSID not provisioned"), CloseCause.REFUSED),
    ],
)
def test_refused(refusal: LocalPushRefused, cause: CloseCause) -> None:
    session = connected()
    session.receive_text(HELLO, T0)
    assert session.refused(refusal) == [Close(refusal.code, refusal.reason, cause)]
    assert session.refused(refusal) == []


def test_only_one_hello_while_authenticating() -> None:
    session = connected()
    session.receive_text(HELLO, T0)
    assert session.receive_text(HELLO, T0) == [
        Close(4400, "400 expected one hello first", CloseCause.PROTOCOL)
    ]
    assert session.authorized(GRANT, "Ward4", T0) == []


def test_hello_twice_after_authentication() -> None:
    session = authenticated()
    assert session.receive_text(HELLO, T0 + 1) == [
        Close(4400, "400 hello sent twice", CloseCause.PROTOCOL)
    ]


def test_push_ack_nack() -> None:
    session = authenticated()
    assert session.push("p1", "voip", "jwe") == [
        Send({"type": "push", "id": "p1", "push_type": "voip", "payload": "jwe"})
    ]
    assert session.receive_text('{"type":"ack","id":"p1"}', T0 + 1) == [Acked("p1")]
    assert session.receive_text('{"type":"nack","id":"p2","reason":"busy"}', T0 + 1) == [
        Nacked("p2", "busy")
    ]
    assert session.receive_text('{"type":"nack","id":"p3"}', T0 + 1) == [Nacked("p3", "")]


def test_no_push_before_authentication_or_after_close() -> None:
    session = connected()
    assert session.push("p1", "voip", "jwe") == []
    session = authenticated()
    session.end(4410, "410 signed out")
    assert session.push("p1", "voip", "jwe") == []


def test_ssid_change() -> None:
    session = authenticated()
    assert session.receive_text('{"type":"ssid","ssid":"Ward5"}', T0 + 1) == []
    assert session.ssid == "Ward5"
    assert session.receive_text('{"type":"ssid","ssid":"Lobby"}', T0 + 2) == [
        Close(4403, "403 SSID not provisioned for local push", CloseCause.SSID_NOT_PROVISIONED)
    ]


def test_bad_frames() -> None:
    assert connected().receive_binary(T0) == [
        Close(1003, "binary frames are not accepted", CloseCause.PROTOCOL)
    ]
    assert connected().receive_text("[]", T0) == [
        Close(4400, "400 frame is not a JSON object", CloseCause.PROTOCOL)
    ]
    assert connected().receive_text('{"type":"keepalive"}', T0) == [
        Close(4400, "400 expected one hello first", CloseCause.PROTOCOL)
    ]


def test_end_by_the_node() -> None:
    session = authenticated()
    assert session.end(4410, "410 user deleted") == [
        Close(4410, "410 user deleted", CloseCause.ENDED)
    ]
    assert session.end(4410, "again") == []
    assert session.receive_binary(T0) == []
