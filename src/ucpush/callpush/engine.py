"""The call-push engine: one ``CallPush`` per held call, sans-IO.

A call here is one INVITE to an AOR that has push bindings. The engine is fed events and the
current time (monotonic seconds) and returns actions; ``ucpush.callpush.dispatcher`` carries
them out. Rules (SPEC §2, issue 5, RFC 8599 §5.6.2):

- ``start``: 100 Trying; a push to every device without a live connection at once, and, when
  ``push_reachable`` is on, to reachable iOS 13+/Android devices after ``reachable_push_delay``
  (a pending push is dropped if that device rings over its connection first, flexisip #255);
  ``110 Push sent`` once when the caller's Supported allows it. One call push per device,
  never two.
- ``device_registered``: the re-REGISTER of a woken device (matched by contact per RFC 8599
  §5.3, else ``+sip.instance``, else a pn-prid the device is known by, since providers rotate
  tokens) releases the INVITE to it at once (``ForwardTo``): the node authenticated the REGISTER
  itself, so it need not wait for its own 2xx.
- ``ringback_after`` (5 s) with no branch ringing: 180 toward the caller.
- ``drop_after`` (13 s) with no device that took the call: extend to the user's mobility
  number when there is one, else 480 (only while the engine still holds the INVITE).
- When the call ends (``cancelled``, ``final_response``, drop), every device woken by a
  delivered push and not reached over SIP gets exactly one follow-up push: missed call, or
  cancel with the reason (answered / declined elsewhere, extended to mobility). iOS kills apps
  whose VoIP push does not end in a CallKit outcome. A device whose push result is still
  outstanding gets it when the result arrives, or, if it registers first, a late
  INVITE+CANCEL (``ForwardTo`` + ``CancelBranch``, flexisip #241).
- China-region devices (no CallKit) get a message push with the caller id instead of VoIP;
  single-channel (legacy) devices get every push on the VoIP channel.

Final responses: the engine answers the caller (``Respond``) only while it alone holds the
INVITE, i.e. no live branch was forked and nothing was forwarded yet; after that the proxy's
fork context answers and tells the engine through ``final_response``. ``Done`` comes once the
call is over and every push result and forwarded branch outcome is in (or ``linger`` passed):
until then either may still call for a follow-up.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum, StrEnum

from ucpush.relay.providers.base import PushType
from ucpush.sip.errors import SipParseError
from ucpush.sip.proxy import REASON_COMPLETED_ELSEWHERE, REASON_DECLINED_ELSEWHERE
from ucpush.sip.registrar import push_params_match
from ucpush.sip.uri import URI, parse_uri
from ucpush.store.repository import Binding

RINGBACK = "ringback"
DROP = "drop"
LINGER = "linger"
_PUSH_TIMER = "push:"
REASON_MISSED = 'SIP;cause=480;text="Missed call"'
REASON_EXTENDED = 'SIP;cause=302;text="Extended to mobility identity"'
# A branch that ended with these never produced an answer from the device (RFC 3261 timer B
# or a dead flow), so it may not have seen the INVITE: it still needs a push follow-up.
_UNREACHED = frozenset({408, 503})


class PushKind(StrEnum):
    CALL = "call"  # VoIP push: the app reports a CallKit call and registers
    CALL_MESSAGE = "call-message"  # China region: visible message with the caller id
    MISSED_CALL = "missed-call"
    CANCEL = "cancel"


class CancelReason(StrEnum):
    ANSWERED_ELSEWHERE = "answered-elsewhere"
    DECLINED_ELSEWHERE = "declined-elsewhere"
    EXTENDED_TO_MOBILITY = "extended-to-mobility"


class CallOutcome(StrEnum):
    ANSWERED = "answered"  # by a device this engine woke or pushed
    ANSWERED_ELSEWHERE = "answered-elsewhere"
    DECLINED_ELSEWHERE = "declined-elsewhere"
    CANCELLED = "cancelled"  # the caller hung up
    TIMED_OUT = "timed-out"  # drop timer, 480
    EXTENDED_TO_MOBILITY = "extended-to-mobility"
    PUSH_FAILED = "push-failed"  # no push could be delivered and nothing else reaches the user
    FAILED = "failed"  # the fork ended with another final response


@dataclass(frozen=True, slots=True)
class CallPushConfig:
    ringback_after: float = 5.0
    drop_after: float = 13.0
    # SPEC §1: iOS 13+/Android also get the VoIP push while connected (not legacy single
    # channel, not China region, which shows a visible message).
    push_reachable: bool = True
    reachable_push_delay: float = 1.0
    # Upper bound on waiting for push results and branch outcomes after the call ended.
    linger: float = 30.0


@dataclass(frozen=True, slots=True)
class InviteSummary:
    """What the engine and the payload need from the INVITE and the caller's configuration."""

    call_id: str
    caller_name: str = ""
    caller_number: str = ""
    presentation_name: str = ""  # external presentation, shown instead when set
    presentation_number: str = ""
    hunt_pilot: str = ""
    supports_push_sent: bool = False  # the caller takes "110 Push sent"
    live_branches: bool = False  # the proxy already forked to reachable bindings
    mobility_number: str = ""  # the callee's mobility identity, "" = none
    received_at: float = 0.0  # event-loop time call push got the INVITE (for latency)


@dataclass(frozen=True, slots=True)
class CallDevice:
    """A push binding of the callee and what sign-in knows of its device."""

    id: str
    binding: Binding
    reachable: bool = False  # a live connection: the proxy forks to it directly
    china_region: bool = False
    single_channel: bool = False
    instance_id: str = ""  # sign-in link to the SIP instance
    prids: frozenset[str] = frozenset()  # other push tokens the device is known by


@dataclass(frozen=True, slots=True)
class SendPush:
    device_id: str
    kind: PushKind
    push_type: PushType  # relay channel
    reason: CancelReason | None = None


@dataclass(frozen=True, slots=True)
class SendProvisional:
    status: int
    reason: str


@dataclass(frozen=True, slots=True)
class ForwardTo:
    device_id: str
    binding: Binding  # as just registered: its flow is the live one


@dataclass(frozen=True, slots=True)
class Respond:
    status: int
    reason: str


@dataclass(frozen=True, slots=True)
class ExtendToMobility:
    number: str


@dataclass(frozen=True, slots=True)
class StartTimer:
    name: str
    at: float


@dataclass(frozen=True, slots=True)
class CancelTimer:
    name: str


@dataclass(frozen=True, slots=True)
class CancelBranch:
    device_id: str
    reason: str  # RFC 3326 Reason header value


@dataclass(frozen=True, slots=True)
class Done:
    outcome: CallOutcome
    forwarded: bool  # some woken device registered in time and got the INVITE


Action = (
    SendPush
    | SendProvisional
    | ForwardTo
    | Respond
    | ExtendToMobility
    | StartTimer
    | CancelTimer
    | CancelBranch
    | Done
)


class _Push(Enum):
    NONE = "none"
    DEFERRED = "deferred"  # timer running (reachable device)
    SENDING = "sending"  # SendPush issued, result outstanding
    DELIVERED = "delivered"
    FAILED = "failed"
    SUPPRESSED = "suppressed"  # the device rang or registered first


@dataclass(slots=True)
class _Device:
    info: CallDevice
    uri: URI | None
    push: _Push = _Push.NONE
    forwarded: bool = False
    via_sip: bool = False  # SIP carries the call's outcome to it (INVITE reached it)
    followed_up: bool = False  # follow-up push or late INVITE+CANCEL issued
    branch_open: bool = False  # forwarded, the proxy has not told how its branch ended
    instances: frozenset[str] = frozenset()  # +sip.instance values it may register with
    prids: frozenset[str] = frozenset()  # pn-prid values it may register with


def push_timer(device_id: str) -> str:
    return _PUSH_TIMER + device_id


def reason_cause(value: str | None) -> int | None:
    """The SIP cause of an RFC 3326 Reason header value (``SIP;cause=200;text=...``)."""
    if not value:
        return None
    for reason in value.split(","):
        protocol, _, params = reason.strip().partition(";")
        if protocol.strip().upper() != "SIP":
            continue
        for param in params.split(";"):
            name, _, number = param.strip().partition("=")
            if name.strip().lower() == "cause" and number.strip().isdigit():
                return int(number)
    return None


def _call_push(device: CallDevice) -> tuple[PushKind, PushType]:
    if device.china_region:
        return PushKind.CALL_MESSAGE, PushType.MESSAGE
    return PushKind.CALL, PushType.VOIP


def follow_up_push(device: CallDevice, outcome: CallOutcome) -> SendPush:
    """The second push ``device`` gets when the call ended with ``outcome``."""
    match outcome:
        case CallOutcome.ANSWERED | CallOutcome.ANSWERED_ELSEWHERE:
            kind, reason = PushKind.CANCEL, CancelReason.ANSWERED_ELSEWHERE
        case CallOutcome.DECLINED_ELSEWHERE:
            kind, reason = PushKind.CANCEL, CancelReason.DECLINED_ELSEWHERE
        case CallOutcome.EXTENDED_TO_MOBILITY:
            kind, reason = PushKind.CANCEL, CancelReason.EXTENDED_TO_MOBILITY
        case _:
            kind, reason = PushKind.MISSED_CALL, None
    if device.single_channel:
        push_type = PushType.VOIP  # legacy: one channel carries everything
    else:
        # On iOS 13+ every VoIP push must report a new CallKit call, so a follow-up never
        # goes on the VoIP channel.
        push_type = PushType.CANCEL if kind is PushKind.CANCEL else PushType.MISSED_CALL
    return SendPush(device.id, kind, push_type, reason)


def _cancel_reason(outcome: CallOutcome) -> str:
    match outcome:
        case CallOutcome.ANSWERED | CallOutcome.ANSWERED_ELSEWHERE:
            return REASON_COMPLETED_ELSEWHERE
        case CallOutcome.DECLINED_ELSEWHERE:
            return REASON_DECLINED_ELSEWHERE
        case CallOutcome.EXTENDED_TO_MOBILITY:
            return REASON_EXTENDED
        case _:
            return REASON_MISSED


def _contact_uri(binding: Binding) -> URI | None:
    try:
        return parse_uri(binding.contact)
    except SipParseError:
        return None


class CallPush:
    """One held call. Feed it events; carry out the actions it returns, in order."""

    def __init__(self, config: CallPushConfig | None = None) -> None:
        self.config = config or CallPushConfig()
        self.invite: InviteSummary | None = None
        self._devices: dict[str, _Device] = {}
        self._responder = True  # we alone answer the caller
        self._rang = False  # some branch sent 180/183
        self._ringback_pending = False
        self._drop_pending = False
        self._push_sent_told = False
        self._outcome: CallOutcome | None = None
        self._done = False
        self._lingering = False

    # state, for the glue and tests

    @property
    def outcome(self) -> CallOutcome | None:
        """How the call ended; None while it is still on."""
        return self._outcome

    @property
    def done(self) -> bool:
        return self._done

    def device(self, device_id: str) -> CallDevice:
        return self._devices[device_id].info

    # events

    def start(
        self, now: float, invite: InviteSummary, devices: Sequence[CallDevice]
    ) -> list[Action]:
        self.invite = invite
        self._responder = not invite.live_branches
        for device in devices:
            instances = frozenset({device.binding.instance_id, device.instance_id} - {""})
            prids = frozenset(({device.binding.pn_prid} | device.prids) - {""})
            self._devices[device.id] = _Device(
                device,
                _contact_uri(device.binding),
                via_sip=device.reachable,
                instances=instances,
                prids=prids,
            )
        actions: list[Action] = [SendProvisional(100, "Trying")]
        for dev in self._devices.values():
            if not dev.info.reachable:
                actions += self._send_call_push(dev)
            elif self._pushes_when_reachable(dev.info):
                if self.config.reachable_push_delay > 0:
                    dev.push = _Push.DEFERRED
                    name = push_timer(dev.info.id)
                    actions.append(StartTimer(name, now + self.config.reachable_push_delay))
                else:
                    actions += self._send_call_push(dev)
        if self._nothing_can_reach():
            return actions + self._give_up(now, CallOutcome.PUSH_FAILED)
        self._ringback_pending = self._drop_pending = True
        actions.append(StartTimer(RINGBACK, now + self.config.ringback_after))
        actions.append(StartTimer(DROP, now + self.config.drop_after))
        return actions

    def device_registered(self, now: float, binding: Binding) -> list[Action]:
        """A REGISTER the node accepted (before its 2xx is sent) for the callee's AOR."""
        dev = self._match(binding)
        if dev is None or self._done:
            return []
        if self._outcome is None:
            if dev.via_sip:
                return []  # a refresh, or a device SIP already reaches
            dev.forwarded = dev.via_sip = dev.branch_open = True
            self._responder = False
            return [*self._suppress(dev), ForwardTo(dev.info.id, binding)]
        # The call is over but this device's push is still on its way and it woke before we
        # could follow up by push: show it the call ending over SIP instead.
        if dev.push is _Push.SENDING and not dev.followed_up and not dev.via_sip:
            dev.followed_up = True
            return [
                ForwardTo(dev.info.id, binding),
                CancelBranch(dev.info.id, _cancel_reason(self._outcome)),
            ]
        return []

    def device_ringing(self, now: float, device_id: str | None = None) -> list[Action]:
        """A branch sent 180/183 over a live connection; ``device_id`` None: a branch that is
        not one of our devices (e.g. a desk phone of the same line)."""
        if self._outcome is not None:
            return []
        actions: list[Action] = []
        if not self._rang and self._ringback_pending:
            self._ringback_pending = False
            actions.append(CancelTimer(RINGBACK))
        self._rang = True
        dev = self._devices.get(device_id) if device_id is not None else None
        if dev is not None:
            dev.via_sip = True
            actions += self._suppress(dev)
        return actions

    def branch_failed(self, now: float, device_id: str, status: int) -> list[Action]:
        """The proxy's branch to one of our devices ended with non-2xx ``status``."""
        dev = self._devices.get(device_id)
        if dev is None or status < 300 or self._done:
            return []
        dev.branch_open = False
        if status in _UNREACHED:
            dev.via_sip = False
        if self._outcome is None:
            return []
        actions: list[Action] = []
        if self._needs_follow_up(dev):
            dev.followed_up = True
            actions.append(follow_up_push(dev.info, self._outcome))
        return actions + self._maybe_done(now)

    def cancelled(self, now: float, cause: int | None = None) -> list[Action]:
        """The caller's CANCEL; ``cause`` from its Reason (``reason_cause``): 200 answered
        elsewhere, 600 declined elsewhere (an upstream fork), else the caller hung up."""
        if self._outcome is not None:
            return []
        outcome = {
            200: CallOutcome.ANSWERED_ELSEWHERE,
            600: CallOutcome.DECLINED_ELSEWHERE,
        }.get(cause or 0, CallOutcome.CANCELLED)
        actions: list[Action] = []
        if self._responder:
            actions.append(Respond(487, "Request Terminated"))
        return actions + self._end(now, outcome)

    def final_response(self, now: float, status: int, device_id: str | None = None) -> list[Action]:
        """The proxy answered the caller with ``status`` from a branch: ``device_id`` when the
        branch is one of our devices (it answered or declined), None for any other branch."""
        if self._outcome is not None or status < 200:
            return []
        self._responder = False
        dev = self._devices.get(device_id) if device_id is not None else None
        if dev is not None:
            dev.via_sip = True  # its own answer ended the call on it
            dev.branch_open = False
        if status < 300:
            outcome = CallOutcome.ANSWERED if dev is not None else CallOutcome.ANSWERED_ELSEWHERE
        elif status >= 600:
            outcome = CallOutcome.DECLINED_ELSEWHERE
        else:
            outcome = CallOutcome.FAILED
        return self._end(now, outcome)

    def push_result(self, now: float, device_id: str, delivered: bool) -> list[Action]:
        """The outcome of the call push to ``device_id`` (later results are ignored)."""
        dev = self._devices.get(device_id)
        if dev is None or dev.push is not _Push.SENDING or self._done:
            return []
        dev.push = _Push.DELIVERED if delivered else _Push.FAILED
        if self._outcome is None:
            if self._nothing_can_reach():
                return self._give_up(now, CallOutcome.PUSH_FAILED)
            return []
        actions: list[Action] = []
        if self._needs_follow_up(dev):
            dev.followed_up = True
            actions.append(follow_up_push(dev.info, self._outcome))
        return actions + self._maybe_done(now)

    def timer_fired(self, now: float, name: str) -> list[Action]:
        if name == RINGBACK:
            self._ringback_pending = False
            if self._outcome is None and not self._rang:
                return [SendProvisional(180, "Ringing")]
        elif name == DROP:
            self._drop_pending = False
            # With live branches and no mobility identity, the proxy's fork decides.
            mobility = self.invite is not None and bool(self.invite.mobility_number)
            if self._outcome is None and not self._taken() and (mobility or self._responder):
                return self._give_up(now, CallOutcome.TIMED_OUT)
        elif name == LINGER:
            if not self._done:
                return self._stop_lingering()
        elif name.startswith(_PUSH_TIMER):
            dev = self._devices.get(name[len(_PUSH_TIMER) :])
            if dev is not None and dev.push is _Push.DEFERRED and self._outcome is None:
                dev.push = _Push.NONE
                return self._send_call_push(dev)
        return []

    # rules

    def _pushes_when_reachable(self, device: CallDevice) -> bool:
        return self.config.push_reachable and not device.single_channel and not device.china_region

    def _send_call_push(self, dev: _Device) -> list[Action]:
        assert dev.push in (_Push.NONE, _Push.DEFERRED)  # one call push per device
        dev.push = _Push.SENDING
        kind, push_type = _call_push(dev.info)
        actions: list[Action] = [SendPush(dev.info.id, kind, push_type)]
        if self.invite is not None and self.invite.supports_push_sent and not self._push_sent_told:
            self._push_sent_told = True
            actions.append(SendProvisional(110, "Push sent"))
        return actions

    def _suppress(self, dev: _Device) -> list[Action]:
        """The device is on SIP now: a push still waiting for its timer is not sent."""
        if dev.push is not _Push.DEFERRED:
            return []
        dev.push = _Push.SUPPRESSED
        return [CancelTimer(push_timer(dev.info.id))]

    def _match(self, binding: Binding) -> _Device | None:
        """RFC 8599 §5.3 contact match first, then ``+sip.instance``, then a known pn-prid."""
        candidates = [d for d in self._devices.values() if d.info.binding.aor == binding.aor]
        for dev in candidates:
            if dev.uri is not None and push_params_match(dev.uri, binding):
                return dev
        if binding.instance_id:
            for dev in candidates:
                if binding.instance_id in dev.instances:
                    return dev
        if binding.pn_prid:
            for dev in candidates:
                if binding.pn_prid in dev.prids:
                    return dev
        return None

    def _taken(self) -> bool:
        """Some device has the call: it got the INVITE after waking, or something rings."""
        return self._rang or any(d.forwarded and d.via_sip for d in self._devices.values())

    def _nothing_can_reach(self) -> bool:
        """We alone hold the INVITE and no push is on its way or delivered."""
        if not self._responder:
            return False
        live = (_Push.DEFERRED, _Push.SENDING, _Push.DELIVERED)
        return not any(d.push in live or d.via_sip for d in self._devices.values())

    def _needs_follow_up(self, dev: _Device) -> bool:
        return dev.push is _Push.DELIVERED and not dev.via_sip and not dev.followed_up

    def _give_up(self, now: float, outcome: CallOutcome) -> list[Action]:
        """Nobody took the call: the mobility identity gets it if there is one, else 480."""
        assert self.invite is not None
        self._responder = False
        if self.invite.mobility_number:
            return [
                ExtendToMobility(self.invite.mobility_number),
                *self._end(now, CallOutcome.EXTENDED_TO_MOBILITY),
            ]
        return [Respond(480, "Temporarily Unavailable"), *self._end(now, outcome)]

    def _end(self, now: float, outcome: CallOutcome) -> list[Action]:
        self._outcome = outcome
        actions: list[Action] = []
        if self._ringback_pending:
            self._ringback_pending = False
            actions.append(CancelTimer(RINGBACK))
        if self._drop_pending:
            self._drop_pending = False
            actions.append(CancelTimer(DROP))
        for dev in self._devices.values():
            actions += self._suppress(dev)
            if self._needs_follow_up(dev):
                dev.followed_up = True
                actions.append(follow_up_push(dev.info, outcome))
        return actions + self._maybe_done(now)

    def _maybe_done(self, now: float) -> list[Action]:
        if self._done or self._outcome is None:
            return []
        # Wait for outstanding push results and forwarded branches: either may still call
        # for a follow-up.
        if any(d.push is _Push.SENDING or d.branch_open for d in self._devices.values()):
            if self._lingering:
                return []
            self._lingering = True
            return [StartTimer(LINGER, now + self.config.linger)]
        self._done = True
        actions: list[Action] = [CancelTimer(LINGER)] if self._lingering else []
        return [*actions, self._done_action()]

    def _stop_lingering(self) -> list[Action]:
        """Results never came: follow up every push still out, since it may have woken the
        device (a stray missed-call or cancel is harmless, a CallKit call left ringing is not)."""
        assert self._outcome is not None
        actions: list[Action] = []
        for dev in self._devices.values():
            if dev.push is _Push.SENDING and not dev.followed_up and not dev.via_sip:
                dev.followed_up = True
                actions.append(follow_up_push(dev.info, self._outcome))
        self._done = True
        return [*actions, self._done_action()]

    def _done_action(self) -> Done:
        assert self._outcome is not None
        return Done(self._outcome, any(d.forwarded for d in self._devices.values()))
