"""The admin ASGI app (page + API) and ``run_admin``, which the node starts beside its other
services."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response

from ucpush import __version__, aio
from ucpush.admin import api, pages
from ucpush.admin.auth import AdminAuth, AdminAuthError
from ucpush.admin.context import AdminContext, VoucherIssuer
from ucpush.cloud import CloudConnection, CloudError
from ucpush.config import Settings
from ucpush.httpapi import BodyLimit, describe_validation_errors, error_response
from ucpush.logging import get_logger
from ucpush.signin.service import SigninError
from ucpush.store.repository import NotFound

if TYPE_CHECKING:
    from ucpush.signin.service import SigninService
    from ucpush.store import Store

log = get_logger("ucpush.admin")


def _failure(request: Request, status: int, error: str, detail: str) -> Response:
    if request.url.path.startswith("/api/"):
        headers = {"WWW-Authenticate": 'Basic realm="ucpush admin"'} if status == 401 else None
        return error_response(status, error, detail, headers)
    return pages.login_page(detail, status) if status == 401 else pages.error_page(detail, status)


def create_admin_app(ctx: AdminContext) -> FastAPI:
    """The admin page (``/onboarding`` and the other pages) and API (``/api/v1``, OpenAPI at
    ``/docs``) on ``ctx``."""
    app = FastAPI(
        title="ucpush admin",
        version=__version__,
        summary="Cloud onboarding, service parameters, end users, devices of a call node.",
    )
    app.state.admin = ctx

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> Response:
        return _failure(request, 400, "invalid_request", describe_validation_errors(exc.errors()))

    @app.exception_handler(AdminAuthError)
    async def _auth(request: Request, exc: AdminAuthError) -> Response:
        error = {401: "unauthorized", 403: "forbidden", 409: "conflict"}.get(exc.status, "invalid")
        return _failure(request, exc.status, error, exc.detail)

    @app.exception_handler(CloudError)
    async def _cloud(request: Request, exc: CloudError) -> Response:
        error = {409: "conflict", 502: "relay_error", 404: "not_found"}.get(exc.status, "invalid")
        return _failure(request, exc.status, error, exc.detail)

    @app.exception_handler(SigninError)
    async def _signin(request: Request, exc: SigninError) -> Response:
        return _failure(request, exc.status, exc.error, exc.detail)

    @app.exception_handler(NotFound)
    async def _missing(request: Request, exc: NotFound) -> Response:
        return _failure(request, 404, "not_found", f"{exc} not found")

    @app.get("/healthz", tags=["operations"])
    async def healthz() -> JSONResponse:
        return JSONResponse({"status": "ok"})

    app.include_router(api.router())
    app.include_router(pages.router())
    app.add_middleware(BodyLimit, limit=ctx.max_body_bytes)
    return app


@dataclass(slots=True)
class RunningAdmin:
    cloud: CloudConnection
    context: AdminContext
    url: str  # "" when the admin page is disabled (admin.enabled = false)
    initial_password_file: Path | None  # set when this start created the first admin user


@contextlib.asynccontextmanager
async def run_admin(
    settings: Settings,
    store: Store,
    signin: SigninService,
    *,
    cloud: CloudConnection | None = None,
    voucher_issuer: VoucherIssuer | None = None,
) -> AsyncIterator[RunningAdmin]:
    """Serve the admin app on ``admin.host:admin.port`` over the node's ``cloud`` connection
    (opened here, and closed after, when not given).

    With no admin user yet, ``admin`` is created with a random password written to
    ``<data_dir>/admin-initial-password``.
    """
    admin = settings.admin
    auth = AdminAuth.from_files(
        store.admins,
        Path(admin.secret_file or settings.data_dir / "admin-secret"),
        admin.session_minutes * 60,
    )
    initial = await auth.ensure_initial_user(settings.data_dir)
    if initial is not None:
        log.warning("admin_user_created", username="admin", password_file=str(initial))
    async with contextlib.AsyncExitStack() as owned:
        if cloud is None:
            cloud = await owned.enter_async_context(await CloudConnection.open(settings, store))
        ctx = AdminContext(
            auth=auth,
            cloud=cloud,
            signin=signin,
            store=store,
            voucher_issuer=voucher_issuer,
            max_body_bytes=admin.max_body_bytes,
            secure_cookies=bool(admin.tls_cert),
        )
        if not admin.enabled:
            yield RunningAdmin(cloud, ctx, "", initial)
            return
        async with aio.serve_http(
            create_admin_app(ctx),
            host=admin.host,
            port=admin.port,
            tls_cert=admin.tls_cert,
            tls_key=admin.tls_key,
        ) as server:
            scheme = "https" if admin.tls_cert else "http"
            # A SIGTERM during start-up makes uvicorn close its sockets at once; the node is
            # stopping then, and the configured port is all there is to report.
            listening = server.servers and server.servers[0].sockets
            port = aio.bound_port(server) if listening else admin.port
            url = f"{scheme}://{admin.host}:{port}"
            log.info("admin_started", url=url, cluster_id=cloud.cluster_id)
            yield RunningAdmin(cloud, ctx, url, initial)
