"""The local push service over real TLS with the ``websockets`` client: sign in, provision,
connect, keepalive, refusals, delivery with and without acknowledgement, sessions ended by the
node, bad frames."""

from __future__ import annotations

import asyncio
import json
import time
from datetime import UTC, datetime

import pytest
from prometheus_client import REGISTRY
from structlog.testing import capture_logs
from websockets.asyncio.client import ClientConnection

from tests.lpns.conftest import ACK_TIMEOUT, KEEPALIVE, Node, closed_with
from tests.signin.helpers import PUSH_KEY
from ucpush.crypto.jwe import decrypt, encrypt
from ucpush.lpns.service import LocalPushOutcome
from ucpush.store.repository import PushState


def counter(name: str) -> float:
    return REGISTRY.get_sample_value(f"{name}_total") or 0.0


async def answer_pushes(ws: ClientConnection, *, nack: bool = False) -> list[dict[str, object]]:
    """Play the app: acknowledge (or refuse) every push until the connection closes."""
    seen = []
    try:
        async for frame in ws:
            message = json.loads(frame)
            if message["type"] == "push":
                seen.append(message)
                reply = (
                    {"type": "nack", "id": message["id"], "reason": "no CallKit"}
                    if nack
                    else {
                        "type": "ack",
                        "id": message["id"],
                    }
                )
                await ws.send(json.dumps(reply))
    except Exception:
        pass
    return seen


async def test_sign_in_config_connect_keepalive_deliver(node: Node) -> None:
    token = await node.ready_device()
    config = await node.http.get("/v1/config", headers={"Authorization": f"Bearer {token}"})
    assert "<LocalPushSSIDList>Ward4;Ward5</LocalPushSSIDList>" in config.text

    ws, hello = await node.hello(token)
    assert hello is not None
    assert hello["type"] == "hello-ok" and hello["keepalive_seconds"] == KEEPALIVE
    assert node.lpns.has_session("iphone-1")
    await ws.send('{"type":"keepalive"}')
    assert json.loads(await ws.recv()) == {"type": "keepalive-ack"}

    before = {n: counter(n) for n in ("NumberOfLocalPushReqSent", "NumberOfLocalPushResReceived")}
    app = asyncio.create_task(answer_pushes(ws))
    payload = encrypt(b'{"caller":"Bob","number":"1001"}', PUSH_KEY, kid="k1")
    result = await node.lpns.deliver("iphone-1", "voip", payload)
    assert result.outcome is LocalPushOutcome.DELIVERED
    assert counter("NumberOfLocalPushReqSent") == before["NumberOfLocalPushReqSent"] + 1
    assert counter("NumberOfLocalPushResReceived") == before["NumberOfLocalPushResReceived"] + 1
    await ws.close()
    (push,) = await app
    assert push["push_type"] == "voip"
    assert decrypt(str(push["payload"]), PUSH_KEY) == b'{"caller":"Bob","number":"1001"}'


async def test_keepalives_keep_the_session_open(node: Node) -> None:
    ws = await node.session()
    for _ in range(4):
        await asyncio.sleep(KEEPALIVE / 2)
        await ws.send('{"type":"keepalive"}')
        assert json.loads(await ws.recv())["type"] == "keepalive-ack"
    assert node.lpns.has_session("iphone-1")
    await ws.close()


async def test_missing_keepalive_closes_with_401(node: Node) -> None:
    ws = await node.session()
    started = time.monotonic()
    assert await closed_with(ws) == (4401, "401 no keepalive within 1 s")
    assert KEEPALIVE * 0.9 <= time.monotonic() - started < KEEPALIVE + 2
    assert not node.lpns.has_session("iphone-1")


async def test_unprovisioned_ssid_refused_with_403(node: Node) -> None:
    token = await node.ready_device()
    ws, answer = await node.hello(token, ssid="CoffeeShop")
    assert answer is None
    assert await closed_with(ws) == (4403, "403 SSID not provisioned for local push")


async def test_expired_token_refused_with_401_and_alarm(node: Node) -> None:
    token = await node.ready_device()
    node.clock.advance(3600)
    with capture_logs() as logs:
        ws, answer = await node.hello(token)
        assert answer is None
        assert await closed_with(ws) == (4401, "401 access token expired")
    alarms = [e for e in logs if e["event"] == "alarm"]
    assert alarms and alarms[0]["alarm"] == "LocalPushNotificationInvalidOAuthToken"
    assert alarms[0]["severity"] == "ALERT" and alarms[0]["device_id"] == "iphone-1"


async def test_token_expiring_during_session_closes_with_401(node: Node) -> None:
    ws = await node.session()
    node.clock.advance(3600)
    await ws.send('{"type":"keepalive"}')
    assert await closed_with(ws) == (4401, "401 access token expired")


async def test_invalid_token_refused(node: Node) -> None:
    await node.ready_device()
    ws, answer = await node.hello("x.y.z")
    assert answer is None
    code, reason = await closed_with(ws)
    assert code == 4401 and reason and reason.startswith("401 invalid access token")


async def test_android_and_foreign_devices_refused(node: Node) -> None:
    token = await node.ready_device(device_id="pixel-1", platform="android")
    ws, _ = await node.hello(token, device_id="pixel-1")
    assert await closed_with(ws) == (4403, "403 local push is for iOS devices only")
    ws, _ = await node.hello(token, device_id="iphone-9")
    assert await closed_with(ws) == (4403, "403 token was issued to another device")


async def test_deliver_without_ack_times_out(node: Node) -> None:
    ws = await node.session()
    before = counter("NumberOfLocalPushTimout")
    started = time.monotonic()
    result = await node.lpns.deliver("iphone-1", "voip", encrypt(b"{}", PUSH_KEY))
    assert result.outcome is LocalPushOutcome.TIMEOUT
    assert ACK_TIMEOUT * 0.9 <= time.monotonic() - started < ACK_TIMEOUT + 0.5
    assert counter("NumberOfLocalPushTimout") == before + 1
    assert json.loads(await ws.recv())["type"] == "push"  # it did arrive, unacknowledged
    await ws.close()


async def test_nack_and_push_type_counters(node: Node) -> None:
    ws = await node.session()
    app = asyncio.create_task(answer_pushes(ws, nack=True))
    names = (
        "NumberOfLocalPushErrorResReceived",
        "NumberofMissedCallLocalPushReqSent",
        "NumberofSharedCancelLocalPushReqSent",
    )
    before = {n: counter(n) for n in names}
    result = await node.lpns.deliver("iphone-1", "missed-call", encrypt(b"{}", PUSH_KEY))
    assert (result.outcome, result.detail) == (LocalPushOutcome.ERROR, "no CallKit")
    result = await node.lpns.deliver("iphone-1", "cancel", encrypt(b"{}", PUSH_KEY))
    assert result.outcome is LocalPushOutcome.ERROR
    assert {n: counter(n) - before[n] for n in names} == dict.fromkeys(names, 1.0) | {
        "NumberOfLocalPushErrorResReceived": 2.0
    }
    await ws.close()
    await app


async def test_no_session(node: Node) -> None:
    result = await node.lpns.deliver("nobody", "voip", encrypt(b"{}", PUSH_KEY))
    assert result.outcome is LocalPushOutcome.NO_SESSION


async def test_sign_out_closes_the_session(node: Node) -> None:
    ws = await node.session()
    access = node.tokens["iphone-1"]
    answer = await node.http.post("/v1/signout", headers={"Authorization": f"Bearer {access}"})
    assert answer.status_code == 204
    assert await closed_with(ws) == (4410, "410 signed out")
    result = await node.lpns.deliver("iphone-1", "voip", encrypt(b"{}", PUSH_KEY))
    assert result.outcome is LocalPushOutcome.NO_SESSION
    # The signed-out device cannot come back with its old token.
    ws, _ = await node.hello(access)
    assert (await closed_with(ws))[0] == 4401


async def test_device_deletion_closes_the_session(node: Node) -> None:
    ws = await node.session()
    answer = await node.http.delete(
        "/v1/devices/iphone-1", headers={"Authorization": f"Bearer {node.tokens['iphone-1']}"}
    )
    assert answer.status_code == 204
    assert await closed_with(ws) == (4410, "410 device deleted")


async def test_another_user_cannot_end_my_session(node: Node) -> None:
    ws = await node.session()
    bob = {"Authorization": f"Bearer {await node.ready_device('bob', 'iphone-2')}"}
    answer = await node.http.post("/v1/signout", headers=bob, json={"device_id": "iphone-1"})
    assert answer.status_code == 204
    assert (await node.http.delete("/v1/devices/iphone-1", headers=bob)).status_code == 404
    await ws.send('{"type":"keepalive"}')
    assert json.loads(await ws.recv())["type"] == "keepalive-ack"
    assert node.lpns.has_session("iphone-1")
    await ws.close()


async def test_user_deletion_closes_the_session(node: Node) -> None:
    ws = await node.session()
    await node.signin.delete_user("alice")
    assert await closed_with(ws) == (4410, "410 user deleted")


async def test_changes_made_elsewhere_end_sessions_at_the_recheck(node: Node) -> None:
    """Another node or the admin CLI changed the database: the periodic recheck notices."""
    alice = await node.session()
    bob = await node.session("bob", "iphone-2")
    carol = await node.session("carol", "iphone-3")
    await node.signin.repo.delete_user((await node.signin.repo.get_user_by_name("bob")).id)
    await node.signin.repo.set_push_state("iphone-3", PushState.SIGNED_OUT, datetime.now(UTC))
    await node.signin.set_ucservice_params("lpns-wards", {"LocalPushSSIDList": "Ward5"})
    started = time.monotonic()
    assert await closed_with(bob) == (4410, "410 user deleted")
    assert await closed_with(carol) == (4410, "410 signed out")
    assert await closed_with(alice) == (4403, "403 SSID not provisioned for local push")
    assert time.monotonic() - started < 2
    assert node.lpns.session_count == 0
    assert await node.lpns.recheck() == 0


async def test_local_push_needs_refresh_login(node: Node) -> None:
    ws = await node.session()
    await node.signin.set_enterprise(oauth_refresh_login=False)
    reason = "403 local push needs OAuth with refresh login flow enabled"
    assert await closed_with(ws) == (4403, reason)  # at the next recheck
    ws, answer = await node.hello(node.tokens["iphone-1"])
    assert answer is None
    assert await closed_with(ws) == (4403, reason)


async def test_moving_to_an_unprovisioned_ssid_closes_the_session(node: Node) -> None:
    ws = await node.session()
    await ws.send('{"type":"ssid","ssid":"Ward5"}')
    await ws.send('{"type":"keepalive"}')
    assert json.loads(await ws.recv())["type"] == "keepalive-ack"
    await ws.send('{"type":"ssid","ssid":"Lobby"}')
    assert await closed_with(ws) == (4403, "403 SSID not provisioned for local push")


async def test_reconnect_replaces_the_old_session(node: Node) -> None:
    token = await node.ready_device()
    first, _ = await node.hello(token)
    second, answer = await node.hello(token)
    assert answer is not None and answer["type"] == "hello-ok"
    assert await closed_with(first) == (4409, "409 replaced by a newer session")
    app = asyncio.create_task(answer_pushes(second))
    result = await node.lpns.deliver("iphone-1", "voip", encrypt(b"{}", PUSH_KEY))
    assert result.outcome is LocalPushOutcome.DELIVERED
    await second.close()
    await app


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        ("{not json", 4400),
        ('{"type":"keepalive"}', 4400),  # before the hello
        ('{"type":"hello","access_token":"t","ssid":"Ward4","device_id":"bad id"}', 4400),
        (b"\x00\x01binary", 1003),
        ("x" * 5000, 1009),
    ],
    ids=["garbage", "keepalive-first", "bad-device-id", "binary", "oversized"],
)
async def test_bad_frames_close_and_the_node_keeps_serving(
    node: Node, frame: str | bytes, code: int
) -> None:
    token = await node.ready_device()
    ws = await node.open()
    await ws.send(frame)
    assert (await closed_with(ws))[0] == code
    ws, answer = await node.hello(token)
    assert answer is not None and answer["type"] == "hello-ok"
    await ws.close()


async def test_silent_connection_closed_after_hello_timeout(node: Node) -> None:
    ws = await node.open()
    assert await closed_with(ws) == (4401, "401 no hello in time")


async def test_connect_flood_is_bounded(node: Node) -> None:
    token = await node.ready_device()
    flood = await asyncio.gather(*(node.open() for _ in range(100)))
    extra = await node.open()
    assert (await closed_with(extra))[0] == 1013
    for ws in flood:
        await ws.send(b"junk")
    await asyncio.gather(*(closed_with(ws) for ws in flood))
    ws, answer = await node.hello(token)
    assert answer is not None and answer["type"] == "hello-ok"
    await ws.close()


async def test_stop_closes_sessions_with_1001(node: Node) -> None:
    ws = await node.session()
    await node.lpns.stop()
    assert await closed_with(ws) == (1001, "node shutting down")
