"""The dispatcher and the proxy hook against the real relay over TLS with the APNs/FCM
simulators, and a real local push service with a ``websockets`` client playing the app."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Collection
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from prometheus_client import REGISTRY
from structlog.testing import capture_logs
from websockets.asyncio.client import ClientConnection

from tests.callpush.conftest import binding, invite
from tests.callpush.test_payload import request
from tests.lpns.conftest import ACK_TIMEOUT, Node
from tests.relay.conftest import BUNDLE, FCM_PROJECT, Stack
from tests.signin.helpers import PUSH_KEY
from ucpush.callpush.dispatcher import (
    CallPushHandler,
    PushDispatcher,
    PushTarget,
    SigninDirectory,
)
from ucpush.callpush.engine import CallDevice, CallPushConfig, CancelReason, PushKind, SendPush
from ucpush.callpush.payload import PUBLIC_KEY, PayloadBuilder, PayloadPolicy
from ucpush.crypto import jwe
from ucpush.relay.client import RelayClient
from ucpush.relay.providers.base import PushType
from ucpush.sip.registrar import BindingRefreshed
from ucpush.store.repository import Binding, Device, Platform, PushState

NODE = "sip:node1.example.org;transport=tls"
TOKEN = "ab" * 32  # the token tests.signin.helpers registers devices with
INSTANCE = "<urn:uuid:6ba7b810-9dad-11d1-80b4-00c04fd430c8>"
CALL = SendPush("iphone-1", PushKind.CALL, PushType.VOIP)


def counter(name: str) -> float:
    return REGISTRY.get_sample_value(f"{name}_total") or 0.0


def counters(*names: str) -> dict[str, float]:
    return {name: counter(name) for name in names}


def grew(before: dict[str, float], **expected: float) -> None:
    assert {n: counter(n) - before[n] for n in expected} == expected


def device_binding(name: str = "iphone", instance: str = INSTANCE, prid: str = TOKEN) -> Binding:
    return binding(name, instance=instance, prid=prid)


async def targets(node: Node, *bindings: Binding) -> list[tuple[CallDevice, PushTarget]]:
    return await SigninDirectory(node.signin.repo).call_devices(list(bindings))


def dispatcher(client: RelayClient | None, node: Node) -> PushDispatcher:
    return PushDispatcher(lambda: client, PayloadBuilder(NODE), node.signin.repo, lpns=node.lpns)


async def play_app(ws: ClientConnection, *, ack: bool) -> list[dict[str, Any]]:
    """The app on its local push session: acknowledge (or ignore) every push."""
    seen = []
    try:
        async for frame in ws:
            message = json.loads(frame)
            if message["type"] == "push":
                seen.append(message)
                if ack:
                    await ws.send(json.dumps({"type": "ack", "id": message["id"]}))
    except Exception:
        pass
    return seen


async def eventually(predicate: Any, within: float = 5.0) -> None:
    for _ in range(int(within * 100)):
        if predicate():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"condition not met within {within} s")


# single pushes


async def test_voip_push_through_relay_to_apns(stack: Stack, node: Node) -> None:
    await node.ready_device()
    stack.apns.register_device(TOKEN, BUNDLE)
    [(dev, target)] = await targets(node, device_binding())
    assert (dev.id, target.service, target.key, target.signed_in) == (
        "iphone-1",
        "APNS",
        PUSH_KEY,
        True,
    )
    before = counters(
        "NumberOfPushReqSent", "NumberOfPushResReceived", "NumberOfPushErrorResReceived"
    )
    async with await stack.enrolled_client() as client:
        assert await dispatcher(client, node).send(invite(), CALL, target)
    grew(before, NumberOfPushReqSent=1, NumberOfPushResReceived=1, NumberOfPushErrorResReceived=0)
    [delivery] = stack.apns.delivered
    assert delivery.topic == BUNDLE + ".voip" and delivery.priority == 10
    fields = json.loads(jwe.decrypt(json.loads(delivery.payload)["jwe"], PUSH_KEY))
    assert fields["caller_name"] == "Bob Caller" and fields["active_node"] == NODE


async def test_fcm_device_gets_a_high_priority_data_message(stack: Stack, node: Node) -> None:
    await node.ready_device(platform="android", push_token="fcm-token-1")
    stack.fcm.register_device("fcm-token-1", FCM_PROJECT)
    [(_, target)] = await targets(node, device_binding(prid="fcm-token-1"))
    assert (target.platform, target.service) == (Platform.ANDROID, "FCM")
    async with await stack.enrolled_client() as client:
        assert await dispatcher(client, node).send(invite(), CALL, target)
    [delivery] = stack.fcm.delivered
    assert delivery.message["android"]["priority"] == "high"
    assert delivery.message["data"]["type"] == "voip"
    fields = json.loads(jwe.decrypt(delivery.message["data"]["jwe"], PUSH_KEY))
    assert fields["type"] == "call"


async def test_unregistered_token_pauses_the_device_and_raises_the_alarm(
    stack: Stack, node: Node
) -> None:
    await node.ready_device()
    stack.apns.register_device(TOKEN, BUNDLE)
    stack.apns.unregister_device(TOKEN)
    [(_, target)] = await targets(node, device_binding())
    before = counters("NumberOfPushResReceived", "NumberOfPushErrorResReceived")
    async with await stack.enrolled_client() as client:
        with capture_logs() as logs:
            assert not await dispatcher(client, node).send(invite(), CALL, target)
    grew(before, NumberOfPushResReceived=1, NumberOfPushErrorResReceived=1)
    [alarm] = [e for e in logs if e["event"] == "alarm"]
    assert alarm["alarm"] == "PushNotificationInvalidDeviceTokenResponse"
    assert alarm["severity"] == "ERROR" and alarm["paused"] is True
    device = await node.signin.repo.get_device("iphone-1")
    assert device.push_state is PushState.PAUSED_INVALID_TOKEN
    # A paused device is no longer a push target.
    assert await targets(node, device_binding()) == []


async def test_bad_device_token_raises_the_alarm_but_never_pauses(stack: Stack, node: Node) -> None:
    await node.ready_device()
    stack.apns_sandbox.register_device(TOKEN, BUNDLE)  # sandbox token, production service
    [(_, target)] = await targets(node, device_binding())
    async with await stack.enrolled_client() as client:
        with capture_logs() as logs:
            assert not await dispatcher(client, node).send(invite(), CALL, target)
    [alarm] = [e for e in logs if e["event"] == "alarm"]
    assert alarm["paused"] is False and alarm["reason"] == "BadDeviceToken"
    device = await node.signin.repo.get_device("iphone-1")
    assert device.push_state is PushState.ACTIVE


async def test_unreachable_relay_is_counted_not_raised(node: Node) -> None:
    await node.ready_device()
    [(_, target)] = await targets(node, device_binding())
    before = counters("NumberOfPushErrorResReceived")
    async with RelayClient("https://127.0.0.1:9", "refresh", timeout=1.0) as client:
        assert not await dispatcher(client, node).send(invite(), CALL, target)
    grew(before, NumberOfPushErrorResReceived=1)


# local push first


async def test_local_push_first_when_the_device_has_a_session(stack: Stack, node: Node) -> None:
    ws = await node.session()
    app = asyncio.create_task(play_app(ws, ack=True))
    [(_, target)] = await targets(node, device_binding())
    before = counters(
        "NumberOfLocalPushReqSent", "NumberOfPushReqSent", "NumberofMissedCallLocalPushReqSent"
    )
    async with await stack.enrolled_client() as client:
        d = dispatcher(client, node)
        assert await d.send(invite(), CALL, target)
        missed = SendPush("iphone-1", PushKind.MISSED_CALL, PushType.MISSED_CALL)
        assert await d.send(invite(), missed, target)
    grew(
        before,
        NumberOfLocalPushReqSent=2,
        NumberOfPushReqSent=0,
        NumberofMissedCallLocalPushReqSent=1,
    )
    assert stack.apns.delivered == []
    await ws.close()
    pushes = await app
    assert [p["push_type"] for p in pushes] == ["voip", "missed-call"]
    assert json.loads(jwe.decrypt(pushes[0]["payload"], PUSH_KEY))["call_id"] == "call-1@pbx"


async def test_local_push_without_ack_falls_back_to_apns(stack: Stack, node: Node) -> None:
    stack.apns.register_device(TOKEN, BUNDLE)
    ws = await node.session()
    app = asyncio.create_task(play_app(ws, ack=False))
    [(_, target)] = await targets(node, device_binding())
    before = counters("NumberOfLocalPushTimout", "NumberOfPushReqSent")
    async with await stack.enrolled_client() as client:
        started = time.monotonic()
        assert await dispatcher(client, node).send(invite(), CALL, target)
        elapsed = time.monotonic() - started
    grew(before, NumberOfLocalPushTimout=1, NumberOfPushReqSent=1)
    assert ACK_TIMEOUT <= elapsed < ACK_TIMEOUT + 2.0
    assert len(stack.apns.delivered) == 1
    await ws.close()
    assert len(await app) == 1


async def test_china_region_message_push_is_an_alert_and_counted(stack: Stack, node: Node) -> None:
    await node.ready_device(capabilities={"china_region": True, "callkit": False})
    stack.apns.register_device(TOKEN, BUNDLE)
    [(dev, target)] = await targets(node, device_binding())
    assert dev.china_region and target.china_region
    before = counters("CustomRegionNumofMsgPushReqSent")
    push = SendPush("iphone-1", PushKind.CALL_MESSAGE, PushType.MESSAGE)
    async with await stack.enrolled_client() as client:
        assert await dispatcher(client, node).send(invite(), push, target)
    grew(before, CustomRegionNumofMsgPushReqSent=1)
    [delivery] = stack.apns.delivered
    assert delivery.push_type == "alert" and delivery.topic == BUNDLE


# the proxy hook


class ProxySide:
    """The proxy's ``CallControl`` for one held INVITE, recording what call push decides."""

    def __init__(self) -> None:
        self.provisionals: list[int] = []
        self.finals: list[int] = []
        self.forwarded: list[Binding] = []
        self.extended: list[str] = []

    def provisional(self, status: int, reason: str) -> None:
        self.provisionals.append(status)

    def respond(self, status: int, reason: str) -> None:
        self.finals.append(status)

    def forward(self, binding: Binding) -> None:
        self.forwarded.append(binding)

    def extend(self, number: str) -> None:
        self.extended.append(number)


async def test_hook_wakes_holds_and_forwards_on_re_register(stack: Stack, node: Node) -> None:
    """Two devices: the sign-in iPhone and a bare RFC 8599 binding without a key. The first
    to register gets the INVITE; when it answers, the other gets the 'answered elsewhere'
    cancel push."""
    await node.ready_device()
    stack.apns.register_device(TOKEN, BUNDLE)
    stack.apns.register_device("cd" * 32, BUNDLE)
    bare = binding("bare", prid="cd" * 32)
    async with await stack.enrolled_client() as client:
        handler = CallPushHandler(dispatcher(client, node), SigninDirectory(node.signin.repo))
        call = await handler.prepare_call(
            request(), "sip:alice@example.org", [(device_binding(), False), (bare, False)]
        )
        assert call is not None
        proxy = ProxySide()
        call.start(proxy, live_branches=False)
        await eventually(lambda: len(stack.apns.delivered) == 2)
        assert {d.push_type for d in stack.apns.delivered} == {"voip"}
        assert proxy.forwarded == [] and proxy.finals == []
        [run] = handler.calls("sip:alice@example.org")
        fresh = replace(device_binding(), id="fresh", cseq=2, source_host="198.51.100.20")
        handler.on_binding_event(BindingRefreshed(fresh, device_binding()))
        assert proxy.forwarded == [fresh]  # at once, before the REGISTER's 2xx
        call.ringing("fresh")
        call.final(200, "fresh")
        await eventually(lambda: len(stack.apns.delivered) == 3)
        await run.wait_closed()
    cancel = stack.apns.delivered[2]
    assert cancel.token == "cd" * 32 and cancel.push_type == "alert"
    fields = json.loads(jwe.decrypt(json.loads(cancel.payload)["jwe"], PUBLIC_KEY))
    assert fields["type"] == "cancel"
    assert fields["reason"] == CancelReason.ANSWERED_ELSEWHERE.value
    assert "caller_name" not in fields  # keyless: PII-free
    await eventually(lambda: handler.calls("sip:alice@example.org") == [])


async def test_hook_drops_after_the_timer_with_a_missed_call_push(stack: Stack, node: Node) -> None:
    drop_after = 0.4
    await node.ready_device()
    stack.apns.register_device(TOKEN, BUNDLE)
    async with await stack.enrolled_client() as client:
        handler = CallPushHandler(
            dispatcher(client, node),
            SigninDirectory(node.signin.repo),
            config=CallPushConfig(ringback_after=0.1, drop_after=drop_after),
        )
        call = await handler.prepare_call(
            request(), "sip:alice@example.org", [(device_binding(), False)]
        )
        assert call is not None
        proxy = ProxySide()
        started = time.monotonic()
        call.start(proxy, live_branches=False)
        await eventually(lambda: len(stack.apns.delivered) == 1)
        [run] = handler.calls("sip:alice@example.org")
        await eventually(lambda: proxy.finals == [480], within=drop_after + 2)
        elapsed = time.monotonic() - started
        call.final(480, None)  # what the proxy reports back: ignored, the call is over
        await run.wait_closed()
    assert drop_after <= elapsed < drop_after + 1.0
    assert proxy.provisionals == [100, 180]  # Trying, then ring-back at ringback_after
    kinds = [
        json.loads(jwe.decrypt(json.loads(d.payload)["jwe"], PUSH_KEY))["type"]
        for d in stack.apns.delivered
    ]
    assert kinds == ["call", "missed-call"]
    assert stack.apns.delivered[1].push_type == "alert"


async def test_hook_answers_at_once_when_every_push_fails(stack: Stack, node: Node) -> None:
    await node.ready_device()  # token never registered at APNs: BadDeviceToken
    async with await stack.enrolled_client() as client:
        handler = CallPushHandler(dispatcher(client, node), SigninDirectory(node.signin.repo))
        call = await handler.prepare_call(
            request(), "sip:alice@example.org", [(device_binding(), False)]
        )
        assert call is not None
        proxy = ProxySide()
        started = time.monotonic()
        call.start(proxy, live_branches=False)
        await eventually(lambda: proxy.finals == [480])
    assert time.monotonic() - started < 3.0  # not the 13 s drop timer
    await eventually(lambda: handler.calls("sip:alice@example.org") == [])


async def test_hook_has_nothing_to_do_for_paused_devices(stack: Stack, node: Node) -> None:
    await node.ready_device()
    await node.signin.repo.set_push_state(
        "iphone-1", PushState.PAUSED_INVALID_TOKEN, datetime.now(UTC)
    )
    async with await stack.enrolled_client() as client:
        handler = CallPushHandler(dispatcher(client, node), SigninDirectory(node.signin.repo))
        assert (
            await handler.prepare_call(
                request(), "sip:alice@example.org", [(device_binding(), False)]
            )
            is None
        )


# the device directory


class Devices:
    def __init__(self, *devices: Device) -> None:
        self.devices = list(devices)

    async def find_devices(
        self, instance_ids: Collection[str], tokens: Collection[str]
    ) -> list[Device]:
        return [
            d
            for d in self.devices
            if d.sip_instance_id in instance_ids or {d.pn_prid, d.push_token} & set(tokens)
        ]


def store_device(**changes: Any) -> Device:
    now = datetime(2026, 11, 25, tzinfo=UTC)
    values: dict[str, Any] = {
        "id": "iphone-1",
        "user_id": "u1",
        "platform": Platform.IOS,
        "service": "APNS",
        "push_token": "tok-new",
        "push_key": PUSH_KEY,
        "push_key_id": "k2",
        "created_at": now,
        "updated_at": now,
    }
    values.update(changes)
    return Device(**values)


async def test_directory_links_bindings_to_devices_and_pushes_bare_bindings_from_pn_params() -> (
    None
):
    directory = SigninDirectory(
        Devices(
            store_device(pn_prid="tok-old"),
            store_device(id="signed-out", push_token="tok-so", push_state=PushState.SIGNED_OUT),
        )
    )
    by_prid = binding("a", prid="tok-old", instance="")
    bare_fcm = replace(binding("f", prid="fcm-1", instance=""), pn_provider="fcm")
    bare_dev = replace(binding("d", prid="dd", instance=""), pn_provider="apns.dev")
    signed_out = binding("s", prid="tok-so", instance="")
    pairs = await directory.call_devices([by_prid, bare_fcm, bare_dev, signed_out])
    assert [(d.id, t.service, t.token, bool(t.key)) for d, t in pairs] == [
        ("iphone-1", "APNS", "tok-new", True),
        ("b-f", "FCM", "fcm-1", False),
        ("b-d", "APNS:dev", "dd", False),
    ]
    # The device's current and linked tokens let a rotated pn-prid match the held call.
    assert pairs[0][0].prids == frozenset({"tok-new", "tok-old"})
    assert pairs[1][1].platform is Platform.ANDROID


async def test_keyless_device_gets_nothing_when_policy_forbids(stack: Stack, node: Node) -> None:
    stack.apns.register_device("cd" * 32, BUNDLE)
    [(_, target)] = await targets(node, binding("bare", prid="cd" * 32))
    async with await stack.enrolled_client() as client:
        d = PushDispatcher(
            lambda: client,
            PayloadBuilder(NODE, PayloadPolicy(pii_free_without_key=False)),
            node.signin.repo,
        )
        assert not await d.send(invite(), CALL, target)
    assert stack.apns.delivered == []
