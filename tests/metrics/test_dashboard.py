"""The Grafana dashboard under deploy/grafana only queries metrics the code exports."""

from __future__ import annotations

import json
import re
from pathlib import Path

from prometheus_client import REGISTRY

# Every module that registers metrics the dashboard shows, as a running node and relay do.
import ucpush.alarms.center
import ucpush.alarms.uploader
import ucpush.callpush.dispatcher
import ucpush.chat.metrics
import ucpush.lpns.metrics
import ucpush.metrics
import ucpush.relay.service  # noqa: F401

DASHBOARD = Path(__file__).parents[2] / "deploy" / "grafana" / "ucpush.json"
PROMQL_WORDS = {"sum", "by", "rate", "increase", "histogram_quantile"}
LABELS = {"le", "path", "name", "severity", "service", "outcome", "result"}
SUFFIXES = ("_total", "_bucket", "_count", "_sum")


def exported() -> set[str]:
    return {family.name for family in REGISTRY.collect()}


def test_dashboard_queries_exported_metrics() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] and dashboard["panels"]
    names = exported()
    queried: set[str] = set()
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            expr = re.sub(r"\[[0-9]+[smh]\]", "", target["expr"])
            for word in re.findall(r"[A-Za-z_][A-Za-z0-9_]*", expr):
                if word in PROMQL_WORDS or word in LABELS:
                    continue
                base = next((word[: -len(s)] for s in SUFFIXES if word.endswith(s)), word)
                assert base in names, f"{panel['title']}: {word} is not exported"
                queried.add(base)
    # Every SPEC §7 call-side and local push counter has a panel.
    for name in (
        "NumberOfPushReqSent",
        "NumberOfPushErrorResReceived",
        "MobilityPushNotificationCallsExtendedToJabber",
        "NumberOfLocalPushTimout",
        "PushSentDisconnLastWindow",
        "ucpush_push_latency_seconds",
        "ucpush_alarms_active",
    ):
        assert name in queried
