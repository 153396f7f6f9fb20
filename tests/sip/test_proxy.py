"""The sans-IO proxy core (RFC 3261 §16) without sockets."""

from __future__ import annotations

import pytest

from ucpush.sip.helpers import make_response
from ucpush.sip.message import SipRequest, SipResponse, parse_message
from ucpush.sip.proxy import (
    REASON_COMPLETED_ELSEWHERE,
    Cancel,
    ForkContext,
    Forward,
    ProxyConfig,
    ProxyCore,
    RequestError,
    Respond,
    Routed,
    Target,
    best_response,
)
from ucpush.sip.resolve import Flow, Hop
from ucpush.sip.uri import parse_uri

LOCAL = {"UDP": ("192.0.2.10", 5060), "TCP": ("192.0.2.10", 5060), "TLS": ("192.0.2.10", 5061)}
CALLER = Flow("UDP", "198.51.100.1", 5060)


@pytest.fixture
def core() -> ProxyCore:
    return ProxyCore(ProxyConfig(local=LOCAL, domains=frozenset({"example.org"})))


def invite(*extra: str, method: str = "INVITE", uri: str = "sip:bob@example.org") -> SipRequest:
    lines = [
        f"{method} {uri} SIP/2.0",
        "Via: SIP/2.0/UDP 198.51.100.1:5060;branch=z9hG4bKcaller1",
        "Max-Forwards: 70",
        "From: <sip:alice@example.org>;tag=alice",
        "To: <sip:bob@example.org>",
        "Call-ID: call-1@198.51.100.1",
        f"CSeq: 1 {method}",
        *extra,
        "Content-Length: 0",
    ]
    message = parse_message(("\r\n".join(lines) + "\r\n\r\n").encode())
    assert isinstance(message, SipRequest)
    return message


def answer(forward: Forward, status: int, *, tag: str = "t") -> SipResponse:
    """What the callee answers to a forwarded request (our Via still on top)."""
    return make_response(forward.request, status, to_tag=tag if status > 100 else None)


def target(host: str, q: float = 1.0, transport: str = "udp") -> Target:
    return Target(parse_uri(f"sip:bob@{host};transport={transport}"), q)


# §16.3 validation


def test_max_forwards_zero_is_483(core):
    request = invite()
    request.headers.set("Max-Forwards", "0")
    with pytest.raises(RequestError) as exc:
        core.check(request)
    assert exc.value.status == 483


def test_proxy_require_unknown_is_420_with_unsupported(core):
    with pytest.raises(RequestError) as exc:
        core.check(invite("Proxy-Require: foo, sec-agree"))
    response = exc.value.response(invite())
    assert response.status == 420
    assert response.headers.get("Unsupported") == "foo, sec-agree"
    assert response.to.tag


def test_non_sip_request_uri_is_416(core):
    with pytest.raises(RequestError) as exc:
        core.check(invite(uri="tel:+15551234"))
    assert exc.value.status == 416


def test_loop_is_482_but_a_spiral_passes(core):
    request = invite()
    core.check(request)
    # Retargeted to a contact that is the proxy's own domain again: a spiral (new R-URI).
    first = core.forward(request, target("example.org"), CALLER, record_route=True)
    spiral = first.request
    core.check(spiral)
    # The same request forwarded unchanged comes back: a loop.
    second = core.forward(spiral, Target(spiral.uri), CALLER, record_route=False)
    with pytest.raises(RequestError) as exc:
        core.check(second.request)
    assert exc.value.status == 482


# §16.4 Route pre-processing and §16.6 forwarding


def test_our_routes_are_popped_both_after_double_record_route(core):
    request = invite(
        "Route: <sip:192.0.2.10:5060;transport=udp;lr>",
        "Route: <sip:192.0.2.10:5060;transport=tcp;lr>",
        "Route: <sip:pbx.example.net;lr>",
    )
    assert core.preprocess_routes(request, CALLER).popped
    assert request.headers.get_all("Route") == ["<sip:pbx.example.net;lr>"]
    forward = core.forward(request, Target(request.uri), CALLER, record_route=False)
    assert forward.hop == Hop("UDP", "pbx.example.net", 5060, False, False)  # NAPTR/SRV
    assert str(forward.request.uri) == "sip:bob@example.org"


def test_strict_router_request_uri_is_restored(core):
    request = invite("Route: <sip:bob@203.0.113.5:5070>", uri="sip:192.0.2.10:5060;lr")
    assert core.preprocess_routes(request, CALLER).popped
    assert str(request.uri) == "sip:bob@203.0.113.5:5070"
    assert request.headers.get_all("Route") == []


def test_forward_builds_the_branch_request(core):
    request = invite()
    forward = core.forward(request, target("203.0.113.5:5070"), CALLER, record_route=True)
    out = forward.request
    assert str(out.uri) == "sip:bob@203.0.113.5:5070;transport=udp"
    assert out.max_forwards == 69
    assert out.headers.get_all("Record-Route") == ["<sip:192.0.2.10:5060;transport=udp;lr>"]
    via = out.top_via
    assert (via.transport, via.host, via.port) == ("UDP", "192.0.2.10", 5060)
    assert via.branch and via.branch.startswith("z9hG4bK") and via.has_rport
    assert len(out.vias) == 2
    assert forward.hop == Hop("UDP", "203.0.113.5", 5070)
    assert request.max_forwards == 70  # the original is untouched


def test_double_record_route_when_transports_differ(core):
    forward = core.forward(
        invite(), target("203.0.113.5", transport="tcp"), CALLER, record_route=True
    )
    assert forward.request.headers.get_all("Record-Route") == [
        "<sip:192.0.2.10:5060;transport=tcp;lr>",
        "<sip:192.0.2.10:5060;transport=udp;lr>",
    ]
    assert forward.request.top_via.transport == "TCP"


def test_flow_tokens_route_in_dialog_requests_both_ways(core):
    caller = Flow("TCP", "198.51.100.1", 40001)
    device = Flow("TLS", "203.0.113.7", 40002)
    target = Target(parse_uri("sip:bob@10.0.0.7:5062;transport=tls"), flow=device)
    forward = core.forward(invite(), target, caller, record_route=True)
    rr = forward.request.headers.get_all("Record-Route")
    assert len(rr) == 2 and all("@192.0.2.10:" in v for v in rr)

    def in_dialog(routes: list[str], arrival: Flow):
        request = invite(*(f"Route: {r}" for r in routes), method="BYE", uri="sip:x@192.0.2.99")
        return core.preprocess_routes(request, arrival)

    # The callee uses the Record-Route set in order, the caller reversed (§12.1).
    assert in_dialog(rr, device).flow == caller
    assert in_dialog(rr[::-1], caller).flow == device
    # A token for the flow the request came from means "the other way": route by R-URI.
    assert in_dialog(rr[::-1], device).flow is None
    forged = rr[0].replace("sips:", "sips:AAAA", 1)  # a token whose MAC does not match
    assert in_dialog([forged], caller) == Routed(popped=True, flow=None)


def test_udp_caller_gets_no_token_and_same_transports_one_entry(core):
    forward = core.forward(invite(), target("203.0.113.5"), CALLER, record_route=True)
    assert forward.request.headers.get_all("Record-Route") == [
        "<sip:192.0.2.10:5060;transport=udp;lr>"
    ]


def test_registered_flow_and_path_win(core):
    flow = Flow("TLS", "203.0.113.7", 40000)
    t = Target(parse_uri("sip:bob@10.0.0.7:5062"), flow=flow, routes=("<sip:edge.example;lr>",))
    forward = core.forward(invite(), t, CALLER, record_route=False)
    assert forward.flow == flow and forward.hop.transport == "TLS"
    assert forward.request.headers.get_all("Route") == ["<sip:edge.example;lr>"]
    assert forward.request.top_via.transport == "TLS"


def test_ack_is_forwarded_with_a_stable_branch(core):
    ack = invite("Route: <sip:192.0.2.10;lr>", method="ACK", uri="sip:bob@203.0.113.5")
    ack.headers.set("To", "<sip:bob@example.org>;tag=b")
    core.preprocess_routes(ack, CALLER)
    one, two = core.stateless(ack, CALLER), core.stateless(ack, CALLER)
    assert one.branch == two.branch
    assert one.hop == Hop("UDP", "203.0.113.5", 5060, False, False)


def test_stray_response_pops_our_via_only(core):
    forward = core.forward(invite(), target("203.0.113.5"), CALLER, record_route=False)
    out = core.stray_response(answer(forward, 200))
    assert out is not None and out.top_via.branch == "z9hG4bKcaller1"
    assert core.stray_response(make_response(invite(), 200)) is None


# §16.7 response context


def start(core: ProxyCore, *targets: Target, request: SipRequest | None = None):
    ctx = ForkContext(core, request or invite(), CALLER, list(targets))
    actions = ctx.start()
    forwards = [a for a in actions if isinstance(a, Forward)]
    return ctx, forwards


def test_parallel_fork_one_answers_the_other_is_cancelled_with_reason(core):
    ctx, (a, b) = start(core, target("203.0.113.1"), target("203.0.113.2"))
    assert ctx.on_response(a.branch, answer(a, 100)) == []
    ringing = ctx.on_response(b.branch, answer(b, 180, tag="b"))
    assert [type(x) for x in ringing] == [Respond]
    assert ringing[0].response.top_via.branch == "z9hG4bKcaller1"  # our Via popped
    actions = ctx.on_response(a.branch, answer(a, 200, tag="a"))
    cancels = [x for x in actions if isinstance(x, Cancel)]
    assert len(cancels) == 1 and cancels[0].branch == b.branch
    cancel = cancels[0].request
    assert cancel.method == "CANCEL" and cancel.top_via.branch == b.branch
    assert cancel.headers.get("Reason") == REASON_COMPLETED_ELSEWHERE
    assert [x.response.status for x in actions if isinstance(x, Respond)] == [200]
    # The cancelled branch's 487 is absorbed; a late 2xx from it still goes upstream.
    assert ctx.on_response(b.branch, answer(b, 487, tag="b")) == []
    assert ctx.finished


def test_cancel_waits_for_a_provisional_response(core):
    ctx, (a, b) = start(core, target("203.0.113.1"), target("203.0.113.2"))
    actions = ctx.on_response(a.branch, answer(a, 200))
    assert not [x for x in actions if isinstance(x, Cancel)]  # b has said nothing yet
    later = ctx.on_response(b.branch, answer(b, 100))
    assert [type(x) for x in later] == [Cancel]


def test_every_2xx_of_an_invite_goes_upstream(core):
    ctx, (a, b) = start(core, target("203.0.113.1"), target("203.0.113.2"))
    ctx.on_response(b.branch, answer(b, 180, tag="b"))
    first = ctx.on_response(a.branch, answer(a, 200, tag="a"))
    second = ctx.on_response(b.branch, answer(b, 200, tag="b"))
    assert [x.response.status for x in first + second if isinstance(x, Respond)] == [200, 200]


def test_6xx_cancels_and_wins(core):
    ctx, (a, b) = start(core, target("203.0.113.1"), target("203.0.113.2"))
    ctx.on_response(b.branch, answer(b, 180, tag="b"))
    actions = ctx.on_response(a.branch, answer(a, 603, tag="a"))
    assert [type(x) for x in actions] == [Cancel]
    assert "cause=600" in (actions[0].request.headers.get("Reason") or "")
    final = ctx.on_response(b.branch, answer(b, 487, tag="b"))
    assert [x.response.status for x in final if isinstance(x, Respond)] == [603]


def test_caller_cancel_cancels_branches_and_answers_487(core):
    ctx, (a, b) = start(core, target("203.0.113.1"), target("203.0.113.2"))
    ctx.on_response(a.branch, answer(a, 180, tag="a"))
    actions = ctx.cancel()
    assert [type(x) for x in actions] == [Cancel, Respond]
    assert actions[0].request.headers.get("Reason") is None
    assert actions[1].response.status == 487 and actions[1].response.to.tag
    # b had no provisional: its CANCEL goes out once it rings.
    assert [type(x) for x in ctx.on_response(b.branch, answer(b, 180, tag="b"))] == [Cancel]
    assert ctx.on_response(a.branch, answer(a, 487, tag="a")) == []


def test_q_groups_are_tried_in_turn(core):
    ctx, forwards = start(core, target("203.0.113.1", 0.5), target("203.0.113.2", 1.0))
    assert [str(f.request.uri) for f in forwards] == ["sip:bob@203.0.113.2;transport=udp"]
    actions = ctx.on_response(forwards[0].branch, answer(forwards[0], 486))
    assert [str(x.request.uri) for x in actions if isinstance(x, Forward)] == [
        "sip:bob@203.0.113.1;transport=udp"
    ]
    (low,) = actions
    assert isinstance(low, Forward)
    final = ctx.on_response(low.branch, answer(low, 404))
    assert [x.response.status for x in final if isinstance(x, Respond)] == [486]


def test_all_branches_unreachable_is_480_and_timeouts_are_408(core):
    ctx, (a, b) = start(core, target("203.0.113.1"), target("203.0.113.2"))
    assert ctx.on_failure(a.branch, 503) == []
    (final,) = ctx.on_failure(b.branch, 503)
    assert isinstance(final, Respond) and final.response.status == 480
    ctx, (a,) = start(core, target("203.0.113.1"))
    (final,) = ctx.on_failure(a.branch, 408)
    assert isinstance(final, Respond) and final.response.status == 408


def test_non_invite_first_2xx_only(core):
    request = invite(method="MESSAGE")
    ctx, (a, b) = start(core, target("203.0.113.1"), target("203.0.113.2"), request=request)
    assert [type(x) for x in ctx.on_response(a.branch, answer(a, 200))] == [Respond]
    assert ctx.on_response(b.branch, answer(b, 200)) == []


def test_expire_cancels_and_answers_408(core):
    ctx, (a,) = start(core, target("203.0.113.1"))
    ctx.on_response(a.branch, answer(a, 180))
    actions = ctx.expire()
    assert [type(x) for x in actions] == [Cancel, Respond]
    assert actions[1].response.status == 408


def _resp(status: int, *headers: tuple[str, str]) -> SipResponse:
    return make_response(invite(), status, to_tag="x", headers=headers)


def test_best_response_rules():
    request = invite()
    assert best_response([], request).status == 408
    assert best_response([_resp(486), _resp(302), _resp(500)], request).status == 302
    assert best_response([_resp(408), _resp(486)], request).status == 486
    assert best_response([_resp(404), _resp(484)], request).status == 484
    assert best_response([_resp(486), _resp(600)], request).status == 600
    converted = best_response([_resp(503)], request)
    assert converted.status == 500
    merged = best_response(
        [
            _resp(401, ("WWW-Authenticate", 'Digest realm="a"')),
            _resp(407, ("Proxy-Authenticate", 'Digest realm="b"')),
            _resp(486),
        ],
        request,
    )
    assert merged.status in (401, 407)
    assert merged.headers.get_all("WWW-Authenticate") == ['Digest realm="a"']
    assert merged.headers.get_all("Proxy-Authenticate") == ['Digest realm="b"']


# a fork held for call push


def test_held_fork_waits_with_no_branch_then_forks_late_to_the_woken_device(core):
    ctx = ForkContext(core, invite(), CALLER, [], held=True)
    assert ctx.start() == []  # no branch, no answer: call push holds the INVITE
    [ringback] = ctx.provisional(180, "Ringing")
    assert isinstance(ringback, Respond) and ringback.response.status == 180
    assert ringback.response.to.tag  # our own early dialog
    assert ctx.provisional(100, "Trying") == []  # the transaction layer sent it
    [forward] = ctx.add_target(Target(parse_uri("sip:bob@203.0.113.7"), binding_id="b1"))
    assert isinstance(forward, Forward) and ctx.release() == []
    assert ctx.binding_of(forward.branch) == "b1"
    [final] = ctx.on_response(forward.branch, answer(forward, 200))
    assert isinstance(final, Respond) and final.response.status == 200
    assert ctx.decided_by == forward.branch and ctx.finished


def test_held_fork_outlives_its_failed_live_branch_until_released(core):
    ctx = ForkContext(core, invite(), CALLER, [target("203.0.113.1")], held=True)
    [forward] = ctx.start()
    assert ctx.on_response(forward.branch, answer(forward, 486)) == []
    [final] = ctx.release()
    assert isinstance(final, Respond) and final.response.status == 486


def test_respond_cancels_pending_branches_and_answers_once(core):
    ctx = ForkContext(core, invite(), CALLER, [target("203.0.113.1")], held=True)
    [forward] = ctx.start()
    ctx.on_response(forward.branch, answer(forward, 180))
    cancel, final = ctx.respond(480, "Temporarily Unavailable")
    assert isinstance(cancel, Cancel) and cancel.branch == forward.branch
    assert isinstance(final, Respond) and final.response.status == 480
    assert ctx.respond(480, "Temporarily Unavailable") == []
    assert ctx.provisional(180, "Ringing") == []
    assert ctx.add_target(target("203.0.113.2")) == []  # too late to fork


def test_caller_cancel_ends_the_hold(core):
    ctx = ForkContext(core, invite(), CALLER, [], held=True)
    ctx.start()
    [final] = ctx.cancel()
    assert isinstance(final, Respond) and final.response.status == 487
    assert ctx.add_target(target("203.0.113.2")) == []
