"""The default call-push timers through Kamailio: the node's own 180 after 5 s and 480 after
13 s (SPEC §2), then the missed-call push; a stack of its own, since timers are node config."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from tests.callpush.test_call_e2e import _when, apns_fields, until
from tests.kamailio.edge import edge_stack, kamailio_missing
from tests.kamailio.test_edge_e2e import Edge, caller, pushed_device
from tests.sip.sipp_harness import SIPP

pytestmark = [
    pytest.mark.skipif(SIPP is None, reason="sipp (Debian sip-tester) is not installed"),
    pytest.mark.skipif(kamailio_missing() is not None, reason=str(kamailio_missing())),
    pytest.mark.timeout(90),
]


@pytest.fixture(scope="module")
def edge(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Edge]:
    base = tmp_path_factory.mktemp("kamailio-edge-defaults")
    with edge_stack(base) as (stack, kam):
        yield Edge(stack, kam)


async def test_nobody_answers_480_at_13_s_then_missed_call(edge: Edge) -> None:
    user, token = await pushed_device(edge)
    started = time.monotonic()
    call = await caller(edge, user, "caller_unanswered.xml")
    await call.succeeded()  # 100, 180 within 8 s, 480 within 12 s more
    elapsed = time.monotonic() - started
    assert 12.5 <= elapsed <= 15.0, elapsed
    pushes = await until(
        lambda: _when(edge.stack.apns_deliveries(token), lambda d: len(d) == 2), within=3
    )
    assert [apns_fields(p)["type"] for p in pushes] == ["call", "missed-call"]
