"""Random event sequences against the call-push engine, with a small model of the proxy
around it. Invariants: never two call pushes to one device, every delivered call push followed
up exactly once (by push, late INVITE+CANCEL, or SIP reaching the device), exactly one final
response to the caller, and the engine always finishes."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from tests.callpush.conftest import Harness, binding, device
from ucpush.callpush.engine import (
    Action,
    CallDevice,
    CallPushConfig,
    CancelBranch,
    ExtendToMobility,
    ForwardTo,
    Respond,
)

NAMES = ("a", "b", "c")

devices_st = st.lists(
    st.fixed_dictionaries(
        {
            "reachable": st.booleans(),
            "china_region": st.booleans(),
            "single_channel": st.booleans(),
        }
    ),
    min_size=1,
    max_size=3,
)
index = st.integers(0, 2)
ops_st = st.lists(
    st.one_of(
        st.tuples(st.just("advance"), st.floats(0, 8)),
        st.tuples(st.just("result"), index, st.booleans()),
        st.tuples(st.just("register"), index, st.sampled_from(["contact", "instance", "prid"])),
        st.tuples(st.just("ring"), st.one_of(st.none(), index)),
        st.tuples(st.just("cancel"), st.sampled_from([None, 200, 600, 487])),
        st.tuples(st.just("final"), st.sampled_from([200, 486, 603]), st.one_of(st.none(), index)),
        st.tuples(st.just("fail"), index, st.sampled_from([408, 486, 487, 503])),
    ),
    max_size=25,
)


@dataclass
class Proxy:
    """What the proxy would know: whether a fork exists and how many finals went out."""

    h: Harness
    devices: list[CallDevice]
    fork: bool = False
    finals: int = 0
    ended: bool = False
    forwarded: set[str] = field(default_factory=set)
    open_branches: set[str] = field(default_factory=set)
    lost: set[str] = field(default_factory=set)  # last branch ended without reaching it
    results: dict[str, bool] = field(default_factory=dict)
    register_seq: int = 1

    def run(self, actions: list[Action]) -> None:
        late = any(isinstance(a, CancelBranch) for a in actions)
        for action in actions:
            if isinstance(action, Respond):
                assert not self.fork, "engine answered although the proxy's fork owns the call"
                self.finals += 1
            elif isinstance(action, ForwardTo) and not late:
                self.fork = True
                self.forwarded.add(action.device_id)
                self.open_branches.add(action.device_id)
                self.lost.discard(action.device_id)
            elif isinstance(action, ExtendToMobility):
                self.fork = True

    def do(self, method: str, *args: Any) -> None:
        self.run(self.h.do(method, *args))

    def pending_results(self) -> list[str]:
        return [d for d in {p.device_id for p in self.h.call_pushes()} if d not in self.results]


def step(p: Proxy, op: tuple[Any, ...]) -> None:
    h = p.h
    names = [d.id for d in p.devices]
    match op:
        case ("advance", seconds):
            p.run(h.advance(seconds))
        case ("result", i, ok):
            pending = sorted(p.pending_results())
            if pending:
                device_id = pending[i % len(pending)]
                p.results[device_id] = ok
                p.do("push_result", device_id, ok)
        case ("register", i, mode):
            name = names[i % len(names)]
            p.register_seq += 1
            if mode == "contact":
                b = replace(binding(name), cseq=p.register_seq)
            elif mode == "instance":
                b = binding(name, contact=f"sip:{name}@203.0.113.{p.register_seq}:5070")
            else:
                b = binding(f"r{name}", prid=f"rotated-{name}", instance="")
            p.do("device_registered", b)
        case ("ring", i):
            if i is None:
                if p.fork:
                    p.do("device_ringing", None)
                return
            name = names[i % len(names)]
            dev = next(d for d in p.devices if d.id == name)
            if (dev.reachable or name in p.open_branches) and name not in p.lost:
                p.do("device_ringing", name)
        case ("cancel", cause):
            if p.finals:
                return  # a CANCEL after the final response changes nothing
            if p.fork:
                p.finals += 1  # the fork context answers 487
            p.do("cancelled", cause)
            p.ended = True
        case ("final", status, i):
            if not p.fork or p.finals:
                return
            name = names[i % len(names)] if i is not None else None
            if name is not None and name not in p.open_branches:
                return
            p.finals += 1
            p.open_branches.discard(name or "")
            p.do("final_response", status, name)
        case ("fail", i, status):
            name = names[i % len(names)]
            if name in p.open_branches:
                p.open_branches.discard(name)
                if status in (408, 503):
                    p.lost.add(name)
                p.do("branch_failed", name, status)


@settings(max_examples=400, deadline=None)
@given(
    specs=devices_st,
    ops=ops_st,
    mobility=st.booleans(),
    push_sent=st.booleans(),
    delay=st.sampled_from([0.0, 1.0]),
)
def test_random_sequences_keep_the_invariants(
    specs: list[dict[str, bool]],
    ops: list[tuple[Any, ...]],
    mobility: bool,
    push_sent: bool,
    delay: float,
) -> None:
    devices = [
        device(name, prids=frozenset({f"rotated-{name}"}), **spec)
        for name, spec in zip(NAMES, specs, strict=False)
    ]
    live = any(d.reachable for d in devices)
    h = Harness(CallPushConfig(reachable_push_delay=delay))
    p = Proxy(h, devices, fork=live)
    p.run(
        h.start(
            devices,
            live_branches=live,
            mobility_number="+15559999" if mobility else "",
            supports_push_sent=push_sent,
        )
    )
    for op in ops:
        step(p, op)

    # Let the call finish: timers run, the proxy answers if it owns the call, branches end,
    # push results come in.
    p.run(h.advance(20.0))
    if not p.finals:
        assert p.fork, "the engine held the call past its drop timer without answering"
        p.finals += 1
        p.do("final_response", 408, None)
    for name in sorted(p.open_branches):
        p.do("branch_failed", name, 487)
    for name in sorted(p.pending_results()):
        p.results[name] = True
        p.do("push_result", name, True)
    p.run(h.advance(60.0))

    assert h.engine.done and h.engine.outcome is not None
    assert p.finals == 1
    for dev in devices:
        name = dev.id
        assert len(h.call_pushes(name)) <= 1, name
        follow_ups = len(h.follow_ups(name)) + sum(
            1 for a in h.of(CancelBranch) if a.device_id == name
        )
        assert follow_ups <= 1, name
        if follow_ups:
            assert h.call_pushes(name), f"{name}: follow-up without a call push"
        if h.follow_ups(name):
            assert p.results.get(name) is True, f"{name}: follow-up to an undelivered push"
        if p.results.get(name) and not follow_ups:
            reached = (dev.reachable or name in p.forwarded) and name not in p.lost
            assert reached, f"{name}: delivered call push never followed up"
