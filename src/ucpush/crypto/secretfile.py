"""Secrets kept as files in ``data_dir``: owner-only from the moment they exist."""

from __future__ import annotations

import os
import secrets
from pathlib import Path


def write_secret(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` (mode 0600, folder 0700), replacing what was there."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    # Created with its final mode: no window in which another user could read it.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(data)


def load_or_create_secret(path: Path, size: int = 32) -> bytes:
    """The random secret in ``path``, made on first use; shorter than ``size`` is an error."""
    try:
        secret = path.read_bytes()
    except FileNotFoundError:
        secret = secrets.token_bytes(size)
        write_secret(path, secret)
    if len(secret) < size:
        raise ValueError(f"{path.name}: secret must be at least {size} bytes")
    return secret
