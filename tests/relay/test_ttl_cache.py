import asyncio

from ucpush.relay.service import TtlCache


async def test_concurrent_misses_share_one_load_and_values_expire():
    calls: list[str] = []

    async def load(key: str) -> str:
        calls.append(key)
        await asyncio.sleep(0.01)
        return key.upper()

    cache: TtlCache[str, str] = TtlCache(0.05, load)
    assert await asyncio.gather(*(cache.get("a") for _ in range(100))) == ["A"] * 100
    assert calls == ["a"]
    assert await cache.get("a") == "A" and calls == ["a"]
    await asyncio.sleep(0.06)
    assert await cache.get("a") == "A" and calls == ["a", "a"]
    cache.forget("a")
    await cache.get("a")
    assert calls == ["a", "a", "a"]


async def test_a_failed_load_is_not_cached():
    attempts = 0

    async def load(key: str) -> int:
        nonlocal attempts
        attempts += 1
        if attempts == 1:
            raise ConnectionError("database down")
        return 7

    cache: TtlCache[str, int] = TtlCache(10, load)
    results = await asyncio.gather(cache.get("k"), cache.get("k"), return_exceptions=True)
    assert all(isinstance(r, ConnectionError) for r in results)
    assert await cache.get("k") == 7
