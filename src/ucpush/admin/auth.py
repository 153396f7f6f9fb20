"""Admin users and sessions.

Passwords are scrypt hashes (``ucpush.signin.passwords``). A session is a token
``<payload b64>.<HMAC-SHA256 b64>`` whose payload names the user, its expiry and a random
session id; the page keeps it in an HttpOnly, SameSite=Strict cookie, API clients send it as a
bearer token (or send HTTP Basic credentials on every request). Forms carry a CSRF token derived
from the session id, so a cross-site form post fails even where SameSite is not honoured.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import hashlib
import hmac
import json
import secrets
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from ucpush.cloud.sql import AdminUser, SqlAdminRepository
from ucpush.crypto.secretfile import load_or_create_secret, write_secret
from ucpush.signin.passwords import hash_password, verify_password
from ucpush.store.repository import Conflict, NotFound

INITIAL_PASSWORD_FILE = "admin-initial-password"
_USERNAME_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-@")


@functools.cache
def _dummy_hash() -> str:
    """Checked against when the user is unknown, so a wrong name costs as long as a wrong
    password."""
    return hash_password(secrets.token_urlsafe(16))


class AdminAuthError(Exception):
    """Bad credentials or session; ``status`` is 400 (bad input), 401 or 409."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


@dataclass(frozen=True, slots=True)
class Session:
    username: str
    session_id: str
    expires_at: float


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def check_new_credentials(username: str, password: str) -> None:
    if not 1 <= len(username) <= 64 or not set(username) <= _USERNAME_CHARS:
        raise AdminAuthError(400, "user name: 1-64 letters, digits or . _ - @")
    if len(password) < 10 or len(password) > 256:
        raise AdminAuthError(400, "password: 10-256 characters")


class AdminAuth:
    def __init__(self, repo: SqlAdminRepository, key: bytes, session_seconds: int) -> None:
        self._repo = repo
        self._key = key
        self.session_seconds = session_seconds

    @classmethod
    def from_files(
        cls, repo: SqlAdminRepository, secret_file: Path, session_seconds: int
    ) -> AdminAuth:
        return cls(repo, load_or_create_secret(secret_file, 32), session_seconds)

    # users

    async def add_user(self, username: str, password: str) -> AdminUser:
        check_new_credentials(username, password)
        user = AdminUser(
            username, await asyncio.to_thread(hash_password, password), datetime.now(UTC)
        )
        try:
            await self._repo.add(user)
        except Conflict:
            raise AdminAuthError(409, f"admin user {username!r} exists") from None
        return user

    async def set_password(self, username: str, password: str) -> None:
        check_new_credentials(username, password)
        try:
            await self._repo.set_password(
                username, await asyncio.to_thread(hash_password, password)
            )
        except NotFound:
            raise AdminAuthError(404, f"no admin user {username!r}") from None

    async def ensure_initial_user(self, data_dir: Path) -> Path | None:
        """With no admin user at all, create ``admin`` with a random password written to
        ``<data_dir>/admin-initial-password`` (mode 0600); return that path, else ``None``."""
        if await self._repo.list():
            return None
        password = secrets.token_urlsafe(18)
        path = data_dir / INITIAL_PASSWORD_FILE
        try:
            await self.add_user("admin", password)
        except AdminAuthError:
            return None  # another node created it at the same moment
        write_secret(path, f"admin\n{password}\n".encode())
        return path

    async def check_password(self, username: str, password: str) -> str:
        """The username if the credentials are right; ``AdminAuthError`` 401 otherwise."""
        try:
            stored = (await self._repo.get(username)).password_hash
        except NotFound:
            stored = await asyncio.to_thread(_dummy_hash)
            username = ""
        ok = await asyncio.to_thread(verify_password, password, stored)
        if not ok or not username:
            raise AdminAuthError(401, "wrong user name or password")
        return username

    # sessions

    def issue(self, username: str, now: float | None = None) -> tuple[str, Session]:
        expires = (now or time.time()) + self.session_seconds
        session = Session(username, secrets.token_urlsafe(16), expires)
        payload = _b64(
            json.dumps(
                {"u": username, "s": session.session_id, "e": int(expires)}, separators=(",", ":")
            ).encode()
        )
        return f"{payload}.{self._sign(payload)}", session

    async def verify(self, token: str, now: float | None = None) -> Session:
        """The session of a valid, unexpired token whose user still exists."""
        payload, _, signature = token.partition(".")
        if not payload or not hmac.compare_digest(signature, self._sign(payload)):
            raise AdminAuthError(401, "invalid session")
        try:
            claims = json.loads(_unb64(payload))
            session = Session(str(claims["u"]), str(claims["s"]), float(claims["e"]))
        except (ValueError, KeyError, TypeError):
            raise AdminAuthError(401, "invalid session") from None
        if session.expires_at <= (now or time.time()):
            raise AdminAuthError(401, "session expired: sign in again")
        try:
            await self._repo.get(session.username)
        except NotFound:
            raise AdminAuthError(401, "admin user no longer exists") from None
        return session

    def csrf_token(self, session: Session) -> str:
        return self._sign(f"csrf:{session.session_id}")

    def check_csrf(self, session: Session, token: str) -> None:
        if not hmac.compare_digest(token, self.csrf_token(session)):
            raise AdminAuthError(403, "form expired or sent from another site: reload the page")

    def _sign(self, text: str) -> str:
        return _b64(hmac.new(self._key, text.encode(), hashlib.sha256).digest())
