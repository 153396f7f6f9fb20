"""The local push mesh in process: a real LPNS (TLS WebSocket, sign-in API) on one cluster
node, pushes asked for by another node over Redis, the device acking or not."""

from __future__ import annotations

import asyncio
import json
import time

from tests.cluster.test_service import Groups, settings, until
from tests.lpns.conftest import ACK_TIMEOUT, Node, lpns_settings, node  # noqa: F401 (fixtures)
from ucpush.cluster.service import ClusterService
from ucpush.lpns.service import LocalPushOutcome


async def test_push_from_another_node_reaches_the_session(node: Node, key_prefix: str) -> None:  # noqa: F811
    ws = await node.session()  # open before its node joins the cluster: announced on joining
    holder = ClusterService(
        settings("x", key_prefix),
        sip_uri="sip:x.example",
        groups=Groups(),
        on_active_node=lambda _: None,
        lpns=node.lpns,
    )
    node.lpns.on_session = holder.on_lpns_session
    for device_id in node.lpns.session_devices():
        holder.on_lpns_session(device_id, True)
    asker = ClusterService(
        settings("y", key_prefix), sip_uri="sip:y.example", groups=Groups(), on_active_node=print
    )
    async with holder, asker:
        await until(lambda: asker.session_node("iphone-1") == "x")

        async def device_acks() -> dict[str, object]:
            while True:
                message = json.loads(await ws.recv())
                if message["type"] == "push":
                    await ws.send(json.dumps({"type": "ack", "id": message["id"]}))
                    return message

        acking = asyncio.create_task(device_acks())
        result = await asker.deliver_remote("x", "iphone-1", "voip", "sealed-payload")
        assert result.outcome is LocalPushOutcome.DELIVERED
        assert (await acking)["payload"] == "sealed-payload"

        # Unacknowledged: a timeout within the LPNS ack timeout (+ the answer's margin).
        started = time.monotonic()
        result = await asker.deliver_remote("x", "iphone-1", "voip", "again")
        assert result.outcome is LocalPushOutcome.TIMEOUT
        assert time.monotonic() - started < ACK_TIMEOUT + 0.5

        # A device unknown to the holder.
        result = await asker.deliver_remote("x", "ipad-9", "voip", "p")
        assert result.outcome is LocalPushOutcome.NO_SESSION

        await ws.close()  # the session ends: every node forgets it
        await until(lambda: asker.session_node("iphone-1") is None)
        await until(lambda: holder.session_node("iphone-1") is None)
    node.lpns.on_session = None
