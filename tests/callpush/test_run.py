"""``CallRun`` on the real event loop with a recording ``CallControl``: what the proxy sees
once it drives the engine fully (ring-back, 480, mobility, late INVITE+CANCEL), and the
mobility counters."""

from __future__ import annotations

import asyncio
from typing import Any, cast

from prometheus_client import REGISTRY

from tests.callpush.conftest import binding, device, invite
from ucpush.callpush.dispatcher import CallRun, PushDispatcher, PushTarget
from ucpush.callpush.engine import CallDevice, CallPushConfig, PushKind, SendPush
from ucpush.store.repository import Binding, Platform

FAST = CallPushConfig(ringback_after=0.05, drop_after=0.15, linger=1.0)


def counter(name: str) -> float:
    return REGISTRY.get_sample_value(f"{name}_total") or 0.0


class Recorder:
    """A ``CallControl`` that writes down what it was asked to do."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

    def provisional(self, status: int, reason: str) -> None:
        self.calls.append(("provisional", status))

    def respond(self, status: int, reason: str) -> None:
        self.calls.append(("respond", status))

    def forward(self, device_id: str, binding: Binding) -> None:
        self.calls.append(("forward", device_id))

    def late_invite_cancel(self, device_id: str, binding: Binding, reason: str) -> None:
        self.calls.append(("late", device_id, reason))

    def extend(self, number: str) -> None:
        self.calls.append(("extend", number))


class FakeDispatcher:
    """Delivers every push after ``delay`` (the relay is tested in test_dispatcher)."""

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay
        self.sent: list[SendPush] = []

    async def send(self, invite: Any, push: SendPush, target: PushTarget) -> bool:
        await asyncio.sleep(self.delay)
        self.sent.append(push)
        return True


def run_for(
    devices: list[CallDevice], fake: FakeDispatcher, control: Recorder, done: list[CallRun]
) -> CallRun:
    targets = {d.id: PushTarget(d.id, Platform.IOS, "APNS", f"tok-{d.id}") for d in devices}
    return CallRun(cast(PushDispatcher, fake), control, targets, FAST, on_done=done.append)


async def test_ringback_then_480_then_missed_call() -> None:
    fake, control, done = FakeDispatcher(), Recorder(), []
    run = run_for([device("a")], fake, control, done)
    run.start(invite(), [device("a")])
    await asyncio.sleep(0.3)
    await run.wait_closed()
    assert control.calls == [("provisional", 100), ("provisional", 180), ("respond", 480)]
    assert [p.kind for p in fake.sent] == [PushKind.CALL, PushKind.MISSED_CALL]
    assert done == [run] and run.engine.done


async def test_mobility_extension_is_counted() -> None:
    fake, control, done = FakeDispatcher(), Recorder(), []
    before = counter("MobilityPushNotificationCallsExtendedToMIDueToTimeout")
    run = run_for([device("a")], fake, control, done)
    run.start(invite(mobility_number="+15559999"), [device("a")])
    await asyncio.sleep(0.3)
    await run.wait_closed()
    assert ("extend", "+15559999") in control.calls
    assert counter("MobilityPushNotificationCallsExtendedToMIDueToTimeout") == before + 1


async def test_device_in_time_counts_as_extended_to_the_app() -> None:
    fake, control, done = FakeDispatcher(), Recorder(), []
    before = counter("MobilityPushNotificationCallsExtendedToJabber")
    run = run_for([device("a")], fake, control, done)
    run.start(invite(mobility_number="+15559999"), [device("a")])
    await asyncio.sleep(0.01)
    run.feed(run.engine.device_registered(run.now(), binding("a")))
    run.feed(run.engine.final_response(run.now(), 200, "a"))
    await run.wait_closed()
    assert ("forward", "a") in control.calls and done == [run]
    assert counter("MobilityPushNotificationCallsExtendedToJabber") == before + 1


async def test_late_registration_gets_invite_and_cancel() -> None:
    fake, control, done = FakeDispatcher(delay=0.1), Recorder(), []
    run = run_for([device("a")], fake, control, done)
    run.start(invite(), [device("a")])
    run.feed(run.engine.cancelled(run.now()))
    run.feed(run.engine.device_registered(run.now(), binding("a")))
    await run.wait_closed()
    assert control.calls[-1][:2] == ("late", "a")
    assert [p.kind for p in fake.sent] == [PushKind.CALL]  # no second push
    assert done == [run]
