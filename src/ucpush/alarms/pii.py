"""Encryption of alarms' personal data for the troubleshooting upload.

The cluster holds a random *PII support token*, shown only to its operator (admin page,
``ucpush alarms pii-token``). An AES-256 key is derived from it with HKDF-SHA256 and the
personal fields of each uploaded alarm travel as one compact JWE (dir, A256GCM) under that
key: the relay stores them but cannot read them; support can, once the operator hands over the
token. ``kid`` names the key by a digest so a token mismatch is told apart from tampering.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from ucpush.crypto import jwe

_SALT = b"ucpush alarm PII v1"
_INFO = b"A256GCM dir key"


def pii_key(support_token: str) -> bytes:
    if not support_token:
        raise ValueError("PII support token is empty")
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=_SALT, info=_INFO).derive(
        support_token.encode()
    )


def key_id(support_token: str) -> str:
    return "pii-" + hashlib.sha256(pii_key(support_token)).hexdigest()[:16]


def seal(fields: Mapping[str, Any], support_token: str) -> str:
    """The fields as a compact JWE only the token's holder can open."""
    plaintext = json.dumps(dict(fields), separators=(",", ":"), sort_keys=True).encode()
    return jwe.encrypt(plaintext, pii_key(support_token), kid=key_id(support_token))


def unseal(token: str, support_token: str) -> dict[str, Any]:
    """Decrypt a sealed field set; ``jwe.JweDecryptError`` for a wrong token."""
    header = jwe.parse_compact(token).header
    if header.get("kid") not in (None, key_id(support_token)):
        raise jwe.JweDecryptError("sealed with another PII support token")
    value = json.loads(jwe.decrypt(token, pii_key(support_token)))
    if not isinstance(value, dict):
        raise jwe.JweError("sealed PII is not a JSON object")
    return value
