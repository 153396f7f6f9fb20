"""The provider HTTP/2 client against the simulators and a scriptable h2 server."""

from __future__ import annotations

import asyncio
import os
import ssl
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import h2.config
import h2.connection
import h2.errors
import h2.events
import jwt
import pytest
import trustme

from ucpush.relay.providers.h2client import (
    H2Client,
    H2ConnectError,
    H2ConnectionLost,
    H2Error,
    H2NotProcessed,
    H2QueueTimeout,
    H2Timeout,
)
from ucpush.sim import h2server
from ucpush.sim.apns import ApnsSimulator
from ucpush.sim.common import Fault
from ucpush.sim.h2server import H2Server, Request, Response

from .conftest import BUNDLE, KEY_ID, TEAM_ID, device_token

# -- fixtures -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


def server_tls(ca: trustme.CA, alpn: list[str] | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    if alpn is not None:
        context.set_alpn_protocols(alpn)
    return context


def client_tls(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return context


@pytest.fixture
async def clients() -> AsyncIterator[Callable[..., H2Client]]:
    made: list[H2Client] = []

    def make(url: str, **kwargs: object) -> H2Client:
        client = H2Client(url, **kwargs)  # type: ignore[arg-type]
        made.append(client)
        return client

    yield make
    for client in made:
        await client.aclose()


class Apns:
    """An APNs simulator with one device and the headers of a valid push."""

    def __init__(self, sim: ApnsSimulator, p8: Path) -> None:
        self.sim = sim
        self.token = device_token()
        sim.register_device(self.token, BUNDLE)
        jwt_token = jwt.encode(
            {"iss": TEAM_ID, "iat": int(sim.clock())},
            p8.read_bytes(),
            algorithm="ES256",
            headers={"kid": KEY_ID},
        )
        self.path = f"/3/device/{self.token}"
        self.headers = {
            "authorization": f"bearer {jwt_token}",
            "apns-topic": BUNDLE,
            "apns-push-type": "alert",
        }
        self.body = b'{"aps":{"alert":"hi"}}'

    async def push(self, client: H2Client) -> int:
        response = await client.post(self.path, content=self.body, headers=self.headers)
        return response.status_code


@pytest.fixture
async def apns(apns_key: tuple[Path, bytes]) -> AsyncIterator[Apns]:
    async with ApnsSimulator() as sim:
        sim.add_signing_key(TEAM_ID, KEY_ID, apns_key[1])
        yield Apns(sim, apns_key[0])


async def echo(request: Request) -> Response:
    headers = [("x-method", request.method), ("x-path", request.path)]
    headers += [(f"x-got-{name}", value) for name, value in request.headers]
    return Response(200, headers, request.body)


class RawServer:
    """A bare h2 server whose answers each test scripts, for what the simulators never do.

    ``on_request(protocol, stream_id)`` runs for every request; ``events`` records what the
    client sent.
    """

    def __init__(self, on_request: Callable[[RawProtocol, int], None]) -> None:
        self.on_request = on_request
        self.events: list[h2.events.Event] = []
        self.connections: list[RawProtocol] = []
        self._server: asyncio.Server | None = None
        self.url = ""

    async def __aenter__(self) -> RawServer:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: RawProtocol(self), "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._server is not None
        self._server.close()
        for protocol in self.connections:
            protocol.transport.abort()
        await self._server.wait_closed()

    def count(self, kind: type[h2.events.Event]) -> int:
        return sum(isinstance(event, kind) for event in self.events)


class RawProtocol(asyncio.Protocol):
    def __init__(self, server: RawServer) -> None:
        self.server = server
        self.h2 = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
        self.deaf = False  # drop everything received: a peer that silently died

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]
        self.server.connections.append(self)
        self.h2.initiate_connection()
        self.flush()

    def data_received(self, data: bytes) -> None:
        if self.deaf:
            return
        for event in self.h2.receive_data(data):
            self.server.events.append(event)
            if isinstance(event, h2.events.RequestReceived):
                self.server.on_request(self, event.stream_id)
        self.flush()

    def respond(self, stream_id: int, status: int = 200) -> None:
        self.h2.send_headers(stream_id, [(":status", str(status))], end_stream=True)
        self.flush()

    def flush(self) -> None:
        if not self.transport.is_closing():
            self.transport.write(self.h2.data_to_send())


def ok(protocol: RawProtocol, stream_id: int) -> None:
    protocol.respond(stream_id)


# -- TLS and h2c ----------------------------------------------------------------------


async def test_tls_with_alpn_h2(
    ca: trustme.CA, apns_key: tuple[Path, bytes], clients: Callable[..., H2Client]
) -> None:
    async with ApnsSimulator(ssl_context=server_tls(ca)) as sim:
        sim.add_signing_key(TEAM_ID, KEY_ID, apns_key[1])
        apns = Apns(sim, apns_key[0])
        client = clients(sim.url, ssl_context=client_tls(ca))
        response = await client.post(
            apns.path, content=apns.body, headers={**apns.headers, "apns-id": "x"}
        )
        assert response.status_code == 400  # the simulator checked our headers over TLS
        assert response.content == b'{"reason":"BadMessageId"}'
        assert await apns.push(client) == 200
        assert response.headers.get("apns-id")
        assert len(sim.delivered) == 1


async def test_untrusted_certificate_is_a_connect_error(
    ca: trustme.CA, clients: Callable[..., H2Client]
) -> None:
    server = H2Server(echo, ssl_context=server_tls(ca))
    await server.start()
    try:
        client = clients(server.url, ssl_context=ssl.create_default_context())
        with pytest.raises(H2ConnectError) as raised:
            await client.request("GET", "/")
        assert raised.value.not_processed
        assert raised.value.reason == "connect_error"
    finally:
        await server.stop()


async def test_server_without_h2_alpn_fails_clearly(
    ca: trustme.CA, clients: Callable[..., H2Client]
) -> None:
    async def http11_only(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()
        writer.close()

    server = await asyncio.start_server(
        http11_only, "127.0.0.1", 0, ssl=server_tls(ca, alpn=["http/1.1"])
    )
    port = server.sockets[0].getsockname()[1]
    try:
        client = clients(f"https://127.0.0.1:{port}", ssl_context=client_tls(ca))
        with pytest.raises(H2ConnectError, match="ALPN h2"):
            await client.request("GET", "/")
    finally:
        server.close()
        await server.wait_closed()


async def test_h2c_prior_knowledge_request_and_response(
    clients: Callable[..., H2Client],
) -> None:
    server = H2Server(echo)
    await server.start()
    try:
        client = clients(server.url + "/base/")
        assert client.busy == 0 and client.is_usable
        response = await client.request(
            "PUT", "/x?y=1", content=b"body", headers=[("X-Mixed-Case", "v"), ("x-two", "a")]
        )
        assert response.status_code == 200
        assert response.content == b"body"
        assert response.headers["x-method"] == "PUT"
        assert response.headers["x-path"] == "/base/x?y=1"
        assert response.headers["x-got-x-mixed-case"] == "v"
        assert response.headers["x-got-content-length"] == "4"
        get = await client.request("GET", "/")
        assert (get.status_code, get.content) == (200, b"")
        assert server.connection_count == 1
        await client.aclose()
        assert not client.is_usable
        with pytest.raises(RuntimeError):
            await client.request("GET", "/")
    finally:
        await server.stop()


async def test_nothing_listening_is_a_connect_error(clients: Callable[..., H2Client]) -> None:
    client = clients("http://127.0.0.1:9", timeout=1.0)
    with pytest.raises(H2ConnectError) as raised:
        await client.request("GET", "/")
    assert raised.value.not_processed
    assert client.busy == 0


# -- concurrency and flow control -----------------------------------------------------


async def test_thousand_requests_share_one_connection_within_the_stream_limit(
    monkeypatch: pytest.MonkeyPatch, clients: Callable[..., H2Client]
) -> None:
    monkeypatch.setattr(h2server, "MAX_CONCURRENT_STREAMS", 50)
    running = peak = 0

    async def slow(request: Request) -> Response:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0.005)
        running -= 1
        return Response(200, body=request.path.encode())

    server = H2Server(slow)
    await server.start()
    try:
        client = clients(server.url, timeout=30.0)
        responses = await asyncio.gather(*(client.post(f"/{i}", content=b"x") for i in range(1000)))
        assert [r.content for r in responses] == [f"/{i}".encode() for i in range(1000)]
        assert peak == 50  # the server's limit was used, never exceeded
        assert server.connection_count == 1
        assert client.busy == 0
    finally:
        await server.stop()


async def test_thousand_pushes_to_the_apns_simulator(
    apns: Apns, clients: Callable[..., H2Client]
) -> None:
    client = clients(apns.sim.url, timeout=30.0)
    statuses = await asyncio.gather(*(apns.push(client) for _ in range(1000)))
    assert statuses == [200] * 1000
    assert len(apns.sim.delivered) == 1000
    assert apns.sim.server.connection_count == 1


async def test_large_bodies_both_ways(clients: Callable[..., H2Client]) -> None:
    # 3 MiB each is beyond the server's 1 MiB stream window, and eight of them beyond every
    # connection window, so both sides must wait for WINDOW_UPDATEs.
    server = H2Server(echo, max_body=4 << 20)
    await server.start()
    try:
        client = clients(server.url, timeout=30.0)
        bodies = [os.urandom(3 << 20) for _ in range(8)]
        responses = await asyncio.gather(*(client.post("/", content=b) for b in bodies))
        assert [r.content for r in responses] == bodies
    finally:
        await server.stop()


async def test_early_answer_stops_the_upload(clients: Callable[..., H2Client]) -> None:
    server = H2Server(echo, max_body=1 << 20)  # 413 once the body passes the cap
    await server.start()
    try:
        client = clients(server.url, timeout=10.0)
        response = await client.post("/", content=bytes(8 << 20))
        assert response.status_code == 413
        assert (await client.post("/", content=b"ok")).content == b"ok"
        assert server.connection_count == 1
    finally:
        await server.stop()


# -- failures -------------------------------------------------------------------------


async def test_goaway_fails_later_streams_as_not_processed_and_reconnects(
    clients: Callable[..., H2Client],
) -> None:
    connections: set[int] = set()

    async def handler(request: Request) -> Response:
        connections.add(id(request.connection_state))
        if request.path == "/slow":
            await asyncio.sleep(0.2)
        if request.path == "/goaway":
            return Response.goaway()
        return Response(200, body=request.path.encode())

    server = H2Server(handler)
    await server.start()
    try:
        client = clients(server.url)
        slow = asyncio.ensure_future(client.request("GET", "/slow"))
        await asyncio.sleep(0.05)  # the slow stream is in flight below the GOAWAY
        with pytest.raises(H2NotProcessed) as raised:
            await client.request("GET", "/goaway")
        assert raised.value.reason == "goaway"
        assert raised.value.not_processed
        assert (await slow).content == b"/slow"
        assert (await client.request("GET", "/after")).content == b"/after"
        assert len(connections) == 2
    finally:
        await server.stop()


async def test_streams_below_goaway_finish_after_it(clients: Callable[..., H2Client]) -> None:
    """A server may send GOAWAY first and answer the streams it covers afterwards."""
    held: list[int] = []

    def on_request(protocol: RawProtocol, stream_id: int) -> None:
        held.append(stream_id)
        if len(held) == 2:
            # h2 would refuse to send anything after its own GOAWAY: keep its state open.
            state = protocol.h2.state_machine.state
            protocol.h2.close_connection(last_stream_id=held[0])
            protocol.h2.state_machine.state = state
            protocol.flush()
            protocol.respond(held[0])

    async with RawServer(on_request) as server:
        client = clients(server.url)
        first = asyncio.ensure_future(client.request("GET", "/1"))
        await asyncio.sleep(0.05)
        with pytest.raises(H2NotProcessed):
            await client.request("GET", "/2")
        assert (await first).status_code == 200


async def test_refused_stream_is_not_processed(clients: Callable[..., H2Client]) -> None:
    def refuse_first(protocol: RawProtocol, stream_id: int) -> None:
        if stream_id == 1:
            protocol.h2.reset_stream(stream_id, h2.errors.ErrorCodes.REFUSED_STREAM)
        else:
            protocol.respond(stream_id)

    async with RawServer(refuse_first) as server:
        client = clients(server.url)
        with pytest.raises(H2NotProcessed) as raised:
            await client.request("GET", "/")
        assert raised.value.reason == "refused_stream"
        assert (await client.request("GET", "/")).status_code == 200
        assert len(server.connections) == 1


async def test_reset_connection_is_lost_then_replaced(
    apns: Apns, clients: Callable[..., H2Client]
) -> None:
    client = clients(apns.sim.url)
    assert await apns.push(client) == 200
    apns.sim.inject(Fault("reset"))
    with pytest.raises(H2ConnectionLost) as raised:
        await apns.push(client)
    assert not raised.value.not_processed  # the request was sent: it may have been processed
    assert raised.value.reason == "connection_lost"
    assert await apns.push(client) == 200
    assert len(apns.sim.delivered) == 2


async def test_timeout_resets_the_stream_and_keeps_the_connection(
    apns: Apns, clients: Callable[..., H2Client]
) -> None:
    client = clients(apns.sim.url, timeout=0.2)
    apns.sim.inject(Fault("latency", delay=1.0))
    started = time.monotonic()
    with pytest.raises(H2Timeout) as raised:
        await apns.push(client)
    assert time.monotonic() - started < 0.9  # reset before the slow answer came
    assert not raised.value.not_processed
    assert client.busy == 0
    assert await apns.push(client) == 200
    assert apns.sim.server.connection_count == 1


async def test_waiting_for_a_stream_slot_times_out_unsent(
    monkeypatch: pytest.MonkeyPatch, clients: Callable[..., H2Client]
) -> None:
    monkeypatch.setattr(h2server, "MAX_CONCURRENT_STREAMS", 0)  # no slot ever frees up
    server = H2Server(echo)
    await server.start()
    try:
        client = clients(server.url, timeout=0.2)
        with pytest.raises(H2QueueTimeout) as raised:
            await client.request("GET", "/")
        assert raised.value.not_processed
        assert raised.value.reason == "pool_timeout"
        assert client.busy == 0
    finally:
        await server.stop()


async def test_cancelled_request_frees_its_stream(
    apns: Apns, clients: Callable[..., H2Client]
) -> None:
    client = clients(apns.sim.url)
    apns.sim.inject(Fault("latency", delay=1.0))
    task = asyncio.ensure_future(apns.push(client))
    await asyncio.sleep(0.1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert client.busy == 0
    assert await apns.push(client) == 200


async def test_server_closing_an_idle_connection(clients: Callable[..., H2Client]) -> None:
    def answer_then_hang_up(protocol: RawProtocol, stream_id: int) -> None:
        protocol.respond(stream_id)
        # What an idle timeout looks like: GOAWAY covering everything, then TCP close.
        protocol.h2.close_connection(last_stream_id=stream_id)
        protocol.flush()
        protocol.transport.close()

    async with RawServer(answer_then_hang_up) as server:
        client = clients(server.url)
        assert (await client.request("GET", "/")).status_code == 200
        await asyncio.sleep(0.05)
        assert (await client.request("GET", "/")).status_code == 200
        assert len(server.connections) == 2


async def test_idle_connection_is_pinged(clients: Callable[..., H2Client]) -> None:
    async with RawServer(ok) as server:
        client = clients(server.url, keepalive=0.1)
        assert (await client.request("GET", "/")).status_code == 200
        await asyncio.sleep(0.45)
        assert server.count(h2.events.PingReceived) >= 2
        assert (await client.request("GET", "/")).status_code == 200
        assert len(server.connections) == 1


async def test_unanswered_ping_closes_the_connection(clients: Callable[..., H2Client]) -> None:
    def go_silent(protocol: RawProtocol, stream_id: int) -> None:
        protocol.deaf = True  # the peer vanished: no answer, no PING ACK, no FIN

    async with RawServer(go_silent) as server:
        client = clients(server.url, keepalive=0.1, ping_timeout=0.1, timeout=5.0)
        started = time.monotonic()
        with pytest.raises(H2ConnectionLost):
            await client.request("GET", "/")
        assert time.monotonic() - started < 1.0  # the PING noticed, not the 5 s timeout
        assert len(server.connections) == 1


async def test_aclose_sends_goaway(clients: Callable[..., H2Client]) -> None:
    async with RawServer(ok) as server:
        client = clients(server.url)
        await client.request("GET", "/")
        await client.aclose()
        await asyncio.sleep(0.05)
        assert server.count(h2.events.ConnectionTerminated) == 1


def test_error_hierarchy() -> None:
    assert issubclass(H2ConnectError, H2NotProcessed)
    assert issubclass(H2QueueTimeout, H2Timeout) and H2QueueTimeout.not_processed
    for maybe_processed in (H2ConnectionLost, H2Timeout):
        assert issubclass(maybe_processed, H2Error) and not maybe_processed.not_processed
