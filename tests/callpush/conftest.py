"""Call push test helpers: bindings, devices and a fake clock that runs the engine's timers.
The dispatcher tests also use the relay stack (``tests.relay.conftest``) and the local push
node (``tests.lpns.conftest``); their fixtures are re-exported here."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

from tests.lpns.conftest import lpns_settings, node
from tests.relay.conftest import relay_store_url, stack
from ucpush.callpush.engine import (
    Action,
    CallDevice,
    CallPush,
    CallPushConfig,
    CancelTimer,
    InviteSummary,
    PushKind,
    SendPush,
    StartTimer,
)
from ucpush.store.repository import Binding

__all__ = ["Harness", "binding", "device", "lpns_settings", "node", "relay_store_url", "stack"]

AOR = "sip:alice@example.org"
T0 = datetime(2026, 11, 25, 1, 0, tzinfo=UTC)
CALL_PUSHES = (PushKind.CALL, PushKind.CALL_MESSAGE)


def binding(
    name: str,
    *,
    prid: str | None = None,
    instance: str | None = None,
    contact: str | None = None,
    aor: str = AOR,
) -> Binding:
    """A push binding of ``aor``; by default contact, instance and pn-prid all derive from
    ``name``."""
    prid = f"tok-{name}" if prid is None else prid
    instance = f"<urn:uuid:00000000-0000-0000-0000-{name:0>12}>" if instance is None else instance
    contact = contact or (
        f"sip:{name}@192.0.2.1:5060;transport=tcp"
        f";pn-provider=apns;pn-prid={prid};pn-param=TEAM.org.example.voip"
    )
    return Binding(
        id=f"b-{name}",
        aor=aor,
        contact=contact,
        expires_at=T0 + timedelta(hours=1),
        call_id=f"reg-{name}",
        cseq=1,
        updated_at=T0,
        instance_id=instance,
        pn_provider="apns",
        pn_prid=prid,
        pn_param="TEAM.org.example.voip",
    )


def device(name: str, **kwargs: Any) -> CallDevice:
    return CallDevice(id=name, binding=binding(name), **kwargs)


def invite(**kwargs: Any) -> InviteSummary:
    values: dict[str, Any] = {
        "call_id": "call-1@pbx",
        "caller_name": "Bob Caller",
        "caller_number": "+15550001",
    }
    values.update(kwargs)
    return InviteSummary(**values)


class Harness:
    """Drives one ``CallPush`` on a fake clock: it keeps the timers the engine starts and
    fires them, in order, when time advances."""

    def __init__(self, config: CallPushConfig | None = None) -> None:
        self.engine = CallPush(config)
        self.now = 0.0
        self.timers: dict[str, float] = {}
        self.log: list[Action] = []

    def feed(self, actions: Iterable[Action]) -> list[Action]:
        actions = list(actions)
        for action in actions:
            self.log.append(action)
            if isinstance(action, StartTimer):
                self.timers[action.name] = action.at
            elif isinstance(action, CancelTimer):
                self.timers.pop(action.name, None)
        return actions

    def start(self, devices: list[CallDevice], **invite_fields: Any) -> list[Action]:
        return self.feed(self.engine.start(self.now, invite(**invite_fields), devices))

    def advance(self, seconds: float) -> list[Action]:
        """Move the clock, firing due timers; return every action they produced."""
        until = self.now + seconds
        out: list[Action] = []
        while self.timers:
            name, at = min(self.timers.items(), key=lambda item: item[1])
            if at > until:
                break
            del self.timers[name]
            self.now = at
            out += self.feed(self.engine.timer_fired(at, name))
        self.now = until
        return out

    def do(self, method: str, *args: Any, **kwargs: Any) -> list[Action]:
        return self.feed(getattr(self.engine, method)(self.now, *args, **kwargs))

    def pushes(self, device_id: str | None = None) -> list[SendPush]:
        return [
            a
            for a in self.log
            if isinstance(a, SendPush) and (device_id is None or a.device_id == device_id)
        ]

    def call_pushes(self, device_id: str | None = None) -> list[SendPush]:
        return [p for p in self.pushes(device_id) if p.kind in CALL_PUSHES]

    def follow_ups(self, device_id: str | None = None) -> list[SendPush]:
        return [p for p in self.pushes(device_id) if p.kind not in CALL_PUSHES]

    def of(self, kind: type) -> list[Any]:
        return [a for a in self.log if isinstance(a, kind)]
