"""The sign-in HTTP API through its ASGI app: grants, lifetimes, devices, sign-out, config."""

from __future__ import annotations

import base64
from datetime import UTC, datetime
from xml.etree import ElementTree

import httpx
import pytest

from tests.signin.conftest import RecordingSessions
from tests.signin.helpers import PASSWORD, Clock, device_body, provision, register, sign_in
from ucpush.signin.api import ChatPushOut, create_app
from ucpush.signin.service import SigninError, SigninService
from ucpush.store.repository import PushState


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_password_grant_without_refresh_login(
    service: SigninService, client: httpx.AsyncClient
) -> None:
    await provision(service, refresh_login=False)
    grant = await sign_in(client)
    assert grant["token_type"] == "Bearer"
    assert grant["expires_in"] == 3600
    assert "refresh_token" not in grant
    assert (await client.get("/v1/devices", headers=bearer(grant["access_token"]))).json() == []


async def test_password_grant_errors(service: SigninService, client: httpx.AsyncClient) -> None:
    await provision(service)
    for form in (
        {"grant_type": "password", "username": "alice", "password": "wrong"},
        {"grant_type": "password", "username": "nobody", "password": PASSWORD},
    ):
        answer = await client.post("/oauth/token", data=form)
        assert answer.status_code == 400
        assert answer.json() == {
            "error": "invalid_grant",
            "error_description": "unknown username or wrong password",
        }
        assert answer.headers["cache-control"] == "no-store"
    answer = await client.post("/oauth/token", data={"grant_type": "password"})
    assert answer.json()["error"] == "invalid_request"
    answer = await client.post("/oauth/token", data={"grant_type": "client_credentials"})
    assert answer.json()["error"] == "unsupported_grant_type"
    answer = await client.post(
        "/oauth/token",
        data={
            **dict(grant_type="password", username="alice", password=PASSWORD),
            "device_id": "a b",
        },
    )
    assert answer.json()["error"] == "invalid_request"
    answer = await client.post("/oauth/token", content=b"\xff\xfe", headers={"content-type": "x"})
    assert answer.status_code == 400


async def test_refresh_grant_rotates_and_rejects_replay(
    service: SigninService, client: httpx.AsyncClient
) -> None:
    await provision(service)
    await service.set_enterprise(access_token_minutes=5, refresh_token_days=7)
    grant = await sign_in(client)
    assert grant["expires_in"] == 300
    assert grant["refresh_token_expires_in"] == 7 * 86400
    form = {"grant_type": "refresh_token", "refresh_token": grant["refresh_token"]}
    renewed = await client.post("/oauth/token", data=form)
    assert renewed.status_code == 200
    assert renewed.json()["refresh_token"] != grant["refresh_token"]
    replay = await client.post("/oauth/token", data=form)
    assert replay.status_code == 400
    assert replay.json()["error"] == "invalid_grant"
    assert "revoked" in replay.json()["error_description"]
    unknown = await client.post("/oauth/token", data={**form, "refresh_token": "x" * 43})
    assert unknown.json()["error_description"] == "unknown refresh token"


async def test_refresh_token_lifetime(
    service: SigninService, client: httpx.AsyncClient, clock: Clock
) -> None:
    await provision(service)
    await service.set_enterprise(refresh_token_days=1)
    grant = await sign_in(client)
    clock.advance(86400 + 1)
    answer = await client.post(
        "/oauth/token",
        data={"grant_type": "refresh_token", "refresh_token": grant["refresh_token"]},
    )
    assert answer.status_code == 400
    assert answer.json()["error_description"] == "refresh token expired: sign in again"


async def test_access_token_lifetime(
    service: SigninService, client: httpx.AsyncClient, clock: Clock
) -> None:
    await provision(service)
    await service.set_enterprise(access_token_minutes=1)
    token = (await sign_in(client))["access_token"]
    assert (await client.get("/v1/devices", headers=bearer(token))).status_code == 200
    clock.advance(60)
    answer = await client.get("/v1/devices", headers=bearer(token))
    assert answer.status_code == 401
    assert answer.json() == {"error": "invalid_token", "detail": "access token expired"}
    assert answer.headers["www-authenticate"] == 'Bearer error="invalid_token"'


async def test_disabling_refresh_login_revokes_refresh_tokens(
    service: SigninService, client: httpx.AsyncClient
) -> None:
    await provision(service)
    grant = await sign_in(client)
    params, revoked = await service.set_enterprise(oauth_refresh_login=False)
    assert (params.oauth_refresh_login, revoked) == (False, 1)
    form = {"grant_type": "refresh_token", "refresh_token": grant["refresh_token"]}
    answer = await client.post("/oauth/token", data=form)
    assert answer.status_code == 400
    assert "disabled" in answer.json()["error_description"]
    # Turning it back on does not resurrect the old token.
    await service.set_enterprise(oauth_refresh_login=True)
    answer = await client.post("/oauth/token", data=form)
    assert "revoked" in answer.json()["error_description"]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"access_token_minutes": 0}, "access token lifetime must be 1-1440 minutes, got 0"),
        ({"access_token_minutes": 1441}, "access token lifetime must be 1-1440 minutes, got 1441"),
        ({"refresh_token_days": 0}, "refresh token lifetime must be 1-365 days, got 0"),
        ({"refresh_token_days": 366}, "refresh token lifetime must be 1-365 days, got 366"),
    ],
)
async def test_lifetime_validation(
    service: SigninService, change: dict[str, int], message: str
) -> None:
    with pytest.raises(SigninError) as caught:
        await service.set_enterprise(**change)
    assert (caught.value.status, caught.value.error, caught.value.detail) == (
        400,
        "invalid_value",
        message,
    )
    params = await service.repo.get_enterprise()
    assert (params.access_token_minutes, params.refresh_token_days) == (60, 60)


async def test_bearer_errors(service: SigninService, client: httpx.AsyncClient) -> None:
    await provision(service)
    for headers in ({}, {"Authorization": "Basic abc"}, bearer("not.a.jwt")):
        answer = await client.get("/v1/devices", headers=headers)
        assert answer.status_code == 401
        assert "www-authenticate" in answer.headers
    token = (await sign_in(client))["access_token"]
    await service.delete_user("alice")
    answer = await client.get("/v1/devices", headers=bearer(token))
    assert answer.json()["detail"] == "user no longer exists"


async def test_device_register_list_rotate_delete(
    service: SigninService, client: httpx.AsyncClient, sessions: RecordingSessions
) -> None:
    await provision(service)
    alice_id = (await service.repo.get_user_by_name("alice")).id
    token = (await sign_in(client))["access_token"]
    created = await register(client, token)
    assert created["push_key_id"] == "k1" and created["previous_push_key_id"] is None
    assert created["push_state"] == "active"
    assert "push_key" not in created
    new_key = base64.urlsafe_b64encode(bytes(32)).decode().rstrip("=")
    rotated = await register(client, token, push_key=new_key, push_key_id="k2")
    assert rotated["previous_push_key_id"] == "k1"
    assert rotated["previous_key_until"] is not None
    stored = await service.repo.get_device("iphone-1")
    assert set(stored.valid_keys(stored.updated_at)) == {"k1", "k2"}
    listed = (await client.get("/v1/devices", headers=bearer(token))).json()
    assert [d["id"] for d in listed] == ["iphone-1"]
    # The same key id naming another key is refused.
    answer = await client.put(
        "/v1/devices/iphone-1", json=device_body(push_key_id="k2"), headers=bearer(token)
    )
    assert answer.status_code == 409
    answer = await client.delete("/v1/devices/iphone-1", headers=bearer(token))
    assert answer.status_code == 204
    assert sessions.closed[-1] == (alice_id, "iphone-1", "device deleted")
    answer = await client.delete("/v1/devices/iphone-1", headers=bearer(token))
    assert answer.status_code == 404


async def test_a_dead_token_stays_paused_until_a_new_one_is_registered(
    service: SigninService, client: httpx.AsyncClient
) -> None:
    await provision(service)
    token = (await sign_in(client))["access_token"]
    await register(client, token)
    # What call push does on a 410 from the provider.
    await service.repo.set_push_state("iphone-1", PushState.PAUSED_INVALID_TOKEN, datetime.now(UTC))
    again = await register(client, token)  # the app re-registers the same token
    assert again["push_state"] == "paused-invalid-token"
    renewed = await register(client, token, push_token="cd" * 32)
    assert renewed["push_state"] == "active"


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"push_key": base64.b64encode(bytes(16)).decode()}, "push_key"),
        ({"push_key": "not base64!"}, "push_key"),
        ({"service": "APNS:nope"}, "service"),
        ({"platform": "windows"}, "platform"),
        ({"push_token": ""}, "push_token"),
        ({"extra": 1}, "extra"),
    ],
)
async def test_device_validation(
    service: SigninService, client: httpx.AsyncClient, changes: dict[str, object], field: str
) -> None:
    await provision(service)
    token = (await sign_in(client))["access_token"]
    answer = await client.put(
        "/v1/devices/iphone-1", json=device_body(**changes), headers=bearer(token)
    )
    assert answer.status_code == 400
    assert answer.json()["error"] == "invalid_request"
    assert field in answer.json()["detail"]
    assert "not base64!" not in answer.text


async def test_device_service_must_fit_platform(
    service: SigninService, client: httpx.AsyncClient
) -> None:
    await provision(service)
    token = (await sign_in(client))["access_token"]
    answer = await client.put(
        "/v1/devices/p1", json=device_body("android", service="APNS"), headers=bearer(token)
    )
    assert answer.status_code == 400
    assert answer.json()["detail"].startswith("service for android must be one of FCM")


async def test_device_of_another_user(service: SigninService, client: httpx.AsyncClient) -> None:
    await provision(service)
    await provision(service, username="bob")
    alice = (await sign_in(client))["access_token"]
    bob = (await sign_in(client, "bob", "bobs-phone"))["access_token"]
    await register(client, alice)
    answer = await client.put("/v1/devices/iphone-1", json=device_body(), headers=bearer(bob))
    assert answer.status_code == 409
    answer = await client.delete("/v1/devices/iphone-1", headers=bearer(bob))
    assert answer.status_code == 404


async def test_signout_stops_pushes_and_revokes(
    service: SigninService,
    client: httpx.AsyncClient,
    sessions: RecordingSessions,
    clock: Clock,
) -> None:
    await provision(service)
    alice_id = (await service.repo.get_user_by_name("alice")).id
    grant = await sign_in(client)
    token = grant["access_token"]
    await register(client, token)
    answer = await client.post("/v1/signout", headers=bearer(token))
    assert answer.status_code == 204
    assert sessions.closed[-1] == (alice_id, "iphone-1", "signed out")
    assert (await service.repo.get_device("iphone-1")).push_state is PushState.SIGNED_OUT
    form = {"grant_type": "refresh_token", "refresh_token": grant["refresh_token"]}
    assert (await client.post("/oauth/token", data=form)).status_code == 400
    # The access token from before the sign-out no longer works...
    answer = await client.get("/v1/devices", headers=bearer(token))
    assert answer.json()["detail"] == "device signed out: sign in again"
    # ... a new sign-in and registration resumes pushes.
    clock.advance(0.01)
    token = (await sign_in(client))["access_token"]
    assert (await register(client, token))["push_state"] == "active"


async def test_signout_needs_a_device(service: SigninService, client: httpx.AsyncClient) -> None:
    await provision(service)
    answer = await client.post(
        "/oauth/token",
        data={"grant_type": "password", "username": "alice", "password": PASSWORD},
    )
    token = answer.json()["access_token"]
    answer = await client.post("/v1/signout", headers=bearer(token))
    assert answer.status_code == 400
    answer = await client.post("/v1/signout", headers=bearer(token), json={"device_id": "x1"})
    assert answer.status_code == 204


async def test_config_xml(service: SigninService, client: httpx.AsyncClient) -> None:
    await provision(service)
    await service.add_ucservice("extras", {"Policies.EnableTelephony": "true", "Foo": "x<y"})
    await service.add_profile("with-extras", ["lpns-wards", "extras"])
    token = (await sign_in(client))["access_token"]
    answer = await client.get("/v1/config", headers=bearer(token))
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("application/xml")
    root = ElementTree.fromstring(answer.content)
    assert root.tag == "config" and root.get("version") == "1.0"
    assert root.findtext("Phone/LocalPushSSIDList") == "Ward4;Ward5"
    await service.set_user_profile("alice", "with-extras")
    root = ElementTree.fromstring((await client.get("/v1/config", headers=bearer(token))).content)
    assert root.findtext("Policies/EnableTelephony") == "true"
    assert root.findtext("Client/Foo") == "x<y"
    await service.set_user_profile("alice", None)
    answer = await client.get("/v1/config", headers=bearer(token))
    assert answer.text.endswith('<config version="1.0" />')


async def test_body_limit(service: SigninService, client: httpx.AsyncClient) -> None:
    answer = await client.post("/oauth/token", content=b"x" * 20000)
    assert answer.status_code == 413


async def test_device_chat_push_registration(service: SigninService) -> None:
    def registration(device_id: str) -> ChatPushOut:
        return ChatPushOut(jid="push.example.org", node=device_id, secret=f"s-{device_id}")

    await provision(service)
    await service.add_user("bob", PASSWORD, display_name="Bob", profile="nurses")
    for chat_push, expected in ((None, 404), (registration, 200)):
        app = create_app(service, chat_push=chat_push)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://node") as client:
            token = (await sign_in(client))["access_token"]
            await register(client, token)
            answer = await client.get("/v1/devices/iphone-1/chat-push", headers=bearer(token))
            assert answer.status_code == expected, answer.text
            if expected == 200:
                assert answer.json() == {
                    "jid": "push.example.org",
                    "node": "iphone-1",
                    "secret": "s-iphone-1",
                }
                bob = (await sign_in(client, "bob", "bob-phone"))["access_token"]
                other = await client.get("/v1/devices/iphone-1/chat-push", headers=bearer(bob))
                assert other.status_code == 404  # not bob's device
