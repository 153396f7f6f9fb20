"""SIP/SIPS URIs (RFC 3261 §19.1), name-addr/addr-spec values and header parameters.

Values are kept as written (escapes, case, parameter order) so a proxy forwards exactly what it
received; comparison follows §19.1.4 and unescapes on the fly.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, replace
from urllib.parse import unquote_to_bytes

from ucpush.sip.errors import SipParseError

# (name, value); value None for a parameter written without "=". Order and case are kept.
Params = tuple[tuple[str, str | None], ...]

TOKEN = r"[A-Za-z0-9\-.!%*_+`'~]+"
QUOTED = r'"(?:[^"\\]|\\[\x00-\x09\x0b\x0c\x0e-\x7f])*"'
_TOKEN_RE = re.compile(TOKEN)
_QUOTED_RE = re.compile(QUOTED)
# gen-value = token / host / quoted-string; ":" and brackets cover IPv6 hosts (RFC 5118).
_PARAM_RE = re.compile(
    rf"[ \t]*;[ \t]*({TOKEN})(?:[ \t]*=[ \t]*({QUOTED}|[A-Za-z0-9\-.!%*_+`'~:\[\]]+))?[ \t]*"
)
# Unquoted display names may only hold tokens; non-ASCII letters are tolerated too, because
# phones do send ``From: Jörg <sip:...>`` and answering 400 would lock them out.
_DISPLAY_WORD = r"[A-Za-z0-9\-.!%*_+`'~\u0080-\U0010ffff]+"
_DISPLAY_TOKENS_RE = re.compile(rf"{_DISPLAY_WORD}(?:[ \t]+{_DISPLAY_WORD})*")
# Every character a URI may hold unescaped (RFC 3261 §25.1 reserved + unreserved, and "[]").
_URI_CHARS_RE = re.compile(r"[A-Za-z0-9\-_.!~*'();/?:@&=+$,%\[\]]+")
_BAD_ESCAPE_RE = re.compile(r"%(?![0-9A-Fa-f]{2})")
_SCHEME_RE = re.compile(r"[A-Za-z][A-Za-z0-9+\-.]*")
_HOSTNAME_RE = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9\-_.]*)")

# §19.1.4: these URI parameters must be present in both URIs (or neither) to compare equal.
_STRICT_URI_PARAMS = ("user", "ttl", "method", "maddr", "transport")


def param_get(params: Params, name: str) -> str | None:
    """Value of the first parameter called ``name`` (case-insensitive); "" if it has no value."""
    key = name.lower()
    for pname, value in params:
        if pname.lower() == key:
            return "" if value is None else value
    return None


def param_has(params: Params, name: str) -> bool:
    key = name.lower()
    return any(pname.lower() == key for pname, _ in params)


def param_set(params: Params, name: str, value: str | None) -> Params:
    """Replace (in place, keeping order) or append a parameter."""
    key = name.lower()
    out: list[tuple[str, str | None]] = []
    done = False
    for pname, pvalue in params:
        if pname.lower() == key:
            if not done:
                out.append((pname, value))
                done = True
        else:
            out.append((pname, pvalue))
    if not done:
        out.append((name, value))
    return tuple(out)


def param_remove(params: Params, name: str) -> Params:
    key = name.lower()
    return tuple(p for p in params if p[0].lower() != key)


def format_params(params: Params) -> str:
    return "".join(f";{n}" if v is None else f";{n}={v}" for n, v in params)


def parse_params(text: str, pos: int = 0, *, what: str = "header") -> Params:
    """Parse ``*(SEMI generic-param)`` from ``pos`` to the end of ``text``."""
    out: list[tuple[str, str | None]] = []
    end = len(text)
    while pos < end:
        m = _PARAM_RE.match(text, pos)
        if m is None:
            if text[pos:].strip(" \t") == "":
                break
            raise SipParseError(f"Malformed {what} parameters near {text[pos : pos + 20]!r}")
        out.append((m.group(1), m.group(2)))
        pos = m.end()
    return tuple(out)


def unquote(text: str) -> str:
    """Contents of a quoted-string with quoted-pairs resolved; other text is returned as is."""
    if len(text) >= 2 and text[0] == '"' and text[-1] == '"':
        return re.sub(r"\\(.)", r"\1", text[1:-1], flags=re.DOTALL)
    return text


def quote(text: str) -> str:
    """Make a quoted-string (for display names and parameter values)."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _unescape(text: str) -> bytes:
    return unquote_to_bytes(text)


def _norm_host(host: str) -> str:
    """Host in a form where equal addresses compare equal (IPv6 zero-compression, case)."""
    if host.startswith("["):
        return str(ipaddress.IPv6Address(host[1:-1]))
    return host.lower()


def check_host(host: str, what: str) -> None:
    if host.startswith("["):
        if not host.endswith("]"):
            raise SipParseError(f"Unterminated IPv6 reference in {what}")
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            raise SipParseError(f"Bad IPv6 address in {what}") from None
    elif not _HOSTNAME_RE.fullmatch(host):
        raise SipParseError(f"Bad host {host[:40]!r} in {what}")


def parse_port(text: str, what: str) -> int:
    if not (0 < len(text) <= 5 and text.isascii() and text.isdigit()) or int(text) > 65535:
        raise SipParseError(f"Bad port {text[:12]!r} in {what}")
    return int(text)


@dataclass(frozen=True, slots=True)
class SipURI:
    """A sip: or sips: URI. ``user``/``password`` are raw (still %-escaped); ``host`` keeps
    IPv6 brackets; ``port`` is None when absent (absent is not 5060 for comparison)."""

    host: str
    user: str | None = None
    password: str | None = None
    port: int | None = None
    params: Params = ()
    headers: Params = ()
    scheme: str = "sip"

    def __str__(self) -> str:
        out = [self.scheme, ":"]
        if self.user is not None:
            out.append(self.user)
            if self.password is not None:
                out.append(":" + self.password)
            out.append("@")
        out.append(self.host)
        if self.port is not None:
            out.append(f":{self.port}")
        out.append(format_params(self.params))
        if self.headers:
            out.append("?" + "&".join(f"{n}={v or ''}" for n, v in self.headers))
        return "".join(out)

    @property
    def secure(self) -> bool:
        return self.scheme == "sips"

    @property
    def transport(self) -> str | None:
        value = param_get(self.params, "transport")
        return value.lower() if value is not None else None

    @property
    def lr(self) -> bool:
        return param_has(self.params, "lr")

    @property
    def maddr(self) -> str | None:
        return param_get(self.params, "maddr")

    def param(self, name: str) -> str | None:
        return param_get(self.params, name)

    @property
    def pn_params(self) -> dict[str, str]:
        """RFC 8599 ``pn-*`` parameters exactly as written (lower-case names)."""
        return {n.lower(): v or "" for n, v in self.params if n.lower().startswith("pn-")}

    def with_param(self, name: str, value: str | None) -> SipURI:
        """Copy with a parameter set (``None`` means a value-less flag like ``lr``)."""
        return replace(self, params=param_set(self.params, name, value))

    def without_params(self, *names: str) -> SipURI:
        new = self.params
        for name in names:
            new = param_remove(new, name)
        return replace(self, params=new)

    def equivalent(self, other: URI) -> bool:
        """RFC 3261 §19.1.4 comparison (not transitive, so it is not ``__eq__``)."""
        if not isinstance(other, SipURI) or self.scheme != other.scheme:
            return False
        if (self.user is None) != (other.user is None) or (
            self.user is not None and _unescape(self.user) != _unescape(other.user or "")
        ):
            return False
        if (self.password is None) != (other.password is None) or (
            self.password is not None
            and _unescape(self.password) != _unescape(other.password or "")
        ):
            return False
        if _norm_host(self.host) != _norm_host(other.host) or self.port != other.port:
            return False
        mine = {n.lower(): _unescape(v or "").lower() for n, v in self.params}
        theirs = {n.lower(): _unescape(v or "").lower() for n, v in other.params}
        for name in mine.keys() | theirs.keys():
            in_both = name in mine and name in theirs
            if in_both and mine[name] != theirs[name]:
                return False
            if not in_both and name in _STRICT_URI_PARAMS:
                return False
        h_mine = {n.lower(): _unescape(v or "") for n, v in self.headers}
        h_theirs = {n.lower(): _unescape(v or "") for n, v in other.headers}
        return h_mine == h_theirs


@dataclass(frozen=True, slots=True)
class AbsoluteURI:
    """Any other URI scheme (tel:, urn:, mailto:, unknown ones): kept opaque."""

    scheme: str
    rest: str

    def __str__(self) -> str:
        return f"{self.scheme}:{self.rest}"

    def equivalent(self, other: URI) -> bool:
        return (
            isinstance(other, AbsoluteURI)
            and self.scheme.lower() == other.scheme.lower()
            and _unescape(self.rest) == _unescape(other.rest)
        )


URI = SipURI | AbsoluteURI


def parse_uri(text: str) -> URI:
    """Parse a URI. sip:/sips: are parsed fully, other schemes are kept opaque."""
    if not text or not _URI_CHARS_RE.fullmatch(text):
        raise SipParseError(f"Bad URI {text[:60]!r}")
    scheme, colon, rest = text.partition(":")
    if not colon or not _SCHEME_RE.fullmatch(scheme) or not rest:
        raise SipParseError(f"Bad URI {text[:60]!r}")
    lower = scheme.lower()
    if lower not in ("sip", "sips"):
        return AbsoluteURI(scheme, rest)
    if "%" in rest and _BAD_ESCAPE_RE.search(rest):
        raise SipParseError(f"Bad %-escape in URI {text[:60]!r}")

    user = password = None
    at = rest.find("@")
    if at >= 0:
        userinfo, rest = rest[:at], rest[at + 1 :]
        user, colon, pw = userinfo.partition(":")
        password = pw if colon else None
        if not user:
            raise SipParseError(f"Empty user part in URI {text[:60]!r}")

    headers: Params = ()
    q = rest.find("?")
    if q >= 0:
        rest, htext = rest[:q], rest[q + 1 :]
        pairs = []
        for item in htext.split("&"):
            name, eq, value = item.partition("=")
            if not name or not eq:
                raise SipParseError(f"Bad header component in URI {text[:60]!r}")
            pairs.append((name, value))
        headers = tuple(pairs)

    params: Params = ()
    semi = rest.find(";")
    if semi >= 0:
        rest, ptext = rest[:semi], rest[semi + 1 :]
        plist = []
        for item in ptext.split(";"):
            name, eq, value = item.partition("=")
            if not name or (eq and not value):
                raise SipParseError(f"Empty URI parameter in {text[:60]!r}")
            plist.append((name, value if eq else None))
        params = tuple(plist)

    port = None
    if rest.startswith("["):
        close = rest.find("]")
        if close < 0:
            raise SipParseError(f"Unterminated IPv6 reference in URI {text[:60]!r}")
        host, after = rest[: close + 1], rest[close + 1 :]
        if after:
            if not after.startswith(":"):
                raise SipParseError(f"Junk after host in URI {text[:60]!r}")
            port = parse_port(after[1:], "URI")
    else:
        host, colon, port_text = rest.partition(":")
        if colon:
            port = parse_port(port_text, "URI")
    check_host(host, "URI")
    return SipURI(host, user, password, port, params, headers, lower)


@dataclass(frozen=True, slots=True)
class NameAddr:
    """A From/To/Contact/Route-style value: optional display name, URI, header parameters.

    ``display_name`` is raw (quotes and escapes included); ``display`` gives the plain text.
    Parameters written after an addr-spec belong here, not to the URI.
    """

    uri: URI
    display_name: str | None = None
    params: Params = ()

    def __str__(self) -> str:
        head = f"{self.display_name} " if self.display_name else ""
        return f"{head}<{self.uri}>{format_params(self.params)}"

    @property
    def display(self) -> str | None:
        return None if self.display_name is None else unquote(self.display_name)

    @property
    def tag(self) -> str | None:
        return param_get(self.params, "tag")

    def param(self, name: str) -> str | None:
        return param_get(self.params, name)

    def with_param(self, name: str, value: str | None) -> NameAddr:
        return replace(self, params=param_set(self.params, name, value))


def parse_name_addr(value: str, what: str) -> NameAddr:
    """Parse ``(name-addr / addr-spec) *(SEMI param)``; ``what`` names the header in errors."""
    s = value.strip(" \t")
    if not s:
        raise SipParseError(f"Empty {what}")
    display: str | None = None
    if s[0] == '"':
        m = _QUOTED_RE.match(s)
        if m is None:
            raise SipParseError(f"Unterminated quoted display name in {what}")
        display = m.group()
        lt = s.find("<", m.end())
        if lt < 0 or s[m.end() : lt].strip(" \t"):
            raise SipParseError(f"Expected <URI> after display name in {what}")
    else:
        lt = s.find("<")
        semi = s.find(";")
        if lt >= 0 and (semi < 0 or lt < semi):
            text = s[:lt].rstrip(" \t")
            if text:
                if not _DISPLAY_TOKENS_RE.fullmatch(text):
                    raise SipParseError(f"Display name in {what} must be tokens or quoted")
                display = text
        else:
            lt = -1
    if lt >= 0:
        gt = s.find(">", lt)
        if gt < 0:
            raise SipParseError(f"Missing '>' in {what}")
        uri_text = s[lt + 1 : gt]
        if uri_text != uri_text.strip(" \t"):
            raise SipParseError(f"Whitespace inside <> in {what}")
        return NameAddr(parse_uri(uri_text), display, parse_params(s, gt + 1, what=what))
    # addr-spec: the URI ends at the first ";" and may not carry "?" or "," (§20.10).
    semi = s.find(";")
    uri_text = s if semi < 0 else s[:semi]
    uri_text = uri_text.rstrip(" \t")
    if "?" in uri_text or "," in uri_text:
        raise SipParseError(f"URI with '?' or ',' in {what} must be enclosed in <>")
    return NameAddr(parse_uri(uri_text), None, parse_params(s, semi) if semi >= 0 else ())
