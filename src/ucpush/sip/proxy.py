"""Stateful proxy core (RFC 3261 §16), sans-IO.

``ProxyCore`` holds the rules that need no state: request validation (§16.3), Route
pre-processing (§16.4), building each forwarded copy (§16.6: Request-URI, Max-Forwards,
Record-Route, Via with a loop-detecting branch, next hop) and stray responses (§16.7 step 3).
``ForkContext`` is the response context of one forwarded request: it forks to a target set in
parallel (highest q first, lower q groups only when a whole group failed), forwards
provisional responses and every 2xx of an INVITE, cancels the other branches when one
answers 2xx or 6xx (with an RFC 3326 Reason), and otherwise picks the best final response
(§16.7 step 6, challenges of 401/407 aggregated). Both return actions (``Forward``,
``Respond``, ``Cancel``) for the asyncio glue in ``ucpush.sip.server`` to carry out.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Protocol

from ucpush.sip.helpers import build_cancel, make_response, new_tag
from ucpush.sip.message import MAGIC_COOKIE, SipRequest, SipResponse
from ucpush.sip.resolve import DEFAULT_PORTS, Flow, Hop, format_host, next_hop, strip_brackets
from ucpush.sip.uri import URI, SipURI, parse_name_addr
from ucpush.store.repository import Binding

if TYPE_CHECKING:
    from ucpush.sip.registrar import BindingEvent

DEFAULT_MAX_FORWARDS = 70
# Our branches carry a hash of the request (loop detection, §16.3 step 4) after this prefix.
_BRANCH_PREFIX = MAGIC_COOKIE + "ucp"
_HASH_LENGTH = 16
# §16.7 step 6: within 4xx these are preferred, since the caller can act on them.
_ACTIONABLE_4XX = (401, 407, 415, 420, 484)
_TOKEN_MAC = 10  # bytes of HMAC-SHA256 in a flow token
_NO_RR_METHODS = frozenset({"REGISTER", "ACK", "CANCEL"})
REASON_COMPLETED_ELSEWHERE = 'SIP;cause=200;text="Call completed elsewhere"'
REASON_DECLINED_ELSEWHERE = 'SIP;cause=600;text="Busy Everywhere"'


class LocationService(Protocol):
    """Registered contacts of an address-of-record (the registrar's bindings)."""

    async def lookup(self, aor: str) -> Sequence[Binding]: ...


class CallControl(Protocol):
    """What call push may do with one INVITE the proxy holds for it (the SIP side's half)."""

    def provisional(self, status: int, reason: str) -> None:
        """Send a provisional response (110, 180) to the caller unless a final went out."""

    def respond(self, status: int, reason: str) -> None:
        """Answer the caller (480 after the drop timer): pending branches are cancelled."""

    def forward(self, binding: Binding) -> None:
        """Fork the INVITE to ``binding`` now, as a new branch of the same call."""

    def extend(self, number: str) -> None:
        """Fork the INVITE to the callee's mobility identity (a number behind the PBX)."""


class HeldCall(Protocol):
    """Call push's half of one INVITE to an AOR with push bindings, fed the fork's events.
    Bindings are named by ``Binding.id``; None means a branch that is not a push binding."""

    def start(self, control: CallControl, live_branches: bool) -> None: ...
    def ringing(self, binding_id: str | None) -> None: ...
    def branch_failed(self, binding_id: str, status: int) -> None: ...
    def final(self, status: int, binding_id: str | None) -> None: ...
    def cancelled(self, reason: str | None) -> None: ...


class PushHandler(Protocol):
    """Where call push (RFC 8599 §5.6.2) takes over an INVITE to an AOR with push bindings."""

    async def prepare_call(
        self, request: SipRequest, aor: str, bindings: Sequence[tuple[Binding, bool]]
    ) -> HeldCall | None:
        """``bindings``: the AOR's push bindings, each with whether a live connection reaches
        it. None: call push has nothing to do (the proxy forks as usual, 480 if nothing is
        reachable); else the proxy holds the INVITE while the call has no live branch."""
        ...

    def on_binding_event(self, event: BindingEvent) -> None:
        """A binding was added, refreshed or removed; called once the change is stored and
        before the REGISTER's 2xx leaves (a woken device's REGISTER releases its call)."""


@dataclass(frozen=True, slots=True)
class Target:
    """One branch destination. ``uri`` becomes the Request-URI (unchanged for routed
    requests); ``flow``: an open flow to send on (the registered connection) instead of
    resolving; ``routes``: Route values to put in front (a binding's Path, RFC 3327)."""

    uri: URI
    q: float = 1.0
    flow: Flow | None = None
    routes: tuple[str, ...] = ()
    binding_id: str | None = None  # the registered binding it came from, if any


@dataclass(frozen=True, slots=True)
class Forward:
    """Send ``request`` on a new client transaction: on ``flow`` if set, else to ``hop``."""

    request: SipRequest
    hop: Hop
    flow: Flow | None = None

    @property
    def branch(self) -> str:
        return self.request.top_via.branch or ""


@dataclass(frozen=True, slots=True)
class Respond:
    """Send ``response`` upstream through the server transaction."""

    response: SipResponse


@dataclass(frozen=True, slots=True)
class Cancel:
    """Send ``request`` (a CANCEL) to the same flow as the INVITE of ``branch``."""

    branch: str
    request: SipRequest


ProxyAction = Forward | Respond | Cancel


@dataclass(frozen=True, slots=True)
class Routed:
    """What Route pre-processing found: whether Routes naming us were removed, and the flow
    a flow token in them asks for."""

    popped: bool = False
    flow: Flow | None = None


@dataclass(frozen=True, slots=True)
class ProxyConfig:
    """``domains``: hosts whose AORs we serve (the location service answers for them).
    ``local``: advertised (host, port) per transport, for Via and Record-Route. ``aliases``:
    further host names or addresses that mean this proxy (listen addresses, a DNS name)."""

    local: Mapping[str, tuple[str, int]]
    domains: frozenset[str] = frozenset()
    aliases: frozenset[str] = frozenset()
    supported: frozenset[str] = frozenset()
    # Keys the flow tokens; share it across restarts (and nodes) to keep dialogs routable.
    flow_key: bytes = field(default_factory=lambda: secrets.token_bytes(32))


class RequestError(Exception):
    """The request is refused with ``status`` (§16.3); ``headers`` go on the response."""

    def __init__(
        self, status: int, reason: str | None = None, headers: Sequence[tuple[str, str]] = ()
    ) -> None:
        super().__init__(reason or str(status))
        self.status = status
        self.reason = reason
        self.headers: list[tuple[str, str]] = list(headers)

    def response(self, request: SipRequest) -> SipResponse:
        return make_response(
            request, self.status, self.reason, to_tag=new_tag(), headers=self.headers
        )


def _loop_hash(request: SipRequest) -> str:
    """§16.6 step 8 minus the top Via (which changes hop by hop, so a looped request would
    never match): equal for a request that comes back unchanged, different for a spiral."""
    parts = [
        str(request.uri),
        request.from_.tag or "",
        request.to.tag or "",
        request.call_id,
        str(request.cseq.seq),
        *request.headers.get_all("Proxy-Require"),
        *request.headers.get_all("Proxy-Authorization"),
    ]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:_HASH_LENGTH]


def best_response(responses: Sequence[SipResponse], request: SipRequest) -> SipResponse:
    """§16.7 step 6: a 6xx if any, else one of the lowest class (actionable 4xx first, 408
    last); 401/407 carry every branch's challenges; 503 becomes 500."""
    if not responses:
        return make_response(request, 408, to_tag=new_tag())
    sixes = [r for r in responses if r.status >= 600]
    if sixes:
        chosen = sixes[0]
    else:
        lowest = min(r.status // 100 for r in responses)

        def rank(r: SipResponse) -> int:
            if r.status in _ACTIONABLE_4XX:
                return 0
            return 2 if r.status == 408 else 1

        chosen = min((r for r in responses if r.status // 100 == lowest), key=rank)
    chosen = chosen.copy()
    if chosen.status in (401, 407):
        for name in ("WWW-Authenticate", "Proxy-Authenticate"):
            chosen.headers.remove(name)
            for r in responses:
                if r.status in (401, 407):
                    for value in r.headers.get_all(name):
                        chosen.headers.add(name, value)
    if chosen.status == 503:
        # §16.7 step 6: a 503 from downstream says nothing about us; do not pass it on.
        chosen.status, chosen.reason = 500, "Server Internal Error"
    return chosen


class ProxyCore:
    """The stateless rules of the proxy; one per node."""

    def __init__(self, config: ProxyConfig) -> None:
        self.config = config
        hosts = {h.lower() for h in config.aliases}
        hosts |= {strip_brackets(host).lower() for host, _ in config.local.values()}
        self._hosts = frozenset(hosts)
        self._ports = frozenset(port for _, port in config.local.values())
        self._flow_key = config.flow_key

    # who we are

    def is_local_host(self, host: str) -> bool:
        return strip_brackets(host).lower() in self._hosts

    def is_ours(self, uri: URI) -> bool:
        """A URI naming this proxy itself: host and port are ours (a user part, in our
        Record-Route or Path entries, is a flow token)."""
        if not isinstance(uri, SipURI) or not self.is_local_host(uri.host):
            return False
        default = DEFAULT_PORTS["TLS" if uri.secure or uri.transport == "tls" else "UDP"]
        return (uri.port or default) in self._ports

    def serves(self, uri: URI) -> bool:
        """Is ``uri`` an AOR of a domain we serve (any, when no domains are configured), or
        addressed to one of our hosts?"""
        if not isinstance(uri, SipURI) or uri.user is None:
            return False
        host = uri.host.lower()
        domains = self.config.domains
        return not domains or host in domains or self.is_local_host(host)

    # §16.3 and §16.4

    def check(self, request: SipRequest) -> None:
        """Raise ``RequestError`` for a request we must refuse before forwarding."""
        if not isinstance(request.uri, SipURI) and not request.headers.get("Route"):
            raise RequestError(416)
        if request.max_forwards == 0:
            # §16.3 step 3 (we do not answer OPTIONS on the target's behalf).
            raise RequestError(483)
        if request.method not in ("ACK", "CANCEL"):
            digest = _loop_hash(request)
            for via in request.vias:
                branch = via.branch or ""
                if (
                    branch.startswith(_BRANCH_PREFIX)
                    and branch[len(_BRANCH_PREFIX) :].split(".")[0] == digest
                    and self.is_local_host(via.host)
                ):
                    raise RequestError(482)
        unsupported = [
            tag
            for value in request.headers.get_all("Proxy-Require")
            for tag in [value.strip().lower()]
            if tag not in self.config.supported
        ]
        if unsupported:
            raise RequestError(420, None, [("Unsupported", ", ".join(unsupported))])

    def preprocess_routes(self, request: SipRequest, arrival: Flow) -> Routed:
        """§16.4 on ``request`` (a copy the caller owns): undo a strict router's rewrite, then
        pop every top Route naming us (two after double Record-Routing). The last one popped
        is the entry for the side the request goes to; its flow token, if any and if the
        request did not come from that very flow, names the flow to send it on."""
        popped = False
        last: URI | None = None
        if self.is_ours(request.uri) and (routes := request.headers.get_all("Route")):
            # The previous hop was a strict router: our Record-Route is the Request-URI and
            # the real one is the last Route.
            last = request.uri
            request.uri = parse_name_addr(routes[-1], "Route").uri
            values = routes[:-1]
            request.headers.remove("Route")
            for value in values:
                request.headers.add("Route", value)
            popped = True
        while (top := request.headers.get("Route")) is not None:
            uri = parse_name_addr(top, "Route").uri
            if not self.is_ours(uri):
                break
            request.headers.pop_first("Route")
            popped, last = True, uri
        flow = self.flow_of_token(last.user) if isinstance(last, SipURI) and last.user else None
        return Routed(popped, None if flow == arrival else flow)

    # §16.6

    def record_route_value(self, transport: str, flow: Flow | None = None) -> str:
        """Our Record-Route (or Path) entry on ``transport``; with ``flow``, a flow token in
        the user part sends in-dialog requests for that side over that flow."""
        host, port = self.config.local[transport]
        user = f"{self.flow_token(flow)}@" if flow is not None else ""
        if transport == "TLS":
            # sips: keeps a SIPS dialog SIPS (§16.6 step 4) and means TLS to any UA.
            return f"<sips:{user}{format_host(host)}:{port};lr>"
        return f"<sip:{user}{format_host(host)}:{port};transport={transport.lower()};lr>"

    def flow_token(self, flow: Flow) -> str:
        """RFC 5626 §5.2: the flow, authenticated so nobody can aim requests at a flow they
        were not given."""
        raw = f"{flow.transport} {flow.host} {flow.port}".encode()
        mac = hmac.new(self._flow_key, raw, hashlib.sha256).digest()[:_TOKEN_MAC]
        return base64.urlsafe_b64encode(mac + raw).decode().rstrip("=")

    def flow_of_token(self, token: str) -> Flow | None:
        try:
            data = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        except ValueError:
            return None
        mac, raw = data[:_TOKEN_MAC], data[_TOKEN_MAC:]
        expected = hmac.new(self._flow_key, raw, hashlib.sha256).digest()[:_TOKEN_MAC]
        if not hmac.compare_digest(mac, expected):
            return None
        transport, host, port = raw.decode().split(" ")
        return Flow(transport, host, int(port))

    def via_value(self, transport: str, branch: str) -> str:
        host, port = self.config.local[transport]
        rport = ";rport" if transport == "UDP" else ""
        return f"SIP/2.0/{transport} {format_host(host)}:{port};branch={branch}{rport}"

    def new_branch(self, request: SipRequest) -> str:
        return f"{_BRANCH_PREFIX}{_loop_hash(request)}.{secrets.token_hex(6)}"

    def forward(
        self,
        request: SipRequest,
        target: Target,
        arrival: Flow,
        *,
        record_route: bool,
        branch: str | None = None,
    ) -> Forward:
        """The copy of ``request`` (Routes already pre-processed) for ``target``."""
        out = request.copy()
        out.uri = target.uri
        for value in reversed(target.routes):
            out.headers.prepend("Route", value)
        max_forwards = request.max_forwards
        out.headers.set(
            "Max-Forwards", str(DEFAULT_MAX_FORWARDS if max_forwards is None else max_forwards - 1)
        )
        route = out.headers.get("Route")
        hop_uri = parse_name_addr(route, "Route").uri if route is not None else out.uri
        if not isinstance(hop_uri, SipURI):
            raise RequestError(416, "Next hop is not a SIP URI")
        try:
            hop = next_hop(hop_uri)
        except ValueError as exc:
            raise RequestError(502, f"Cannot reach next hop: {exc}") from None
        if target.flow is not None:
            hop = Hop(target.flow.transport, target.flow.host, target.flow.port)
        if hop.transport not in self.config.local:
            raise RequestError(502, f"No {hop.transport} transport for the next hop")
        if record_route:
            # Connections (and registered flows) are named by flow tokens so in-dialog
            # requests reach devices that cannot be connected to (NAT, RFC 5626 §5.3).
            inbound = self.record_route_value(
                arrival.transport, arrival if arrival.reliable else None
            )
            outbound = self.record_route_value(hop.transport, target.flow)
            out.headers.prepend("Record-Route", inbound)
            if outbound != inbound:
                # Double Record-Route (RFC 5658): each side gets the entry it can reach.
                out.headers.prepend("Record-Route", outbound)
        out.headers.prepend(
            "Via", self.via_value(hop.transport, branch or self.new_branch(request))
        )
        return Forward(out, hop, target.flow)

    def needs_record_route(self, request: SipRequest) -> bool:
        """Record-Route every dialog-initiating (out-of-dialog) request: devices behind NAT
        and push-woken devices must get their in-dialog requests through us."""
        return request.method not in _NO_RR_METHODS and request.to.tag is None

    def stateless(self, request: SipRequest, arrival: Flow, flow: Flow | None = None) -> Forward:
        """ACK for a 2xx (end to end, §16.11): Routes popped, forwarded without a transaction
        (on ``flow`` if given). The branch is a hash of the request so a retransmission gets
        the same one."""
        digest = hashlib.sha256(request.serialize()).hexdigest()[:12]
        branch = f"{MAGIC_COOKIE}ucs{digest}"
        target = Target(request.uri, flow=flow)
        return self.forward(request, target, arrival, record_route=False, branch=branch)

    def stray_response(self, response: SipResponse) -> SipResponse | None:
        """§16.7 step 3 for a response with no transaction: drop it unless its top Via is
        ours and another Via follows; then the copy to forward (our Via popped)."""
        vias = response.vias
        if len(vias) < 2 or not self.is_local_host(vias[0].host):
            return None
        out = response.copy()
        out.headers.pop_first("Via")
        return out


@dataclass(slots=True)
class _Branch:
    forward: Forward
    target: Target
    provisional: bool = False
    final: int | None = None
    unreachable: bool = False
    cancel_reason: str | None = None  # wanted: sent once a provisional response arrived
    cancel_wanted: bool = False
    cancel_sent: bool = False


@dataclass(slots=True)
class ForkContext:
    """Response context of one proxied request (§16.7). ``request`` is as received, with
    Routes pre-processed; ``targets`` the target set (§16.5). ``held``: call push holds the
    INVITE, so running out of branches does not answer it; ``release``, ``respond`` or a
    branch's 2xx end that. Branches can be added while no final went out (``add_target``)."""

    core: ProxyCore
    request: SipRequest
    arrival: Flow
    targets: Sequence[Target]
    held: bool = False
    branches: dict[str, _Branch] = field(default_factory=dict)
    final_sent: bool = False
    cancelled: bool = False
    decided_by: str | None = None  # branch of the first 2xx or 6xx
    _tag: str = field(default_factory=new_tag)  # To tag of our own provisional responses
    _groups: list[list[Target]] = field(default_factory=list)
    _finals: list[SipResponse] = field(default_factory=list)
    _six: bool = False

    def __post_init__(self) -> None:
        groups: dict[float, list[Target]] = {}
        for target in self.targets:
            groups.setdefault(target.q, []).append(target)
        self._groups = [groups[q] for q in sorted(groups, reverse=True)]

    @property
    def invite(self) -> bool:
        return self.request.method == "INVITE"

    @property
    def finished(self) -> bool:
        """A final went upstream and every branch has its own final: nothing left to do."""
        return self.final_sent and all(b.final is not None for b in self.branches.values())

    def start(self) -> list[ProxyAction]:
        return self._next_group()

    def binding_of(self, branch_id: str | None) -> str | None:
        branch = self.branches.get(branch_id) if branch_id is not None else None
        return branch.target.binding_id if branch is not None else None

    def _branch(self, target: Target) -> Forward | None:
        record_route = self.core.needs_record_route(self.request)
        try:
            forward = self.core.forward(
                self.request, target, self.arrival, record_route=record_route
            )
        except RequestError as exc:
            self._finals.append(exc.response(self.request))
            return None
        self.branches[forward.branch] = _Branch(forward, target)
        return forward

    def _next_group(self) -> list[ProxyAction]:
        out: list[ProxyAction] = []
        while self._groups and not out:
            out += [f for target in self._groups.pop(0) if (f := self._branch(target))]
        if out or self.held:
            return list(out)
        return self._finish()

    def add_target(self, target: Target) -> list[ProxyAction]:
        """Fork to ``target`` now (a device woken by a push registered again)."""
        if self.final_sent or self.cancelled:
            return []
        forward = self._branch(target)
        return [forward] if forward is not None else self._check_done()

    def reroute(self, branch_id: str, flow: Flow) -> Forward | None:
        """The branch's request rebuilt for ``flow`` (DNS chose another transport than the
        URI implied), same branch id; None when this proxy has no such transport."""
        branch = self.branches.get(branch_id)
        if branch is None or branch.final is not None:
            return None
        target = replace(branch.target, flow=flow)
        record_route = self.core.needs_record_route(self.request)
        try:
            forward = self.core.forward(
                self.request, target, self.arrival, record_route=record_route, branch=branch_id
            )
        except RequestError:
            return None
        branch.forward = forward
        return forward

    def release(self) -> list[ProxyAction]:
        """Call push stops holding: the fork answers as usual once its branches are done."""
        self.held = False
        return self._check_done()

    def provisional(self, status: int, reason: str) -> list[ProxyAction]:
        """A provisional response of our own (180 ring-back, 110 Push sent)."""
        if self.final_sent or status <= 100:
            return []  # the transaction layer sent 100 Trying already
        return [Respond(make_response(self.request, status, reason, to_tag=self._tag))]

    def respond(self, status: int, reason: str) -> list[ProxyAction]:
        """A final decided outside the fork (call push gave up): cancel branches, answer."""
        self.held = False
        if self.final_sent:
            return []
        out = self._cancel_all(None)
        self.final_sent = True
        return [*out, Respond(make_response(self.request, status, reason, to_tag=new_tag()))]

    def _pending(self) -> list[_Branch]:
        return [b for b in self.branches.values() if b.final is None]

    def _cancel(self, branch: _Branch, reason: str | None) -> list[ProxyAction]:
        if branch.final is not None or branch.cancel_wanted:
            return []
        branch.cancel_wanted = True
        branch.cancel_reason = reason
        return self._send_cancel(branch) if branch.provisional else []

    def _send_cancel(self, branch: _Branch) -> list[ProxyAction]:
        # §9.1: a CANCEL may only follow a provisional response; until then it waits.
        branch.cancel_sent = True
        cancel = build_cancel(branch.forward.request)
        if branch.cancel_reason:
            cancel.headers.add("Reason", branch.cancel_reason)
        return [Cancel(branch.forward.branch, cancel)]

    def _cancel_all(self, reason: str | None) -> list[ProxyAction]:
        self._groups.clear()  # §16.7 step 5: no new branches after a 6xx or a CANCEL
        out: list[ProxyAction] = []
        for branch in self._pending():
            out += self._cancel(branch, reason)
        return out

    def on_response(self, branch_id: str, response: SipResponse) -> list[ProxyAction]:
        branch = self.branches.get(branch_id)
        if branch is None:
            return []
        out_response = response.copy()
        out_response.headers.pop_first("Via")
        status = response.status
        if status < 200:
            out: list[ProxyAction] = []
            branch.provisional = True
            if branch.cancel_wanted and not branch.cancel_sent:
                out += self._send_cancel(branch)
            if status > 100 and not self.final_sent:
                out.append(Respond(out_response))
            return out
        if 200 <= status < 300:
            first = branch.final is None
            branch.final = status
            self.held = False
            if self.decided_by is None:
                self.decided_by = branch_id
            if self.invite:
                # Every 2xx of an INVITE goes upstream: each one is a dialog the caller ACKs.
                out = self._cancel_all(REASON_COMPLETED_ELSEWHERE) if first else []
                self.final_sent = True
                return [*out, Respond(out_response)]
            if self.final_sent:
                return []
            self.final_sent = True
            return [Respond(out_response)]
        if branch.final is not None:
            return []
        branch.final = status
        self._finals.append(out_response)
        out = []
        if status >= 600 and self.invite:
            self._six = True
            if self.decided_by is None:
                self.decided_by = branch_id
            out = self._cancel_all(REASON_DECLINED_ELSEWHERE)
        return out + self._check_done()

    def on_failure(self, branch_id: str, status: int) -> list[ProxyAction]:
        """The branch's client transaction timed out (408) or could not send (503)."""
        branch = self.branches.get(branch_id)
        if branch is None or branch.final is not None:
            return []
        branch.final = status
        branch.unreachable = status == 503
        self._finals.append(make_response(self.request, status, to_tag=new_tag()))
        return self._check_done()

    def cancel(self) -> list[ProxyAction]:
        """The caller sent CANCEL (§16.10): cancel every branch, answer the INVITE 487."""
        self.cancelled = True
        self.held = False
        out = self._cancel_all(None)
        if not self.final_sent:
            self.final_sent = True
            out.append(Respond(make_response(self.request, 487, to_tag=new_tag())))
        return out

    def expire(self) -> list[ProxyAction]:
        """The whole fork ran too long (Timer C, §16.8): cancel and answer 408."""
        self.held = False
        out = self._cancel_all(None)
        if not self.final_sent:
            self.final_sent = True
            out.append(Respond(make_response(self.request, 408, to_tag=new_tag())))
        return out

    def _check_done(self) -> list[ProxyAction]:
        if self._pending() or self.final_sent or self.held:
            return []
        if self._groups and not self._six and not self.cancelled:
            return self._next_group()
        return self._finish()

    def _finish(self) -> list[ProxyAction]:
        self.final_sent = True
        branches = list(self.branches.values())
        if branches and all(b.unreachable for b in branches):
            return [Respond(make_response(self.request, 480, to_tag=new_tag()))]
        return [Respond(best_response(self._finals, self.request))]
