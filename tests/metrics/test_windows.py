"""RTMT's 60-second window counters (chat side, SPEC §7) on a fake clock: the last complete
window is what the gauge shows, reset every 60 s; the cumulative counter never resets."""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from ucpush.chat.metrics import ChatCounters, WindowedCounter, service_label


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def value(registry: CollectorRegistry, name: str, service: str) -> float | None:
    return registry.get_sample_value(name, {"service": service})


def test_window_resets_every_60_seconds() -> None:
    clock, registry = FakeClock(), CollectorRegistry()
    errors = WindowedCounter("PushErrors", "errors", clock, registry)
    errors.inc("APNS:dev")
    clock.now += 30
    errors.inc("APNS:dev")
    errors.inc("FCM")
    assert value(registry, "PushErrorsLastWindow", "ApnsDev") is None  # no window closed yet
    assert errors.window_count("APNS:dev") == 2

    clock.now += 30  # t = 60: the first window closes
    errors.roll()
    assert value(registry, "PushErrorsLastWindow", "ApnsDev") == 2
    assert value(registry, "PushErrorsLastWindow", "Fcm") == 1
    assert errors.window_count("APNS:dev") == 0

    clock.now += 10
    errors.inc("APNS:dev")
    clock.now += 55  # t = 125: the second window (60..120) closed with one error
    errors.roll()
    assert value(registry, "PushErrorsLastWindow", "ApnsDev") == 1
    assert value(registry, "PushErrorsLastWindow", "Fcm") == 0

    clock.now += 300  # idle windows read 0
    errors.roll()
    assert value(registry, "PushErrorsLastWindow", "ApnsDev") == 0
    # The cumulative counter keeps everything, for rate() in Prometheus.
    assert value(registry, "PushErrors_total", "ApnsDev") == 3
    assert value(registry, "PushErrors_total", "Fcm") == 1


def test_window_boundaries_do_not_drift() -> None:
    """Rolled late (at 61 s), the next window still ends at 120 s."""
    clock, registry = FakeClock(), CollectorRegistry()
    sent = WindowedCounter("PushSentSilent", "silent", clock, registry)
    clock.now += 61
    sent.roll()
    clock.now += 58  # t = 119: still the second window
    sent.inc("APNS")
    sent.roll()
    assert value(registry, "PushSentSilentLastWindow", "Apns") in (None, 0)
    clock.now += 1  # t = 120
    sent.roll()
    assert value(registry, "PushSentSilentLastWindow", "Apns") == 1


def test_every_windowed_counter_and_service_label() -> None:
    clock, registry = FakeClock(), CollectorRegistry()
    counters = ChatCounters(clock, registry)
    services = ["APNS", "APNS:beta", "APNS:dev", "APNS:test", "APNS:load", "FCM", "FCM:dev"]
    for service in services:
        counters.enable_requests.inc(service)
        counters.errors.inc(service)
        counters.sent_silent.inc(service)
        counters.sent_disconnected.inc(service)
    clock.now += 60
    counters.roll()
    labels = ["Apns", "ApnsBeta", "ApnsDev", "ApnsTest", "ApnsLoad", "Fcm", "FcmDev"]
    assert [service_label(s) for s in services] == labels
    for name in ("PushEnableReqRcvd", "PushErrors", "PushSentSilent", "PushSentDisconn"):
        for label in labels:
            assert value(registry, f"{name}LastWindow", label) == 1, (name, label)
