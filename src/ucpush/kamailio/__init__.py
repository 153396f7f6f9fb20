"""Kamailio as the SIP edge, ucpush as the push engine (docs/kamailio.md).

Kamailio (deploy/kamailio/push.cfg) is the registrar and proxy; for an INVITE to push contacts
it holds the transaction and calls ``POST /v1/edge/calls``. The node runs the same call-push
engine and dispatcher as for its own proxy (``ucpush.callpush``), with a ``CallControl`` that
answers the caller through push.cfg's ``/edge/reply`` HTTP route and releases the held INVITE
when Kamailio reports the woken device's REGISTER (``POST /v1/edge/registrations``).
"""

from ucpush.kamailio.edge import EDGE_SECRET_HEADER, EdgeCalls, KamailioClient, edge_router

__all__ = ["EDGE_SECRET_HEADER", "EdgeCalls", "KamailioClient", "edge_router"]
