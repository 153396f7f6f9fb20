from __future__ import annotations

import pytest

from tests.sip.support import FakeClock, make_request
from ucpush.sip.helpers import build_cancel, make_response
from ucpush.sip.message import SipRequest, SipResponse
from ucpush.sip.transaction import (
    CancelTimer,
    ClientInviteTransaction,
    ClientNonInviteTransaction,
    DeliverToTU,
    ServerInviteTransaction,
    ServerNonInviteTransaction,
    StartTimer,
    State,
    Terminated,
    Timeout,
    TimerConfig,
    TransactionLayer,
    Transmit,
    TransportError,
    client_key,
    server_key,
)


def reply(request: SipRequest, status: int, tag: str | None = "totag") -> SipResponse:
    return make_response(request, status, to_tag=tag)


def transmits(actions: list) -> list:
    return [a.message for a in actions if isinstance(a, Transmit)]


# --- INVITE client transaction (§17.1.1, RFC 6026) ---------------------------------------


def test_invite_client_timer_a_backoff_until_timer_b(invite: SipRequest) -> None:
    tx = ClientInviteTransaction(invite, reliable=False)
    clock = FakeClock(tx)
    assert clock.apply(tx.start()) == [
        Transmit(invite),
        StartTimer("A", 0.5),
        StartTimer("B", 32.0),
    ]
    fired = clock.advance(31.9)
    # Timer A doubles without a cap: 0.5, 1.5, 3.5, 7.5, 15.5, 31.5.
    assert [t for t, a in clock.log if isinstance(a, Transmit)] == [
        0.0,
        0.5,
        1.5,
        3.5,
        7.5,
        15.5,
        31.5,
    ]
    assert StartTimer("A", 16.0) in fired and StartTimer("A", 32.0) in fired
    fired = clock.advance(1)
    assert fired == [Timeout("B"), CancelTimer("A"), Terminated()]
    assert tx.state is State.TERMINATED
    assert tx.receive(reply(invite, 180)) == [] and tx.timer_fired("A") == []


def test_invite_client_reliable_has_no_timer_a(invite: SipRequest) -> None:
    tx = ClientInviteTransaction(invite, reliable=True)
    assert tx.start() == [Transmit(invite), StartTimer("B", 32.0)]
    assert tx.timer_fired("A") == []
    assert tx.timer_fired("B") == [Timeout("B"), Terminated()]


def test_invite_client_proceeding_then_failure_sends_ack(invite: SipRequest) -> None:
    tx = ClientInviteTransaction(invite, reliable=False)
    clock = FakeClock(tx)
    clock.apply(tx.start())
    ringing = reply(invite, 180)
    assert clock.apply(tx.receive(ringing)) == [
        CancelTimer("A"),
        CancelTimer("B"),
        DeliverToTU(ringing),
    ]
    assert tx.state is State.PROCEEDING
    assert clock.advance(100) == []  # no retransmission, no timeout in Proceeding
    assert tx.receive(ringing) == [DeliverToTU(ringing)]
    busy = reply(invite, 486)
    actions = clock.apply(tx.receive(busy))
    assert tx.state is State.COMPLETED
    [ack] = transmits(actions)
    assert actions[1:] == [DeliverToTU(busy), StartTimer("D", 32.0)]
    assert isinstance(ack, SipRequest) and ack.method == "ACK" and ack.uri == invite.uri
    assert (ack.cseq.seq, ack.cseq.method) == (7, "ACK")
    assert ack.to.tag == "totag" and ack.from_.tag == "fromtag"
    assert ack.call_id == invite.call_id and ack.top_via == invite.top_via
    assert len(ack.vias) == 1 and ack.headers.get_all("Route") == ["<sip:proxy.example.com;lr>"]
    # A retransmitted final response is answered with the same ACK, not delivered again.
    assert tx.receive(busy) == [Transmit(ack)]
    assert tx.receive(reply(invite, 180)) == []
    assert clock.advance(32) == [Terminated()]


def test_invite_client_failure_on_reliable_terminates_at_once(invite: SipRequest) -> None:
    tx = ClientInviteTransaction(invite, reliable=True)
    tx.start()
    not_found = reply(invite, 404)
    actions = tx.receive(not_found)
    [ack] = transmits(actions)
    assert actions == [CancelTimer("B"), Transmit(ack), DeliverToTU(not_found), Terminated()]
    assert tx.state is State.TERMINATED


def test_invite_client_2xx_accepted_state(invite: SipRequest) -> None:
    tx = ClientInviteTransaction(invite, reliable=False)
    clock = FakeClock(tx)
    clock.apply(tx.start())
    ok = reply(invite, 200)
    assert clock.apply(tx.receive(ok)) == [
        CancelTimer("A"),
        CancelTimer("B"),
        DeliverToTU(ok),
        StartTimer("M", 32.0),
    ]
    assert tx.state is State.ACCEPTED
    forked = reply(invite, 200, tag="other")
    assert tx.receive(forked) == [DeliverToTU(forked)]  # forked 2xx reach the TU
    assert tx.receive(reply(invite, 180)) == [] and tx.receive(reply(invite, 500)) == []
    assert clock.advance(32) == [Terminated()]


def test_invite_client_transport_error(invite: SipRequest) -> None:
    tx = ClientInviteTransaction(invite, reliable=False)
    tx.start()
    assert tx.transport_error() == [
        TransportError(),
        CancelTimer("A"),
        CancelTimer("B"),
        Terminated(),
    ]
    assert tx.transport_error() == []


# --- non-INVITE client transaction (§17.1.2) ----------------------------------------------


def test_non_invite_client_timer_e_capped_at_t2_then_f(options: SipRequest) -> None:
    tx = ClientNonInviteTransaction(options, reliable=False)
    clock = FakeClock(tx)
    assert clock.apply(tx.start()) == [
        Transmit(options),
        StartTimer("E", 0.5),
        StartTimer("F", 32.0),
    ]
    clock.advance(31.9)
    times = [t for t, a in clock.log if isinstance(a, Transmit)]
    assert times[:6] == [0.0, 0.5, 1.5, 3.5, 7.5, 11.5]  # 0.5, 1, 2, 4, then every T2
    assert times[-1] == 31.5
    assert clock.advance(1) == [Timeout("F"), CancelTimer("E"), Terminated()]


def test_non_invite_client_proceeding_retransmits_every_t2(options: SipRequest) -> None:
    tx = ClientNonInviteTransaction(options, reliable=False)
    clock = FakeClock(tx)
    clock.apply(tx.start())
    trying = reply(options, 100, tag=None)
    assert tx.receive(trying) == [DeliverToTU(trying)]
    assert tx.state is State.PROCEEDING
    fired = clock.advance(0.5)
    assert fired == [Transmit(options), StartTimer("E", 4.0)]
    ok = reply(options, 200)
    assert clock.apply(tx.receive(ok)) == [
        CancelTimer("E"),
        CancelTimer("F"),
        DeliverToTU(ok),
        StartTimer("K", 5.0),
    ]
    assert tx.state is State.COMPLETED
    assert tx.receive(ok) == []  # retransmission absorbed
    assert clock.advance(5) == [Terminated()]


def test_non_invite_client_reliable(options: SipRequest) -> None:
    tx = ClientNonInviteTransaction(options, reliable=True)
    assert tx.start() == [Transmit(options), StartTimer("F", 32.0)]
    ok = reply(options, 200)
    assert tx.receive(ok) == [CancelTimer("F"), DeliverToTU(ok), Terminated()]


def test_non_invite_client_transport_error(options: SipRequest) -> None:
    tx = ClientNonInviteTransaction(options, reliable=True)
    tx.start()
    assert tx.transport_error() == [TransportError(), CancelTimer("F"), Terminated()]


def test_custom_timer_values(options: SipRequest) -> None:
    timers = TimerConfig(t1=0.1, t2=0.4, t4=1.0)
    tx = ClientNonInviteTransaction(options, reliable=False, timers=timers)
    assert tx.start()[1:] == [StartTimer("E", 0.1), StartTimer("F", pytest.approx(6.4))]
    tx.receive(reply(options, 200))
    assert tx.timer_fired("K") == [Terminated()]


# --- INVITE server transaction (§17.2.1, RFC 6026) ---------------------------------------


def test_invite_server_trying_and_retransmissions(invite: SipRequest) -> None:
    tx = ServerInviteTransaction(invite, reliable=False)
    actions = tx.start()
    assert actions[0] == DeliverToTU(invite)
    [trying] = transmits(actions)
    assert isinstance(trying, SipResponse) and trying.status == 100 and trying.to.tag is None
    assert tx.receive(invite) == [Transmit(trying)]
    ringing = reply(invite, 180)
    assert tx.send_response(ringing) == [Transmit(ringing)]
    assert tx.receive(invite) == [Transmit(ringing)]
    assert tx.receive(make_request("ACK")) == []  # ACK before a final response: ignored


def test_invite_server_without_auto_trying(invite: SipRequest) -> None:
    tx = ServerInviteTransaction(invite, reliable=False, send_trying=False)
    assert tx.start() == [DeliverToTU(invite)]
    assert tx.receive(invite) == []


def test_invite_server_failure_timer_g_then_ack(invite: SipRequest) -> None:
    tx = ServerInviteTransaction(invite, reliable=False)
    clock = FakeClock(tx)
    clock.apply(tx.start())
    busy = reply(invite, 486)
    assert clock.apply(tx.send_response(busy)) == [
        Transmit(busy),
        StartTimer("G", 0.5),
        StartTimer("H", 32.0),
    ]
    assert tx.state is State.COMPLETED
    clock.advance(12)
    times = [t for t, a in clock.log if isinstance(a, Transmit) and a.message is busy]
    assert times == [0.0, 0.5, 1.5, 3.5, 7.5, 11.5]  # G doubles up to T2
    assert tx.receive(invite) == [Transmit(busy)]
    assert tx.send_response(reply(invite, 500)) == []  # later finals are discarded
    ack = make_request("ACK")
    assert clock.apply(tx.receive(ack)) == [
        CancelTimer("G"),
        CancelTimer("H"),
        StartTimer("I", 5.0),
    ]
    assert tx.state is State.CONFIRMED
    assert tx.receive(ack) == [] and tx.receive(invite) == []
    assert clock.advance(5) == [Terminated()]


def test_invite_server_timer_h_without_ack(invite: SipRequest) -> None:
    tx = ServerInviteTransaction(invite, reliable=True)
    clock = FakeClock(tx)
    clock.apply(tx.start())
    busy = reply(invite, 603)
    assert clock.apply(tx.send_response(busy)) == [Transmit(busy), StartTimer("H", 32.0)]
    assert clock.advance(32) == [Timeout("H"), Terminated()]


def test_invite_server_reliable_ack_terminates_at_once(invite: SipRequest) -> None:
    tx = ServerInviteTransaction(invite, reliable=True)
    tx.start()
    tx.send_response(reply(invite, 486))
    assert tx.receive(make_request("ACK")) == [CancelTimer("H"), Terminated()]


def test_invite_server_2xx_accepted_state(invite: SipRequest) -> None:
    tx = ServerInviteTransaction(invite, reliable=False)
    clock = FakeClock(tx)
    clock.apply(tx.start())
    ok = reply(invite, 200)
    assert clock.apply(tx.send_response(ok)) == [Transmit(ok), StartTimer("L", 32.0)]
    assert tx.state is State.ACCEPTED
    assert tx.receive(invite) == []  # INVITE retransmissions absorbed
    assert tx.send_response(ok) == [Transmit(ok)]  # the TU's 2xx retransmissions go out
    assert tx.send_response(reply(invite, 486)) == []
    ack = make_request("ACK")
    assert tx.receive(ack) == [DeliverToTU(ack)]
    assert clock.advance(32) == [Terminated()]


def test_invite_server_transport_error(invite: SipRequest) -> None:
    tx = ServerInviteTransaction(invite, reliable=False)
    tx.start()
    tx.send_response(reply(invite, 486))
    assert tx.transport_error() == [
        TransportError(),
        CancelTimer("G"),
        CancelTimer("H"),
        Terminated(),
    ]


# --- non-INVITE server transaction (§17.2.2) ----------------------------------------------


def test_non_invite_server_unreliable(options: SipRequest) -> None:
    tx = ServerNonInviteTransaction(options, reliable=False)
    clock = FakeClock(tx)
    assert tx.start() == [DeliverToTU(options)]
    assert tx.state is State.TRYING
    assert tx.receive(options) == []  # absorbed in Trying
    trying = reply(options, 100, tag=None)
    assert tx.send_response(trying) == [Transmit(trying)]
    assert tx.state is State.PROCEEDING
    assert tx.receive(options) == [Transmit(trying)]
    ok = reply(options, 200)
    assert clock.apply(tx.send_response(ok)) == [Transmit(ok), StartTimer("J", 32.0)]
    assert tx.state is State.COMPLETED
    assert tx.receive(options) == [Transmit(ok)]
    assert tx.send_response(reply(options, 500)) == []
    assert clock.advance(31) == []
    assert clock.advance(1) == [Terminated()]


def test_non_invite_server_reliable(options: SipRequest) -> None:
    tx = ServerNonInviteTransaction(options, reliable=True)
    tx.start()
    ok = reply(options, 200)
    assert tx.send_response(ok) == [Transmit(ok), Terminated()]
    assert tx.receive(options) == []


def test_non_invite_server_transport_error(options: SipRequest) -> None:
    tx = ServerNonInviteTransaction(options, reliable=False)
    tx.start()
    assert tx.transport_error() == [TransportError(), Terminated()]


def test_stale_timers_are_ignored(options: SipRequest) -> None:
    tx = ServerNonInviteTransaction(options, reliable=False)
    tx.start()
    assert tx.timer_fired("J") == [] and tx.timer_fired("Z") == []


# --- matching and the transaction layer ---------------------------------------------------


def test_server_keys() -> None:
    invite = make_request("INVITE", branch="z9hG4bKabc")
    ack = make_request("ACK", branch="z9hG4bKabc")
    cancel = make_request("CANCEL", branch="z9hG4bKabc")
    assert server_key(invite) == server_key(ack)
    assert server_key(invite) != server_key(cancel)
    assert server_key(cancel, method="INVITE") == server_key(invite)
    other_host = make_request("INVITE", branch="z9hG4bKabc", transport="TCP")
    assert server_key(other_host) == server_key(invite)  # transport is not part of the key
    moved = parse_with_via(invite, "SIP/2.0/UDP other.example.com:5060;branch=z9hG4bKabc")
    assert server_key(moved) != server_key(invite)
    # RFC 2543 fallback: no magic cookie.
    old = make_request("INVITE", branch=None)
    old_ack = make_request("ACK", branch=None)
    old_ack.headers.set("To", "Bob <sip:bob@example.com>;tag=xyz")
    assert server_key(old) == server_key(old_ack)
    assert server_key(make_request("INVITE", branch="1234")) != server_key(old)


def parse_with_via(request: SipRequest, via: str) -> SipRequest:
    copy = request.copy()
    copy.headers.set("Via", via)
    return copy


def test_client_keys(invite: SipRequest) -> None:
    assert client_key(invite) == ("z9hG4bKtest1", "INVITE")
    assert client_key(reply(invite, 200)) == ("z9hG4bKtest1", "INVITE")
    assert client_key(make_request("INVITE", branch=None)) is None


def test_layer_server_invite_flow_with_cancel() -> None:
    layer = TransactionLayer()
    invite = make_request("INVITE", branch="z9hG4bKflow")
    tx, actions = layer.receive_request(invite, reliable=False)
    assert isinstance(tx, ServerInviteTransaction) and DeliverToTU(invite) in actions
    again, actions = layer.receive_request(invite, reliable=False)
    assert again is tx and len(transmits(actions)) == 1  # 100 Trying resent
    cancel = make_request("CANCEL", branch="z9hG4bKflow")
    cancel_tx, actions = layer.receive_request(cancel, reliable=False)
    assert isinstance(cancel_tx, ServerNonInviteTransaction) and actions == [DeliverToTU(cancel)]
    assert layer.invite_for_cancel(cancel) is tx
    assert len(layer) == 2
    layer.send_response(cancel_tx, reply(cancel, 200))
    terminated = reply(invite, 487)
    assert layer.send_response(tx, terminated)[0] == Transmit(terminated)
    ack = make_request("ACK", branch="z9hG4bKflow")
    matched, actions = layer.receive_request(ack, reliable=False)
    assert matched is tx and actions == [CancelTimer("G"), CancelTimer("H"), StartTimer("I", 5.0)]
    assert layer.timer_fired(tx, "I") == [Terminated()]
    assert layer.invite_for_cancel(cancel) is None
    assert layer.timer_fired(cancel_tx, "J") == [Terminated()]
    assert len(layer) == 0


def test_layer_ack_for_2xx_goes_to_tu() -> None:
    layer = TransactionLayer()
    invite = make_request("INVITE", branch="z9hG4bKinv")
    tx, _ = layer.receive_request(invite, reliable=True)
    assert tx is not None
    layer.send_response(tx, reply(invite, 200))
    ack = make_request("ACK", branch="z9hG4bKnewbranch")  # 2xx ACK is its own transaction
    matched, actions = layer.receive_request(ack, reliable=True)
    assert matched is None and actions == [DeliverToTU(ack)]


def test_layer_rfc2543_ack_matches_invite() -> None:
    layer = TransactionLayer(send_trying=False)
    invite = make_request("INVITE", branch=None)
    tx, _ = layer.receive_request(invite, reliable=True)
    assert tx is not None
    layer.send_response(tx, reply(invite, 486, tag="xyz"))
    ack = make_request("ACK", branch=None)
    ack.headers.set("To", "Bob <sip:bob@example.com>;tag=xyz")
    matched, actions = layer.receive_request(ack, reliable=True)
    assert matched is tx and actions[-1] == Terminated()
    assert len(layer) == 0


def test_layer_client_flow() -> None:
    layer = TransactionLayer()
    invite = make_request("INVITE", branch="z9hG4bKcli")
    tx, actions = layer.send_request(invite, reliable=False)
    assert isinstance(tx, ClientInviteTransaction) and actions[0] == Transmit(invite)
    cancel = build_cancel(invite)
    assert cancel.top_via.branch == "z9hG4bKcli" and cancel.cseq.method == "CANCEL"
    assert cancel.cseq.seq == invite.cseq.seq and cancel.to == invite.to
    cancel_tx, _ = layer.send_request(cancel, reliable=False)
    assert isinstance(cancel_tx, ClientNonInviteTransaction) and len(layer) == 2
    # The CANCEL's 200 matches the CANCEL transaction, not the INVITE one.
    matched, actions = layer.receive_response(reply(cancel, 200))
    assert matched is cancel_tx and isinstance(actions[-1], StartTimer)
    matched, actions = layer.receive_response(reply(invite, 487))
    assert matched is tx and transmits(actions)[0].method == "ACK"
    stray = reply(make_request("INVITE", branch="z9hG4bKunknown"), 200)
    assert layer.receive_response(stray) == (None, [DeliverToTU(stray)])
    assert layer.transport_error(tx) == [TransportError(), CancelTimer("D"), Terminated()]
    assert len(layer) == 1


def test_layer_client_reliable_final_removes_at_once(options: SipRequest) -> None:
    layer = TransactionLayer()
    tx, _ = layer.send_request(options, reliable=True)
    matched, actions = layer.receive_response(reply(options, 200))
    assert matched is tx and actions[-1] == Terminated() and len(layer) == 0


def test_layer_send_request_validation(options: SipRequest) -> None:
    layer = TransactionLayer()
    with pytest.raises(ValueError, match="ACK"):
        layer.send_request(make_request("ACK"), reliable=True)
    with pytest.raises(ValueError, match="branch"):
        layer.send_request(make_request("OPTIONS", branch="1234"), reliable=True)
    layer.send_request(options, reliable=True)
    with pytest.raises(ValueError, match="already exists"):
        layer.send_request(options, reliable=True)
