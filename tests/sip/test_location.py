"""``LocationCache``: bindings and accounts from memory, written behind to a real store."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import structlog

from tests.sip.test_registrar import alice, authorization, register
from ucpush.sip import location
from ucpush.sip.digest import MD5, SHA256, DigestAuth, compute_ha1
from ucpush.sip.location import LocationCache
from ucpush.sip.registrar import Registrar, RegistrarConfig, RegistrarService, Source
from ucpush.store import Store, open_store
from ucpush.store.repository import Binding, NotFound, SipUser
from ucpush.store.sql_sip import SqlSipRepository

AOR = "sip:alice@example.org"
SOURCE = Source("UDP", "192.0.2.10", 5060)


def binding(n: int, aor: str = AOR, *, lifetime: float = 600, **changes: Any) -> Binding:
    now = datetime.now(UTC)
    return replace(
        Binding(
            id=f"b{n}",
            aor=aor,
            contact=f"sip:alice@192.0.2.{n}:5060",
            expires_at=now + timedelta(seconds=lifetime),
            call_id=f"c{n}",
            cseq=1,
            updated_at=now + timedelta(microseconds=n),
            source_transport="UDP",
            source_host="192.0.2.1",
            source_port=5060,
            user_agent="Phone/1.0",
        ),
        **changes,
    )


class Recording:
    """The real repository, counting writes and failing them on demand."""

    def __init__(self, repository: SqlSipRepository) -> None:
        self.repository = repository
        self.batches: list[tuple[list[Binding], list[str]]] = []
        self.user_reads = 0
        self.pages = 0
        self.fail = False

    async def get_users(self, keys: Sequence[tuple[str, str]]) -> list[SipUser]:
        self.user_reads += 1
        if self.fail:
            raise ConnectionError("database down")
        return await self.repository.get_users(keys)

    async def list_bindings(self, aor: str | None = None) -> list[Binding]:
        return await self.repository.list_bindings(aor)

    async def list_bindings_page(self, after: str = "", limit: int = 5000) -> list[Binding]:
        self.pages += 1
        return await self.repository.list_bindings_page(after, limit)

    async def save_bindings(self, aor: str, upsert: list[Binding], remove: list[str]) -> None:
        self.batches.append((upsert, remove))
        await self.repository.save_bindings(aor, upsert, remove)

    async def apply_bindings(self, upsert: Sequence[Binding], remove: Sequence[str]) -> None:
        if self.fail:
            raise ConnectionError("database down")
        self.batches.append((list(upsert), list(remove)))
        await self.repository.apply_bindings(upsert, remove)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    async with await open_store(f"sqlite+aiosqlite:///{tmp_path / 'sip.db'}") as opened:
        yield opened


@pytest.fixture
def repo(store: Store) -> Recording:
    return Recording(store.sip)


async def started(repo: Recording, **options: Any) -> LocationCache:
    cache = LocationCache(repo, **options)
    await cache.start()
    return cache


async def test_loads_the_store_and_answers_from_memory(store: Store, repo: Recording) -> None:
    expired = binding(3, lifetime=-1)  # the oldest: made first
    for b in (binding(1), binding(2), expired, binding(4, aor="sip:bob@example.org")):
        await store.sip.add_binding(b)
    cache = await started(repo)
    try:
        # Most recently updated first, as the store orders them; expired ones only in the
        # list the registrar sees (it reports them as expired), never in a lookup.
        assert [b.id for b in await cache.list_bindings(AOR)] == ["b2", "b1", "b3"]
        assert [b.id for b in await cache.lookup(AOR)] == ["b2", "b1"]
        assert [b.id for b in await cache.list_bindings()] == ["b2", "b1", "b3", "b4"]
        assert await cache.lookup("sip:nobody@example.org") == []
        assert await cache.list_bindings("sip:nobody@example.org") == []
    finally:
        await cache.close()
    assert repo.batches == []  # reading wrote nothing


async def test_changes_are_served_at_once_and_written_in_one_batch(
    store: Store, repo: Recording
) -> None:
    cache = await started(repo, flush_interval=0.05)
    try:
        await cache.save_bindings(AOR, [binding(1), binding(2)], [])
        for cseq in range(2, 12):  # one binding refreshed ten times in the window
            await cache.save_bindings(AOR, [binding(1, cseq=cseq)], [])
        await cache.save_bindings(
            "sip:bob@example.org", [binding(3, aor="sip:bob@example.org")], []
        )
        await cache.save_bindings(AOR, [], ["b2"])
        assert [(b.id, b.cseq) for b in await cache.lookup(AOR)] == [("b1", 11)]
        assert cache.pending == 3
        assert await store.sip.list_bindings() == []  # not yet
        await asyncio.sleep(0.3)
        # One transaction, coalesced per binding: b1 once (newest), b2 deleted, b3 added.
        assert len(repo.batches) == 1
        upsert, remove = repo.batches[0]
        assert sorted((b.id, b.cseq) for b in upsert) == [("b1", 11), ("b3", 1)]
        assert remove == ["b2"]
        assert [b.id for b in await store.sip.list_bindings()] == ["b1", "b3"]
        assert cache.pending == 0
    finally:
        await cache.close()


async def test_flush_batch_bounds_one_transaction(repo: Recording) -> None:
    cache = await started(repo, flush_interval=10, flush_batch=4)
    for n in range(10):
        await cache.save_bindings(
            f"sip:u{n}@example.org", [binding(n, f"sip:u{n}@example.org")], []
        )
    await cache.close()  # a clean stop writes everything, whatever the interval
    assert [len(upsert) for upsert, _ in repo.batches] == [4, 4, 2]
    assert len(await repo.list_bindings()) == 10


async def test_close_writes_what_is_pending_and_a_restart_sees_it(
    tmp_path: Path, store: Store, repo: Recording
) -> None:
    cache = await started(repo, flush_interval=60)
    await cache.save_bindings(AOR, [binding(1), binding(2)], [])
    await cache.save_bindings(AOR, [], ["b1"])
    await cache.close()
    assert cache.pending == 0
    async with await open_store(f"sqlite+aiosqlite:///{tmp_path / 'sip.db'}") as reopened:
        again = await started(Recording(reopened.sip))
        assert [b.id for b in await again.lookup(AOR)] == ["b2"]
        assert await again.lookup(AOR) == await reopened.sip.list_bindings(AOR)
        await again.close()


async def test_zero_interval_writes_before_returning(store: Store, repo: Recording) -> None:
    cache = await started(repo, flush_interval=0)
    try:
        await cache.save_bindings(AOR, [binding(1)], [])
        assert [b.id for b in await store.sip.list_bindings(AOR)] == ["b1"]
        removed = await cache.remove_expired(datetime.now(UTC) + timedelta(hours=1))
        assert [b.id for b in removed] == ["b1"]
        assert await store.sip.list_bindings() == []
        assert cache.pending == 0
    finally:
        await cache.close()


async def test_zero_interval_store_failure_changes_nothing(repo: Recording) -> None:
    cache = await started(repo, flush_interval=0)

    async def down(aor: str, upsert: list[Binding], remove: list[str]) -> None:
        raise ConnectionError("database down")

    repo.save_bindings = down  # type: ignore[method-assign]
    with pytest.raises(ConnectionError):
        await cache.save_bindings(AOR, [binding(1)], [])
    assert await cache.lookup(AOR) == []  # the REGISTER fails (500), nothing half-done
    await cache.close()


async def test_expiry_sweep_from_memory(store: Store, repo: Recording) -> None:
    await store.sip.add_binding(binding(1, lifetime=-5))
    cache = await started(repo, flush_interval=0.01)
    try:
        await cache.save_bindings(AOR, [binding(2, lifetime=30)], [])
        await cache.save_bindings("sip:bob@example.org", [binding(3, "sip:bob@example.org")], [])
        now = datetime.now(UTC)
        assert [b.id for b in await cache.remove_expired(now)] == ["b1"]
        assert [b.id for b in await cache.remove_expired(now + timedelta(seconds=60))] == ["b2"]
        assert await cache.remove_expired(now + timedelta(seconds=60)) == []
        assert await cache.list_bindings(AOR) == []
        await asyncio.sleep(0.2)
        assert [b.id for b in await store.sip.list_bindings()] == ["b3"]
    finally:
        await cache.close()


async def test_store_failure_keeps_changes_logs_once_and_retries(
    store: Store, repo: Recording, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(location, "FLUSH_RETRY_SECONDS", 0.05)
    cache = await started(repo, flush_interval=0.01)
    try:
        repo.fail = True
        with structlog.testing.capture_logs() as logs:
            await cache.save_bindings(AOR, [binding(1)], [])
            await asyncio.sleep(0.2)
        errors = [e for e in logs if e["log_level"] == "error"]
        assert [e["event"] for e in errors] == ["sip.location.store_failed"]  # once, not per retry
        assert cache.pending == 1
        # Memory stays authoritative; a newer change made while failing wins.
        await cache.save_bindings(AOR, [binding(1, cseq=7)], [])
        assert [b.cseq for b in await cache.lookup(AOR)] == [7]
        repo.fail = False
        await asyncio.sleep(0.3)
        assert cache.pending == 0
        assert [b.cseq for b in await store.sip.list_bindings(AOR)] == [7]
    finally:
        await cache.close()


async def test_close_while_the_store_is_down_reports_the_loss(
    repo: Recording, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(location, "FLUSH_RETRY_SECONDS", 0.01)
    cache = await started(repo, flush_interval=0.01)
    repo.fail = True
    await cache.save_bindings(AOR, [binding(1)], [])
    with structlog.testing.capture_logs() as logs:
        await asyncio.wait_for(cache.close(), 2)  # gives up rather than hanging the stop
    assert {"event": "sip.location.unsaved", "changes": 1, "log_level": "error"} in logs


def test_bad_options_are_refused() -> None:
    with pytest.raises(ValueError):
        LocationCache(Recording(None), flush_interval=-1)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        LocationCache(Recording(None), flush_batch=0)  # type: ignore[arg-type]


async def test_bindings_share_their_common_strings(repo: Recording) -> None:
    cache = await started(repo)
    try:
        ua = "".join(["Phone", "/1.0"])  # a distinct string object, as parsed per message
        await cache.save_bindings(AOR, [binding(1, user_agent=ua)], [])
        await cache.save_bindings(AOR, [binding(2, user_agent="Phone/1.0")], [])
        first, second = await cache.list_bindings(AOR)
        assert first.user_agent is second.user_agent
    finally:
        await cache.close()


# accounts


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_users_are_cached_for_their_ttl(store: Store, repo: Recording) -> None:
    clock = Clock()
    cache = await started(repo, user_ttl=60, clock=clock)
    try:
        await store.sip.add_user(alice())
        assert await cache.get_user("alice", "example.org") == alice()
        assert await cache.get_user("alice", "example.org") == alice()
        assert repo.user_reads == 1
        with pytest.raises(NotFound):
            await cache.get_user("mallory", "example.org")
        with pytest.raises(NotFound):  # unknown names are cached too
            await cache.get_user("mallory", "example.org")
        assert repo.user_reads == 2
        await store.sip.delete_user("alice", "example.org")
        clock.now += 59
        assert await cache.get_user("alice", "example.org") == alice()  # still cached
        clock.now += 1
        with pytest.raises(NotFound):
            await cache.get_user("alice", "example.org")
        cache.forget_user("mallory", "example.org")
        with pytest.raises(NotFound):
            await cache.get_user("mallory", "example.org")
        assert repo.user_reads == 4
    finally:
        await cache.close()


async def test_a_password_changed_in_the_store_works_on_the_next_attempt(
    store: Store, repo: Recording
) -> None:
    """Another process (``ucpush sip user``) changes the account: the UA's first try with
    the new password meets the cached record and is challenged; that failure makes the node
    re-read the account, so the retry succeeds."""
    now = datetime.now(UTC)
    cache = await started(repo, user_ttl=3600)
    auth = DigestAuth(b"s" * 32, "example.org", algorithms=(MD5,))
    service = RegistrarService(
        Registrar(RegistrarConfig(realm="example.org"), auth),
        cache,
        on_auth_failure=cache.forget_user,
    )
    contact = "<sip:alice@192.0.2.10:5060>"

    async def attempt(password: str, cseq: int) -> int:
        challenge = await service.register(register(contact, cseq=cseq), source=SOURCE, now=now)
        header = challenge.response.headers.get_all("WWW-Authenticate")[0]
        request = register(
            contact, cseq=cseq + 1, extra=(authorization(header, password=password),)
        )
        return (await service.register(request, source=SOURCE, now=now)).response.status

    try:
        await store.sip.add_user(alice())
        assert await attempt("wonderland", 1) == 200
        await store.sip.delete_user("alice", "example.org")
        await store.sip.add_user(
            replace(
                alice(),
                ha1_md5=compute_ha1("alice", "example.org", "looking-glass", MD5),
                ha1_sha256=compute_ha1("alice", "example.org", "looking-glass", SHA256),
            )
        )
        reads = repo.user_reads
        assert await attempt("looking-glass", 3) == 401
        assert await attempt("looking-glass", 5) == 200
        assert repo.user_reads == reads + 1
        assert [b.cseq for b in await cache.lookup(AOR)] == [6]
    finally:
        await cache.close()


async def test_concurrent_misses_share_one_query(store: Store, repo: Recording) -> None:
    users = [replace(alice(f"sip:u{n}@example.org"), username=f"u{n}") for n in range(20)]
    for user in users:
        await store.sip.add_user(user)
    cache = await started(repo)
    try:
        names = [f"u{n}" for n in range(20)] + ["u0", "nobody"]
        found = await asyncio.gather(
            *(cache.get_user(name, "example.org") for name in names), return_exceptions=True
        )
        assert found[:20] == users and found[20] == users[0]
        assert isinstance(found[21], NotFound)
        assert repo.user_reads == 1
    finally:
        await cache.close()


async def test_a_failing_user_query_fails_its_waiters_only_once(
    store: Store, repo: Recording
) -> None:
    await store.sip.add_user(alice())
    cache = await started(repo)
    try:
        repo.fail = True
        results = await asyncio.gather(
            cache.get_user("alice", "example.org"),
            cache.get_user("bob", "example.org"),
            return_exceptions=True,
        )
        assert [type(r) for r in results] == [ConnectionError, ConnectionError]
        repo.fail = False  # nothing was cached: the next REGISTER reads again
        assert await cache.get_user("alice", "example.org") == alice()
    finally:
        await cache.close()


async def test_loads_in_pages(
    store: Store, repo: Recording, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(location, "LOAD_PAGE", 3)
    await store.sip.apply_bindings([binding(n, f"sip:u{n}@example.org") for n in range(7)], [])
    cache = await started(repo)
    try:
        assert len(await cache.list_bindings()) == 7
        assert repo.pages == 4  # 3 + 3 + 1, then an empty page
    finally:
        await cache.close()


async def test_bindings_without_vendor_parameters_share_one_empty_mapping(
    repo: Recording,
) -> None:
    cache = await started(repo)
    try:
        await cache.save_bindings(AOR, [binding(1), binding(2, pn_extra={"pn-x": "1"})], [])
        await cache.save_bindings("sip:bob@example.org", [binding(3, "sip:bob@example.org")], [])
        (two, one), (three,) = await cache.lookup(AOR), await cache.lookup("sip:bob@example.org")
        assert one.pn_extra is three.pn_extra and one.pn_extra == {}
        assert two.pn_extra == {"pn-x": "1"}
    finally:
        await cache.close()


async def test_sweep_drops_stale_accounts_and_unknown_names_are_bounded(
    store: Store, repo: Recording, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = Clock()
    cache = await started(repo, user_ttl=60, clock=clock)
    try:
        await store.sip.add_user(alice())
        await cache.get_user("alice", "example.org")
        clock.now += 30
        with pytest.raises(NotFound):
            await cache.get_user("mallory", "example.org")
        clock.now += 31  # alice's entry is 61 s old, mallory's 31 s
        await cache.remove_expired(datetime.now(UTC))
        reads = repo.user_reads
        with pytest.raises(NotFound):
            await cache.get_user("mallory", "example.org")  # still cached
        assert repo.user_reads == reads
        assert await cache.get_user("alice", "example.org") == alice()  # swept: read again
        assert repo.user_reads == reads + 1

        monkeypatch.setattr(location, "MAX_CACHED_USERS", 2)  # full: alice and mallory
        for _ in range(2):
            with pytest.raises(NotFound):
                await cache.get_user("eve", "example.org")
        assert repo.user_reads == reads + 3  # an unknown name past the cap is not kept
    finally:
        await cache.close()
