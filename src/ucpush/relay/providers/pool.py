"""A small set of long-lived HTTP/2 connections to one provider origin.

httpx multiplexes at most 100 streams on its single HTTP/2 connection per origin, so throughput
needs several clients; each request goes to the least busy one.
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import httpx

from ucpush.config import RelaySettings


def provider_ssl_context(settings: RelaySettings) -> ssl.SSLContext:
    """System CAs, plus ``provider_ca_file`` when set (the simulators' CA in tests)."""
    context = ssl.create_default_context()
    if settings.provider_ca_file:
        # load_verify_locations adds to the system store; create_default_context(cafile=...)
        # would replace it.
        context.load_verify_locations(cafile=settings.provider_ca_file)
    return context


def _new_client(base_url: str, timeout: float, ssl_context: ssl.SSLContext) -> httpx.AsyncClient:
    # Plain http:// is HTTP/2 with prior knowledge (h2c), which is what the simulators speak.
    cleartext = base_url.startswith("http://")
    return httpx.AsyncClient(
        base_url=base_url,
        http1=not cleartext,
        http2=True,
        verify=ssl_context,
        timeout=timeout,
        # Provider connections are meant to stay open: no 5 s idle expiry. httpx puts every
        # stream on one HTTP/2 connection; a second one only opens while the first drains after a
        # GOAWAY, so a small cap is plenty.
        limits=httpx.Limits(max_connections=8, max_keepalive_connections=8, keepalive_expiry=None),
    )


@dataclass(eq=False, slots=True)
class Connection:
    """One pooled client (one HTTP/2 connection in practice) and its in-flight requests."""

    client: httpx.AsyncClient
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
        return Connection(_new_client(self.base_url, self._timeout, self._ssl_context))

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[Connection]:
        """Lease the least busy connection for one request.

        A transport error (reset, GOAWAY, timeout) retires the connection so a retry does not
        land on a dead one.
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
        except httpx.TransportError:
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
