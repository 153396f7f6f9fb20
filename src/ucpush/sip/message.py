"""SIP message model, parser and serializer (RFC 3261 §7, §20, §25).

Headers are kept as an ordered list of (name, value) strings with names normalised to their
full canonical form; list-valued headers (Via, Contact, Route, ...) are split on top-level
commas so each entry holds one value. Typed accessors (``vias``, ``from_``, ``cseq``, ...) parse
on demand. ``parse_message`` validates everything a proxy relies on, so a message that parses
can be routed without further checks.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any, TypeVar

from ucpush.sip.errors import SipParseError
from ucpush.sip.uri import (
    QUOTED,
    TOKEN,
    URI,
    NameAddr,
    Params,
    SipURI,
    check_host,
    format_params,
    param_get,
    param_has,
    param_set,
    parse_name_addr,
    parse_params,
    parse_port,
    parse_uri,
    unquote,
)

_T = TypeVar("_T")

SIP_VERSION = "SIP/2.0"
MAGIC_COOKIE = "z9hG4bK"
# RFC 3261 §8.1.1.6, §20.22: Max-Forwards is 0-255; CSeq numbers must stay below 2**31.
MAX_FORWARDS_LIMIT = 255
CSEQ_LIMIT = 2**31
DELTA_SECONDS_LIMIT = 2**32 - 1

_COMPACT = {
    "i": "Call-ID",
    "m": "Contact",
    "f": "From",
    "t": "To",
    "v": "Via",
    "l": "Content-Length",
    "c": "Content-Type",
    "k": "Supported",
    "e": "Content-Encoding",
    "s": "Subject",
    "o": "Event",
    "u": "Allow-Events",
    "x": "Session-Expires",
    "r": "Refer-To",
    "b": "Referred-By",
    "a": "Accept-Contact",
    "j": "Reject-Contact",
    "d": "Request-Disposition",
    "y": "Identity",
}
_KNOWN = [
    "Accept",
    "Accept-Contact",
    "Accept-Encoding",
    "Accept-Language",
    "Alert-Info",
    "Allow",
    "Allow-Events",
    "Authentication-Info",
    "Authorization",
    "Call-ID",
    "Call-Info",
    "Contact",
    "Content-Disposition",
    "Content-Encoding",
    "Content-Language",
    "Content-Length",
    "Content-Type",
    "CSeq",
    "Date",
    "Error-Info",
    "Event",
    "Expires",
    "Feature-Caps",
    "Flow-Timer",
    "From",
    "Identity",
    "In-Reply-To",
    "Max-Forwards",
    "Min-Expires",
    "Min-SE",
    "MIME-Version",
    "Organization",
    "P-Asserted-Identity",
    "P-Preferred-Identity",
    "Path",
    "Priority",
    "Privacy",
    "Proxy-Authenticate",
    "Proxy-Authorization",
    "Proxy-Require",
    "RAck",
    "Reason",
    "Record-Route",
    "Refer-To",
    "Referred-By",
    "Reject-Contact",
    "Replaces",
    "Reply-To",
    "Request-Disposition",
    "Require",
    "Retry-After",
    "Route",
    "RSeq",
    "Security-Client",
    "Security-Server",
    "Security-Verify",
    "Server",
    "Service-Route",
    "Session-Expires",
    "SIP-ETag",
    "SIP-If-Match",
    "Subject",
    "Subscription-State",
    "Supported",
    "Timestamp",
    "To",
    "Unsupported",
    "User-Agent",
    "Via",
    "Warning",
    "WWW-Authenticate",
]
_CANONICAL = {name.lower(): name for name in _KNOWN} | {k: v for k, v in _COMPACT.items()}
# Headers whose comma-separated values are independent entries (RFC 3261 §7.3.1). Never the
# auth headers (their params are comma-separated), other Proxy-* headers, or Date (its value
# contains a comma).
_ADDRESS_LISTS = frozenset(
    [
        "via",
        "contact",
        "route",
        "record-route",
        "path",
        "service-route",
        "p-asserted-identity",
        "p-preferred-identity",
    ]
)
_LISTS = _ADDRESS_LISTS | frozenset(
    [
        "accept",
        "accept-encoding",
        "accept-language",
        "alert-info",
        "allow",
        "allow-events",
        "call-info",
        "content-encoding",
        "content-language",
        "error-info",
        "in-reply-to",
        "reason",
        "require",
        "supported",
        "unsupported",
        "warning",
        "security-client",
        "security-server",
        "security-verify",
        "accept-contact",
        "reject-contact",
    ]
)
_REQUIRED = ("From", "To", "Call-ID", "CSeq")
_AT_MOST_ONCE = (*_REQUIRED, "Max-Forwards", "Content-Length", "Content-Type", "Expires")

_HEADER_LINE_RE = re.compile(rf"({TOKEN})[ \t]*:[ \t]*(.*)", re.DOTALL)
_HEAD_END_RE = re.compile(rb"\r?\n\r?\n")
_REQUEST_LINE_RE = re.compile(rf"({TOKEN}) ([^ \t]+) ([A-Za-z]+/[0-9]+\.[0-9]+)")
_METHOD_PREFIX_RE = re.compile(rf"({TOKEN}) ")
_STATUS_LINE_RE = re.compile(r"([A-Za-z]+/[0-9]+\.[0-9]+) ([0-9]{3})(?: (.*))?", re.DOTALL)
_VIA_RE = re.compile(
    rf"[ \t]*({TOKEN})[ \t]*/[ \t]*({TOKEN})[ \t]*/[ \t]*({TOKEN})[ \t]+"
    r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9\-_.]+)(?:[ \t]*:[ \t]*([0-9]+))?"
)
_CSEQ_RE = re.compile(rf"[ \t]*([0-9]+)[ \t]+({TOKEN})[ \t]*")
_DIGITS_RE = re.compile(r"[ \t]*([0-9]+)[ \t]*")
_WORD = r"[A-Za-z0-9\-.!%*_+`'~()<>:\\\"/\[\]?{}]+"
_CALL_ID_RE = re.compile(rf"{_WORD}(?:@{_WORD})?")
_DATE_RE = re.compile(
    r"(Mon|Tue|Wed|Thu|Fri|Sat|Sun), ([0-9]{2}) "
    r"(Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) ([0-9]{4}) "
    r"([0-9]{2}):([0-9]{2}):([0-9]{2}) GMT"
)
_MONTHS = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]
_QUOTED_RE = re.compile(QUOTED)


def canonical_name(name: str) -> str:
    """Full, canonically cased header name; compact forms expanded, unknown names kept."""
    return _CANONICAL.get(name.lower(), name)


def _key(name: str) -> str:
    """Lookup key of a header name (the accessors' own spellings are precomputed)."""
    return _KEYS.get(name) or canonical_name(name).lower()


_KEYS = {name: name.lower() for name in _KNOWN}
_ESSENTIAL_HEADERS = frozenset({"via", "from", "to", "call-id", "cseq"})
_ESSENTIAL_TYPED = frozenset({"vias", "from", "to", "cseq"})
# SipMessage's typed cache entries and the header each is parsed from.
_TYPED_FROM = {
    "vias": "via",
    "from": "from",
    "to": "to",
    "cseq": "cseq",
    "contacts": "contact",
    "routes": "route",
    "record-routes": "record-route",
}


def split_list(value: str) -> list[str]:
    """Split a header value on commas outside quoted strings and <...>."""
    if "," not in value:
        return [value]
    if '"' not in value and "<" not in value:
        return [part.strip(" \t") for part in value.split(",")]
    out: list[str] = []
    start = 0
    depth = 0
    i = 0
    n = len(value)
    while i < n:
        ch = value[i]
        if ch == '"':
            m = _QUOTED_RE.match(value, i)
            if m is None:
                raise SipParseError("Unterminated quoted string in header value")
            i = m.end()
            continue
        if ch == "<":
            depth += 1
        elif ch == ">" and depth:
            depth -= 1
        elif ch == "," and not depth:
            out.append(value[start:i].strip(" \t"))
            start = i + 1
        i += 1
    out.append(value[start:].strip(" \t"))
    return out


class Headers:
    """Ordered, case-insensitive multi-map of header fields."""

    __slots__ = ("_changed", "_items", "_version")

    def __init__(self, items: Iterable[tuple[str, str]] = ()) -> None:
        self._items: list[tuple[str, str, str]] = []
        # Bumped on every change; messages key their typed cache on it. ``_changed[v]`` is the
        # header (key) change ``v`` touched, so a message drops only what that change affects
        # (stamping ``received`` on the top Via must not re-parse From, To and Contact).
        self._version = 0
        self._changed: list[str] = []
        for name, value in items:
            self.add(name, value)

    def _bump(self, key: str) -> None:
        self._version += 1
        self._changed.append(key)

    def add(self, name: str, value: str) -> None:
        name = canonical_name(name)
        key = name.lower()
        self._bump(key)
        self._items.append((key, name, value))

    def prepend(self, name: str, value: str) -> None:
        """Insert before the first header of that name (top Via, top Route), else first."""
        name = canonical_name(name)
        key = name.lower()
        self._bump(key)
        index = next((i for i, item in enumerate(self._items) if item[0] == key), 0)
        self._items.insert(index, (key, name, value))

    def get(self, name: str) -> str | None:
        key = _key(name)
        for k, _, value in self._items:
            if k == key:
                return value
        return None

    def get_all(self, name: str) -> list[str]:
        key = _key(name)
        return [value for k, _, value in self._items if k == key]

    def set(self, name: str, value: str) -> None:
        """Replace every header of that name by one, at the position of the first."""
        name = canonical_name(name)
        key = name.lower()
        self._bump(key)
        out: list[tuple[str, str, str]] = []
        done = False
        for item in self._items:
            if item[0] == key:
                if not done:
                    out.append((key, name, value))
                    done = True
            else:
                out.append(item)
        if not done:
            out.append((key, name, value))
        self._items = out

    def remove(self, name: str) -> int:
        key = _key(name)
        self._bump(key)
        before = len(self._items)
        self._items = [item for item in self._items if item[0] != key]
        return before - len(self._items)

    def replace_first(self, name: str, value: str) -> None:
        """Replace the first value of that name in place (e.g. the top Via), else append."""
        name = canonical_name(name)
        key = name.lower()
        self._bump(key)
        for i, item in enumerate(self._items):
            if item[0] == key:
                self._items[i] = (key, item[1], value)
                return
        self._items.append((key, name, value))

    def pop_first(self, name: str) -> str | None:
        """Remove and return the first value of that name (stripping top Via or Route)."""
        key = _key(name)
        self._bump(key)
        for i, item in enumerate(self._items):
            if item[0] == key:
                del self._items[i]
                return item[2]
        return None

    def count(self, name: str) -> int:
        key = _key(name)
        return sum(1 for item in self._items if item[0] == key)

    def copy(self) -> Headers:
        new = Headers()
        new._items = list(self._items)
        return new

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.get(name) is not None

    def __iter__(self) -> Iterator[tuple[str, str]]:
        return ((name, value) for _, name, value in self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Headers):
            return NotImplemented
        return [(k, v) for k, _, v in self._items] == [(k, v) for k, _, v in other._items]

    def __repr__(self) -> str:
        return f"Headers({list(self)!r})"


@dataclass(frozen=True, slots=True)
class Via:
    transport: str
    host: str
    port: int | None = None
    params: Params = ()
    protocol: str = SIP_VERSION

    def __str__(self) -> str:
        port = "" if self.port is None else f":{self.port}"
        return f"{self.protocol}/{self.transport} {self.host}{port}{format_params(self.params)}"

    @property
    def branch(self) -> str | None:
        return param_get(self.params, "branch")

    @property
    def received(self) -> str | None:
        return param_get(self.params, "received")

    @property
    def has_rport(self) -> bool:
        return param_has(self.params, "rport")

    @property
    def rport(self) -> int | None:
        """The filled-in rport (RFC 3581); None if absent or still empty."""
        value = param_get(self.params, "rport")
        return int(value) if value and value.isdigit() and len(value) <= 5 else None

    @property
    def maddr(self) -> str | None:
        return param_get(self.params, "maddr")

    @property
    def ttl(self) -> int | None:
        value = param_get(self.params, "ttl")
        return int(value) if value and value.isdigit() and len(value) <= 3 else None

    @property
    def reliable(self) -> bool:
        return self.transport not in ("UDP", "DTLS-UDP")

    def param(self, name: str) -> str | None:
        return param_get(self.params, name)

    def with_param(self, name: str, value: str | None) -> Via:
        return replace(self, params=param_set(self.params, name, value))


def parse_via(value: str) -> Via:
    m = _VIA_RE.match(value)
    if m is None:
        raise SipParseError(f"Malformed Via {value[:60]!r}")
    name, version, transport, host, port_text = m.groups()
    if host[0] == "[":  # hostnames are already constrained by the Via pattern
        check_host(host, "Via")
    port = None if port_text is None else parse_port(port_text, "Via")
    params = parse_params(value, m.end(), what="Via")
    if param_has(params, "branch") and not param_get(params, "branch"):
        raise SipParseError("Empty Via branch")
    return Via(transport.upper(), host, port, params, f"{name.upper()}/{version}")


class Contact(NameAddr):
    """A Contact value, with the registration parameters as typed properties."""

    __slots__ = ()

    @property
    def q(self) -> float | None:
        value = self.param("q")
        try:
            return None if value is None else float(value)
        except ValueError:
            return None

    @property
    def expires(self) -> int | None:
        """``expires`` parameter; overlarge values are clamped to 2**32-1 (RFC 3261 §10.2.1.1)."""
        value = self.param("expires")
        if value is None or not value.isdigit():
            return None
        return DELTA_SECONDS_LIMIT if len(value) > 10 else min(int(value), DELTA_SECONDS_LIMIT)

    @property
    def instance(self) -> str | None:
        """``+sip.instance`` (RFC 5626) unquoted, e.g. ``<urn:uuid:...>``."""
        value = self.param("+sip.instance")
        return None if value is None else unquote(value)

    @property
    def reg_id(self) -> int | None:
        value = self.param("reg-id")
        return int(value) if value and value.isdigit() and len(value) <= 10 else None


def parse_contact(value: str) -> Contact:
    na = parse_name_addr(value, "Contact")
    return Contact(na.uri, na.display_name, na.params)


@dataclass(frozen=True, slots=True)
class CSeq:
    seq: int
    method: str

    def __str__(self) -> str:
        return f"{self.seq} {self.method}"


def parse_cseq(value: str) -> CSeq:
    m = _CSEQ_RE.fullmatch(value)
    if m is None:
        raise SipParseError(f"Malformed CSeq {value[:40]!r}")
    digits = m.group(1)
    if len(digits) > 10 or int(digits) >= CSEQ_LIMIT:
        raise SipParseError("CSeq number too large")
    return CSeq(int(digits), m.group(2))


def _parse_int(value: str, what: str, limit: int) -> int:
    m = _DIGITS_RE.fullmatch(value)
    if m is None:
        raise SipParseError(f"Malformed {what} {value[:20]!r}")
    digits = m.group(1).lstrip("0") or "0"
    if len(digits) > 10 or int(digits) > limit:
        raise SipParseError(f"{what} too large")
    return int(digits)


def parse_date(value: str) -> datetime:
    m = _DATE_RE.fullmatch(value.strip(" \t"))
    if m is None:
        raise SipParseError("Malformed Date (must be RFC 1123 in GMT)")
    _, day, month, year, hh, mm, ss = m.groups()
    try:
        return datetime(
            int(year), _MONTHS.index(month) + 1, int(day), int(hh), int(mm), int(ss), tzinfo=UTC
        )
    except ValueError:
        raise SipParseError("Malformed Date (no such time)") from None


class SipMessage:
    """Common part of requests and responses."""

    __slots__ = ("_cache", "body", "headers")

    def __init__(
        self, headers: Headers | Iterable[tuple[str, str]] = (), body: bytes = b""
    ) -> None:
        self.headers = headers if isinstance(headers, Headers) else Headers(headers)
        self.body = body
        self._cache: dict[str, Any] = {}

    def start_line(self) -> str:
        raise NotImplementedError

    def serialize(self) -> bytes:
        """Wire form; Content-Length always states the real body length."""
        lines = [self.start_line()]
        length_done = False
        for key, name, value in self.headers._items:
            if key == "content-length":
                if length_done:
                    continue
                value = str(len(self.body))
                length_done = True
            lines.append(f"{name}: {value}")
        if not length_done:
            lines.append(f"Content-Length: {len(self.body)}")
        lines.append("\r\n")
        return "\r\n".join(lines).encode("utf-8", "surrogateescape") + self.body

    __bytes__ = serialize

    def _one(self, name: str) -> str:
        value = self.headers.get(name)
        if value is None:
            raise SipParseError(f"Missing {name} header")
        return value

    def _cached(self, key: str, build: Callable[[], _T]) -> _T:
        """Typed values are parsed once per version of the headers: a proxy reads Via, CSeq and
        From/To many times (transaction keys, routing), and parsing already did it once."""
        headers = self.headers
        cache = self._cache
        if cache.get("") is not headers:
            cache.clear()
            cache[""] = headers
            cache[" v"] = headers._version
        elif cache[" v"] != headers._version:
            changed = set(headers._changed[cache[" v"] :])
            for typed, header in _TYPED_FROM.items():
                if header in changed:
                    cache.pop(typed, None)
            cache[" v"] = headers._version
        try:
            return cache[key]  # type: ignore[no-any-return]
        except KeyError:
            value = cache[key] = build()
            return value

    def _adopt_cache(self, original: SipMessage) -> None:
        """A copy starts with the original's parsed values (all immutable), as far as they
        are current: its headers are equal."""
        cache = original._cache
        if cache.get("") is original.headers and cache[" v"] == original.headers._version:
            self._cache = dict(cache)
            self._cache[""] = self.headers
            self._cache[" v"] = self.headers._version

    @property
    def vias(self) -> list[Via]:
        return list(
            self._cached("vias", lambda: tuple(map(parse_via, self.headers.get_all("Via"))))
        )

    @property
    def top_via(self) -> Via:
        vias = self._cached("vias", lambda: tuple(map(parse_via, self.headers.get_all("Via"))))
        if not vias:
            raise SipParseError("Missing Via header")
        return vias[0]

    @property
    def from_(self) -> NameAddr:
        return self._cached("from", lambda: parse_name_addr(self._one("From"), "From"))

    @property
    def to(self) -> NameAddr:
        return self._cached("to", lambda: parse_name_addr(self._one("To"), "To"))

    @property
    def call_id(self) -> str:
        return self._one("Call-ID")

    @property
    def cseq(self) -> CSeq:
        return self._cached("cseq", lambda: parse_cseq(self._one("CSeq")))

    @property
    def max_forwards(self) -> int | None:
        value = self.headers.get("Max-Forwards")
        return None if value is None else _parse_int(value, "Max-Forwards", MAX_FORWARDS_LIMIT)

    @property
    def content_length(self) -> int | None:
        value = self.headers.get("Content-Length")
        return None if value is None else _parse_int(value, "Content-Length", 2**31)

    @property
    def content_type(self) -> str | None:
        return self.headers.get("Content-Type")

    @property
    def contact_wildcard(self) -> bool:
        """``Contact: *`` (REGISTER removing every binding)."""
        return self.headers.get_all("Contact") == ["*"]

    @property
    def contacts(self) -> list[Contact]:
        return list(self._cached("contacts", self._parse_contacts))

    def _parse_contacts(self) -> tuple[Contact, ...]:
        values = self.headers.get_all("Contact")
        if values == ["*"]:
            return ()
        if "*" in values:
            raise SipParseError("Contact '*' must be the only Contact")
        return tuple(map(parse_contact, values))

    @property
    def routes(self) -> list[NameAddr]:
        return list(self._cached("routes", lambda: self._name_addrs("Route")))

    @property
    def record_routes(self) -> list[NameAddr]:
        return list(self._cached("record-routes", lambda: self._name_addrs("Record-Route")))

    def _name_addrs(self, name: str) -> tuple[NameAddr, ...]:
        return tuple(parse_name_addr(v, name) for v in self.headers.get_all(name))

    @property
    def expires(self) -> int | None:
        """Expires header; overlarge values are clamped to 2**32-1."""
        value = self.headers.get("Expires")
        if value is None:
            return None
        m = _DIGITS_RE.fullmatch(value)
        if m is None:
            raise SipParseError(f"Malformed Expires {value[:20]!r}")
        digits = m.group(1).lstrip("0") or "0"
        return DELTA_SECONDS_LIMIT if len(digits) > 10 else min(int(digits), DELTA_SECONDS_LIMIT)

    @property
    def date(self) -> datetime | None:
        value = self.headers.get("Date")
        return None if value is None else parse_date(value)

    def _validate(self) -> None:
        """Check every header a proxy or the transaction layer relies on."""
        counts: dict[str, int] = {}
        for key, _, _ in self.headers._items:
            counts[key] = counts.get(key, 0) + 1
        for name in _AT_MOST_ONCE:
            count = counts.get(name.lower(), 0)
            if count > 1:
                raise SipParseError(f"Multiple {name} headers")
            if count == 0 and name in _REQUIRED:
                raise SipParseError(f"Missing {name} header")
        self.top_via  # noqa: B018  (each accessor parses, validates and caches)
        self.from_  # noqa: B018
        self.to  # noqa: B018
        if not _CALL_ID_RE.fullmatch(self.call_id):
            raise SipParseError("Malformed Call-ID")
        self.cseq  # noqa: B018
        if "max-forwards" in counts:
            self.max_forwards  # noqa: B018
        if "contact" in counts:
            self.contacts  # noqa: B018
        if "route" in counts:
            self.routes  # noqa: B018
        if "record-route" in counts:
            self.record_routes  # noqa: B018
        if "date" in counts:
            self.date  # noqa: B018


class SipRequest(SipMessage):
    __slots__ = ("method", "uri")

    def __init__(
        self,
        method: str,
        uri: URI | str,
        headers: Headers | Iterable[tuple[str, str]] = (),
        body: bytes = b"",
    ) -> None:
        super().__init__(headers, body)
        self.method = method
        self.uri = parse_uri(uri) if isinstance(uri, str) else uri

    def start_line(self) -> str:
        return f"{self.method} {self.uri} {SIP_VERSION}"

    def copy(self) -> SipRequest:
        out = SipRequest(self.method, self.uri, self.headers.copy(), self.body)
        out._adopt_cache(self)
        return out

    def essentials(self) -> SipRequest:
        """The request with only Via, From, To, Call-ID and CSeq (what answering it needs),
        no body: a finished UDP transaction keeps it for 32 s (Timer J), and at thousands of
        requests a second whole requests would cost hundreds of megabytes."""
        out = SipRequest(self.method, self.uri)
        out.headers._items = [i for i in self.headers._items if i[0] in _ESSENTIAL_HEADERS]
        cache = self._cache
        if cache.get("") is self.headers and cache[" v"] == self.headers._version:
            out._cache = {k: v for k, v in cache.items() if k in _ESSENTIAL_TYPED}
            out._cache[""] = out.headers
            out._cache[" v"] = out.headers._version
        return out

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SipRequest):
            return NotImplemented
        return (self.method, self.uri, self.headers, self.body) == (
            other.method,
            other.uri,
            other.headers,
            other.body,
        )

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"<SipRequest {self.method} {self.uri}>"

    def _validate(self) -> None:
        super()._validate()
        if isinstance(self.uri, SipURI) and self.uri.headers:
            raise SipParseError("Request-URI must not contain headers")
        if self.cseq.method != self.method:
            raise SipParseError("CSeq method does not match request method")


class SipResponse(SipMessage):
    __slots__ = ("reason", "status")

    def __init__(
        self,
        status: int,
        reason: str = "",
        headers: Headers | Iterable[tuple[str, str]] = (),
        body: bytes = b"",
    ) -> None:
        super().__init__(headers, body)
        self.status = status
        self.reason = reason

    def start_line(self) -> str:
        return f"{SIP_VERSION} {self.status} {self.reason}"

    @property
    def provisional(self) -> bool:
        return self.status < 200

    def copy(self) -> SipResponse:
        out = SipResponse(self.status, self.reason, self.headers.copy(), self.body)
        out._adopt_cache(self)
        return out

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SipResponse):
            return NotImplemented
        return (self.status, self.reason, self.headers, self.body) == (
            other.status,
            other.reason,
            other.headers,
            other.body,
        )

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"<SipResponse {self.status} {self.reason}>"


def find_head_end(data: bytes | bytearray, start: int = 0) -> tuple[int, int] | None:
    """(end of the header section, start of the body), or None if not yet complete."""
    i = data.find(b"\r\n\r\n", start)
    if i >= 0 and data.find(b"\n\n", start, i + 3) < 0 and data.find(b"\n\r\n", start, i + 3) < 0:
        return i, i + 4  # the common all-CRLF case, without the slower regex scan
    m = _HEAD_END_RE.search(data, start)
    return None if m is None else (m.start(), m.end())


def _name_info(name: str) -> tuple[str, str, bool, bool]:
    """(key, canonical name, split on commas, empty elements are errors) for a header name
    as written; memoised for the few spellings real traffic uses."""
    info = _NAME_INFO.get(name)
    if info is None:
        full = _CANONICAL.get(name.lower(), name)
        key = full.lower()
        info = (key, full, key in _LISTS, key in _ADDRESS_LISTS)
        if len(_NAME_INFO) < 2048:  # bounded: unknown names may be attacker-chosen
            _NAME_INFO[name] = info
    return info


_NAME_INFO: dict[str, tuple[str, str, bool, bool]] = {}


def _parse_header_lines(lines: list[str]) -> Headers:
    fields: list[list[str]] = []
    for line in lines:
        if line[:1] in (" ", "\t"):
            # Folded continuation (LWS): joins the previous field with a single space.
            if not fields:
                raise SipParseError("Continuation line before the first header")
            prev = fields[-1][1]
            more = line.strip(" \t")
            fields[-1][1] = f"{prev} {more}" if prev and more else prev or more
            continue
        m = _HEADER_LINE_RE.fullmatch(line)
        if m is None:
            raise SipParseError(f"Malformed header line {line[:40]!r}")
        fields.append([m.group(1), m.group(2).rstrip(" \t")])
    headers = Headers()
    items = headers._items
    for name, value in fields:
        key, full, is_list, is_address = _name_info(name)
        if is_list and value:
            for part in split_list(value):
                if part:
                    items.append((key, full, part))
                elif is_address:
                    raise SipParseError(f"Empty element in {full} header")
        else:
            items.append((key, full, value))
    return headers


def _partial_headers(headers: Headers) -> Headers | None:
    """The headers a response to a broken request needs, if they are usable: Vias are copied
    as written, but the top one must parse since the response is routed by it."""
    vias = headers.get_all("Via")
    if not vias or any(headers.count(name) != 1 for name in _REQUIRED):
        return None
    out = Headers(("Via", value) for value in vias)
    for name in _REQUIRED:
        out.add(name, headers.get(name) or "")
    try:
        parse_via(vias[0])
        parse_name_addr(out.get("From") or "", "From")
        parse_name_addr(out.get("To") or "", "To")
        parse_cseq(out.get("CSeq") or "")
    except SipParseError:
        return None
    return out


def parse_message(data: bytes, *, stream: bool = False) -> SipRequest | SipResponse:
    """Parse one complete message.

    Datagram semantics by default: Content-Length is optional and octets past it are ignored
    (RFC 3261 §18.3). With ``stream=True`` Content-Length is mandatory and must match exactly.
    """
    start = 0
    while data.startswith(b"\r\n", start) or data.startswith(b"\n", start):
        start += 2 if data[start] == 13 else 1  # leading CRLFs are ignored (§7.5)
    ends = find_head_end(data, start)
    if ends is None:
        raise SipParseError("Missing empty line after the headers")
    text = data[start : ends[0]].decode("utf-8", "surrogateescape")
    if text.count("\n") == text.count("\r\n"):
        lines = text.split("\r\n")
    else:  # bare LF line ends (tolerated)
        lines = [line[:-1] if line.endswith("\r") else line for line in text.split("\n")]
    body = data[ends[1] :]
    first = lines[0]

    request_match = _REQUEST_LINE_RE.fullmatch(first)
    status_match = None if request_match else _STATUS_LINE_RE.fullmatch(first)
    method = request_match.group(1) if request_match else None
    if request_match is None and status_match is None:
        # A garbled request line (extra spaces, RFC 4475 §3.1.2.9/10) can still get a 400 if
        # the headers are sound, so only give up here when it is not a request at all.
        prefix = _METHOD_PREFIX_RE.match(first)
        if prefix is None or first[:4].upper() == "SIP/":
            raise SipParseError("Malformed start line")
        method = prefix.group(1)
    headers = _parse_header_lines(lines[1:])
    try:
        if request_match is not None:
            version = request_match.group(3)
        elif status_match is not None:
            version = status_match.group(1)
        else:
            raise SipParseError("Malformed request line")
        if version.upper() != SIP_VERSION:
            raise SipParseError(f"Unsupported SIP version {version[:12]}", status=505)
        length = headers.get_all("Content-Length")
        if len(length) > 1:
            raise SipParseError("Multiple Content-Length headers")
        if length:
            n = _parse_int(length[0], "Content-Length", 2**31)
            if n > len(body):
                raise SipParseError("Content-Length larger than the body")
            if stream and n != len(body):
                raise SipParseError("Content-Length does not match the framed body")
            body = body[:n]
        elif stream:
            raise SipParseError("Content-Length required on stream transports")
        message: SipRequest | SipResponse
        if request_match is not None:
            message = SipRequest(request_match.group(1), parse_uri(request_match.group(2)))
        else:
            assert status_match is not None
            message = SipResponse(int(status_match.group(2)), status_match.group(3) or "")
            if message.status < 100:
                raise SipParseError("Status code out of range")
        message.headers = headers
        message.body = bytes(body)
        message._validate()
        return message
    except SipParseError as exc:
        if method is not None and exc.headers is None:
            partial = _partial_headers(headers)
            if partial is not None:
                exc.method = method
                exc.headers = partial
        raise
