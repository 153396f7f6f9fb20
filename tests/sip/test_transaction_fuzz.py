"""Property tests: any sequence of inputs leaves the transaction machines consistent."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from tests.sip.support import make_request
from ucpush.sip.helpers import make_response
from ucpush.sip.message import SipRequest
from ucpush.sip.transaction import (
    Action,
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
    Transaction,
    Transmit,
    TransportError,
)

TIMERS = {
    ClientInviteTransaction: {"A", "B", "D", "M"},
    ClientNonInviteTransaction: {"E", "F", "K"},
    ServerInviteTransaction: {"G", "H", "I", "L"},
    ServerNonInviteTransaction: {"J"},
}
STATUSES = st.sampled_from([100, 180, 183, 200, 202, 302, 404, 486, 500, 603])
EVENTS = st.lists(
    st.one_of(
        st.tuples(st.just("response"), STATUSES),
        st.tuples(st.just("timer"), st.sampled_from("ABDEFGHIJKLMZ")),
        st.tuples(st.just("retransmit"), st.none()),
        st.tuples(st.just("ack"), st.none()),
        st.tuples(st.just("transport_error"), st.none()),
    ),
    max_size=25,
)


def step(tx: Transaction, invite: SipRequest, event: tuple[str, object]) -> list[Action]:
    kind, arg = event
    is_client = isinstance(tx, ClientInviteTransaction | ClientNonInviteTransaction)
    if kind == "response":
        response = make_response(tx.request, int(arg), to_tag="t")  # type: ignore[call-overload]
        if is_client:
            return tx.receive(response)  # type: ignore[union-attr]
        return tx.send_response(response)  # type: ignore[union-attr]
    if kind == "timer":
        return tx.timer_fired(str(arg))
    if kind == "transport_error":
        return tx.transport_error()
    if is_client:
        return []
    request = make_request("ACK") if kind == "ack" else tx.request
    return tx.receive(request)  # type: ignore[union-attr]


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from(list(TIMERS)),
    st.booleans(),
    EVENTS,
)
def test_transactions_stay_consistent(
    cls: type[Transaction], reliable: bool, events: list[tuple[str, object]]
) -> None:
    method = "INVITE" if cls in (ClientInviteTransaction, ServerInviteTransaction) else "OPTIONS"
    invite = make_request(method)
    tx = cls(invite, reliable=reliable)
    running: set[str] = set()
    terminated = 0
    delivered_final = 0
    for event in [("start", None), *events]:
        actions = tx.start() if event[0] == "start" else step(tx, invite, event)  # type: ignore[attr-defined]
        if terminated:
            assert actions == []
            continue
        if event[0] == "timer":
            if event[1] not in running:
                assert actions == []  # stale or unknown timers are ignored
            running.discard(str(event[1]))  # a timer that fired is no longer running
        for action in actions:
            if isinstance(action, StartTimer):
                assert action.name in TIMERS[cls] and action.seconds > 0
                if reliable:
                    assert action.name not in {"A", "E", "G", "D", "I", "J", "K"}
                running.add(action.name)
            elif isinstance(action, CancelTimer):
                assert action.name in running
                running.discard(action.name)
            elif isinstance(action, Terminated):
                terminated += 1
                assert action is actions[-1]
            elif isinstance(action, Timeout):
                assert action.timer in {"B", "F", "H"}
            elif isinstance(action, DeliverToTU) and is_final(action):
                delivered_final += 1
            else:
                assert isinstance(action, Transmit | DeliverToTU | TransportError)
        if terminated:
            assert tx.state is State.TERMINATED
            assert not running, "a terminated transaction must not leave timers behind"
    # Non-INVITE clients hand exactly one final response to the TU.
    if cls is ClientNonInviteTransaction:
        assert delivered_final <= 1


def is_final(action: DeliverToTU) -> bool:
    return getattr(action.message, "status", 0) >= 200
