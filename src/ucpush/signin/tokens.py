"""Client access tokens: JWT signed with HS256 and a per-group secret.

HS256 rather than ES256: only the nodes of one group issue and check these tokens (the sign-in
API and the local push service), they share one secret file, and nothing outside needs to verify
them, so a public key would buy nothing. Claims: ``iss``, ``sub`` (end-user id), ``did`` (the
device id given at sign-in, may be empty), ``iat``, ``exp``, ``jti``.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import jwt

_ALG = "HS256"


class TokenError(Exception):
    """The access token is unusable; ``expired`` tells an old token from a bad one."""

    def __init__(self, message: str, *, expired: bool = False) -> None:
        super().__init__(message)
        self.expired = expired


@dataclass(frozen=True, slots=True)
class AccessClaims:
    user_id: str
    device_id: str
    issued_at: float  # epoch seconds
    expires_at: int  # epoch seconds


class TokenSigner:
    def __init__(self, secret: bytes, issuer: str) -> None:
        self._secret = secret
        self._issuer = issuer

    def issue(self, user_id: str, device_id: str, now: float, lifetime_seconds: int) -> str:
        claims = {
            "iss": self._issuer,
            "sub": user_id,
            "did": device_id,
            # Milliseconds, so a token issued just after a sign-out is told from one before it.
            "iat": round(now, 3),
            "exp": int(now) + lifetime_seconds,
            "jti": uuid.uuid4().hex,
        }
        return jwt.encode(claims, self._secret, algorithm=_ALG)

    def verify(self, token: str, now: float) -> AccessClaims:
        """Check signature, issuer and expiry against ``now`` (epoch seconds)."""
        try:
            claims = jwt.decode(
                token,
                self._secret,
                algorithms=[_ALG],
                issuer=self._issuer,
                # Expiry is checked below against the caller's clock, not the wall clock.
                options={
                    "verify_exp": False,
                    "verify_iat": False,
                    "require": ["sub", "iat", "exp"],
                },
            )
        except jwt.InvalidTokenError as exc:
            raise TokenError(f"invalid access token: {exc}") from None
        exp, sub, iat, did = claims["exp"], claims["sub"], claims["iat"], claims.get("did", "")
        if not (
            isinstance(exp, int)
            and isinstance(iat, int | float)
            and isinstance(sub, str)
            and isinstance(did, str)
        ):
            raise TokenError("invalid access token: bad claims")
        if now >= exp:
            raise TokenError("access token expired", expired=True)
        return AccessClaims(sub, did, float(iat), exp)
