"""Secrets at rest in the database: AES-256-GCM under a key kept in a file beside the data.

A stolen database dump alone does not reveal the relay refresh token, the proxy password or the
PII support token; the key file (``cloud.secret_file``, default ``<data_dir>/cloud-secret``)
must be copied to every node of the cluster, like the sign-in key.
"""

from __future__ import annotations

import base64
import os
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ucpush.crypto.secretfile import load_or_create_secret

_VERSION = "v1"
_NONCE_BYTES = 12


class SealError(Exception):
    """A sealed value could not be opened (wrong key file or damaged value)."""


class Sealer:
    def __init__(self, key: bytes) -> None:
        self._aead = AESGCM(key[:32])

    @classmethod
    def from_file(cls, path: Path) -> Sealer:
        return cls(load_or_create_secret(path, 32))

    def seal(self, plaintext: str, field: str) -> str:
        """``""`` stays ``""`` (nothing stored); anything else becomes ``v1:<b64>``."""
        if not plaintext:
            return ""
        nonce = os.urandom(_NONCE_BYTES)
        # The field name is the associated data: a sealed proxy password cannot be moved into
        # the refresh token column and opened there.
        sealed = self._aead.encrypt(nonce, plaintext.encode(), field.encode())
        return f"{_VERSION}:{base64.b64encode(nonce + sealed).decode()}"

    def open(self, sealed: str, field: str) -> str:
        if not sealed:
            return ""
        version, _, body = sealed.partition(":")
        if version != _VERSION:
            raise SealError(f"{field}: unknown sealing version")
        try:
            raw = base64.b64decode(body, validate=True)
            nonce, ciphertext = raw[:_NONCE_BYTES], raw[_NONCE_BYTES:]
            return self._aead.decrypt(nonce, ciphertext, field.encode()).decode()
        except (ValueError, InvalidTag) as exc:
            raise SealError(
                f"{field}: cannot decrypt (is cloud.secret_file the same on every node?)"
            ) from exc
