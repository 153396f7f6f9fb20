"""How a phone gets its XEP-0357 push node and secret.

The app server keeps no registration table: the node is the sign-in device id and the secret
is an HMAC of it under the chat push key (``chat.secret_file``, shared by the nodes of a
group). The phone asks for them once it has signed in (``ucpush chat registration DEVICE``
prints them for an operator; the sign-in API hands them to the app), then sends
``<enable jid='<component>' node='<node>'>`` with ``secret`` in the publish-options form.

Nothing about the device has to be stored twice, a publish is checked with one HMAC, and a
key rotation invalidates every registration at once (phones re-enable on their next sign-in).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from dataclasses import dataclass
from pathlib import Path

from ucpush.config import Settings
from ucpush.crypto.secretfile import load_or_create_secret, write_secret

_CONTEXT = b"ucpush xep-0357 node secret\x00"


def node_secret(key: bytes, node: str) -> str:
    """The publish-options ``secret`` of ``node`` (URL-safe base64, no padding)."""
    digest = hmac.new(key, _CONTEXT + node.encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def secret_matches(key: bytes, node: str, secret: str) -> bool:
    return hmac.compare_digest(node_secret(key, node), secret)


@dataclass(frozen=True, slots=True)
class PushRegistration:
    """What a phone puts in its ``<enable/>``: ``jid`` (the app server), ``node``, ``secret``."""

    jid: str
    node: str
    secret: str


def registration_for(key: bytes, component_jid: str, device_id: str) -> PushRegistration:
    return PushRegistration(component_jid, device_id, node_secret(key, device_id))


def node_key(settings: Settings) -> bytes:
    """The key node secrets derive from (``chat.secret_file``, made on first use)."""
    chat = settings.chat
    return load_or_create_secret(
        Path(chat.secret_file) if chat.secret_file else settings.data_dir / "chat-secret"
    )


def component_secret(settings: Settings) -> str:
    """The XEP-0114 password shared with the chat server (made on first use)."""
    chat = settings.chat
    path = (
        Path(chat.component_secret_file)
        if chat.component_secret_file
        else settings.data_dir / "chat-component-secret"
    )
    try:
        secret = path.read_text().strip()
    except FileNotFoundError:
        secret = secrets.token_urlsafe(24)
        write_secret(path, secret.encode())
    if not secret:
        raise ValueError(f"{path.name}: component secret is empty")
    return secret
