"""Bad input gets a clear 4xx, nothing is sent, and the relay keeps serving."""

from __future__ import annotations

import json

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ucpush.crypto import jwe
from ucpush.relay.providers.base import Outcome, PushType

from .conftest import BUNDLE, DEVICE_KEY, Stack

TOKEN = "b2" * 32


@pytest.fixture
async def authed(stack: Stack):
    stack.apns.register_device(TOKEN, BUNDLE)
    client = await stack.enrolled_client()
    access = await client.access_token()
    async with httpx.AsyncClient(
        base_url=stack.relay.url,
        verify=stack.client_ssl(),
        headers={"authorization": f"Bearer {access}"},
    ) as http:
        yield http, client
    await client.aclose()


def _push(**overrides: object) -> dict[str, object]:
    body: dict[str, object] = {
        "target": TOKEN,
        "service": "APNS",
        "push_type": "voip",
        "tracking_id": "t-1",
        "payload": jwe.encrypt(b"{}", DEVICE_KEY),
    }
    body.update(overrides)
    return body


@pytest.mark.parametrize(
    ("content", "status", "error", "says"),
    [
        (b"{not json", 400, "invalid_request", "JSON"),
        (b"[]", 400, "invalid_request", "body"),
        (json.dumps(_push(service="APNS:prod")).encode(), 400, "invalid_request", "service"),
        (json.dumps(_push(push_type="video")).encode(), 400, "invalid_request", "push_type"),
        (json.dumps(_push(target="")).encode(), 400, "invalid_request", "target"),
        (json.dumps(_push(target="has space")).encode(), 400, "invalid_request", "target"),
        (json.dumps(_push(tracking_id="a/b")).encode(), 400, "invalid_request", "tracking_id"),
        (json.dumps(_push(collapse_id="x" * 65)).encode(), 400, "invalid_request", "collapse_id"),
        (json.dumps(_push(expiration=-1)).encode(), 400, "invalid_request", "expiration"),
        (json.dumps(_push(surprise=1)).encode(), 400, "invalid_request", "surprise"),
        (json.dumps(_push(payload="a.b.c.d.e")).encode(), 400, "invalid_request", "payload"),
        (b"x" * 20000, 413, "body_too_large", "16384"),
    ],
)
async def test_malformed_push_requests(stack: Stack, authed, content, status, error, says):
    http, _ = authed
    response = await http.post(
        "/v1/push", content=content, headers={"content-type": "application/json"}
    )
    assert response.status_code == status, response.text
    assert response.json()["error"] == error
    assert says in response.json()["detail"]
    assert stack.apns.delivered == []


@pytest.mark.parametrize(
    "authorization",
    ["", "Bearer", "Basic dXNlcjpwdw==", "Bearer not-a-jwt", "Bearer a.b.c"],
)
async def test_bad_bearer_tokens_are_401(stack: Stack, authorization):
    async with httpx.AsyncClient(base_url=stack.relay.url, verify=stack.client_ssl()) as http:
        response = await http.post(
            "/v1/push", json=_push(), headers={"authorization": authorization}
        )
    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith("Bearer")


async def test_token_endpoint_errors_follow_rfc6749(stack: Stack):
    async with httpx.AsyncClient(base_url=stack.relay.url, verify=stack.client_ssl()) as http:
        wrong_grant = await http.post("/oauth/token", data={"grant_type": "password"})
        missing = await http.post("/oauth/token", data={"grant_type": "refresh_token"})
        unknown = await http.post(
            "/oauth/token", data={"grant_type": "refresh_token", "refresh_token": "ucprt_nope"}
        )
        garbage = await http.post("/oauth/token", content=b"\xff\xfe\x00")
    assert wrong_grant.json()["error"] == "unsupported_grant_type"
    assert missing.json()["error"] == "invalid_request"
    assert unknown.json()["error"] == "invalid_grant"
    assert garbage.status_code == 400
    assert unknown.headers["cache-control"] == "no-store"


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=12,
)
field_values = st.one_of(json_values, st.sampled_from(["APNS", "FCM", "voip", "high", TOKEN]))
push_bodies = st.fixed_dictionaries(
    {},
    optional={
        k: field_values
        for k in (
            "target",
            "service",
            "push_type",
            "priority",
            "tracking_id",
            "payload",
            "expiration",
        )
    },
)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(body=st.one_of(push_bodies.map(lambda b: json.dumps(b).encode()), st.binary(max_size=200)))
async def test_fuzzed_bodies_never_cause_5xx(stack: Stack, authed, body):
    http, _ = authed
    response = await http.post(
        "/v1/push", content=body, headers={"content-type": "application/json"}
    )
    assert 400 <= response.status_code < 500, response.text
    assert stack.apns.delivered == []


async def test_still_serving_after_bad_input(stack: Stack, authed):
    http, client = authed
    for junk in (b"\x00" * 10, b"{", b'{"payload": 1}'):
        await http.post("/v1/push", content=junk, headers={"content-type": "application/json"})
    result = await client.push(
        target=TOKEN, service="APNS", push_type=PushType.VOIP, payload=b"ok", key=DEVICE_KEY
    )
    assert result.outcome is Outcome.DELIVERED
