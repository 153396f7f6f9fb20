"""Compact JWE with ``alg: dir`` and ``enc: A256GCM`` (RFC 7516 / RFC 7518 §5.3).

Push payloads are encrypted with the 256-bit AES key the client chose at sign-in. The relay
only checks that a payload *is* such a JWE (``parse_compact``) and never holds the key; the
call node and chat push encrypt (``encrypt``); clients and tests decrypt (``decrypt``).
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import re
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

KEY_BYTES = 32
IV_BYTES = 12
TAG_BYTES = 16
_B64URL = re.compile(rb"[A-Za-z0-9_-]*")
# Header members a compliant producer may add that change nothing for the relay.
_ALLOWED_HEADER = {"alg", "enc", "kid", "typ", "cty"}


class JweError(ValueError):
    """The value is not a well-formed compact JWE (dir, A256GCM); the message says why."""


class JweDecryptError(JweError):
    """Authentication failed: wrong key or tampered token."""


@dataclass(frozen=True, slots=True)
class CompactJwe:
    header: dict[str, str]
    protected: bytes  # the encoded header, which is the AAD
    iv: bytes
    ciphertext: bytes
    tag: bytes


def b64url_encode(data: bytes) -> bytes:
    return base64.urlsafe_b64encode(data).rstrip(b"=")


def b64url_decode(part: bytes, what: str) -> bytes:
    if not _B64URL.fullmatch(part) or len(part) % 4 == 1:
        raise JweError(f"{what} is not base64url")
    try:
        return base64.urlsafe_b64decode(part + b"=" * (-len(part) % 4))
    except binascii.Error as exc:  # pragma: no cover - regex above already excludes this
        raise JweError(f"{what} is not base64url") from exc


def parse_compact(token: str | bytes) -> CompactJwe:
    """Check the structure of a compact dir/A256GCM JWE without decrypting it."""
    raw = token.encode("ascii", "replace") if isinstance(token, str) else token
    parts = raw.split(b".")
    if len(parts) != 5:
        raise JweError(f"compact JWE has 5 dot-separated parts, got {len(parts)}")
    protected, encrypted_key, iv_b64, ct_b64, tag_b64 = parts
    try:
        header = json.loads(b64url_decode(protected, "protected header"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise JweError("protected header is not JSON") from exc
    if not isinstance(header, dict):
        raise JweError("protected header is not a JSON object")
    if header.get("alg") != "dir":
        raise JweError(f"alg must be 'dir', got {header.get('alg')!r}")
    if header.get("enc") != "A256GCM":
        raise JweError(f"enc must be 'A256GCM', got {header.get('enc')!r}")
    unknown = set(header) - _ALLOWED_HEADER
    if unknown:
        # "zip" and "crit" change how the token is processed; refuse rather than ignore.
        raise JweError(f"unsupported header parameters: {', '.join(sorted(unknown))}")
    if any(not isinstance(v, str) for v in header.values()):
        raise JweError("header parameters must be strings")
    if encrypted_key:
        raise JweError("encrypted key must be empty with alg 'dir'")
    iv = b64url_decode(iv_b64, "IV")
    if len(iv) != IV_BYTES:
        raise JweError(f"IV must be {IV_BYTES} bytes, got {len(iv)}")
    ciphertext = b64url_decode(ct_b64, "ciphertext")
    if not ciphertext:
        raise JweError("ciphertext is empty")
    tag = b64url_decode(tag_b64, "authentication tag")
    if len(tag) != TAG_BYTES:
        raise JweError(f"authentication tag must be {TAG_BYTES} bytes, got {len(tag)}")
    return CompactJwe(header, protected, iv, ciphertext, tag)


def _check_key(key: bytes) -> AESGCM:
    if len(key) != KEY_BYTES:
        raise ValueError(f"A256GCM key must be {KEY_BYTES} bytes, got {len(key)}")
    return AESGCM(key)


def encrypt(plaintext: bytes, key: bytes, kid: str | None = None) -> str:
    """Encrypt ``plaintext`` into a compact JWE; ``kid`` names the key version for rotation."""
    aead = _check_key(key)
    header = {"alg": "dir", "enc": "A256GCM"}
    if kid is not None:
        header["kid"] = kid
    protected = b64url_encode(json.dumps(header, separators=(",", ":")).encode())
    iv = os.urandom(IV_BYTES)
    sealed = aead.encrypt(iv, plaintext, protected)
    ciphertext, tag = sealed[:-TAG_BYTES], sealed[-TAG_BYTES:]
    return b".".join(
        (protected, b"", b64url_encode(iv), b64url_encode(ciphertext), b64url_encode(tag))
    ).decode("ascii")


def decrypt(token: str | bytes, key: bytes) -> bytes:
    jwe = parse_compact(token)
    aead = _check_key(key)
    try:
        return aead.decrypt(jwe.iv, jwe.ciphertext + jwe.tag, jwe.protected)
    except InvalidTag as exc:
        raise JweDecryptError("JWE authentication failed (wrong key or modified token)") from exc
