"""Call push end to end, every component its own process: SIPp as the caller and as the
devices, ``ucpush serve`` (the node), ``ucpush relay serve`` and ``ucpush sim serve`` (APNs
and FCM). The node is onboarded to the relay with a voucher from the relay's CLI; devices sign
in and register their push token and key over the sign-in API, register over SIP with RFC 8599
Contact parameters, and go to the background (SIPp exits: the connection is gone)."""

from __future__ import annotations

import asyncio
import base64
import json
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import websockets
from websockets.asyncio.client import ClientConnection

from tests.signin.helpers import PUSH_KEY
from tests.sip.sipp_harness import DOMAIN, SIPP, free_port, start_sipp
from tests.support.callstack import BUNDLE, FCM_PROJECT, TEAM_ID, UCPUSH, CallStack, call_stack
from ucpush.callpush.payload import PUBLIC_KEY
from ucpush.crypto import jwe

pytestmark = [
    pytest.mark.skipif(SIPP is None, reason="sipp (Debian sip-tester) is not installed"),
    pytest.mark.timeout(90),
]


@pytest.fixture(scope="module")
def pbx_port() -> int:
    """Where the node's upstream PBX (a SIPp UAS when a test needs it) listens."""
    return free_port()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, pbx_port: int) -> Iterator[CallStack]:
    upstream = f'upstream = "sip:127.0.0.1:{pbx_port};transport=udp"\n'
    with call_stack(tmp_path_factory.mktemp("call-e2e"), sip_toml=upstream) as running:
        yield running


# helpers


def token_for(user: str, tag: str = "a") -> str:
    return (tag + user.encode().hex()).ljust(64, "0")[:64]


def apns_params(token: str) -> str:
    return f";pn-provider=apns;pn-prid={token};pn-param={TEAM_ID}.{BUNDLE}.voip"


async def register_apns(stack: CallStack, user: str, token: str) -> None:
    async with stack.sim(stack.apns) as sim:
        response = await sim.post("/devices", json={"token": token, "topic": BUNDLE})
        response.raise_for_status()


async def background_device(stack: CallStack, user: str, params: str) -> None:
    """The app registers over TCP, then goes to the background: SIPp exits, the flow is
    gone, only a push reaches it now."""
    sipp = await start_sipp(
        stack.base, "register.xml", "t1", stack.sip_tcp, user=user, keys={"contact_params": params}
    )
    await sipp.succeeded()
    await asyncio.sleep(0.2)  # the node notices the closed connection


async def woken_device(stack: CallStack, user: str, params: str, ooc: str) -> Any:
    """The push woke the app: it registers again and takes the INVITE with ``ooc``."""
    return await start_sipp(
        stack.base,
        "register.xml",
        "t1",
        stack.sip_tcp,
        oocsf=ooc,
        duration_ms=4000,
        user=user,
        keys={"contact_params": params},
    )


async def caller(stack: CallStack, user: str, scenario: str) -> Any:
    return await start_sipp(stack.base, scenario, "u1", stack.sip_udp, user=user)


async def until(predicate: Any, within: float = 10.0) -> Any:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        value = await predicate()
        if value:
            return value
        await asyncio.sleep(0.05)
    raise AssertionError(f"not within {within} s")


def apns_fields(delivery: dict[str, Any], key: bytes = PUSH_KEY) -> dict[str, Any]:
    payload = json.loads(base64.b64decode(delivery["payload"]))
    return json.loads(jwe.decrypt(payload["jwe"], key))


# the cases of issue 5


async def test_wake_and_answer(stack: CallStack) -> None:
    user = stack.user()
    token = token_for(user)
    await register_apns(stack, user, token)
    await stack.sign_in_device(user, f"{user}-iphone", push_token=token, pn_prid=token)
    await background_device(stack, user, apns_params(token))
    call = await caller(stack, user, "caller_answered.xml")
    [push] = await until(lambda: stack.apns_deliveries(token))
    fields = apns_fields(push)
    assert push["push_type"] == "voip" and push["topic"] == BUNDLE + ".voip"
    assert fields["type"] == "call" and fields["caller_number"] == "caller"
    assert fields["active_node"].endswith(stack.sip_tcp.split(":")[1] + ";transport=tcp")
    device = await woken_device(stack, user, apns_params(token), "device_answers.xml")
    await call.succeeded()
    await device.succeeded()
    await asyncio.sleep(0.5)
    assert len(await stack.apns_deliveries(token)) == 1  # answered here: no follow-up


async def test_caller_cancels_then_missed_call_push(stack: CallStack) -> None:
    user = stack.user()
    token = token_for(user)
    await register_apns(stack, user, token)
    await stack.sign_in_device(user, f"{user}-iphone", push_token=token, pn_prid=token)
    await background_device(stack, user, apns_params(token))
    call = await caller(stack, user, "caller_cancels.xml")
    await call.succeeded()
    pushes = await until(
        lambda: _when(stack.apns_deliveries(token), lambda d: len(d) == 2), within=5
    )
    assert [apns_fields(p)["type"] for p in pushes] == ["call", "missed-call"]
    assert pushes[1]["push_type"] == "alert"


async def _when(value: Any, check: Any) -> Any:
    result = await value
    return result if check(result) else None


async def test_nobody_answers_480_at_13_s_then_missed_call(stack: CallStack) -> None:
    user = stack.user()
    token = token_for(user)
    await register_apns(stack, user, token)
    await stack.sign_in_device(user, f"{user}-iphone", push_token=token, pn_prid=token)
    await background_device(stack, user, apns_params(token))
    started = time.monotonic()
    call = await caller(stack, user, "caller_unanswered.xml")
    await call.succeeded()  # 100, 180 within 8 s, 480 within 12 s more
    elapsed = time.monotonic() - started
    assert 12.5 <= elapsed <= 15.0, elapsed
    pushes = await until(
        lambda: _when(stack.apns_deliveries(token), lambda d: len(d) == 2), within=3
    )
    assert [apns_fields(p)["type"] for p in pushes] == ["call", "missed-call"]


async def test_forked_call_answered_elsewhere_gets_a_cancel_push(stack: CallStack) -> None:
    user = stack.user()
    token = token_for(user)
    await register_apns(stack, user, token)
    await stack.sign_in_device(user, f"{user}-iphone", push_token=token, pn_prid=token)
    await background_device(stack, user, apns_params(token))
    # The user's desk phone is online and answers.
    desk = await start_sipp(
        stack.base,
        "register.xml",
        "u1",
        stack.sip_udp,
        oocsf="device_answers.xml",
        duration_ms=4000,
        user=user,
    )
    await asyncio.sleep(0.5)
    call = await caller(stack, user, "caller_answered.xml")
    await call.succeeded()
    await desk.succeeded()
    pushes = await until(
        lambda: _when(stack.apns_deliveries(token), lambda d: len(d) == 2), within=5
    )
    call_push, cancel = (apns_fields(p) for p in pushes)
    assert call_push["type"] == "call"
    assert cancel["type"] == "cancel" and cancel["reason"] == "answered-elsewhere"


async def test_china_region_device_gets_message_pushes(stack: CallStack) -> None:
    user = stack.user()
    token = token_for(user)
    await register_apns(stack, user, token)
    await stack.sign_in_device(
        user,
        f"{user}-iphone",
        push_token=token,
        pn_prid=token,
        capabilities={"callkit": False, "china_region": True},
    )
    await background_device(stack, user, apns_params(token))
    call = await caller(stack, user, "caller_cancels.xml")
    await call.succeeded()
    pushes = await until(
        lambda: _when(stack.apns_deliveries(token), lambda d: len(d) == 2), within=5
    )
    assert [p["push_type"] for p in pushes] == ["alert", "alert"]  # no CallKit: visible
    first, second = (apns_fields(p) for p in pushes)
    assert first["type"] == "call-message" and first["caller_number"] == "caller"
    assert second["type"] == "missed-call"


async def test_fcm_device_is_woken(stack: CallStack) -> None:
    user = stack.user()
    token = f"fcm-{user}-registration-token"
    async with stack.sim(stack.fcm) as sim:
        response = await sim.post("/devices", json={"token": token, "project_id": FCM_PROJECT})
        response.raise_for_status()
    await stack.sign_in_device(
        user,
        f"{user}-pixel",
        platform="android",
        push_token=token,
        pn_prid=token,
        sip_instance_id="<urn:uuid:00000000-0000-4000-8000-00000000f0c5>",
    )
    params = f";pn-provider=fcm;pn-prid={token};pn-param={FCM_PROJECT}"
    await background_device(stack, user, params)
    call = await caller(stack, user, "caller_answered.xml")
    [push] = await until(lambda: stack.fcm_deliveries(token))
    data = push["message"]["data"]
    assert push["message"]["android"]["priority"].lower() == "high"
    fields = json.loads(jwe.decrypt(data["jwe"], PUSH_KEY))
    assert fields["type"] == "call"
    device = await woken_device(stack, user, params, "device_answers.xml")
    await call.succeeded()
    await device.succeeded()


async def test_device_without_a_key_gets_a_pii_free_push(stack: CallStack) -> None:
    user = stack.user()
    token = token_for(user, "b")
    await register_apns(stack, user, token)
    # A bare RFC 8599 device: no sign-in, so no key.
    await background_device(stack, user, apns_params(token))
    call = await caller(stack, user, "caller_cancels.xml")
    await call.succeeded()
    pushes = await until(
        lambda: _when(stack.apns_deliveries(token), lambda d: len(d) == 2), within=5
    )
    first = apns_fields(pushes[0], PUBLIC_KEY)
    assert first["type"] == "call" and "caller_name" not in first
    assert "caller_number" not in first
    assert apns_fields(pushes[1], PUBLIC_KEY)["type"] == "missed-call"
    log = (stack.base / "node.log").read_text()
    assert "pii_free_push" in log


async def test_token_unregistered_at_the_provider(stack: CallStack) -> None:
    user = stack.user()
    token = token_for(user)
    await register_apns(stack, user, token)
    async with stack.sim(stack.apns) as sim:
        (await sim.delete(f"/devices/{token}")).raise_for_status()  # the app was removed
    await stack.sign_in_device(user, f"{user}-iphone", push_token=token, pn_prid=token)
    await background_device(stack, user, apns_params(token))
    started = time.monotonic()
    call = await caller(stack, user, "caller_refused.xml")
    await call.succeeded()
    assert time.monotonic() - started < 5  # at once, not after the 13 s drop timer
    log = (stack.base / "node.log").read_text()
    assert "PushNotificationInvalidDeviceTokenResponse" in log
    # Paused until the device registers a new token: the next call pushes nobody.
    call = await caller(stack, user, "caller_refused.xml")
    await call.succeeded()
    assert await stack.apns_deliveries(token) == []


# local push first (issue 6)


async def local_session(stack: CallStack, access_token: str, device: str) -> ClientConnection:
    ws = await websockets.connect(stack.lpns)
    await ws.send(
        json.dumps(
            {"type": "hello", "access_token": access_token, "ssid": "Ward4", "device_id": device}
        )
    )
    answer = json.loads(await asyncio.wait_for(ws.recv(), 5))
    assert answer["type"] == "hello-ok", answer
    return ws


async def next_push(ws: ClientConnection) -> dict[str, Any]:
    while True:
        message = json.loads(await asyncio.wait_for(ws.recv(), 10))
        if message["type"] == "push":
            return message


async def test_local_push_wakes_the_device_and_the_call_is_forwarded(stack: CallStack) -> None:
    user = stack.user()
    token = token_for(user)
    await register_apns(stack, user, token)  # a fallback to APNs would be seen
    access = await stack.sign_in_device(user, f"{user}-iphone", push_token=token, pn_prid=token)
    ws = await local_session(stack, access, f"{user}-iphone")
    try:
        await background_device(stack, user, apns_params(token))
        call = await caller(stack, user, "caller_answered.xml")
        push = await next_push(ws)
        assert push["push_type"] == "voip"
        assert json.loads(jwe.decrypt(push["payload"], PUSH_KEY))["type"] == "call"
        await ws.send(json.dumps({"type": "ack", "id": push["id"]}))
        device = await woken_device(stack, user, apns_params(token), "device_answers.xml")
        await call.succeeded()
        await device.succeeded()
    finally:
        await ws.close()
    assert await stack.apns_deliveries(token) == []  # delivered locally: no APNs push


async def test_unacknowledged_local_push_falls_back_to_apns(stack: CallStack) -> None:
    user = stack.user()
    token = token_for(user)
    await register_apns(stack, user, token)
    access = await stack.sign_in_device(user, f"{user}-iphone", push_token=token, pn_prid=token)
    ws = await local_session(stack, access, f"{user}-iphone")
    try:
        await background_device(stack, user, apns_params(token))
        call = await caller(stack, user, "caller_cancels.xml")
        push = await next_push(ws)  # never acknowledged
        local_at = time.time()
        [fallback] = await until(lambda: stack.apns_deliveries(token), within=6)
        # lpns.ack_timeout (2 s by default) bounds the wait before the relay gets it.
        assert 1.5 <= fallback["received_at"] - local_at <= 4.0
        assert apns_fields(fallback)["type"] == "call"
        assert push["push_type"] == "voip"
        await call.succeeded()
    finally:
        await ws.close()


# mobility identity and external presentation


def callpush_cli(stack: CallStack, *args: str) -> None:
    subprocess.run(
        [*UCPUSH, "--config", str(stack.base / "node.toml"), "callpush", "profile", "set", *args],
        check=True,
        capture_output=True,
    )


async def counter(stack: CallStack, name: str) -> float:
    async with httpx.AsyncClient(base_url=stack.api) as api:
        text = (await api.get("/metrics")).text
    for line in text.splitlines():
        if line.startswith(name + "_total "):
            return float(line.split()[1])
    return 0.0


async def test_unanswered_call_extends_to_the_mobility_identity(
    stack: CallStack, pbx_port: int
) -> None:
    user = stack.user()
    token = token_for(user)
    await register_apns(stack, user, token)
    await stack.sign_in_device(user, f"{user}-iphone", push_token=token, pn_prid=token)
    callpush_cli(stack, f"sip:{user}@{DOMAIN}", "--mobility", "+15550199")
    callpush_cli(
        stack,
        f"sip:caller@{DOMAIN}",
        "--presentation-name",
        "Example Corp",
        "--presentation-number",
        "+15550100",
    )
    try:
        before = await counter(stack, "MobilityPushNotificationCallsExtendedToMIDueToTimeout")
        await background_device(stack, user, apns_params(token))
        pbx = await start_sipp(stack.base, "device_answers.xml", "u1", None, port=pbx_port)
        started = time.monotonic()
        call = await caller(stack, user, "caller_extended.xml")
        await call.succeeded()  # 180 at 5 s, then the mobility identity answers
        assert 12.5 <= time.monotonic() - started <= 16.0
        await pbx.succeeded()
        pushes = await until(
            lambda: _when(stack.apns_deliveries(token), lambda d: len(d) == 2), within=5
        )
        first, second = (apns_fields(p) for p in pushes)
        assert (first["caller_name"], first["caller_number"]) == ("Example Corp", "+15550100")
        assert second["type"] == "cancel" and second["reason"] == "extended-to-mobility"
        after = await counter(stack, "MobilityPushNotificationCallsExtendedToMIDueToTimeout")
        assert after == before + 1
    finally:
        callpush_cli(stack, f"sip:caller@{DOMAIN}")  # other tests see the caller's own id
