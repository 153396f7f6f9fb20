"""FCM simulator over the network, with google-auth's real service-account credentials."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import google.auth.exceptions
import httpx
import jwt
import pytest
from google.oauth2 import service_account

from tests.sim.conftest import FCM_TOKEN, PROJECT, FcmEnv
from ucpush.sim.common import Fault
from ucpush.sim.credentials import FCM_SCOPE, make_service_account
from ucpush.sim.fcm import FCM_ERROR_TYPE, JWT_BEARER, FcmSimulator


def fcm_error(response: httpx.Response) -> tuple[int, str, str | None]:
    error = response.json()["error"]
    assert error["code"] == response.status_code
    assert isinstance(error["message"], str)
    codes = [d["errorCode"] for d in error.get("details", []) if d["@type"] == FCM_ERROR_TYPE]
    return response.status_code, error["status"], codes[0] if codes else None


def message(**fields: Any) -> dict[str, Any]:
    return {"message": {"token": FCM_TOKEN, **fields}}


async def test_google_auth_token_and_send(fcm: FcmEnv) -> None:
    token = await fcm.access_token()
    assert token.startswith("ya29.")
    assert fcm.credentials.expiry is not None
    body = json.dumps(
        message(data={"call": "1"}, android={"priority": "high", "ttl": "30s"}),
        indent=1,
    ).encode()
    response = await fcm.send(body)
    assert response.status_code == 200
    name = response.json()["name"]
    assert name.startswith(f"projects/{PROJECT}/messages/0:")
    [delivery] = fcm.sim.delivered
    assert delivery.raw == body
    assert delivery.message["data"] == {"call": "1"}
    assert (delivery.project_id, delivery.token, delivery.name) == (PROJECT, FCM_TOKEN, name)


async def test_validate_only_not_recorded(fcm: FcmEnv) -> None:
    response = await fcm.send({**message(), "validate_only": True})
    assert response.json() == {"name": f"projects/{PROJECT}/messages/fake_message_id"}
    assert not fcm.sim.delivered


async def test_token_endpoint_errors(fcm: FcmEnv) -> None:
    private_key = fcm.info["private_key"]
    kid = fcm.info["private_key_id"]
    email = fcm.info["client_email"]
    now = int(time.time())
    good = {"iss": email, "aud": fcm.sim.token_uri, "scope": FCM_SCOPE, "iat": now}

    async def grant(claims: dict[str, Any], key: str = private_key, **form: str) -> httpx.Response:
        assertion = jwt.encode(claims, key, algorithm="RS256", headers={"kid": kid})
        data = {"grant_type": JWT_BEARER, "assertion": assertion, **form}
        return await fcm.client.post(fcm.sim.token_uri, data=data)

    ok = await grant({**good, "exp": now + 3600})
    assert ok.status_code == 200
    assert ok.json()["expires_in"] == 3599 and ok.json()["token_type"] == "Bearer"

    other_key = make_service_account(PROJECT, fcm.sim.token_uri)[0]["private_key"]
    cases = [
        ({**good, "exp": now + 3600}, {"key": other_key}, "invalid_grant"),
        ({**good, "iss": "x@y.iam.gserviceaccount.com", "exp": now + 3600}, {}, "invalid_grant"),
        ({**good, "aud": "https://elsewhere/token", "exp": now + 3600}, {}, "invalid_grant"),
        ({**good, "exp": now + 7200}, {}, "invalid_grant"),  # longer than an hour
        ({**good, "iat": now - 4000, "exp": now - 400}, {}, "invalid_grant"),  # expired
        (
            {**good, "scope": "https://www.googleapis.com/auth/drive", "exp": now + 60},
            {},
            "invalid_scope",
        ),
        ({**good, "exp": now + 60}, {"grant_type": "password"}, "unsupported_grant_type"),
    ]
    for claims, extra, expected in cases:
        response = await grant(claims, **extra)
        assert response.status_code == 400, claims
        assert response.json()["error"] == expected, (claims, response.json())
        assert response.json()["error_description"]
    garbage = await fcm.client.post(
        fcm.sim.token_uri, data={"grant_type": JWT_BEARER, "assertion": "x.y.z"}
    )
    assert garbage.json()["error"] == "invalid_grant"


async def test_google_auth_refresh_error(fcm: FcmEnv) -> None:
    info = {**fcm.info, "client_email": "stranger@elsewhere.iam.gserviceaccount.com"}
    credentials = service_account.Credentials.from_service_account_info(info, scopes=[FCM_SCOPE])
    with pytest.raises(google.auth.exceptions.RefreshError, match="invalid_grant"):
        await asyncio.to_thread(credentials.refresh, fcm.google_request)


async def test_unauthenticated(fcm: FcmEnv) -> None:
    response = await fcm.client.post(fcm.send_url, json=message())
    assert fcm_error(response) == (401, "UNAUTHENTICATED", None)
    assert "www-authenticate" in response.headers
    response = await fcm.send(message(), token="ya29.unknown")
    assert fcm_error(response) == (401, "UNAUTHENTICATED", None)
    token = await fcm.access_token()
    fcm.clock.advance(3601)
    response = await fcm.send(message(), token=token)
    assert fcm_error(response) == (401, "UNAUTHENTICATED", None)


async def test_project_mismatch(fcm: FcmEnv) -> None:
    url = f"{fcm.sim.url}/v1/projects/someone-else/messages:send"
    response = await fcm.send(message(), url=url)
    assert fcm_error(response) == (403, "PERMISSION_DENIED", None)


async def test_sender_id_mismatch(fcm: FcmEnv) -> None:
    fcm.sim.register_device("other-project-token", "other-project")
    response = await fcm.send({"message": {"token": "other-project-token"}})
    assert fcm_error(response) == (403, "PERMISSION_DENIED", "SENDER_ID_MISMATCH")


async def test_unknown_and_unregistered_tokens(fcm: FcmEnv) -> None:
    response = await fcm.send({"message": {"token": "never-seen"}})
    assert fcm_error(response) == (400, "INVALID_ARGUMENT", "INVALID_ARGUMENT")
    assert "not a valid FCM registration token" in response.json()["error"]["message"]
    fcm.sim.unregister_device(FCM_TOKEN)
    response = await fcm.send(message())
    assert fcm_error(response) == (404, "NOT_FOUND", "UNREGISTERED")
    assert response.json()["error"]["details"] == [
        {"@type": FCM_ERROR_TYPE, "errorCode": "UNREGISTERED"}
    ]


@pytest.mark.parametrize(
    "body",
    [
        b"{not json",
        b"[]",
        {"message": "x"},
        {"message": {}},  # no token
        {"message": {"token": FCM_TOKEN}, "extra": 1},
        message(unknown=1),
        message(data={"n": 1}),
        message(data=["a"]),
        message(android={"priority": "urgent"}),
        message(android={"priority": 10}),
        message(android={"ttl": "30"}),
        message(android={"ttl": "-1s"}),
        message(android={"ttl": "2419201s"}),
        message(android={"ttl": 30}),
        message(android={"data": {"a": None}}),
        message(android={"colour": "red"}),
        message(android="high"),
        message(notification="hello"),
        message(data={"blob": "x" * 4100}),
        {**message(), "validate_only": "yes"},
    ],
)
async def test_invalid_argument(fcm: FcmEnv, body: Any) -> None:
    response = await fcm.send(body)
    assert fcm_error(response)[:2] == (400, "INVALID_ARGUMENT"), response.text
    assert not fcm.sim.delivered


@pytest.mark.parametrize(
    "android",
    [
        {"priority": "HIGH", "ttl": "0s"},
        {"priority": "normal", "ttl": "2419200s", "collapse_key": "call"},
        {"ttl": "3.5s", "data": {"k": "v"}},
    ],
)
async def test_valid_android_options(fcm: FcmEnv, android: dict[str, Any]) -> None:
    response = await fcm.send(message(android=android))
    assert response.status_code == 200, response.text


async def test_faults(fcm: FcmEnv) -> None:
    await fcm.access_token()  # token requests are never faulted
    fcm.sim.inject(Fault(kind="status", status=429, fcm_error="QUOTA_EXCEEDED", retry_after=60))
    fcm.sim.inject(Fault(kind="status", status=503, retry_after=5))
    fcm.sim.inject(Fault(kind="status", status=500))
    first, second, third = [await fcm.send(message()) for _ in range(3)]
    assert fcm_error(first) == (429, "RESOURCE_EXHAUSTED", "QUOTA_EXCEEDED")
    assert first.headers["retry-after"] == "60"
    assert fcm_error(second) == (503, "UNAVAILABLE", "UNAVAILABLE")
    assert second.headers["retry-after"] == "5"
    assert fcm_error(third) == (500, "INTERNAL", "INTERNAL")
    assert not fcm.sim.delivered
    assert (await fcm.send(message())).status_code == 200


async def test_reset_goaway_latency_faults(fcm: FcmEnv) -> None:
    await fcm.access_token()
    fcm.sim.inject(Fault(kind="reset"))
    with pytest.raises(httpx.TransportError):
        await fcm.send(message())
    assert not fcm.sim.delivered
    fcm.sim.inject(Fault(kind="goaway"))
    # First stream of the new connection: GOAWAY(last_stream_id=0) fails the request.
    with pytest.raises(httpx.TransportError):
        await fcm.send(message())
    assert not fcm.sim.delivered
    fcm.sim.inject(Fault(kind="latency", delay=0.2))
    loop = asyncio.get_running_loop()
    start = loop.time()
    assert (await fcm.send(message())).status_code == 200
    assert loop.time() - start >= 0.2
    assert len(fcm.sim.delivered) == 1


async def test_concurrent_sends(fcm: FcmEnv) -> None:
    await fcm.access_token()
    responses = await asyncio.gather(*(fcm.send(message(data={"n": str(i)})) for i in range(120)))
    assert all(r.status_code == 200 for r in responses)
    assert sorted(int(d.message["data"]["n"]) for d in fcm.sim.delivered) == list(range(120))
    assert len({r.json()["name"] for r in responses}) == 120


async def test_unknown_path(fcm: FcmEnv) -> None:
    response = await fcm.client.get(f"{fcm.sim.url}/v1/projects/{PROJECT}/messages:send")
    assert response.status_code == 404
    response = await fcm.client.post(f"{fcm.sim.url}/v1/other")
    assert response.status_code == 404


def test_account_validation() -> None:
    sim = FcmSimulator()
    with pytest.raises(ValueError):
        sim.add_service_account("a@b", PROJECT, b"not a pem", "kid")
    with pytest.raises(ValueError):
        sim.unregister_device("unknown")
