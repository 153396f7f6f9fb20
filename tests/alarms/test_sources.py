"""Alarms raised by the components that detect them, stored by a running alarm center: their
real causes (410 from the APNs simulator through the relay, a token the local push service
refuses, its port taken). The node's database is the local push node's own file."""

from __future__ import annotations

import socket

import pytest

from tests.callpush.conftest import invite
from tests.callpush.test_dispatcher import CALL, TOKEN, device_binding, dispatcher, targets
from tests.lpns.conftest import Node, closed_with, lpns_settings, node
from tests.relay.conftest import BUNDLE, Stack
from ucpush.alarms.center import AlarmCenter
from ucpush.alarms.store import AlarmRecord
from ucpush.config import LpnsSettings
from ucpush.lpns.service import LpnsService

__all__ = ["lpns_settings", "node"]


async def stored(center: AlarmCenter) -> list[AlarmRecord]:
    await center.flush()
    return await center.repo.list_alarms()


async def test_410_from_apns_stores_the_invalid_token_alarm(
    stack: Stack, node: Node, center: AlarmCenter
) -> None:
    await node.ready_device()
    stack.apns.register_device(TOKEN, BUNDLE)
    stack.apns.unregister_device(TOKEN)
    [(_, target)] = await targets(node, device_binding())
    async with await stack.enrolled_client() as client:
        assert not await dispatcher(client, node).send(invite(), CALL, target)
        # Paused: no longer a push target until it signs in again with a valid token.
        assert await targets(node, device_binding()) == []
    [alarm] = await stored(center)
    assert (alarm.name, alarm.severity, alarm.key) == (
        "PushNotificationInvalidDeviceTokenResponse",
        "ERROR",
        "device_id=iphone-1",
    )
    assert alarm.details["paused"] is True and alarm.details["service"] == "APNS"


async def test_refused_local_push_token_stores_its_alarm(node: Node, center: AlarmCenter) -> None:
    await node.ready_device()
    ws, answer = await node.hello("x.y.z", device_id="iphone-1")
    assert answer is None
    assert (await closed_with(ws))[0] == 4401
    [alarm] = await stored(center)
    assert (alarm.name, alarm.severity, alarm.key) == (
        "LocalPushNotificationInvalidOAuthToken",
        "ALERT",
        "device_id=iphone-1",
    )


async def test_local_push_port_taken_stores_start_failed(
    center: AlarmCenter, lpns_settings: LpnsSettings, node: Node
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        service = LpnsService(lpns_settings.model_copy(update={"port": port}), node.signin)
        with pytest.raises(OSError):
            await service.start()
    [alarm] = await stored(center)
    assert (alarm.name, alarm.severity) == ("LocalPushStartFailed", "ALERT")
    assert "address" in str(alarm.details["error"]).lower()
