"""Test support: a fake clock for transaction timers and a request factory."""

from __future__ import annotations

from dataclasses import dataclass, field

from ucpush.sip.message import SipRequest, parse_message
from ucpush.sip.transaction import Action, CancelTimer, StartTimer, Transaction


@dataclass
class FakeClock:
    """Drives one transaction's timers: keeps deadlines and fires them in order."""

    tx: Transaction
    now: float = 0.0
    deadlines: dict[str, float] = field(default_factory=dict)
    log: list[tuple[float, Action]] = field(default_factory=list)

    def apply(self, actions: list[Action]) -> list[Action]:
        for action in actions:
            self.log.append((self.now, action))
            if isinstance(action, StartTimer):
                self.deadlines[action.name] = self.now + action.seconds
            elif isinstance(action, CancelTimer):
                self.deadlines.pop(action.name, None)
        return actions

    def advance(self, seconds: float) -> list[Action]:
        """Move time forward, firing every timer that falls due, earliest first."""
        end = self.now + seconds
        fired: list[Action] = []
        while self.deadlines:
            name, due = min(self.deadlines.items(), key=lambda item: item[1])
            if due > end:
                break
            del self.deadlines[name]
            self.now = due
            fired += self.apply(self.tx.timer_fired(name))
        self.now = end
        return fired


def make_request(
    method: str, *, branch: str | None = "z9hG4bKtest1", transport: str = "UDP"
) -> SipRequest:
    via = f"SIP/2.0/{transport} client.example.com:5060"
    if branch is not None:
        via += f";branch={branch}"
    raw = (
        f"{method} sip:bob@example.com SIP/2.0\r\n"
        f"Via: {via}\r\n"
        "Max-Forwards: 70\r\n"
        "Route: <sip:proxy.example.com;lr>\r\n"
        "From: Alice <sip:alice@example.com>;tag=fromtag\r\n"
        "To: Bob <sip:bob@example.com>\r\n"
        "Call-ID: call-1@client.example.com\r\n"
        f"CSeq: 7 {method}\r\n"
        "Content-Length: 0\r\n\r\n"
    ).encode()
    msg = parse_message(raw)
    assert isinstance(msg, SipRequest)
    return msg
