"""RFC 3263 next-hop resolution against a real DNS server on loopback (dnspython answering
from a zone in the test), and the node forwarding over the transport NAPTR chose."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import cast

import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset
import pytest
import trustme

from tests.sip.test_node import DOMAIN, Peer, _node_flow, start_node
from ucpush.sip.helpers import make_response
from ucpush.sip.message import SipRequest
from ucpush.sip.resolve import Hop, dns_resolver, next_hop, resolve, srv_order
from ucpush.sip.uri import parse_uri
from ucpush.store import Store


class Zone(asyncio.DatagramProtocol):
    """A DNS server for one test: ``records[(name, type)]`` are rdata texts; every query is
    kept in ``asked``."""

    def __init__(self) -> None:
        self.records: dict[tuple[str, str], list[str]] = {}
        self.asked: list[tuple[str, str]] = []
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        query = dns.message.from_wire(data)
        question = query.question[0]
        name = question.name.to_text(omit_final_dot=True).lower()
        kind = dns.rdatatype.to_text(question.rdtype)
        self.asked.append((name, kind))
        answer = dns.message.make_response(query)
        texts = self.records.get((name, kind))
        if texts:
            answer.answer.append(
                dns.rrset.from_text_list(question.name, 60, dns.rdataclass.IN, kind, texts)
            )
        elif not any(n == name for n, _ in self.records):
            answer.set_rcode(dns.rcode.NXDOMAIN)
        assert self.transport is not None
        self.transport.sendto(answer.to_wire(), addr)


@pytest.fixture
async def zone() -> AsyncIterator[tuple[Zone, str]]:
    loop = asyncio.get_running_loop()
    transport, protocol = await loop.create_datagram_endpoint(Zone, local_addr=("127.0.0.1", 0))
    port = transport.get_extra_info("sockname")[1]
    try:
        yield protocol, f"127.0.0.1:{port}"
    finally:
        transport.close()


def hop(uri: str) -> Hop:
    parsed = parse_uri(uri)
    return next_hop(parsed)  # type: ignore[arg-type]


async def test_naptr_then_srv_picks_the_transport(zone: tuple[Zone, str]) -> None:
    server, address = zone
    server.records = {
        ("pbx.example.test", "NAPTR"): [
            '20 10 "s" "SIP+D2U" "" _sip._udp.pbx.example.test.',
            '10 10 "s" "SIP+D2T" "" _sip._tcp.pbx.example.test.',
            '5 10 "s" "SIP+D2W" "" _sip._ws.pbx.example.test.',  # a transport we lack
        ],
        ("_sip._tcp.pbx.example.test", "SRV"): ["10 0 5070 localhost."],
        ("_sip._udp.pbx.example.test", "SRV"): ["10 0 5080 localhost."],
    }
    flows = await resolve(hop("sip:pbx.example.test"), dns_resolver([address]))
    assert flows and {f.transport for f in flows} == {"TCP"}
    assert {f.port for f in flows} == {5070}
    assert server.asked[0] == ("pbx.example.test", "NAPTR")


async def test_no_naptr_tries_srv_per_transport_then_addresses(zone: tuple[Zone, str]) -> None:
    server, address = zone
    server.records = {("_sips._tcp.pbx.example.test", "SRV"): ["0 0 5091 localhost."]}
    flows = await resolve(hop("sip:pbx.example.test"), dns_resolver([address]))
    assert [(f.transport, f.port) for f in flows][:1] == [("TLS", 5091)]
    assert [q for q, _ in server.asked] == [
        "pbx.example.test",
        "_sip._udp.pbx.example.test",
        "_sip._tcp.pbx.example.test",
        "_sips._tcp.pbx.example.test",
    ]


async def test_explicit_transport_uses_its_srv_only(zone: tuple[Zone, str]) -> None:
    server, address = zone
    server.records = {
        ("_sip._tcp.pbx.example.test", "SRV"): ["10 0 5070 localhost."],
        ("pbx.example.test", "NAPTR"): ['10 10 "s" "SIP+D2U" "" _sip._udp.pbx.example.test.'],
    }
    flows = await resolve(hop("sip:pbx.example.test;transport=tcp"), dns_resolver([address]))
    assert {(f.transport, f.port) for f in flows} == {("TCP", 5070)}
    assert server.asked == [("_sip._tcp.pbx.example.test", "SRV")]


async def test_explicit_port_and_localhost_skip_dns(zone: tuple[Zone, str]) -> None:
    server, address = zone
    resolver = dns_resolver([address])
    assert await resolve(hop("sip:localhost:5099"), resolver) != []
    assert await resolve(hop("sip:localhost"), resolver) != []
    assert server.asked == []


async def test_srv_target_dot_means_no_service(zone: tuple[Zone, str]) -> None:
    server, address = zone
    server.records = {("_sip._udp.nosip.example.test", "SRV"): ["0 0 0 ."]}
    with pytest.raises(OSError):  # falls back to A/AAAA of a name that has none
        await resolve(hop("sip:nosip.example.test;transport=udp"), dns_resolver([address]))


def test_srv_order_priority_then_weight() -> None:
    records = [(20, 0, "c", 3), (10, 0, "b", 2), (10, 100, "a", 1)]
    firsts = [srv_order(records)[0] for _ in range(200)]
    assert all(order in (("a", 1), ("b", 2)) for order in firsts)
    assert firsts.count(("a", 1)) > firsts.count(("b", 2))  # weight 100 vs 0
    assert all(srv_order(records)[-1] == ("c", 3) for _ in range(20))


async def test_node_forwards_over_the_transport_naptr_chose(
    zone: tuple[Zone, str], store: Store, tmp_path: Path, ca: trustme.CA
) -> None:
    server, address = zone
    upstream = Peer()
    await upstream.transport.listen_stream("127.0.0.1", 0)
    port = upstream.transport.local["TCP"][1]
    server.records = {
        ("proxy.example.test", "NAPTR"): ['10 10 "s" "SIP+D2T" "" _sip._tcp.proxy.example.test.'],
        ("_sip._tcp.proxy.example.test", "SRV"): [f"10 0 {port} localhost."],
    }
    node = await start_node(store, tmp_path, ca, dns_servers=[address])
    caller = Peer()
    await caller.transport.listen_udp("127.0.0.1", 0)
    try:
        invite = caller.request(
            "INVITE",
            f"sip:carol@{DOMAIN}",
            "UDP",
            headers=[("Route", "<sip:proxy.example.test;lr>")],
        )
        caller.transport.send(invite, _node_flow(node, "UDP"))
        forwarded, flow = await upstream.next()
        assert isinstance(forwarded, SipRequest) and forwarded.method == "INVITE"
        assert flow.transport == "TCP"
        assert forwarded.top_via.transport == "TCP"  # rebuilt for the transport DNS chose
        upstream.transport.send(make_response(forwarded, 200, to_tag="up"), flow)
        assert (await caller.response(100)).status == 200
    finally:
        for peer in (upstream, caller):
            await peer.transport.close()
        await node.close()
