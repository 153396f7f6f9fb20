"""Asyncio glue of call push: carries out ``CallPush`` actions.

``PushDispatcher.send`` delivers one push: local first (LPNS, iOS devices with a live local
session, bounded by the service's ack timeout), else or on failure through the relay with the
device's subscriber service; it handles the relay's outcomes (410 → pause the device and
alarm, BadDeviceToken → alarm only) and keeps the SPEC §7 call-side counters. ``CallRun`` runs
one engine against a ``CallControl`` (what the SIP side offers) with real timers.
``CallPushHandler`` is the proxy's ``PushHandler``: each INVITE to push bindings becomes a
``CallRun`` driven by the proxy's fork (``HeldCall``) and driving it (``CallControl``).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable, Collection, Coroutine, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import unquote

import httpx
from prometheus_client import Counter, Histogram

from ucpush.alarms import clear_alarm, raise_alarm
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
    reason_cause,
)
from ucpush.callpush.payload import PayloadBuilder
from ucpush.logging import get_logger
from ucpush.lpns.protocol import PushType as LocalPushType
from ucpush.lpns.service import LocalPushOutcome, LocalPushResult
from ucpush.metrics import observe_push_latency
from ucpush.relay.client import RelayAuthError, RelayClient, RelayError
from ucpush.relay.providers.base import Outcome, Priority
from ucpush.sip.message import SipRequest
from ucpush.sip.proxy import CallControl as ProxyCallControl
from ucpush.sip.registrar import BindingEvent, BindingRemoved, canonical_aor
from ucpush.sip.uri import SipURI, parse_name_addr
from ucpush.store.repository import Binding, Device, Platform, PushState

if TYPE_CHECKING:
    from ucpush.callpush.profiles import CallProfile

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

# Issue 5's "push sent" latency, from the INVITE reaching call push to its push leaving
# for the relay or the local push session (payload built).
CALL_PUSH_SENT_SECONDS = Histogram(
    "ucpush_call_push_sent_seconds",
    "INVITE handed to call push -> its call push sent (to the relay or local push)",
    buckets=(0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.1, 0.25, 1.0),
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


class LocalPush(Protocol):
    """Local push delivery (``LpnsService``, or the cluster's mesh over every node's)."""

    def has_session(self, device_id: str) -> bool: ...
    async def deliver(
        self, device_id: str, push_type: LocalPushType, payload_jwe: str
    ) -> LocalPushResult: ...


class DeviceStates(Protocol):
    """The part of ``SigninRepository`` that pauses a device."""

    async def set_push_state(self, device_id: str, state: PushState, now: datetime) -> None: ...


class PushDispatcher:
    def __init__(
        self,
        relay: Callable[[], RelayClient | None],
        payloads: PayloadBuilder,
        devices: DeviceStates,
        *,
        lpns: LocalPush | None = None,
    ) -> None:
        # Asked per push: onboarding, push disabled or a new refresh token change the client.
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
        if push.kind in _CALL_KINDS and invite.received_at:
            CALL_PUSH_SENT_SECONDS.observe(asyncio.get_running_loop().time() - invite.received_at)
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
        started = time.monotonic()
        result = await self.lpns.deliver(target.device_id, local_type, payload)
        observe_push_latency("local", target.service, time.monotonic() - started)
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
        relay = self.relay()
        if relay is None:
            # Not onboarded or push disabled: the SIP side has no dispatcher to push with.
            PUSH_ERROR_RES_RECEIVED.inc()
            raise_alarm("PushNotificationServiceUnavailable", reason="push not enabled")
            return False
        clear_alarm("PushNotificationServiceUnavailable")
        PUSH_REQ_SENT.inc()
        started = time.monotonic()
        try:
            result = await relay.send_encrypted(
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
            if isinstance(exc, RelayAuthError):
                raise_alarm("AccessTokenInvalid", detail=str(exc))
            elif not isinstance(exc, RelayError):
                raise_alarm("PushNotificationServiceAccessTokenUnavailable", detail=str(exc))
            _log.warning(
                "relay push failed", device_id=target.device_id, error=str(exc), tid=tracking_id
            )
            return False
        PUSH_RES_RECEIVED.inc()
        observe_push_latency("relay", target.service, time.monotonic() - started)
        clear_alarm("PushNotificationServiceAccessTokenUnavailable")
        clear_alarm("AccessTokenInvalid")
        if result.outcome is Outcome.DELIVERED:
            clear_alarm(_INVALID_TOKEN_ALARM, device_id=target.device_id)
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


class CallProfiles(Protocol):
    """Where per-AOR call settings come from (``ucpush.callpush.profiles``)."""

    async def get_many(self, aors: Collection[str]) -> Mapping[str, CallProfile]: ...


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


class DeviceFinder(Protocol):
    """The part of ``SigninRepository`` the directory reads."""

    async def find_devices(
        self, instance_ids: Collection[str], tokens: Collection[str]
    ) -> list[Device]: ...


class SigninDirectory:
    """Pairs push bindings with sign-in devices (by ``+sip.instance``, then pn-prid / push
    token, one indexed query per call); a binding without a device is pushed from its own pn-*
    parameters, PII-free."""

    def __init__(self, repo: DeviceFinder) -> None:
        self._repo = repo

    async def call_devices(
        self, bindings: Sequence[Binding]
    ) -> list[tuple[CallDevice, PushTarget]]:
        known = await self._repo.find_devices(
            {b.instance_id for b in bindings}, {b.pn_prid for b in bindings}
        )
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


class _CallHook:
    """One INVITE's call push: the proxy's ``HeldCall`` (its events go to the engine) and the
    ``CallRun``'s ``CallControl`` (the engine's decisions go to the proxy's ``CallControl``).
    Bindings are mapped to devices; a device that registers again may do so with a new
    binding, which is mapped when the INVITE is forwarded to it."""

    def __init__(
        self,
        handler: CallPushHandler,
        aor: str,
        invite: InviteSummary,
        pairs: Sequence[tuple[CallDevice, PushTarget]],
    ) -> None:
        self._handler = handler
        self._aor = aor
        self._invite = invite
        self._pairs = list(pairs)
        self._device_of = {device.binding.id: device.id for device, _ in pairs}
        self._proxy: ProxyCallControl | None = None
        self.run: CallRun | None = None

    # HeldCall (events from the proxy)

    def start(self, control: ProxyCallControl, live_branches: bool) -> None:
        self._proxy = control
        handler = self._handler
        run = self.run = CallRun(
            handler.dispatcher,
            self,
            {device.id: target for device, target in self._pairs},
            handler.config,
            on_done=lambda finished: handler.forget(self._aor, finished),
        )
        handler.track(self._aor, run)
        invite = replace(self._invite, live_branches=live_branches)
        run.start(invite, [device for device, _ in self._pairs])

    def ringing(self, binding_id: str | None) -> None:
        run = self._run()
        run.feed(run.engine.device_ringing(run.now(), self._device(binding_id)))

    def branch_failed(self, binding_id: str, status: int) -> None:
        device_id = self._device(binding_id)
        if device_id is not None:
            run = self._run()
            run.feed(run.engine.branch_failed(run.now(), device_id, status))

    def final(self, status: int, binding_id: str | None) -> None:
        run = self._run()
        run.feed(run.engine.final_response(run.now(), status, self._device(binding_id)))

    def cancelled(self, reason: str | None) -> None:
        run = self._run()
        run.feed(run.engine.cancelled(run.now(), reason_cause(reason)))

    # CallControl (the engine's decisions)

    def provisional(self, status: int, reason: str) -> None:
        self._control().provisional(status, reason)

    def respond(self, status: int, reason: str) -> None:
        self._control().respond(status, reason)

    def forward(self, device_id: str, binding: Binding) -> None:
        self._device_of[binding.id] = device_id
        self._control().forward(binding)

    def late_invite_cancel(self, device_id: str, binding: Binding, reason: str) -> None:
        # The call is over; the woken device is told by its follow-up push instead of a
        # late INVITE+CANCEL (issue 5 allows either), which needs no dialog state here.
        self._run().push_follow_up(device_id)

    def extend(self, number: str) -> None:
        self._control().extend(number)

    def _device(self, binding_id: str | None) -> str | None:
        return self._device_of.get(binding_id) if binding_id is not None else None

    def _run(self) -> CallRun:
        assert self.run is not None, "start() first"
        return self.run

    def _control(self) -> ProxyCallControl:
        assert self._proxy is not None, "start() first"
        return self._proxy


class CallPushHandler:
    """The proxy's ``PushHandler`` (``ucpush.sip.proxy``): for an INVITE to an AOR with push
    bindings it pairs them with their devices (``DeviceDirectory``) and returns a held call
    that runs one ``CallPush`` engine against the proxy's fork: pushes, ring-back, drop,
    fork-late to each device that registers again, follow-up pushes. Feed it the registrar's
    events with ``on_binding_event`` as soon as a REGISTER is accepted (before its 2xx goes
    out: the node authenticated it, RFC 8599 §5.6.2)."""

    def __init__(
        self,
        dispatcher: PushDispatcher,
        directory: DeviceDirectory,
        *,
        config: CallPushConfig | None = None,
        profiles: CallProfiles | None = None,
        push_sent_option: str | None = None,
    ) -> None:
        self.dispatcher = dispatcher
        self.directory = directory
        self.config = config
        self.profiles = profiles  # callee's mobility identity, caller's presentation
        self.push_sent_option = push_sent_option
        self._calls: dict[str, set[CallRun]] = {}

    def calls(self, aor: str) -> list[CallRun]:
        return list(self._calls.get(aor, ()))

    async def prepare_call(
        self, request: SipRequest, aor: str, bindings: Sequence[tuple[Binding, bool]]
    ) -> _CallHook | None:
        received_at = asyncio.get_running_loop().time()
        reachable = {binding.id: live for binding, live in bindings}
        try:
            caller = canonical_aor(request.from_.uri)
        except ValueError:
            caller = ""
        # Both lookups at once: the push waits for them.
        devices, found = await asyncio.gather(
            self.directory.call_devices([b for b, _ in bindings]),
            self._profiles({aor, caller} - {""}),
        )
        pairs = [
            (replace(device, reachable=reachable[device.binding.id]), target)
            for device, target in devices
        ]
        if not pairs:
            return None  # every device paused or signed out: no push
        callee_profile, caller_profile = found.get(aor), found.get(caller)
        invite = invite_summary(
            request,
            mobility_number=callee_profile.mobility_number if callee_profile else "",
            presentation=caller_profile.presentation if caller_profile else ("", ""),
            push_sent_option=self.push_sent_option,
        )
        return _CallHook(self, aor, replace(invite, received_at=received_at), pairs)

    async def _profiles(self, aors: set[str]) -> Mapping[str, CallProfile]:
        return await self.profiles.get_many(aors) if self.profiles is not None else {}

    def on_binding_event(self, event: BindingEvent) -> None:
        if isinstance(event, BindingRemoved):
            return
        for run in self.calls(event.binding.aor):
            run.feed(run.engine.device_registered(run.now(), event.binding))

    def track(self, aor: str, run: CallRun) -> None:
        self._calls.setdefault(aor, set()).add(run)

    def forget(self, aor: str, run: CallRun) -> None:
        runs = self._calls.get(aor)
        if runs is not None:
            runs.discard(run)
            if not runs:
                del self._calls[aor]
