"""The call node (``ucpush serve``): the SIP service, the client sign-in API and the local push
service, sharing one store in one event loop."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import AsyncIterator
from dataclasses import dataclass

from ucpush import aio
from ucpush.config import Settings
from ucpush.logging import configure_logging, get_logger
from ucpush.lpns.service import LpnsService
from ucpush.signin.api import create_app
from ucpush.signin.service import SigninService
from ucpush.sip.server import SipNode, client_ssl_context, load_digest_secret
from ucpush.store import Store, open_store

log = get_logger("ucpush.node")


@dataclass(slots=True)
class RunningNode:
    sip: SipNode
    signin: SigninService
    lpns: LpnsService
    api_url: str


@contextlib.asynccontextmanager
async def run_node(settings: Settings, store: Store) -> AsyncIterator[RunningNode]:
    """Start every service of the node; yields once all of them accept connections."""
    signin = SigninService.from_settings(settings, store.signin)
    lpns = LpnsService.from_settings(settings.lpns, authorizer=signin)
    signin.sessions = lpns  # sign-out and deletions close live local push sessions
    sip = SipNode(
        settings.sip,
        store.sip,
        digest_secret=load_digest_secret(settings.data_dir),
        client_ssl=client_ssl_context(settings.sip),
    )
    api = settings.signin
    await sip.start()
    try:
        async with (
            lpns,
            aio.serve_http(
                create_app(signin, max_body_bytes=api.max_body_bytes),
                host=api.host,
                port=api.port,
                tls_cert=api.tls_cert,
                tls_key=api.tls_key,
            ) as http,
        ):
            scheme = "https" if api.tls_cert else "http"
            url = f"{scheme}://{api.host}:{aio.bound_port(http)}"
            log.info("node_started", api=url, sip_mode=settings.sip.mode)
            yield RunningNode(sip, signin, lpns, url)
    finally:
        await sip.close()


async def serve(settings: Settings) -> None:
    """Run the node until SIGINT/SIGTERM."""
    # Handlers first: the SIP listeners answer before the other services are up, and a
    # SIGTERM in that window must still stop the node cleanly.
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with await open_store(settings.store_url) as store, run_node(settings, store):
        await stop.wait()


def run_serve(settings: Settings) -> None:
    configure_logging(settings.log)
    with contextlib.suppress(KeyboardInterrupt):
        aio.run(serve(settings))
