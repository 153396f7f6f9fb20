"""Chat push counters (SPEC §7, chat side) under their RTMT names.

Global: NumberOfPushSuccess, NumberOfPushFailed, InvalidTarget (unknown node or wrong
secret), ExpiredTarget (dead token or signed-out device); Prometheus adds ``_total``.

Per subscriber service (label ``service``: Apns, ApnsBeta, ApnsDev, ApnsLoad, ApnsTest, Fcm,
FcmDev): the gauge PushEnabledSessions, and PushEnableReqRcvd, PushErrors, PushSentSilent,
PushSentDisconn. RTMT shows the last four per 60-second window, reset every 60 s; Prometheus
counters never reset, so each is exported twice: ``<name>_total`` (cumulative, for rates) and
the gauge ``<name>LastWindow`` (the count of the last complete 60 s window, what RTMT shows).
"""

from __future__ import annotations

import time
from collections import Counter as Tally
from collections.abc import Callable

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge

WINDOW_SECONDS = 60.0

PUSH_SUCCESS = Counter("NumberOfPushSuccess", "Chat pushes the provider accepted")
PUSH_FAILED = Counter("NumberOfPushFailed", "Chat pushes that failed (any reason)")
INVALID_TARGET = Counter("InvalidTarget", "Publishes for an unknown node or with a wrong secret")
EXPIRED_TARGET = Counter(
    "ExpiredTarget", "Publishes for a signed-out device or one whose token the provider dropped"
)
PUSH_ENABLED_SESSIONS = Gauge(
    "PushEnabledSessions", "Push-enabled chat sessions the app server knows of", ["service"]
)

_SERVICE_LABELS = {
    "APNS": "Apns",
    "APNS:beta": "ApnsBeta",
    "APNS:dev": "ApnsDev",
    "APNS:load": "ApnsLoad",
    "APNS:test": "ApnsTest",
    "FCM": "Fcm",
    "FCM:dev": "FcmDev",
}


def service_label(service: str) -> str:
    """RTMT's name of a subscriber service (``APNS:dev`` → ``ApnsDev``)."""
    return _SERVICE_LABELS.get(service, service)


class WindowedCounter:
    """A per-service counter with RTMT's 60-second window beside the cumulative one."""

    def __init__(
        self,
        name: str,
        documentation: str,
        clock: Callable[[], float],
        registry: CollectorRegistry = REGISTRY,
    ) -> None:
        self.total = Counter(name, documentation, ["service"], registry=registry)
        self.last_window = Gauge(
            f"{name}LastWindow",
            f"{documentation}, in the last complete 60 s window",
            ["service"],
            registry=registry,
        )
        self._clock = clock
        self._window_start = clock()
        self._current: Tally[str] = Tally()

    def inc(self, service: str) -> None:
        self.roll()
        label = service_label(service)
        self.total.labels(label).inc()
        self._current[label] += 1

    def roll(self) -> None:
        """Close the window if 60 s have passed (called on every ``inc`` and periodically)."""
        now = self._clock()
        elapsed = now - self._window_start
        if elapsed < WINDOW_SECONDS:
            return
        # A window with no traffic at all since the last one reads 0.
        closed = self._current if elapsed < 2 * WINDOW_SECONDS else Tally()
        for label in set(closed) | set(self._seen_labels()):
            self.last_window.labels(label).set(closed.get(label, 0))
        self._current = Tally()
        self._window_start = now - (elapsed % WINDOW_SECONDS)

    def window_count(self, service: str) -> int:
        """The count so far in the open window (for tests and ``ucpush chat status``)."""
        return self._current.get(service_label(service), 0)

    def _seen_labels(self) -> list[str]:
        return [sample.labels["service"] for sample in self.last_window.collect()[0].samples]


class ChatCounters:
    """The windowed per-service counters (one set per registry: metric names are unique)."""

    def __init__(
        self, clock: Callable[[], float] = time.monotonic, registry: CollectorRegistry = REGISTRY
    ) -> None:
        def windowed(name: str, documentation: str) -> WindowedCounter:
            return WindowedCounter(name, documentation, clock, registry)

        self.enable_requests = windowed(
            "PushEnableReqRcvd", "Push enablements seen (first publish of a session)"
        )
        self.errors = windowed("PushErrors", "Chat pushes answered with an error")
        self.sent_silent = windowed(
            "PushSentSilent", "Chat pushes without a message (presence, subscription)"
        )
        self.sent_disconnected = windowed(
            "PushSentDisconn", "Message pushes sent to a suspended (disconnected) session"
        )

    def roll(self) -> None:
        for counter in (
            self.enable_requests,
            self.errors,
            self.sent_silent,
            self.sent_disconnected,
        ):
            counter.roll()


COUNTERS = ChatCounters()
