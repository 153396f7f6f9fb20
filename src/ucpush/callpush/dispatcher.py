"""Asyncio glue of call push: carries out ``CallPush`` actions.

``PushDispatcher.send`` delivers one push: local first (LPNS, iOS devices with a live local
session, bounded by the service's ack timeout), else or on failure through the relay with the
device's subscriber service; it handles the relay's outcomes (410 → pause the device and
alarm, BadDeviceToken → alarm only) and keeps the SPEC §7 call-side counters. ``CallRun`` runs
one engine against a ``CallControl`` (what the SIP side offers) with real timers.
``CallPushHandler`` plugs this into the proxy's ``PushHandler`` hook as it exists today.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Coroutine, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol
from urllib.parse import unquote

import httpx
from prometheus_client import Counter

from ucpush.alarms import raise_alarm
from ucpush.callpush.engine import (
    Action,
    CallDevice,
    CallPush,
    CallPushConfig,
    CancelBranch,
    CancelTimer,
    Done,
    ExtendToMobility,
    ForwardTo,
    InviteSummary,
    PushKind,
    Respond,
    SendProvisional,
    SendPush,
    StartTimer,
    follow_up_push,
)
from ucpush.callpush.payload import PayloadBuilder
from ucpush.logging import get_logger
from ucpush.lpns.protocol import PushType as LocalPushType
from ucpush.lpns.service import LocalPushOutcome, LpnsService
from ucpush.relay.client import RelayClient, RelayError
from ucpush.relay.providers.base import Outcome, Priority
from ucpush.sip.message import SipRequest
from ucpush.sip.registrar import BindingEvent, BindingRemoved, canonical_aor
from ucpush.sip.uri import SipURI, parse_name_addr
from ucpush.store.repository import Binding, Device, Platform, PushState

_log = get_logger("ucpush.callpush")
_INVALID_TOKEN_ALARM = "PushNotificationInvalidDeviceTokenResponse"

# SPEC §7 call-side counters, under their RTMT names (Prometheus adds ``_total``).
PUSH_REQ_SENT = Counter("NumberOfPushReqSent", "Call pushes sent to the relay")
PUSH_RES_RECEIVED = Counter(
    "NumberOfPushResReceived", "Relay answers to call pushes (every outcome)"
)
PUSH_ERROR_RES_RECEIVED = Counter(
    "NumberOfPushErrorResReceived",
    "Call pushes that failed: provider error outcomes and relay/TLS/connection failures",
)
CUSTOM_REGION_MSG_SENT = Counter(
    "CustomRegionNumofMsgPushReqSent", "China-region call message pushes sent"
)
CUSTOM_REGION_MISSED_SENT = Counter(
    "CustomRegionNumofMissedCallMsgPushReqSent", "China-region missed-call message pushes sent"
)
CUSTOM_REGION_CANCEL_SENT = Counter(
    "CustomRegionNumofSharedCancelMsgPushReqSent",
    "China-region answered/declined-elsewhere message pushes sent",
)
MOBILITY_EXTENDED_TO_MI = Counter(
    "MobilityPushNotificationCallsExtendedToMIDueToTimeout",
    "Calls extended to the mobility identity because no woken device registered in time",
)
MOBILITY_EXTENDED_TO_APP = Counter(
    "MobilityPushNotificationCallsExtendedToJabber",
    "Calls of users with a mobility identity that a woken device registered for in time",
)

_LOCAL_TYPES: Mapping[PushKind, LocalPushType] = {
    PushKind.CALL: "voip",
    PushKind.MISSED_CALL: "missed-call",
    PushKind.CANCEL: "cancel",
}
_CUSTOM_REGION_COUNTERS: Mapping[PushKind, Counter] = {
    PushKind.CALL_MESSAGE: CUSTOM_REGION_MSG_SENT,
    PushKind.MISSED_CALL: CUSTOM_REGION_MISSED_SENT,
    PushKind.CANCEL: CUSTOM_REGION_CANCEL_SENT,
}
_CALL_KINDS = (PushKind.CALL, PushKind.CALL_MESSAGE)


@dataclass(frozen=True, slots=True)
class PushTarget:
    """Where and how to push one device. ``device_id`` is the sign-in device id (LPNS
    sessions are keyed by it) or, for a bare RFC 8599 binding, the binding id."""

    device_id: str
    platform: Platform
    service: str  # subscriber service: APNS, APNS:dev, FCM, ...
    token: str
    key: bytes = b""  # b"": no key, PII-free payload (PayloadPolicy)
    key_id: str = ""
    china_region: bool = False
    signed_in: bool = False  # a sign-in device: its push state can be paused


class DeviceStates(Protocol):
    """The part of ``SigninRepository`` that pauses a device."""

    async def set_push_state(self, device_id: str, state: PushState, now: datetime) -> None: ...


class PushDispatcher:
    def __init__(
        self,
        relay: RelayClient | None,
        payloads: PayloadBuilder,
        devices: DeviceStates,
        *,
        lpns: LpnsService | None = None,
    ) -> None:
        self.relay = relay
        self.payloads = payloads
        self.devices = devices
        self.lpns = lpns

    async def send(self, invite: InviteSummary, push: SendPush, target: PushTarget) -> bool:
        """Deliver ``push``; True when a device or provider confirmed it."""
        tracking_id = uuid.uuid4().hex
        payload = self.payloads.build(
            invite, push, key=target.key, key_id=target.key_id, tracking_id=tracking_id
        )
        if payload is None:
            return False
        if target.china_region and push.kind in _CUSTOM_REGION_COUNTERS:
            _CUSTOM_REGION_COUNTERS[push.kind].inc()
        if await self._send_local(push, target, payload):
            return True
        return await self._send_relay(push, target, payload, tracking_id)

    async def _send_local(self, push: SendPush, target: PushTarget, payload: str) -> bool:
        local_type = _LOCAL_TYPES.get(push.kind)
        if (
            self.lpns is None
            or local_type is None
            or target.platform is not Platform.IOS
            or not self.lpns.has_session(target.device_id)
        ):
            return False
        # ``deliver`` waits at most the LPNS ack timeout and keeps the local push counters.
        result = await self.lpns.deliver(target.device_id, local_type, payload)
        if result.outcome is LocalPushOutcome.DELIVERED:
            return True
        _log.info(
            "local push failed, using the relay",
            device_id=target.device_id,
            outcome=result.outcome.value,
            detail=result.detail,
        )
        return False

    async def _send_relay(
        self, push: SendPush, target: PushTarget, payload: str, tracking_id: str
    ) -> bool:
        if self.relay is None:
            PUSH_ERROR_RES_RECEIVED.inc()
            return False
        PUSH_REQ_SENT.inc()
        try:
            result = await self.relay.send_encrypted(
                target=target.token,
                service=target.service,
                push_type=push.push_type,
                jwe_payload=payload,
                # Calls are never delayed; FCM "high" is a high-priority data message.
                priority=Priority.HIGH,
                tracking_id=tracking_id,
            )
        except (RelayError, httpx.HTTPError, OSError, ValueError) as exc:
            # The call still goes on to any reachable binding (issue 5); counted, logged.
            PUSH_ERROR_RES_RECEIVED.inc()
            _log.warning(
                "relay push failed", device_id=target.device_id, error=str(exc), tid=tracking_id
            )
            return False
        PUSH_RES_RECEIVED.inc()
        if result.outcome is Outcome.DELIVERED:
            return True
        PUSH_ERROR_RES_RECEIVED.inc()
        if result.outcome is Outcome.UNREGISTERED:
            # Dead token: no more pushes until the device registers a new one (SPEC §5).
            if target.signed_in:
                await self.devices.set_push_state(
                    target.device_id, PushState.PAUSED_INVALID_TOKEN, datetime.now(UTC)
                )
            raise_alarm(
                _INVALID_TOKEN_ALARM,
                "ERROR",
                device_id=target.device_id,
                service=target.service,
                paused=target.signed_in,
                tid=tracking_id,
            )
        elif result.outcome is Outcome.BAD_DEVICE_TOKEN:
            # Usually a sandbox/production mix-up, not a dead token: never pause for it.
            raise_alarm(
                _INVALID_TOKEN_ALARM,
                "ERROR",
                device_id=target.device_id,
                service=target.service,
                paused=False,
                reason=result.reason or "BadDeviceToken",
                tid=tracking_id,
            )
        else:
            _log.warning(
                "call push not delivered",
                device_id=target.device_id,
                outcome=result.outcome.value,
                reason=result.reason,
                tid=tracking_id,
            )
        return False


class CallControl(Protocol):
    """What the SIP side does for one held INVITE."""

    def provisional(self, status: int, reason: str) -> None: ...
    def respond(self, status: int, reason: str) -> None: ...
    def forward(self, device_id: str, binding: Binding) -> None: ...
    def late_invite_cancel(self, device_id: str, binding: Binding, reason: str) -> None: ...
    def extend(self, number: str) -> None: ...


class CallRun:
    """One engine with real timers (the event loop's clock) and a dispatcher. The SIP side
    feeds it with ``feed(run.engine.<event>(run.now(), ...))``."""

    def __init__(
        self,
        dispatcher: PushDispatcher,
        control: CallControl,
        targets: Mapping[str, PushTarget],
        config: CallPushConfig | None = None,
        on_done: Callable[[CallRun], None] | None = None,
    ) -> None:
        self.engine = CallPush(config)
        self.dispatcher = dispatcher
        self.control = control
        self.targets = dict(targets)
        self._on_done = on_done
        self._loop = asyncio.get_running_loop()
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._tasks: set[asyncio.Task[object]] = set()
        self._late: dict[str, Binding] = {}

    def now(self) -> float:
        return self._loop.time()

    def start(self, invite: InviteSummary, devices: Sequence[CallDevice]) -> None:
        self.feed(self.engine.start(self.now(), invite, devices))

    def feed(self, actions: Iterable[Action]) -> None:
        for action in actions:
            match action:
                case SendPush():
                    self._spawn(self._push(action))
                case SendProvisional(status, reason):
                    self.control.provisional(status, reason)
                case ForwardTo(device_id, binding):
                    if self.engine.outcome is None:
                        self.control.forward(device_id, binding)
                    else:
                        self._late[device_id] = binding  # CancelBranch follows
                case CancelBranch(device_id, reason):
                    self.control.late_invite_cancel(device_id, self._late.pop(device_id), reason)
                case Respond(status, reason):
                    self.control.respond(status, reason)
                case ExtendToMobility(number):
                    MOBILITY_EXTENDED_TO_MI.inc()
                    self.control.extend(number)
                case StartTimer(name, at):
                    self._cancel_timer(name)
                    self._timers[name] = self._loop.call_at(at, self._fire, name)
                case CancelTimer(name):
                    self._cancel_timer(name)
                case Done():
                    self._finish(action)

    def push_follow_up(self, device_id: str) -> None:
        """Send the follow-up push the call's outcome calls for (for a SIP side that cannot
        do the late INVITE+CANCEL the engine asked for)."""
        outcome = self.engine.outcome
        invite = self.engine.invite
        assert outcome is not None and invite is not None
        info = self.engine.device(device_id)
        self._spawn(self._send(invite, follow_up_push(info, outcome)))

    async def wait_closed(self) -> None:
        """Wait for every push of this call to be sent."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    def _spawn(self, coro: Coroutine[Any, Any, object]) -> None:
        task = self._loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _push(self, push: SendPush) -> None:
        invite = self.engine.invite
        assert invite is not None
        delivered = await self._send(invite, push)
        if push.kind in _CALL_KINDS:
            self.feed(self.engine.push_result(self.now(), push.device_id, delivered))

    async def _send(self, invite: InviteSummary, push: SendPush) -> bool:
        try:
            return await self.dispatcher.send(invite, push, self.targets[push.device_id])
        except Exception:
            # A store or payload failure must not leave the engine waiting for a result.
            PUSH_ERROR_RES_RECEIVED.inc()
            _log.exception("call push failed", device_id=push.device_id)
            return False

    def _fire(self, name: str) -> None:
        self._timers.pop(name, None)
        self.feed(self.engine.timer_fired(self.now(), name))

    def _cancel_timer(self, name: str) -> None:
        handle = self._timers.pop(name, None)
        if handle is not None:
            handle.cancel()

    def _finish(self, done: Done) -> None:
        invite = self.engine.invite
        if done.forwarded and invite is not None and invite.mobility_number:
            MOBILITY_EXTENDED_TO_APP.inc()
        for handle in self._timers.values():
            handle.cancel()
        self._timers.clear()
        _log.info(
            "call push done",
            call_id=invite.call_id if invite else "",
            outcome=done.outcome.value,
            forwarded=done.forwarded,
        )
        if self._on_done is not None:
            self._on_done(self)


# The proxy's PushHandler hook


def _user_of(value: str | None, what: str) -> str:
    if not value:
        return ""
    try:
        uri = parse_name_addr(value, what).uri
    except ValueError:
        return ""
    return unquote(uri.user or "") if isinstance(uri, SipURI) else ""


def invite_summary(
    request: SipRequest,
    *,
    live_branches: bool = False,
    mobility_number: str = "",
    presentation: tuple[str, str] = ("", ""),
    push_sent_option: str | None = None,
) -> InviteSummary:
    """The engine's view of an INVITE. Caller: P-Asserted-Identity when present (our trusted
    PBX sets it), else From; hunt pilot: the first Diversion entry (RFC 5806). ``110 Push
    sent`` is only sent when the caller's Supported lists ``push_sent_option`` (no standard
    option tag exists, so it is off unless configured)."""
    asserted = request.headers.get("P-Asserted-Identity")
    caller = parse_name_addr(asserted, "P-Asserted-Identity") if asserted else request.from_
    number = unquote(caller.uri.user or "") if isinstance(caller.uri, SipURI) else ""
    supported = {
        tag.strip().lower()
        for value in request.headers.get_all("Supported")
        for tag in value.split(",")
    }
    return InviteSummary(
        call_id=request.call_id,
        caller_name=caller.display or "",
        caller_number=number,
        presentation_name=presentation[0],
        presentation_number=presentation[1],
        hunt_pilot=_user_of(request.headers.get("Diversion"), "Diversion"),
        supports_push_sent=push_sent_option is not None and push_sent_option.lower() in supported,
        live_branches=live_branches,
        mobility_number=mobility_number,
    )


class DeviceDirectory(Protocol):
    async def call_devices(
        self, bindings: Sequence[Binding]
    ) -> list[tuple[CallDevice, PushTarget]]: ...


def _binding_target(binding: Binding) -> PushTarget:
    """A bare RFC 8599 binding (no sign-in device): token and service from its pn-* params."""
    provider = binding.pn_provider.lower()
    if provider.startswith("fcm"):
        platform, service = Platform.ANDROID, "FCM"
    else:
        # "apns.dev" is Flexisip's sandbox extension (REFERENCE §1).
        platform, service = Platform.IOS, "APNS:dev" if provider == "apns.dev" else "APNS"
    return PushTarget(binding.id, platform, service, binding.pn_prid)


class DeviceList(Protocol):
    """The part of ``SigninRepository`` the directory reads."""

    async def list_devices(self, user_id: str | None = None) -> list[Device]: ...


class SigninDirectory:
    """Pairs push bindings with sign-in devices (by ``+sip.instance``, then pn-prid / push
    token); a binding without a device is pushed from its own pn-* parameters, PII-free.
    It reads every device per call: fine for now, an index by instance/token is due."""

    def __init__(self, repo: DeviceList) -> None:
        self._repo = repo

    async def call_devices(
        self, bindings: Sequence[Binding]
    ) -> list[tuple[CallDevice, PushTarget]]:
        known = await self._repo.list_devices()
        out: list[tuple[CallDevice, PushTarget]] = []
        for binding in bindings:
            device = next(
                (
                    d
                    for d in known
                    if (binding.instance_id and d.sip_instance_id == binding.instance_id)
                    or binding.pn_prid in (d.pn_prid, d.push_token)
                ),
                None,
            )
            if device is None:
                out.append((CallDevice(binding.id, binding), _binding_target(binding)))
                continue
            if device.push_state is not PushState.ACTIVE:
                continue  # paused (dead token) or signed out: no pushes
            out.append(
                (
                    CallDevice(
                        device.id,
                        binding,
                        china_region=device.china_region,
                        single_channel=device.single_channel,
                        instance_id=device.sip_instance_id,
                        prids=frozenset({device.push_token, device.pn_prid} - {""}),
                    ),
                    PushTarget(
                        device.id,
                        device.platform,
                        device.service,
                        device.push_token,
                        device.push_key,
                        device.push_key_id,
                        china_region=device.china_region,
                        signed_in=True,
                    ),
                )
            )
        return out


class _HeldInvite:
    """``CallControl`` within today's ``PushHandler`` hook: the proxy waits for
    ``on_unreachable`` to return the bindings to fork to, and cannot be told anything else."""

    def __init__(self) -> None:
        self.run: CallRun | None = None
        self.released: asyncio.Future[list[Binding]] = asyncio.get_running_loop().create_future()

    def provisional(self, status: int, reason: str) -> None:
        _log.debug("provisional not sent: the proxy hook cannot", status=status)

    def respond(self, status: int, reason: str) -> None:
        if not self.released.done():
            self.released.set_result([])  # the proxy answers 480

    def forward(self, device_id: str, binding: Binding) -> None:
        assert self.run is not None
        if self.released.done():
            return
        self.released.set_result([binding])
        # The proxy forks to this one device and tells us no more: treat the call as taken
        # there, so every other woken device is followed up now rather than never.
        run = self.run
        run.feed(run.engine.final_response(run.now(), 200, device_id))

    def late_invite_cancel(self, device_id: str, binding: Binding, reason: str) -> None:
        assert self.run is not None
        self.run.push_follow_up(device_id)  # no way to send a late INVITE+CANCEL yet

    def extend(self, number: str) -> None:
        _log.warning("mobility extension needs proxy support; answering 480", number=number)
        if not self.released.done():
            self.released.set_result([])


class CallPushHandler:
    """The proxy's ``PushHandler`` (``ucpush.sip.proxy``): pushes the devices of unreachable
    push bindings, holds the INVITE until one of them registers again and returns its fresh
    binding (or none after the drop timer / when every push failed: the proxy answers 480).
    Feed it the registrar's events with ``on_binding_event`` as soon as a REGISTER is accepted
    (before its 2xx goes out: the node authenticated it, RFC 8599 §5.6.2).

    Within today's hook, ring-back (180 at 5 s), ``110 Push sent``, mobility extension, late
    INVITE+CANCEL and forwarding to more than the first woken device are not possible, and the
    call is deemed taken by the first device that registers. For the full behaviour the proxy
    must drive a ``CallRun`` with its own ``CallControl`` and expose:

    - sending provisional responses (100/110/180) on the held INVITE's server transaction;
    - answering it (480/487) and forwarding it, at any time while it is held, to a binding
      as an added branch of the same fork context (fork-late), kept open while the engine
      holds the call;
    - the caller's CANCEL with its Reason (``engine.cancelled(now, reason_cause(...))``)
      instead of answering 487 itself;
    - per branch of our devices: 180/183 (``device_ringing``), its final response
      (``branch_failed``), and the fork's final response (``final_response``, with the device
      whose branch produced it);
    - live branches forked at once (``InviteSummary.live_branches``) with the reachable push
      bindings passed as ``CallDevice(reachable=True)``, for the SPEC §1 foreground push;
    - a new client transaction for a late INVITE immediately CANCELled with a Reason;
    - a branch to the mobility identity (``extend``).
    """

    def __init__(
        self,
        dispatcher: PushDispatcher,
        directory: DeviceDirectory,
        *,
        config: CallPushConfig | None = None,
        mobility: Mapping[str, str] | None = None,
        presentation: Mapping[str, tuple[str, str]] | None = None,
    ) -> None:
        self.dispatcher = dispatcher
        self.directory = directory
        self.config = config
        self.mobility = dict(mobility or {})  # callee AOR → mobility number
        self.presentation = dict(presentation or {})  # caller AOR → (name, number)
        self._calls: dict[str, set[CallRun]] = {}

    def calls(self, aor: str) -> list[CallRun]:
        return list(self._calls.get(aor, ()))

    async def on_unreachable(
        self, request: SipRequest, aor: str, bindings: Sequence[Binding]
    ) -> Sequence[Binding]:
        pairs = await self.directory.call_devices(bindings)
        if not pairs:
            return []
        try:
            caller = canonical_aor(request.from_.uri)
        except ValueError:
            caller = ""
        invite = invite_summary(
            request,
            mobility_number=self.mobility.get(aor, ""),
            presentation=self.presentation.get(caller, ("", "")),
        )
        held = _HeldInvite()
        run = CallRun(
            self.dispatcher,
            held,
            {device.id: target for device, target in pairs},
            self.config,
            on_done=lambda finished: self._forget(aor, finished),
        )
        held.run = run
        self._calls.setdefault(aor, set()).add(run)
        run.start(invite, [device for device, _ in pairs])
        return await held.released

    def on_binding_event(self, event: BindingEvent) -> None:
        if isinstance(event, BindingRemoved):
            return
        for run in self.calls(event.binding.aor):
            run.feed(run.engine.device_registered(run.now(), event.binding))

    def _forget(self, aor: str, run: CallRun) -> None:
        runs = self._calls.get(aor)
        if runs is not None:
            runs.discard(run)
            if not runs:
                del self._calls[aor]
