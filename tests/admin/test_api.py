"""The admin API over HTTP: authentication on every endpoint, the onboarding flow against a
real relay, sign-in administration, and clear 4xx answers to bad input."""

from __future__ import annotations

import base64
import re
from datetime import UTC, datetime

import httpx

from tests.admin.conftest import ADMIN, PASSWORD, Node
from tests.relay.conftest import Stack
from ucpush.admin.app import create_admin_app
from ucpush.admin.auth import INITIAL_PASSWORD_FILE
from ucpush.signin.service import DeviceRegistration
from ucpush.store.repository import Platform


def _api_routes(node: Node) -> list[tuple[str, str]]:
    schema = create_admin_app(node.admin.context).openapi()
    return [
        (method.upper(), re.sub(r"\{[^}]+\}", "someone", path))
        for path, operations in schema["paths"].items()
        if path.startswith("/api/v1/")
        for method in operations
    ]


async def test_every_endpoint_needs_authentication(node: Node):
    routes = _api_routes(node)
    assert len(routes) >= 25
    async with httpx.AsyncClient(base_url=node.admin.url) as anonymous:
        for method, path in routes:
            answer = await anonymous.request(method, path, json={})
            assert answer.status_code == 401, (method, path, answer.text)
            assert answer.json()["error"] == "unauthorized"
            assert answer.headers["www-authenticate"].startswith("Basic")


async def test_credentials_and_bearer_tokens(node: Node):
    async with node.api(httpx.BasicAuth(ADMIN, "wrong password")) as wrong:
        assert (await wrong.get("/api/v1/onboarding")).status_code == 401
    async with node.api(httpx.BasicAuth("nobody", PASSWORD)) as unknown:
        assert (await unknown.get("/api/v1/onboarding")).status_code == 401
    async with httpx.AsyncClient(base_url=node.admin.url) as raw:
        for header in ("Basic !!!", "Basic " + base64.b64encode(b"no-colon").decode(), "Digest x"):
            answer = await raw.get("/api/v1/onboarding", headers={"authorization": header})
            assert answer.status_code == 401
        async with node.api() as api:
            issued = (await api.post("/api/v1/token")).json()
        assert issued["token_type"] == "Bearer" and issued["expires_in"] == 480 * 60
        bearer = {"authorization": f"Bearer {issued['access_token']}"}
        assert (await raw.get("/api/v1/onboarding", headers=bearer)).status_code == 200
        tampered = {"authorization": f"Bearer {issued['access_token'][:-2]}xx"}
        assert (await raw.get("/api/v1/onboarding", headers=tampered)).status_code == 401
        # The page's cookie is not an API credential.
        cookie = {"cookie": f"ucpush_admin={issued['access_token']}"}
        assert (await raw.get("/api/v1/onboarding", headers=cookie)).status_code == 401


async def test_first_start_creates_an_admin_with_a_password_file(node: Node):
    path = node.settings.data_dir / INITIAL_PASSWORD_FILE
    assert node.admin.initial_password_file == path
    assert path.stat().st_mode & 0o777 == 0o600
    username, password = path.read_text().split()
    async with node.api(httpx.BasicAuth(username, password)) as api:
        admins = (await api.get("/api/v1/admins")).json()
    assert [a["username"] for a in admins] == ["admin", ADMIN]


async def test_onboarding_flow(node: Node, stack: Stack):
    async with node.api() as api:
        state = (await api.get("/api/v1/onboarding")).json()
        assert state["status_line"] == "Onboarding Pending" and state["voucher_generation"]
        assert state["cluster_id"] == node.admin.cloud.cluster_id
        check = await api.post("/api/v1/onboarding/check", json={"relay_url": stack.relay.url})
        assert check.json()["certificate_trusted"] is False
        ca = {"system_ca": False, "ca_bundle": stack.ca_file.read_text()}
        assert (await api.put("/api/v1/onboarding/certificates", json=ca)).status_code == 200
        check = await api.post("/api/v1/onboarding/check", json={"relay_url": stack.relay.url})
        assert check.json()["reachable"] and check.json()["certificate_trusted"]
        voucher = (await api.post("/api/v1/onboarding/voucher")).json()["voucher"]
        enrolled = await api.post(
            "/api/v1/onboarding/enroll", json={"voucher": voucher, "relay_url": stack.relay.url}
        )
        assert enrolled.status_code == 200, enrolled.text
        assert enrolled.json()["status_line"] == "Onboarding Completed"
        assert node.admin.cloud.current_client() is not None
        # The stored relay URL is checked when none is given.
        assert (await api.post("/api/v1/onboarding/check")).json()["reachable"]

        off = await api.post("/api/v1/onboarding/push", json={"enabled": False})
        assert off.json()["push_enabled"] is False and node.admin.cloud.current_client() is None
        on = await api.post("/api/v1/onboarding/push", json={"enabled": True})
        assert on.json()["push_enabled"] is True

        account = node.admin.cloud.account_id
        token = await stack.relay.service.onboarding.replace_refresh_token(account)
        broken = (await api.post("/api/v1/onboarding/verify")).json()
        assert broken["status_line"] == "Onboarding Error: AccessTokenInvalid"
        replaced = await api.put("/api/v1/onboarding/refresh-token", json={"refresh_token": token})
        assert replaced.json()["status_line"] == "Onboarding Completed"

        offboarded = await api.post("/api/v1/onboarding/offboard")
        assert offboarded.json()["status"] == "pending" and not offboarded.json()["account_id"]
        again = await api.post(
            "/api/v1/onboarding/enroll",
            json={"voucher": await stack.voucher(), "relay_url": stack.relay.url},
        )
        assert again.json()["status"] == "completed"


async def test_proxy_troubleshooting_and_service_parameters(node: Node):
    async with node.api() as api:
        proxy = {"host": "proxy.lan", "port": 3128, "username": "u", "password": "p"}
        state = (await api.put("/api/v1/onboarding/proxy", json=proxy)).json()
        assert state["proxy"] == {
            "host": "proxy.lan",
            "port": 3128,
            "username": "u",
            "password_set": True,
            "auth": "digest",
        }
        assert "p" not in str(state["proxy"]["password_set"])
        assert (await api.delete("/api/v1/onboarding/proxy")).json()["proxy"] is None
        state = await api.put(
            "/api/v1/onboarding/troubleshooting",
            json={"send_troubleshooting": True, "encrypt_pii": True},
        )
        assert len(state.json()["pii_support_token"]) >= 40
        params = await api.put("/api/v1/service-parameters", json={"push_high_availability": False})
        assert params.json() == {"push_high_availability": False}
        assert (await api.get("/api/v1/service-parameters")).json() == params.json()


async def test_alarms_are_listed(node: Node):
    await node.store.alarms.raise_alarm(
        "node-a", "AccessTokenInvalid", "ALERT", "", {"detail": "x"}, datetime.now(UTC)
    )
    async with node.api() as api:
        [alarm] = (await api.get("/api/v1/alarms")).json()
    assert alarm["name"] == "AccessTokenInvalid" and alarm["node"] == "node-a"
    async with node.api() as api:
        assert (await api.post("/api/v1/alarms/push-now")).status_code == 202
    assert (await node.store.alarms.prefs(datetime.now(UTC))).push_requested_at is not None


async def test_signin_administration(node: Node):
    async with node.api() as api:
        enterprise = await api.put(
            "/api/v1/enterprise",
            json={
                "oauth_refresh_login": True,
                "access_token_minutes": 30,
                "refresh_token_days": 10,
            },
        )
        assert enterprise.json()["access_token_minutes"] == 30
        assert (await api.get("/api/v1/enterprise")).json()["oauth_refresh_login"] is True
        ward = await api.post(
            "/api/v1/ucservices",
            json={"name": "ward", "params": {"LocalPushSSIDList": "Ward4;Ward5"}},
        )
        assert ward.status_code == 201
        updated = await api.put(
            "/api/v1/ucservices/ward", json={"params": {"LocalPushSSIDList": "Ward6"}}
        )
        assert updated.json()["params"] == {"LocalPushSSIDList": "Ward6"}
        profile = await api.post(
            "/api/v1/profiles", json={"name": "nurses", "ucservices": ["ward"]}
        )
        assert profile.status_code == 201
        assert (await api.get("/api/v1/profiles")).json() == [
            {"name": "nurses", "ucservices": ["ward"]}
        ]
        user = await api.post("/api/v1/users", json={"username": "alice", "password": "pw-alice-1"})
        assert user.status_code == 201 and user.json()["profile"] is None
        assigned = await api.put("/api/v1/users/alice/profile", json={"profile": "nurses"})
        assert assigned.json()["profile"] == "nurses"

        alice = await node.store.signin.get_user_by_name("alice")
        await node.signin.register_device(
            alice,
            "iphone-1",
            DeviceRegistration(Platform.IOS, "APNS", "ab" * 32, bytes(32), "k1"),
        )
        [device] = (await api.get("/api/v1/devices")).json()
        assert device["username"] == "alice" and device["push_state"] == "active"
        assert device["push_token"] != "ab" * 32  # shortened

        assert (await api.delete("/api/v1/users/alice")).status_code == 204
        assert (await api.get("/api/v1/users")).json() == []


BAD_INPUT = [
    ("POST", "/api/v1/onboarding/enroll", {"voucher": "", "relay_url": "x"}, 400, "voucher"),
    ("POST", "/api/v1/onboarding/enroll", {"voucher": "A", "relay_url": "ftp://r"}, 400, "URL"),
    ("POST", "/api/v1/onboarding/enroll", {"relay_url": "https://r"}, 400, "voucher"),
    ("POST", "/api/v1/onboarding/push", {"enabled": True}, 409, "not onboarded"),
    ("POST", "/api/v1/onboarding/push", {"enabled": "maybe"}, 400, "enabled"),
    ("PUT", "/api/v1/onboarding/refresh-token", {"refresh_token": "x"}, 409, "voucher"),
    ("PUT", "/api/v1/onboarding/proxy", {"host": "p", "port": 0}, 400, "port"),
    ("PUT", "/api/v1/onboarding/proxy", {"host": "a b", "port": 8}, 400, "host"),
    ("PUT", "/api/v1/onboarding/proxy", {"host": "p", "port": 8, "password": "x"}, 400, "user"),
    ("PUT", "/api/v1/onboarding/proxy", {"host": "p", "port": 8, "auth": "ntlm"}, 400, "auth"),
    ("PUT", "/api/v1/onboarding/certificates", {"system_ca": False}, 400, "CA bundle"),
    ("PUT", "/api/v1/onboarding/certificates", {"system_ca": 1, "ca_bundle": "x"}, 400, "PEM"),
    ("PUT", "/api/v1/onboarding/troubleshooting", {"encrypt_pii": True}, 400, "send"),
    ("POST", "/api/v1/onboarding/check", {"relay_url": "nope"}, 400, "URL"),
    (
        "PUT",
        "/api/v1/enterprise",
        {"oauth_refresh_login": True, "access_token_minutes": 0, "refresh_token_days": 1},
        400,
        "access_token_minutes",
    ),
    ("POST", "/api/v1/ucservices", {"name": "s", "params": {"bad key!": "v"}}, 400, "key"),
    ("PUT", "/api/v1/ucservices/missing", {"params": {}}, 404, "missing"),
    ("POST", "/api/v1/profiles", {"name": "p", "ucservices": ["missing"]}, 404, "missing"),
    ("POST", "/api/v1/users", {"username": "u"}, 400, "password"),
    ("POST", "/api/v1/users", {"username": "u", "password": "p", "profile": "x"}, 404, "x"),
    ("PUT", "/api/v1/users/ghost/profile", {"profile": None}, 404, "ghost"),
    ("DELETE", "/api/v1/users/ghost", None, 404, "ghost"),
    ("POST", "/api/v1/admins", {"username": "a b", "password": "long enough pw"}, 400, "name"),
    ("POST", "/api/v1/admins", {"username": "bob", "password": "short"}, 400, "password"),
    ("POST", "/api/v1/admins", {"username": ADMIN, "password": "long enough pw"}, 409, ADMIN),
]


async def test_bad_input_gets_a_clear_4xx(node: Node):
    async with node.api() as api:
        for method, path, body, status, words in BAD_INPUT:
            answer = await api.request(method, path, json=body)
            assert answer.status_code == status, (path, body, answer.text)
            error = answer.json()
            assert set(error) == {"error", "detail"} and words in error["detail"], (path, error)
        state = (await api.get("/api/v1/onboarding")).json()
    assert state["status"] == "pending" and state["proxy"] is None  # nothing half-saved


async def test_malformed_bodies(node: Node):
    async with node.api() as api:
        not_json = await api.post(
            "/api/v1/onboarding/enroll",
            content=b"{voucher",
            headers={"content-type": "application/json"},
        )
        assert not_json.status_code == 400 and not_json.json()["error"] == "invalid_request"
        huge = await api.put(
            "/api/v1/onboarding/certificates",
            json={"system_ca": True, "ca_bundle": "x" * 70000},
        )
        assert huge.status_code == 413
        # Nothing changed.
        state = (await api.get("/api/v1/onboarding")).json()
        assert state["status"] == "pending" and state["ca_bundle"] == ""


async def test_generate_voucher_needs_a_local_relay(node: Node):
    node.admin.context.voucher_issuer = None
    async with node.api() as api:
        answer = await api.post("/api/v1/onboarding/voucher")
    assert answer.status_code == 409 and "relay operator" in answer.json()["detail"]


async def test_openapi_documents_the_api(node: Node):
    async with httpx.AsyncClient(base_url=node.admin.url) as anonymous:
        schema = (await anonymous.get("/openapi.json")).json()
    assert "/api/v1/onboarding/enroll" in schema["paths"]
    assert "/onboarding" not in schema["paths"]  # pages are not API
