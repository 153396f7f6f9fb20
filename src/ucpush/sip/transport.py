"""asyncio transports for SIP: UDP, TCP and TLS listeners plus outbound connections.

Bytes in, parsed messages out: every received message is handed to ``on_message`` with the
``Flow`` it came on, after the server-transport duties of RFC 3261 §18.2.1 / RFC 3581 (top Via
gets ``received``, and ``rport`` filled in). Input that does not parse is answered with the
parser's 400/505 when the request's Via/From/To/Call-ID/CSeq were readable and dropped
otherwise; the socket or connection keeps serving (a stream whose framing is lost is closed,
since nothing after it can be trusted). Messages are bounded by ``max_message_size``, inbound
connections by ``max_connections`` and by ``first_message_timeout`` for the first message.

Stream connections, inbound and outbound, live in one table keyed by ``Flow`` so a request to
a peer reuses the connection the peer opened (RFC 3261 §18, RFC 5626 flows) and responses go
back over the connection the request came on. Keep-alives are answered: CRLF pings on
streams (RFC 5626 §4.4.1) and STUN Binding requests on UDP (§4.4.2). Sending never blocks: a
send to a new stream flow connects in the background and reports failure through
``on_error`` on a later loop iteration (never re-entrantly, so callers may send from inside
their own state machines).
"""

from __future__ import annotations

import asyncio
import ipaddress
import ssl
import struct
from collections.abc import Callable
from typing import cast

from ucpush.logging import get_logger
from ucpush.sip.errors import SipParseError
from ucpush.sip.framing import (
    DEFAULT_MAX_MESSAGE_SIZE,
    InvalidMessage,
    MessageReceived,
    SendPong,
    StreamError,
    StreamFramer,
    parse_datagram,
)
from ucpush.sip.helpers import error_response, stamp_received
from ucpush.sip.message import SipRequest, SipResponse
from ucpush.sip.resolve import Flow

log = get_logger(__name__)

MessageHandler = Callable[[SipRequest | SipResponse, Flow], None]
ErrorCallback = Callable[[], None]
# Outbound TCP/TLS connects give up after this long (well below Timer B/F).
CONNECT_TIMEOUT = 10.0
# Inbound connections: at most this many, each closed if no SIP message comes within the
# timeout (a registered device's connection then lives as long as the device keeps it).
DEFAULT_MAX_CONNECTIONS = 20000
FIRST_MESSAGE_TIMEOUT = 30.0
_STUN_COOKIE = bytes.fromhex("2112a442")


def stun_binding_response(data: bytes, host: str, port: int) -> bytes | None:
    """Answer to an RFC 5389 STUN Binding request (the UDP keep-alive of RFC 5626 §4.4.2):
    a success response whose XOR-MAPPED-ADDRESS tells the client its public address. None for
    anything else (other STUN messages, or not STUN)."""
    if len(data) < 20 or data[:2] != b"\x00\x01" or data[4:8] != _STUN_COOKIE:
        return None
    transaction = data[8:20]
    address = ipaddress.ip_address(host)
    family = 1 if address.version == 4 else 2
    mask = _STUN_COOKIE + (transaction if family == 2 else b"")
    xaddr = bytes(a ^ b for a, b in zip(address.packed, mask, strict=False))
    xport = port ^ int.from_bytes(_STUN_COOKIE[:2], "big")
    value = struct.pack("!BBH", 0, family, xport) + xaddr
    attribute = struct.pack("!HH", 0x0020, len(value)) + value
    return struct.pack("!HH", 0x0101, len(attribute)) + _STUN_COOKIE + transaction + attribute


def _peer(address: tuple[str, int] | tuple[str, int, int, int]) -> tuple[str, int]:
    return str(address[0]), int(address[1])


class _Datagram(asyncio.DatagramProtocol):
    def __init__(self, owner: SipTransport) -> None:
        self.owner = owner
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # Not an isinstance check: some loops' datagram transports do not subclass it.
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        host, port = _peer(addr)
        if data[:1] in (b"\x00", b"\x01"):  # STUN: its first two bits are zero, SIP's are not
            reply = stun_binding_response(data, host, port)
            if reply is not None and self.transport is not None:
                self.transport.sendto(reply, addr)
            return
        flow = Flow("UDP", host, port)
        try:
            message = parse_datagram(data, max_message_size=self.owner.max_message_size)
        except SipParseError as exc:
            self.owner.reject(exc, flow, lambda raw: self._reply(raw, addr))
            return
        if message is not None:
            self.owner.deliver(message, flow)

    def _reply(self, raw: bytes, addr: tuple[str, int]) -> None:
        if self.transport is not None:
            self.transport.sendto(raw, addr)

    def error_received(self, exc: Exception) -> None:
        # ICMP errors from earlier sends surface here; the socket stays usable.
        log.debug("sip.udp.icmp_error", error=str(exc))


class _Stream(asyncio.Protocol):
    """One TCP or TLS connection, inbound or outbound."""

    def __init__(self, owner: SipTransport, transport_name: str, flow: Flow | None = None) -> None:
        self.owner = owner
        self.name = transport_name
        self.flow = flow
        self.framer = StreamFramer(max_message_size=owner.max_message_size)
        self.transport: asyncio.Transport | None = None
        self.pending: list[tuple[bytes, ErrorCallback | None]] = []
        self.closed = False
        self._silence: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        if self.flow is None:  # inbound
            host, port = _peer(self.transport.get_extra_info("peername"))
            self.flow = Flow(self.name, host, port)
            if self.owner.connections >= self.owner.max_connections:
                log.warning("sip.transport.too_many_connections", flow=str(self.flow))
                self.closed = True
                self.transport.abort()
                return
            self.owner.add_stream(self)
            # A peer that connects and never sends a request only holds a socket.
            self._silence = asyncio.get_running_loop().call_later(
                self.owner.first_message_timeout, self.transport.abort
            )
        for raw, _ in self.pending:
            self.transport.write(raw)
        self.pending.clear()

    def data_received(self, data: bytes) -> None:
        assert self.flow is not None and self.transport is not None
        try:
            events = self.framer.feed(data)
        except RuntimeError:
            return  # already broken and closing
        for event in events:
            if isinstance(event, MessageReceived):
                if self._silence is not None:
                    self._silence.cancel()
                    self._silence = None
                self.owner.deliver(event.message, self.flow)
            elif isinstance(event, InvalidMessage):
                self.owner.reject(event.error, self.flow, self.write)
            elif isinstance(event, SendPong):
                self.write(event.data)
            elif isinstance(event, StreamError):
                self.owner.reject(event.error, self.flow, self.write)
                self.transport.close()

    def write(self, raw: bytes, on_error: ErrorCallback | None = None) -> None:
        if self.closed:
            if on_error is not None:
                asyncio.get_running_loop().call_soon(on_error)
        elif self.transport is None:
            self.pending.append((raw, on_error))
        else:
            self.transport.write(raw)

    def connection_lost(self, exc: Exception | None) -> None:
        self.fail()

    def fail(self) -> None:
        if self._silence is not None:
            self._silence.cancel()
        if self.closed:
            return
        self.closed = True
        self.owner.remove_stream(self)
        if self.transport is not None and self.flow is not None:
            self.owner.flow_lost(self.flow)
        loop = asyncio.get_running_loop()
        for _, on_error in self.pending:
            if on_error is not None:
                loop.call_soon(on_error)
        self.pending.clear()


class SipTransport:
    """Listeners and the flow table. ``on_message`` is called for every parsed message."""

    def __init__(
        self,
        on_message: MessageHandler,
        *,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        client_ssl: ssl.SSLContext | None = None,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        first_message_timeout: float = FIRST_MESSAGE_TIMEOUT,
    ) -> None:
        self.on_message = on_message
        self.max_message_size = max_message_size
        self.max_connections = max_connections
        self.first_message_timeout = first_message_timeout
        self.client_ssl = client_ssl
        # Bound (host, port) per transport; what Via and Record-Route advertise.
        self.local: dict[str, tuple[str, int]] = {}
        self._udp: _Datagram | None = None
        self._servers: list[asyncio.AbstractServer] = []
        self._streams: dict[Flow, _Stream] = {}
        # Told when an established connection closes (the transaction layer fails the
        # requests still waiting for an answer on it).
        self.on_flow_lost: Callable[[Flow], None] | None = None

    # listening

    async def listen_udp(self, host: str, port: int) -> tuple[str, int]:
        loop = asyncio.get_running_loop()
        transport, protocol = await loop.create_datagram_endpoint(
            lambda: _Datagram(self), local_addr=(host, port)
        )
        self._udp = protocol
        self.local["UDP"] = _peer(transport.get_extra_info("sockname"))
        return self.local["UDP"]

    async def listen_stream(
        self, host: str, port: int, *, tls: ssl.SSLContext | None = None
    ) -> tuple[str, int]:
        """TCP, or TLS (SIPS) when ``tls`` is given."""
        name = "TLS" if tls is not None else "TCP"
        loop = asyncio.get_running_loop()
        server = await loop.create_server(lambda: _Stream(self, name), host, port, ssl=tls)
        self._servers.append(server)
        self.local[name] = _peer(server.sockets[0].getsockname())
        return self.local[name]

    async def close(self) -> None:
        for server in self._servers:
            server.close()
        for stream in list(self._streams.values()):
            if stream.transport is not None:
                stream.transport.close()
            stream.fail()
        if self._udp is not None and self._udp.transport is not None:
            self._udp.transport.close()
        for server in self._servers:
            await server.wait_closed()
        self._servers.clear()

    # receiving

    def deliver(self, message: SipRequest | SipResponse, flow: Flow) -> None:
        if isinstance(message, SipRequest):
            stamp_received(message, flow.host, flow.port)
        try:
            self.on_message(message, flow)
        except Exception:
            # One bad message (or a bug it triggers) must not take the listener down.
            log.exception("sip.transport.handler_failed", flow=str(flow))

    def reject(self, error: SipParseError, flow: Flow, write: Callable[[bytes], None]) -> None:
        response = error_response(error)
        log.info(
            "sip.transport.malformed",
            flow=f"{flow.transport} {flow.host}:{flow.port}",
            reason=error.reason,
            answered=response is not None,
        )
        if response is not None:
            write(response.serialize())

    # the flow table

    def add_stream(self, stream: _Stream) -> None:
        assert stream.flow is not None
        self._streams[stream.flow] = stream

    def remove_stream(self, stream: _Stream) -> None:
        if stream.flow is not None and self._streams.get(stream.flow) is stream:
            del self._streams[stream.flow]

    def flow_lost(self, flow: Flow) -> None:
        if self.on_flow_lost is not None:
            # Not re-entrantly: the connection may close inside a send.
            asyncio.get_running_loop().call_soon(self.on_flow_lost, flow)

    def has_flow(self, flow: Flow) -> bool:
        """Can we send on ``flow`` without opening anything (a live connection, or UDP)?"""
        if flow.transport == "UDP":
            return self._udp is not None
        stream = self._streams.get(flow)
        return stream is not None and not stream.closed

    @property
    def connections(self) -> int:
        return len(self._streams)

    # sending

    def send(
        self,
        message: SipRequest | SipResponse,
        flow: Flow,
        *,
        server_name: str | None = None,
        on_error: ErrorCallback | None = None,
    ) -> None:
        """Send on ``flow``, connecting first if it is a stream flow we do not have.
        ``server_name`` is the name a TLS certificate is checked against."""
        raw = message.serialize()
        loop = asyncio.get_running_loop()
        if flow.transport == "UDP":
            udp = self._udp.transport if self._udp is not None else None
            if udp is None:
                if on_error is not None:
                    loop.call_soon(on_error)
                return
            try:
                udp.sendto(raw, (flow.host, flow.port))
            except OSError:
                if on_error is not None:
                    loop.call_soon(on_error)
            return
        stream = self._streams.get(flow)
        if stream is None or stream.closed:
            stream = self._connect(flow, server_name)
        stream.write(raw, on_error)

    def _connect(self, flow: Flow, server_name: str | None) -> _Stream:
        stream = _Stream(self, flow.transport, flow)
        self._streams[flow] = stream
        asyncio.get_running_loop().create_task(self._open(stream, server_name))
        return stream

    async def _open(self, stream: _Stream, server_name: str | None) -> None:
        assert stream.flow is not None
        flow = stream.flow
        context: ssl.SSLContext | None = None
        if flow.transport == "TLS":
            context = self.client_ssl or ssl.create_default_context()
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT):
                await loop.create_connection(
                    lambda: stream,
                    flow.host,
                    flow.port,
                    ssl=context,
                    server_hostname=(server_name or flow.host) if context else None,
                )
        except (OSError, TimeoutError, ssl.SSLError) as exc:
            log.info("sip.transport.connect_failed", flow=str(flow), error=str(exc))
            stream.fail()
