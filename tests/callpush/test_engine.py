"""The call-push engine on a fake clock: every rule of issue 5 / SPEC §2."""

from __future__ import annotations

from dataclasses import replace

import pytest

from tests.callpush.conftest import Harness, binding, device
from ucpush.callpush.engine import (
    DROP,
    LINGER,
    REASON_MISSED,
    RINGBACK,
    CallOutcome,
    CallPushConfig,
    CancelBranch,
    CancelReason,
    CancelTimer,
    Done,
    ExtendToMobility,
    ForwardTo,
    PushKind,
    Respond,
    SendProvisional,
    SendPush,
    StartTimer,
    push_timer,
    reason_cause,
)
from ucpush.relay.providers.base import PushType
from ucpush.sip.proxy import REASON_COMPLETED_ELSEWHERE, REASON_DECLINED_ELSEWHERE


def provisionals(h: Harness) -> list[int]:
    return [a.status for a in h.of(SendProvisional)]


def finals(h: Harness) -> list[int]:
    return [a.status for a in h.of(Respond)]


def delivered(h: Harness, *device_ids: str) -> None:
    for device_id in device_ids:
        h.do("push_result", device_id, True)


# start


def test_start_trying_voip_push_and_both_timers() -> None:
    h = Harness()
    actions = h.start([device("iphone")])
    assert actions == [
        SendProvisional(100, "Trying"),
        SendPush("iphone", PushKind.CALL, PushType.VOIP),
        StartTimer(RINGBACK, 5.0),
        StartTimer(DROP, 13.0),
    ]


def test_push_sent_110_once_only_when_the_caller_supports_it() -> None:
    h = Harness()
    h.start([device("a"), device("b")], supports_push_sent=True)
    assert provisionals(h) == [100, 110]
    h2 = Harness()
    h2.start([device("a"), device("b")])
    assert provisionals(h2) == [100]


def test_every_unreachable_device_gets_one_call_push() -> None:
    h = Harness()
    h.start([device("a"), device("b"), device("c")])
    assert [p.device_id for p in h.call_pushes()] == ["a", "b", "c"]


def test_no_devices_is_480_at_once() -> None:
    h = Harness()
    h.start([])
    assert finals(h) == [480]
    assert h.of(Done) == [Done(CallOutcome.PUSH_FAILED, False)]


# 5 s ring-back, 13 s drop


def test_ringback_at_5s_then_480_and_missed_call_at_13s() -> None:
    h = Harness()
    h.start([device("iphone")])
    delivered(h, "iphone")
    assert h.advance(4.99) == []
    assert h.advance(0.01) == [SendProvisional(180, "Ringing")]
    assert h.now == 5.0
    actions = h.advance(8.0)
    assert actions == [
        Respond(480, "Temporarily Unavailable"),
        SendPush("iphone", PushKind.MISSED_CALL, PushType.MISSED_CALL),
        Done(CallOutcome.TIMED_OUT, False),
    ]
    assert h.engine.outcome is CallOutcome.TIMED_OUT and h.engine.done


def test_timers_are_configurable() -> None:
    h = Harness(CallPushConfig(ringback_after=2.0, drop_after=4.0))
    h.start([device("iphone")])
    delivered(h, "iphone")
    assert h.advance(2.0) == [SendProvisional(180, "Ringing")]
    assert finals(h) == []
    h.advance(2.0)
    assert finals(h) == [480]


def test_no_ringback_when_a_device_already_rang() -> None:
    h = Harness()
    h.start([device("desk", reachable=True), device("iphone")], live_branches=True)
    assert h.do("device_ringing", "desk") == [
        CancelTimer(RINGBACK),
        CancelTimer(push_timer("desk")),
    ]
    assert h.advance(6.0) == []
    assert 180 not in provisionals(h)


def test_ringing_of_another_branch_also_stops_ringback() -> None:
    h = Harness()
    h.start([device("iphone")], live_branches=True)
    h.do("device_ringing", None)
    h.advance(20.0)
    assert 180 not in provisionals(h)
    assert finals(h) == []  # with live branches the proxy's fork answers


def test_drop_does_not_hit_a_device_that_took_the_call() -> None:
    h = Harness()
    h.start([device("iphone")])
    delivered(h, "iphone")
    h.advance(2.0)
    assert h.do("device_registered", binding("iphone")) == [ForwardTo("iphone", binding("iphone"))]
    h.advance(20.0)
    assert finals(h) == [] and h.follow_ups() == []
    assert h.engine.outcome is None
    h.do("final_response", 200, "iphone")
    assert h.of(Done) == [Done(CallOutcome.ANSWERED, True)]
    assert h.follow_ups() == []  # it answered: SIP ended the call on it


# re-REGISTER matching (RFC 8599 §5.6.2)


def test_register_matched_by_contact_is_forwarded_at_once_and_only_once() -> None:
    h = Harness()
    h.start([device("a"), device("b")])
    again = replace(binding("a"), cseq=2, source_host="198.51.100.9")
    assert h.do("device_registered", again) == [ForwardTo("a", again)]
    assert h.do("device_registered", replace(again, cseq=3)) == []


def test_register_matched_by_instance_when_the_contact_changed() -> None:
    h = Harness()
    h.start([device("a"), device("b")])
    moved = binding("b", prid="tok-b", contact="sip:b@203.0.113.5:6000;transport=tcp")
    assert h.do("device_registered", moved) == [ForwardTo("b", moved)]


def test_register_matched_by_rotated_pn_prid() -> None:
    h = Harness()
    h.start([device("a", prids=frozenset({"tok-new"})), device("b")])
    rotated = binding("x", prid="tok-new", instance="")
    assert h.do("device_registered", rotated) == [ForwardTo("a", rotated)]


def test_register_matched_by_instance_linked_at_signin() -> None:
    h = Harness()
    h.start([device("a", instance_id="<urn:uuid:signin-link>")])
    fresh = binding("y", instance="<urn:uuid:signin-link>", prid="tok-y")
    assert h.do("device_registered", fresh) == [ForwardTo("a", fresh)]


def test_contact_match_needs_the_same_pn_params() -> None:
    h = Harness()
    h.start([device("a")])
    # Same contact host/user but another pn-prid and no shared instance: not this device.
    other = binding(
        "a",
        prid="tok-other",
        instance="",
        contact=(
            "sip:a@192.0.2.1:5060;transport=tcp"
            ";pn-provider=apns;pn-prid=tok-other;pn-param=TEAM.org.example.voip"
        ),
    )
    assert h.do("device_registered", other) == []


def test_registers_of_strangers_and_other_aors_are_ignored() -> None:
    h = Harness()
    h.start([device("a")])
    assert h.do("device_registered", binding("zz")) == []
    assert h.do("device_registered", binding("a", aor="sip:bob@example.org")) == []
    assert h.of(ForwardTo) == []


# second pushes


def test_caller_cancel_sends_missed_call_to_every_woken_device() -> None:
    h = Harness()
    h.start([device("a"), device("b"), device("c")])
    delivered(h, "a", "b")
    h.do("push_result", "c", False)
    h.advance(3.0)
    actions = h.do("cancelled")
    assert actions == [
        Respond(487, "Request Terminated"),
        CancelTimer(RINGBACK),
        CancelTimer(DROP),
        SendPush("a", PushKind.MISSED_CALL, PushType.MISSED_CALL),
        SendPush("b", PushKind.MISSED_CALL, PushType.MISSED_CALL),
        Done(CallOutcome.CANCELLED, False),
    ]
    assert h.advance(30.0) == []


@pytest.mark.parametrize(
    ("reason", "cause", "expected"),
    [
        (REASON_COMPLETED_ELSEWHERE, 200, CancelReason.ANSWERED_ELSEWHERE),
        (REASON_DECLINED_ELSEWHERE, 600, CancelReason.DECLINED_ELSEWHERE),
    ],
)
def test_cancel_with_reason_sends_cancel_push(
    reason: str, cause: int, expected: CancelReason
) -> None:
    assert reason_cause(reason) == cause
    h = Harness()
    h.start([device("a")])
    delivered(h, "a")
    h.do("cancelled", reason_cause(reason))
    assert h.follow_ups() == [SendPush("a", PushKind.CANCEL, PushType.CANCEL, expected)]


def test_reason_cause_parsing() -> None:
    assert reason_cause(None) is None
    assert reason_cause("") is None
    assert reason_cause('Q.850;cause=16;text="x"') is None
    assert reason_cause('Q.850;cause=16, SIP ; cause = 200 ;text="y"') == 200
    assert reason_cause("SIP;text=x;cause=abc") is None


def test_answered_elsewhere_by_another_branch_sends_cancel_push() -> None:
    h = Harness()
    h.start([device("desk", reachable=True), device("iphone")], live_branches=True)
    delivered(h, "iphone")
    h.do("final_response", 200)
    assert h.follow_ups() == [
        SendPush("iphone", PushKind.CANCEL, PushType.CANCEL, CancelReason.ANSWERED_ELSEWHERE)
    ]
    assert finals(h) == []
    assert h.of(Done) == [Done(CallOutcome.ANSWERED_ELSEWHERE, False)]


def test_answer_by_one_woken_device_cancels_the_others() -> None:
    h = Harness()
    h.start([device("a"), device("b")])
    delivered(h, "a", "b")
    h.do("device_registered", binding("a"))
    h.do("final_response", 200, "a")
    assert h.follow_ups() == [
        SendPush("b", PushKind.CANCEL, PushType.CANCEL, CancelReason.ANSWERED_ELSEWHERE)
    ]


def test_declined_elsewhere_sends_declined_cancel_push() -> None:
    h = Harness()
    h.start([device("a"), device("b")])
    delivered(h, "a", "b")
    h.do("device_registered", binding("a"))
    h.do("final_response", 603, "a")
    assert h.follow_ups() == [
        SendPush("b", PushKind.CANCEL, PushType.CANCEL, CancelReason.DECLINED_ELSEWHERE)
    ]
    assert h.engine.outcome is CallOutcome.DECLINED_ELSEWHERE


def test_other_final_response_is_a_missed_call() -> None:
    h = Harness()
    h.start([device("a"), device("b")])
    delivered(h, "a", "b")
    h.do("device_registered", binding("a"))
    h.do("final_response", 486, "a")
    assert h.follow_ups() == [SendPush("b", PushKind.MISSED_CALL, PushType.MISSED_CALL)]
    assert h.engine.outcome is CallOutcome.FAILED


# one push per device, suppressed pushes


def test_reachable_device_gets_deferred_push_unless_it_rings_first() -> None:
    h = Harness()
    h.start([device("fg", reachable=True), device("bg")], live_branches=True)
    assert h.call_pushes() == [SendPush("bg", PushKind.CALL, PushType.VOIP)]
    assert h.timers[push_timer("fg")] == 1.0
    h.advance(0.5)
    h.do("device_ringing", "fg")
    h.advance(1.0)
    assert [p.device_id for p in h.call_pushes()] == ["bg"]


def test_reachable_device_that_does_not_ring_gets_its_push_after_the_delay() -> None:
    h = Harness()
    h.start([device("fg", reachable=True)], live_branches=True)
    assert h.advance(1.0) == [SendPush("fg", PushKind.CALL, PushType.VOIP)]
    h.do("device_ringing", "fg")
    assert len(h.call_pushes("fg")) == 1


def test_reachable_push_can_be_immediate_or_off() -> None:
    h = Harness(CallPushConfig(reachable_push_delay=0))
    h.start([device("fg", reachable=True)], live_branches=True)
    assert h.call_pushes() == [SendPush("fg", PushKind.CALL, PushType.VOIP)]
    off = Harness(CallPushConfig(push_reachable=False))
    off.start([device("fg", reachable=True)], live_branches=True)
    off.advance(20.0)
    assert off.pushes() == []


def test_legacy_and_china_devices_are_not_pushed_while_connected() -> None:
    h = Harness()
    h.start(
        [
            device("old", reachable=True, single_channel=True),
            device("cn", reachable=True, china_region=True),
        ],
        live_branches=True,
    )
    h.advance(20.0)
    assert h.pushes() == []


def test_register_before_the_deferred_push_cancels_it() -> None:
    h = Harness()
    h.start([device("fg", reachable=True)], live_branches=True)
    h.do("branch_failed", "fg", 503)  # its connection broke
    assert h.do("device_registered", binding("fg")) == [
        CancelTimer(push_timer("fg")),
        ForwardTo("fg", binding("fg")),
    ]
    h.advance(2.0)
    assert h.pushes() == []


def test_never_two_call_pushes_whatever_happens() -> None:
    h = Harness()
    h.start([device("a")])
    h.do("device_registered", binding("a"))
    h.do("branch_failed", "a", 408)
    h.do("device_registered", replace(binding("a"), cseq=9))
    h.advance(20.0)
    assert len(h.call_pushes("a")) == 1
    assert len(h.of(ForwardTo)) == 2


# every VoIP push is followed up


def test_push_still_in_flight_at_the_end_is_followed_up_when_delivered() -> None:
    h = Harness()
    h.start([device("a"), device("b")])
    actions = h.do("cancelled")
    assert StartTimer(LINGER, 30.0) in actions
    assert h.of(Done) == []
    assert h.do("push_result", "a", True) == [
        SendPush("a", PushKind.MISSED_CALL, PushType.MISSED_CALL)
    ]
    assert h.do("push_result", "b", False) == [
        CancelTimer(LINGER),
        Done(CallOutcome.CANCELLED, False),
    ]
    assert h.follow_ups("b") == []


def test_late_registration_after_the_call_ended_gets_invite_and_cancel() -> None:
    h = Harness()
    h.start([device("a")])
    h.do("final_response", 200)  # answered elsewhere before a's push result came back
    late = replace(binding("a"), cseq=2)
    assert h.do("device_registered", late) == [
        ForwardTo("a", late),
        CancelBranch("a", REASON_COMPLETED_ELSEWHERE),
    ]
    assert h.do("push_result", "a", True) == [
        CancelTimer(LINGER),
        Done(CallOutcome.ANSWERED_ELSEWHERE, False),
    ]
    assert h.follow_ups() == []  # INVITE+CANCEL was its follow-up


def test_late_registration_after_missed_call_push_gets_nothing_more() -> None:
    h = Harness()
    h.start([device("a")])
    delivered(h, "a")
    h.do("cancelled")
    assert h.do("device_registered", binding("a")) == []
    assert len(h.follow_ups("a")) == 1


def test_late_invite_cancel_reason_for_a_missed_call() -> None:
    h = Harness()
    h.start([device("a")])
    h.do("cancelled")
    actions = h.do("device_registered", binding("a"))
    assert actions[1] == CancelBranch("a", REASON_MISSED)


def test_lost_push_results_are_followed_up_and_end_the_engine_after_linger() -> None:
    h = Harness(CallPushConfig(linger=10.0))
    h.start([device("a")])
    h.advance(13.0)
    assert finals(h) == [480] and not h.engine.done
    assert h.advance(10.0) == [
        SendPush("a", PushKind.MISSED_CALL, PushType.MISSED_CALL),
        Done(CallOutcome.TIMED_OUT, False),
    ]
    assert h.do("push_result", "a", True) == []


def test_forwarded_device_whose_branch_never_answered_gets_a_push_follow_up() -> None:
    h = Harness()
    h.start([device("a"), device("desk", reachable=True)], live_branches=True)
    delivered(h, "a")
    h.do("device_registered", binding("a"))
    h.do("final_response", 200, "desk")
    assert h.follow_ups() == []  # the proxy's fork cancels a's branch
    assert not h.engine.done  # a's branch is still open
    assert h.do("branch_failed", "a", 408) == [
        SendPush("a", PushKind.CANCEL, PushType.CANCEL, CancelReason.ANSWERED_ELSEWHERE),
        CancelTimer(LINGER),
        Done(CallOutcome.ANSWERED, True),
    ]
    assert h.do("branch_failed", "a", 408) == []


def test_a_branch_the_device_answered_needs_no_push() -> None:
    h = Harness()
    h.start([device("a")])
    delivered(h, "a")
    h.do("device_registered", binding("a"))
    h.do("branch_failed", "a", 486)
    h.do("cancelled")
    assert h.follow_ups() == []


# push failures


def test_all_pushes_failed_is_480_at_once() -> None:
    h = Harness()
    h.start([device("a"), device("b")])
    h.do("push_result", "a", False)
    assert finals(h) == []
    h.do("push_result", "b", False)
    assert finals(h) == [480]
    assert h.of(Done) == [Done(CallOutcome.PUSH_FAILED, False)]
    assert h.follow_ups() == []


def test_failed_pushes_with_live_branches_let_the_call_go_on() -> None:
    h = Harness()
    h.start([device("a"), device("desk", reachable=True)], live_branches=True)
    h.do("push_result", "a", False)
    assert finals(h) == [] and h.engine.outcome is None


# China region, single channel, FCM


def test_china_region_gets_message_push_then_missed_call_message() -> None:
    h = Harness()
    h.start([device("cn", china_region=True)])
    assert h.call_pushes() == [SendPush("cn", PushKind.CALL_MESSAGE, PushType.MESSAGE)]
    delivered(h, "cn")
    h.advance(13.0)
    assert h.follow_ups() == [SendPush("cn", PushKind.MISSED_CALL, PushType.MISSED_CALL)]


def test_china_region_answered_elsewhere_is_a_shared_cancel_message() -> None:
    h = Harness()
    h.start([device("cn", china_region=True)])
    delivered(h, "cn")
    h.do("cancelled", 200)
    assert h.follow_ups() == [
        SendPush("cn", PushKind.CANCEL, PushType.CANCEL, CancelReason.ANSWERED_ELSEWHERE)
    ]


def test_single_channel_device_gets_everything_on_the_voip_channel() -> None:
    h = Harness()
    h.start([device("old", single_channel=True)])
    delivered(h, "old")
    h.do("cancelled", 200)
    assert [(p.kind, p.push_type) for p in h.pushes()] == [
        (PushKind.CALL, PushType.VOIP),
        (PushKind.CANCEL, PushType.VOIP),
    ]


# mobility identity


def test_timeout_extends_to_the_mobility_identity() -> None:
    h = Harness()
    h.start([device("a")], mobility_number="+15559999")
    delivered(h, "a")
    actions = h.advance(13.0)
    assert actions[-3:] == [
        ExtendToMobility("+15559999"),
        SendPush("a", PushKind.CANCEL, PushType.CANCEL, CancelReason.EXTENDED_TO_MOBILITY),
        Done(CallOutcome.EXTENDED_TO_MOBILITY, False),
    ]
    assert finals(h) == []


def test_mobility_is_not_used_when_the_device_registered_in_time() -> None:
    h = Harness()
    h.start([device("a")], mobility_number="+15559999")
    delivered(h, "a")
    h.advance(4.0)
    h.do("device_registered", binding("a"))
    h.advance(20.0)
    h.do("final_response", 200, "a")
    assert h.of(ExtendToMobility) == []
    assert h.of(Done) == [Done(CallOutcome.ANSWERED, True)]


def test_push_failure_extends_to_mobility_too() -> None:
    h = Harness()
    h.start([device("a")], mobility_number="+15559999")
    h.do("push_result", "a", False)
    assert h.of(ExtendToMobility) == [ExtendToMobility("+15559999")]
    assert finals(h) == []


def test_mobility_extension_with_live_branches_that_never_rang() -> None:
    h = Harness()
    h.start([device("a"), device("desk", reachable=True)], live_branches=True, mobility_number="9")
    h.advance(13.0)
    assert h.of(ExtendToMobility) == [ExtendToMobility("9")]


# events after the end are ignored


def test_events_after_the_end_change_nothing() -> None:
    h = Harness()
    h.start([device("a")])
    delivered(h, "a")
    h.do("cancelled")
    before = list(h.log)
    for method, args in [
        ("cancelled", (200,)),
        ("final_response", (200,)),
        ("device_ringing", ("a",)),
        ("push_result", ("a", True)),
        ("timer_fired", (RINGBACK,)),
        ("timer_fired", (DROP,)),
        ("timer_fired", (push_timer("a"),)),
        ("branch_failed", ("a", 486)),
        ("device_registered", (binding("a"),)),
    ]:
        assert h.do(method, *args) == [], method
    assert h.log == before
