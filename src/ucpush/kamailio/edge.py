"""The node's HTTP API for a Kamailio edge (deploy/kamailio/push.cfg, docs/kamailio.md).

Kamailio holds an INVITE for push contacts and tells us (``POST /v1/edge/calls``); we run one
``CallRun`` per call with the node's dispatcher, device directory and timers, exactly as for
our own proxy. Our ``CallControl`` answers the caller through push.cfg's ``/edge/reply``
route on the held transaction (``KamailioClient``); the release to a woken device is the answer to
Kamailio's ``POST /v1/edge/registrations`` (the transactions to continue), so the INVITE goes
out in the same Kamailio worker that saved the binding, with no second round trip. Kamailio
reports the branches' 180/2xx/failures and the caller's CANCEL
(``POST /v1/edge/calls/{call_id}/events``), which drive the engine's follow-up pushes.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal
from urllib.parse import quote

import httpx
from fastapi import APIRouter, Depends, Header, HTTPException
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from ucpush.callpush.dispatcher import CallPushHandler, CallRun, invite_summary
from ucpush.callpush.engine import reason_cause
from ucpush.config import EdgeSettings
from ucpush.httpapi import error_response
from ucpush.logging import get_logger
from ucpush.sip.errors import SipParseError
from ucpush.sip.message import SipRequest
from ucpush.sip.registrar import canonical_aor
from ucpush.sip.uri import SipURI, parse_uri
from ucpush.store.repository import Binding

_log = get_logger("ucpush.kamailio")
EDGE_SECRET_HEADER = "X-Ucpush-Edge-Secret"
_URI_MAX = 1024
# Bindings Kamailio hands over without an expiry are treated as valid for this long.
_DEFAULT_LIFETIME = timedelta(hours=1)


class EdgeContact(BaseModel):
    model_config = ConfigDict(extra="forbid")

    uri: str = Field(min_length=1, max_length=_URI_MAX, description="Contact URI with pn-*")
    instance: str = Field("", max_length=256, description="+sip.instance, e.g. <urn:uuid:...>")
    expires: int | None = Field(None, ge=0, description="Kamailio's expiry (epoch seconds)")


class EdgeCallIn(BaseModel):
    """An INVITE Kamailio holds for the AOR's push contacts."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    transaction: str = Field(pattern=r"^[0-9]{1,10}:[0-9]{1,10}$", description="tindex:tlabel")
    call_id: str = Field(min_length=1, max_length=256)
    aor: str = Field(min_length=1, max_length=_URI_MAX, description="the callee's AOR")
    from_: str = Field(alias="from", min_length=1, max_length=_URI_MAX, description="From")
    asserted_identity: str = Field("", max_length=_URI_MAX, description="P-Asserted-Identity")
    diversion: str = Field("", max_length=_URI_MAX, description="Diversion (hunt pilot)")
    supported: str = Field("", max_length=512, description="the caller's Supported")
    live_branches: int = Field(0, ge=0, description="contacts Kamailio forked to at once")
    contacts: list[EdgeContact] = Field(min_length=1, max_length=32)


class EdgeCallOut(BaseModel):
    held: bool = Field(description="false: no device can be pushed, Kamailio answers itself")
    devices: int


class EdgeEventIn(BaseModel):
    """What happened to a held call on Kamailio's side."""

    model_config = ConfigDict(extra="forbid")

    event: Literal["ringing", "final", "branch_failed", "cancelled"]
    status: int | None = Field(None, ge=100, le=699)
    contact: str = Field("", max_length=_URI_MAX, description="the branch's Request-URI")
    reason: str = Field("", max_length=512, description="the CANCEL's Reason header")


class EdgeEventOut(BaseModel):
    handled: bool


class RegistrationIn(BaseModel):
    """A push binding Kamailio just saved."""

    model_config = ConfigDict(extra="forbid")

    aor: str = Field(min_length=1, max_length=_URI_MAX)
    contact: str = Field(min_length=1, max_length=_URI_MAX)
    instance: str = Field("", max_length=256)
    expires: int = Field(0, ge=0, description="seconds")


class RegistrationOut(BaseModel):
    release: str = Field(description="held transactions to release to it, tindex:tlabel,...")


class EdgeInputError(ValueError):
    """Input Kamailio sent that cannot be a SIP URI or AOR."""


def _sip_uri(text: str, what: str) -> SipURI:
    try:
        uri = parse_uri(text)
    except SipParseError as exc:
        raise EdgeInputError(f"{what} is not a SIP URI") from exc
    if not isinstance(uri, SipURI):
        raise EdgeInputError(f"{what} is not a SIP URI")
    return uri


def _aor(text: str) -> str:
    try:
        return canonical_aor(_sip_uri(text, "aor"))
    except ValueError as exc:
        raise EdgeInputError(f"aor: {exc}") from exc


def edge_binding(
    aor: str, contact: str, instance: str = "", expires_at: datetime | None = None
) -> Binding:
    """A Kamailio location entry as the engine's ``Binding``: pn-* from the Contact URI, id
    derived from the contact so events that name the contact find it again."""
    uri = _sip_uri(contact, "contact")
    pn = uri.pn_params
    now = datetime.now(UTC)
    return Binding(
        id="kam-" + hashlib.sha256(contact.encode()).hexdigest()[:24],
        aor=aor,
        contact=contact,
        expires_at=expires_at or now + _DEFAULT_LIFETIME,
        call_id="",
        cseq=0,
        updated_at=now,
        instance_id=instance,
        pn_provider=pn.get("pn-provider", ""),
        pn_prid=pn.get("pn-prid", ""),
        pn_param=pn.get("pn-param", ""),
    )


class KamailioError(Exception):
    pass


class KamailioClient:
    """Answers held INVITEs through push.cfg's HTTP route ``/edge/reply`` (xhttp on
    Kamailio's SIP TCP listener), authenticated with the edge secret.

    Not JSON-RPC ``tm.reply``: a provisional reply sent that way from an xhttp worker leaves
    the transaction referenced by that worker, whose end-of-route clean-up then releases it
    (it is gone a few seconds later, before our 480). The route resumes the suspended
    transaction (``t_continue``), replies, and suspends it again after a provisional."""

    def __init__(self, base_url: str, secret: str, timeout: float) -> None:
        self._client = httpx.AsyncClient(
            base_url=base_url, timeout=timeout, headers={EDGE_SECRET_HEADER: secret}
        )

    async def reply(self, transaction: str, status: int, reason: str) -> None:
        """Send ``status reason`` to the caller of the held INVITE ``tindex:tlabel``."""
        index, _, label = transaction.partition(":")
        # Spelled out: push.cfg decodes %XX only (no "+" for spaces).
        query = f"index={index}&label={label}&code={status}&reason={quote(reason, safe='')}"
        response = await self._client.post("/edge/reply?" + query)
        if response.status_code != 200:
            raise KamailioError(f"reply {status}: HTTP {response.status_code} {response.text}")

    async def aclose(self) -> None:
        await self._client.aclose()


class _EdgeCall:
    """One held call: the ``CallControl`` of its ``CallRun``, acting on Kamailio."""

    def __init__(self, edge: EdgeCalls, body: EdgeCallIn, aor: str) -> None:
        self.edge = edge
        self.transaction = body.transaction
        self.call_id = body.call_id
        self.aor = aor
        self.device_of: dict[str, str] = {}  # branch contact -> device id
        self.released = False  # set by forward() while a registration is being matched
        # Replies leave in the engine's order (a 110 or 180 never after the final answer).
        self.reply_order = asyncio.Lock()
        self.run: CallRun | None = None

    def device(self, contact: str) -> str | None:
        return self.device_of.get(contact) if contact else None

    # CallControl

    def provisional(self, status: int, reason: str) -> None:
        if status == 100:
            return  # push.cfg sent 100 Trying before it asked us
        self._reply(status, reason)

    def respond(self, status: int, reason: str) -> None:
        if status == 487:
            return  # Kamailio's tm answers the CANCELled INVITE itself when it relays CANCEL
        self._reply(status, reason)

    def forward(self, device_id: str, binding: Binding) -> None:
        # The registration handler tells Kamailio to release the INVITE to this contact.
        self.device_of[binding.contact] = device_id
        self.released = True

    def late_invite_cancel(self, device_id: str, binding: Binding, reason: str) -> None:
        # The call is over; the woken device learns it from its follow-up push (issue 5
        # allows either), since Kamailio keeps no transaction to send it INVITE+CANCEL on.
        assert self.run is not None
        self.run.push_follow_up(device_id)

    def extend(self, number: str) -> None:
        # No mobility identity is configured for edge calls (``EdgeCalls.start``), so the
        # engine never extends; should it, the caller still gets a final answer.
        _log.warning("edge call cannot extend to a mobility identity", call_id=self.call_id)
        self._reply(480, "Temporarily Unavailable")

    def _reply(self, status: int, reason: str) -> None:
        task = asyncio.get_running_loop().create_task(self.edge.reply(self, status, reason))
        self.edge.replies.add(task)
        task.add_done_callback(self.edge.replies.discard)


class EdgeCalls:
    """The held calls Kamailio announced, by Call-ID and by callee AOR."""

    def __init__(self, handler: CallPushHandler, kamailio: KamailioClient) -> None:
        self.handler = handler  # the node's dispatcher, device directory and timers
        self.kamailio = kamailio
        self.replies: set[asyncio.Task[None]] = set()  # replies to Kamailio on their way
        self._calls: dict[str, _EdgeCall] = {}
        self._by_aor: dict[str, set[_EdgeCall]] = {}

    def get(self, call_id: str) -> _EdgeCall | None:
        return self._calls.get(call_id)

    async def start(self, body: EdgeCallIn) -> int:
        """Start the call's push; the number of devices pushed (0: nothing to hold)."""
        aor = _aor(body.aor)
        bindings = [edge_binding(aor, c.uri, c.instance, _expiry(c.expires)) for c in body.contacts]
        caller = _caller_aor(body.from_)
        if body.call_id in self._calls:
            raise EdgeInputError("call_id is already held")
        pairs = await self.handler.directory.call_devices(bindings)
        if not pairs:
            return 0  # every device paused (dead token) or signed out
        profiles = self.handler.profiles
        profile = (await profiles.get_many({caller})).get(caller) if profiles else None
        headers = [("From", body.from_), ("Call-ID", body.call_id)]
        for name, value in (
            ("P-Asserted-Identity", body.asserted_identity),
            ("Diversion", body.diversion),
            ("Supported", body.supported),
        ):
            if value:
                headers.append((name, value))
        try:
            request = SipRequest("INVITE", aor, headers)
            invite = invite_summary(
                request,
                live_branches=body.live_branches > 0,
                presentation=profile.presentation if profile else ("", ""),
                push_sent_option=self.handler.push_sent_option,
            )
        except (SipParseError, ValueError) as exc:
            raise EdgeInputError(f"caller headers: {exc}") from exc
        call = _EdgeCall(self, body, aor)
        call.device_of = {device.binding.contact: device.id for device, _ in pairs}
        run = call.run = CallRun(
            self.handler.dispatcher,
            call,
            {device.id: target for device, target in pairs},
            self.handler.config,
            on_done=lambda _: self._forget(call),
        )
        self._calls[call.call_id] = call
        self._by_aor.setdefault(aor, set()).add(call)
        _log.info("edge call held", call_id=call.call_id, aor=aor, devices=len(pairs))
        # Push contacts are never forked to directly: their flows are gone (reachable=False).
        run.start(invite, [replace(device, reachable=False) for device, _ in pairs])
        return len(pairs)

    def event(self, call: _EdgeCall, event: EdgeEventIn) -> None:
        run = call.run
        assert run is not None
        now = run.now()
        device = call.device(event.contact)
        match event.event:
            case "ringing":
                run.feed(run.engine.device_ringing(now, device))
            case "final":
                run.feed(run.engine.final_response(now, event.status or 0, device))
            case "branch_failed":
                # Only branches of our devices count (a stale contact tsilo tried is none).
                if device is not None:
                    run.feed(run.engine.branch_failed(now, device, event.status or 0))
            case "cancelled":
                run.feed(run.engine.cancelled(now, reason_cause(event.reason or None)))

    def registered(self, body: RegistrationIn) -> list[str]:
        """Feed a saved push binding to the AOR's held calls; the transactions whose engine
        took this device (Kamailio releases the INVITE to it)."""
        aor = _aor(body.aor)
        expires_at = datetime.now(UTC) + timedelta(seconds=body.expires or 3600)
        binding = edge_binding(aor, body.contact, body.instance, expires_at)
        release = []
        for call in list(self._by_aor.get(aor, ())):
            run = call.run
            assert run is not None
            call.released = False
            run.feed(run.engine.device_registered(run.now(), binding))
            if call.released:
                release.append(call.transaction)
        return release

    async def reply(self, call: _EdgeCall, status: int, reason: str) -> None:
        try:
            async with call.reply_order:
                await self.kamailio.reply(call.transaction, status, reason)
        except (KamailioError, httpx.HTTPError) as exc:
            # Kamailio's own transaction timer still ends the held call.
            _log.warning(
                "kamailio reply failed", call_id=call.call_id, status=status, error=str(exc)
            )

    def _forget(self, call: _EdgeCall) -> None:
        self._calls.pop(call.call_id, None)
        calls = self._by_aor.get(call.aor)
        if calls is not None:
            calls.discard(call)
            if not calls:
                del self._by_aor[call.aor]


def _expiry(epoch: int | None) -> datetime | None:
    return datetime.fromtimestamp(epoch, UTC) if epoch else None


def _caller_aor(value: str) -> str:
    """The caller's AOR from a From value, "" when it has none (presentation lookup only)."""
    try:
        request = SipRequest("INVITE", "sip:x@invalid", [("From", value)])
        return canonical_aor(request.from_.uri)
    except (SipParseError, ValueError) as exc:
        raise EdgeInputError("from is not a SIP name-addr") from exc


def edge_router(settings: EdgeSettings, handler: CallPushHandler) -> APIRouter:
    """The ``/v1/edge`` API for ``app.include_router``; no routes unless ``[edge] enabled``."""
    router = APIRouter(prefix="/v1/edge", tags=["kamailio edge"])
    if not settings.enabled:
        return router
    secret = settings.secret.get_secret_value()
    kamailio = KamailioClient(settings.kamailio_url, secret, settings.request_timeout)
    edge = EdgeCalls(handler, kamailio)
    router.on_shutdown.append(kamailio.aclose)
    expected = secret.encode()

    def authenticated(
        secret: Annotated[str, Header(alias=EDGE_SECRET_HEADER)] = "",
    ) -> None:
        if not hmac.compare_digest(secret.encode(), expected):
            raise HTTPException(401, "missing or wrong " + EDGE_SECRET_HEADER)

    def refused(exc: EdgeInputError) -> JSONResponse:
        return error_response(400, "invalid_request", str(exc))

    @router.post(
        "/calls",
        status_code=201,
        response_model=EdgeCallOut,
        dependencies=[Depends(authenticated)],
        summary="Kamailio holds an INVITE for push contacts: push them",
        responses={200: {"model": EdgeCallOut, "description": "nothing to push: not held"}},
    )
    async def new_call(body: EdgeCallIn) -> Any:
        try:
            devices = await edge.start(body)
        except EdgeInputError as exc:
            return refused(exc)
        if not devices:
            return JSONResponse({"held": False, "devices": 0}, status_code=200)
        return EdgeCallOut(held=True, devices=devices)

    @router.post(
        "/calls/{call_id}/events",
        response_model=EdgeEventOut,
        dependencies=[Depends(authenticated)],
        summary="A held call's branch rang, answered or failed, or the caller cancelled",
    )
    async def call_event(call_id: str, body: EdgeEventIn) -> Any:
        if body.event in ("final", "branch_failed") and body.status is None:
            return error_response(400, "invalid_request", f"{body.event} needs a status")
        call = edge.get(call_id)
        if call is None:
            return error_response(404, "unknown_call", "no held call with this Call-ID")
        edge.event(call, body)
        return EdgeEventOut(handled=True)

    @router.post(
        "/registrations",
        response_model=RegistrationOut,
        dependencies=[Depends(authenticated)],
        summary="Kamailio saved a push binding: the held calls to release to it",
    )
    async def registration(body: RegistrationIn) -> Any:
        try:
            return RegistrationOut(release=",".join(edge.registered(body)))
        except EdgeInputError as exc:
            return refused(exc)

    return router
