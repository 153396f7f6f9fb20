"""Local push wire protocol: one JSON object per WebSocket text frame.

Client → node::

    {"type": "hello", "access_token": "<OAuth access token>", "ssid": "Ward4",
     "device_id": "<id the device registered under>"}         first frame, within hello_timeout
    {"type": "keepalive"}                                     at least every keepalive_seconds
    {"type": "ssid", "ssid": "Ward5"}                         the device joined another Wi-Fi
    {"type": "ack", "id": "<push id>"}                        push received and handled
    {"type": "nack", "id": "<push id>", "reason": "..."}      push received, could not be handled

Node → client::

    {"type": "hello-ok", "keepalive_seconds": 120, "token_expires_at": <epoch seconds>}
    {"type": "keepalive-ack"}
    {"type": "push", "id": "<push id>", "push_type": "voip" | "missed-call" | "cancel",
     "payload": "<compact JWE, dir/A256GCM, the device's push key>"}

Members a message does not define are ignored (room for additions); a defined member of the
wrong type or size is an error. Close codes are listed in ``ucpush.lpns.session``.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Literal

PushType = Literal["voip", "missed-call", "cancel"]
PUSH_TYPES: tuple[PushType, ...] = ("voip", "missed-call", "cancel")

_DEVICE_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
_PUSH_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")
_MAX_TOKEN = 8192
_MAX_SSID = 64
_MAX_REASON = 256


class ProtocolError(ValueError):
    """The frame is not a valid client message; the message says why (never echoes values)."""


@dataclass(frozen=True, slots=True)
class Hello:
    access_token: str
    ssid: str
    device_id: str


@dataclass(frozen=True, slots=True)
class Keepalive:
    pass


@dataclass(frozen=True, slots=True)
class SsidChange:
    ssid: str


@dataclass(frozen=True, slots=True)
class Ack:
    id: str


@dataclass(frozen=True, slots=True)
class Nack:
    id: str
    reason: str


ClientMessage = Hello | Keepalive | SsidChange | Ack | Nack


def _text(obj: dict[str, Any], name: str, max_len: int, *, required: bool = True) -> str:
    value = obj.get(name)
    if value is None and not required:
        return ""
    if not isinstance(value, str):
        raise ProtocolError(f"{name} must be a string")
    if not value and required:
        raise ProtocolError(f"{name} is empty")
    if len(value) > max_len:
        raise ProtocolError(f"{name} longer than {max_len} characters")
    return value


def _matching(obj: dict[str, Any], name: str, pattern: re.Pattern[str]) -> str:
    value = obj.get(name)
    if not isinstance(value, str) or not pattern.fullmatch(value):
        raise ProtocolError(f"{name} must match {pattern.pattern}")
    return value


def parse_client_message(text: str) -> ClientMessage:
    """Parse one text frame; ``ProtocolError`` is the only exception it raises."""
    try:
        obj = json.loads(text)
    except (ValueError, RecursionError):
        raise ProtocolError("frame is not JSON") from None
    if not isinstance(obj, dict):
        raise ProtocolError("frame is not a JSON object")
    kind = obj.get("type")
    if kind == "keepalive":
        return Keepalive()
    if kind == "ack":
        return Ack(_matching(obj, "id", _PUSH_ID))
    if kind == "nack":
        return Nack(
            _matching(obj, "id", _PUSH_ID), _text(obj, "reason", _MAX_REASON, required=False)
        )
    if kind == "hello":
        return Hello(
            access_token=_text(obj, "access_token", _MAX_TOKEN),
            ssid=_text(obj, "ssid", _MAX_SSID),
            device_id=_matching(obj, "device_id", _DEVICE_ID),
        )
    if kind == "ssid":
        return SsidChange(_text(obj, "ssid", _MAX_SSID))
    if not isinstance(kind, str):
        raise ProtocolError("type must be a string")
    raise ProtocolError("unknown message type")


def encode(message: dict[str, Any]) -> str:
    return json.dumps(message, separators=(",", ":"))
