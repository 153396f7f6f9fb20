"""Where to send a request: RFC 3263 §4 target selection, reduced to what needs no DNS library.

``next_hop`` is pure: transport from the ``transport`` URI parameter (``sips:`` forces TLS),
else UDP for ``sip:`` and TLS for ``sips:``; host from ``maddr`` or the URI host; port as
written, else 5060 (5061 for TLS). NAPTR and SRV lookups are not made (the standard library
has no resolver for them), so a name without an explicit port is tried on the default port of
its transport via A/AAAA records only. ``resolve`` turns a hop into concrete addresses with the
event loop's ``getaddrinfo``.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from dataclasses import dataclass

from ucpush.sip.uri import SipURI

TRANSPORTS = ("UDP", "TCP", "TLS")
DEFAULT_PORTS = {"UDP": 5060, "TCP": 5060, "TLS": 5061}


class UnsupportedTransport(ValueError):
    """The URI names a transport we do not speak (SCTP, WS, ...)."""


@dataclass(frozen=True, slots=True)
class Flow:
    """One transport-level path: transport plus the peer's numeric address (IPv6 unbracketed).
    UDP flows are (socket, address) pairs; TCP/TLS flows are connections."""

    transport: str
    host: str
    port: int

    @property
    def reliable(self) -> bool:
        return self.transport != "UDP"


@dataclass(frozen=True, slots=True)
class Hop:
    """A next hop before address resolution. ``host`` may be a name (kept for TLS SNI and
    certificate checks)."""

    transport: str
    host: str
    port: int


def uri_transport(uri: SipURI) -> str:
    """RFC 3263 §4.1 without NAPTR/SRV: the transport param, sips → TLS, else UDP."""
    param = uri.transport
    if uri.secure:
        if param not in (None, "tcp", "tls"):
            raise UnsupportedTransport(f"sips: over {param}")
        return "TLS"
    if param is None:
        return "UDP"
    name = param.upper()
    if name not in TRANSPORTS:
        raise UnsupportedTransport(f"transport={param}")
    return name


def strip_brackets(host: str) -> str:
    return host[1:-1] if host.startswith("[") else host


def next_hop(uri: SipURI) -> Hop:
    """RFC 3263 §4.1-4.2 for one URI: maddr wins over the host; explicit ports are honoured."""
    transport = uri_transport(uri)
    host = strip_brackets(uri.maddr or uri.host)
    return Hop(transport, host, uri.port or DEFAULT_PORTS[transport])


def numeric_flow(hop: Hop) -> Flow | None:
    """The flow of a hop whose host is already an IP address, without touching DNS."""
    try:
        address = ipaddress.ip_address(hop.host)
    except ValueError:
        return None
    return Flow(hop.transport, str(address), hop.port)


async def resolve(hop: Hop) -> list[Flow]:
    """Addresses to try, in getaddrinfo order (A/AAAA only; see the module docstring).
    Raises OSError when the name does not resolve."""
    flow = numeric_flow(hop)
    if flow is not None:
        return [flow]
    loop = asyncio.get_running_loop()
    kind = socket.SOCK_DGRAM if hop.transport == "UDP" else socket.SOCK_STREAM
    infos = await loop.getaddrinfo(hop.host, hop.port, type=kind)
    out: list[Flow] = []
    for _family, _type, _proto, _name, sockaddr in infos:
        candidate = Flow(hop.transport, str(sockaddr[0]), int(sockaddr[1]))
        if candidate not in out:
            out.append(candidate)
    return out


def format_host(host: str) -> str:
    """A host as written in a URI or Via: IPv6 addresses in brackets."""
    return f"[{host}]" if ":" in host and not host.startswith("[") else host
