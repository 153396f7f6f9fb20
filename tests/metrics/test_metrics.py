"""``/metrics`` over HTTP: every SPEC §7 counter under its RTMT name, and the call-side
counters, latency histogram and active-alarm gauge moving during pushes through the real relay
and APNs simulator."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

# The modules that count register their counters on import, as in a running node.
import ucpush.callpush.dispatcher
import ucpush.chat.metrics
import ucpush.lpns.metrics  # noqa: F401
from tests.alarms.conftest import center, node_store, node_store_url
from tests.callpush.conftest import invite
from tests.callpush.test_dispatcher import CALL, TOKEN, device_binding, dispatcher, targets
from tests.lpns.conftest import Node, lpns_settings, node
from tests.relay.conftest import BUNDLE, Stack, relay_store_url, stack
from ucpush import aio
from ucpush.alarms.center import AlarmCenter
from ucpush.metrics import metrics_app, observe_push_latency

__all__ = [
    "center",
    "lpns_settings",
    "node",
    "node_store",
    "node_store_url",
    "relay_store_url",
    "stack",
]

SPEC_COUNTERS = [
    # call side
    "NumberOfPushReqSent",
    "NumberOfPushResReceived",
    "NumberOfPushErrorResReceived",
    "CustomRegionNumofMsgPushReqSent",
    "CustomRegionNumofMissedCallMsgPushReqSent",
    "CustomRegionNumofSharedCancelMsgPushReqSent",
    "MobilityPushNotificationCallsExtendedToMIDueToTimeout",
    "MobilityPushNotificationCallsExtendedToJabber",
    # chat side
    "NumberOfPushSuccess",
    "NumberOfPushFailed",
    "InvalidTarget",
    "ExpiredTarget",
    "PushEnableReqRcvd",
    "PushErrors",
    "PushSentSilent",
    "PushSentDisconn",
    # local push
    "NumberOfLocalPushReqSent",
    "NumberOfLocalPushResReceived",
    "NumberOfLocalPushTimout",
    "NumberOfLocalPushErrorResReceived",
    "NumberofMissedCallLocalPushReqSent",
    "NumberofSharedCancelLocalPushReqSent",
]
SPEC_GAUGES = [
    "PushEnabledSessions",
    "PushEnableReqRcvdLastWindow",
    "PushErrorsLastWindow",
    "PushSentSilentLastWindow",
    "PushSentDisconnLastWindow",
]


@pytest.fixture
async def scrape() -> AsyncIterator[httpx.AsyncClient]:
    async with aio.serve_http(metrics_app(), host="127.0.0.1", port=0) as server:
        url = f"http://127.0.0.1:{aio.bound_port(server)}"
        async with httpx.AsyncClient(base_url=url) as http:
            yield http


async def families(http: httpx.AsyncClient) -> dict[str, dict[tuple[str, tuple], float]]:
    """Metric family name → {(sample name, labels): value}."""
    response = await http.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=")
    out: dict[str, dict[tuple[str, tuple], float]] = {}
    for family in text_string_to_metric_families(response.text):
        out[family.name] = {
            (s.name, tuple(sorted(s.labels.items()))): s.value for s in family.samples
        }
    return out


def total(metrics: dict[str, dict[tuple[str, tuple], float]], family: str, **labels: str) -> float:
    """The value of ``family``'s sample with exactly ``labels`` (0 when absent)."""
    wanted = tuple(sorted(labels.items()))
    return sum(
        value
        for (sample, sample_labels), value in metrics.get(family, {}).items()
        if sample_labels == wanted and sample in (family, f"{family}_total")
    )


async def test_every_spec_counter_is_exposed(scrape: httpx.AsyncClient) -> None:
    metrics = await families(scrape)
    missing = [n for n in SPEC_COUNTERS + SPEC_GAUGES if n not in metrics]
    assert missing == []
    assert "ucpush_push_latency_seconds" in metrics and "ucpush_alarms_active" in metrics


async def test_counters_move_during_pushes(
    scrape: httpx.AsyncClient, stack: Stack, node: Node, center: AlarmCenter
) -> None:
    await node.ready_device()
    stack.apns.register_device(TOKEN, BUNDLE)
    [(_, target)] = await targets(node, device_binding())
    before = await families(scrape)
    async with await stack.enrolled_client() as client:
        assert await dispatcher(client, node).send(invite(), CALL, target)
        delivered = await families(scrape)
        stack.apns.unregister_device(TOKEN)
        assert not await dispatcher(client, node).send(invite(), CALL, target)
    await center.flush()
    after = await families(scrape)

    def grew(a: dict, b: dict, family: str) -> float:
        return total(b, family) - total(a, family)

    assert grew(before, delivered, "NumberOfPushReqSent") == 1
    assert grew(before, delivered, "NumberOfPushResReceived") == 1
    assert grew(before, delivered, "NumberOfPushErrorResReceived") == 0
    assert grew(delivered, after, "NumberOfPushReqSent") == 1
    assert grew(delivered, after, "NumberOfPushErrorResReceived") == 1
    alarm = {"name": "PushNotificationInvalidDeviceTokenResponse", "severity": "ERROR"}
    assert total(after, "ucpush_alarms_active", **alarm) == 1


async def test_latency_histogram_buckets(scrape: httpx.AsyncClient) -> None:
    before = await families(scrape)
    observe_push_latency("relay", "APNS:test", 0.3)
    observe_push_latency("relay", "APNS:test", 4.0)
    after = await families(scrape)
    samples = after["ucpush_push_latency_seconds"]
    labels = (("path", "relay"), ("service", "APNS:test"))

    def bucket(le: str, metrics: dict) -> float:
        key = ("ucpush_push_latency_seconds_bucket", tuple(sorted((*labels, ("le", le)))))
        return metrics.get("ucpush_push_latency_seconds", {}).get(key, 0.0)

    assert bucket("0.5", after) - bucket("0.5", before) == 1
    assert bucket("5.0", after) - bucket("5.0", before) == 2
    assert samples[("ucpush_push_latency_seconds_count", labels)] >= 2
