"""Three node processes + relay + simulators sharing PostgreSQL and Redis (issue 9): a binding
registered on one node serves calls on another at once; after kill -9 of the primary, calls to
its background devices still push, naming the new active node, and ring once the device
re-registers there; a local push session held on a third node is reached from a call anywhere."""

from __future__ import annotations

import asyncio
import json
import secrets
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis
import redis.asyncio as aioredis

from tests.callpush.test_call_e2e import (
    apns_fields,
    apns_params,
    next_push,
    register_apns,
    token_for,
    until,
)
from tests.cluster.conftest import REDIS_URL
from tests.sip.sipp_harness import SIPP, start_sipp
from tests.support.callstack import UCPUSH, CallStack, ClusterNode, cluster_stack
from tests.support.pg import pg_database

pytestmark = [
    pytest.mark.skipif(SIPP is None, reason="sipp (Debian sip-tester) is not installed"),
    pytest.mark.postgres,
    pytest.mark.timeout(150),
]


@pytest.fixture(scope="module")
def cluster(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[CallStack, list[ClusterNode]]]:
    prefix = f"ucpush-test-{secrets.token_hex(4)}"
    with (
        pg_database() as url,
        cluster_stack(tmp_path_factory.mktemp("cluster"), store_url=url, key_prefix=prefix) as (
            stack,
            nodes,
        ),
    ):
        cli(nodes[0], "group", "add", "g", "a", "b", "c")
        wait_active(nodes[1], "a")
        yield stack, nodes
    client = redis.Redis.from_url(REDIS_URL)
    for key in client.scan_iter(f"{prefix}:*"):
        client.delete(key)
    client.close()


def cli(node: ClusterNode, *args: str) -> str:
    return subprocess.run(
        [*UCPUSH, "--config", str(node.config), "cluster", *args],
        check=True,
        capture_output=True,
        text=True,
    ).stdout


def wait_active(node: ClusterNode, name: str, within: float = 15.0) -> float:
    """Seconds until ``ucpush cluster status`` names ``name`` as the group's active node."""
    started = time.monotonic()
    while time.monotonic() - started < within:
        if json.loads(cli(node, "status", "--json"))["groups"]["g"]["active"] == name:
            return time.monotonic() - started
        time.sleep(0.1)
    raise AssertionError(f"{name} never became active")


async def background_device(stack: CallStack, node: ClusterNode, user: str, token: str) -> None:
    """Registers over TCP to ``node`` with its push parameters, then goes to the background."""
    sipp = await start_sipp(
        stack.base,
        "register.xml",
        "t1",
        node.sip_tcp,
        user=user,
        keys={"contact_params": apns_params(token)},
    )
    await sipp.succeeded()
    await asyncio.sleep(0.2)


async def woken_device(stack: CallStack, node: ClusterNode, user: str, token: str) -> Any:
    return await start_sipp(
        stack.base,
        "register.xml",
        "t1",
        node.sip_tcp,
        oocsf="device_answers.xml",
        duration_ms=4000,
        user=user,
        keys={"contact_params": apns_params(token)},
    )


async def caller(stack: CallStack, node: ClusterNode, user: str, scenario: str) -> Any:
    return await start_sipp(stack.base, scenario, "u1", node.sip_udp, user=user)


async def local_session(node: ClusterNode, access_token: str, device: str) -> Any:
    import websockets

    ws = await websockets.connect(node.lpns)
    hello = {"type": "hello", "access_token": access_token, "ssid": "Ward4", "device_id": device}
    await ws.send(json.dumps(hello))
    answer = json.loads(await asyncio.wait_for(ws.recv(), 5))
    assert answer["type"] == "hello-ok", answer
    return ws


async def test_registered_on_a_called_on_b(cluster: tuple[CallStack, list[ClusterNode]]) -> None:
    stack, (a, b, _) = cluster
    user = stack.user()
    token = token_for(user)
    await register_apns(stack, user, token)
    await stack.sign_in_device(user, f"{user}-iphone", push_token=token, pn_prid=token)
    await background_device(stack, a, user, token)
    # No wait for the store: B holds the binding from A's message.
    call = await caller(stack, b, user, "caller_cancels.xml")
    [push, *_] = await until(lambda: stack.apns_deliveries(token))
    assert apns_fields(push)["type"] == "call"
    assert apns_fields(push)["active_node"] == a.sip_uri  # a is alive and primary
    await call.succeeded()


async def test_kill_9_primary_then_calls_push_from_b_and_reach_lpns_on_c(
    cluster: tuple[CallStack, list[ClusterNode]],
) -> None:
    stack, (a, b, c) = cluster
    # An APNs device and a local-push device, both registered on a, then in the background.
    apns_user, local_user = stack.user(), stack.user()
    apns_token, local_token = token_for(apns_user), token_for(local_user)
    for user, token in ((apns_user, apns_token), (local_user, local_token)):
        await register_apns(stack, user, token)
    await stack.sign_in_device(apns_user, f"{apns_user}-iphone", push_token=apns_token)
    access = await stack.sign_in_device(
        local_user, f"{local_user}-iphone", push_token=local_token, pn_prid=local_token
    )
    ws = await local_session(c, access, f"{local_user}-iphone")
    try:
        await background_device(stack, a, apns_user, apns_token)
        await background_device(stack, a, local_user, local_token)

        a.proc.kill()  # kill -9: no goodbye, its heartbeat key is left to expire
        a.proc.wait()
        killed = time.monotonic()
        client = aioredis.from_url(REDIS_URL)

        async def a_is_out() -> bool:
            return not await client.exists(f"{a.key_prefix}:node:a")

        try:
            await until(a_is_out, within=5)
        finally:
            await client.aclose()
        assert time.monotonic() - killed < 1.0 + 0.3  # failure_timeout (+ polling)
        await asyncio.sleep(0.5)  # two heartbeats: b has seen it

        # Calls handled by b still push a's background device, naming b.
        call = await caller(stack, b, apns_user, "caller_answered.xml")
        [push] = await until(lambda: stack.apns_deliveries(apns_token))
        assert apns_fields(push)["type"] == "call"
        assert apns_fields(push)["active_node"] == b.sip_uri
        device = await woken_device(stack, b, apns_user, apns_token)
        await call.succeeded()
        await device.succeeded()

        # The session on c gets the push of a call handled on b.
        call = await caller(stack, b, local_user, "caller_answered.xml")
        local = await next_push(ws)
        assert local["push_type"] == "voip"
        await ws.send(json.dumps({"type": "ack", "id": local["id"]}))
        device = await woken_device(stack, b, local_user, local_token)
        await call.succeeded()
        await device.succeeded()
    finally:
        await ws.close()
    assert await stack.apns_deliveries(local_token) == []  # delivered over c's session
