"""A small set of long-lived HTTP/2 connections to one provider origin.

Each pooled ``H2Client`` is one HTTP/2 connection (replaced when lost or sent GOAWAY); a few of
them spread the per-connection work, and each request goes to the least busy one.
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from ucpush.config import RelaySettings
from ucpush.relay.providers.h2client import H2Client, H2Error


def provider_ssl_context(settings: RelaySettings) -> ssl.SSLContext:
    """System CAs, plus ``provider_ca_file`` when set (the simulators' CA in tests)."""
    context = ssl.create_default_context()
    if settings.provider_ca_file:
        # load_verify_locations adds to the system store; create_default_context(cafile=...)
        # would replace it.
        context.load_verify_locations(cafile=settings.provider_ca_file)
    return context


@dataclass(eq=False, slots=True)
class Connection:
    """One pooled client (one HTTP/2 connection at a time) and its in-flight requests."""

    client: H2Client
    busy: int = 0
    retired: bool = False


class ClientPool:
    def __init__(
        self, base_url: str, size: int, *, timeout: float, ssl_context: ssl.SSLContext
    ) -> None:
        self.base_url = base_url
        self._timeout = timeout
        self._ssl_context = ssl_context
        self._connections = [self._new_connection() for _ in range(size)]
        self._turn = 0
        self._closed = False

    def _new_connection(self) -> Connection:
        # Plain http:// is HTTP/2 with prior knowledge (h2c), which is what the simulators speak.
        return Connection(
            H2Client(self.base_url, ssl_context=self._ssl_context, timeout=self._timeout)
        )

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[Connection]:
        """Lease the least busy connection for one request.

        A transport error (``H2Error``: reset, GOAWAY, timeout) retires the connection so a
        retry does not land on a dead one.
        """
        if self._closed:
            raise RuntimeError("provider pool is closed")
        # Ties go round-robin, so every connection is in use (and adopts the APNs token) from
        # the first few requests on, not only when load first spills over.
        self._turn = (self._turn + 1) % len(self._connections)
        rotated = self._connections[self._turn :] + self._connections[: self._turn]
        conn = min(rotated, key=lambda c: c.busy)
        conn.busy += 1
        try:
            yield conn
        except H2Error:
            self.retire(conn)
            raise
        finally:
            conn.busy -= 1
            if conn.retired and conn.busy == 0:
                await conn.client.aclose()

    def retire(self, conn: Connection) -> None:
        """Replace ``conn`` by a fresh one; it closes once its in-flight requests finish."""
        if conn.retired or self._closed:
            return
        conn.retired = True
        self._connections[self._connections.index(conn)] = self._new_connection()

    async def aclose(self) -> None:
        self._closed = True
        for conn in self._connections:
            await conn.client.aclose()


class PoolSet:
    """Pools created on first use, one per key (origin, or origin and APNs team)."""

    def __init__(self, size: int, settings: RelaySettings) -> None:
        self._size = size
        self._timeout = settings.request_timeout
        self._ssl_context = provider_ssl_context(settings)
        self._pools: dict[tuple[str, ...], ClientPool] = {}

    def get(self, base_url: str, *extra_key: str) -> ClientPool:
        key = (base_url, *extra_key)
        pool = self._pools.get(key)
        if pool is None:
            pool = ClientPool(
                base_url, self._size, timeout=self._timeout, ssl_context=self._ssl_context
            )
            self._pools[key] = pool
        return pool

    async def aclose(self) -> None:
        pools, self._pools = list(self._pools.values()), {}
        for pool in pools:
            await pool.aclose()
