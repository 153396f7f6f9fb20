"""Two transaction layers talking over a simulated lossy datagram link, on one fake clock."""

from __future__ import annotations

from dataclasses import dataclass, field

from tests.sip.support import make_request
from ucpush.sip.framing import parse_datagram
from ucpush.sip.helpers import make_response
from ucpush.sip.message import SipRequest, SipResponse
from ucpush.sip.transaction import (
    Action,
    CancelTimer,
    DeliverToTU,
    StartTimer,
    Terminated,
    Timeout,
    Transaction,
    TransactionLayer,
    Transmit,
)


@dataclass
class Link:
    """Both ends of one UDP path. ``drop`` lists 1-based send numbers that are lost."""

    drop: set[int] = field(default_factory=set)
    now: float = 0.0
    sent: int = 0
    timers: dict[tuple[int, int, str], tuple[float, Transaction]] = field(default_factory=dict)
    layers: dict[str, TransactionLayer] = field(default_factory=dict)
    delivered: dict[str, list[SipRequest | SipResponse]] = field(default_factory=dict)
    events: list[tuple[str, Action]] = field(default_factory=list)

    def add(self, name: str) -> TransactionLayer:
        self.layers[name] = TransactionLayer()
        self.delivered[name] = []
        return self.layers[name]

    def run(self, side: str, tx: Transaction | None, actions: list[Action]) -> None:
        layer_id = id(self.layers[side])
        for action in actions:
            self.events.append((side, action))
            if isinstance(action, Transmit):
                self.sent += 1
                if self.sent not in self.drop:
                    # Through the wire format, as a real datagram would be.
                    message = parse_datagram(action.message.serialize())
                    assert message is not None
                    self.receive("uas" if side == "uac" else "uac", message)
            elif isinstance(action, StartTimer):
                assert tx is not None
                key = (layer_id, id(tx), action.name)
                self.timers[key] = (self.now + action.seconds, tx)
            elif isinstance(action, CancelTimer):
                assert tx is not None
                self.timers.pop((layer_id, id(tx), action.name), None)
            elif isinstance(action, DeliverToTU):
                self.delivered[side].append(action.message)

    def receive(self, side: str, message: SipRequest | SipResponse) -> None:
        layer = self.layers[side]
        if isinstance(message, SipRequest):
            tx, actions = layer.receive_request(message, reliable=False)
        else:
            tx, actions = layer.receive_response(message)
        self.run(side, tx, actions)

    def advance(self, seconds: float) -> None:
        end = self.now + seconds
        while self.timers:
            key, (due, tx) = min(self.timers.items(), key=lambda item: item[1][0])
            if due > end:
                break
            del self.timers[key]
            self.now = due
            side = next(n for n, layer in self.layers.items() if id(layer) == key[0])
            self.run(side, tx, self.layers[side].timer_fired(tx, key[2]))
        self.now = end


def test_lost_invite_and_lost_ack_are_recovered() -> None:
    # Sends: 1 INVITE (lost), 2 INVITE retransmit, 3 100 Trying, 4 486, 5 ACK (lost),
    # 6 486 retransmitted by Timer G, 7 ACK again.
    link = Link(drop={1, 5})
    uac, uas = link.add("uac"), link.add("uas")
    invite = make_request("INVITE", branch="z9hG4bKflow1")
    client, actions = uac.send_request(invite, reliable=False)
    link.run("uac", client, actions)
    assert link.delivered["uas"] == []
    link.advance(0.5)  # Timer A retransmits
    [server_invite] = link.delivered["uas"]
    server = uas.servers[next(iter(uas.servers))]
    assert isinstance(server_invite, SipRequest)
    link.run(
        "uas", server, uas.send_response(server, make_response(server_invite, 486, to_tag="b"))
    )
    assert [m.status for m in link.delivered["uac"]] == [100, 486]  # type: ignore[union-attr]
    link.advance(0.5)  # Timer G fires; the client resends its ACK
    assert link.sent == 7
    assert server.state == "Confirmed"
    link.advance(40)
    assert len(uac) == 0 and len(uas) == 0
    assert not link.timers
    assert all(not isinstance(a, Timeout) for _, a in link.events)


def test_non_invite_retransmission_absorbed_then_answered() -> None:
    # Sends: 1 OPTIONS, 2 200 OK (lost), 3 OPTIONS retransmit, 4 200 OK resent.
    link = Link(drop={2})
    uac, uas = link.add("uac"), link.add("uas")
    options = make_request("OPTIONS", branch="z9hG4bKflow2")
    client, actions = uac.send_request(options, reliable=False)
    link.run("uac", client, actions)
    [request] = link.delivered["uas"]
    server = next(iter(uas.servers.values()))
    assert isinstance(request, SipRequest)
    link.run("uas", server, uas.send_response(server, make_response(request, 200, to_tag="t")))
    assert link.delivered["uac"] == []
    link.advance(0.5)
    assert [m.status for m in link.delivered["uac"]] == [200]  # type: ignore[union-attr]
    assert len(link.delivered["uas"]) == 1  # the retransmission never reached the TU
    link.advance(40)
    assert len(uac) == 0 and len(uas) == 0


def test_black_hole_times_out() -> None:
    link = Link(drop=set(range(1, 100)))
    uac = link.add("uac")
    link.add("uas")
    options = make_request("OPTIONS", branch="z9hG4bKflow3")
    client, actions = uac.send_request(options, reliable=False)
    link.run("uac", client, actions)
    link.advance(64)
    assert link.sent == 11  # 0.5, 1, 2, 4, then every 4 s up to Timer F at 32 s
    assert ("uac", Timeout("F")) in link.events and ("uac", Terminated()) in link.events
    assert len(uac) == 0
