"""Conformance against SIPp: a registrar-mode node, SIPp playing devices and callers over UDP
and TCP (this SIPp build has no TLS; TLS is covered in ``test_transport`` and
``test_node``)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.sip.sipp_harness import SIPP, Harness, start_harness

pytestmark = [
    pytest.mark.skipif(SIPP is None, reason="sipp not installed (Debian package sip-tester)"),
    pytest.mark.timeout(60),
]
TRANSPORTS = pytest.mark.parametrize("transport", ["u1", "t1"])


@pytest.fixture
async def harness(tmp_path: Path) -> AsyncIterator[Harness]:
    h = await start_harness(tmp_path)
    try:
        yield h
    finally:
        await h.close()


@TRANSPORTS
async def test_fork_one_answers_other_cancelled_with_reason(harness, transport):
    winner = await harness.device("device_answers.xml", transport)
    loser = await harness.device("device_cancelled.xml", transport)
    caller = await harness.sipp("caller_answered.xml", transport)
    await caller.succeeded()
    await winner.succeeded()
    await loser.succeeded()


@TRANSPORTS
async def test_6xx_cancels_the_other_branch_and_wins(harness, transport):
    decliner = await harness.device("device_declines.xml", transport)
    ringing = await harness.device("device_cancelled_declined.xml", transport)
    caller = await harness.sipp("caller_declined.xml", transport)
    await caller.succeeded()
    await decliner.succeeded()
    await ringing.succeeded()


async def test_fork_across_transports_uses_double_record_route_and_flow_tokens(harness):
    # Caller on UDP, devices on TCP: ACK and BYE come back over UDP and must reach the
    # answering device over its own TCP connection.
    winner = await harness.device("device_answers.xml", "t1")
    loser = await harness.device("device_cancelled.xml", "t1")
    caller = await harness.sipp("caller_answered.xml", "u1")
    await caller.succeeded()
    await winner.succeeded()
    await loser.succeeded()


@TRANSPORTS
async def test_caller_cancel_gets_487_and_every_branch_is_cancelled(harness, transport):
    devices = [await harness.device("device_trying_cancelled.xml", transport) for _ in range(2)]
    caller = await harness.sipp("caller_cancels.xml", transport)
    await caller.succeeded()
    for device in devices:
        await device.succeeded()


@TRANSPORTS
async def test_unregistered_aor_is_404(harness, transport):
    await (await harness.sipp("options_404.xml", transport, user="carol")).succeeded()


@TRANSPORTS
async def test_max_forwards_zero_is_483(harness, transport):
    await (await harness.sipp("options_483.xml", transport)).succeeded()


@TRANSPORTS
async def test_malformed_request_gets_400_and_the_node_keeps_serving(harness, transport):
    await (await harness.sipp("malformed.xml", transport)).succeeded()
    await (await harness.sipp("options_404.xml", transport, user="carol")).succeeded()
