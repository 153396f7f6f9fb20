"""Gateway mode against SIPp playing the PBX: REGISTERs relayed upstream with Path and
Feature-Caps, the device's contact and pn-* parameters kept, and the PBX's INVITE (routed
through our Path) delivered to the device."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.sip.sipp_harness import DOMAIN, SIPP, Harness, free_port, start_harness
from ucpush.sip.resolve import Flow

pytestmark = [
    pytest.mark.skipif(SIPP is None, reason="sipp not installed (Debian package sip-tester)"),
    pytest.mark.timeout(60),
]
PN = ";pn-provider=apns;pn-prid=0a1b2c3d;pn-param=TEAM1234.org.example.phone.voip"


@pytest.fixture(params=["u1", "t1"])
async def gateway(request, tmp_path: Path) -> AsyncIterator[tuple[Harness, str, int]]:
    transport = request.param
    pbx_port = free_port()
    name = "udp" if transport == "u1" else "tcp"
    h = await start_harness(
        tmp_path, mode="gateway", upstream=f"sip:127.0.0.1:{pbx_port};transport={name}"
    )
    try:
        yield h, transport, pbx_port
    finally:
        await h.close()


async def test_register_relayed_and_pbx_call_reaches_the_device(gateway):
    harness, transport, pbx_port = gateway
    pbx = await harness.sipp("pbx_registrar.xml", transport, server=True, port=pbx_port)
    device = await harness.device("device_answers.xml", transport, contact_params=PN)
    await pbx.succeeded()
    (binding,) = await harness.store.sip.list_bindings(f"sip:bob@{DOMAIN}")
    assert (binding.pn_provider, binding.pn_prid) == ("apns", "0a1b2c3d")
    assert binding.pn_param == "TEAM1234.org.example.phone.voip"
    assert binding.contact.startswith(f"sip:bob@127.0.0.1:{device.port};")
    assert binding.path == ()  # our own Path is not a route we need to follow

    # The PBX routes by the Path it stored: our entry with the device's flow token.
    assert harness.node.core is not None
    device_flow = Flow(binding.source_transport, binding.source_host, binding.source_port)
    route = harness.node.core.record_route_value(device_flow.transport, device_flow)
    caller = await harness.sipp(
        "pbx_invite.xml",
        transport,
        keys={"device_contact": binding.contact, "gateway_route": route},
    )
    await caller.succeeded()
    await device.succeeded()
