"""The call node's SIP service (``ucpush serve``): listeners, transactions, registrar, proxy.

``SipNode`` is the transaction user on top of ``TransactionDriver``: it sends REGISTERs to the
registrar (``registrar`` mode) or relays them to the upstream PBX with a Path header
(``gateway`` mode, the Flexisip push-gateway pattern: the PBX keeps the registrations, we keep
each device's contact, flow and pn-* parameters so INVITEs the PBX routes back through us reach
the device), and proxies everything else through ``ProxyCore``/``ForkContext``, carrying out
their actions: new client transactions per branch, CANCELs on the branch's flow, responses on
the server transaction.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import ssl
import time
from collections import OrderedDict
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ucpush.config import SipSettings
from ucpush.crypto.secretfile import load_or_create_secret
from ucpush.logging import get_logger
from ucpush.sip.digest import (
    MD5,
    SHA256,
    DigestAuth,
    DigestParseError,
    credentials_for,
)
from ucpush.sip.driver import TransactionDriver, via_flow
from ucpush.sip.errors import SipParseError
from ucpush.sip.helpers import make_response, new_tag
from ucpush.sip.location import BindingStore, LocationCache
from ucpush.sip.message import SipRequest, SipResponse
from ucpush.sip.proxy import (
    Cancel,
    ForkContext,
    Forward,
    HeldCall,
    LocationService,
    ProxyAction,
    ProxyConfig,
    ProxyCore,
    PushHandler,
    RequestError,
    Respond,
    Target,
)
from ucpush.sip.registrar import (
    PUSH_REFRESH_LEAD,
    BindingEvent,
    Registrar,
    RegistrarConfig,
    RegistrarService,
    Source,
    canonical_aor,
    push_params_match,
)
from ucpush.sip.resolve import (
    Flow,
    Hop,
    dns_resolver,
    format_host,
    next_hop,
    numeric_flow,
    resolve,
)
from ucpush.sip.transaction import (
    ClientTransaction,
    ServerInviteTransaction,
    ServerTransaction,
    State,
    TimerConfig,
)
from ucpush.sip.transport import SipTransport
from ucpush.sip.uri import URI, SipURI, parse_uri
from ucpush.store.repository import Binding, NotFound

# Bounds on calls remembered for ``on_call`` (a BYE may never pass through us).
MAX_CALL_SECONDS = 12 * 3600
MAX_CALLS = 100_000
log = get_logger(__name__)

DIGEST_SECRET_FILE = "sip-digest.key"
SWEEP_INTERVAL = 60.0
_TIMERS = TimerConfig()
# What may be sent through us (we proxy any method; this answers OPTIONS to the node).
_ALLOW = "INVITE, ACK, CANCEL, BYE, OPTIONS, REGISTER, MESSAGE, UPDATE, REFER, NOTIFY"
# Gateway mode stores whatever lifetime the upstream granted; these only bound nonsense.
_GATEWAY_REGISTRAR = RegistrarConfig(
    min_expires=1, default_expires=3600, max_expires=86400, push_min_expires=121
)


def _same_contact(uri: URI, binding: Binding) -> bool:
    try:
        return uri.equivalent(parse_uri(binding.contact))
    except SipParseError:
        return False


def _source_flow(binding: Binding) -> Flow | None:
    if binding.source_transport not in ("UDP", "TCP", "TLS") or not binding.source_port:
        return None
    return Flow(binding.source_transport, binding.source_host, binding.source_port)


class SipNode:
    """One SIP node. ``start()`` opens the listeners, ``close()`` stops everything."""

    def __init__(
        self,
        settings: SipSettings,
        repository: BindingStore,
        *,
        digest_secret: bytes,
        push: PushHandler | None = None,
        client_ssl: ssl.SSLContext | None = None,
        timers: TimerConfig = _TIMERS,
    ) -> None:
        self.settings = settings
        self.push = push
        self._secret = digest_secret
        # Bindings and accounts from memory, written behind (see sip/location.py).
        self.bindings = LocationCache(
            repository,
            flush_interval=settings.binding_flush_ms / 1000,
            user_ttl=settings.user_cache_seconds,
        )
        self.locations: LocationService = self.bindings
        self.transport = SipTransport(
            self._receive, max_message_size=settings.max_message_size, client_ssl=client_ssl
        )
        self.driver = TransactionDriver(self.transport, timers)
        self.driver.tu = self
        domains = frozenset(d.lower() for d in settings.domains)
        self._domains = domains
        realm = settings.realm or (settings.domains[0] if settings.domains else settings.host)
        auth = None
        if settings.authenticate:
            algorithms = tuple(dict.fromkeys(settings.digest_algorithms))
            auth = DigestAuth(digest_secret, realm, algorithms=algorithms)
        registrar_config = RegistrarConfig(
            realm=realm,
            domains=domains,
            min_expires=settings.min_expires,
            max_expires=settings.max_expires,
            default_expires=settings.max_expires,
            push_providers=frozenset(settings.push_providers),
            # Push bindings must outlive their refresh push (RFC 8599 §5.5); the settings keep
            # max_expires above PUSH_REFRESH_LEAD.
            push_min_expires=min(2 * PUSH_REFRESH_LEAD, settings.max_expires),
        )
        if settings.mode == "gateway":
            registrar_config = _GATEWAY_REGISTRAR
            auth = None  # the upstream authenticates its users
        self._auth = auth  # also challenges requests routed elsewhere (407)
        self.registrar = RegistrarService(
            Registrar(registrar_config, auth),
            self.bindings,
            on_auth_failure=self.bindings.forget_user,
        )
        self.upstream: SipURI | None = None
        if settings.upstream:
            upstream = parse_uri(settings.upstream)
            if not isinstance(upstream, SipURI):
                raise ValueError("upstream must be a sip: or sips: URI")
            self.upstream = upstream
        self.core: ProxyCore | None = None
        self._contexts: dict[int, ForkContext] = {}  # id(server tx) -> context
        self._expiry: dict[int, asyncio.TimerHandle] = {}
        self._give_ups: dict[int, asyncio.TimerHandle] = {}  # id(client tx) after our CANCEL
        self._branches: dict[int, tuple[ForkContext, ServerTransaction, str]] = {}
        self._branch_tx: dict[str, ClientTransaction] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._cancelled: set[int] = set()  # server txs CANCELled while a lookup was pending
        self._gateway_registers: dict[int, SipRequest] = {}  # id(context) -> REGISTER as received
        self._held_calls: dict[int, HeldCall] = {}  # id(context) -> its call push
        # Told "user@host", True/False as calls through us start (2xx) and end (BYE): chat
        # push treats a user in a call as away from their desktop (SPEC §4).
        self.on_call: Callable[[str, bool], None] | None = None
        self._active_calls: OrderedDict[str, tuple[float, tuple[str, ...]]] = OrderedDict()
        self._dns = dns_resolver(settings.dns_servers)

    # life cycle

    async def start(self) -> None:
        s = self.settings
        await self.bindings.start()
        if "udp" in s.transports:
            await self.transport.listen_udp(s.host, s.udp_port)
        if "tcp" in s.transports:
            await self.transport.listen_stream(s.host, s.tcp_port)
        if "tls" in s.transports and s.tls_cert:
            tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            tls.load_cert_chain(s.tls_cert, s.tls_key or None)
            await self.transport.listen_stream(s.host, s.tls_port, tls=tls)
        elif "tls" in s.transports:
            log.warning("sip.tls_disabled", reason="no tls_cert configured")
        if not self.transport.local:
            raise ValueError("no SIP transport enabled")
        advertise = s.advertise or s.host
        local = {name: (advertise, port) for name, (_, port) in self.transport.local.items()}
        aliases = frozenset({s.host, advertise, *(h for h, _ in self.transport.local.values())})
        # Derived from the node's secret so flow tokens handed out stay valid after a restart.
        flow_key = hashlib.sha256(b"ucpush flow token\0" + self._secret).digest()
        self.core = ProxyCore(
            ProxyConfig(local=local, domains=self._domains, aliases=aliases, flow_key=flow_key)
        )
        self._spawn(self._sweep())
        log.info("sip.started", mode=s.mode, listening=self.transport.local)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for handle in [*self._expiry.values(), *self._give_ups.values()]:
            handle.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self.driver.close()
        await self.transport.close()
        await self.bindings.close()
        log.info("sip.stopped")

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("sip.task_failed", error=repr(task.exception()))

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_INTERVAL)
            self._publish(await self.registrar.sweep(datetime.now(UTC)))

    # transport -> transactions

    def _receive(self, message: SipRequest | SipResponse, flow: Flow) -> None:
        self.driver.receive(message, flow)

    # TransactionUser

    def on_request(self, request: SipRequest, tx: ServerTransaction | None, flow: Flow) -> None:
        assert self.core is not None
        if tx is None:  # ACK for a 2xx: end to end, forwarded statelessly
            self._forward_ack(request, flow)
            return
        if request.method == "CANCEL":
            self._cancel(request, tx)
            return
        if request.method == "BYE":
            self._call_ended(request.call_id)
        try:
            self.core.check(request)
            self._route(request, tx, flow)
        except RequestError as exc:
            self.driver.respond(tx, exc.response(request))
        except SipParseError as exc:
            self.driver.respond(tx, make_response(request, 400, exc.reason, to_tag=new_tag()))

    def on_response(self, response: SipResponse, tx: ClientTransaction | None) -> None:
        if tx is None:
            self._forward_stray(response)
            return
        entry = self._branches.get(id(tx))
        if entry is None:
            # The context is gone: a retransmitted 2xx still goes upstream; responses to
            # our CANCELs end here.
            if response.cseq.method == "INVITE" and 200 <= response.status < 300:
                self._forward_stray(response)
            return
        ctx, server, branch = entry
        if response.status >= 200 and not (200 <= response.status < 300 and ctx.invite):
            self._branches.pop(id(tx), None)
        call = self._held_calls.get(id(ctx))
        if call is not None:
            if response.status in (180, 183):
                call.ringing(ctx.binding_of(branch))
            elif response.status >= 300 and (binding := ctx.binding_of(branch)) is not None:
                call.branch_failed(binding, response.status)
        self._run(ctx, server, ctx.on_response(branch, response))

    def on_client_failure(self, tx: ClientTransaction, status: int) -> None:
        entry = self._branches.pop(id(tx), None)
        if entry is not None:
            ctx, server, branch = entry
            self._branch_failed(ctx, server, branch, status)

    def _branch_failed(
        self, ctx: ForkContext, tx: ServerTransaction, branch: str, status: int
    ) -> None:
        """No response from the branch: timeout (408) or it could not be sent (503)."""
        call = self._held_calls.get(id(ctx))
        binding = ctx.binding_of(branch)
        if call is not None and binding is not None and ctx.branches[branch].final is None:
            call.branch_failed(binding, status)
        self._run(ctx, tx, ctx.on_failure(branch, status))

    # routing (RFC 3261 §16.4-16.5)

    def _route(self, request: SipRequest, tx: ServerTransaction, flow: Flow) -> None:
        assert self.core is not None
        request = request.copy()
        routed = self.core.preprocess_routes(request, flow)
        gateway = self.settings.mode == "gateway"
        if request.headers.get("Route"):
            if self._auth is not None and request.to.tag is None:
                # Out of a dialog and routed elsewhere: only our users may use us as their
                # outbound proxy (or anyone could relay calls through us).
                work = self._authorized_fork(request, tx, flow, self._auth)
                self._spawn(self._guarded(tx, request, work))
            else:
                self._fork(request, tx, flow, [Target(request.uri)])  # loose routing
        elif request.method == "REGISTER" and gateway:
            self._relay_register(request, tx, flow)
        elif request.method == "REGISTER":
            self._spawn(self._guarded(tx, request, self._register(request, tx, flow)))
        elif (
            isinstance(request.uri, SipURI)
            and request.uri.user is None
            and self.core.is_ours(request.uri)
        ):
            self._answer_self(request, tx)
        elif routed.flow is not None and self.transport.has_flow(routed.flow):
            # Our Record-Route or Path named the flow (RFC 5626 §5.3): no lookup needed.
            self._fork(request, tx, flow, [Target(request.uri, flow=routed.flow)])
        elif request.to.tag is not None or (gateway and routed.popped):
            # In a dialog (or routed to a device by the PBX): the Request-URI is a contact.
            self._spawn(self._guarded(tx, request, self._to_device(request, tx, flow)))
        elif not gateway and self.core.serves(request.uri):
            self._spawn(self._guarded(tx, request, self._locate(request, tx, flow)))
        elif gateway:
            self._fork(request, tx, flow, [Target(request.uri, routes=(self._upstream_route(),))])
        else:
            raise RequestError(404, "Domain not served here")

    async def _authorized_fork(
        self, request: SipRequest, tx: ServerTransaction, flow: Flow, auth: DigestAuth
    ) -> None:
        """RFC 3261 §22.3: 407 until the request carries Proxy-Authorization for our realm
        from one of our users, whose own credentials are then removed before forwarding."""
        now = datetime.now(UTC)
        try:
            found = credentials_for(request.headers.get_all("Proxy-Authorization"), auth.realm)
        except DigestParseError:
            found = None  # malformed: challenged like missing ones
        if found is None:
            self._challenge(tx, request, auth, now)
            return
        creds, ours = found
        try:
            user = await self.bindings.get_user(creds.username, creds.realm)
        except NotFound:
            self._challenge(tx, request, auth, now)  # as for a wrong password
            return
        verdict = auth.verify(
            creds,
            method=request.method,
            request_uri=str(request.uri),
            ha1={MD5: user.ha1_md5, SHA256: user.ha1_sha256},
            now=now,
        )
        if not verdict.ok:
            self.bindings.forget_user(creds.username, creds.realm)
            self._challenge(tx, request, auth, now, stale=verdict.stale)
            return
        if self._was_cancelled(tx):
            return
        values = [v for v in request.headers.get_all("Proxy-Authorization") if v != ours]
        request.headers.remove("Proxy-Authorization")
        for value in values:
            request.headers.add("Proxy-Authorization", value)  # other realms' are not ours
        self._fork(request, tx, flow, [Target(request.uri)])

    def _challenge(
        self,
        tx: ServerTransaction,
        request: SipRequest,
        auth: DigestAuth,
        now: datetime,
        *,
        stale: bool = False,
    ) -> None:
        self._cancelled.discard(id(tx))
        headers = auth.challenge(now, stale=stale, proxy=True)
        self.driver.respond(tx, make_response(request, 407, to_tag=new_tag(), headers=headers))

    def _answer_self(self, request: SipRequest, tx: ServerTransaction) -> None:
        """A request addressed to the node itself: OPTIONS is a liveness probe (phones and
        load balancers send them); nothing else is served here."""
        if request.method != "OPTIONS":
            raise RequestError(405, None, [("Allow", "OPTIONS")])
        self.driver.respond(
            tx, make_response(request, 200, to_tag=new_tag(), headers=[("Allow", _ALLOW)])
        )

    async def _guarded(
        self, tx: ServerTransaction, request: SipRequest, work: Coroutine[Any, Any, None]
    ) -> None:
        """A failed lookup (database down...) still gets the caller an answer."""
        try:
            await work
        except Exception:
            log.exception("sip.request_failed", method=request.method, call_id=request.call_id)
            self._reply(tx, request, 500)

    def _upstream_route(self) -> str:
        assert self.upstream is not None
        return f"<{self.upstream.with_param('lr', None)}>"

    def _target(self, binding: Binding) -> Target | None:
        """The branch for a binding, or None when only a push can reach it: a push binding
        whose registered connection is gone (the app is in the background)."""
        try:
            uri = parse_uri(binding.contact)
        except SipParseError:
            return None
        source = _source_flow(binding)
        flow: Flow | None = None
        if source is not None and source.reliable:
            # Reuse the device's connection (it may not accept new ones, e.g. behind NAT).
            if self.transport.has_flow(source):
                flow = source
            elif binding.push_enabled:
                return None
        elif source is not None and binding.reg_id is not None:
            flow = source  # RFC 5626 outbound over UDP: the registered flow, not the contact
        q = 1.0 if binding.q is None else binding.q
        return Target(uri, q, flow, binding.path)

    async def _locate(self, request: SipRequest, tx: ServerTransaction, flow: Flow) -> None:
        aor = canonical_aor(request.uri)
        bindings = await self.locations.lookup(aor)
        if self._was_cancelled(tx):
            return
        if not bindings:
            self._reply(tx, request, 404)
            return
        await self._fork_to_bindings(request, tx, flow, aor, bindings)

    async def _to_device(self, request: SipRequest, tx: ServerTransaction, flow: Flow) -> None:
        """A request whose Request-URI is a contact: sent on that device's registered flow
        when it is one of ours (or to the push handler when only a push reaches it)."""
        uri = request.uri
        try:
            aor = canonical_aor(request.to.uri)
        except ValueError:
            self._fork(request, tx, flow, [Target(uri)])
            return
        # Out of a dialog, RFC 8599 §5.3 matching (pn-* must agree); in one, the remote
        # target is whatever Contact the device answered with, compared by §19.1.4 alone.
        in_dialog = request.to.tag is not None
        bindings = [
            b
            for b in await self.locations.lookup(aor)
            if (_same_contact(uri, b) if in_dialog else push_params_match(uri, b))
        ]
        if not bindings:
            # Not one of our devices: in a dialog straight on, else via the PBX.
            routes = () if in_dialog else (self._upstream_route(),)
            self._fork(request, tx, flow, [Target(uri, routes=routes)])
            return
        await self._fork_to_bindings(request, tx, flow, aor, bindings)

    async def _fork_to_bindings(
        self,
        request: SipRequest,
        tx: ServerTransaction,
        flow: Flow,
        aor: str,
        bindings: Sequence[Binding],
    ) -> None:
        """Fork to the bindings' targets; an INVITE to push bindings is handed to call push,
        which holds it while no live branch exists; 480 when nothing can reach the AOR."""
        pairs = [(b, self._target(b)) for b in bindings]
        targets = [replace(t, binding_id=b.id) for b, t in pairs if t is not None]
        call: HeldCall | None = None
        if request.method == "INVITE" and self.push is not None:
            push = [(b, t is not None) for b, t in pairs if b.push_enabled]
            if push:
                call = await self.push.prepare_call(request, aor, push)
        if self._was_cancelled(tx):
            return
        if call is None and not targets:
            self._reply(tx, request, 480)
            return
        ctx = self._fork(request, tx, flow, targets, held=call is not None and not targets)
        if call is None or ctx is None or ctx.final_sent:
            return
        self._held_calls[id(ctx)] = call
        call.start(_ProxiedCall(self, ctx, tx), live_branches=bool(targets))

    def _was_cancelled(self, tx: ServerTransaction) -> bool:
        """True (once) if the caller CANCELled while we were looking targets up."""
        if id(tx) in self._cancelled:
            self._cancelled.discard(id(tx))
            return True
        return False

    def _reply(self, tx: ServerTransaction, request: SipRequest, status: int) -> None:
        self._cancelled.discard(id(tx))
        self.driver.respond(tx, make_response(request, status, to_tag=new_tag()))

    # registrar

    async def _register(self, request: SipRequest, tx: ServerTransaction, flow: Flow) -> None:
        source = Source(flow.transport, flow.host, flow.port)
        outcome = await self.registrar.register(request, source=source, now=datetime.now(UTC))
        if outcome.reason != "ok" and outcome.response.status != 401:
            log.info("sip.register.refused", aor=outcome.aor, reason=outcome.reason)
        self._publish(outcome.events)
        self.driver.respond(tx, outcome.response)

    def _publish(self, events: Sequence[BindingEvent]) -> None:
        if self.push is not None:
            for event in events:
                self.push.on_binding_event(event)

    def _relay_register(self, request: SipRequest, tx: ServerTransaction, flow: Flow) -> None:
        """Gateway mode: REGISTER goes upstream with our Path (RFC 3327) so the PBX routes the
        device's calls back through us; the 2xx makes us store the binding."""
        assert self.core is not None and self.upstream is not None
        relayed = request.copy()
        hop = next_hop(self.upstream)
        # The flow token lets the PBX's requests reach the device on this very flow.
        relayed.headers.prepend("Path", self.core.record_route_value(hop.transport, flow))
        providers = {
            c.uri.pn_params.get("pn-provider")
            for c in request.contacts
            if isinstance(c.uri, SipURI)
        }
        for provider in sorted(p for p in providers if p in self.settings.push_providers):
            # RFC 8599 §5.4: tell the registrar (and proxies) that we push for this PNS.
            relayed.headers.add("Feature-Caps", f'*;+sip.pns="{provider}"')
        ctx = self._fork(relayed, tx, flow, [Target(request.uri, routes=(self._upstream_route(),))])
        if ctx is not None:
            self._gateway_registers[id(ctx)] = request

    async def _store_gateway_binding(
        self, request: SipRequest, response: SipResponse, flow: Flow
    ) -> None:
        """Keep the device's contact as the upstream granted it: a removal stays a removal;
        otherwise the lifetime the 2xx lists for that Contact (RFC 3261 §10.3 step 8), else
        the 2xx's Expires, else the one requested."""
        copy = request.copy()
        if not request.contact_wildcard:
            granted = response.contacts
            copy.headers.remove("Contact")
            for contact in request.contacts:
                requested = contact.expires if contact.expires is not None else request.expires
                match = next((c for c in granted if c.uri.equivalent(contact.uri)), None)
                expires = requested
                if requested != 0:
                    for candidate in (match.expires if match else None, response.expires):
                        if candidate is not None:
                            expires = candidate
                            break
                value = contact if expires is None else contact.with_param("expires", str(expires))
                copy.headers.add("Contact", str(value))
        source = Source(flow.transport, flow.host, flow.port)
        outcome = await self.registrar.register(copy, source=source, now=datetime.now(UTC))
        if outcome.reason != "ok":
            log.info("sip.gateway.binding_not_kept", aor=outcome.aor, reason=outcome.reason)
        self._publish(outcome.events)

    # proxying

    def _fork(
        self,
        request: SipRequest,
        tx: ServerTransaction,
        flow: Flow,
        targets: list[Target],
        *,
        held: bool = False,
    ) -> ForkContext | None:
        assert self.core is not None
        if self._was_cancelled(tx) or tx.terminated:
            return None
        ctx = ForkContext(self.core, request, flow, targets, held=held)
        self._contexts[id(tx)] = ctx
        log.debug(
            "sip.proxy.fork",
            method=request.method,
            call_id=request.call_id,
            targets=[str(t.uri) for t in targets],
        )
        if ctx.invite:
            loop = asyncio.get_running_loop()
            self._expiry[id(tx)] = loop.call_later(
                self.settings.invite_timeout, lambda: self._run(ctx, tx, ctx.expire())
            )
        self._run(ctx, tx, ctx.start())
        return ctx

    def _run(self, ctx: ForkContext, tx: ServerTransaction, actions: list[ProxyAction]) -> None:
        for action in actions:
            if isinstance(action, Forward):
                self._send_branch(ctx, tx, action)
            elif isinstance(action, Cancel):
                self._send_cancel(ctx, tx, action)
            elif isinstance(action, Respond):
                self._respond(ctx, tx, action.response)
        if ctx.finished:
            self._forget(ctx, tx)

    def _send_cancel(self, ctx: ForkContext, tx: ServerTransaction, action: Cancel) -> None:
        client = self._branch_tx.get(action.branch)
        where = self.driver.client_flow(client) if client is not None else None
        if client is None or where is None:
            return
        self.driver.send_request(action.request, where[0], server_name=where[1])
        # §9.1: a branch that still has no final 64*T1 after our CANCEL is given up on, or
        # its INVITE transaction (Proceeding has no timer) and this context would live on.
        delay = 64 * self.driver.layer.timers.t1
        loop = asyncio.get_running_loop()
        self._give_ups[id(client)] = loop.call_later(
            delay, self._give_up, ctx, tx, client, action.branch
        )

    def _give_up(
        self, ctx: ForkContext, tx: ServerTransaction, client: ClientTransaction, branch: str
    ) -> None:
        self._give_ups.pop(id(client), None)
        state = ctx.branches.get(branch)
        if state is None or state.final is not None:
            return  # it answered in time
        self._branches.pop(id(client), None)
        self.driver.abandon(client)
        self._branch_failed(ctx, tx, branch, 408)

    def _call_started(self, invite: SipRequest) -> None:
        """An INVITE we proxied was answered: both parties are in a call until a BYE."""
        if self.on_call is None or invite.call_id in self._active_calls:
            return
        parties = []
        for uri in (invite.from_.uri, invite.to.uri):
            with contextlib.suppress(ValueError):
                parties.append(canonical_aor(uri).removeprefix("sips:").removeprefix("sip:"))
        now = time.monotonic()
        while self._active_calls:  # calls whose BYE we never saw are forgotten eventually
            oldest = next(iter(self._active_calls.values()))
            if now - oldest[0] < MAX_CALL_SECONDS and len(self._active_calls) < MAX_CALLS:
                break
            self._active_calls.popitem(last=False)
        self._active_calls[invite.call_id] = (now, tuple(parties))
        for party in parties:
            self.on_call(party, True)

    def _call_ended(self, call_id: str) -> None:
        entry = self._active_calls.pop(call_id, None)
        if entry is not None and self.on_call is not None:
            for party in entry[1]:
                self.on_call(party, False)

    def _respond(self, ctx: ForkContext, tx: ServerTransaction, response: SipResponse) -> None:
        call = self._held_calls.get(id(ctx))
        if call is not None and response.status >= 200:
            call.final(response.status, ctx.binding_of(ctx.decided_by))
        if ctx.invite and 200 <= response.status < 300 and ctx.request.to.tag is None:
            self._call_started(ctx.request)
        request = self._gateway_registers.pop(id(ctx), None)
        if request is not None and 200 <= response.status < 300:
            flow = self.driver.flow_of(tx)
            if flow is not None:
                self._spawn(self._store_gateway_binding(request, response, flow))
        self.driver.respond(tx, response)

    def _forget(self, ctx: ForkContext, tx: ServerTransaction) -> None:
        if self._contexts.get(id(tx)) is ctx:
            del self._contexts[id(tx)]
        self._held_calls.pop(id(ctx), None)
        handle = self._expiry.pop(id(tx), None)
        if handle is not None:
            handle.cancel()
        self._gateway_registers.pop(id(ctx), None)
        for branch in ctx.branches:
            client = self._branch_tx.pop(branch, None)
            if client is not None:
                self._branches.pop(id(client), None)
                give_up = self._give_ups.pop(id(client), None)
                if give_up is not None:
                    give_up.cancel()

    def _send_branch(self, ctx: ForkContext, tx: ServerTransaction, action: Forward) -> None:
        flow = action.flow or numeric_flow(action.hop)
        if flow is not None:
            self._start_branch(ctx, tx, action, flow)
        else:
            self._spawn(self._resolve_branch(ctx, tx, action))

    async def _resolve_branch(
        self, ctx: ForkContext, tx: ServerTransaction, action: Forward
    ) -> None:
        try:
            flows = await resolve(action.hop, self._dns)
        except OSError:
            flows = []
        if not flows:
            self._branch_failed(ctx, tx, action.branch, 503)
            return
        flow = flows[0]
        if flow.transport != action.hop.transport:
            # NAPTR chose the transport: Via and Record-Route must name that one.
            rerouted = ctx.reroute(action.branch, flow)
            if rerouted is None:
                self._branch_failed(ctx, tx, action.branch, 503)
                return
            action = replace(rerouted, hop=replace(rerouted.hop, host=action.hop.host))
        self._start_branch(ctx, tx, action, flow)

    def _start_branch(
        self, ctx: ForkContext, tx: ServerTransaction, action: Forward, flow: Flow
    ) -> None:
        branch = action.branch
        server_name = action.hop.host if flow.transport == "TLS" else None
        client = self.driver.send_request(action.request, flow, server_name=server_name)
        if client.terminated:
            return  # failed at once; on_client_failure already ran
        self._branches[id(client)] = (ctx, tx, branch)
        self._branch_tx[branch] = client

    def _cancel(self, cancel: SipRequest, tx: ServerTransaction) -> None:
        """§16.10: answer the CANCEL, then cancel the branches (or the pending lookup)."""
        invite = self.driver.layer.invite_for_cancel(cancel)
        if invite is None:
            self.driver.respond(tx, make_response(cancel, 481, to_tag=new_tag()))
            return
        self.driver.respond(tx, make_response(cancel, 200, to_tag=new_tag()))
        ctx = self._contexts.get(id(invite))
        if ctx is not None:
            call = self._held_calls.get(id(ctx))
            if call is not None:
                # Before the fork answers 487: the Reason says how the call ended (RFC 3326).
                call.cancelled(cancel.headers.get("Reason"))
            self._run(ctx, invite, ctx.cancel())
        elif isinstance(invite, ServerInviteTransaction) and invite.state is State.PROCEEDING:
            # Still looking the targets up (or waiting for a push): answer for them.
            self._cancelled.add(id(invite))
            self.driver.respond(invite, make_response(invite.request, 487, to_tag=new_tag()))

    def _forward_ack(self, request: SipRequest, flow: Flow) -> None:
        assert self.core is not None
        request = request.copy()
        try:
            self.core.check(request)
            # We Record-Route every dialog, so an ACK for a 2xx names us in its Route; one
            # that does not is a stray (e.g. for a non-2xx whose transaction is gone).
            routed = self.core.preprocess_routes(request, flow)
            if not routed.popped:
                return
            usable = routed.flow is not None and self.transport.has_flow(routed.flow)
            forward = self.core.stateless(request, flow, routed.flow if usable else None)
        except (RequestError, SipParseError):
            return  # an ACK is never answered
        target = forward.flow or numeric_flow(forward.hop)
        if target is not None:
            self.driver.send_stateless(forward.request, target)
        else:
            self._spawn(self._send_resolved(forward.request, forward.hop))

    async def _send_resolved(self, message: SipRequest, hop: Hop) -> None:
        with contextlib.suppress(OSError):
            # The ACK's Via is built for the hop's transport: only flows of that one do.
            flows = [f for f in await resolve(hop, self._dns) if f.transport == hop.transport]
            if flows:
                self.driver.send_stateless(message, flows[0], server_name=hop.host)

    def _forward_stray(self, response: SipResponse) -> None:
        assert self.core is not None
        out = self.core.stray_response(response)
        if out is None:
            return
        self.driver.send_stateless(out, via_flow(out.top_via))


class _ProxiedCall:
    """The proxy's ``CallControl`` for one INVITE held for call push."""

    def __init__(self, node: SipNode, ctx: ForkContext, tx: ServerTransaction) -> None:
        self._node, self._ctx, self._tx = node, ctx, tx

    def provisional(self, status: int, reason: str) -> None:
        self._node._run(self._ctx, self._tx, self._ctx.provisional(status, reason))

    def respond(self, status: int, reason: str) -> None:
        self._node._run(self._ctx, self._tx, self._ctx.respond(status, reason))

    def forward(self, binding: Binding) -> None:
        ctx = self._ctx
        target = self._node._target(binding)
        if target is None:
            # Its connection is gone again: nothing to fork to; the call goes on as it was.
            log.info(
                "sip.push.forward_unreachable", binding=binding.id, call_id=ctx.request.call_id
            )
            return
        actions = ctx.add_target(replace(target, binding_id=binding.id))
        self._node._run(ctx, self._tx, [*actions, *ctx.release()])

    def extend(self, number: str) -> None:
        node, ctx = self._node, self._ctx
        if node.upstream is None:
            log.warning("sip.push.no_mobility_route", call_id=ctx.request.call_id)
            self.respond(480, "Temporarily Unavailable")
            return
        uri = parse_uri(f"sip:{number}@{format_host(node.upstream.host)}")
        actions = ctx.add_target(Target(uri, routes=(node._upstream_route(),)))
        node._run(ctx, self._tx, [*actions, *ctx.release()])


def load_digest_secret(data_dir: Path) -> bytes:
    """The nonce key of this node, made on first start (0600 in ``data_dir``). Nodes of one
    cluster can share the file so any of them accepts the others' nonces."""
    return load_or_create_secret(data_dir / DIGEST_SECRET_FILE)


def client_ssl_context(settings: SipSettings) -> ssl.SSLContext | None:
    """Trust for outbound TLS (upstream PBX, devices' TLS flows): ``tls_ca_file`` or the system."""
    if not settings.tls_ca_file:
        return None
    return ssl.create_default_context(cafile=settings.tls_ca_file)
