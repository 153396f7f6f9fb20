from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import trustme

from tests.sip.support import make_request
from ucpush.sip.message import SipRequest
from ucpush.store import Store, open_store


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
async def store() -> AsyncIterator[Store]:
    s = await open_store("sqlite+aiosqlite:///:memory:")
    yield s
    await s.close()


@pytest.fixture
def invite() -> SipRequest:
    return make_request("INVITE")


@pytest.fixture
def options() -> SipRequest:
    return make_request("OPTIONS")
