"""The local push WebSocket server (asyncio, ``websockets``) driving one ``Session`` per
connection, and ``deliver``: send a push over a device's live session and wait, bounded by
``[lpns] ack_timeout``, for its acknowledgement.

Usage on the call node::

    lpns = LpnsService.from_settings(settings.lpns, authorizer=signin)
    signin.sessions = lpns          # sign-out and deletions close sessions
    async with lpns:                # listens on [lpns] host:port until the block ends
        result = await lpns.deliver(device_id, "voip", jwe)
        if result.outcome is not LocalPushOutcome.DELIVERED:
            ...                     # fall back to APNs through the relay
"""

from __future__ import annotations

import asyncio
import ssl
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from types import TracebackType
from typing import Protocol

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from ucpush.alarms import clear_alarm, raise_alarm
from ucpush.config import LpnsSettings
from ucpush.logging import get_logger
from ucpush.lpns import metrics
from ucpush.lpns.protocol import PushType, encode
from ucpush.lpns.session import (
    CLOSE_BUSY,
    CLOSE_ENDED,
    CLOSE_REPLACED,
    CLOSE_SHUTDOWN,
    Acked,
    Action,
    Authenticate,
    Close,
    CloseCause,
    LocalPushGrant,
    LocalPushRefused,
    Nacked,
    Send,
    Session,
    State,
)

_log = get_logger("ucpush.lpns")
_INVALID_TOKEN_ALARM = "LocalPushNotificationInvalidOAuthToken"
_MAX_REASON_BYTES = 123  # RFC 6455 §5.5: a control frame body is at most 125 bytes


class Authorizer(Protocol):
    """Checks a hello (``SigninService`` implements it)."""

    async def authorize_local_push(
        self, access_token: str, ssid: str, device_id: str
    ) -> LocalPushGrant:
        """The grant, or ``LocalPushRefused`` with the close code."""
        ...

    async def recheck_local_push(
        self, sessions: list[tuple[LocalPushGrant, str]]
    ) -> dict[str, tuple[int, str]]:
        """For (grant, current SSID) pairs: device id → (close code, reason) of the sessions
        that must end now."""
        ...


class LocalPushOutcome(StrEnum):
    DELIVERED = "delivered"  # the device acknowledged it
    TIMEOUT = "timeout"  # no acknowledgement within ack_timeout
    ERROR = "error"  # the device answered nack, or the session broke while waiting
    NO_SESSION = "no_session"  # the device has no live local session


@dataclass(frozen=True, slots=True)
class LocalPushResult:
    outcome: LocalPushOutcome
    detail: str = ""


@dataclass(eq=False, slots=True)
class _Connection:
    ws: ServerConnection
    session: Session
    device_id: str = ""  # as the hello named it, for logs and alarms
    pending: dict[str, asyncio.Future[LocalPushResult]] = field(default_factory=dict)


def _truncate(reason: str) -> str:
    return reason.encode()[:_MAX_REASON_BYTES].decode(errors="ignore")


def server_ssl_context(cert_file: str, key_file: str) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert_file, key_file)
    return context


class LpnsService:
    def __init__(
        self,
        settings: LpnsSettings,
        authorizer: Authorizer,
        *,
        ssl_context: ssl.SSLContext | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self._authorizer = authorizer
        self._ssl = ssl_context
        self._clock = clock
        self._server: Server | None = None
        self._connections: set[_Connection] = set()
        self._by_device: dict[str, _Connection] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._recheck: asyncio.Task[None] | None = None
        # Told (device id, True) when a device's session opens here and (device id, False) when
        # it ends: the cluster's local push mesh (ucpush.cluster) keeps every node informed.
        self.on_session: Callable[[str, bool], None] | None = None

    @classmethod
    def from_settings(cls, settings: LpnsSettings, authorizer: Authorizer) -> LpnsService:
        """TLS from ``tls_cert``/``tls_key`` when set (plain ``ws://`` otherwise)."""
        context = (
            server_ssl_context(settings.tls_cert, settings.tls_key) if settings.tls_cert else None
        )
        return cls(settings, authorizer, ssl_context=context)

    # life cycle

    async def start(self) -> None:
        try:
            self._server = await serve(
                self._handle,
                self.settings.host,
                self.settings.port,
                ssl=self._ssl,
                max_size=self.settings.max_message_bytes,
                # Small per-connection buffers: tens of thousands of mostly idle sessions.
                max_queue=4,
                compression=None,
                # The application keepalive (every keepalive_seconds) is the liveness check.
                ping_interval=None,
                open_timeout=self.settings.hello_timeout,
            )
        except OSError as exc:
            raise_alarm("LocalPushStartFailed", "ALERT", error=str(exc))
            raise
        clear_alarm("LocalPushStartFailed")
        self._recheck = asyncio.get_running_loop().create_task(self._recheck_forever())
        _log.info("lpns listening", url=self.url)

    async def stop(self) -> None:
        """Close every session (1001) and stop listening."""
        if self._server is None:
            return
        if self._recheck is not None:
            self._recheck.cancel()
            await asyncio.gather(self._recheck, return_exceptions=True)
            self._recheck = None
        for conn in list(self._connections):
            self._end(conn, CLOSE_SHUTDOWN, "node shutting down")
        # Also closes connections still in their opening handshake.
        self._server.close(code=CLOSE_SHUTDOWN, reason="node shutting down")
        await self._server.wait_closed()
        self._server = None
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def __aenter__(self) -> LpnsService:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.stop()

    @property
    def port(self) -> int:
        assert self._server is not None, "not started"
        return self._server.sockets[0].getsockname()[1]

    @property
    def url(self) -> str:
        scheme = "wss" if self._ssl else "ws"
        return f"{scheme}://{self.settings.host}:{self.port}/"

    # the node's side

    def has_session(self, device_id: str) -> bool:
        return device_id in self._by_device

    @property
    def session_count(self) -> int:
        return len(self._by_device)

    def session_devices(self) -> list[str]:
        """Devices with a live session here (the cluster announces those open before it joined)."""
        return list(self._by_device)

    async def deliver(
        self, device_id: str, push_type: PushType, payload_jwe: str
    ) -> LocalPushResult:
        """Push over the device's session; wait at most ``ack_timeout`` for its ack."""
        conn = self._by_device.get(device_id)
        if conn is None:
            return LocalPushResult(LocalPushOutcome.NO_SESSION)
        push_id = uuid.uuid4().hex
        future: asyncio.Future[LocalPushResult] = asyncio.get_running_loop().create_future()
        conn.pending[push_id] = future
        try:
            actions = conn.session.push(push_id, push_type, payload_jwe)
            if not actions:
                return LocalPushResult(LocalPushOutcome.NO_SESSION)
            metrics.REQ_SENT.inc()
            if push_type == "missed-call":
                metrics.MISSED_CALL_SENT.inc()
            elif push_type == "cancel":
                metrics.SHARED_CANCEL_SENT.inc()
            async with asyncio.timeout(self.settings.ack_timeout):
                await self._run(conn, actions)
                return await future
        except TimeoutError:
            metrics.TIMEOUT.inc()
            return LocalPushResult(LocalPushOutcome.TIMEOUT)
        except ConnectionClosed:
            return LocalPushResult(LocalPushOutcome.ERROR, "session closed while sending")
        finally:
            conn.pending.pop(push_id, None)

    def close_sessions(
        self, *, user: str | None = None, device: str | None = None, reason: str
    ) -> int:
        """Close (4410) the sessions of ``user`` and/or ``device``; return how many."""
        if user is None and device is None:
            return 0
        matching = [
            conn
            for conn in self._by_device.values()  # the live, authenticated sessions
            if conn.session.grant is not None
            and (user is None or conn.session.grant.user_id == user)
            and (device is None or conn.session.grant.device_id == device)
        ]
        for conn in matching:
            self._end(conn, CLOSE_ENDED, f"410 {reason}")
        return len(matching)

    async def recheck(self) -> int:
        """Check every live session against the store now; return how many were ended."""
        live = list(self._by_device.values())
        verdicts = await self._authorizer.recheck_local_push(
            [(conn.session.grant, conn.session.ssid) for conn in live if conn.session.grant]
        )
        ended = 0
        for conn in live:
            grant = conn.session.grant
            verdict = verdicts.get(grant.device_id) if grant else None
            if verdict is not None and self._by_device.get(conn.device_id) is conn:
                self._end(conn, *verdict)
                ended += 1
        return ended

    async def _recheck_forever(self) -> None:
        while True:
            await asyncio.sleep(self.settings.recheck_seconds)
            try:
                await self.recheck()
            except Exception as exc:  # the database may be briefly away; try next round
                _log.warning("lpns recheck failed", error=str(exc))

    def _end(self, conn: _Connection, code: int, reason: str) -> None:
        actions = conn.session.end(code, _truncate(reason))
        self._forget(conn)
        if actions:
            task = asyncio.get_running_loop().create_task(self._run(conn, actions))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def _forget(self, conn: _Connection) -> None:
        grant = conn.session.grant
        if grant is not None and self._by_device.get(grant.device_id) is conn:
            del self._by_device[grant.device_id]
            if self.on_session is not None:
                self.on_session(grant.device_id, False)
        for future in conn.pending.values():
            if not future.done():
                future.set_result(LocalPushResult(LocalPushOutcome.ERROR, "session closed"))

    # the device's side

    async def _handle(self, ws: ServerConnection) -> None:
        if len(self._connections) >= self.settings.max_sessions:
            await ws.close(CLOSE_BUSY, "node at session limit, try again later")
            return
        conn = _Connection(
            ws,
            Session(
                self._clock(),
                keepalive_seconds=self.settings.keepalive_seconds,
                hello_timeout=self.settings.hello_timeout,
            ),
        )
        self._connections.add(conn)
        try:
            while conn.session.state is not State.CLOSED:
                deadline = conn.session.deadline
                assert deadline is not None
                try:
                    async with asyncio.timeout(max(0.0, deadline - self._clock())):
                        frame = await ws.recv()
                except TimeoutError:
                    await self._run(conn, conn.session.tick(self._clock()))
                    continue
                now = self._clock()
                if isinstance(frame, str):
                    actions = conn.session.receive_text(frame, now)
                else:
                    actions = conn.session.receive_binary(now)
                await self._run(conn, actions)
        except ConnectionClosed:
            pass  # the device went away; nothing to tell it
        finally:
            self._connections.discard(conn)
            self._forget(conn)

    async def _run(self, conn: _Connection, actions: list[Action]) -> None:
        while actions:
            action, *actions = actions
            match action:
                case Send(message):
                    await conn.ws.send(encode(message))
                case Close(code, reason, cause):
                    self._closing(conn, cause, reason)
                    self._forget(conn)
                    await conn.ws.close(code, _truncate(reason))
                case Authenticate(token, ssid, device_id):
                    actions = await self._authenticate(conn, token, ssid, device_id) + actions
                case Acked(push_id):
                    metrics.RES_RECEIVED.inc()
                    self._settle(conn, push_id, LocalPushResult(LocalPushOutcome.DELIVERED))
                case Nacked(push_id, reason):
                    metrics.ERROR_RES_RECEIVED.inc()
                    self._settle(conn, push_id, LocalPushResult(LocalPushOutcome.ERROR, reason))

    async def _authenticate(
        self, conn: _Connection, token: str, ssid: str, device_id: str
    ) -> list[Action]:
        conn.device_id = device_id
        try:
            grant = await self._authorizer.authorize_local_push(token, ssid, device_id)
        except LocalPushRefused as refusal:
            return conn.session.refused(refusal)
        actions = conn.session.authorized(grant, ssid, self._clock())
        if conn.session.state is State.AUTHENTICATED:
            previous = self._by_device.get(device_id)
            if previous is not None and previous is not conn:
                # One session per device: the newest connection wins (clean reconnect).
                self._end(previous, CLOSE_REPLACED, "409 replaced by a newer session")
            self._by_device[device_id] = conn
            if self.on_session is not None:
                self.on_session(device_id, True)
            clear_alarm(_INVALID_TOKEN_ALARM, device_id=device_id)
            _log.info("lpns session opened", device_id=device_id, ssid=ssid)
        return actions

    def _settle(self, conn: _Connection, push_id: str, result: LocalPushResult) -> None:
        future = conn.pending.get(push_id)
        if future is not None and not future.done():
            future.set_result(result)

    def _closing(self, conn: _Connection, cause: CloseCause, reason: str) -> None:
        if cause in (CloseCause.INVALID_TOKEN, CloseCause.TOKEN_EXPIRED):
            raise_alarm(_INVALID_TOKEN_ALARM, "ALERT", device_id=conn.device_id, reason=reason)
        _log.info("lpns session closed", device_id=conn.device_id, cause=cause.value, reason=reason)
