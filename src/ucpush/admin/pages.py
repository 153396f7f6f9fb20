"""The admin web page: server-rendered HTML (f-strings, every value escaped), no JavaScript.

Sign-in sets a session cookie (HttpOnly, SameSite=Strict, Secure under TLS); every form carries
the session's CSRF token. A successful form post redirects back (303) with a fixed message; a
refused one shows the page again with the reason and the API's status code.
"""

from __future__ import annotations

import html
from collections.abc import Awaitable, Callable, Iterable, Sequence
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs, quote

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from ucpush import __version__
from ucpush.admin import api
from ucpush.admin.auth import AdminAuthError, Session
from ucpush.admin.context import AdminContext
from ucpush.cloud import CloudError, Reachability
from ucpush.signin.service import SigninError

COOKIE = "ucpush_admin"

_CSS = """
body{font:15px/1.45 system-ui,sans-serif;margin:0;color:#1d2330;background:#f4f6f9}
header{background:#1d3557;color:#fff;padding:.7em 1.5em;display:flex;align-items:center;gap:2em}
header h1{font-size:1.15em;margin:0}header nav a{color:#dbe7ff;margin-right:1.1em}
header nav a.on{color:#fff;font-weight:600;text-decoration:underline}
header form{margin-left:auto}main{max-width:60em;margin:1.2em auto;padding:0 1em}
section{background:#fff;border:1px solid #d5dbe5;border-radius:6px;padding:1em 1.3em;margin:0 0 1em}
h2{font-size:1.1em;margin:.1em 0 .6em}label{display:block;margin:.35em 0}
input[type=text],input[type=password],input[type=number],input[type=url],select,textarea{
font:inherit;padding:.3em .45em;border:1px solid #a9b4c6;border-radius:4px;min-width:18em}
textarea{width:100%;min-height:6em;font-family:ui-monospace,monospace;font-size:.85em}
button{font:inherit;padding:.35em .9em;border-radius:4px;border:1px solid #1d3557;
background:#1d3557;color:#fff;cursor:pointer;margin:.3em .4em .3em 0}
button.secondary{background:#fff;color:#1d3557}button.danger{background:#a4161a;border-color:#a4161a}
table{border-collapse:collapse;width:100%}th,td{text-align:left;padding:.3em .5em;
border-bottom:1px solid #e3e7ee;vertical-align:top}th{background:#eef1f6}
.status{font-size:1.15em;font-weight:600}.ok{color:#1b7f3b}.pending{color:#8a6100}.error{color:#a4161a}
.note{padding:.6em 1em;border-radius:4px;margin:0 0 1em}.note.done{background:#e5f5ea}
.note.fail{background:#fde8e8;color:#7a1013}code,.mono{font-family:ui-monospace,monospace}
dl{display:grid;grid-template-columns:max-content auto;gap:.25em 1em;margin:0}dt{color:#56627a}
dd{margin:0;word-break:break-all}.inline{display:inline}
"""

_PAGES = (
    ("/onboarding", "Cloud Onboarding"),
    ("/service", "Service Parameters"),
    ("/enterprise", "Enterprise Parameters"),
    ("/ucservices", "UC Services"),
    ("/profiles", "Service Profiles"),
    ("/users", "End Users"),
    ("/devices", "Devices"),
    ("/admins", "Administrators"),
)

_DONE = {
    "enroll": "Onboarding completed; push notifications are enabled.",
    "push-on": "Push notifications enabled.",
    "push-off": "Push notifications disabled.",
    "offboard": "Offboarded: enter a new voucher to onboard again.",
    "verify": "Status refreshed from the relay.",
    "refresh-token": "Refresh token replaced.",
    "certificates": "CA certificate settings saved.",
    "proxy": "Proxy settings saved.",
    "proxy-remove": "Proxy removed: the relay is reached directly.",
    "troubleshooting": "Troubleshooting settings saved.",
    "push-alarms": "Upload requested: the running nodes send their alarms within seconds.",
    "service": "Service parameters saved.",
    "enterprise": "Enterprise parameters saved.",
    "ucservice": "UC service saved.",
    "profile": "Service profile added.",
    "user": "End user saved.",
    "user-deleted": "End user deleted.",
    "admin": "Administrator added.",
}

_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'unsafe-inline'; img-src 'self'; form-action 'self'; "
        "frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


def esc(value: object) -> str:
    return html.escape("" if value is None else str(value), quote=True)


class Page:
    """One rendering of a page for a signed-in administrator."""

    def __init__(self, ctx: AdminContext, session: Session) -> None:
        self.ctx = ctx
        self.session = session
        self.csrf = ctx.auth.csrf_token(session)

    def form(
        self, action: str, inner: str, button: str, *, style: str = "", inline: bool = False
    ) -> str:
        cls = f' class="{style}"' if style else ""
        form_cls = ' class="inline"' if inline else ""
        return (
            f'<form method="post" action="{esc(action)}"{form_cls}>'
            f'<input type="hidden" name="csrf" value="{esc(self.csrf)}">{inner}'
            f"<button{cls}>{esc(button)}</button></form>"
        )

    def render(
        self,
        path: str,
        title: str,
        body: str,
        *,
        done: str = "",
        error: str = "",
        status: int = 200,
    ) -> HTMLResponse:
        nav = "".join(
            f'<a href="{p}"{" class=on" if p == path else ""}>{esc(label)}</a>'
            for p, label in _PAGES
        )
        notes = ""
        if done in _DONE:
            notes += f'<p class="note done" role="status">{esc(_DONE[done])}</p>'
        if error:
            notes += f'<p class="note fail" role="alert">{esc(error)}</p>'
        logout = self.form("/logout", "", f"Sign out {self.session.username}", style="secondary")
        page = (
            f'<!doctype html><html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width,initial-scale=1">'
            f"<title>{esc(title)} · ucpush admin</title><style>{_CSS}</style></head><body>"
            f"<header><h1>ucpush admin</h1><nav>{nav}</nav>{logout}</header>"
            f"<main><h2 style='font-size:1.4em'>{esc(title)}</h2>{notes}{body}"
            f"<p style='color:#8892a6;font-size:.85em'>ucpush {esc(__version__)}</p></main>"
            f"</body></html>"
        )
        return HTMLResponse(page, status_code=status, headers=_HEADERS)


def field(label: str, name: str, value: object = "", kind: str = "text", **attrs: object) -> str:
    extra = "".join(f' {k.rstrip("_").replace("_", "-")}="{esc(v)}"' for k, v in attrs.items())
    return (
        f'<label>{esc(label)} <input type="{kind}" name="{name}" value="{esc(value)}"{extra}>'
        "</label>"
    )


def checkbox(label: str, name: str, checked: bool) -> str:
    on = " checked" if checked else ""
    return f'<label><input type="checkbox" name="{name}" value="on"{on}> {esc(label)}</label>'


def table(headers: Sequence[str], rows: Iterable[Sequence[str]], empty: str) -> str:
    """``rows`` cells are HTML already (escape values with ``esc``)."""
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    if not body:
        return f"<p>{esc(empty)}</p>"
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def section(title: str, inner: str, ident: str = "") -> str:
    anchor = f' id="{ident}"' if ident else ""
    return f"<section{anchor}><h2>{esc(title)}</h2>{inner}</section>"


async def read_form(request: Request) -> dict[str, str]:
    """The urlencoded form; a field given twice keeps its last value."""
    kind = request.headers.get("content-type", "").split(";")[0].strip()
    if kind != "application/x-www-form-urlencoded":
        raise AdminAuthError(400, "send the form as application/x-www-form-urlencoded")
    try:
        parsed = parse_qs((await request.body()).decode(), keep_blank_values=True)
    except UnicodeDecodeError:
        raise AdminAuthError(400, "the form is not UTF-8") from None
    return {k: v[-1] for k, v in parsed.items()}


def _int(form: dict[str, str], name: str, label: str) -> int:
    try:
        return int(form.get(name, "").strip())
    except ValueError:
        raise CloudError(400, f"{label} must be a whole number") from None


# page bodies


def _status_class(status: str) -> str:
    return {"completed": "ok", "pending": "pending"}.get(status, "error")


def _reachability(result: Reachability) -> str:
    verdict = (
        '<span class="ok">reachable</span>'
        if result.reachable
        else '<span class="error">not reachable</span>'
    )
    trusted = {True: "trusted", False: "NOT trusted", None: "—"}[result.certificate_trusted]
    rows = [
        ("Relay", esc(result.url)),
        ("Result", f"{verdict}: {esc(result.detail)}"),
        ("TLS", "yes" if result.tls else "no (plain HTTP)"),
        ("Certificate", esc(trusted)),
    ]
    if result.subject or result.issuer:
        rows += [("Subject", esc(result.subject or "—")), ("Issuer", esc(result.issuer))]
    if result.not_after:
        rows.append(("Valid until", esc(f"{result.not_after:%Y-%m-%d %H:%M} UTC")))
    items = "".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in rows)
    return f'<dl id="reachability">{items}</dl>'


async def onboarding_body(
    page: Page, *, check: Reachability | None = None, voucher: str = "", relay_url: str = ""
) -> str:
    ctx = page.ctx
    view = api.onboarding_view(ctx)
    alarms = await ctx.active_alarms()
    status = (
        f'<p class="status {_status_class(view.status)}" id="status-line">'
        f"Status: {esc(view.status_line)}</p>"
    )
    if view.detail:
        status += f"<p>{esc(view.detail)}</p>"
    facts = [
        ("Cluster ID", f'<span class="mono" id="cluster-id">{esc(view.cluster_id)}</span>'),
        ("Relay", esc(view.relay_url or "not set")),
        ("Push notifications", "enabled" if view.push_enabled else "disabled"),
    ]
    if view.pii_support_token:
        facts.append(
            (
                "PII support token",
                f'<span class="mono" id="pii-token">{esc(view.pii_support_token)}</span>',
            )
        )
    status += "<dl>" + "".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in facts) + "</dl>"
    alarm_rows = [
        (esc(a["severity"]), esc(a["name"]), esc(a["node"]), esc(a["key"]), esc(a["count"]))
        for a in alarms
    ]
    status += "<h3>Active alarms</h3>" + table(
        ("severity", "alarm", "node", "instance", "count"), alarm_rows, "No active alarms."
    )
    status += page.form("/onboarding/verify", "", "Refresh status", style="secondary")

    url_value = relay_url or view.relay_url
    reach = page.form(
        "/onboarding/check",
        field("Relay URL", "relay_url", url_value, "url", placeholder="https://relay.example.com"),
        "Check reachability and certificate",
    )
    if check is not None:
        reach += _reachability(check)

    onboarded = bool(view.account_id)
    if not onboarded:
        generate = ""
        if view.voucher_generation:
            generate = page.form(
                "/onboarding/voucher",
                f'<input type="hidden" name="relay_url" value="{esc(url_value)}">',
                "Generate Voucher",
                style="secondary",
            )
        else:
            generate = (
                "<p>Ask the relay operator for a voucher "
                "(<code>ucpush relay voucher create --tenant NAME</code>).</p>"
            )
        enroll = generate + page.form(
            "/onboarding/enroll",
            field("Relay URL", "relay_url", url_value, "url", required="required")
            + field("Voucher", "voucher", voucher, size=40, required="required"),
            "Enable Push Notifications",
        )
    else:
        toggle = (
            page.form("/onboarding/push-off", "", "Disable Push Notifications", style="secondary")
            if view.push_enabled
            else page.form("/onboarding/push-on", "", "Enable Push Notifications")
        )
        enroll = (
            f"<p>Onboarded as machine account <code>{esc(view.account_id)}</code>.</p>{toggle}"
            + page.form(
                "/onboarding/offboard",
                checkbox("Forget the account even if the relay cannot be told", "force", False),
                "Offboard (re-onboard with a new voucher)",
                style="danger",
            )
        )

    certificates = page.form(
        "/onboarding/certificates",
        checkbox("Let the system manage CA certificates", "system_ca", view.system_ca)
        + "<label>Additional CA certificates (PEM) trusted for the relay"
        f'<textarea name="ca_bundle" spellcheck="false">{esc(view.ca_bundle)}</textarea>'
        "</label>",
        "Save CA certificates",
    )

    proxy = view.proxy
    proxy_form = page.form(
        "/onboarding/proxy",
        field("Host", "host", proxy.host if proxy else "")
        + field("Port", "port", proxy.port if proxy else "", "number", min=1, max=65535)
        + field("User", "username", proxy.username if proxy else "", autocomplete="off")
        + field(
            "Password" + (" (set; leave empty to keep)" if proxy and proxy.password_set else ""),
            "password",
            "",
            "password",
            autocomplete="new-password",
        )
        + '<label>Authentication <select name="auth">'
        + "".join(
            f'<option value="{m}"{" selected" if (proxy.auth if proxy else "digest") == m else ""}>'
            f"{m}</option>"
            for m in ("digest", "basic")
        )
        + "</select></label>",
        "Save proxy",
    )
    if proxy:
        proxy_form += page.form("/onboarding/proxy-remove", "", "Remove proxy", style="secondary")

    troubleshooting = page.form(
        "/onboarding/troubleshooting",
        checkbox(
            "Send troubleshooting information (alarms) to the relay",
            "send_troubleshooting",
            view.send_troubleshooting,
        )
        + checkbox("Send encrypted PII", "encrypt_pii", view.encrypt_pii),
        "Save troubleshooting settings",
    ) + page.form(
        "/onboarding/push-alarms",
        "",
        "Send troubleshooting information now",
        style="secondary",
    )

    recovery = page.form(
        "/onboarding/refresh-token",
        "<label>Refresh token issued by the relay operator "
        "(<code>ucpush relay account new-refresh-token</code>)"
        '<textarea name="refresh_token" spellcheck="false" autocomplete="off"></textarea></label>',
        "Replace refresh token",
    )
    return (
        section("Status", status, "status")
        + section("Cloud reachability", reach, "reach")
        + section("Onboarding", enroll, "onboard")
        + section("CA certificates", certificates, "ca")
        + section("HTTP(S) proxy", proxy_form, "proxy")
        + section("Troubleshooting", troubleshooting, "troubleshooting")
        + section("Manual recovery", recovery, "recovery")
    )


async def service_body(page: Page) -> str:
    return section(
        "Push notifications",
        page.form(
            "/service",
            checkbox(
                "Push Notifications High Availability (calls fail over to another node)",
                "push_high_availability",
                page.ctx.cloud.push_high_availability,
            ),
            "Save",
        ),
    )


async def enterprise_body(page: Page) -> str:
    view = await api.enterprise_view(page.ctx)
    return section(
        "Client OAuth",
        page.form(
            "/enterprise",
            checkbox(
                "OAuth with refresh login flow (turning it off signs every client out)",
                "oauth_refresh_login",
                view.oauth_refresh_login,
            )
            + field(
                "Access token lifetime (minutes, 1-1440)",
                "access_token_minutes",
                view.access_token_minutes,
                "number",
                min=1,
                max=1440,
            )
            + field(
                "Refresh token lifetime (days, 1-365)",
                "refresh_token_days",
                view.refresh_token_days,
                "number",
                min=1,
                max=365,
            ),
            "Save",
        ),
    )


async def ucservices_body(page: Page) -> str:
    services = await api.ucservices_view(page.ctx)
    rows = [
        (
            esc(s.name),
            "<br>".join(f"<code>{esc(k)}</code> = {esc(v)}" for k, v in s.params.items()) or "—",
        )
        for s in services
    ]
    add = page.form(
        "/ucservices",
        field("Name", "name", required="required")
        + field("LocalPushSSIDList (SSIDs separated by ;)", "ssids", placeholder="Ward4;Ward5"),
        "Add or update UC service",
    )
    return section("UC services", table(("name", "parameters"), rows, "No UC services.")) + (
        section("Add or update", add)
    )


async def profiles_body(page: Page) -> str:
    profiles = await api.profiles_view(page.ctx)
    rows = [(esc(p.name), esc(", ".join(p.ucservices) or "—")) for p in profiles]
    add = page.form(
        "/profiles",
        field("Name", "name", required="required")
        + field("UC services (comma separated, merged in this order)", "ucservices"),
        "Add service profile",
    )
    return section(
        "Service profiles", table(("name", "UC services"), rows, "No service profiles.")
    ) + section("Add", add)


async def users_body(page: Page) -> str:
    users = await api.users_view(page.ctx)
    rows = [
        (
            esc(u.username),
            esc(u.display_name),
            esc(u.profile or "—"),
            page.form(
                "/users/delete",
                f'<input type="hidden" name="username" value="{esc(u.username)}">',
                "Delete",
                style="danger",
                inline=True,
            ),
        )
        for u in users
    ]
    add = page.form(
        "/users",
        field("User name", "username", required="required")
        + field("Password", "password", kind="password", autocomplete="new-password")
        + field("Display name", "display_name")
        + field("Service profile", "profile"),
        "Add end user",
    )
    assign = page.form(
        "/users/profile",
        field("User name", "username", required="required")
        + field("Service profile (empty = none)", "profile"),
        "Assign service profile",
    )
    return (
        section("End users", table(("user", "name", "profile", ""), rows, "No end users."))
        + section("Add", add)
        + section("SSID provisioning", assign)
    )


async def devices_body(page: Page) -> str:
    devices = await api.devices_view(page.ctx)
    rows = [
        (
            esc(d.username),
            f"<code>{esc(d.id)}</code>",
            esc(d.platform),
            esc(d.service),
            f'<span class="{"ok" if d.push_state == "active" else "error"}">'
            f"{esc(d.push_state)}</span>",
            f"<code>{esc(d.push_token)}</code>",
            esc(f"{d.updated_at:%Y-%m-%d %H:%M}"),
        )
        for d in devices
    ]
    headers = ("user", "device", "platform", "service", "push state", "token", "updated (UTC)")
    return section("Devices", table(headers, rows, "No devices registered."))


async def admins_body(page: Page) -> str:
    admins = await page.ctx.store.admins.list()
    rows = [(esc(a.username), esc(f"{a.created_at:%Y-%m-%d %H:%M}")) for a in admins]
    add = page.form(
        "/admins",
        field("User name", "username", required="required")
        + field("Password (10+ characters)", "password", kind="password"),
        "Add administrator",
    )
    return section("Administrators", table(("user", "created (UTC)"), rows, "None.")) + section(
        "Add", add
    )


Body = Callable[[Page], Awaitable[str]]
_BODIES: dict[str, Body] = {
    "/service": service_body,
    "/enterprise": enterprise_body,
    "/ucservices": ucservices_body,
    "/profiles": profiles_body,
    "/users": users_body,
    "/devices": devices_body,
    "/admins": admins_body,
}
_TITLES = dict(_PAGES)


def login_page(error: str = "", status: int = 200, next_path: str = "/onboarding") -> HTMLResponse:
    note = f'<p class="note fail" role="alert">{esc(error)}</p>' if error else ""
    page = (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        f"<title>Sign in · ucpush admin</title><style>{_CSS}</style></head><body>"
        "<header><h1>ucpush admin</h1></header><main><section><h2>Sign in</h2>"
        f'{note}<form method="post" action="/login">'
        f'<input type="hidden" name="next" value="{esc(next_path)}">'
        f"{field('User name', 'username', autocomplete='username', required='required')}"
        f"{field('Password', 'password', kind='password', autocomplete='current-password')}"
        "<button>Sign in</button></form></section></main></body></html>"
    )
    return HTMLResponse(page, status_code=status, headers=_HEADERS)


def error_page(detail: str, status: int) -> HTMLResponse:
    """A refusal outside any page's own form handling (bad CSRF token, malformed form)."""
    page = (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        f"<title>Error · ucpush admin</title><style>{_CSS}</style></head><body>"
        "<header><h1>ucpush admin</h1></header><main><section><h2>Request refused</h2>"
        f'<p class="note fail" role="alert">{esc(detail)}</p>'
        '<p><a href="/onboarding">Back to the admin page</a></p></section></main></body></html>'
    )
    return HTMLResponse(page, status_code=status, headers=_HEADERS)


def _safe_next(path: str) -> str:
    """Only our own pages: no scheme, no host, no protocol-relative ``//evil``."""
    return path if path in _TITLES else "/onboarding"


def router() -> APIRouter:
    pages = APIRouter(include_in_schema=False)

    async def session_of(request: Request) -> Session | None:
        token = request.cookies.get(COOKIE, "")
        if not token:
            return None
        try:
            return await request.app.state.admin.auth.verify(token)
        except AdminAuthError:
            return None

    def to_login(request: Request) -> Response:
        response = RedirectResponse(f"/login?next={quote(request.url.path)}", status_code=303)
        response.delete_cookie(COOKIE)
        return response

    async def signed_in_form(request: Request) -> tuple[Page, dict[str, str]] | Response:
        session = await session_of(request)
        if session is None:
            return to_login(request)
        ctx: AdminContext = request.app.state.admin
        form = await read_form(request)
        ctx.auth.check_csrf(session, form.get("csrf", ""))
        return Page(ctx, session), form

    @pages.get("/")
    async def root() -> Response:
        return RedirectResponse("/onboarding", status_code=303)

    @pages.get("/login")
    async def login_form(request: Request) -> Response:
        return login_page(next_path=_safe_next(request.query_params.get("next", "")))

    @pages.post("/login")
    async def login(request: Request) -> Response:
        ctx: AdminContext = request.app.state.admin
        form = await read_form(request)
        try:
            username = await ctx.auth.check_password(
                form.get("username", ""), form.get("password", "")
            )
        except AdminAuthError as exc:
            return login_page(exc.detail, exc.status, _safe_next(form.get("next", "")))
        token, _ = ctx.auth.issue(username)
        response = RedirectResponse(_safe_next(form.get("next", "")), status_code=303)
        response.set_cookie(
            COOKIE,
            token,
            max_age=ctx.auth.session_seconds,
            httponly=True,
            samesite="strict",
            secure=ctx.secure_cookies,
        )
        return response

    @pages.post("/logout")
    async def logout(request: Request) -> Response:
        got = await signed_in_form(request)
        response = RedirectResponse("/login", status_code=303)
        if not isinstance(got, Response):
            response.delete_cookie(COOKIE)
        return response

    @pages.get("/onboarding")
    async def onboarding(request: Request) -> Response:
        session = await session_of(request)
        if session is None:
            return to_login(request)
        ctx: AdminContext = request.app.state.admin
        await ctx.cloud.reload()
        page = Page(ctx, session)
        done = request.query_params.get("done", "")
        return page.render(
            "/onboarding", "Cloud Onboarding", await onboarding_body(page), done=done
        )

    @pages.post("/onboarding/{action}")
    async def onboarding_action(action: str, request: Request) -> Response:
        got = await signed_in_form(request)
        if isinstance(got, Response):
            return got
        page, form = got
        cloud = page.ctx.cloud
        relay_url = form.get("relay_url", "")
        try:
            if action == "check":
                result = await cloud.check_reachability(relay_url or None)
                body = await onboarding_body(page, check=result, relay_url=relay_url)
                return page.render("/onboarding", "Cloud Onboarding", body)
            if action == "voucher":
                code = await api.generate_voucher(page.ctx)
                body = await onboarding_body(page, voucher=code, relay_url=relay_url)
                return page.render("/onboarding", "Cloud Onboarding", body)
            if action == "enroll":
                await cloud.enroll(form.get("voucher", ""), relay_url)
            elif action == "push-on":
                await cloud.enable_push()
            elif action == "push-off":
                await cloud.disable_push()
            elif action == "offboard":
                await cloud.offboard(force=form.get("force") == "on")
            elif action == "verify":
                await cloud.verify()
            elif action == "refresh-token":
                await cloud.replace_refresh_token(form.get("refresh_token", ""))
            elif action == "certificates":
                await cloud.set_certificates(
                    system_ca=form.get("system_ca") == "on", ca_bundle=form.get("ca_bundle", "")
                )
            elif action == "proxy":
                current = cloud.proxy
                password = form.get("password", "") or (current.password if current else "")
                await cloud.set_proxy(
                    api.proxy_config(
                        form.get("host", ""),
                        _int(form, "port", "proxy port"),
                        form.get("username", ""),
                        password,
                        form.get("auth", "digest"),
                    )
                )
            elif action == "push-alarms":
                await page.ctx.store.alarms.request_push(datetime.now(UTC))
            elif action == "proxy-remove":
                await cloud.set_proxy(None)
            elif action == "troubleshooting":
                await cloud.set_troubleshooting(
                    send=form.get("send_troubleshooting") == "on",
                    encrypt_pii=form.get("encrypt_pii") == "on",
                )
            else:
                raise CloudError(404, f"no onboarding action {action!r}")
        except CloudError as exc:
            body = await onboarding_body(page, voucher=form.get("voucher", ""), relay_url=relay_url)
            return page.render(
                "/onboarding", "Cloud Onboarding", body, error=exc.detail, status=exc.status
            )
        return RedirectResponse(f"/onboarding?done={action}", status_code=303)

    async def handle_form(
        request: Request, path: str, done: str, work: Callable[[Page, dict[str, str]], Any]
    ) -> Response:
        got = await signed_in_form(request)
        if isinstance(got, Response):
            return got
        page, form = got
        try:
            await work(page, form)
        except (CloudError, SigninError, AdminAuthError) as exc:
            body = await _BODIES[path](page)
            return page.render(path, _TITLES[path], body, error=exc.detail, status=exc.status)
        return RedirectResponse(f"{path}?done={done}", status_code=303)

    for path in _BODIES:
        pages.add_api_route(path, _show(path, session_of, to_login), methods=["GET"])

    @pages.post("/service")
    async def service(request: Request) -> Response:
        async def work(page: Page, form: dict[str, str]) -> None:
            await page.ctx.cloud.set_push_high_availability(
                form.get("push_high_availability") == "on"
            )

        return await handle_form(request, "/service", "service", work)

    @pages.post("/enterprise")
    async def enterprise(request: Request) -> Response:
        async def work(page: Page, form: dict[str, str]) -> None:
            await page.ctx.signin.set_enterprise(
                oauth_refresh_login=form.get("oauth_refresh_login") == "on",
                access_token_minutes=_int(form, "access_token_minutes", "access token lifetime"),
                refresh_token_days=_int(form, "refresh_token_days", "refresh token lifetime"),
            )

        return await handle_form(request, "/enterprise", "enterprise", work)

    @pages.post("/ucservices")
    async def ucservice(request: Request) -> Response:
        async def work(page: Page, form: dict[str, str]) -> None:
            name = form.get("name", "").strip()
            if not name:
                raise CloudError(400, "enter the UC service's name")
            params = {"LocalPushSSIDList": form["ssids"].strip()} if form.get("ssids") else {}
            known = {s.name for s in await page.ctx.store.signin.list_ucservices()}
            if name in known:
                await page.ctx.signin.set_ucservice_params(name, params)
            else:
                await page.ctx.signin.add_ucservice(name, params)

        return await handle_form(request, "/ucservices", "ucservice", work)

    @pages.post("/profiles")
    async def profile(request: Request) -> Response:
        async def work(page: Page, form: dict[str, str]) -> None:
            name = form.get("name", "").strip()
            if not name:
                raise CloudError(400, "enter the service profile's name")
            names = [n.strip() for n in form.get("ucservices", "").split(",") if n.strip()]
            await page.ctx.signin.add_profile(name, names)

        return await handle_form(request, "/profiles", "profile", work)

    @pages.post("/users")
    async def user(request: Request) -> Response:
        async def work(page: Page, form: dict[str, str]) -> None:
            await page.ctx.signin.add_user(
                form.get("username", "").strip(),
                form.get("password", ""),
                display_name=form.get("display_name", "").strip(),
                profile=form.get("profile", "").strip() or None,
            )

        return await handle_form(request, "/users", "user", work)

    @pages.post("/users/profile")
    async def user_profile(request: Request) -> Response:
        async def work(page: Page, form: dict[str, str]) -> None:
            await page.ctx.signin.set_user_profile(
                form.get("username", "").strip(), form.get("profile", "").strip() or None
            )

        return await handle_form(request, "/users", "user", work)

    @pages.post("/users/delete")
    async def user_delete(request: Request) -> Response:
        async def work(page: Page, form: dict[str, str]) -> None:
            await page.ctx.signin.delete_user(form.get("username", ""))

        return await handle_form(request, "/users", "user-deleted", work)

    @pages.post("/admins")
    async def admin(request: Request) -> Response:
        async def work(page: Page, form: dict[str, str]) -> None:
            await page.ctx.auth.add_user(form.get("username", "").strip(), form.get("password", ""))

        return await handle_form(request, "/admins", "admin", work)

    return pages


def _show(
    path: str,
    session_of: Callable[[Request], Awaitable[Session | None]],
    to_login: Callable[[Request], Response],
) -> Callable[[Request], Awaitable[Response]]:
    async def show(request: Request) -> Response:
        session = await session_of(request)
        if session is None:
            return to_login(request)
        page = Page(request.app.state.admin, session)
        done = request.query_params.get("done", "")
        return page.render(path, _TITLES[path], await _BODIES[path](page), done=done)

    return show
