"""The node's location service: every AOR's bindings and the SIP accounts held in memory,
written behind to the store.

Before this, each REGISTER made three or four store round trips (2-5 ms each on SQLite) and
every proxied request one more; the registrar could not pass about 100 registrations/s.
``LocationCache`` answers ``RegistrarStorage`` and ``LocationService`` from memory instead:

* Bindings are loaded from the store once (``start``); ``list_bindings``/``lookup`` never touch
  the store again. ``save_bindings`` changes memory at once and queues the change; a background
  task writes the queue every ``flush_interval`` seconds in one transaction (at most
  ``flush_batch`` binding changes each), coalesced per binding (a binding refreshed ten times
  in the window is written once). ``close`` writes what is left.
* Durability rule: the 2xx of a REGISTER may leave before its binding is in the store. A crash
  (not a clean stop) loses the binding changes of the last ``flush_interval`` at most, plus
  whatever is queued while the store is failing; a lost binding costs the device one
  registration cycle (calls to it get 404 until it re-REGISTERs). With ``flush_interval`` 0 the
  store is written before ``save_bindings`` returns (before the 2xx), as without the cache.
* A failed write is retried every ``FLUSH_RETRY_SECONDS`` (newer changes to the same binding
  win), logged as ``sip.location.store_failed`` once per outage; memory stays authoritative
  meanwhile.
* Accounts (digest HA1) are cached for ``user_ttl`` seconds, unknown names included. The
  ``ucpush sip user`` CLI writes the store from another process, so a running node learns of a
  change when the entry ages out, or at once when a UA fails to authenticate against the cached
  record (``forget_user``, called by ``RegistrarService`` after each 401 to presented
  credentials: a new password or a just-added account works on the UA's next attempt).
  A deleted or re-passworded account keeps registering with its old password for ``user_ttl``
  at most.

One node process owns the bindings of its store: bindings written by another process after
``start`` are not seen (the registrar and proxy of one store run in one ``ucpush serve``).
"""

from __future__ import annotations

import asyncio
import itertools
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from typing import Protocol

from ucpush.logging import get_logger
from ucpush.sip.registrar import NO_PN_EXTRA
from ucpush.store.repository import Binding, NotFound, SipUser

log = get_logger(__name__)

FLUSH_RETRY_SECONDS = 1.0
LOAD_PAGE = 5000
MAX_CACHED_USERS = 200_000


class BindingStore(Protocol):
    """What the cache needs of ``SqlSipRepository``."""

    async def get_users(self, keys: Sequence[tuple[str, str]]) -> list[SipUser]: ...
    async def list_bindings_page(self, after: str = "", limit: int = 5000) -> list[Binding]: ...
    async def save_bindings(self, aor: str, upsert: list[Binding], remove: list[str]) -> None: ...
    async def apply_bindings(self, upsert: Sequence[Binding], remove: Sequence[str]) -> None: ...


def _newest_first(binding: Binding) -> tuple[float, str]:
    return (-binding.updated_at.timestamp(), binding.id)


def compact(binding: Binding) -> Binding:
    """``binding`` with its often-repeated strings interned, so 100,000 bindings share one copy
    of each domain-wide value (AOR domain part aside, these are the same for most devices of an
    app: provider, topic, transport, user agent, host of a NAT or edge proxy)."""
    intern = sys.intern
    if (
        binding.user_agent is intern(binding.user_agent)
        and binding.source_host is intern(binding.source_host)
        and binding.pn_param is intern(binding.pn_param)
        and not binding.path
        and (binding.pn_extra or NO_PN_EXTRA) is binding.pn_extra
    ):
        return binding  # as the registrar makes them: nothing to share further
    return replace(
        binding,
        source_transport=intern(binding.source_transport),
        source_host=intern(binding.source_host),
        pn_provider=intern(binding.pn_provider),
        pn_param=intern(binding.pn_param),
        user_agent=intern(binding.user_agent),
        path=tuple(intern(p) for p in binding.path),
        pn_extra=binding.pn_extra or NO_PN_EXTRA,
    )


class LocationCache:
    """``RegistrarStorage`` and ``LocationService`` from memory over a ``BindingStore``.
    ``start()`` loads and starts writing behind; ``close()`` writes what is pending."""

    def __init__(
        self,
        store: BindingStore,
        *,
        flush_interval: float = 0.02,
        flush_batch: int = 1000,
        user_ttl: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if flush_interval < 0 or flush_batch < 1 or user_ttl < 0:
            raise ValueError("flush_interval and user_ttl must be >= 0, flush_batch >= 1")
        self.store = store
        self.flush_interval = flush_interval
        self.flush_batch = flush_batch
        self.user_ttl = user_ttl
        self._clock = clock
        self._aors: dict[str, dict[str, Binding]] = {}
        # username, realm -> (account or None when unknown, monotonic time it was read)
        self._users: dict[tuple[str, str], tuple[SipUser | None, float]] = {}
        self._loading: dict[tuple[str, str], asyncio.Future[SipUser | None]] = {}
        self._user_loader: asyncio.Task[None] | None = None
        # Binding id -> latest state to write (None: delete); insertion order = change order.
        self._pending: dict[str, Binding | None] = {}
        self._wake = asyncio.Event()
        self._writer: asyncio.Task[None] | None = None
        self._closing = False
        self._failing = False

    # life cycle

    async def start(self) -> None:
        """Load every binding (expired ones too: the sweep reports them) and start writing."""
        count = 0
        after = ""
        while page := await self.store.list_bindings_page(after, LOAD_PAGE):
            for binding in page:
                self._aors.setdefault(binding.aor, {})[binding.id] = compact(binding)
            count += len(page)
            after = page[-1].id
        log.info("sip.location.loaded", bindings=count, aors=len(self._aors))
        if self.flush_interval > 0:
            self._writer = asyncio.get_running_loop().create_task(self._write_behind())

    async def close(self) -> None:
        """Stop the writer after it has written everything queued (one last attempt if the
        store is failing; what it cannot write is logged as lost)."""
        self._closing = True
        self._wake.set()
        if self._writer is not None:
            await self._writer
            self._writer = None
        if self._pending:
            log.error("sip.location.unsaved", changes=len(self._pending))

    @property
    def pending(self) -> int:
        """Binding changes not in the store yet."""
        return len(self._pending)

    # RegistrarStorage

    async def get_user(self, username: str, realm: str) -> SipUser:
        key = (username, realm)
        cached = self._users.get(key)
        if cached is None or self._clock() - cached[1] >= self.user_ttl:
            user = await asyncio.shield(self._load_user(key))
        else:
            user = cached[0]
        if user is None:
            raise NotFound("SIP user")
        return user

    def _load_user(self, key: tuple[str, str]) -> asyncio.Future[SipUser | None]:
        """A future for the account, read with every other one missed meanwhile: under load
        one query serves many REGISTERs (a store round trip costs milliseconds)."""
        future = self._loading.get(key)
        if future is None:
            loop = asyncio.get_running_loop()
            future = self._loading[key] = loop.create_future()
            if self._user_loader is None:
                self._user_loader = loop.create_task(self._load_users())
        return future

    async def _load_users(self) -> None:
        try:
            while self._loading:
                batch, self._loading = self._loading, {}
                try:
                    found = await self.store.get_users(list(batch))
                except Exception as exc:
                    for future in batch.values():
                        if not future.done():
                            future.set_exception(exc)
                            future.exception()  # retrieved: a waiter may have gone
                    continue
                read_at = self._clock()
                by_key = {(u.username, u.realm): u for u in found}
                for key, future in batch.items():
                    user = by_key.get(key)
                    # Unknown names are attacker-chosen: cached only while the cache is small.
                    if user is not None or len(self._users) < MAX_CACHED_USERS:
                        self._users[key] = (user, read_at)
                    if not future.done():
                        future.set_result(user)
        finally:
            self._user_loader = None

    def forget_user(self, username: str, realm: str) -> None:
        """Re-read this account on its next use (its UA just failed to authenticate)."""
        self._users.pop((username, realm), None)

    async def list_bindings(self, aor: str | None = None) -> list[Binding]:
        """Ordered by AOR, then most recently updated first (as ``SqlSipRepository``)."""
        if aor is not None:
            held = self._aors.get(aor)
            return sorted(held.values(), key=_newest_first) if held else []
        return [
            b
            for name in sorted(self._aors)
            for b in sorted(self._aors[name].values(), key=_newest_first)
        ]

    async def save_bindings(self, aor: str, upsert: list[Binding], remove: list[str]) -> None:
        """One REGISTER's outcome: in memory now, in the store within ``flush_interval``
        (before returning when it is 0)."""
        if self.flush_interval == 0:
            await self.store.save_bindings(aor, upsert, remove)
        held = self._aors.get(aor)
        for binding_id in remove:
            if held is not None and held.pop(binding_id, None) is not None:
                self._queue(binding_id, None)
        if upsert:
            if held is None:
                held = self._aors[aor] = {}
            for binding in upsert:
                binding = compact(binding)
                held[binding.id] = binding
                self._queue(binding.id, binding)
        if held is not None and not held:
            del self._aors[aor]

    async def remove_expired(self, now: datetime) -> list[Binding]:
        """Drop every binding with ``expires_at <= now`` from memory (and, behind, the store).
        Cached accounts past their ``user_ttl`` go too (this is the node's periodic sweep):
        the cache holds the accounts in use, not every one ever seen."""
        fresh_after = self._clock() - self.user_ttl
        self._users = {k: v for k, v in self._users.items() if v[1] > fresh_after}
        gone: list[Binding] = []
        for aor in list(self._aors):
            held = self._aors[aor]
            expired = [b for b in held.values() if b.expires_at <= now]
            if not expired:
                continue
            for binding in expired:
                del held[binding.id]
            if not held:
                del self._aors[aor]
            gone += expired
        if gone and self.flush_interval == 0:
            await self.store.apply_bindings((), [b.id for b in gone])
        else:
            for binding in gone:
                self._queue(binding.id, None)
        return sorted(gone, key=lambda b: (b.aor, b.id))

    # LocationService

    async def lookup(self, aor: str) -> Sequence[Binding]:
        """The AOR's unexpired bindings, most recently updated first."""
        held = self._aors.get(aor)
        if not held:
            return []
        now = datetime.now(UTC)
        return sorted((b for b in held.values() if b.expires_at > now), key=_newest_first)

    # write-behind

    def _queue(self, binding_id: str, binding: Binding | None) -> None:
        if self.flush_interval == 0:
            return  # already written through
        self._pending.pop(binding_id, None)  # keep change order: this one is now the newest
        self._pending[binding_id] = binding
        self._wake.set()

    async def _write_behind(self) -> None:
        while True:
            await self._wake.wait()
            if not self._closing:
                # Let changes gather: one transaction for everything in the window.
                await asyncio.sleep(FLUSH_RETRY_SECONDS if self._failing else self.flush_interval)
            self._wake.clear()
            await self.flush()
            if self._pending:
                self._wake.set()
            if self._closing and (not self._pending or self._failing):
                return

    async def flush(self) -> None:
        """Write the queued changes now, ``flush_batch`` per transaction. On failure the
        unwritten ones go back in the queue (behind newer changes to the same bindings)."""
        while self._pending:
            batch = dict(itertools.islice(self._pending.items(), self.flush_batch))
            for binding_id in batch:
                del self._pending[binding_id]
            upsert = [b for b in batch.values() if b is not None]
            remove = [i for i, b in batch.items() if b is None]
            try:
                await self.store.apply_bindings(upsert, remove)
            except Exception as exc:
                for binding_id, binding in batch.items():
                    self._pending.setdefault(binding_id, binding)
                if not self._failing:
                    # Once per outage, not per retry.
                    log.error("sip.location.store_failed", error=repr(exc))
                self._failing = True
                log.debug("sip.location.flush_retry", pending=len(self._pending))
                return
            if self._failing:
                self._failing = False
                log.info("sip.location.flush_recovered", pending=len(self._pending))

    # cluster (ucpush.cluster)

    def replace_from_cluster(self, aor: str, bindings: Sequence[Binding]) -> None:
        """Hold ``bindings`` as the AOR's whole set: what another node of the cluster has just
        registered. Memory only, nothing queued: that node writes its own changes to the store,
        so this node sees them before that node's write-behind flush (docs/cluster.md)."""
        if bindings:
            self._aors[aor] = {b.id: compact(b) for b in bindings}
        else:
            self._aors.pop(aor, None)
