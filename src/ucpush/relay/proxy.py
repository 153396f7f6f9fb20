"""The node's network path to the relay: an optional HTTP(S) CONNECT proxy with basic or digest
authentication, and failover between the addresses a name resolves to (SPEC §5).

Layers, bottom up:

* sans-IO: ``parse_challenges``, ``DigestChallenge``, ``digest_authorization`` (RFC 7616,
  qop=auth, MD5 and SHA-256, ``-sess`` variants), ``basic_authorization`` and ``ConnectExchange``
  (the CONNECT request bytes and the proxy's answer, parsed with h11);
* ``ProxyTunnel``: dials the proxy, answers its 407 challenge and leaves an open tunnel;
* ``FailoverTransport``: an httpx transport holding one httpcore pool per address of the hop it
  dials (the proxy when one is set, else the relay). TLS to the relay and HTTP/1.1 or HTTP/2 run
  inside the tunnel through httpcore as usual.

Failover: an address that does not connect (TCP, proxy TLS, CONNECT) within ``connect_timeout``
(2 s) is left for the next; a request sent on an address that gives no complete answer within
``confirm_timeout`` (5 s) is sent again to the next address when the caller marked it safe to
resend (``RESEND_UNCONFIRMED``). The relay may have handled the first copy: a push resent this
way can reach the device twice, with the same tracking id and the same encrypted payload, which
is how the relay's logs and the app tell the copies apart. The address that answered stays
preferred for later requests; names are resolved again after ``dns_ttl`` (1 hour).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import ipaddress
import os
import re
import socket
import ssl
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import h11
import httpcore
import httpx

from ucpush.logging import get_logger

_log = get_logger("ucpush.relay.proxy")

ProxyScheme = Literal["http", "https"]
ProxyAuth = Literal["basic", "digest", "none"]

# Request extension: the request may be sent again to the next address after an address took
# it and gave no answer (the relay may then see it twice).
RESEND_UNCONFIRMED = "ucpush.resend_unconfirmed"

Resolver = Callable[[str, int], Awaitable[Sequence[str]]]


@dataclass(frozen=True, slots=True)
class ProxySettings:
    """An HTTP(S) proxy the node reaches the relay through, with CONNECT."""

    scheme: ProxyScheme
    host: str
    port: int
    username: str = ""
    password: str = field(default="", repr=False)
    auth: ProxyAuth = "none"

    def __post_init__(self) -> None:
        if self.scheme not in ("http", "https"):
            raise ValueError(f"proxy scheme must be http or https, not {self.scheme!r}")
        if not self.host or any(c.isspace() or c in "/@" for c in self.host):
            raise ValueError(f"proxy host must be a host name or address, not {self.host!r}")
        if not 1 <= self.port <= 65535:
            raise ValueError(f"proxy port must be 1..65535, not {self.port}")
        if self.auth not in ("basic", "digest", "none"):
            raise ValueError(f"proxy auth must be basic, digest or none, not {self.auth!r}")
        if self.auth != "none" and not self.username:
            raise ValueError(f"proxy auth {self.auth} needs a username")
        if self.auth == "basic" and ":" in self.username:
            raise ValueError("a basic-auth proxy username cannot contain ':'")

    @property
    def address(self) -> str:
        return f"{self.scheme}://{_authority(self.host, self.port)}"


class ProxyAuthError(httpx.ProxyError):
    """The proxy answered 407 to our credentials (or we had none to give): fix the proxy user
    or password in the node's settings. Retrying does not help."""


# --- sans-IO ----------------------------------------------------------------------------------

_TOKEN = r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_SEPARATORS = re.compile(r"[\s,]*")
_PARAM = re.compile(
    rf'(?P<key>{_TOKEN})\s*=\s*(?:"(?P<quoted>(?:[^"\\]|\\.)*)"|(?P<token>[^\s,"]*))'
)
_SCHEME = re.compile(rf"(?P<scheme>{_TOKEN})(?=[\s,]|$)")
_ESCAPE = re.compile(r"\\(.)")


def parse_challenges(values: Iterable[str]) -> list[tuple[str, dict[str, str]]]:
    """``(scheme, params)`` for every challenge in ``Proxy-Authenticate`` header values; a value
    may hold several challenges (RFC 9110 §11.6.1). Scheme and parameter names are lower-cased."""
    challenges: list[tuple[str, dict[str, str]]] = []
    for value in values:
        pos, params = 0, None
        while True:
            pos = _SEPARATORS.match(value, pos).end()  # type: ignore[union-attr]
            if pos >= len(value):
                break
            if params is not None and (param := _PARAM.match(value, pos)):
                quoted = param["quoted"]
                text = _ESCAPE.sub(r"\1", quoted) if quoted is not None else param["token"]
                params[param["key"].lower()] = text
                pos = param.end()
            elif scheme := _SCHEME.match(value, pos):
                params = {}
                challenges.append((scheme["scheme"].lower(), params))
                pos = scheme.end()
            else:
                raise ValueError(f"malformed Proxy-Authenticate header: {value!r}")
    return challenges


_DIGEST_HASHES = {"MD5": "md5", "SHA-256": "sha256"}


@dataclass(frozen=True, slots=True)
class DigestChallenge:
    realm: str
    nonce: str
    qop: tuple[str, ...] = ()
    algorithm: str = "MD5"
    opaque: str | None = None
    stale: bool = False
    userhash: bool = False

    @classmethod
    def from_params(cls, params: dict[str, str]) -> DigestChallenge:
        if "realm" not in params or "nonce" not in params:
            raise ValueError("digest challenge without realm or nonce")
        return cls(
            realm=params["realm"],
            nonce=params["nonce"],
            qop=tuple(q.strip().lower() for q in params.get("qop", "").split(",") if q.strip()),
            algorithm=params.get("algorithm", "MD5").upper(),
            opaque=params.get("opaque"),
            stale=params.get("stale", "").lower() == "true",
            userhash=params.get("userhash", "").lower() == "true",
        )

    @property
    def supported(self) -> bool:
        return self.algorithm.removesuffix("-SESS") in _DIGEST_HASHES and (
            not self.qop or "auth" in self.qop
        )


def pick_digest(challenges: list[tuple[str, dict[str, str]]]) -> DigestChallenge | None:
    """The strongest digest challenge we can answer: SHA-256 before MD5 (RFC 7616 §3.7)."""
    usable = []
    for scheme, params in challenges:
        if scheme == "digest":
            try:
                challenge = DigestChallenge.from_params(params)
            except ValueError:
                continue
            if challenge.supported:
                usable.append(challenge)
    usable.sort(key=lambda c: c.algorithm.removesuffix("-SESS") != "SHA-256")
    return usable[0] if usable else None


def _quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def digest_authorization(
    challenge: DigestChallenge,
    *,
    username: str,
    password: str,
    method: str,
    uri: str,
    nc: int,
    cnonce: str,
) -> str:
    """The ``Proxy-Authorization`` value answering ``challenge`` (RFC 7616 §3.4)."""
    base = challenge.algorithm.removesuffix("-SESS")
    if not challenge.supported:
        raise ValueError(f"unsupported digest challenge: {challenge.algorithm} qop={challenge.qop}")

    def digest(text: str) -> str:
        return hashlib.new(_DIGEST_HASHES[base], text.encode()).hexdigest()

    ha1 = digest(f"{username}:{challenge.realm}:{password}")
    if challenge.algorithm.endswith("-SESS"):
        ha1 = digest(f"{ha1}:{challenge.nonce}:{cnonce}")
    ha2 = digest(f"{method}:{uri}")
    user = digest(f"{username}:{challenge.realm}") if challenge.userhash else username
    fields = [
        f"username={_quote(user)}",
        f"realm={_quote(challenge.realm)}",
        f"nonce={_quote(challenge.nonce)}",
        f"uri={_quote(uri)}",
        f"algorithm={challenge.algorithm}",
    ]
    if challenge.qop:
        response = digest(f"{ha1}:{challenge.nonce}:{nc:08x}:{cnonce}:auth:{ha2}")
        fields += ["qop=auth", f"nc={nc:08x}", f"cnonce={_quote(cnonce)}"]
    else:  # RFC 2069 servers, which offer no qop
        response = digest(f"{ha1}:{challenge.nonce}:{ha2}")
    fields.append(f"response={_quote(response)}")
    if challenge.opaque is not None:
        fields.append(f"opaque={_quote(challenge.opaque)}")
    if challenge.userhash:
        fields.append("userhash=true")
    return "Digest " + ", ".join(fields)


def basic_authorization(username: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode("ascii")


@dataclass(frozen=True, slots=True)
class ConnectAnswer:
    status: int
    reason: str
    headers: list[tuple[str, str]]

    def header_values(self, name: str) -> list[str]:
        return [value for key, value in self.headers if key == name]


class ConnectExchange:
    """One CONNECT request and the proxy's answer to it (sans-IO, h11 parses the answer)."""

    def __init__(self, target: str, authorization: str | None = None) -> None:
        self._http = h11.Connection(h11.CLIENT)
        headers = [("Host", target), ("User-Agent", "ucpush")]
        if authorization:
            headers.append(("Proxy-Authorization", authorization))
        self.request = self._http.send(
            h11.Request(method="CONNECT", target=target, headers=headers)
        ) + self._http.send(h11.EndOfMessage())

    def receive(self, data: bytes) -> ConnectAnswer | None:
        """Feed bytes from the proxy (``b""`` at end of stream); the answer once it is complete."""
        if not data:
            raise httpx.ProxyError("proxy closed the connection before answering CONNECT")
        self._http.receive_data(data)
        while True:
            try:
                event = self._http.next_event()
            except h11.RemoteProtocolError as exc:
                raise httpx.ProxyError(f"malformed answer to CONNECT: {exc}") from exc
            if event is h11.NEED_DATA:
                return None
            if isinstance(event, h11.Response):  # else a 1xx interim answer: read on
                answer = ConnectAnswer(
                    event.status_code,
                    event.reason.decode("latin-1"),
                    [(k.decode("latin-1").lower(), v.decode("latin-1")) for k, v in event.headers],
                )
                if 200 <= answer.status < 300 and self._http.trailing_data[0]:
                    # A TLS client speaks first: nothing may come through before our hello.
                    raise httpx.ProxyError("proxy sent data into the tunnel before the client")
                return answer


# --- IO ---------------------------------------------------------------------------------------


def _authority(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class ProxyTunnel:
    """Opens CONNECT tunnels through one proxy. Basic credentials go with the first request;
    digest answers the proxy's challenge, which is kept for the next tunnels (nonce count up)."""

    def __init__(self, settings: ProxySettings, ssl_context: ssl.SSLContext) -> None:
        self.settings = settings
        self._ssl_context = ssl_context
        self._digest: DigestChallenge | None = None
        self._nc = 0

    def _authorization(self, target: str) -> str | None:
        proxy = self.settings
        if proxy.auth == "basic":
            return basic_authorization(proxy.username, proxy.password)
        if proxy.auth == "digest" and self._digest is not None:
            self._nc += 1
            return digest_authorization(
                self._digest,
                username=proxy.username,
                password=proxy.password,
                method="CONNECT",
                uri=target,
                nc=self._nc,
                cnonce=os.urandom(16).hex(),
            )
        return None

    async def open(
        self, dial: Callable[[], Awaitable[httpcore.AsyncNetworkStream]], target: str
    ) -> httpcore.AsyncNetworkStream:
        """A stream tunnelled to ``target`` (``host:port``); ``dial`` connects to the proxy."""
        proxy = self.settings
        answered_fresh_challenge = False
        while True:
            authorization = self._authorization(target)
            stream = await dial()
            try:
                if proxy.scheme == "https":
                    stream = await stream.start_tls(self._ssl_context, server_hostname=proxy.host)
                answer = await self._exchange(stream, ConnectExchange(target, authorization))
                if 200 <= answer.status < 300:
                    return stream
            except BaseException:
                await stream.aclose()
                raise
            # Refused: this connection is done with (a 407 body may follow; not worth reading).
            await stream.aclose()
            if answer.status != 407:
                raise httpx.ProxyError(
                    f"proxy {proxy.address} refused CONNECT {target}: "
                    f"{answer.status} {answer.reason}"
                )
            try:
                offered = parse_challenges(answer.header_values("proxy-authenticate"))
            except ValueError as exc:
                raise httpx.ProxyError(f"proxy {proxy.address}: {exc}") from exc
            if proxy.auth == "none":
                schemes = ", ".join(sorted({scheme for scheme, _ in offered})) or "no scheme"
                raise ProxyAuthError(
                    f"proxy {proxy.address} requires authentication ({schemes} offered); "
                    "set the proxy user, password and auth type"
                )
            if proxy.auth == "basic" or answered_fresh_challenge:
                raise ProxyAuthError(
                    f"proxy {proxy.address} rejected the {proxy.auth} credentials of user "
                    f"{proxy.username!r} (407)"
                )
            challenge = pick_digest(offered)
            if challenge is None:
                raise ProxyAuthError(
                    f"proxy {proxy.address} offers no digest challenge we can answer "
                    "(MD5 or SHA-256 with qop=auth)"
                )
            # A kept challenge may have gone stale: answer the fresh one once.
            self._digest, self._nc = challenge, 0
            answered_fresh_challenge = True

    @staticmethod
    async def _exchange(
        stream: httpcore.AsyncNetworkStream, exchange: ConnectExchange
    ) -> ConnectAnswer:
        await stream.write(exchange.request)
        while True:
            answer = exchange.receive(await stream.read(65536))
            if answer is not None:
                return answer


class _HopBackend(httpcore.AsyncNetworkBackend):
    """Dials one fixed address of the hop (relay or proxy) whatever origin httpcore asks for,
    and tunnels through the proxy when there is one."""

    def __init__(self, address: str, port: int, tunnel: ProxyTunnel | None) -> None:
        self._address = address
        self._port = port
        self._tunnel = tunnel
        self._inner = httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109  (httpcore's interface)
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        tunnel = self._tunnel
        if tunnel is None:
            return await self._inner.connect_tcp(
                self._address, port, timeout=timeout, socket_options=socket_options
            )
        where = f"proxy {tunnel.settings.address} at {self._address}"

        async def dial() -> httpcore.AsyncNetworkStream:
            try:
                return await self._inner.connect_tcp(
                    self._address, self._port, socket_options=socket_options
                )
            except httpcore.ConnectError as exc:
                raise httpcore.ConnectError(f"cannot connect to {where}: {exc}") from exc

        try:
            # One deadline for dialling, proxy TLS and the CONNECT exchange with its challenge.
            async with asyncio.timeout(timeout):
                return await tunnel.open(dial, _authority(host, port))
        except TimeoutError as exc:
            raise httpcore.ConnectTimeout(
                f"no tunnel through {where} within {timeout:g} s"
            ) from exc
        except (httpcore.ReadError, httpcore.WriteError) as exc:
            raise httpx.ProxyError(f"{where} dropped the connection: {exc}") from exc

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


async def resolve_addresses(host: str, port: int) -> list[str]:
    """The addresses of ``host`` in the resolver's order, without repeats."""
    try:
        ipaddress.ip_address(host)
        return [host]
    except ValueError:
        pass
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise httpx.ConnectError(f"cannot resolve {host}: {exc.strerror}") from exc
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


_EXCEPTIONS: list[tuple[type[Exception], type[httpx.TransportError]]] = [
    (httpcore.ConnectTimeout, httpx.ConnectTimeout),
    (httpcore.ReadTimeout, httpx.ReadTimeout),
    (httpcore.WriteTimeout, httpx.WriteTimeout),
    (httpcore.PoolTimeout, httpx.PoolTimeout),
    (httpcore.ConnectError, httpx.ConnectError),
    (httpcore.ReadError, httpx.ReadError),
    (httpcore.WriteError, httpx.WriteError),
    (httpcore.RemoteProtocolError, httpx.RemoteProtocolError),
    (httpcore.LocalProtocolError, httpx.LocalProtocolError),
    (httpcore.UnsupportedProtocol, httpx.UnsupportedProtocol),
]

# Failures before the request left us (any request may go to the next address) ...
_NOT_SENT = (httpcore.ConnectError, httpcore.ConnectTimeout, httpcore.PoolTimeout)
# ... and after it may have reached the relay (only resendable requests go on).
_UNCONFIRMED = (
    httpcore.ReadTimeout,
    httpcore.ReadError,
    httpcore.WriteTimeout,
    httpcore.WriteError,
    httpcore.RemoteProtocolError,
)


def _as_httpx(exc: Exception, message: str, request: httpx.Request) -> Exception:
    if isinstance(exc, httpx.HTTPError):
        return exc
    for core, mapped in _EXCEPTIONS:
        if isinstance(exc, core):
            return mapped(message, request=request)
    return exc


class FailoverTransport(httpx.AsyncBaseTransport):
    """httpx transport to the relay: address failover, optional CONNECT proxy (module doc)."""

    def __init__(
        self,
        *,
        verify: ssl.SSLContext | str | bool = True,
        proxy: ProxySettings | None = None,
        resolve: Resolver = resolve_addresses,
        connect_timeout: float = 2.0,
        confirm_timeout: float = 5.0,
        dns_ttl: float = 3600.0,
        limits: httpx.Limits | None = None,
        http2: bool = False,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._ssl_context = httpx.create_ssl_context(verify=verify)
        self._tunnel = ProxyTunnel(proxy, self._ssl_context) if proxy else None
        self._resolve = resolve
        self.connect_timeout = connect_timeout
        self.confirm_timeout = confirm_timeout
        self._dns_ttl = dns_ttl
        self._limits = limits or httpx.Limits()
        self._http2 = http2
        self._clock = clock
        self._resolved: dict[tuple[str, int], tuple[list[str], float]] = {}
        self._preferred: dict[tuple[str, int], str] = {}
        self._pools: dict[tuple[str, int], httpcore.AsyncConnectionPool] = {}

    async def _addresses(self, host: str, port: int) -> list[str]:
        cached = self._resolved.get((host, port))
        if cached and cached[1] > self._clock():
            return cached[0]
        addresses = list(await self._resolve(host, port))
        if not addresses:
            raise httpx.ConnectError(f"{host} resolves to no address")
        self._resolved[(host, port)] = (addresses, self._clock() + self._dns_ttl)
        return addresses

    def _pool(self, address: str, port: int) -> httpcore.AsyncConnectionPool:
        pool = self._pools.get((address, port))
        if pool is None:
            pool = self._pools[(address, port)] = httpcore.AsyncConnectionPool(
                ssl_context=self._ssl_context,
                max_connections=self._limits.max_connections,
                max_keepalive_connections=self._limits.max_keepalive_connections,
                keepalive_expiry=self._limits.keepalive_expiry,
                http1=True,
                http2=self._http2,
                network_backend=_HopBackend(address, port, self._tunnel),
            )
        return pool

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        relay_port = url.port or (443 if url.scheme == "https" else 80)
        if self._tunnel is not None:
            hop = (self._tunnel.settings.host, self._tunnel.settings.port)
        else:
            hop = (url.host, relay_port)
        addresses = await self._addresses(*hop)
        preferred = self._preferred.get(hop)
        start = addresses.index(preferred) if preferred in addresses else 0
        resend = bool(request.extensions.get(RESEND_UNCONFIRMED))
        timeouts = dict(request.extensions.get("timeout", {}))
        timeouts.update(connect=self.connect_timeout, read=self.confirm_timeout)
        core_request = httpcore.Request(
            method=request.method,
            url=httpcore.URL(
                scheme=url.raw_scheme, host=url.raw_host, port=url.port, target=url.raw_path
            ),
            headers=request.headers.raw,
            content=request.stream,  # type: ignore[arg-type]  # a replayable ByteStream
            extensions={**request.extensions, "timeout": timeouts},
        )
        failures: list[str] = []
        last: Exception | None = None
        for address in addresses[start:] + addresses[:start]:
            try:
                response = await self._pool(address, hop[1]).handle_async_request(core_request)
                try:
                    # Read it all here: the relay's answer is small, and a complete answer is
                    # the confirmation the timeout is about.
                    body = await response.aread()
                finally:
                    await response.aclose()
            except ProxyAuthError:
                raise  # the same credentials fail at every address
            except (*_NOT_SENT, httpx.ProxyError) as exc:
                phase = "connect"
                last = exc
            except _UNCONFIRMED as exc:
                last = exc
                if not resend:
                    raise _as_httpx(exc, f"{address}: {exc}", request) from exc
                phase = "confirmation"
            else:
                self._preferred[hop] = address
                return httpx.Response(
                    status_code=response.status,
                    headers=response.headers,
                    content=body,
                    extensions=response.extensions,
                )
            failures.append(f"{address}: {str(last) or type(last).__name__}")
            _log.warning(
                "relay path address failed",
                host=hop[0],
                address=address,
                phase=phase,
                error=str(last) or type(last).__name__,
                path="proxy" if self._tunnel else "direct",
                method=request.method,
                target=url.path,
            )
        assert last is not None
        message = f"{hop[0]}:{hop[1]} unreachable at every address ({'; '.join(failures)})"
        raise _as_httpx(last, message, request) from last

    async def aclose(self) -> None:
        for pool in self._pools.values():
            await pool.aclose()
        self._pools.clear()
