"""Registrar of the call node: RFC 3261 §10.3, RFC 5626 §6.1 and RFC 8599 push bindings.

``Registrar.handle`` is the sans-IO core: it takes a REGISTER, the AOR's current bindings, the
authenticating user's record and the time, and returns the response plus the binding changes
and events, without touching storage. ``RegistrarService`` is the thin async layer that looks
the user and bindings up in a ``SipRepository``, saves the changes and hands back the outcome.

A transport layer drives it like this::

    # ``flow``: the arrival flow (any FlowAddress, e.g. Source("TCP", host, port))
    outcome = await service.register(request, source=flow, now=now)
    send(outcome.response)            # through the server transaction
    for event in outcome.events:      # BindingAdded / BindingRefreshed / BindingRemoved
        call_push.on_binding_event(event)

and, on a timer, ``await service.sweep(now)`` (expired bindings) and
``scheduler.due(await repo.list_bindings(), now)`` (refresh pushes, RFC 8599 §5.5).
"""

from __future__ import annotations

import asyncio
import functools
import re
import secrets
import sys
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Protocol
from urllib.parse import unquote as unescape

from ucpush.sip.digest import (
    MD5,
    SHA256,
    DigestAuth,
    DigestCredentials,
    DigestParseError,
    credentials_for,
)
from ucpush.sip.errors import SipParseError
from ucpush.sip.helpers import make_response, new_tag
from ucpush.sip.message import Contact, SipRequest, SipResponse
from ucpush.sip.uri import URI, SipURI, parse_name_addr, parse_uri, quote
from ucpush.store.repository import Binding, NotFound, SipUser

# RFC 8599 §5.5: the refresh push is RECOMMENDED at least 120 s before the binding expires.
PUSH_REFRESH_LEAD = 120
SUPPORTED_OPTIONS = frozenset({"path", "outbound"})
# pn_extra of every binding without vendor pn-* parameters (most): one object, never mutated.
NO_PN_EXTRA: dict[str, str] = {}
_PN_CORE = ("pn-provider", "pn-prid", "pn-param")
# PNS types whose pushes cannot be addressed without pn-param (RFC 8599 §9: APNs topic, FCM
# project).
_NEEDS_PN_PARAM = frozenset({"apns", "fcm"})
# ``+sip.pns`` as a feature-capability indicator, not ``+sip.pnsreg``/``+sip.pnspurr``.
_PNS_CAP_RE = re.compile(r"\+sip\.pns[ \t]*=")


@dataclass(frozen=True, slots=True)
class RegistrarConfig:
    """Registrar policy.

    ``domains``: the Request-URI hosts (and AOR domains) served; empty serves any.
    ``push_providers``: pn-provider values this node pushes for (RFC 8599 §10 names).
    ``reject_unsupported_pns``: answer 555 to an unsupported pn-provider; only right when no
    other proxy on the path can push for it (RFC 8599 §5.6.1.1); otherwise the binding is
    stored without push. ``push_min_expires``: shortest binding accepted with push (423 below
    it) so the refresh push, sent ``PUSH_REFRESH_LEAD`` s before expiry, still leaves the UA
    registered for a while. ``pnsreg_lead``: the ``+sip.pnsreg`` value offered to UAs that can
    refresh unaided: they must re-REGISTER that many seconds before expiry (RFC 8599 §5.6.1.1
    wants more than 120). ``purr``: hand out a PURR (RFC 8599 §6) per push binding, renewed
    every ``purr_rotation`` seconds. ``max_bindings``: most contacts one AOR may have (403
    beyond).
    """

    realm: str = ""
    domains: frozenset[str] = frozenset()
    min_expires: int = 60
    max_expires: int = 3600
    default_expires: int = 3600
    push_providers: frozenset[str] = frozenset({"apns", "fcm"})
    reject_unsupported_pns: bool = True
    push_min_expires: int = 2 * PUSH_REFRESH_LEAD
    pnsreg_lead: int = 180
    purr: bool = True
    purr_rotation: int = 86400
    max_bindings: int = 20

    def __post_init__(self) -> None:
        if not 0 < self.min_expires <= self.default_expires <= self.max_expires:
            raise ValueError("need 0 < min_expires <= default_expires <= max_expires")
        if not PUSH_REFRESH_LEAD < self.push_min_expires <= self.max_expires:
            raise ValueError(f"push_min_expires must be in ({PUSH_REFRESH_LEAD}, max_expires]")
        if self.purr_rotation <= 0 or self.max_bindings <= 0:
            raise ValueError("purr_rotation and max_bindings must be positive")
        if self.pnsreg_lead <= PUSH_REFRESH_LEAD:
            raise ValueError(f"pnsreg_lead must exceed {PUSH_REFRESH_LEAD}")


class FlowAddress(Protocol):
    """Where a REGISTER arrived from: the flow requests to the UA go back on (RFC 5626).
    The transport layer's flow objects fit as they are."""

    @property
    def transport(self) -> str: ...
    @property
    def host(self) -> str: ...
    @property
    def port(self) -> int: ...


@dataclass(frozen=True, slots=True)
class Source:
    """A plain ``FlowAddress``."""

    transport: str
    host: str
    port: int


@dataclass(frozen=True, slots=True)
class BindingAdded:
    binding: Binding


@dataclass(frozen=True, slots=True)
class BindingRefreshed:
    """Same binding registered again (its contact, flow or pn-* parameters may have changed;
    ``previous`` is how it was)."""

    binding: Binding
    previous: Binding


@dataclass(frozen=True, slots=True)
class BindingRemoved:
    binding: Binding
    reason: str  # "unregistered" | "expired"


BindingEvent = BindingAdded | BindingRefreshed | BindingRemoved


@dataclass(frozen=True, slots=True)
class RegisterOutcome:
    """What one REGISTER leads to. ``upsert``/``remove`` must be saved atomically (see
    ``SipRepository.save_bindings``) before the response is sent and the events published.
    ``reason`` says in words why the request was refused (for logs), or "ok"."""

    response: SipResponse
    aor: str | None = None
    upsert: list[Binding] = field(default_factory=list)
    remove: list[str] = field(default_factory=list)
    events: list[BindingEvent] = field(default_factory=list)
    reason: str = "ok"

    @property
    def bindings_changed(self) -> bool:
        return bool(self.upsert or self.remove)


class _Reject(Exception):
    def __init__(self, status: int, reason: str, headers: Iterable[tuple[str, str]] = ()) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.headers = list(headers)


# A stored contact is compared with each REGISTER of its AOR: parse each one once (URIs are
# immutable). Bounded, so contacts that come and go cannot grow it.
_stored_uri = functools.lru_cache(maxsize=8192)(parse_uri)


def canonical_aor(uri: URI) -> str:
    """RFC 3261 §10.3 step 5: URI parameters dropped, user unescaped, host lower-cased.
    sips: and sip: name the same AOR."""
    if not isinstance(uri, SipURI) or uri.user is None:
        raise ValueError("an AOR must be a SIP URI with a user part")
    port = "" if uri.port is None else f":{uri.port}"
    return f"sip:{unescape(uri.user)}@{uri.host.lower()}{port}"


def push_params_match(uri: URI, binding: Binding) -> bool:
    """RFC 8599 §5.3: does a held request's Request-URI address ``binding``? RFC 3261 URI
    comparison plus exact pn-provider/pn-prid/pn-param (present on one side only: no match)."""
    if not isinstance(uri, SipURI):
        return False
    try:
        stored = parse_uri(binding.contact)
    except SipParseError:
        return False
    if not isinstance(stored, SipURI) or not uri.equivalent(stored):
        return False
    mine, theirs = uri.pn_params, stored.pn_params
    return all(mine.get(name) == theirs.get(name) for name in _PN_CORE)


def _supports(request: SipRequest, option: str) -> bool:
    return any(v.strip().lower() == option for v in request.headers.get_all("Supported"))


def _outbound_path(request: SipRequest) -> bool:
    """RFC 5626 §6: outbound applies when the UA is our first hop, or the first Path entry
    (its edge proxy) carries ``ob``."""
    if len(request.headers.get_all("Via")) == 1:
        return True
    paths = request.headers.get_all("Path")
    if not paths:
        return False
    edge = parse_name_addr(paths[0], "Path").uri
    return isinstance(edge, SipURI) and edge.param("ob") is not None


def _contact_value(binding: Binding, now: datetime) -> str:
    expires = max(0, int((binding.expires_at - now).total_seconds()))
    out = f"<{binding.contact}>;expires={expires}"
    if binding.q is not None:
        out += f";q={binding.q:g}"
    if binding.instance_id:
        out += f";+sip.instance={quote(binding.instance_id)}"
    if binding.reg_id is not None:
        out += f";reg-id={binding.reg_id}"
    if binding.pnsreg:
        out += ";+sip.pnsreg"
    return out


@dataclass(slots=True)
class _Requested:
    """One Contact of the REGISTER, checked and resolved."""

    contact: Contact
    expires: int
    instance_id: str
    reg_id: int | None
    pn: dict[str, str]
    push: bool  # this node pushes for the binding
    pnsreg: bool


class Registrar:
    """Sans-IO REGISTER processing. ``auth`` None turns authentication off (tests, trusted
    networks); otherwise every REGISTER must carry valid Digest credentials of a user whose
    AOR is the To URI."""

    def __init__(self, config: RegistrarConfig, auth: DigestAuth | None = None) -> None:
        if auth is not None and auth.realm != config.realm:
            raise ValueError("the digest realm must be the registrar's realm")
        self.config = config
        self.auth = auth
        self._last_credentials: tuple[
            SipRequest | None, DigestCredentials | DigestParseError | None
        ] = (None, None)

    # authentication

    def _credentials(self, request: SipRequest) -> DigestCredentials | None:
        """Our realm's credentials (RFC 3261 §22.4: a request may carry one set per realm);
        None when there are none. Raises DigestParseError when nothing usable is there but
        something malformed is. The last request's answer is kept: ``auth_user_key`` and
        ``handle`` both ask for it."""
        last_request, last = self._last_credentials
        if last_request is request:
            if isinstance(last, DigestParseError):
                raise last
            return last
        try:
            creds = self._parse_credentials(request)
        except DigestParseError as exc:
            self._last_credentials = (request, exc)
            raise
        self._last_credentials = (request, creds)
        return creds

    def _parse_credentials(self, request: SipRequest) -> DigestCredentials | None:
        found = credentials_for(request.headers.get_all("Authorization"), self.config.realm)
        return found[0] if found is not None else None

    def auth_user_key(self, request: SipRequest) -> tuple[str, str] | None:
        """(username, realm) to look the authenticating user up by; None when there are no
        usable credentials (the request then gets a challenge or a 400)."""
        if self.auth is None:
            return None
        try:
            creds = self._credentials(request)
        except DigestParseError:
            return None
        return None if creds is None else (creds.username, creds.realm)

    def _authenticate(
        self, request: SipRequest, aor: str, user: SipUser | None, now: datetime
    ) -> None:
        assert self.auth is not None
        try:
            creds = self._credentials(request)
        except DigestParseError as exc:
            raise _Reject(400, f"Malformed Authorization: {exc.reason}") from None
        if creds is None:
            raise self._challenge(now, "no credentials for our realm")
        if user is None or (user.username, user.realm) != (creds.username, creds.realm):
            # Same answer as a wrong password: do not reveal which accounts exist.
            raise self._challenge(now, f"unknown user {creds.username!r}")
        verdict = self.auth.verify(
            creds,
            method=request.method,
            request_uri=str(request.uri),
            ha1={MD5: user.ha1_md5, SHA256: user.ha1_sha256},
            now=now,
        )
        if not verdict.ok:
            raise self._challenge(now, verdict.reason, stale=verdict.stale)
        if canonical_aor(parse_uri(user.aor)) != aor:
            raise _Reject(403, f"user {user.username!r} may not register {aor}")

    def _challenge(self, now: datetime, reason: str, *, stale: bool = False) -> _Reject:
        assert self.auth is not None
        return _Reject(401, reason, self.auth.challenge(now, stale=stale))

    # REGISTER

    def handle(
        self,
        request: SipRequest,
        *,
        now: datetime,
        source: FlowAddress,
        bindings: Sequence[Binding],
        user: SipUser | None = None,
    ) -> RegisterOutcome:
        """Process a REGISTER. ``now`` is timezone-aware. ``bindings``: the stored bindings of
        the To AOR (expired ones included; they are dropped here). ``user``: the account
        ``auth_user_key`` named."""
        if request.method != "REGISTER":
            raise ValueError(f"not a REGISTER: {request.method}")
        aor: str | None = None
        try:
            aor = self._check_request(request)
            if self.auth is not None:
                self._authenticate(request, aor, user, now)
            return self._update(request, aor, now, source, bindings)
        except _Reject as exc:
            response = make_response(
                request,
                exc.status,
                exc.reason if exc.status in (400, 420) else None,
                to_tag=new_tag(),
                headers=exc.headers,
            )
            return RegisterOutcome(response, aor, reason=exc.reason)
        except SipParseError as exc:
            response = make_response(request, 400, exc.reason, to_tag=new_tag())
            return RegisterOutcome(response, aor, reason=exc.reason)

    def _check_request(self, request: SipRequest) -> str:
        """RFC 3261 §10.3 steps 1, 2 and 5; returns the AOR."""
        domains = self.config.domains
        uri = request.uri
        if not isinstance(uri, SipURI):
            raise _Reject(416, "Request-URI must be a SIP URI")
        if domains and uri.host.lower() not in domains:
            raise _Reject(404, f"domain {uri.host} not served here")
        unsupported = [
            tag
            for value in request.headers.get_all("Require")
            for tag in [value.strip().lower()]
            if tag not in SUPPORTED_OPTIONS
        ]
        if unsupported:
            raise _Reject(420, "Bad Extension", [("Unsupported", ", ".join(unsupported))])
        to_uri = request.to.uri
        try:
            aor = canonical_aor(to_uri)
        except ValueError as exc:
            raise _Reject(404, str(exc)) from None
        if domains and isinstance(to_uri, SipURI) and to_uri.host.lower() not in domains:
            raise _Reject(404, f"AOR {aor} not in a domain served here")
        return aor

    def _expires(self, contact: Contact, header: int | None) -> int:
        """The contact's requested lifetime (§10.3 step 7), clamped to ``max_expires``."""
        if contact.param("expires") is not None:
            if contact.expires is None:
                raise _Reject(400, "Malformed Contact expires")
            requested = contact.expires
        else:
            requested = self.config.default_expires if header is None else header
        return min(requested, self.config.max_expires)

    def _push_role(self, request: SipRequest) -> bool:
        """False when another proxy on the path already took the push role (RFC 8599 §5.6.1)."""
        return not any(_PNS_CAP_RE.search(v) for v in request.headers.get_all("Feature-Caps"))

    def _requested(self, request: SipRequest, ours: bool) -> tuple[list[_Requested], list[str]]:
        """Check each Contact; returns them and the pn-provider values to confirm in a 2xx
        Feature-Caps (capability queries included)."""
        header_expires = request.expires
        out: list[_Requested] = []
        confirm: list[str] = []
        providers = self.config.push_providers
        outbound_path = _outbound_path(request)
        for contact in request.contacts:
            expires = self._expires(contact, header_expires)
            q = contact.param("q")
            if q is not None and (contact.q is None or not 0 <= contact.q <= 1):
                raise _Reject(400, "Malformed Contact q-value")
            instance = contact.instance or ""
            # RFC 5626 §6: reg-id means nothing without +sip.instance, nor when no outbound
            # edge proxy vouches for the flow (439 if the UA insists on outbound).
            reg_id = contact.reg_id if instance else None
            if reg_id is not None and not outbound_path:
                if _supports(request, "outbound"):
                    raise _Reject(439, "first hop lacks outbound support")
                reg_id = None
            uri = contact.uri
            pn = uri.pn_params if isinstance(uri, SipURI) else {}
            pnsreg = contact.param("+sip.pnsreg") is not None
            push = False
            if ours and "pn-provider" in pn and expires > 0:
                provider = pn["pn-provider"]
                prid = pn.get("pn-prid", "")
                # An empty pn-provider asks about every PNS we support (RFC 8599 §4.1.4).
                wanted = sorted(providers) if provider == "" else [provider]
                supported = [p for p in wanted if p in providers]
                if not supported:
                    if self.config.reject_unsupported_pns:
                        raise _Reject(555, f"push service {provider!r} not supported")
                elif not prid or not provider:
                    # Capability query: confirm, but there is nothing to push to.
                    confirm += [p for p in supported if p not in confirm]
                elif provider in _NEEDS_PN_PARAM and not pn.get("pn-param"):
                    # Incomplete push request: registered without push and not confirmed,
                    # so the UA knows not to rely on it (RFC 8599 §5.6.1.1).
                    pass
                else:
                    push = True
                    confirm += [provider] if provider not in confirm else []
            # A push binding must outlive its refresh push (RFC 8599 §5.6.1.1) unless the UA
            # refreshes on its own (+sip.pnsreg).
            floor = self.config.min_expires
            if push and not pnsreg:
                floor = max(floor, self.config.push_min_expires)
            if 0 < expires < floor:
                raise _Reject(423, "expires too short", [("Min-Expires", str(floor))])
            out.append(_Requested(contact, expires, instance, reg_id, pn, push, pnsreg))
        live = [r for r in out if r.expires > 0]
        if len(live) > 1 and any(r.reg_id is not None for r in live):
            # RFC 5626 §6: a reg-id registration is one flow of one instance.
            raise _Reject(400, "reg-id with more than one Contact to register")
        return out, confirm

    def _find(self, current: list[Binding], req: _Requested) -> Binding | None:
        """The binding a Contact refers to: same +sip.instance (and reg-id) per RFC 5626
        §6.1, else the RFC 3261 §19.1.4-equivalent contact URI without an instance."""
        if req.instance_id:
            for b in current:
                if b.instance_id == req.instance_id and b.reg_id == req.reg_id:
                    return b
            return None
        for b in current:
            if b.instance_id:
                continue
            try:
                if req.contact.uri.equivalent(_stored_uri(b.contact)):
                    return b
            except SipParseError:
                continue
        return None

    def _update(
        self,
        request: SipRequest,
        aor: str,
        now: datetime,
        source: FlowAddress,
        stored: Sequence[Binding],
    ) -> RegisterOutcome:
        call_id = request.call_id
        cseq = request.cseq.seq
        current = [b for b in stored if b.expires_at > now]
        events: list[BindingEvent] = [
            BindingRemoved(b, "expired") for b in stored if b.expires_at <= now
        ]
        remove = [b.id for b in stored if b.expires_at <= now]
        upsert: dict[str, Binding] = {}
        confirm: list[str] = []
        requested: list[_Requested] = []

        if request.contact_wildcard:
            # RFC 3261 §10.3 step 6: "*" only with Expires: 0, and it removes everything.
            if request.expires != 0:
                raise _Reject(400, "Contact '*' requires Expires: 0")
            for b in current:
                if b.call_id == call_id and cseq <= b.cseq:
                    raise _Reject(500, "CSeq out of order", [("Retry-After", "1")])
            remove += [b.id for b in current]
            events += [BindingRemoved(b, "unregistered") for b in current]
            current = []
        else:
            ours = self._push_role(request)
            requested, confirm = self._requested(request, ours)

        path = tuple(request.headers.get_all("Path"))
        user_agent = request.headers.get("User-Agent") or ""
        for req in requested:
            found = self._find(current, req)
            if (
                found is not None
                and found.id not in upsert  # an earlier Contact of this very request
                and found.call_id == call_id
                and cseq <= found.cseq
            ):
                # Step 7: a stale or reordered request must not undo a newer one.
                raise _Reject(500, "CSeq out of order", [("Retry-After", "1")])
            if req.expires == 0:
                if found is not None:
                    upsert.pop(found.id, None)
                    remove.append(found.id)
                    events.append(BindingRemoved(found, "unregistered"))
                    current.remove(found)
                continue
            binding = self._binding(req, aor, now, source, call_id, cseq, path, user_agent)
            if found is None:
                binding = self._with_purr(binding, None, now)
                current.append(binding)
                events.append(BindingAdded(binding))
            else:
                binding = self._with_purr(replace(binding, id=found.id), found, now)
                current[current.index(found)] = binding
                events.append(BindingRefreshed(binding, found))
            upsert[binding.id] = binding

        headers: list[tuple[str, str]] = [
            ("Contact", _contact_value(b, now))
            for b in sorted(current, key=lambda b: b.updated_at, reverse=True)
        ]
        headers += [("Path", p) for p in path]
        if _supports(request, "outbound") and any(r.reg_id is not None for r in requested):
            headers.append(("Require", "outbound"))
        headers += self._feature_caps(confirm, requested, list(upsert.values()))
        if len(current) > self.config.max_bindings:
            # One account must not fill the location store (or the fork set of its calls).
            raise _Reject(403, f"more than {self.config.max_bindings} bindings for {aor}")
        headers.append(("Date", format_datetime(now.astimezone(UTC), usegmt=True)))
        response = make_response(request, 200, to_tag=new_tag(), headers=headers)
        return RegisterOutcome(response, aor, list(upsert.values()), remove, events)

    def _binding(
        self,
        req: _Requested,
        aor: str,
        now: datetime,
        source: FlowAddress,
        call_id: str,
        cseq: int,
        path: tuple[str, ...],
        user_agent: str,
    ) -> Binding:
        pn = req.pn if req.push else {}
        return Binding(
            id=secrets.token_hex(16),
            aor=aor,
            contact=str(req.contact.uri),
            expires_at=now + timedelta(seconds=req.expires),
            call_id=call_id,
            cseq=cseq,
            updated_at=now,
            instance_id=req.instance_id,
            reg_id=req.reg_id,
            q=req.contact.q,
            path=path,
            # Interned: shared by the many bindings of one app, transport or edge proxy.
            source_transport=sys.intern(source.transport),
            source_host=sys.intern(source.host),
            source_port=source.port,
            pn_provider=sys.intern(pn.get("pn-provider", "")),
            pn_prid=pn.get("pn-prid", ""),
            pn_param=sys.intern(pn.get("pn-param", "")),
            pn_extra={k: v for k, v in pn.items() if k not in _PN_CORE} or NO_PN_EXTRA,
            pnsreg=req.pnsreg,
            user_agent=sys.intern(user_agent),
        )

    def _with_purr(self, binding: Binding, previous: Binding | None, now: datetime) -> Binding:
        """RFC 8599 §6: a random PURR per push binding, replaced every ``purr_rotation``
        seconds and whenever the push target changes, so it cannot be used to track the
        device. The replaced value stays valid as ``purr_previous`` for one more period, so
        dialogs that carry it can still be pushed."""
        if not (self.config.purr and binding.push_enabled):
            return binding
        fresh = secrets.token_hex(16)
        if previous is None or not previous.purr or previous.purr_issued_at is None:
            return replace(binding, purr=fresh, purr_issued_at=now)
        same_target = all(
            getattr(previous, a) == getattr(binding, a)
            for a in ("pn_provider", "pn_prid", "pn_param")
        )
        age = now - previous.purr_issued_at
        if same_target and age < timedelta(seconds=self.config.purr_rotation):
            return replace(
                binding,
                purr=previous.purr,
                purr_previous=previous.purr_previous,
                purr_issued_at=previous.purr_issued_at,
            )
        return replace(binding, purr=fresh, purr_previous=previous.purr, purr_issued_at=now)

    def _feature_caps(
        self, confirm: list[str], requested: list[_Requested], saved: list[Binding]
    ) -> list[tuple[str, str]]:
        """One Feature-Caps per confirmed PNS (RFC 8599 §5.4), carrying ``+sip.pnsreg`` and
        ``+sip.pnspurr`` for that PNS's push binding of this request."""
        out: list[tuple[str, str]] = []
        for provider in confirm:
            value = f'*;+sip.pns="{provider}"'
            if any(r.pnsreg and r.pn.get("pn-provider") == provider for r in requested):
                value += f';+sip.pnsreg="{self.config.pnsreg_lead}"'
            purr = next((b.purr for b in saved if b.pn_provider == provider and b.purr), "")
            if purr:
                value += f';+sip.pnspurr="{purr}"'
            out.append(("Feature-Caps", value))
        return out


# Refresh pushes (RFC 8599 §5.5)


def refresh_due_at(binding: Binding, lead: int = PUSH_REFRESH_LEAD) -> datetime | None:
    """When ``binding`` needs a refresh push: ``lead`` seconds before it expires. None when we
    do not push for it, or when it is so short-lived that the moment falls before it was
    registered (only a ``+sip.pnsreg`` UA gets such a binding; it refreshes on its own)."""
    if not binding.push_enabled:
        return None
    due = binding.expires_at - timedelta(seconds=lead)
    return None if due < binding.updated_at else due


def refresh_pushes_due(
    bindings: Iterable[Binding],
    now: datetime,
    sent: Mapping[str, datetime] | None = None,
    lead: int = PUSH_REFRESH_LEAD,
) -> list[Binding]:
    """Bindings to push now so the device re-REGISTERs before expiry. A binding the device
    refreshed in time has moved its expiry and is not due; ``sent`` maps binding ids to the
    ``expires_at`` already pushed for, so each expiry gets one push. Never an expired binding."""
    sent = sent or {}
    out = []
    for b in bindings:
        due = refresh_due_at(b, lead)
        if due is not None and due <= now < b.expires_at and sent.get(b.id) != b.expires_at:
            out.append(b)
    return out


class RefreshScheduler:
    """Remembers which refresh pushes went out. Call ``due`` when ``next_wakeup`` comes (or
    after any binding change) with the current bindings."""

    def __init__(self, lead: int = PUSH_REFRESH_LEAD) -> None:
        self.lead = lead
        self._sent: dict[str, datetime] = {}

    def due(self, bindings: Iterable[Binding], now: datetime) -> list[Binding]:
        bindings = list(bindings)
        live = {b.id for b in bindings}
        # Forget pushes for bindings that are gone.
        self._sent = {k: v for k, v in self._sent.items() if k in live}
        out = refresh_pushes_due(bindings, now, self._sent, self.lead)
        for b in out:
            self._sent[b.id] = b.expires_at
        return out

    def next_wakeup(self, bindings: Iterable[Binding]) -> datetime | None:
        """Earliest refresh moment not yet pushed for."""
        times = [
            due
            for b in bindings
            if (due := refresh_due_at(b, self.lead)) is not None
            and self._sent.get(b.id) != b.expires_at
        ]
        return min(times, default=None)


# Storage glue


class RegistrarStorage(Protocol):
    """The part of ``SipRepository`` the service uses."""

    async def get_user(self, username: str, realm: str) -> SipUser: ...
    async def list_bindings(self, aor: str | None = None) -> list[Binding]: ...
    async def save_bindings(self, aor: str, upsert: list[Binding], remove: list[str]) -> None: ...
    async def remove_expired(self, now: datetime) -> list[Binding]: ...


class RegistrarService:
    """Runs ``Registrar`` against storage (a ``SipRepository``). REGISTERs for one AOR are
    serialised in this process so their read-modify-write of the bindings cannot interleave."""

    def __init__(
        self,
        registrar: Registrar,
        repository: RegistrarStorage,
        *,
        on_auth_failure: Callable[[str, str], None] | None = None,
    ) -> None:
        """``on_auth_failure(username, realm)`` runs when presented credentials were refused
        with a 401 (a user cache drops the account there, so it is re-read next time)."""
        self.registrar = registrar
        self.repository = repository
        self.on_auth_failure = on_auth_failure
        self._locks: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()

    async def register(
        self, request: SipRequest, *, source: FlowAddress, now: datetime
    ) -> RegisterOutcome:
        user = None
        key = self.registrar.auth_user_key(request)
        if key is not None:
            try:
                user = await self.repository.get_user(*key)
            except NotFound:
                user = None
        try:
            aor = canonical_aor(request.to.uri)
        except ValueError:  # SipParseError included: handle() gives the answer
            return self.registrar.handle(request, now=now, source=source, bindings=[], user=user)
        lock = self._locks.setdefault(aor, asyncio.Lock())
        async with lock:
            bindings = await self.repository.list_bindings(aor)
            outcome = self.registrar.handle(
                request, now=now, source=source, bindings=bindings, user=user
            )
            if outcome.bindings_changed:
                await self.repository.save_bindings(aor, outcome.upsert, outcome.remove)
        if key is not None and outcome.response.status == 401 and self.on_auth_failure:
            self.on_auth_failure(*key)
        return outcome

    async def sweep(self, now: datetime) -> list[BindingRemoved]:
        """Delete expired bindings; the call-push logic must stop pushing to them."""
        return [BindingRemoved(b, "expired") for b in await self.repository.remove_expired(now)]
