"""Message framing: byte streams (TCP/TLS, RFC 3261 §18.3) and datagrams (UDP).

``StreamFramer`` is fed whatever the socket read and returns events. It never touches a
socket: the caller writes ``SendPong.data`` back and closes the connection on ``StreamError``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ucpush.sip.errors import SipParseError
from ucpush.sip.message import SipRequest, SipResponse, find_head_end, parse_message

DEFAULT_MAX_MESSAGE_SIZE = 65535
CRLF = b"\r\n"
PING = b"\r\n\r\n"
_CONTENT_LENGTH_RE = re.compile(rb"(?im)^(?:content-length|l)[ \t]*:([^\r\n]*)\r?$")


@dataclass(frozen=True, slots=True)
class MessageReceived:
    message: SipRequest | SipResponse


@dataclass(frozen=True, slots=True)
class InvalidMessage:
    """A correctly framed message that failed to parse; the stream stays usable.
    ``ucpush.sip.helpers.error_response(error)`` gives the 400 to send, if any."""

    error: SipParseError


@dataclass(frozen=True, slots=True)
class SendPong:
    """RFC 5626 §4.4.1: the peer sent a CRLFCRLF ping; write ``data`` back."""

    data: bytes = CRLF


@dataclass(frozen=True, slots=True)
class PongReceived:
    """A lone CRLF: the pong answering our own ping (RFC 5626 §4.4.1)."""


@dataclass(frozen=True, slots=True)
class StreamError:
    """Framing is lost (no usable Content-Length, message too large): close the connection.
    ``error`` may still carry what ``error_response`` needs for a last 400/513."""

    error: SipParseError


FramerEvent = MessageReceived | InvalidMessage | SendPong | PongReceived | StreamError


class StreamFramer:
    """Cuts a TCP/TLS byte stream into SIP messages and keep-alives."""

    def __init__(self, *, max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE) -> None:
        self.max_message_size = max_message_size
        self._buffer = bytearray()
        self._broken = False
        self._half_ping = False  # last read ended with a lone CRLF
        self._scanned = 0  # bytes of the pending message already searched for its head end

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    def feed(self, data: bytes) -> list[FramerEvent]:
        if self._broken:
            raise RuntimeError("stream framing already failed; close the connection")
        self._buffer += data
        events: list[FramerEvent] = []
        buf = self._buffer
        while buf:
            if buf[0] not in (13, 10):
                self._half_ping = False
                event = self._next_message()
                if event is None:
                    break
                events.append(event)
                if isinstance(event, StreamError):
                    self._broken = True
                    break
            elif buf.startswith(PING):
                events.append(SendPong())
                self._half_ping = False
                del buf[:4]
            elif buf.startswith(CRLF):
                if len(buf) == 3 and buf[2] == 13:
                    break  # "\r\n\r": wait to see whether a ping is arriving
                # A lone CRLF is a pong, unless it completes a ping split across two reads.
                events.append(SendPong() if self._half_ping else PongReceived())
                self._half_ping = not self._half_ping and len(buf) == 2
                del buf[:2]
            elif len(buf) == 1 and buf[0] == 13:
                break
            else:
                del buf[:1]  # stray CR or LF between messages is ignored (§7.5)
        return events

    def _next_message(self) -> FramerEvent | None:
        buf = self._buffer
        # Resume the search where the last read left off, so byte-by-byte input stays linear.
        ends = find_head_end(buf, max(0, self._scanned - 3))
        if ends is None:
            if len(buf) > self.max_message_size:
                return StreamError(SipParseError("Message too large", status=513))
            self._scanned = len(buf)
            return None
        head_end, body_start = ends
        found = [v.strip() for v in _CONTENT_LENGTH_RE.findall(buf, 0, head_end)]
        if len(found) != 1 or not found[0].isdigit() or len(found[0]) > 10:
            reason = "Content-Length missing or invalid on a stream transport"
            return self._fatal(buf[:body_start], reason, 400)
        total = body_start + int(found[0])
        if total > self.max_message_size:
            return self._fatal(buf[:body_start], "Message too large", 513)
        if len(buf) < total:
            return None
        raw = bytes(buf[:total])
        del buf[:total]
        self._scanned = 0
        try:
            return MessageReceived(parse_message(raw, stream=True))
        except SipParseError as exc:
            return InvalidMessage(exc)

    @staticmethod
    def _fatal(head: bytearray, reason: str, status: int) -> StreamError:
        """The error carries the request's headers when they are usable, for a last answer."""
        error = SipParseError(reason, status=status)
        try:
            message = parse_message(bytes(head))
        except SipParseError as exc:
            error.method, error.headers = exc.method, exc.headers
        else:
            if isinstance(message, SipRequest):
                error.method, error.headers = message.method, message.headers
        return StreamError(error)


def parse_datagram(
    data: bytes, *, max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE
) -> SipRequest | SipResponse | None:
    """Parse one UDP datagram. Returns None for keep-alives (CRLFs, RFC 5626 §4.4.2 allows them
    besides STUN). Content-Length is optional and octets past it are ignored (§18.3)."""
    if not data.strip(b"\r\n"):
        return None
    if len(data) > max_message_size:
        raise SipParseError("Message too large", status=513)
    return parse_message(data)
