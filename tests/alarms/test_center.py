"""The alarm center: raises and clears stored in order, the active gauge, bounded history,
restart, and the upload settings row, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest
from prometheus_client import REGISTRY

from ucpush.alarms import clear_alarm, raise_alarm
from ucpush.alarms.center import AlarmCenter
from ucpush.config import AlarmSettings
from ucpush.store import Store

BOTH = pytest.mark.parametrize(
    "node_store_url",
    ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)],
    indirect=True,
)
INVALID_TOKEN = "PushNotificationInvalidDeviceTokenResponse"


def gauge(name: str, severity: str) -> float:
    value = REGISTRY.get_sample_value("ucpush_alarms_active", {"name": name, "severity": severity})
    return value or 0.0


@BOTH
async def test_raise_repeat_clear(center: AlarmCenter, node_store: Store) -> None:
    raise_alarm(INVALID_TOKEN, "ERROR", device_id="d1", service="APNS", tid="t1")
    raise_alarm(INVALID_TOKEN, "ERROR", device_id="d1", service="APNS", tid="t2")
    raise_alarm(INVALID_TOKEN, device_id="d2", service="FCM")
    await center.flush()
    active = await node_store.alarms.list_alarms()
    by_key = {a.key: a for a in active}
    assert set(by_key) == {"device_id=d1", "device_id=d2"}
    d1 = by_key["device_id=d1"]
    assert (d1.node, d1.name, d1.severity, d1.count) == ("node-a", INVALID_TOKEN, "ERROR", 2)
    assert d1.details == {"device_id": "d1", "service": "APNS", "tid": "t2"}
    assert d1.last_raised_at >= d1.raised_at
    assert gauge(INVALID_TOKEN, "ERROR") == 2

    clear_alarm(INVALID_TOKEN, device_id="d1")
    await center.flush()
    assert [a.key for a in await node_store.alarms.list_alarms()] == ["device_id=d2"]
    history = await node_store.alarms.list_alarms(active_only=False)
    cleared = next(a for a in history if a.key == "device_id=d1")
    assert cleared.cleared_at is not None and not cleared.active
    assert gauge(INVALID_TOKEN, "ERROR") == 1

    # Raised again after its clear: a new instance, the old one stays in the history.
    raise_alarm(INVALID_TOKEN, device_id="d1", service="APNS")
    await center.flush()
    history = await node_store.alarms.list_alarms(active_only=False)
    assert sorted((a.key, a.active) for a in history) == [
        ("device_id=d1", False),
        ("device_id=d1", True),
        ("device_id=d2", True),
    ]


async def test_clear_of_an_inactive_alarm_writes_nothing(
    center: AlarmCenter, node_store: Store
) -> None:
    clear_alarm("AccessTokenInvalid")
    clear_alarm(INVALID_TOKEN, device_id="nobody")
    await center.flush()
    assert await node_store.alarms.list_alarms(active_only=False) == []


async def test_history_is_bounded(node_store: Store) -> None:
    settings = AlarmSettings(node_name="node-a", history_size=10)
    async with AlarmCenter(node_store.alarms, settings) as center:
        for i in range(60):
            raise_alarm(INVALID_TOKEN, device_id=f"d{i}", service="APNS")
            clear_alarm(INVALID_TOKEN, device_id=f"d{i}")
        raise_alarm("StartFailed", error="boom")
        await center.flush()
    # Pruned after 50 clears, then at the next start.
    async with AlarmCenter(node_store.alarms, settings):
        history = await node_store.alarms.list_alarms(active_only=False)
    cleared = [a for a in history if not a.active]
    assert len(cleared) == 10
    assert {a.key for a in cleared} == {f"device_id=d{i}" for i in range(50, 60)}
    assert [a.name for a in history if a.active] == ["StartFailed"]


async def test_restart_keeps_active_alarms_clearable(node_store: Store) -> None:
    settings = AlarmSettings(node_name="node-a")
    async with AlarmCenter(node_store.alarms, settings) as center:
        raise_alarm("LocalPushStartFailed", error="address in use")
        await center.flush()
    async with AlarmCenter(node_store.alarms, settings) as center:
        assert center.active() == {("LocalPushStartFailed", ""): "ALERT"}
        assert gauge("LocalPushStartFailed", "ALERT") == 1
        clear_alarm("LocalPushStartFailed")
        await center.flush()
    assert await node_store.alarms.list_alarms() == []
    # Another node's alarms are not this node's to clear.
    async with AlarmCenter(node_store.alarms, AlarmSettings(node_name="node-b")) as center:
        raise_alarm("LocalPushStartFailed", error="x")
        await center.flush()
    async with AlarmCenter(node_store.alarms, settings) as center:
        clear_alarm("LocalPushStartFailed")
        await center.flush()
    assert [(a.node, a.name) for a in await node_store.alarms.list_alarms()] == [
        ("node-b", "LocalPushStartFailed")
    ]


async def test_events_survive_a_database_hiccup(node_store: Store) -> None:
    """A failed write is retried in order; nothing is lost or reordered."""
    repo = node_store.alarms
    failures = {"left": 2}
    real_raise = repo.raise_alarm

    async def flaky(*args: object, **kwargs: object) -> object:
        if failures["left"]:
            failures["left"] -= 1
            raise OSError("connection reset")
        return await real_raise(*args, **kwargs)  # type: ignore[arg-type]

    repo.raise_alarm = flaky  # type: ignore[method-assign]
    async with AlarmCenter(repo, AlarmSettings(node_name="node-a")) as center:
        raise_alarm("StartFailed", error="x")
        clear_alarm("StartFailed")
        await center.flush()
    assert failures["left"] == 0
    [record] = await repo.list_alarms(active_only=False)
    assert record.name == "StartFailed" and record.cleared_at is not None


@BOTH
async def test_settings_row(node_store: Store) -> None:
    repo = node_store.alarms
    now = datetime.now(UTC)
    prefs = await repo.prefs(now)
    assert (prefs.push_frequency_minutes, prefs.min_push_level) == (None, None)
    await repo.set_push_frequency(45, now)
    await repo.set_min_push_level("Warning", now)
    with pytest.raises(ValueError, match=r"5\.\.90"):
        await repo.set_push_frequency(91, now)
    await repo.request_push(now)
    later = now + timedelta(seconds=1)
    await repo.record_push_result(later, "relay unreachable")
    prefs = await repo.prefs(later)
    assert prefs.push_frequency_minutes == 45 and prefs.min_push_level == "Warning"
    assert prefs.push_requested_at == now and prefs.push_result_at == later
    assert prefs.push_error == "relay unreachable"


async def test_alarm_from_a_worker_thread(center: AlarmCenter, node_store: Store) -> None:
    await asyncio.to_thread(raise_alarm, "StartFailed", error="in a thread")
    await asyncio.sleep(0)  # the loop takes the hand-over
    await center.flush()
    [record] = await node_store.alarms.list_alarms()
    assert record.details == {"error": "in a thread"}
