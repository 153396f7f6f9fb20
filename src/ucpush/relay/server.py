"""Assemble and run the relay: store, identity, providers, HTTP server."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass

import uvicorn

from ucpush.aio import serve_http
from ucpush.config import Settings
from ucpush.relay.api import PushEndpoint, create_app
from ucpush.relay.identity import Identity
from ucpush.relay.providers.apns import ApnsProvider
from ucpush.relay.providers.base import Provider
from ucpush.relay.providers.fcm import FcmProvider
from ucpush.relay.service import RelayService
from ucpush.store import Store, open_store


@dataclass(slots=True)
class RunningRelay:
    service: RelayService
    url: str
    app: PushEndpoint
    server: uvicorn.Server


def public_url(settings: Settings, port: int) -> str:
    relay = settings.relay
    if relay.public_url:
        return relay.public_url.rstrip("/")
    scheme = "https" if relay.tls_cert else "http"
    return f"{scheme}://{relay.host}:{port}"


async def build_service(settings: Settings, store: Store, url: str) -> RelayService:
    identity = Identity(store.relay, issuer=url, access_ttl=settings.relay.access_token_ttl)
    await identity.load()
    providers: dict[str, Provider] = {
        "apns": ApnsProvider(settings.relay),
        "fcm": FcmProvider(settings.relay),
    }
    return RelayService(settings.relay, store.relay, identity, providers)


@contextlib.asynccontextmanager
async def run_relay(
    settings: Settings, store: Store | None = None, *, reuse_port: bool = False
) -> AsyncIterator[RunningRelay]:
    """Start the relay in this event loop; yields once it accepts connections.

    With ``relay.port = 0`` the kernel picks the port and ``public_url`` must be unset.
    ``reuse_port``: one of several worker processes sharing ``relay.port``.
    """
    own_store = store is None
    store = store or await open_store(settings.store_url)
    relay = settings.relay
    try:
        # The issuer must be known before the socket is bound: fix the port first.
        if relay.port == 0 and not relay.public_url:
            with socket.socket() as probe:
                probe.bind((relay.host, 0))
                port = probe.getsockname()[1]
        else:
            port = relay.port
        url = public_url(settings, port)
        service = await build_service(settings, store, url)
        app = create_app(service, url)
        async with serve_http(
            app,
            host=relay.host,
            port=port,
            tls_cert=relay.tls_cert,
            tls_key=relay.tls_key,
            reuse_port=reuse_port,
        ) as server:
            try:
                yield RunningRelay(service, url, app, server)
            finally:
                for provider in service.providers.values():
                    await provider.aclose()
    finally:
        if own_store:
            await store.close()
