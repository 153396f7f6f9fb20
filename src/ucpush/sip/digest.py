"""HTTP Digest authentication for SIP (RFC 3261 §22, RFC 7616, RFC 8760), sans-IO.

``DigestAuth`` issues challenges offering SHA-256 then MD5 (RFC 8760 §2.4: one challenge per
algorithm, most preferred first) with ``qop="auth"``, and checks ``Authorization`` /
``Proxy-Authorization`` credentials against the stored HA1 hashes. Nonces are stateless: the
issue time plus an HMAC of it under a server secret, so any node holding the secret can check
them; an expired but genuine nonce yields ``stale=true`` so the UA retries without asking the
user. The caller passes the current time; nothing here reads a clock.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import re
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from ucpush.sip.errors import SipParseError
from ucpush.sip.uri import parse_uri

MD5 = "MD5"
SHA256 = "SHA-256"
_HASHES = {MD5: "md5", SHA256: "sha256"}  # our names -> hashlib names
_HEX_LENGTH = {MD5: 32, SHA256: 64}

_TOKEN = r"[A-Za-z0-9\-.!%*_+`'~]+"
_QUOTED = r'"(?:[^"\\]|\\[\x00-\x7f])*"'
_SCHEME_RE = re.compile(rf"[ \t]*({_TOKEN})[ \t]+")
_PARAM_RE = re.compile(rf"[ \t]*({_TOKEN})[ \t]*=[ \t]*({_QUOTED}|{_TOKEN})[ \t]*")
_COMMA_RE = re.compile(r"[ \t]*,")
_NC_RE = re.compile(r"[0-9a-fA-F]{8}")
_HEX_RE = re.compile(r"[0-9a-fA-F]+")
_REQUIRED = ("username", "realm", "nonce", "uri", "response")
_TIMESTAMP_BYTES = 8
# Random per challenge: two UAs challenged in the same second must not share a nonce, or the
# second one's nc=1 would look like a replay of the first's.
_SALT_BYTES = 8
_MAC_BYTES = 16
# Clock skew tolerated between cluster nodes issuing and checking a nonce.
_SKEW_SECONDS = 30


class DigestParseError(ValueError):
    """An Authorization header that is not usable Digest credentials; ``reason`` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class DigestCredentials:
    """Parsed ``Authorization``/``Proxy-Authorization`` Digest credentials (values unquoted)."""

    username: str
    realm: str
    nonce: str
    uri: str
    response: str
    algorithm: str = MD5  # RFC 7616 §3.4: absent means MD5
    qop: str | None = None
    nc: str | None = None
    cnonce: str | None = None
    opaque: str | None = None
    userhash: bool = False


def _unquote(value: str) -> str:
    if value.startswith('"'):
        return re.sub(r"\\(.)", r"\1", value[1:-1], flags=re.DOTALL)
    return value


def parse_credentials(value: str) -> DigestCredentials:
    """Parse a Digest credentials header value. Raises only ``DigestParseError``."""
    m = _SCHEME_RE.match(value)
    if m is None or m.group(1).lower() != "digest":
        raise DigestParseError("not Digest credentials")
    params: dict[str, str] = {}
    pos = m.end()
    while True:
        p = _PARAM_RE.match(value, pos)
        if p is None:
            raise DigestParseError(f"malformed parameter near {value[pos : pos + 20]!r}")
        name = p.group(1).lower()
        if name in params:
            raise DigestParseError(f"duplicate parameter {name!r}")
        params[name] = _unquote(p.group(2))
        pos = p.end()
        if pos == len(value):
            break
        c = _COMMA_RE.match(value, pos)
        if c is None:
            raise DigestParseError(f"expected ',' near {value[pos : pos + 20]!r}")
        pos = c.end()
    missing = [name for name in _REQUIRED if name not in params]
    if missing:
        raise DigestParseError(f"missing {', '.join(missing)}")
    qop = params.get("qop")
    nc = params.get("nc")
    cnonce = params.get("cnonce")
    if qop is not None:
        if nc is None or cnonce is None:
            raise DigestParseError("qop given without nc and cnonce")
        if not _NC_RE.fullmatch(nc):
            raise DigestParseError("nc must be 8 hex digits")
    if not _HEX_RE.fullmatch(params["response"]):
        raise DigestParseError("response is not hex")
    userhash = params.get("userhash", "false").lower()
    if userhash not in ("true", "false"):
        raise DigestParseError("userhash must be true or false")
    return DigestCredentials(
        username=params["username"],
        realm=params["realm"],
        nonce=params["nonce"],
        uri=params["uri"],
        response=params["response"].lower(),
        algorithm=params.get("algorithm", MD5),
        qop=qop,
        nc=nc,
        cnonce=cnonce,
        opaque=params.get("opaque"),
        userhash=userhash == "true",
    )


def credentials_for(values: Iterable[str], realm: str) -> tuple[DigestCredentials, str] | None:
    """The credentials for ``realm`` among ``values`` (one Authorization or
    Proxy-Authorization header each; RFC 3261 §22.4 allows one set per realm) and the header
    value they came from; None when there are none. Raises ``DigestParseError`` when nothing
    usable is there but something malformed is."""
    error: DigestParseError | None = None
    for value in values:
        try:
            creds = parse_credentials(value)
        except DigestParseError as exc:
            error = error or exc
            continue
        if creds.realm == realm:
            return creds, value
    if error is not None:
        raise error
    return None


def _h(algorithm: str, text: str) -> str:
    return hashlib.new(_HASHES[algorithm], text.encode("utf-8")).hexdigest()


def compute_ha1(username: str, realm: str, password: str, algorithm: str) -> str:
    """H(username:realm:password), the secret a registrar stores instead of the password."""
    return _h(algorithm, f"{username}:{realm}:{password}")


def compute_response(
    ha1: str,
    algorithm: str,
    *,
    method: str,
    uri: str,
    nonce: str,
    qop: str | None = None,
    nc: str | None = None,
    cnonce: str | None = None,
) -> str:
    """The ``response`` value (RFC 7616 §3.4.1; RFC 2069 form when ``qop`` is None)."""
    ha2 = _h(algorithm, f"{method}:{uri}")
    if qop is None:
        return _h(algorithm, f"{ha1}:{nonce}:{ha2}")
    return _h(algorithm, f"{ha1}:{nonce}:{nc}:{cnonce}:{qop}:{ha2}")


class Outcome(StrEnum):
    OK = "ok"
    REALM = "wrong realm"
    ALGORITHM = "unsupported algorithm"
    QOP = "unsupported or missing qop"
    USERHASH = "userhash not supported"
    URI = "digest uri does not match the Request-URI"
    NONCE = "nonce not issued by us"
    STALE = "nonce expired"
    REPLAY = "nonce count reused"
    RESPONSE = "wrong response (bad password)"
    NO_HA1 = "no stored hash for the algorithm"


@dataclass(frozen=True, slots=True)
class Verdict:
    outcome: Outcome

    @property
    def ok(self) -> bool:
        return self.outcome is Outcome.OK

    @property
    def stale(self) -> bool:
        """Send a new challenge with ``stale=true``: the UA only needs a fresh nonce."""
        return self.outcome is Outcome.STALE

    @property
    def reason(self) -> str:
        return self.outcome.value


def _uri_matches(digest_uri: str, request_uri: str) -> bool:
    if digest_uri == request_uri:
        return True
    try:
        return parse_uri(digest_uri).equivalent(parse_uri(request_uri))
    except SipParseError:
        return False


class DigestAuth:
    """Challenges and verification for one realm.

    ``secret`` keys the nonce HMAC (share it across the nodes of a cluster). ``nonce_ttl`` is how
    long a nonce is accepted. Used ``nc`` values are remembered per nonce (up to ``replay_cache``
    nonces, in memory) so a captured request cannot be replayed with the same count on this node.
    """

    def __init__(
        self,
        secret: bytes,
        realm: str,
        *,
        nonce_ttl: int = 300,
        algorithms: tuple[str, ...] = (SHA256, MD5),
        require_qop: bool = True,
        replay_cache: int = 10000,
    ) -> None:
        if not secret:
            raise ValueError("empty digest secret")
        unknown = [a for a in algorithms if a not in _HASHES]
        if unknown or not algorithms:
            raise ValueError(f"unsupported digest algorithms {unknown}")
        self.realm = realm
        self.algorithms = algorithms
        self.nonce_ttl = nonce_ttl
        self._secret = secret
        self._require_qop = require_qop
        self._replay_cache = replay_cache
        self._counts: OrderedDict[str, int] = OrderedDict()

    def _mac(self, stamp: bytes) -> bytes:
        message = stamp + self.realm.encode("utf-8")
        return hmac.new(self._secret, message, hashlib.sha256).digest()[:_MAC_BYTES]

    def make_nonce(self, now: datetime) -> str:
        stamp = int(now.timestamp()).to_bytes(_TIMESTAMP_BYTES, "big") + os.urandom(_SALT_BYTES)
        return base64.urlsafe_b64encode(stamp + self._mac(stamp)).decode("ascii").rstrip("=")

    def _nonce_age(self, nonce: str, now: datetime) -> int | None:
        """Seconds since we issued ``nonce``; None if we did not issue it."""
        try:
            raw = base64.urlsafe_b64decode(nonce + "=" * (-len(nonce) % 4))
        except (binascii.Error, ValueError):
            return None
        signed = _TIMESTAMP_BYTES + _SALT_BYTES
        if len(raw) != signed + _MAC_BYTES:
            return None
        stamp, mac = raw[:signed], raw[signed:]
        if not hmac.compare_digest(mac, self._mac(stamp)):
            return None
        age = int(now.timestamp()) - int.from_bytes(stamp[:_TIMESTAMP_BYTES], "big")
        return None if age < -_SKEW_SECONDS else age

    def challenge(
        self, now: datetime, *, stale: bool = False, proxy: bool = False
    ) -> list[tuple[str, str]]:
        """Challenge headers, one per algorithm, most preferred first, sharing one nonce:
        ``WWW-Authenticate`` for a 401, or ``Proxy-Authenticate`` for a 407 when ``proxy``
        (the UA then answers in ``Authorization`` or ``Proxy-Authorization``)."""
        name = "Proxy-Authenticate" if proxy else "WWW-Authenticate"
        nonce = self.make_nonce(now)
        realm = self.realm.replace("\\", "\\\\").replace('"', '\\"')
        tail = ", stale=true" if stale else ""
        return [
            (
                name,
                f'Digest realm="{realm}", nonce="{nonce}", algorithm={algorithm}, qop="auth"{tail}',
            )
            for algorithm in self.algorithms
        ]

    def verify(
        self,
        credentials: DigestCredentials,
        *,
        method: str,
        request_uri: str,
        ha1: Mapping[str, str],
        now: datetime,
    ) -> Verdict:
        """Check ``credentials`` for a request; ``ha1`` maps algorithm names to the user's
        stored HA1 hex. The response is compared in constant time."""
        c = credentials
        if c.realm != self.realm:
            return Verdict(Outcome.REALM)
        algorithm = next((a for a in self.algorithms if a.lower() == c.algorithm.lower()), None)
        if algorithm is None:
            return Verdict(Outcome.ALGORITHM)
        if c.userhash:
            return Verdict(Outcome.USERHASH)
        if (c.qop is None and self._require_qop) or (c.qop is not None and c.qop != "auth"):
            return Verdict(Outcome.QOP)
        if not _uri_matches(c.uri, request_uri):
            return Verdict(Outcome.URI)
        age = self._nonce_age(c.nonce, now)
        if age is None:
            return Verdict(Outcome.NONCE)
        stored = ha1.get(algorithm, "")
        if len(stored) != _HEX_LENGTH[algorithm]:
            return Verdict(Outcome.NO_HA1)
        expected = compute_response(
            stored.lower(),
            algorithm,
            method=method,
            uri=c.uri,
            nonce=c.nonce,
            qop=c.qop,
            nc=c.nc,
            cnonce=c.cnonce,
        )
        if not hmac.compare_digest(expected.encode(), c.response.encode()):
            return Verdict(Outcome.RESPONSE)
        # Only after the response proved the password: a stale nonce with a wrong password
        # must not invite a silent retry.
        if age > self.nonce_ttl:
            return Verdict(Outcome.STALE)
        if c.nc is not None and not self._count_fresh(c.nonce, int(c.nc, 16)):
            return Verdict(Outcome.REPLAY)
        return Verdict(Outcome.OK)

    def _count_fresh(self, nonce: str, count: int) -> bool:
        """Remember the highest nc seen per nonce; a count not above it is a replay."""
        last = self._counts.get(nonce, 0)
        if count <= last:
            return False
        self._counts[nonce] = count
        self._counts.move_to_end(nonce)
        while len(self._counts) > self._replay_cache:
            self._counts.popitem(last=False)
        return True
