"""Minimal asyncio HTTP/2 server on the sans-IO ``h2`` library, shared by the simulators.

TLS with ALPN ``h2`` when an ``ssl.SSLContext`` is given, otherwise cleartext HTTP/2 with prior
knowledge (h2c). Each complete request runs as its own task, so a slow handler never blocks the
other streams of its connection. Handlers can also ask for two faults that real providers
produce: an abrupt TCP reset, or a GOAWAY that leaves the current stream unprocessed.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import socket
import ssl
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, cast

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings
import hpack.hpack

MAX_CONCURRENT_STREAMS = 1000
DEFAULT_MAX_BODY = 64 * 1024
# Larger receive windows let clients push many concurrent bodies without waiting for us.
_STREAM_WINDOW = 1 << 20
_CONNECTION_WINDOW = 1 << 24


_decode_huffman = hpack.hpack.decode_huffman


@functools.lru_cache(maxsize=4096)
def _decode_huffman_cached(data: bytes) -> bytes:
    return _decode_huffman(data)


def _decode_huffman_fast(data: bytes | bytearray | memoryview | None) -> bytes:
    return _decode_huffman_cached(bytes(data or b""))


# HTTP/2 clients send ``authorization`` never-indexed, so every request carries the same JWT
# Huffman-coded, and hpack's pure-Python decoder was the largest cost per request. Decoding is
# a pure function of the bytes, so a bounded cache changes nothing but speed.
hpack.hpack.decode_huffman = _decode_huffman_fast


class Action(Enum):
    RESPOND = "respond"
    RESET = "reset"  # drop the TCP connection without answering
    GOAWAY = "goaway"  # GOAWAY below this stream; the stream is never answered


@dataclass(slots=True)
class Request:
    method: str
    path: str
    # Lower-case names in arrival order, pseudo-headers excluded; duplicates preserved.
    headers: list[tuple[str, str]]
    body: bytes
    authority: str = ""
    scheme: str = "http"
    stream_id: int = 0
    # Per-connection state a handler may keep (APNs tracks the provider token per connection).
    connection_state: dict[str, Any] = field(default_factory=dict)

    def header(self, name: str) -> str | None:
        """First value of header ``name`` (lower-case), or None."""
        for key, value in self.headers:
            if key == name:
                return value
        return None

    @property
    def header_dict(self) -> dict[str, str]:
        """Headers as a dict; the first value wins for duplicates."""
        result: dict[str, str] = {}
        for key, value in self.headers:
            result.setdefault(key, value)
        return result


@dataclass(slots=True)
class Response:
    status: int = 200
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""
    action: Action = Action.RESPOND

    @classmethod
    def reset(cls) -> Response:
        return cls(action=Action.RESET)

    @classmethod
    def goaway(cls) -> Response:
        return cls(action=Action.GOAWAY)


Handler = Callable[[Request], Awaitable[Response]]
OversizeHandler = Callable[[Request], Response]


@dataclass(slots=True)
class _Stream:
    headers: list[tuple[str, str]]
    method: str = ""
    path: str = ""
    authority: str = ""
    scheme: str = "http"
    chunks: list[bytes] = field(default_factory=list)
    size: int = 0
    oversize: bool = False
    task: asyncio.Task[None] | None = None
    pending: bytes = b""  # response body waiting for flow-control window


def _decode(value: bytes) -> str:
    return value.decode("utf-8", "replace")


class _Connection(asyncio.Protocol):
    def __init__(self, server: H2Server) -> None:
        self.server = server
        self.conn = h2.connection.H2Connection(
            h2.config.H2Configuration(
                client_side=False,
                header_encoding=None,
                # Responses are built here from lower-case literals: checking them per
                # request costs more than the rest of the response path.
                validate_outbound_headers=False,
                normalize_outbound_headers=False,
            )
        )
        self.transport: asyncio.Transport | None = None
        self.streams: dict[int, _Stream] = {}
        self.state: dict[str, Any] = {}
        self.flush_scheduled = False
        self.closed = False
        # Set once we decided to GOAWAY: streams above it are refused, the rest drain.
        self.goaway_last_stream: int | None = None
        self.highest_stream = 0
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    # -- asyncio.Protocol -------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        transport = cast(asyncio.Transport, transport)
        self.transport = transport
        ssl_object = transport.get_extra_info("ssl_object")
        # No ALPN at all is tolerated (some APNs clients, e.g. aioapns, speak h2 directly);
        # anything else negotiated is not HTTP/2.
        if ssl_object is not None and ssl_object.selected_alpn_protocol() not in (None, "h2"):
            transport.abort()
            return
        self.server._connections.add(self)
        self.conn.local_settings = h2.settings.Settings(
            client=False,
            initial_values={
                h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: MAX_CONCURRENT_STREAMS,
                h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: _STREAM_WINDOW,
            },
        )
        self.conn.initiate_connection()
        self.conn.increment_flow_control_window(_CONNECTION_WINDOW - 65535)
        self._flush()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.server._connections.discard(self)
        if not self.done.done():
            self.done.set_result(None)
        # In-flight requests of a dead connection were never answered: do not process them.
        for stream in self.streams.values():
            if stream.task is not None:
                stream.task.cancel()
        self.streams.clear()

    def pause_writing(self) -> None:
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.resume_reading()

    def data_received(self, data: bytes) -> None:
        try:
            events = self.conn.receive_data(data)
        except h2.exceptions.ProtocolError:
            self._abort_protocol_error()
            return
        for event in events:
            if isinstance(event, h2.events.RequestReceived):
                self._on_request(event)
            elif isinstance(event, h2.events.DataReceived):
                self._on_data(event)
            elif isinstance(event, h2.events.StreamEnded):
                self._on_end(event.stream_id)
            elif isinstance(event, h2.events.StreamReset):
                self._drop_stream(event.stream_id)
            elif isinstance(event, h2.events.WindowUpdated):
                self._on_window(event.stream_id)
            elif isinstance(event, h2.events.ConnectionTerminated):
                self._flush_now()
                if self.transport is not None:
                    self.transport.close()
                return
        self._flush()

    # -- events -----------------------------------------------------------------------

    def _on_request(self, event: h2.events.RequestReceived) -> None:
        self.highest_stream = max(self.highest_stream, event.stream_id)
        if self.goaway_last_stream is not None and event.stream_id > self.goaway_last_stream:
            return  # refused: never processed
        stream = _Stream(headers=[])
        for raw_name, raw_value in event.headers or ():
            name = _decode(raw_name)
            value = _decode(raw_value)
            if name[:1] == ":":
                if name == ":method":
                    stream.method = value
                elif name == ":path":
                    stream.path = value
                elif name == ":authority":
                    stream.authority = value
                elif name == ":scheme":
                    stream.scheme = value
            else:
                stream.headers.append((name, value))
        if not stream.authority:
            stream.authority = next((v for k, v in stream.headers if k == "host"), "")
        self.streams[event.stream_id] = stream

    def _on_data(self, event: h2.events.DataReceived) -> None:
        # Credit the window straight away: bodies are buffered in memory, capped below.
        if event.flow_controlled_length:
            with contextlib.suppress(h2.exceptions.StreamClosedError):
                self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
        stream = self.streams.get(event.stream_id)
        if stream is None or stream.oversize:
            return
        stream.size += len(event.data)
        if stream.size > self.server.max_body:
            stream.oversize = True
            stream.chunks.clear()
        else:
            stream.chunks.append(event.data)

    def _on_end(self, stream_id: int) -> None:
        stream = self.streams.get(stream_id)
        if stream is None:
            return
        request = Request(
            method=stream.method,
            path=stream.path,
            headers=stream.headers,
            body=b"".join(stream.chunks),
            authority=stream.authority,
            scheme=stream.scheme,
            stream_id=stream_id,
            connection_state=self.state,
        )
        stream.chunks = []
        if stream.oversize:
            self._respond(stream_id, self.server.oversize(request))
            return
        stream.task = asyncio.ensure_future(self._run(stream_id, request))

    def _on_window(self, stream_id: int) -> None:
        targets = list(self.streams) if stream_id == 0 else [stream_id]
        for sid in targets:
            stream = self.streams.get(sid)
            if stream is not None and stream.pending:
                self._send_body(sid, stream)

    def _drop_stream(self, stream_id: int) -> None:
        stream = self.streams.pop(stream_id, None)
        if stream is not None and stream.task is not None:
            stream.task.cancel()
        self._maybe_finish_drain()

    # -- responses --------------------------------------------------------------------

    async def _run(self, stream_id: int, request: Request) -> None:
        try:
            response = await self.server.handler(request)
        except Exception:  # a handler bug must not kill the connection
            self.server.handler_errors += 1
            response = Response(500)
        if self.closed or stream_id not in self.streams:
            return
        stream = self.streams[stream_id]
        stream.task = None
        self._respond(stream_id, response)

    def _respond(self, stream_id: int, response: Response) -> None:
        if response.action is Action.RESET:
            self._reset()
            return
        if response.action is Action.GOAWAY:
            # Client stream ids are consecutive odd numbers: the streams below this one are
            # declared processed (and still answered), this one and later ones are not.
            self._goaway(max(0, stream_id - 2))
            return
        stream = self.streams.get(stream_id)
        if stream is None:
            return
        headers = [(":status", str(response.status)), *response.headers]
        if response.body:
            headers.append(("content-length", str(len(response.body))))
        try:
            self.conn.send_headers(stream_id, headers, end_stream=not response.body)
        except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
            self._drop_stream(stream_id)
            return
        if response.body:
            stream.pending = response.body
            self._send_body(stream_id, stream)
        else:
            self._finish_stream(stream_id)
        self._flush()

    def _send_body(self, stream_id: int, stream: _Stream) -> None:
        try:
            while stream.pending:
                window = self.conn.local_flow_control_window(stream_id)
                size = min(window, self.conn.max_outbound_frame_size, len(stream.pending))
                if size <= 0:
                    return  # resumed by WindowUpdated
                chunk, stream.pending = stream.pending[:size], stream.pending[size:]
                self.conn.send_data(stream_id, chunk, end_stream=not stream.pending)
        except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
            stream.pending = b""
        self._finish_stream(stream_id)
        self._flush()

    def _finish_stream(self, stream_id: int) -> None:
        self.streams.pop(stream_id, None)
        self._maybe_finish_drain()

    def _reset(self) -> None:
        if self.transport is not None and not self.closed:
            sock = self.transport.get_extra_info("socket")
            if sock is not None:
                # Linger 0: the kernel answers with a TCP RST instead of an orderly FIN.
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.transport.abort()

    def _goaway(self, last_stream_id: int) -> None:
        """Refuse streams above ``last_stream_id``, finish the others, then send GOAWAY.

        The GOAWAY frame waits for the drain because h2-based clients (httpx) treat any frame
        received after a GOAWAY as a protocol error.
        """
        if self.goaway_last_stream is None or last_stream_id < self.goaway_last_stream:
            self.goaway_last_stream = last_stream_id
        for sid in [s for s in self.streams if s > self.goaway_last_stream]:
            self._drop_stream(sid)
        self._maybe_finish_drain()

    def _maybe_finish_drain(self) -> None:
        if self.goaway_last_stream is None or self.streams or self.closed:
            return
        with contextlib.suppress(h2.exceptions.ProtocolError):
            self.conn.close_connection(
                error_code=h2.errors.ErrorCodes.NO_ERROR, last_stream_id=self.goaway_last_stream
            )
        self._flush_now()
        if self.transport is not None:
            self.transport.close()

    def _abort_protocol_error(self) -> None:
        with contextlib.suppress(h2.exceptions.ProtocolError):
            self.conn.close_connection(error_code=h2.errors.ErrorCodes.PROTOCOL_ERROR)
        self._flush_now()
        if self.transport is not None:
            self.transport.close()

    def shutdown(self) -> None:
        """Polite close: finish the streams already received, then GOAWAY."""
        self._goaway(self.highest_stream)

    # -- output -----------------------------------------------------------------------

    def _flush(self) -> None:
        # Coalesce the frames of all streams answered in one loop iteration into one write.
        if not self.flush_scheduled:
            self.flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush_now)

    def _flush_now(self) -> None:
        self.flush_scheduled = False
        data = self.conn.data_to_send()
        if data and self.transport is not None and not self.closed:
            self.transport.write(data)


class H2Server:
    """Serve ``handler`` over HTTP/2 on ``host:port`` (port 0 picks a free port).

    ``ssl_context`` gets ALPN ``h2`` set on it. Request bodies above ``max_body`` are not
    buffered; ``oversize`` builds their answer (default: bare 413).
    """

    def __init__(
        self,
        handler: Handler,
        host: str = "127.0.0.1",
        port: int = 0,
        ssl_context: ssl.SSLContext | None = None,
        max_body: int = DEFAULT_MAX_BODY,
        oversize: OversizeHandler | None = None,
    ) -> None:
        self.handler = handler
        self.host = host
        self.port = port
        self.ssl_context = ssl_context
        self.max_body = max_body
        self.oversize = oversize or (lambda _request: Response(413))
        self.handler_errors = 0
        self._server: asyncio.Server | None = None
        self._connections: set[_Connection] = set()
        if ssl_context is not None:
            ssl_context.set_alpn_protocols(["h2"])

    @property
    def scheme(self) -> str:
        return "https" if self.ssl_context is not None else "http"

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"

    @property
    def connection_count(self) -> int:
        return len(self._connections)

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: _Connection(self), self.host, self.port, ssl=self.ssl_context
        )
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self, grace: float = 1.0) -> None:
        """Stop listening, let in-flight requests finish for ``grace`` s, then close."""
        if self._server is None:
            return
        self._server.close()
        for connection in list(self._connections):
            connection.shutdown()
        if self._connections:
            await asyncio.wait([c.done for c in self._connections], timeout=grace)
        for connection in list(self._connections):
            connection._reset()
        await self._server.wait_closed()
        self._server = None
