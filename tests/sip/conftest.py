from __future__ import annotations

import pytest

from tests.sip.support import make_request
from ucpush.sip.message import SipRequest


@pytest.fixture
def invite() -> SipRequest:
    return make_request("INVITE")


@pytest.fixture
def options() -> SipRequest:
    return make_request("OPTIONS")
