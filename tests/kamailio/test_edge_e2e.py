"""Kamailio as the SIP edge, ucpush as the push engine, end to end: SIPp caller and devices
register and call through Kamailio (deploy/kamailio/push.cfg), which holds INVITEs for push
contacts and asks the node (``ucpush serve`` with ``[edge]``) over HTTP; the node pushes
through the relay to the APNs simulator and answers or releases through Kamailio. Every
component is its own process. The node's timers are shortened here (ring-back 2 s, drop 4 s);
``test_default_drop_timer`` keeps the 5 s / 13 s defaults."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.callpush.test_call_e2e import (
    _when,
    apns_fields,
    apns_params,
    register_apns,
    token_for,
    until,
)
from tests.kamailio.edge import EDGE_SECRET, Kamailio, edge_stack, kamailio_missing
from tests.sip.sipp_harness import SIPP, start_sipp
from tests.support.callstack import CallStack
from ucpush.kamailio import EDGE_SECRET_HEADER

pytestmark = [
    pytest.mark.skipif(SIPP is None, reason="sipp (Debian sip-tester) is not installed"),
    pytest.mark.skipif(kamailio_missing() is not None, reason=str(kamailio_missing())),
    pytest.mark.timeout(90),
]


class Edge:
    def __init__(self, stack: CallStack, kam: Kamailio) -> None:
        self.stack = stack
        self.kam = kam


@pytest.fixture(scope="module")
def edge(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Edge]:
    base = tmp_path_factory.mktemp("kamailio-edge")
    with edge_stack(base, ringback_after=2.0, drop_after=4.0) as (stack, kam):
        yield Edge(stack, kam)


async def background_device(edge: Edge, user: str, params: str) -> None:
    """The app registers to Kamailio over TCP with RFC 8599 params, then goes away."""
    sipp = await start_sipp(
        edge.stack.base, "register.xml", "t1", edge.kam.sip, user=user,
        keys={"contact_params": params},
    )  # fmt: skip
    await sipp.succeeded()


async def woken_device(edge: Edge, user: str, params: str, ooc: str) -> Any:
    return await start_sipp(
        edge.stack.base, "register.xml", "t1", edge.kam.sip, oocsf=ooc, duration_ms=4000,
        user=user, keys={"contact_params": params},
    )  # fmt: skip


async def caller(edge: Edge, user: str, scenario: str) -> Any:
    return await start_sipp(edge.stack.base, scenario, "u1", edge.kam.sip, user=user)


async def pushed_device(edge: Edge) -> tuple[str, str]:
    """A signed-in iPhone with a push key, registered to Kamailio, now in the background."""
    stack = edge.stack
    user = stack.user()
    token = token_for(user, "b")
    await register_apns(stack, user, token)
    await stack.sign_in_device(user, f"{user}-iphone", push_token=token, pn_prid=token)
    await background_device(edge, user, apns_params(token))
    return user, token


async def test_wake_and_answer_through_kamailio(edge: Edge) -> None:
    stack = edge.stack
    user, token = await pushed_device(edge)
    call = await caller(edge, user, "caller_answered.xml")
    [push] = await until(lambda: stack.apns_deliveries(token))
    fields = apns_fields(push)
    assert push["push_type"] == "voip"
    assert fields["type"] == "call" and fields["caller_number"] == "caller"
    # The device must come back to Kamailio, not to the node's own SIP listener.
    assert fields["active_node"] == f"sip:{edge.kam.sip};transport=tcp"
    device = await woken_device(edge, user, apns_params(token), "device_answers.xml")
    await call.succeeded()
    await device.succeeded()
    await asyncio.sleep(0.5)
    assert len(await stack.apns_deliveries(token)) == 1  # answered on it: no follow-up


async def test_caller_cancels_then_missed_call_push(edge: Edge) -> None:
    stack = edge.stack
    user, token = await pushed_device(edge)
    call = await caller(edge, user, "caller_cancels_any_order.xml")
    await call.succeeded()
    pushes = await until(
        lambda: _when(stack.apns_deliveries(token), lambda d: len(d) == 2), within=5
    )
    assert [apns_fields(p)["type"] for p in pushes] == ["call", "missed-call"]
    assert pushes[1]["push_type"] == "alert"


async def test_nobody_answers_480_at_drop_timer_then_missed_call(edge: Edge) -> None:
    stack = edge.stack
    user, token = await pushed_device(edge)
    started = time.monotonic()
    call = await caller(edge, user, "caller_unanswered.xml")
    await call.succeeded()  # 100, the node's 180 after 2 s, its 480 after 4 s
    elapsed = time.monotonic() - started
    assert 3.5 <= elapsed <= 6.0, elapsed
    pushes = await until(
        lambda: _when(stack.apns_deliveries(token), lambda d: len(d) == 2), within=3
    )
    assert [apns_fields(p)["type"] for p in pushes] == ["call", "missed-call"]


async def test_edge_api_refuses_bad_input(edge: Edge) -> None:
    # A token the simulator knows: the push is delivered and the call stays held (drop 4 s).
    token = token_for("nobody", "c")
    await register_apns(edge.stack, "nobody", token)
    good = {
        "transaction": "1:2",
        "call_id": "bad-input@test",
        "aor": "sip:nobody@example.org",
        "from": "<sip:caller@example.org>;tag=1",
        "contacts": [{"uri": f"sip:nobody@127.0.0.1:9{apns_params(token)}"}],
    }
    headers = {EDGE_SECRET_HEADER: EDGE_SECRET}
    async with httpx.AsyncClient(base_url=edge.stack.api + "/v1/edge") as api:
        assert (await api.post("/calls", json=good)).status_code == 401
        wrong = {EDGE_SECRET_HEADER: "x" * 32}
        assert (await api.post("/calls", json=good, headers=wrong)).status_code == 401
        for broken in (
            {**good, "contacts": [{"uri": "not a uri"}]},
            {**good, "aor": "tel:+1555"},
            {**good, "from": "garbage <"},
        ):
            response = await api.post("/calls", json=broken, headers=headers)
            assert response.status_code == 400, response.text
            assert response.json()["error"] == "invalid_request"
        for broken in (
            {**good, "transaction": "12"},
            {**good, "contacts": []},
            {**good, "surprise": 1},
        ):
            response = await api.post("/calls", json=broken, headers=headers)
            assert response.status_code == 400, response.text
        # A bare RFC 8599 binding is pushed from its pn-* params; the same call twice is not.
        response = await api.post("/calls", json=good, headers=headers)
        assert response.status_code == 201 and response.json() == {"held": True, "devices": 1}
        response = await api.post("/calls", json=good, headers=headers)
        assert response.status_code == 400 and "already held" in response.json()["detail"]
        event = {"event": "final", "status": 200, "contact": ""}
        response = await api.post("/calls/nope/events", json=event, headers=headers)
        assert response.status_code == 404
        response = await api.post("/calls/nope/events", json={"event": "final"}, headers=headers)
        assert response.status_code == 400
        registration = {"aor": "sip:nobody@example.org", "contact": "<<"}
        response = await api.post("/registrations", json=registration, headers=headers)
        assert response.status_code == 400
        registration["contact"] = "sip:nobody@127.0.0.1:9"
        response = await api.post("/registrations", json=registration, headers=headers)
        assert response.json() == {"release": ""}
    async with httpx.AsyncClient(base_url=edge.stack.api) as api:
        paths = (await api.get("/openapi.json")).json()["paths"]
        assert {"/v1/edge/calls", "/v1/edge/calls/{call_id}/events"} <= set(paths)
        assert "/v1/edge/registrations" in paths


async def test_kamailio_http_side_needs_the_secret(edge: Edge) -> None:
    call = {"jsonrpc": "2.0", "method": "core.version", "id": 1}
    secret = {EDGE_SECRET_HEADER: EDGE_SECRET}
    reply = {"index": "1", "label": "1", "code": "480", "reason": "Temporarily Unavailable"}
    async with httpx.AsyncClient(base_url=edge.kam.http) as kam:
        assert (await kam.post("/RPC", json=call)).status_code == 403
        assert (await kam.post("/edge/reply", params=reply)).status_code == 403
        answered = await kam.post("/RPC", json=call, headers=secret)
        assert "kamailio" in answered.json()["result"].lower()
        # No such held transaction: refused, nothing answered.
        refused = await kam.post("/edge/reply", params=reply, headers=secret)
        assert refused.status_code == 404


async def test_woken_after_the_ringback_still_gets_the_call(edge: Edge) -> None:
    """The node's own 180 (after 2 s) leaves the INVITE held: a device that registers after
    it still gets the call."""
    stack = edge.stack
    user, token = await pushed_device(edge)
    call = await caller(edge, user, "caller_answered.xml")
    await until(lambda: stack.apns_deliveries(token))
    await asyncio.sleep(2.5)
    device = await woken_device(edge, user, apns_params(token), "device_answers.xml")
    await call.succeeded()
    await device.succeeded()


@pytest.mark.parametrize(
    ("desk_scenario", "caller_scenario", "reason"),
    [
        ("device_answers.xml", "caller_answered.xml", "answered-elsewhere"),
        ("device_declines.xml", "caller_declined.xml", "declined-elsewhere"),
    ],
)
async def test_desk_phone_ends_the_call_and_the_pushed_phone_is_told(
    edge: Edge, desk_scenario: str, caller_scenario: str, reason: str
) -> None:
    """A contact without pn-* (the user's desk phone) is forked to at once beside the push;
    its answer (or decline) ends the call and the pushed phone gets the cancel push."""
    stack = edge.stack
    user, token = await pushed_device(edge)
    desk = await start_sipp(
        stack.base, "register.xml", "u1", edge.kam.sip, oocsf=desk_scenario,
        duration_ms=4000, user=user,
    )  # fmt: skip
    await asyncio.sleep(0.5)
    call = await caller(edge, user, caller_scenario)
    await call.succeeded()
    await desk.succeeded()
    pushes = await until(
        lambda: _when(stack.apns_deliveries(token), lambda d: len(d) == 2), within=5
    )
    call_push, cancel = (apns_fields(p) for p in pushes)
    assert call_push["type"] == "call"
    assert cancel["type"] == "cancel" and cancel["reason"] == reason
