"""Client pool: least-busy leasing, retirement after transport errors, CA handling."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest
import trustme

from ucpush.relay.providers.h2client import H2ConnectError
from ucpush.relay.providers.pool import ClientPool, PoolSet, provider_ssl_context

from .conftest import fast_settings


def _pool(size: int = 3) -> ClientPool:
    return ClientPool(
        "http://127.0.0.1:9", size, timeout=1.0, ssl_context=ssl.create_default_context()
    )


async def test_requests_go_to_the_least_busy_connection() -> None:
    pool = _pool()
    async with pool.connection() as a, pool.connection() as b, pool.connection() as c:
        assert len({id(a), id(b), id(c)}) == 3
        async with pool.connection() as d:
            assert d.busy == 2
    assert (a.busy, b.busy, c.busy) == (0, 0, 0)
    await pool.aclose()


async def test_idle_pool_rotates_through_its_connections() -> None:
    pool = _pool()
    used = []
    for _ in range(6):
        async with pool.connection() as conn:
            used.append(id(conn))
    assert len(set(used)) == 3
    assert used[:3] == used[3:]
    await pool.aclose()


async def test_transport_error_retires_the_connection() -> None:
    pool = _pool(1)
    with pytest.raises(H2ConnectError):
        async with pool.connection() as broken:
            await broken.client.request("GET", "/")  # nothing listens on port 9
    assert broken.retired
    assert not broken.client.is_usable  # closed
    async with pool.connection() as fresh:
        assert fresh is not broken
        assert fresh.client.is_usable
    await pool.aclose()
    assert not fresh.client.is_usable


async def test_retired_connection_closes_after_its_last_request() -> None:
    pool = _pool(1)
    async with pool.connection() as first, pool.connection() as second:
        assert first is second
        pool.retire(first)
        assert first.client.is_usable  # another request still uses it
    assert not first.client.is_usable
    await pool.aclose()


async def test_pool_set_keys_and_close() -> None:
    pools = PoolSet(2, fast_settings())
    assert pools.get("http://a") is pools.get("http://a")
    assert pools.get("http://a", "TEAM1") is not pools.get("http://a", "TEAM2")
    pool = pools.get("http://a")
    await pools.aclose()
    with pytest.raises(RuntimeError):
        async with pool.connection():
            pass


def test_provider_ca_file_adds_to_system_cas(tmp_path: Path) -> None:
    ca_file = tmp_path / "ca.pem"
    trustme.CA().cert_pem.write_to_path(str(ca_file))
    system = provider_ssl_context(fast_settings()).cert_store_stats()["x509_ca"]
    extended = provider_ssl_context(fast_settings(provider_ca_file=str(ca_file)))
    assert extended.cert_store_stats()["x509_ca"] == system + 1
    assert extended.verify_mode is ssl.CERT_REQUIRED
    assert extended.check_hostname
