"""Pieces shared by the APNs and FCM simulators: faults, lifecycle, control-API helpers."""

from __future__ import annotations

import asyncio
import json
import ssl
import time
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, Self

from cryptography.exceptions import UnsupportedAlgorithm

from ucpush.sim.h2server import H2Server, Request, Response

FaultKind = Literal["status", "latency", "reset", "goaway"]
FAULT_KINDS: tuple[str, ...] = ("status", "latency", "reset", "goaway")
Clock = Callable[[], float]


@dataclass(slots=True)
class Fault:
    """A fault applied to the next ``count`` push requests (control requests are exempt).

    ``status``: answer ``status`` with ``reason`` (APNs) / ``fcm_error`` (FCM) and an optional
    ``Retry-After``. ``latency``: wait ``delay`` s, then handle normally. ``reset``: drop the
    TCP connection. ``goaway``: GOAWAY below the stream and leave it unanswered.
    """

    kind: FaultKind
    status: int = 503
    reason: str | None = None
    fcm_error: str | None = None
    count: int = 1
    delay: float = 0.0
    retry_after: int | None = None

    def __post_init__(self) -> None:
        if self.kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {self.kind!r}")
        if self.count < 1:
            raise ValueError("count must be >= 1")
        if not 100 <= self.status <= 599:
            raise ValueError("status must be an HTTP status")
        if self.delay < 0:
            raise ValueError("delay must be >= 0")

    @classmethod
    def from_json(cls, data: Any) -> Fault:
        if not isinstance(data, dict):
            raise ValueError("fault must be a JSON object")
        fields = {"kind", "status", "reason", "fcm_error", "count", "delay", "retry_after"}
        unknown = set(data) - fields
        if unknown:
            raise ValueError(f"unknown fault fields: {sorted(unknown)}")
        try:
            return cls(**{k: v for k, v in data.items() if v is not None})
        except TypeError as exc:
            raise ValueError(str(exc)) from exc


class FaultQueue:
    def __init__(self) -> None:
        self._queue: deque[list[Any]] = deque()  # [fault, remaining uses]

    def add(self, fault: Fault) -> None:
        self._queue.append([fault, fault.count])

    def clear(self) -> None:
        self._queue.clear()

    def __len__(self) -> int:
        return len(self._queue)

    def take(self) -> Fault | None:
        """The fault for the next request, consuming one use of it."""
        if not self._queue:
            return None
        entry = self._queue[0]
        entry[1] -= 1
        if entry[1] <= 0:
            self._queue.popleft()
        return entry[0]


def json_response(status: int, data: Any, headers: list[tuple[str, str]] | None = None) -> Response:
    body = json.dumps(data, separators=(",", ":")).encode()
    return Response(status, [("content-type", "application/json"), *(headers or [])], body)


def parse_json_body(request: Request) -> Any:
    try:
        return json.loads(request.body or b"null")
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"invalid JSON: {exc}") from exc


class SimulatorBase(ABC):
    """Lifecycle and the ``/_sim/`` control endpoints common to both simulators."""

    CONTROL_PREFIX = "/_sim/"

    def __init__(
        self,
        ssl_context: ssl.SSLContext | None,
        host: str,
        port: int,
        clock: Clock | None,
        max_body: int,
    ) -> None:
        self.clock: Clock = clock or time.time
        self.faults = FaultQueue()
        self.server = H2Server(
            self._dispatch,
            host=host,
            port=port,
            ssl_context=ssl_context,
            max_body=max_body,
            oversize=self._oversize,
        )

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def port(self) -> int:
        return self.server.port

    def inject(self, fault: Fault) -> None:
        self.faults.add(fault)

    @abstractmethod
    def clear_delivered(self) -> None: ...

    async def start(self) -> None:
        await self.server.start()

    async def stop(self) -> None:
        await self.server.stop()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    # -- dispatch ---------------------------------------------------------------------

    async def _dispatch(self, request: Request) -> Response:
        if request.path.startswith(self.CONTROL_PREFIX):
            try:
                return self._control(request, request.path[len(self.CONTROL_PREFIX) :])
            except (ValueError, TypeError, UnsupportedAlgorithm) as exc:  # bad input, e.g. PEM
                return json_response(400, {"error": str(exc) or type(exc).__name__})
        fault = self.faults.take() if self._is_push(request) else None
        if fault is not None:
            if fault.kind == "reset":
                return Response.reset()
            if fault.kind == "goaway":
                return Response.goaway()
            if fault.kind == "status":
                return self._fault_response(request, fault)
            await asyncio.sleep(fault.delay)
        return self._handle(request)

    def _control(self, request: Request, route: str) -> Response:
        method = request.method
        if route == "health" and method == "GET":
            return json_response(200, {"status": "ok"})
        if route == "delivered" and method == "GET":
            return json_response(200, self._delivered_json())
        if route == "delivered" and method == "DELETE":
            self.clear_delivered()
            return Response(204)
        if route == "faults" and method == "POST":
            self.inject(Fault.from_json(parse_json_body(request)))
            return Response(204)
        if route == "faults" and method == "DELETE":
            self.faults.clear()
            return Response(204)
        return self._control_extra(request, route)

    # -- subclass hooks ---------------------------------------------------------------

    @abstractmethod
    def _is_push(self, request: Request) -> bool: ...

    @abstractmethod
    def _handle(self, request: Request) -> Response: ...

    @abstractmethod
    def _fault_response(self, request: Request, fault: Fault) -> Response: ...

    @abstractmethod
    def _oversize(self, request: Request) -> Response: ...

    @abstractmethod
    def _delivered_json(self) -> list[dict[str, Any]]: ...

    @abstractmethod
    def _control_extra(self, request: Request, route: str) -> Response: ...


def require_str(data: dict[str, Any], key: str) -> str:
    value = data.get(key)
    if not isinstance(value, str) or not value:
        raise ValueError(f"{key!r} must be a non-empty string")
    return value


def require_object(data: Any) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise ValueError("body must be a JSON object")
    return data
