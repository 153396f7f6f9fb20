"""Joining a running call node to its cluster (``run_node`` with ``[cluster] enabled``)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from ucpush.callpush.dispatcher import CallPushHandler
from ucpush.cluster.service import ClusterService, MeshLocalPush, PublishingBindings
from ucpush.config import Settings
from ucpush.lpns.service import LpnsService
from ucpush.sip.server import SipNode
from ucpush.store import Store


@contextlib.asynccontextmanager
async def join_cluster(
    settings: Settings, store: Store, sip: SipNode, lpns: LpnsService, calls: CallPushHandler
) -> AsyncIterator[ClusterService]:
    """Hook the node's services into the cluster while the context is open:

    * pushes name the node group's active node (``PayloadBuilder.active_node``);
    * the registrar publishes every binding change, and takes the other nodes' ones;
    * LPNS sessions are announced, and call pushes reach sessions held on other nodes.
    """
    payloads = calls.dispatcher.payloads

    def name_active_node(uri: str) -> None:
        payloads.active_node = uri

    cluster = ClusterService(
        settings.cluster,
        sip_uri=payloads.active_node,  # this node's own URI until the group says otherwise
        groups=store.cluster,
        on_active_node=name_active_node,
        lpns=lpns,
        bindings=sip.bindings,
        lpns_url=lpns.url,
    )
    registrar_storage = sip.registrar.repository
    local_push = calls.dispatcher.lpns
    sip.registrar.repository = PublishingBindings(sip.bindings, cluster)
    lpns.on_session = cluster.on_lpns_session
    for device_id in lpns.session_devices():  # opened before the hook was in place
        cluster.on_lpns_session(device_id, True)
    calls.dispatcher.lpns = MeshLocalPush(lpns, cluster)
    try:
        async with cluster:
            yield cluster
    finally:
        sip.registrar.repository = registrar_storage
        lpns.on_session = None
        calls.dispatcher.lpns = local_push
