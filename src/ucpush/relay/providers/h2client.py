"""A lean asyncio HTTP/2 client for the provider hot path (APNs, FCM).

httpx's HTTP/2 client tops out at a few hundred requests per second per core: anyio locks and
checkpoints per frame, URL parsing per request and one socket write per frame. Here each
connection is an ``asyncio.Protocol`` driving the sans-IO ``h2`` state machine directly, and
everything a loop turn produces (the frames of many requests, WINDOW_UPDATEs, PING ACKs) goes
out in one ``transport.write``.

``H2Client`` is one origin: it opens its ``H2Connection`` on first use and a new one after the
old one is lost or sent GOAWAY. Failures raise ``H2Error`` subclasses whose ``not_processed``
tells whether the server cannot have acted on the request, so resending is safe.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, cast
from urllib.parse import urlsplit

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings
import hpack
from h2.events import Event
from hpack import NeverIndexedHeaderTuple
from hyperframe.frame import Frame, GoAwayFrame

DEFAULT_KEEPALIVE = 60.0
DEFAULT_PING_TIMEOUT = 20.0
# Our receive windows: big enough that responses, even many concurrent large ones, never stall
# waiting for a WINDOW_UPDATE round trip.
_STREAM_WINDOW = 1 << 20
_CONNECTION_WINDOW = 1 << 24
# Client stream ids are odd and end at 2**31 - 1; a connection this close to the end stops
# taking requests and the client opens a new one.
_LAST_STREAM_ID = (1 << 31) - 1 - 2
_PING_DATA = b"ucpush\x00\x01"
_PRUNE_EVERY = 1024
# Header values that change on (nearly) every request, like APNs device paths and push ids:
# adding them to the HPACK table would only evict the ones that repeat (authorization,
# topic) and slow every table search.
_ONE_OFF = frozenset({"apns-id"})
_CLOSE_GRACE = 1.0


class H2Error(Exception):
    """A request failed without a complete HTTP response.

    ``reason`` names the failure for logs and results. ``not_processed`` is True when the server
    cannot have processed the request (never sent, refused, or above a GOAWAY's last stream), so
    resending it cannot duplicate anything.
    """

    reason: str = "h2_error"
    not_processed: bool = False

    def __init__(self, message: str, *, reason: str | None = None) -> None:
        super().__init__(message)
        if reason is not None:
            self.reason = reason


class H2NotProcessed(H2Error):
    """Definitely not processed: RST_STREAM REFUSED_STREAM, or GOAWAY below our stream."""

    reason = "refused_stream"
    not_processed = True


class H2ConnectError(H2NotProcessed):
    """No usable connection: TCP/TLS failure, no ALPN h2, no SETTINGS in time."""

    reason = "connect_error"


class H2ConnectionLost(H2Error):
    """The connection died after the request was sent: it may have been processed."""

    reason = "connection_lost"


class H2StreamReset(H2Error):
    """The server reset the stream with a code other than REFUSED_STREAM: maybe processed."""

    reason = "stream_reset"


class H2Timeout(H2Error):
    """No complete response within the request's timeout; the stream was reset (CANCEL)."""

    reason = "timeout"


class H2QueueTimeout(H2Timeout, H2NotProcessed):
    """The timeout passed while waiting for a stream slot: the request was never sent."""

    reason = "pool_timeout"


class H2ProtocolError(H2Error):
    """The peer broke HTTP/2; the connection is closed."""

    reason = "protocol_error"


@dataclass(slots=True)
class H2Response:
    status_code: int
    headers: dict[str, str]  # lower-case names; repeated fields joined with ", "
    content: bytes


Headers = Mapping[str, str] | Iterable[tuple[str, str]]


@dataclass(slots=True, eq=False)
class _Stream:
    stream_id: int
    future: asyncio.Future[H2Response]
    pending: memoryview | None = None  # request body still waiting for flow-control window
    status: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    chunks: list[bytes] = field(default_factory=list)


class _Encoder(hpack.Encoder):
    def encode(self, headers: Any, huffman: bool = True) -> bytes:
        # Huffman-coding the literals (device path, push id) was the largest single cost per
        # request, on both ends, for ~20 bytes saved: send them as they are.
        return super().encode(headers, huffman=False)


class _H2State(h2.connection.H2Connection):
    _new_streams = 0

    def __init__(self, config: h2.config.H2Configuration) -> None:
        super().__init__(config)
        self.encoder = _Encoder()

    @property
    def open_outbound_streams(self) -> int:
        # h2 counts open streams by walking all of them (pruning closed ones as it goes) on
        # every new stream: O(in flight) per request. H2Connection enforces the server's limit
        # itself, so only prune, and only now and then.
        self._new_streams += 1
        if self._new_streams >= _PRUNE_EVERY:
            self._new_streams = 0
            self._open_streams(1)
        return 0

    def _receive_goaway_frame(self, frame: GoAwayFrame) -> tuple[list[Frame], list[Event]]:
        # h2 closes its state machine and drops queued output on GOAWAY, so the streams up to
        # last_stream_id could neither finish sending nor receive their responses; RFC 9113
        # §6.8 lets them complete. Only report the event: no new stream starts here afterwards.
        event = h2.events.ConnectionTerminated()
        try:
            event.error_code = h2.errors.ErrorCodes(frame.error_code)
        except ValueError:
            event.error_code = frame.error_code
        event.last_stream_id = frame.last_stream_id
        event.additional_data = frame.additional_data or None
        return [], [event]


def _client_config() -> h2.config.H2Configuration:
    return h2.config.H2Configuration(
        client_side=True,
        header_encoding=None,
        # We build request headers from lower-case names ourselves. Normalising would also mark
        # ``authorization`` never-indexed: HPACK only ever matches whole values and a provider
        # JWT cannot be guessed, so indexing it is safe and saves ~200 bytes per request.
        validate_outbound_headers=False,
        normalize_outbound_headers=False,
    )


class H2Connection(asyncio.Protocol):
    """One HTTP/2 connection (TCP or TLS); created by ``H2Client``."""

    def __init__(
        self,
        scheme: str,
        authority: str,
        *,
        keepalive: float | None,
        ping_timeout: float,
        on_closed: Callable[[H2Connection], None],
    ) -> None:
        self._loop = asyncio.get_running_loop()
        self._scheme = scheme
        self._authority = authority
        self._keepalive = keepalive
        self._ping_timeout = ping_timeout
        self._on_closed = on_closed
        self._h2 = _H2State(_client_config())
        self._transport: asyncio.Transport | None = None
        self._streams: dict[int, _Stream] = {}
        self._blocked: dict[int, _Stream] = {}  # streams with body waiting for window
        self._active = 0  # stream slots in use (open streams plus slots handed to waiters)
        self._max_streams = 0  # until the server's SETTINGS arrive
        self._waiters: deque[asyncio.Future[bool]] = deque()
        self._flush_scheduled = False
        self._goaway_last: int | None = None
        self._usable = False  # settled and taking new requests
        self._closing = False
        self.closed = False
        self.ready: asyncio.Future[None] = self._loop.create_future()
        self._lost: asyncio.Future[None] = self._loop.create_future()
        self._last_received = self._loop.time()
        self._keepalive_timer: asyncio.TimerHandle | None = None
        self._ping_timer: asyncio.TimerHandle | None = None
        self._dispatch: dict[type[h2.events.Event], Callable[[h2.events.Event], None]] = {
            h2.events.ResponseReceived: self._on_response,  # type: ignore[dict-item]
            h2.events.DataReceived: self._on_data,  # type: ignore[dict-item]
            h2.events.StreamEnded: self._on_end,  # type: ignore[dict-item]
            h2.events.StreamReset: self._on_reset,  # type: ignore[dict-item]
            h2.events.WindowUpdated: self._on_window,  # type: ignore[dict-item]
            h2.events.RemoteSettingsChanged: self._on_settings,  # type: ignore[dict-item]
            h2.events.ConnectionTerminated: self._on_goaway,  # type: ignore[dict-item]
            h2.events.PingAckReceived: self._on_ping_ack,  # type: ignore[dict-item]
        }

    # -- state for the client and the pool ---------------------------------------------

    @property
    def is_usable(self) -> bool:
        """Whether new requests may start here (open, settled, no GOAWAY, ids left)."""
        return self._usable

    # -- asyncio.Protocol -------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self._transport = cast(asyncio.Transport, transport)
        ssl_object = transport.get_extra_info("ssl_object")
        if ssl_object is not None and ssl_object.selected_alpn_protocol() != "h2":
            self.ready.set_exception(
                H2ConnectError(f"{self._authority} did not select HTTP/2 (ALPN h2)")
            )
            transport.abort()
            return
        self._h2.local_settings = h2.settings.Settings(
            client=True,
            initial_values={
                h2.settings.SettingCodes.ENABLE_PUSH: 0,
                h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: _STREAM_WINDOW,
            },
        )
        self._h2.initiate_connection()
        self._h2.increment_flow_control_window(_CONNECTION_WINDOW - 65535)
        self._flush()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._usable = False
        self._transport = None
        for timer in (self._keepalive_timer, self._ping_timer):
            if timer is not None:
                timer.cancel()
        if not self.ready.done():
            self.ready.set_exception(
                H2ConnectError(f"{self._authority} closed the connection during setup")
            )
        streams, self._streams = self._streams, {}
        self._blocked.clear()
        # Streams above a GOAWAY already failed as not processed; these were sent and may have
        # been processed.
        peer, detail = self._authority, f": {exc}" if exc else ""
        for stream in streams.values():
            if not stream.future.done():
                stream.future.set_exception(H2ConnectionLost(f"connection to {peer} lost{detail}"))
        self._wake_waiters(False)
        if not self._lost.done():
            self._lost.set_result(None)
        self._on_closed(self)

    def data_received(self, data: bytes) -> None:
        self._last_received = self._loop.time()
        try:
            events = self._h2.receive_data(data)
        except h2.exceptions.ProtocolError as exc:
            self._fail_protocol(exc)
            return
        dispatch = self._dispatch
        for event in events:
            handler = dispatch.get(type(event))
            if handler is not None:
                handler(event)
        self._schedule_flush()

    # -- requests ---------------------------------------------------------------------

    def try_reserve(self) -> bool:
        """Take a stream slot if one is free right now."""
        if self._active < self._max_streams and not self._waiters:
            self._active += 1
            return True
        return False

    async def wait_slot(self, deadline: float) -> bool:
        """Wait for a stream slot: True once held, False if this connection stopped taking
        requests meanwhile; raises ``H2QueueTimeout`` at ``deadline``."""
        waiter: asyncio.Future[bool] = self._loop.create_future()
        self._waiters.append(waiter)
        timer = self._loop.call_at(deadline, _expire_waiter, waiter)
        try:
            if not await waiter:
                return False
            if self._loop.time() >= deadline:
                # Handed a slot as our time ran out: failing unsent beats a certain timeout.
                self._release()
                raise H2QueueTimeout("no stream slot free within the timeout")
            return True
        except asyncio.CancelledError:
            # Cancelled after the slot was handed over but before we resumed: give it back.
            if (
                waiter.done()
                and not waiter.cancelled()
                and waiter.exception() is None
                and waiter.result()
            ):
                self._release()
            raise
        finally:
            timer.cancel()
            if not waiter.done():
                waiter.cancel()
            with contextlib.suppress(ValueError):
                self._waiters.remove(waiter)

    def release_slot(self) -> None:
        """Give back a slot that will not be used."""
        self._release()

    async def send(
        self, method: str, path: str, headers: Headers, body: bytes, deadline: float
    ) -> H2Response:
        """Send on a reserved slot (``try_reserve``/``wait_slot``) and await the response."""
        h2conn = self._h2
        stream_id = h2conn.get_next_available_stream_id()
        if stream_id >= _LAST_STREAM_ID:
            self._usable = False  # this request still fits; later ones get a new connection
        items = headers.items() if isinstance(headers, Mapping) else headers
        header_list: list[tuple[str, str]] = [
            (":method", method),
            (":scheme", self._scheme),
            (":authority", self._authority),
            NeverIndexedHeaderTuple(":path", path),
        ]
        for name, value in items:
            name = name.lower()
            header_list.append(
                NeverIndexedHeaderTuple(name, value) if name in _ONE_OFF else (name, value)
            )
        if body:
            header_list.append(("content-length", str(len(body))))
        stream = _Stream(stream_id, self._loop.create_future())
        try:
            h2conn.send_headers(stream_id, header_list, end_stream=not body)
        except h2.exceptions.ProtocolError as exc:
            self._release()
            raise H2NotProcessed(f"cannot start a stream: {exc}", reason="goaway") from exc
        self._streams[stream_id] = stream
        if body:
            stream.pending = memoryview(body)
            self._send_body(stream)
        self._schedule_flush()
        timer = self._loop.call_at(deadline, self._expire, stream)
        try:
            return await stream.future
        except asyncio.CancelledError:
            self._cancel(stream)
            raise
        finally:
            timer.cancel()

    def _send_body(self, stream: _Stream) -> None:
        h2conn = self._h2
        pending = stream.pending
        while pending:
            size = min(
                h2conn.local_flow_control_window(stream.stream_id),
                h2conn.max_outbound_frame_size,
                len(pending),
            )
            if size <= 0:
                stream.pending = pending
                self._blocked[stream.stream_id] = stream  # resumed by a WINDOW_UPDATE
                return
            chunk, pending = pending[:size], pending[size:]
            h2conn.send_data(stream.stream_id, chunk, end_stream=not pending)
        stream.pending = None
        self._blocked.pop(stream.stream_id, None)

    def _expire(self, stream: _Stream) -> None:
        if not stream.future.done():
            stream.future.set_exception(H2Timeout("no response within the timeout"))
            self._cancel(stream)

    def _cancel(self, stream: _Stream) -> None:
        """Reset a stream we no longer wait for, freeing its slot at once."""
        if self._streams.get(stream.stream_id) is not stream:
            return
        with contextlib.suppress(h2.exceptions.ProtocolError):
            self._h2.reset_stream(stream.stream_id, h2.errors.ErrorCodes.CANCEL)
        self._finish(stream)
        self._schedule_flush()

    def _finish(self, stream: _Stream) -> None:
        del self._streams[stream.stream_id]
        if stream.pending is not None:
            self._blocked.pop(stream.stream_id, None)
        self._release()
        if not self._streams and (self._goaway_last is not None or self._closing):
            self._close_transport()

    def _release(self) -> None:
        # Hand the slot straight to the oldest waiter, or free it.
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(True)
                return
        self._active -= 1

    def _wake_waiters(self, result: bool) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(result)

    # -- h2 events --------------------------------------------------------------------

    def _on_response(self, event: h2.events.ResponseReceived) -> None:
        stream = self._streams.get(event.stream_id)
        if stream is None:
            return
        headers = stream.headers
        for raw_name, raw_value in event.headers or ():
            name = raw_name.decode("latin-1")
            value = raw_value.decode("utf-8", "replace")
            if name == ":status":
                stream.status = int(value)
            elif name in headers:
                headers[name] += ", " + value
            else:
                headers[name] = value

    def _on_data(self, event: h2.events.DataReceived) -> None:
        # Hand the window back at once: responses are small and buffered whole anyway.
        if event.flow_controlled_length:
            self._h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
        stream = self._streams.get(event.stream_id)
        if stream is not None and event.data:
            stream.chunks.append(event.data)

    def _on_end(self, event: h2.events.StreamEnded) -> None:
        stream = self._streams.get(event.stream_id)
        if stream is None:
            return
        if not stream.future.done():
            stream.future.set_result(
                H2Response(stream.status, stream.headers, b"".join(stream.chunks))
            )
        if stream.pending is not None:
            # Answered before we finished sending (e.g. 413): stop the rest of the body.
            self._cancel(stream)
        else:
            self._finish(stream)

    def _on_reset(self, event: h2.events.StreamReset) -> None:
        stream = self._streams.get(event.stream_id)
        if stream is None:
            return
        if not stream.future.done():
            code = event.error_code
            if code == h2.errors.ErrorCodes.REFUSED_STREAM:
                error: H2Error = H2NotProcessed("stream refused (REFUSED_STREAM)")
            else:
                error = H2StreamReset(f"stream reset by the server ({code!s})")
            stream.future.set_exception(error)
        self._finish(stream)

    def _on_window(self, event: h2.events.WindowUpdated) -> None:
        if not self._blocked:
            return
        if event.stream_id == 0:
            for stream in list(self._blocked.values()):
                self._send_body(stream)
        else:
            stream = self._blocked.get(event.stream_id)
            if stream is not None:
                self._send_body(stream)

    def _on_settings(self, event: h2.events.RemoteSettingsChanged) -> None:
        self._max_streams = self._h2.remote_settings.max_concurrent_streams
        if not self.ready.done():
            self.ready.set_result(None)
            self._usable = not self._closing
            self._arm_keepalive(self._keepalive)
        # A raised limit frees slots for queued requests, a larger initial window unblocks
        # bodies.
        while self._waiters and self._active < self._max_streams:
            waiter = self._waiters.popleft()
            if not waiter.done():
                self._active += 1
                waiter.set_result(True)
        for stream in list(self._blocked.values()):
            self._send_body(stream)

    def _on_goaway(self, event: h2.events.ConnectionTerminated) -> None:
        last = event.last_stream_id if event.last_stream_id is not None else 0
        self._goaway_last = last if self._goaway_last is None else min(last, self._goaway_last)
        self._usable = False
        self._on_closed(self)  # the client moves new requests to a new connection
        for stream in [s for s in self._streams.values() if s.stream_id > last]:
            if not stream.future.done():
                stream.future.set_exception(
                    H2NotProcessed(f"stream {stream.stream_id} above GOAWAY", reason="goaway")
                )
            self._finish(stream)
        self._wake_waiters(False)
        if not self._streams:
            self._close_transport()

    # -- keepalive --------------------------------------------------------------------

    def _arm_keepalive(self, delay: float | None) -> None:
        if self._keepalive and delay is not None and not self.closed:
            self._keepalive_timer = self._loop.call_later(delay, self._keepalive_check)

    def _keepalive_check(self) -> None:
        self._keepalive_timer = None
        assert self._keepalive is not None
        idle = self._loop.time() - self._last_received
        if idle < self._keepalive:
            self._arm_keepalive(self._keepalive - idle)
            return
        # Idle: a PING keeps NAT/firewall mappings alive and proves the peer is still there.
        with contextlib.suppress(h2.exceptions.ProtocolError):
            self._h2.ping(_PING_DATA)
        self._flush()
        self._ping_timer = self._loop.call_later(self._ping_timeout, self._ping_expired)

    def _on_ping_ack(self, event: h2.events.PingAckReceived) -> None:
        if self._ping_timer is not None:
            self._ping_timer.cancel()
            self._ping_timer = None
            self._arm_keepalive(self._keepalive)

    def _ping_expired(self) -> None:
        self._ping_timer = None
        if self._transport is not None:
            self._transport.abort()  # in-flight requests fail as connection lost

    # -- output and shutdown ----------------------------------------------------------

    def _schedule_flush(self) -> None:
        # One write per loop turn for every frame queued meanwhile, by any request.
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        data = self._h2.data_to_send()
        if data and self._transport is not None:
            self._transport.write(data)

    def _fail_protocol(self, exc: Exception) -> None:
        self._usable = False
        streams, self._streams = self._streams, {}
        for stream in streams.values():
            if not stream.future.done():
                stream.future.set_exception(H2ProtocolError(f"HTTP/2 protocol error: {exc}"))
        self._flush()  # h2 may have queued a GOAWAY
        if self._transport is not None:
            self._transport.abort()

    def _close_transport(self) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._flush()
            self._transport.close()

    async def aclose(self) -> None:
        """GOAWAY and close now; requests still in flight fail as connection lost."""
        self._closing = True
        self._usable = False
        if self.closed or self._transport is None:
            self.closed = True  # never connected, or already gone
            return
        if self.ready.done() and not self.ready.exception():
            with contextlib.suppress(h2.exceptions.ProtocolError):
                self._h2.close_connection()
        self._close_transport()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(_CLOSE_GRACE):
                await asyncio.shield(self._lost)
        if self._transport is not None:
            self._transport.abort()


def _expire_waiter(waiter: asyncio.Future[bool]) -> None:
    if not waiter.done():
        waiter.set_exception(H2QueueTimeout("no stream slot free within the timeout"))


class H2Client:
    """HTTP/2 requests to one origin over one connection at a time.

    ``https://`` is TLS with ALPN h2, ``http://`` is cleartext HTTP/2 with prior knowledge
    (h2c). Connects on first use and again after the connection is lost or sent GOAWAY;
    requests already in flight on a draining connection still finish there.
    """

    def __init__(
        self,
        base_url: str,
        *,
        ssl_context: ssl.SSLContext | None = None,
        timeout: float = 5.0,
        keepalive: float | None = DEFAULT_KEEPALIVE,
        ping_timeout: float = DEFAULT_PING_TIMEOUT,
    ) -> None:
        url = urlsplit(base_url)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise ValueError(f"unsupported base URL {base_url!r}")
        self.base_url = base_url
        self.timeout = timeout
        self._scheme = url.scheme
        self._host = url.hostname
        self._port = url.port or (443 if url.scheme == "https" else 80)
        self._authority = url.netloc.rpartition("@")[2]
        self._prefix = url.path.rstrip("/")
        self._ssl: ssl.SSLContext | None = None
        if url.scheme == "https":
            self._ssl = ssl_context or ssl.create_default_context()
            self._ssl.set_alpn_protocols(["h2"])
        self._keepalive = keepalive
        self._ping_timeout = ping_timeout
        self._conn: H2Connection | None = None
        self._connecting: asyncio.Task[H2Connection] | None = None
        self._draining: set[H2Connection] = set()  # after GOAWAY, until their streams end
        self._busy = 0
        self._closed = False

    @property
    def busy(self) -> int:
        """Requests in progress, including those waiting to connect or for a stream slot."""
        return self._busy

    @property
    def is_usable(self) -> bool:
        """False once closed; a lost connection is replaced on the next request."""
        return not self._closed

    async def post(self, path: str, *, content: bytes = b"", headers: Headers = ()) -> H2Response:
        return await self.request("POST", path, content=content, headers=headers)

    async def request(
        self,
        method: str,
        path: str,
        *,
        content: bytes = b"",
        headers: Headers = (),
    ) -> H2Response:
        """One request; the client's ``timeout`` covers connecting, waiting for a stream slot
        and the whole response."""
        if self._closed:
            raise RuntimeError("H2Client is closed")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        self._busy += 1
        try:
            while True:
                conn = self._conn
                if conn is None or not conn.is_usable:
                    conn = await self._connect(deadline)
                if conn.try_reserve() or await conn.wait_slot(deadline):
                    if conn.is_usable:
                        return await conn.send(
                            method, self._prefix + path, headers, content, deadline
                        )
                    conn.release_slot()
                # That connection went away while we queued: the request moves to a new one.
        finally:
            self._busy -= 1

    async def _connect(self, deadline: float) -> H2Connection:
        # One connection attempt at a time; concurrent requests wait for the same one.
        task = self._connecting
        if task is None:
            task = self._connecting = asyncio.ensure_future(self._open())
            task.add_done_callback(self._opened)
        try:
            async with asyncio.timeout_at(deadline):
                return await asyncio.shield(task)
        except TimeoutError:
            raise H2ConnectError(f"timed out connecting to {self._authority}") from None

    async def _open(self) -> H2Connection:
        loop = asyncio.get_running_loop()
        conn = H2Connection(
            self._scheme,
            self._authority,
            keepalive=self._keepalive,
            ping_timeout=self._ping_timeout,
            on_closed=self._connection_closed,
        )
        try:
            async with asyncio.timeout(self.timeout):
                await loop.create_connection(
                    lambda: conn,
                    self._host,
                    self._port,
                    ssl=self._ssl,
                    server_hostname=self._host if self._ssl is not None else None,
                )
                # Wait for the server's SETTINGS: its stream limit applies from the start.
                await conn.ready
        except (OSError, TimeoutError) as exc:  # ssl.SSLError is an OSError
            await conn.aclose()
            raise H2ConnectError(f"cannot connect to {self._authority}: {exc!r}") from exc
        except BaseException:  # H2ConnectError (no ALPN h2), or cancelled by aclose()
            await conn.aclose()
            raise
        if self._closed:
            await conn.aclose()
            raise H2ConnectError("client closed while connecting")
        return conn

    def _opened(self, task: asyncio.Task[H2Connection]) -> None:
        self._connecting = None
        if not task.cancelled() and task.exception() is None:
            self._conn = task.result()

    def _connection_closed(self, conn: H2Connection) -> None:
        """Called on GOAWAY and on connection loss: stop routing new requests to ``conn``."""
        if self._conn is conn:
            self._conn = None
        if conn.closed:
            self._draining.discard(conn)
        else:
            self._draining.add(conn)

    async def aclose(self) -> None:
        """GOAWAY and close every connection; requests in flight fail."""
        self._closed = True
        if self._connecting is not None:
            self._connecting.cancel()
        conns = [c for c in (self._conn, *self._draining) if c is not None]
        self._conn = None
        self._draining.clear()
        for conn in conns:
            await conn.aclose()
