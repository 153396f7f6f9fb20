"""SIP transports over real sockets: UDP, TCP and TLS (trustme certificates), flow reuse,
keep-alives, malformed input, and RFC 3263 next-hop selection."""

from __future__ import annotations

import asyncio
import socket
import ssl

import pytest
import trustme

from ucpush.sip.driver import response_flow
from ucpush.sip.message import SipRequest, SipResponse, parse_message
from ucpush.sip.resolve import Flow, Hop, UnsupportedTransport, next_hop, resolve
from ucpush.sip.transport import SipTransport, stun_binding_response
from ucpush.sip.uri import SipURI, parse_uri

pytestmark = pytest.mark.timeout(20)


def request_bytes(
    port: int, *, transport: str = "UDP", method: str = "OPTIONS", extra: str = ""
) -> bytes:
    return (
        f"{method} sip:bob@example.org SIP/2.0\r\n"
        f"Via: SIP/2.0/{transport} 127.0.0.1:{port};branch=z9hG4bKt1;rport\r\n"
        "Max-Forwards: 70\r\n"
        "From: <sip:alice@example.org>;tag=a1\r\n"
        "To: <sip:bob@example.org>\r\n"
        "Call-ID: call-1@test\r\n"
        f"CSeq: 1 {method}\r\n"
        f"{extra}"
        "Content-Length: 0\r\n\r\n"
    ).encode()


class Inbox:
    def __init__(self) -> None:
        self.queue: asyncio.Queue[tuple[SipRequest | SipResponse, Flow]] = asyncio.Queue()

    def __call__(self, message: SipRequest | SipResponse, flow: Flow) -> None:
        self.queue.put_nowait((message, flow))

    async def get(self) -> tuple[SipRequest | SipResponse, Flow]:
        return await asyncio.wait_for(self.queue.get(), 5)


@pytest.fixture
async def server():
    inbox = Inbox()
    transport = SipTransport(inbox, max_message_size=4096)
    await transport.listen_udp("127.0.0.1", 0)
    await transport.listen_stream("127.0.0.1", 0)
    yield transport, inbox
    await transport.close()


def udp_client() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.setblocking(False)
    return sock


async def recv_udp(sock: socket.socket) -> bytes:
    return await asyncio.wait_for(asyncio.get_running_loop().sock_recv(sock, 65535), 2)


async def test_udp_request_is_stamped_and_answered_back(server):
    transport, inbox = server
    sock = udp_client()
    port = sock.getsockname()[1]
    # The Via names another port than the socket's: rport/received record the real source.
    data = request_bytes(9).replace(b"127.0.0.1:9", b"192.0.2.1:9")
    sock.sendto(data, transport.local["UDP"])
    message, flow = await inbox.get()
    assert isinstance(message, SipRequest)
    assert flow == Flow("UDP", "127.0.0.1", port)
    via = message.top_via
    assert via.received == "127.0.0.1" and via.rport == port
    # The response goes where rport/received say (RFC 3581), not to the Via's sent-by.
    target = response_flow(via, flow, transport)
    assert target == Flow("UDP", "127.0.0.1", port)
    transport.send(SipResponse(200, "OK", message.headers.copy()), target)
    assert (await recv_udp(sock)).startswith(b"SIP/2.0 200 OK")
    sock.close()


async def test_udp_malformed_input_gets_400_or_is_dropped_and_socket_keeps_serving(server):
    transport, inbox = server
    sock = udp_client()
    port = sock.getsockname()[1]
    sock.sendto(b"\x00\xffnot sip at all\r\n\r\n", transport.local["UDP"])
    sock.sendto(request_bytes(port, extra="Max-Forwards: 1\r\n"), transport.local["UDP"])
    answer = await recv_udp(sock)
    assert answer.startswith(b"SIP/2.0 400 ")  # two Max-Forwards, headers still usable
    assert b"Call-ID: call-1@test" in answer
    sock.sendto(b"x" * 5000, transport.local["UDP"])  # above max_message_size: dropped
    sock.sendto(b"\r\n\r\n", transport.local["UDP"])  # keep-alive: ignored
    sock.sendto(request_bytes(port), transport.local["UDP"])
    message, _ = await inbox.get()
    assert isinstance(message, SipRequest) and message.method == "OPTIONS"
    assert inbox.queue.empty()
    sock.close()


async def test_tcp_pong_400_and_framing_loss(server):
    transport, inbox = server
    reader, writer = await asyncio.open_connection(*transport.local["TCP"])
    writer.write(b"\r\n\r\n")  # RFC 5626 ping
    assert await asyncio.wait_for(reader.readexactly(2), 2) == b"\r\n"
    writer.write(request_bytes(1, transport="TCP", extra="Max-Forwards: 1\r\n"))
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 2)
    assert head.startswith(b"SIP/2.0 400 ")
    # The connection still serves: a good request arrives with its flow.
    local_port = writer.get_extra_info("sockname")[1]
    writer.write(request_bytes(1, transport="TCP"))
    message, flow = await inbox.get()
    assert flow == Flow("TCP", "127.0.0.1", local_port)
    assert transport.has_flow(flow) and transport.connections == 1
    # A reply to that flow reuses the connection.
    transport.send(SipResponse(200, "OK", message.headers.copy()), flow)
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 2)
    assert head.startswith(b"SIP/2.0 200 OK")
    # No Content-Length on a stream: framing is lost, 400 and close.
    writer.write(request_bytes(1, transport="TCP").replace(b"Content-Length: 0\r\n", b""))
    rest = await asyncio.wait_for(reader.read(), 2)
    assert rest.startswith(b"SIP/2.0 400 ")
    writer.close()
    await asyncio.sleep(0.05)
    assert not transport.has_flow(flow)


async def test_tcp_oversized_message_closes_only_that_connection(server):
    transport, inbox = server
    reader, writer = await asyncio.open_connection(*transport.local["TCP"])
    _, other_writer = await asyncio.open_connection(*transport.local["TCP"])
    writer.write(b"OPTIONS sip:x@y SIP/2.0\r\nX: " + b"a" * 5000)
    assert await asyncio.wait_for(reader.read(), 2) == b""
    other_writer.write(request_bytes(1, transport="TCP"))
    message, _ = await inbox.get()
    assert isinstance(message, SipRequest)
    other_writer.close()
    writer.close()


async def test_connection_limits():
    transport = SipTransport(lambda m, f: None, max_connections=1, first_message_timeout=0.2)
    host, port = await transport.listen_stream("127.0.0.1", 0)
    silent_reader, silent = await asyncio.open_connection(host, port)
    # The first connection never says anything: closed after the timeout.
    assert await asyncio.wait_for(silent_reader.read(), 2) == b""
    _, talker = await asyncio.open_connection(host, port)
    talker.write(request_bytes(1, transport="TCP"))
    await talker.drain()
    extra_reader, extra = await asyncio.open_connection(host, port)
    assert await asyncio.wait_for(extra_reader.read(), 2) == b""  # over the limit
    await asyncio.sleep(0.3)
    assert transport.connections == 1  # the talker stays past the timeout
    for writer in (silent, talker, extra):
        writer.close()
    await transport.close()


async def test_connect_failure_reports_error():
    transport = SipTransport(lambda m, f: None)
    await transport.listen_stream("127.0.0.1", 0)
    free = socket.socket()
    free.bind(("127.0.0.1", 0))
    port = free.getsockname()[1]
    free.close()
    failed = asyncio.Event()
    request = parse_message(request_bytes(1, transport="TCP"))
    transport.send(request, Flow("TCP", "127.0.0.1", port), on_error=failed.set)
    await asyncio.wait_for(failed.wait(), 5)
    assert transport.connections == 0
    await transport.close()


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


async def test_tls_flow_both_ways(ca, tmp_path):
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("sip.example.test").configure_cert(server_ctx)
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)

    server_inbox, client_inbox = Inbox(), Inbox()
    server = SipTransport(server_inbox)
    client = SipTransport(client_inbox, client_ssl=client_ctx)
    host, port = await server.listen_stream("127.0.0.1", 0, tls=server_ctx)
    await client.listen_stream("127.0.0.1", 0, tls=server_ctx)
    request = parse_message(request_bytes(5061, transport="TLS"))
    client.send(request, Flow("TLS", host, port), server_name="sip.example.test")
    received, flow = await server_inbox.get()
    assert flow.transport == "TLS" and received.call_id == "call-1@test"
    # The answer comes back over the client's own connection, not a new one.
    assert isinstance(received, SipRequest)
    server.send(SipResponse(200, "OK", received.headers.copy()), flow)
    answer, answer_flow = await client_inbox.get()
    assert isinstance(answer, SipResponse) and answer.status == 200
    assert answer_flow == Flow("TLS", host, port)
    assert client.connections == 1 and server.connections == 1
    # A wrong certificate name fails the connection.
    failed = asyncio.Event()
    other = SipTransport(client_inbox, client_ssl=client_ctx)
    other.send(request, Flow("TLS", host, port), server_name="evil.test", on_error=failed.set)
    await asyncio.wait_for(failed.wait(), 5)
    for t in (server, client, other):
        await t.close()


def _uri(text: str) -> SipURI:
    uri = parse_uri(text)
    assert isinstance(uri, SipURI)
    return uri


@pytest.mark.parametrize(
    ("uri", "hop"),
    [
        ("sip:bob@192.0.2.1", Hop("UDP", "192.0.2.1", 5060, False, False)),
        ("sip:bob@192.0.2.1:5070;transport=tcp", Hop("TCP", "192.0.2.1", 5070)),
        ("sip:bob@example.org;transport=TLS", Hop("TLS", "example.org", 5061, False)),
        ("sips:bob@example.org", Hop("TLS", "example.org", 5061, False)),
        ("sips:bob@example.org:7000;transport=tcp", Hop("TLS", "example.org", 7000)),
        ("sip:bob@example.org;maddr=192.0.2.9", Hop("UDP", "192.0.2.9", 5060, False, False)),
        ("sip:[2001:db8::1]:5080", Hop("UDP", "2001:db8::1", 5080, True, False)),
    ],
)
def test_next_hop(uri, hop):
    assert next_hop(_uri(uri)) == hop


def test_next_hop_rejects_unknown_transports():
    with pytest.raises(UnsupportedTransport):
        next_hop(_uri("sip:bob@example.org;transport=sctp"))
    with pytest.raises(UnsupportedTransport):
        next_hop(_uri("sips:bob@example.org;transport=udp"))


async def test_resolve_names_and_numbers():
    assert await resolve(Hop("TCP", "127.0.0.1", 5060)) == [Flow("TCP", "127.0.0.1", 5060)]
    flows = await resolve(Hop("UDP", "localhost", 5070))
    assert flows and all(f.port == 5070 and f.transport == "UDP" for f in flows)
    with pytest.raises(OSError):
        await resolve(Hop("UDP", "no-such-host.invalid", 5060))


# RFC 5769 §2.2/§2.3 sample XOR-MAPPED-ADDRESS values (port 32853).
TXID = bytes.fromhex("b7e7a701bc34d686fa87dfae")


@pytest.mark.parametrize(
    ("host", "value"),
    [
        ("192.0.2.1", "0001a147e112a643"),
        (
            "2001:db8:1234:5678:11:2233:4455:6677",
            "0002a1470113a9faa5d3f179bc25f4b5bed2b9d9",
        ),
    ],
)
def test_stun_binding_response_vectors(host, value):
    request = bytes.fromhex("000100002112a442") + TXID
    response = stun_binding_response(request, host, 32853)
    assert response is not None
    assert response[:2] == b"\x01\x01" and response[4:20] == request[4:20]
    length = int.from_bytes(response[2:4], "big")
    assert response[20:] == bytes.fromhex(f"0020{len(value) // 2:04x}{value}")
    assert length == len(response) - 20
    assert stun_binding_response(request[:19], host, 1) is None  # truncated
    assert stun_binding_response(b"\x01\x01" + request[2:], host, 1) is None  # not a request


async def test_udp_stun_keepalive_is_answered(server):
    transport, inbox = server
    sock = udp_client()
    port = sock.getsockname()[1]
    sock.sendto(bytes.fromhex("000100002112a442") + TXID, transport.local["UDP"])
    answer = await recv_udp(sock)
    assert answer[:2] == b"\x01\x01" and answer[8:20] == TXID
    xport = int.from_bytes(answer[26:28], "big") ^ 0x2112
    assert xport == port
    assert inbox.queue.empty()
    sock.close()
