"""The bare HTTP/2 server: streams, flow control, body cap, faults, TLS/ALPN, shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from collections.abc import AsyncIterator

import h2.connection
import h2.events
import h2.settings
import httpx
import pytest

from ucpush.sim.h2server import H2Server, Request, Response


async def echo(request: Request) -> Response:
    if request.path == "/slow":
        await asyncio.sleep(0.3)
    if request.path == "/boom":
        raise RuntimeError("handler bug")
    if request.path == "/reset":
        return Response.reset()
    if request.path == "/goaway":
        return Response.goaway()
    if request.path.startswith("/big/"):
        return Response(
            200, [("content-type", "application/octet-stream")], b"z" * int(request.path[5:])
        )
    headers = [("x-method", request.method), ("x-path", request.path)]
    headers += [("x-header-" + k, v) for k, v in request.headers if k.startswith("x-")]
    return Response(200, headers, request.body)


@pytest.fixture
async def server() -> AsyncIterator[H2Server]:
    server = H2Server(echo, max_body=100_000)
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(http1=False, http2=True, timeout=10) as client:
        yield client


async def test_request_fields_and_body_over_many_frames(
    server: H2Server, client: httpx.AsyncClient
) -> None:
    body = bytes(range(256)) * 300  # 76 800 bytes: several 16 KiB DATA frames
    response = await client.put(
        server.url + "/p?q=1", content=body, headers={"X-Thing": "A", "x-dup": "1"}
    )
    assert response.status_code == 200
    assert response.content == body
    assert response.headers["x-method"] == "PUT"
    assert response.headers["x-path"] == "/p?q=1"
    assert response.headers["x-header-x-thing"] == "A"  # names arrive lower-case


async def test_response_larger_than_client_window(
    server: H2Server, client: httpx.AsyncClient
) -> None:
    # 1 MB exceeds the 65 535-byte initial window: the server must wait for WINDOW_UPDATEs.
    response = await client.get(server.url + "/big/1000000")
    assert len(response.content) == 1_000_000


async def test_concurrent_big_responses(server: H2Server, client: httpx.AsyncClient) -> None:
    responses = await asyncio.gather(*(client.get(server.url + "/big/200000") for _ in range(20)))
    assert all(len(r.content) == 200_000 for r in responses)


async def test_body_cap(server: H2Server, client: httpx.AsyncClient) -> None:
    response = await client.post(server.url + "/", content=b"x" * 100_001)
    assert response.status_code == 413
    assert (await client.post(server.url + "/", content=b"ok")).content == b"ok"


async def test_handler_exception_is_500(server: H2Server, client: httpx.AsyncClient) -> None:
    assert (await client.get(server.url + "/boom")).status_code == 500
    assert server.handler_errors == 1
    assert (await client.get(server.url + "/")).status_code == 200


async def test_slow_request_does_not_block(server: H2Server, client: httpx.AsyncClient) -> None:
    loop = asyncio.get_running_loop()
    slow = asyncio.create_task(client.get(server.url + "/slow"))
    await asyncio.sleep(0.05)
    start = loop.time()
    await asyncio.gather(*(client.get(server.url + "/") for _ in range(10)))
    assert loop.time() - start < 0.25
    assert (await slow).status_code == 200
    assert server.connection_count == 1


async def test_many_streams(server: H2Server) -> None:
    # httpx caps itself at 100 streams per connection; several clients load one server.
    clients = [httpx.AsyncClient(http1=False, http2=True) for _ in range(3)]
    try:
        responses = await asyncio.gather(
            *(c.post(server.url + "/", content=b"%d" % i) for i in range(150) for c in clients)
        )
    finally:
        await asyncio.gather(*(c.aclose() for c in clients))
    assert len(responses) == 450
    assert all(r.status_code == 200 for r in responses)


async def test_reset_and_goaway(server: H2Server, client: httpx.AsyncClient) -> None:
    with pytest.raises(httpx.TransportError):
        await client.get(server.url + "/reset")
    assert (await client.get(server.url + "/")).status_code == 200
    with pytest.raises(httpx.TransportError):
        # Stream 3 of the new connection: last_stream_id 1, so httpx retries on a new
        # connection, which refuses again (stream 1, last_stream_id 0): an error surfaces.
        await client.get(server.url + "/goaway")
    assert (await client.get(server.url + "/")).status_code == 200


async def test_garbage_and_http1_are_dropped(server: H2Server, client: httpx.AsyncClient) -> None:
    for data in (
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        b"\x00" * 100,
        # Preface, then a DATA frame on stream 0.
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x01\x00\x00\x00\x00\x00\x00x",
    ):
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(data)
        await writer.drain()
        await asyncio.wait_for(reader.read(), timeout=5)  # server closes the connection
        writer.close()
    assert (await client.get(server.url + "/")).status_code == 200


async def test_client_disconnect_cancels_handler(server: H2Server) -> None:
    async with httpx.AsyncClient(http1=False, http2=True, timeout=0.05) as impatient:
        with pytest.raises(httpx.TimeoutException):
            await impatient.get(server.url + "/slow")
    await asyncio.sleep(0.4)
    assert server.handler_errors == 0


async def test_graceful_stop_drains_in_flight() -> None:
    server = H2Server(echo)
    await server.start()
    async with httpx.AsyncClient(http1=False, http2=True) as client:
        slow = asyncio.create_task(client.get(server.url + "/slow"))
        await asyncio.sleep(0.05)
        await server.stop(grace=2)
        assert (await slow).status_code == 200
        with pytest.raises(httpx.TransportError):
            await client.get(server.url + "/")


async def test_tls_requires_alpn_h2(server_ssl: ssl.SSLContext, client_ssl: ssl.SSLContext) -> None:
    server = H2Server(echo, ssl_context=server_ssl)
    await server.start()
    try:
        assert server.url.startswith("https://127.0.0.1:")
        async with httpx.AsyncClient(http2=True, verify=client_ssl) as client:
            response = await client.get(server.url + "/")
            assert response.http_version == "HTTP/2"
        async with httpx.AsyncClient(http1=True, http2=False, verify=client_ssl) as client:
            with pytest.raises(httpx.TransportError):
                await client.get(server.url + "/")
    finally:
        await server.stop()


async def test_tls_without_alpn_speaks_h2_directly(
    server_ssl: ssl.SSLContext, client_ssl: ssl.SSLContext
) -> None:
    server = H2Server(echo, ssl_context=server_ssl)
    await server.start()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port, ssl=client_ssl)
        assert writer.get_extra_info("ssl_object").selected_alpn_protocol() is None
        client = h2.connection.H2Connection()
        client.initiate_connection()
        client.send_headers(
            1,
            [(":method", "GET"), (":scheme", "https"), (":authority", "x"), (":path", "/a")],
            end_stream=True,
        )
        writer.write(client.data_to_send())
        status = None
        while status is None:
            data = await asyncio.wait_for(reader.read(65535), 5)
            assert data
            for event in client.receive_data(data):
                if isinstance(event, h2.events.ResponseReceived):
                    status = dict(event.headers)[b":status"]
        assert status == b"200"
        writer.close()
    finally:
        await server.stop()


def test_request_header_helpers() -> None:
    request = Request("GET", "/", [("a", "1"), ("b", "2"), ("a", "3")], b"")
    assert request.header("a") == "1"
    assert request.header("c") is None
    assert request.header_dict == {"a": "1", "b": "2"}


async def test_ipv6_url() -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    server = H2Server(echo, host="::1")
    try:
        await server.start()
    except OSError:
        pytest.skip("IPv6 loopback unavailable")
    try:
        assert server.url == f"http://[::1]:{server.port}"
    finally:
        await server.stop()


class RawClient:
    """A bare h2 client, for what httpx cannot do: >100 streams, tiny windows, odd framing."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.conn = h2.connection.H2Connection()
        self.bodies: dict[int, bytearray] = {}
        self.status: dict[int, bytes] = {}
        self.done: set[int] = set()
        self.settings_received = False

    @classmethod
    async def connect(cls, port: int, window: int | None = None) -> RawClient:
        client = cls(*await asyncio.open_connection("127.0.0.1", port))
        client.conn.initiate_connection()
        if window is not None:
            client.conn.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: window})
        client.flush()
        while not client.settings_received:
            await client.read()
        return client

    def flush(self) -> None:
        self.writer.write(self.conn.data_to_send())

    async def read(self, ack: bool = True) -> None:
        data = await asyncio.wait_for(self.reader.read(65535), 10)
        assert data, "server closed the connection"
        for event in self.conn.receive_data(data):
            if isinstance(event, h2.events.RemoteSettingsChanged):
                self.settings_received = True
            elif isinstance(event, h2.events.ResponseReceived):
                self.status[event.stream_id] = dict(event.headers)[b":status"]
            elif isinstance(event, h2.events.DataReceived):
                self.bodies.setdefault(event.stream_id, bytearray()).extend(event.data)
                if ack:
                    self.conn.acknowledge_received_data(
                        event.flow_controlled_length, event.stream_id
                    )
            elif isinstance(event, h2.events.StreamEnded):
                self.done.add(event.stream_id)
        self.flush()

    def request(self, path: str, body: bytes = b"", chunk: int | None = None) -> int:
        stream_id = self.conn.get_next_available_stream_id()
        headers = [(":method", "POST"), (":scheme", "http"), (":authority", "t"), (":path", path)]
        self.conn.send_headers(stream_id, headers, end_stream=not body)
        step = chunk or max(len(body), 1)
        for offset in range(0, len(body), step):
            piece = body[offset : offset + step]
            self.conn.send_data(stream_id, piece, end_stream=offset + step >= len(body))
        self.flush()
        return stream_id


async def test_hundreds_of_concurrent_streams_on_one_connection(server: H2Server) -> None:
    client = await RawClient.connect(server.port)
    assert client.conn.remote_settings.max_concurrent_streams == 1000
    ids = [client.request("/slow", b"%d" % i) for i in range(300)]
    # All 300 requests are in flight together: each handler sleeps 0.3 s.
    loop = asyncio.get_running_loop()
    start = loop.time()
    while not client.done.issuperset(ids):
        await client.read()
    assert loop.time() - start < 2
    assert [bytes(client.bodies[i]) for i in ids] == [b"%d" % i for i in range(300)]
    assert server.connection_count == 1
    client.writer.close()


async def test_body_in_many_small_data_frames(server: H2Server) -> None:
    client = await RawClient.connect(server.port)
    body = bytes(range(256)) * 8
    stream_id = client.request("/", body, chunk=7)
    while stream_id not in client.done:
        await client.read()
    assert bytes(client.bodies[stream_id]) == body
    client.writer.close()


async def test_respects_small_client_window(server: H2Server) -> None:
    client = await RawClient.connect(server.port, window=1000)
    stream_id = client.request("/big/5000")
    # Without acknowledgements the server may send only the 1000-byte window.
    for _ in range(3):
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(client.read(ack=False), 0.2)
    assert len(client.bodies[stream_id]) == 1000
    assert stream_id not in client.done
    client.conn.acknowledge_received_data(1000, stream_id)
    client.flush()
    while stream_id not in client.done:
        await client.read()
    assert bytes(client.bodies[stream_id]) == b"z" * 5000
    client.writer.close()


def test_runs_under_uvloop() -> None:
    uvloop = pytest.importorskip("uvloop")  # the relay's server loop, in `ucpush up`

    async def scenario() -> None:
        server = H2Server(echo)
        await server.start()
        async with httpx.AsyncClient(http1=False, http2=True) as client:
            assert (await client.post(server.url + "/", content=b"x")).content == b"x"
            assert len((await client.get(server.url + "/big/200000")).content) == 200_000
            with pytest.raises(httpx.TransportError):
                await client.get(server.url + "/reset")
            assert (await client.get(server.url + "/")).status_code == 200
        await server.stop()

    uvloop.run(scenario())
