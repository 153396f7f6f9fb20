"""Relay identity: machine-account OAuth tokens.

Access tokens are short-lived ES256 JWTs signed by the relay (``kid`` names the signing key, so
keys rotate without invalidating tokens already out); refresh tokens are opaque random strings
of which only a SHA-256 digest is stored. The relay's own keys live in the store so every relay
process verifies every token.
"""

from __future__ import annotations

import hashlib
import secrets
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from ucpush.store.repository import (
    MachineAccount,
    NotFound,
    RefreshToken,
    RelayRepository,
    SigningKey,
    TenantStatus,
)

AUDIENCE = "ucpush-relay"
REFRESH_PREFIX = "ucprt_"
# Verified tokens are cached briefly: ECDSA verification would otherwise dominate /v1/push.
_VERIFY_CACHE_MAX = 4096


class AuthError(Exception):
    """A credential was refused; ``error`` is the OAuth error code, the message says why."""

    def __init__(self, error: str, description: str) -> None:
        super().__init__(description)
        self.error = error
        self.description = description


@dataclass(frozen=True, slots=True)
class AccessClaims:
    account_id: str
    tenant_id: str
    expires_at: float


@dataclass(frozen=True, slots=True)
class IssuedAccessToken:
    token: str
    expires_in: int


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def _new_key() -> SigningKey:
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return SigningKey(kid=uuid.uuid4().hex[:16], private_pem=pem, created_at=datetime.now(UTC))


class Identity:
    def __init__(
        self,
        repo: RelayRepository,
        issuer: str,
        access_ttl: int,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._repo = repo
        self._issuer = issuer
        self._access_ttl = access_ttl
        self._clock = clock
        self._signing: tuple[str, ec.EllipticCurvePrivateKey] | None = None
        self._verify_keys: dict[str, ec.EllipticCurvePublicKey] = {}
        self._verified: dict[str, AccessClaims] = {}
        self._last_reload = 0.0

    async def load(self) -> None:
        """Load signing keys, creating the first one on a new relay."""
        keys = [k for k in await self._repo.list_signing_keys() if k.retired_at is None]
        if not keys:
            await self._repo.add_signing_key(_new_key())
            keys = [k for k in await self._repo.list_signing_keys() if k.retired_at is None]
        loaded = {
            k.kid: serialization.load_pem_private_key(k.private_pem, password=None) for k in keys
        }
        newest = keys[-1]
        self._signing = (newest.kid, loaded[newest.kid])  # type: ignore[assignment]
        self._verify_keys = {kid: key.public_key() for kid, key in loaded.items()}  # type: ignore[union-attr]
        self._last_reload = self._clock()

    async def rotate(self) -> SigningKey:
        """Add a new signing key; older keys still verify until retired."""
        key = _new_key()
        await self._repo.add_signing_key(key)
        await self.load()
        return key

    def jwks(self) -> dict[str, list[dict[str, str]]]:
        keys = []
        for kid, pub in self._verify_keys.items():
            jwk = jwt.algorithms.ECAlgorithm.to_jwk(pub, as_dict=True)
            keys.append({**jwk, "kid": kid, "use": "sig", "alg": "ES256"})
        return {"keys": keys}

    def issue_access_token(self, account: MachineAccount) -> IssuedAccessToken:
        assert self._signing is not None, "Identity.load() not called"
        kid, key = self._signing
        now = int(self._clock())
        claims = {
            "iss": self._issuer,
            "aud": AUDIENCE,
            "sub": account.id,
            "tenant": account.tenant_id,
            "scope": "push",
            "iat": now,
            "exp": now + self._access_ttl,
            "jti": uuid.uuid4().hex,
        }
        token = jwt.encode(claims, key, algorithm="ES256", headers={"kid": kid})
        return IssuedAccessToken(token, self._access_ttl)

    async def verify_access_token(self, token: str) -> AccessClaims:
        now = self._clock()
        cached = self._verified.get(token)
        if cached is not None:
            if cached.expires_at > now:
                return cached
            del self._verified[token]
            raise AuthError("invalid_token", "access token expired")
        try:
            kid = jwt.get_unverified_header(token).get("kid")
        except jwt.InvalidTokenError as exc:
            raise AuthError("invalid_token", "access token is not a JWT") from exc
        if kid not in self._verify_keys and now - self._last_reload > 5:
            await self.load()  # another relay process may have rotated keys
        public = self._verify_keys.get(kid)
        if public is None:
            raise AuthError("invalid_token", "access token signed by an unknown key")
        try:
            claims = jwt.decode(
                token,
                public,
                algorithms=["ES256"],
                audience=AUDIENCE,
                issuer=self._issuer,
                options={"require": ["exp", "iat", "sub", "aud", "iss"]},
                leeway=0,
            )
        except jwt.ExpiredSignatureError as exc:
            raise AuthError("invalid_token", "access token expired") from exc
        except jwt.InvalidTokenError as exc:
            raise AuthError("invalid_token", f"access token invalid: {exc}") from exc
        if claims["exp"] <= now:
            raise AuthError("invalid_token", "access token expired")
        result = AccessClaims(claims["sub"], claims.get("tenant", ""), float(claims["exp"]))
        if len(self._verified) >= _VERIFY_CACHE_MAX:
            self._verified.clear()
        self._verified[token] = result
        return result

    async def issue_refresh_token(self, account_id: str) -> str:
        token = REFRESH_PREFIX + secrets.token_urlsafe(32)
        await self._repo.add_refresh_token(
            RefreshToken(token_hash=digest(token), account_id=account_id, created_at=_now())
        )
        return token

    async def exchange_refresh_token(self, refresh_token: str) -> IssuedAccessToken:
        """OAuth ``refresh_token`` grant: refresh token in, access token out."""
        try:
            stored = await self._repo.get_refresh_token(digest(refresh_token))
        except NotFound as exc:
            raise AuthError("invalid_grant", "unknown refresh token") from exc
        if stored.revoked_at is not None:
            raise AuthError("invalid_grant", "refresh token has been revoked")
        account = await self._repo.get_machine_account(stored.account_id)
        if account.disabled_at is not None:
            raise AuthError("invalid_grant", "machine account is disabled")
        tenant = await self._repo.get_tenant(account.tenant_id)
        if tenant.status is TenantStatus.DISABLED:
            raise AuthError("invalid_grant", "tenant is disabled")
        return self.issue_access_token(account)

    def forget_account(self, account_id: str) -> None:
        """Drop cached verifications of an account's tokens (after it is disabled)."""
        self._verified = {t: c for t, c in self._verified.items() if c.account_id != account_id}


def _now() -> datetime:
    return datetime.now(UTC)
