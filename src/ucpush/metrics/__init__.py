"""Prometheus exposition of the node's counters (SPEC §7) and the push latency histogram.

The counters live beside the code that counts (``ucpush.callpush.dispatcher``,
``ucpush.lpns.metrics``, ``ucpush.chat.metrics``, ``ucpush.alarms``) in the default registry,
under their RTMT names; this module serves that registry as ``GET /metrics``:

- ``metrics_router()`` for an existing FastAPI app (``app.include_router(metrics_router())``);
- ``metrics_app()``, a small ASGI app of its own, for a separate listener.
"""

from __future__ import annotations

from fastapi import APIRouter, FastAPI, Response
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, Histogram
from prometheus_client import generate_latest as _generate_latest

from ucpush import __version__

# A call push answered within 5 s is on time (SPEC §2 ring-back); the buckets resolve that
# range finely and keep a tail for the 13 s drop timer.
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 13)

PUSH_LATENCY = Histogram(
    "ucpush_push_latency_seconds",
    "Time from sending a push to its confirmation, by path (relay, local) and subscriber "
    "service; failed pushes are observed too",
    ["path", "service"],
    buckets=_LATENCY_BUCKETS,
)


def observe_push_latency(path: str, service: str, seconds: float) -> None:
    """Record one push: ``path`` is ``relay`` or ``local``, ``service`` e.g. ``APNS:dev``."""
    PUSH_LATENCY.labels(path, service).observe(seconds)


def exposition(registry: CollectorRegistry = REGISTRY) -> bytes:
    """The registry in Prometheus text format."""
    return _generate_latest(registry)


def metrics_router(registry: CollectorRegistry = REGISTRY) -> APIRouter:
    router = APIRouter(tags=["operations"])

    @router.get(
        "/metrics",
        response_class=Response,
        responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}},
    )
    async def metrics() -> Response:
        """Counters and histograms in Prometheus text format (SPEC §7 names)."""
        return Response(exposition(registry), media_type=CONTENT_TYPE_LATEST)

    return router


def metrics_app(registry: CollectorRegistry = REGISTRY) -> FastAPI:
    """An ASGI app serving only ``GET /metrics``."""
    app = FastAPI(title="ucpush metrics", version=__version__, docs_url=None, redoc_url=None)
    app.include_router(metrics_router(registry))
    return app
