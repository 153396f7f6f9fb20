"""Kamailio with push.cfg when the ucpush node cannot be reached: a call to push contacts
only is answered 480 at once (RFC 8599 §5.6.2: a push that cannot be sent is an error), not
held until a timer ends it. Only Kamailio and SIPp run here."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.callpush.test_call_e2e import apns_params, token_for
from tests.kamailio.edge import kamailio, kamailio_missing, reserved_port
from tests.sip.sipp_harness import SIPP, start_sipp

pytestmark = [
    pytest.mark.skipif(SIPP is None, reason="sipp (Debian sip-tester) is not installed"),
    pytest.mark.skipif(kamailio_missing() is not None, reason=str(kamailio_missing())),
    pytest.mark.timeout(60),
]


async def test_node_unreachable_480_at_once(tmp_path: Path) -> None:
    with reserved_port() as dead, reserved_port() as port:
        nobody_listens = f"http://127.0.0.1:{dead}"
    with kamailio(tmp_path / "kam", port, nobody_listens) as kam:
        params = apns_params(token_for("u1", "d"))
        device = await start_sipp(
            tmp_path, "register.xml", "t1", kam.sip, user="u1", keys={"contact_params": params}
        )
        await device.succeeded()
        started = time.monotonic()
        call = await start_sipp(tmp_path, "caller_refused.xml", "u1", kam.sip, user="u1")
        await call.succeeded()  # 480 within 4 s
        assert time.monotonic() - started < 3.0
