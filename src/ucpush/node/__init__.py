"""The call node (``ucpush serve``): the SIP service with call push, the client sign-in API and
the local push service, sharing one store and the node's relay connection in one event loop."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from ucpush import aio
from ucpush.admin.app import RunningAdmin, run_admin
from ucpush.alarms import clear_alarm, raise_alarm
from ucpush.alarms.center import AlarmCenter
from ucpush.callpush.dispatcher import CallPushHandler, PushDispatcher, SigninDirectory
from ucpush.callpush.engine import CallPushConfig
from ucpush.callpush.payload import PayloadBuilder, PayloadPolicy
from ucpush.chat.app import RunningChatPush, run_chat_push
from ucpush.chat.registration import node_key, registration_for
from ucpush.cloud.connection import CloudConnection
from ucpush.cluster.node import join_cluster
from ucpush.cluster.pacing import SignInPacing
from ucpush.config import Settings
from ucpush.kamailio import edge_router
from ucpush.logging import configure_logging, get_logger
from ucpush.lpns.service import LpnsService
from ucpush.metrics import metrics_router
from ucpush.signin.api import ChatPushOut, create_app
from ucpush.signin.service import SigninService
from ucpush.sip.server import SipNode, client_ssl_context, load_digest_secret
from ucpush.store import Store, open_store

log = get_logger("ucpush.node")


@dataclass(slots=True)
class RunningNode:
    sip: SipNode
    signin: SigninService
    lpns: LpnsService
    cloud: CloudConnection
    calls: CallPushHandler
    api_url: str
    admin: RunningAdmin | None = None  # the admin page and API ([admin]), on its own port
    chat: RunningChatPush | None = None  # the XEP-0357 app server ([chat] enabled)


def active_node_uri(settings: Settings) -> str:
    """The SIP URI payloads name as the node to register to (``callpush.active_node``)."""
    if settings.callpush.active_node:
        return settings.callpush.active_node
    sip = settings.sip
    host = sip.advertise or sip.host
    host = f"[{host}]" if ":" in host else host
    if "tls" in sip.transports and sip.tls_cert:
        return f"sips:{host}:{sip.tls_port}"
    return f"sip:{host}:{sip.tcp_port};transport=tcp"


def chat_registrations(settings: Settings) -> Callable[[str], ChatPushOut] | None:
    """Device id → what its app enables chat push with, when this node runs chat push."""
    if not settings.chat.enabled:
        return None
    key, jid = node_key(settings), settings.chat.component_jid

    def registration(device_id: str) -> ChatPushOut:
        found = registration_for(key, jid, device_id)
        return ChatPushOut(jid=found.jid, node=found.node, secret=found.secret)

    return registration


def call_push_handler(
    settings: Settings, store: Store, cloud: CloudConnection, lpns: LpnsService
) -> CallPushHandler:
    c = settings.callpush
    payloads = PayloadBuilder(
        active_node_uri(settings), PayloadPolicy(pii_free_without_key=c.pii_free_without_key)
    )
    if not c.pii_free_without_key:
        log.info("callpush.policy", keyless_devices="no push")
    dispatcher = PushDispatcher(cloud.current_client, payloads, store.signin, lpns=lpns)
    config = CallPushConfig(
        ringback_after=c.ringback_after,
        drop_after=c.drop_after,
        push_reachable=c.push_reachable,
        reachable_push_delay=c.reachable_push_delay,
        linger=c.linger,
    )
    return CallPushHandler(
        dispatcher,
        SigninDirectory(store.signin),
        config=config,
        profiles=store.call_profiles,
        push_sent_option=c.push_sent_option or None,
    )


@contextlib.asynccontextmanager
async def run_node(settings: Settings, store: Store) -> AsyncIterator[RunningNode]:
    """Start every service of the node; yields once all of them accept connections."""
    signin = SigninService.from_settings(settings, store.signin)
    lpns = LpnsService.from_settings(settings.lpns, authorizer=signin)
    signin.sessions = lpns  # sign-out and deletions close live local push sessions
    api = settings.signin
    async with contextlib.AsyncExitStack() as stack:
        cloud = await stack.enter_async_context(await CloudConnection.open(settings, store))
        # Before anything else starts, so alarms raised while starting are stored.
        await stack.enter_async_context(AlarmCenter(store.alarms, settings.alarms, source=cloud))
        calls = call_push_handler(settings, store, cloud, lpns)
        sip = SipNode(
            settings.sip,
            store.sip,
            digest_secret=load_digest_secret(settings.data_dir),
            client_ssl=client_ssl_context(settings.sip),
            push=calls,
        )
        app = create_app(
            signin, max_body_bytes=api.max_body_bytes, chat_push=chat_registrations(settings)
        )
        app.include_router(metrics_router())
        if settings.cluster.enabled:  # re-login storms after a failover: docs/cluster.md
            app.add_middleware(SignInPacing, rate=settings.cluster.relogin_rate)
        app.include_router(edge_router(settings.edge, calls))  # Kamailio edge, when enabled
        try:
            stack.push_async_callback(sip.close)
            await sip.start()
            await stack.enter_async_context(lpns)
            http = await stack.enter_async_context(
                aio.serve_http(
                    app, host=api.host, port=api.port, tls_cert=api.tls_cert, tls_key=api.tls_key
                )
            )
            admin = await stack.enter_async_context(run_admin(settings, store, signin, cloud=cloud))
            if settings.cluster.enabled:  # several nodes as one: docs/cluster.md
                await stack.enter_async_context(join_cluster(settings, store, sip, lpns, calls))
            chat = None
            if settings.chat.enabled:
                # Leaving the stack on shutdown sends the chat sessions their terminated push.
                chat = await stack.enter_async_context(
                    run_chat_push(settings, store, cloud.current_client, wait_connected=False)
                )
                sip.on_call = chat.set_in_call  # in a call: chat pushes go to the phone
        except Exception as exc:
            raise_alarm("StartFailed", error=str(exc) or type(exc).__name__)
            raise
        clear_alarm("StartFailed")
        scheme = "https" if api.tls_cert else "http"
        url = f"{scheme}://{api.host}:{aio.bound_port(http)}"
        log.info("node_started", api=url, sip_mode=settings.sip.mode, metrics=f"{url}/metrics")
        log.info("cloud", cluster_id=cloud.cluster_id, status=cloud.status.label)
        yield RunningNode(sip, signin, lpns, cloud, calls, url, admin, chat)


async def serve(settings: Settings) -> None:
    """Run the node until SIGINT/SIGTERM."""
    # Handlers first: the SIP listeners answer before the other services are up, and a
    # SIGTERM in that window must still stop the node cleanly.
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with await open_store(settings.store_url) as store, run_node(settings, store):
        aio.settle_heap()
        await stop.wait()


def run_serve(settings: Settings) -> None:
    configure_logging(settings.log)
    with contextlib.suppress(KeyboardInterrupt):
        aio.run(serve(settings))
