"""Call profiles (mobility identity, external presentation) on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime

from ucpush.callpush.profiles import CallProfile
from ucpush.store import Store

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)


async def test_put_get_many_replace_and_remove(store: Store) -> None:
    profiles = store.call_profiles
    alice = CallProfile("sip:alice@example.org", mobility_number="+15550199")
    corp = CallProfile("sip:desk@example.org", "", "Example Corp", "+15550100")
    await profiles.put(alice, NOW)
    await profiles.put(corp, NOW)
    found = await profiles.get_many({"sip:alice@example.org", "sip:desk@example.org", "sip:x@y"})
    assert found == {alice.aor: alice, corp.aor: corp}
    assert corp.presentation == ("Example Corp", "+15550100")
    moved = CallProfile(alice.aor, mobility_number="+15550111")
    await profiles.put(moved, NOW)
    assert (await profiles.get_many({alice.aor}))[alice.aor] == moved
    await profiles.put(CallProfile(alice.aor), NOW)  # nothing set: removed
    assert [p.aor for p in await profiles.list()] == [corp.aor]
    assert await profiles.get_many(set()) == {}
