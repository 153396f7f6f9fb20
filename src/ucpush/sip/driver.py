"""asyncio glue around the sans-IO ``TransactionLayer``: received messages go in, its actions
come out and are carried out here (Transmit through ``SipTransport``, timers on
``loop.call_later``), and what reaches the transaction user is handed to a ``TransactionUser``.

Responses of a server transaction go back on the flow its request arrived on while that flow
is open; otherwise (a closed connection, or UDP) to the Via-derived address of RFC 3261
§18.2.2 / RFC 3581 (``received`` and ``rport`` were stamped on arrival).
"""

from __future__ import annotations

import asyncio
from typing import Protocol

from ucpush.sip.helpers import response_address
from ucpush.sip.message import SipRequest, SipResponse, Via
from ucpush.sip.resolve import Flow, strip_brackets
from ucpush.sip.transaction import (
    Action,
    CancelTimer,
    ClientTransaction,
    DeliverToTU,
    ServerInviteTransaction,
    ServerTransaction,
    StartTimer,
    State,
    Terminated,
    Timeout,
    TimerConfig,
    Transaction,
    TransactionLayer,
    Transmit,
    TransportError,
)
from ucpush.sip.transport import SipTransport

_TIMERS = TimerConfig()
_ORDER: dict[type, int] = {DeliverToTU: 1, Terminated: 2}


class TransactionUser(Protocol):
    """What sits on top of the transaction layer (the proxy core's glue)."""

    def on_request(self, request: SipRequest, tx: ServerTransaction | None, flow: Flow) -> None:
        """A new request (``tx`` None: an ACK for a 2xx, outside any transaction)."""

    def on_response(self, response: SipResponse, tx: ClientTransaction | None) -> None:
        """A response for one of our client transactions (``tx`` None: a stray one, e.g. a
        2xx retransmission after the transaction ended)."""

    def on_client_failure(self, tx: ClientTransaction, status: int) -> None:
        """The transaction gave up: 408 (timeout) or 503 (transport error), §8.1.3.1."""


def via_flow(via: Via) -> Flow:
    """Where a response goes by its Via alone (RFC 3261 §18.2.2, RFC 3581): ``maddr``, else
    ``received`` with ``rport``, else the sent-by."""
    host, port = response_address(via)
    name = via.transport if via.transport in ("UDP", "TCP", "TLS") else "UDP"
    return Flow(name, strip_brackets(host), port)


def response_flow(via: Via, arrival: Flow, transport: SipTransport) -> Flow:
    """§18.2.2: the request's own connection while it is open, else by the Via."""
    if arrival.reliable and transport.has_flow(arrival):
        return arrival
    return via_flow(via)


class TransactionDriver:
    """Runs the transaction layer on the event loop. Create it, set ``tu``, then pass
    ``receive`` as the transport's ``on_message``."""

    def __init__(self, transport: SipTransport, timers: TimerConfig = _TIMERS) -> None:
        self.transport = transport
        self.layer = TransactionLayer(timers)
        self.tu: TransactionUser | None = None
        self._timers: dict[int, dict[str, asyncio.TimerHandle]] = {}
        self._server_flows: dict[int, Flow] = {}
        self._client_flows: dict[int, tuple[Flow, str | None]] = {}
        # Client transactions per connection, failed when it closes before they are answered.
        self._on_stream: dict[Flow, dict[int, ClientTransaction]] = {}
        transport.on_flow_lost = self._flow_lost

    # input

    def receive(self, message: SipRequest | SipResponse, flow: Flow) -> None:
        if isinstance(message, SipRequest):
            tx, actions = self.layer.receive_request(message, reliable=flow.reliable)
            if tx is not None and id(tx) not in self._server_flows:
                self._server_flows[id(tx)] = flow
            self._run(tx, actions, flow)
        else:
            ctx, actions = self.layer.receive_response(message)
            self._run(ctx, actions, flow)

    # output

    def respond(self, tx: ServerTransaction, response: SipResponse) -> None:
        """Send a response through its server transaction. A 2xx the transaction no longer
        takes (it already answered with a final) is forwarded statelessly, as a proxy must
        (RFC 6026 §7)."""
        if tx.terminated or (
            isinstance(tx, ServerInviteTransaction)
            and tx.state is not State.PROCEEDING
            and not (tx.state is State.ACCEPTED and 200 <= response.status < 300)
        ):
            if 200 <= response.status < 300 and tx.request.method == "INVITE":
                self.send_stateless(response, self._response_flow(tx))
            return
        self._run(tx, self.layer.send_response(tx, response), None)

    def send_request(
        self, request: SipRequest, flow: Flow, *, server_name: str | None = None
    ) -> ClientTransaction:
        """Start a client transaction; the request's top Via must already name ``flow``'s
        transport and a fresh branch."""
        tx, actions = self.layer.send_request(request, reliable=flow.reliable)
        self._client_flows[id(tx)] = (flow, server_name)
        if flow.reliable:
            self._on_stream.setdefault(flow, {})[id(tx)] = tx
        self._run(tx, actions, None)
        return tx

    def close(self) -> None:
        """Cancel every transaction timer (the node is stopping)."""
        for timers in self._timers.values():
            for handle in timers.values():
                handle.cancel()
        self._timers.clear()

    def abandon(self, tx: ClientTransaction) -> None:
        """Drop a client transaction that will never complete (an INVITE branch that ignored
        our CANCEL, RFC 3261 §9.1), without telling the TU."""
        actions = self.layer.transport_error(tx)
        self._run(tx, [a for a in actions if not isinstance(a, TransportError)], None)

    def send_stateless(
        self, message: SipRequest | SipResponse, flow: Flow, *, server_name: str | None = None
    ) -> None:
        """ACK for a 2xx, a forwarded stray 2xx: no transaction, no retransmission."""
        self.transport.send(message, flow, server_name=server_name)

    def flow_of(self, tx: ServerTransaction) -> Flow | None:
        return self._server_flows.get(id(tx))

    def client_flow(self, tx: ClientTransaction) -> tuple[Flow, str | None] | None:
        """The flow a client transaction sends on, with its TLS server name."""
        return self._client_flows.get(id(tx))

    def _response_flow(self, tx: ServerTransaction) -> Flow:
        arrival = self._server_flows.get(id(tx)) or Flow("UDP", "", 0)
        return response_flow(tx.request.top_via, arrival, self.transport)

    # the action loop

    def _run(self, tx: Transaction | None, actions: list[Action], flow: Flow | None) -> None:
        # The TU hears of a message after the transaction's own sends and timers (so a new
        # INVITE's 100 Trying leaves before anything the TU sends at once), but before the
        # transaction is forgotten.
        actions = sorted(actions, key=lambda a: _ORDER.get(type(a), 0))
        for action in actions:
            if isinstance(action, Transmit):
                assert tx is not None
                self._transmit(tx, action.message)
            elif isinstance(action, StartTimer):
                assert tx is not None
                self._start_timer(tx, action.name, action.seconds)
            elif isinstance(action, CancelTimer):
                assert tx is not None
                handle = self._timers.get(id(tx), {}).pop(action.name, None)
                if handle is not None:
                    handle.cancel()
            elif isinstance(action, DeliverToTU):
                self._deliver(tx, action.message, flow)
            elif isinstance(action, Timeout | TransportError):
                if isinstance(tx, ClientTransaction) and self.tu is not None:
                    self.tu.on_client_failure(tx, 408 if isinstance(action, Timeout) else 503)
            elif isinstance(action, Terminated):
                assert tx is not None
                self._forget(tx)

    def _deliver(
        self, tx: Transaction | None, message: SipRequest | SipResponse, flow: Flow | None
    ) -> None:
        if self.tu is None:
            return
        if isinstance(message, SipRequest):
            assert flow is not None
            server = tx if isinstance(tx, ServerTransaction) else None
            self.tu.on_request(message, server, flow)
        else:
            client = tx if isinstance(tx, ClientTransaction) else None
            self.tu.on_response(message, client)

    def _transmit(self, tx: Transaction, message: SipRequest | SipResponse) -> None:
        if isinstance(tx, ServerTransaction):
            self.transport.send(message, self._response_flow(tx))
            return
        flow, server_name = self._client_flows[id(tx)]

        def failed() -> None:
            if not tx.terminated:
                self._run(tx, self.layer.transport_error(tx), None)

        self.transport.send(message, flow, server_name=server_name, on_error=failed)

    def _start_timer(self, tx: Transaction, name: str, seconds: float) -> None:
        timers = self._timers.setdefault(id(tx), {})
        old = timers.pop(name, None)
        if old is not None:
            old.cancel()

        def fire() -> None:
            timers.pop(name, None)
            self._run(tx, self.layer.timer_fired(tx, name), None)

        timers[name] = asyncio.get_running_loop().call_later(seconds, fire)

    def _forget(self, tx: Transaction) -> None:
        for handle in self._timers.pop(id(tx), {}).values():
            handle.cancel()
        self._server_flows.pop(id(tx), None)
        entry = self._client_flows.pop(id(tx), None)
        if entry is not None and entry[0].reliable:
            waiting = self._on_stream.get(entry[0])
            if waiting is not None:
                waiting.pop(id(tx), None)
                if not waiting:
                    del self._on_stream[entry[0]]

    def _flow_lost(self, flow: Flow) -> None:
        """§17.1.4: a connection closed under requests still awaiting their final response
        is a transport error for them (no answer can come back on it)."""
        for tx in list(self._on_stream.pop(flow, {}).values()):
            if tx.state in (State.CALLING, State.TRYING, State.PROCEEDING):
                self._run(tx, self.layer.transport_error(tx), None)
