"""The admin page without a browser: sessions, CSRF, escaping, every page and form."""

from __future__ import annotations

import contextlib
import re
from collections.abc import AsyncIterator

import httpx

from tests.admin.conftest import ADMIN, PASSWORD, Node
from ucpush.admin.pages import COOKIE


@contextlib.asynccontextmanager
async def signed_in(node: Node) -> AsyncIterator[tuple[httpx.AsyncClient, str]]:
    """A client holding a session cookie, and the session's CSRF token."""
    async with httpx.AsyncClient(base_url=node.admin.url, timeout=30) as client:
        answer = await client.post("/login", data={"username": ADMIN, "password": PASSWORD})
        assert answer.status_code == 303 and answer.headers["location"] == "/onboarding"
        page = await client.get("/onboarding")
        match = re.search(r'name="csrf" value="([^"]+)"', page.text)
        assert match
        yield client, match.group(1)


async def test_pages_need_a_session(node: Node):
    async with httpx.AsyncClient(base_url=node.admin.url) as anonymous:
        for path in ("/", "/onboarding", "/users", "/devices", "/admins"):
            answer = await anonymous.get(path, follow_redirects=True)
            assert answer.url.path == "/login" and "Sign in" in answer.text
        anonymous.cookies.set(COOKIE, "forged.token")
        forged = await anonymous.post("/onboarding/push-off", data={"csrf": "x"})
        assert forged.status_code == 303 and forged.headers["location"].startswith("/login")
        wrong = await anonymous.post("/login", data={"username": ADMIN, "password": "nope"})
        assert wrong.status_code == 401 and "wrong user name or password" in wrong.text


async def test_session_cookie_and_security_headers(node: Node):
    async with httpx.AsyncClient(base_url=node.admin.url) as client:
        answer = await client.post("/login", data={"username": ADMIN, "password": PASSWORD})
        cookie = answer.headers["set-cookie"].lower()
        assert "httponly" in cookie and "samesite=strict" in cookie
        page = await client.get("/onboarding")
        assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
        assert page.headers["cache-control"] == "no-store"
        evil = await client.post(
            "/login",
            data={"username": ADMIN, "password": PASSWORD, "next": "//evil.example/x"},
        )
        assert evil.headers["location"] == "/onboarding"


async def test_forms_need_the_csrf_token(node: Node):
    async with signed_in(node) as (client, csrf):
        missing = await client.post("/service", data={"push_high_availability": ""})
        assert missing.status_code == 403 and "another site" in missing.text
        wrong = await client.post("/service", data={"csrf": csrf[:-1] + "x"})
        assert wrong.status_code == 403
        not_a_form = await client.post("/service", json={"csrf": csrf})
        assert not_a_form.status_code == 400 and "urlencoded" in not_a_form.text
        assert node.admin.cloud.push_high_availability  # unchanged
        saved = await client.post("/service", data={"csrf": csrf})
        assert saved.status_code == 303 and not node.admin.cloud.push_high_availability


async def test_every_page_renders_and_escapes(node: Node):
    async with signed_in(node) as (client, csrf):
        hostile = "<script>alert(1)</script>"
        added = await client.post("/ucservices", data={"csrf": csrf, "name": hostile})
        assert added.status_code == 303
        for path in (
            "/onboarding",
            "/service",
            "/enterprise",
            "/ucservices",
            "/profiles",
            "/users",
            "/devices",
            "/admins",
        ):
            page = await client.get(path)
            assert page.status_code == 200 and "<script>" not in page.text, path
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in (await client.get("/ucservices")).text


async def test_signin_forms(node: Node):
    async with signed_in(node) as (client, csrf):
        bad = await client.post(
            "/enterprise",
            data={"csrf": csrf, "access_token_minutes": "0", "refresh_token_days": "5"},
        )
        assert bad.status_code == 400 and "1-1440" in bad.text
        not_a_number = await client.post(
            "/enterprise",
            data={"csrf": csrf, "access_token_minutes": "ten", "refresh_token_days": "5"},
        )
        assert not_a_number.status_code == 400 and "whole number" in not_a_number.text
        ok = await client.post(
            "/enterprise",
            data={
                "csrf": csrf,
                "oauth_refresh_login": "on",
                "access_token_minutes": "90",
                "refresh_token_days": "7",
            },
        )
        assert ok.status_code == 303
        assert (await node.store.signin.get_enterprise()).access_token_minutes == 90

        ssids = {"csrf": csrf, "name": "ward", "ssids": "Ward4;Ward5"}
        assert (await client.post("/ucservices", data=ssids)).status_code == 303
        ssids["ssids"] = "Ward6"  # same name: updated
        assert (await client.post("/ucservices", data=ssids)).status_code == 303
        [ward] = await node.store.signin.list_ucservices()
        assert ward.params == {"LocalPushSSIDList": "Ward6"}
        profile = {"csrf": csrf, "name": "nurses", "ucservices": "ward, missing"}
        refused = await client.post("/profiles", data=profile)
        assert refused.status_code == 404 and "missing" in refused.text
        profile["ucservices"] = "ward"
        assert (await client.post("/profiles", data=profile)).status_code == 303

        user = {"csrf": csrf, "username": "bob", "password": "pw-bob-123", "profile": ""}
        assert (await client.post("/users", data=user)).status_code == 303
        assert (await client.post("/users", data=user)).status_code == 409
        assign = {"csrf": csrf, "username": "bob", "profile": "nurses"}
        assert (await client.post("/users/profile", data=assign)).status_code == 303
        bob = await node.store.signin.get_user_by_name("bob")
        assert bob.profile_id is not None
        gone = await client.post("/users/delete", data={"csrf": csrf, "username": "bob"})
        assert gone.status_code == 303
        assert await node.store.signin.list_users() == []

        admin = {"csrf": csrf, "username": "second", "password": "short"}
        assert (await client.post("/admins", data=admin)).status_code == 400
        admin["password"] = "long enough password"
        assert (await client.post("/admins", data=admin)).status_code == 303


async def test_onboarding_forms(node: Node):
    async with signed_in(node) as (client, csrf):
        proxy = {"csrf": csrf, "host": "proxy.lan", "port": "3128", "username": "u"}
        proxy |= {"password": "secret", "auth": "basic"}
        assert (await client.post("/onboarding/proxy", data=proxy)).status_code == 303
        proxy["password"] = ""  # left empty: the stored password is kept
        assert (await client.post("/onboarding/proxy", data=proxy)).status_code == 303
        assert node.admin.cloud.proxy is not None
        assert node.admin.cloud.proxy.password == "secret"
        page = (await client.get("/onboarding")).text
        assert "secret" not in page and "set; leave empty to keep" in page
        proxy["port"] = "http"
        bad = await client.post("/onboarding/proxy", data=proxy)
        assert bad.status_code == 400 and "whole number" in bad.text
        removed = await client.post("/onboarding/proxy-remove", data={"csrf": csrf})
        assert removed.status_code == 303 and node.admin.cloud.proxy is None

        choice = {"csrf": csrf, "send_troubleshooting": "on", "encrypt_pii": "on"}
        assert (await client.post("/onboarding/troubleshooting", data=choice)).status_code == 303
        token = node.admin.cloud.pii_support_token
        assert token and token in (await client.get("/onboarding")).text

        garbage = {"csrf": csrf, "ca_bundle": "-----BEGIN CERTIFICATE-----\nnope"}
        refused = await client.post("/onboarding/certificates", data=garbage)
        assert refused.status_code == 400 and "PEM" in refused.text
        voucher = await client.post("/onboarding/voucher", data={"csrf": csrf})
        assert voucher.status_code == 200
        assert re.search(r'name="voucher" value="[A-Z2-7]{4}(-[A-Z2-7]{4}){5}"', voucher.text)
        sent = await client.post("/onboarding/push-alarms", data={"csrf": csrf})
        assert sent.status_code == 303
        unknown = await client.post("/onboarding/teleport", data={"csrf": csrf})
        assert unknown.status_code == 404

        await client.post("/logout", data={"csrf": csrf})
        after = await client.get("/onboarding")
        assert after.status_code == 303
