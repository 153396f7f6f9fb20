"""One local push session as a sans-IO state machine.

The driver (``ucpush.lpns.service``) feeds it frames, authentication results and the current
time (epoch seconds), and carries out the actions it returns: ``Send`` a message, ``Close`` the
connection, ``Authenticate`` a hello, report a push ``Acked`` or ``Nacked``. ``deadline`` says
when to call ``tick`` if nothing arrives.

States: ``connecting`` (until the hello is authorised) → ``authenticated`` → ``closed``.

Close codes (the reason starts with the HTTP status it stands for)::

    1003  binary frame                      4401  "401 ..." no keepalive within the window,
    1009  frame over max_message_bytes            access token expired or invalid, no hello
    1013  node at max_sessions                    within hello_timeout
    4400  "400 ..." malformed message       4403  "403 ..." SSID not provisioned for the user,
    4409  "409 ..." replaced by a newer            device not the user's, not iOS, signed out
          session of the same device        4410  "410 ..." ended by the node: signed out,
    1001  node shutting down                       device or user deleted, configuration changed

4401 is the "401 close" of the local push specification: the client must get a fresh access
token (refresh grant or sign-in) before it reconnects.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from ucpush.lpns.protocol import (
    Ack,
    Hello,
    Keepalive,
    Nack,
    ProtocolError,
    PushType,
    SsidChange,
    parse_client_message,
)

CLOSE_BINARY = 1003
CLOSE_SHUTDOWN = 1001
CLOSE_TOO_BIG = 1009
CLOSE_BUSY = 1013
CLOSE_BAD_MESSAGE = 4400
CLOSE_UNAUTHORIZED = 4401
CLOSE_FORBIDDEN = 4403
CLOSE_REPLACED = 4409
CLOSE_ENDED = 4410


class State(StrEnum):
    CONNECTING = "connecting"
    AUTHENTICATED = "authenticated"
    CLOSED = "closed"


class CloseCause(StrEnum):
    PROTOCOL = "protocol"
    HELLO_TIMEOUT = "hello-timeout"
    KEEPALIVE_TIMEOUT = "keepalive-timeout"
    TOKEN_EXPIRED = "token-expired"
    INVALID_TOKEN = "invalid-token"
    REFUSED = "refused"
    SSID_NOT_PROVISIONED = "ssid-not-provisioned"
    ENDED = "ended"  # by the node: sign-out, deletion, replacement, shutdown


@dataclass(frozen=True, slots=True)
class LocalPushGrant:
    """What an accepted hello establishes."""

    user_id: str
    device_id: str
    ssids: frozenset[str]  # provisioned for the user when the session opened
    token_expires_at: float  # epoch seconds


class LocalPushRefused(Exception):
    """A hello is refused: ``code`` is the close code (4401, 4403), ``reason`` its text."""

    def __init__(self, code: int, reason: str, *, invalid_token: bool = False) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason
        self.invalid_token = invalid_token


@dataclass(frozen=True, slots=True)
class Send:
    message: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Close:
    code: int
    reason: str
    cause: CloseCause


@dataclass(frozen=True, slots=True)
class Authenticate:
    access_token: str
    ssid: str
    device_id: str


@dataclass(frozen=True, slots=True)
class Acked:
    push_id: str


@dataclass(frozen=True, slots=True)
class Nacked:
    push_id: str
    reason: str


Action = Send | Close | Authenticate | Acked | Nacked


class Session:
    # Slots: a node holds tens of thousands of these.
    __slots__ = (
        "_authenticating",
        "_hello_deadline",
        "_last_keepalive",
        "grant",
        "keepalive_seconds",
        "ssid",
        "state",
    )

    def __init__(self, now: float, *, keepalive_seconds: float, hello_timeout: float) -> None:
        self.state = State.CONNECTING
        self.keepalive_seconds = keepalive_seconds
        self.grant: LocalPushGrant | None = None
        self.ssid = ""
        self._hello_deadline = now + hello_timeout
        self._authenticating = False
        self._last_keepalive = now

    @property
    def deadline(self) -> float | None:
        """When ``tick`` must run next; None once closed."""
        if self.state is State.CONNECTING:
            return self._hello_deadline
        if self.state is State.AUTHENTICATED:
            assert self.grant is not None
            return min(self._last_keepalive + self.keepalive_seconds, self.grant.token_expires_at)
        return None

    def tick(self, now: float) -> list[Action]:
        if self.state is State.CONNECTING and now >= self._hello_deadline:
            return self._close(CLOSE_UNAUTHORIZED, "401 no hello in time", CloseCause.HELLO_TIMEOUT)
        if self.state is State.AUTHENTICATED:
            assert self.grant is not None
            if now >= self.grant.token_expires_at:
                return self._close(
                    CLOSE_UNAUTHORIZED, "401 access token expired", CloseCause.TOKEN_EXPIRED
                )
            if now >= self._last_keepalive + self.keepalive_seconds:
                return self._close(
                    CLOSE_UNAUTHORIZED,
                    f"401 no keepalive within {self.keepalive_seconds:g} s",
                    CloseCause.KEEPALIVE_TIMEOUT,
                )
        return []

    def receive_binary(self, now: float) -> list[Action]:
        if self.state is State.CLOSED:
            return []
        return self._close(CLOSE_BINARY, "binary frames are not accepted", CloseCause.PROTOCOL)

    def receive_text(self, text: str, now: float) -> list[Action]:
        expired = self.tick(now)
        if expired or self.state is State.CLOSED:
            return expired
        try:
            message = parse_client_message(text)
        except ProtocolError as exc:
            return self._close(CLOSE_BAD_MESSAGE, f"400 {exc}", CloseCause.PROTOCOL)
        if self.state is State.CONNECTING:
            if not isinstance(message, Hello) or self._authenticating:
                return self._close(
                    CLOSE_BAD_MESSAGE, "400 expected one hello first", CloseCause.PROTOCOL
                )
            self._authenticating = True
            return [Authenticate(message.access_token, message.ssid, message.device_id)]
        match message:
            case Keepalive():
                self._last_keepalive = now
                return [Send({"type": "keepalive-ack"})]
            case Ack(push_id):
                return [Acked(push_id)]
            case Nack(push_id, reason):
                return [Nacked(push_id, reason)]
            case SsidChange(ssid):
                assert self.grant is not None
                if ssid not in self.grant.ssids:
                    return self._close(
                        CLOSE_FORBIDDEN,
                        "403 SSID not provisioned for local push",
                        CloseCause.SSID_NOT_PROVISIONED,
                    )
                self.ssid = ssid
                return []
            case _:
                return self._close(CLOSE_BAD_MESSAGE, "400 hello sent twice", CloseCause.PROTOCOL)

    def authorized(self, grant: LocalPushGrant, ssid: str, now: float) -> list[Action]:
        """The hello was accepted (after ``Authenticate``)."""
        if self.state is not State.CONNECTING:
            return []
        self.state = State.AUTHENTICATED
        self.grant = grant
        self.ssid = ssid
        self._last_keepalive = now
        # Checked at once: a token that expired while being verified must not open a session.
        expired = self.tick(now)
        if expired:
            return expired
        return [
            Send(
                {
                    "type": "hello-ok",
                    "keepalive_seconds": self.keepalive_seconds,
                    "token_expires_at": grant.token_expires_at,
                }
            )
        ]

    def refused(self, refusal: LocalPushRefused) -> list[Action]:
        if self.state is State.CLOSED:
            return []
        cause = CloseCause.INVALID_TOKEN if refusal.invalid_token else CloseCause.REFUSED
        return self._close(refusal.code, refusal.reason, cause)

    def push(self, push_id: str, push_type: PushType, payload: str) -> list[Action]:
        if self.state is not State.AUTHENTICATED:
            return []
        message = {"type": "push", "id": push_id, "push_type": push_type, "payload": payload}
        return [Send(message)]

    def end(self, code: int, reason: str) -> list[Action]:
        """The node ends the session (sign-out, deletion, replacement, shutdown)."""
        if self.state is State.CLOSED:
            return []
        return self._close(code, reason, CloseCause.ENDED)

    def _close(self, code: int, reason: str, cause: CloseCause) -> list[Action]:
        self.state = State.CLOSED
        return [Close(code, reason, cause)]
