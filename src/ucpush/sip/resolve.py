"""Where to send a request: RFC 3263 §4 target selection.

``next_hop`` is pure: transport from the ``transport`` URI parameter (``sips:`` forces TLS),
else UDP for ``sip:`` and TLS for ``sips:``; host from ``maddr`` or the URI host; port as
written, else 5060 (5061 for TLS); it notes whether port and transport were explicit.
``resolve`` turns a hop into concrete addresses: a numeric host as is; a name with an explicit
port by A/AAAA (``getaddrinfo``); a name without one by SRV (RFC 2782 priority and weight
order) for the hop's transport, or, when the URI chose no transport either, by NAPTR first
(``SIP+D2U``/``SIP+D2T``/``SIPS+D2T``, the transports we speak), then SRV for UDP, TCP and
TLS in turn; with no SRV records, A/AAAA on the transport's default port. A transport chosen by
DNS can differ from the hop's: the caller rebuilds what depends on it (Via, Record-Route).
"""

from __future__ import annotations

import asyncio
import ipaddress
import random
import socket
from collections.abc import Sequence
from dataclasses import dataclass

import dns.asyncresolver
import dns.exception
import dns.rdatatype
import dns.resolver

from ucpush.sip.uri import SipURI

TRANSPORTS = ("UDP", "TCP", "TLS")
DEFAULT_PORTS = {"UDP": 5060, "TCP": 5060, "TLS": 5061}
# RFC 3263 §4.1: NAPTR services and SRV prefixes of the transports we speak.
NAPTR_SERVICES = {"SIP+D2U": "UDP", "SIP+D2T": "TCP", "SIPS+D2T": "TLS"}
SRV_PREFIXES = {"UDP": "_sip._udp.", "TCP": "_sip._tcp.", "TLS": "_sips._tcp."}


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
    # RFC 3263: a name without an explicit port is looked up by SRV, and by NAPTR first when
    # the URI did not choose the transport either.
    port_explicit: bool = True
    transport_explicit: bool = True


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
    return Hop(
        transport,
        host,
        uri.port or DEFAULT_PORTS[transport],
        port_explicit=uri.port is not None,
        transport_explicit=uri.secure or uri.transport is not None,
    )


def numeric_flow(hop: Hop) -> Flow | None:
    """The flow of a hop whose host is already an IP address, without touching DNS."""
    try:
        address = ipaddress.ip_address(hop.host)
    except ValueError:
        return None
    return Flow(hop.transport, str(address), hop.port)


def dns_resolver(servers: Sequence[str] = ()) -> dns.asyncresolver.Resolver:
    """A resolver for NAPTR/SRV: the system's (resolv.conf), or ``servers`` given as
    ``ip`` or ``ip:port`` (one port for all, as DNS clients take it)."""
    if not servers:
        try:
            return dns.asyncresolver.Resolver()
        except dns.resolver.NoResolverConfiguration:
            resolver = dns.asyncresolver.Resolver(configure=False)
            resolver.nameservers = ["127.0.0.1"]
            return resolver
    resolver = dns.asyncresolver.Resolver(configure=False)
    addresses = []
    for server in servers:
        host, sep, port = server.rpartition(":") if server.count(":") == 1 else ("", "", "")
        addresses.append(host if sep else server)
        if sep:
            resolver.port = int(port)
    resolver.nameservers = addresses
    resolver.lifetime = 2.0
    return resolver


async def resolve(hop: Hop, dns_resolver: dns.asyncresolver.Resolver | None = None) -> list[Flow]:
    """Addresses to try, best first (see the module docstring); without ``dns_resolver``,
    A/AAAA only. Raises OSError when the name does not resolve."""
    flow = numeric_flow(hop)
    if flow is not None:
        return [flow]
    # "localhost" is never looked up in DNS (RFC 6761 §6.3).
    if dns_resolver is not None and not hop.port_explicit and hop.host.lower() != "localhost":
        if not hop.transport_explicit:
            flows = await _naptr(hop.host, dns_resolver)
            if flows:
                return flows
            for transport in TRANSPORTS:
                flows = await _srv(SRV_PREFIXES[transport] + hop.host, transport, dns_resolver)
                if flows:
                    return flows
        else:
            flows = await _srv(SRV_PREFIXES[hop.transport] + hop.host, hop.transport, dns_resolver)
            if flows:
                return flows
    return await _addresses(hop.transport, hop.host, hop.port)


async def _addresses(transport: str, host: str, port: int) -> list[Flow]:
    loop = asyncio.get_running_loop()
    kind = socket.SOCK_DGRAM if transport == "UDP" else socket.SOCK_STREAM
    infos = await loop.getaddrinfo(host, port, type=kind)
    out: list[Flow] = []
    for _family, _type, _proto, _name, sockaddr in infos:
        candidate = Flow(transport, str(sockaddr[0]), int(sockaddr[1]))
        if candidate not in out:
            out.append(candidate)
    return out


async def _query(name: str, rdtype: str, resolver: dns.asyncresolver.Resolver) -> list[object]:
    try:
        return list(await resolver.resolve(name, rdtype))
    except (dns.exception.DNSException, OSError):
        return []  # no such records, or no answer: the next step of §4.1 applies


async def _naptr(host: str, resolver: dns.asyncresolver.Resolver) -> list[Flow]:
    records = [
        r
        for r in await _query(host, "NAPTR", resolver)
        if r.flags.decode().lower() == "s"  # type: ignore[attr-defined]
        and r.service.decode().upper() in NAPTR_SERVICES  # type: ignore[attr-defined]
    ]
    records.sort(key=lambda r: (r.order, r.preference))  # type: ignore[attr-defined]
    for record in records:
        transport = NAPTR_SERVICES[record.service.decode().upper()]  # type: ignore[attr-defined]
        name = record.replacement.to_text(omit_final_dot=True)  # type: ignore[attr-defined]
        flows = await _srv(name, transport, resolver)
        if flows:
            return flows
    return []


def srv_order(records: Sequence[tuple[int, int, str, int]]) -> list[tuple[str, int]]:
    """RFC 2782: lowest priority first; within one, a weighted random order (weight 0 last
    but still possible). ``records``: (priority, weight, target, port)."""
    out: list[tuple[str, int]] = []
    for priority in sorted({r[0] for r in records}):
        group = [r for r in records if r[0] == priority]
        while group:
            total = sum(r[1] for r in group)
            pick = random.uniform(0, total) if total else 0.0
            running = 0
            chosen = group[0]
            for record in sorted(group, key=lambda r: r[1]):
                running += record[1]
                if running >= pick:
                    chosen = record
                    break
            group.remove(chosen)
            out.append((chosen[2], chosen[3]))
    return out


async def _srv(name: str, transport: str, resolver: dns.asyncresolver.Resolver) -> list[Flow]:
    records = [
        (r.priority, r.weight, r.target.to_text(omit_final_dot=True), r.port)  # type: ignore[attr-defined]
        for r in await _query(name, "SRV", resolver)
    ]
    if records == [(0, 0, ".", 0)] or records == [(0, 0, "", 0)]:
        return []  # "service decidedly not available"
    out: list[Flow] = []
    for target, port in srv_order(records):
        try:
            out += [f for f in await _addresses(transport, target, port) if f not in out]
        except OSError:
            continue
    return out


def format_host(host: str) -> str:
    """A host as written in a URI or Via: IPv6 addresses in brackets."""
    return f"[{host}]" if ":" in host and not host.startswith("[") else host
