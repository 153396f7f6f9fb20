"""Re-login pacing: sign-ins (``POST /oauth/token``) admitted at most ``relogin_rate`` per second
per node, without refusing anyone (SPEC §3; the guide's rule is 4 users/s).

When a node fails, every device it served signs in again on the backup at once. Each sign-in
gets the next free slot, ``1/rate`` seconds after the previous one:

* a slot at most ``hold_max`` seconds away: the request is held until its slot, then served;
* a later slot: the slot is *reserved* for that client (user and device, or refresh token); the
  answer is ``503`` with ``Retry-After``; when the client comes back it is held for, or given,
  its own slot, never a new place at the end of the queue. A reservation not claimed within
  ``grace`` seconds after its slot is dropped (that client starts again).

``Pacer`` decides (sans-IO, on a clock it is given); ``SignInPacing`` is the ASGI middleware.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import parse_qs

from ucpush.logging import get_logger

log = get_logger("ucpush.cluster.pacing")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

TOKEN_PATH = "/oauth/token"
MAX_BODY = 65536  # larger bodies go to the app unpaced, which refuses them (413)


class Pacer:
    def __init__(self, rate: float, *, hold_max: float = 2.0, grace: float = 30.0) -> None:
        if rate <= 0 or hold_max < 0 or grace <= 0:
            raise ValueError("rate and grace must be > 0, hold_max >= 0")
        self.interval = 1.0 / rate
        self.hold_max = hold_max
        self.grace = grace
        self.next_free = -math.inf
        self.reserved: dict[str, float] = {}  # client key -> its slot
        self._swept = -math.inf

    def decide(self, key: str, now: float) -> tuple[bool, float]:
        """(True, wait): serve after ``wait`` seconds. (False, wait): come back in ``wait``
        seconds, the slot is kept for ``key``."""
        self._expire(now)
        slot = self.reserved.get(key)
        if slot is None:
            slot = max(now, self.next_free)
            self.next_free = slot + self.interval
            if slot - now > self.hold_max:
                self.reserved[key] = slot
                return False, slot - now
            return True, slot - now
        if slot - now > self.hold_max:
            return False, slot - now
        del self.reserved[key]
        return True, max(0.0, slot - now)

    def retry_after(self, wait: float) -> int:
        """Seconds to tell the client: it comes back a little before its slot and is held."""
        return max(1, math.ceil(wait - self.hold_max / 2))

    def _expire(self, now: float) -> None:
        if now - self._swept < 1.0:  # a sweep is O(reservations): once a second at most
            return
        self._swept = now
        for key in [k for k, slot in self.reserved.items() if slot + self.grace < now]:
            del self.reserved[key]


def client_key(body: bytes, fallback: str) -> str:
    """Who is signing in: user name and device (password grant) or a hash of the refresh token."""
    try:
        form = parse_qs(body.decode())
    except UnicodeDecodeError:
        return fallback
    if username := form.get("username", [""])[0]:
        return f"user:{username}/{form.get('device_id', [''])[0]}"
    if refresh := form.get("refresh_token", [""])[0]:
        return "refresh:" + hashlib.sha256(refresh.encode()).hexdigest()
    return fallback


class SignInPacing:
    """ASGI middleware pacing ``POST /oauth/token`` of the app it wraps (see the module)."""

    def __init__(
        self,
        app: ASGIApp,
        rate: float,
        *,
        hold_max: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.app = app
        self.pacer = Pacer(rate, hold_max=hold_max)
        self.clock = clock

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not (
            scope["type"] == "http" and scope["method"] == "POST" and scope["path"] == TOKEN_PATH
        ):
            await self.app(scope, receive, send)
            return
        body, receive = await _buffered(receive)
        if body is None:
            await self.app(scope, receive, send)
            return
        client = scope.get("client") or ("", 0)
        admitted, wait = self.pacer.decide(client_key(body, f"addr:{client[0]}"), self.clock())
        if not admitted:
            seconds = self.pacer.retry_after(wait)
            log.info("signin.paced", retry_after=seconds, queued=len(self.pacer.reserved))
            await _unavailable(send, seconds)
            return
        if wait > 0:
            await asyncio.sleep(wait)
        await self.app(scope, receive, send)


async def _buffered(receive: Receive) -> tuple[bytes | None, Receive]:
    """The whole request body (None past ``MAX_BODY``) and a ``receive`` that replays it."""
    chunks: list[Message] = []
    size = 0
    while True:
        message = await receive()
        chunks.append(message)
        if message["type"] != "http.request":
            break
        size += len(message.get("body", b""))
        if size > MAX_BODY or not message.get("more_body", False):
            break
    body = b"".join(m.get("body", b"") for m in chunks if m["type"] == "http.request")
    complete = size <= MAX_BODY and chunks[-1]["type"] == "http.request"

    async def replay() -> Message:
        return chunks.pop(0) if chunks else await receive()

    return (body if complete else None), replay


async def _unavailable(send: Send, retry_after: int) -> None:
    body = json.dumps(
        {
            "error": "temporarily_unavailable",
            "error_description": f"sign-ins are paced; retry after {retry_after} s",
        }
    ).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 503,
            "headers": [
                (b"content-type", b"application/json"),
                (b"retry-after", str(retry_after).encode()),
                (b"content-length", str(len(body)).encode()),
                (b"cache-control", b"no-store"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
