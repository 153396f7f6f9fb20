"""The admin API (``/api/v1``), documented at ``/docs``: onboarding, the node's service
parameters, client sign-in administration and devices.

API clients authenticate with HTTP Basic on each request, or exchange Basic credentials for a
bearer token at ``POST /api/v1/token``. The page's session cookie is not accepted here: with no
cookie auth, the API needs no CSRF defence.
"""

from __future__ import annotations

import base64
import binascii
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response
from pydantic import BaseModel, Field

from ucpush.admin.auth import AdminAuthError
from ucpush.admin.context import AdminContext
from ucpush.cloud import CloudError, ProxyAuth, ProxyConfig, Reachability


def context(request: Request) -> AdminContext:
    return request.app.state.admin


Ctx = Annotated[AdminContext, Depends(context)]


async def api_user(request: Request, ctx: Ctx) -> str:
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value:
        return (await ctx.auth.verify(value.strip())).username
    if scheme.lower() == "basic" and value:
        try:
            username, sep, password = base64.b64decode(value, validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            raise AdminAuthError(401, "malformed Basic credentials") from None
        if not sep:
            raise AdminAuthError(401, "malformed Basic credentials")
        return await ctx.auth.check_password(username, password)
    raise AdminAuthError(401, "authentication required (Basic or Bearer)")


User = Annotated[str, Depends(api_user)]


# models


class TokenOut(BaseModel):
    access_token: str
    token_type: Literal["Bearer"] = "Bearer"
    expires_in: int


class ProxyOut(BaseModel):
    host: str
    port: int
    username: str
    password_set: bool
    auth: ProxyAuth


class OnboardingOut(BaseModel):
    cluster_id: str
    status: str = Field(description="pending, completed or error")
    status_line: str = Field(description="e.g. 'Onboarding Error: AccessTokenInvalid'")
    alarm: str
    detail: str
    relay_url: str
    account_id: str
    push_enabled: bool
    system_ca: bool
    ca_bundle: str
    proxy: ProxyOut | None
    send_troubleshooting: bool
    encrypt_pii: bool
    pii_support_token: str = Field(description="decrypts uploaded PII; empty while it is off")
    voucher_generation: bool = Field(description="this node can issue its own voucher")


class ReachabilityIn(BaseModel):
    relay_url: str | None = Field(None, max_length=1024)


class ReachabilityOut(BaseModel):
    url: str
    reachable: bool
    tls: bool
    certificate_trusted: bool | None
    subject: str
    issuer: str
    not_after: datetime | None
    detail: str

    @classmethod
    def of(cls, r: Reachability) -> ReachabilityOut:
        return cls(
            url=r.url,
            reachable=r.reachable,
            tls=r.tls,
            certificate_trusted=r.certificate_trusted,
            subject=r.subject,
            issuer=r.issuer,
            not_after=r.not_after,
            detail=r.detail,
        )


class VoucherOut(BaseModel):
    voucher: str


class EnrollIn(BaseModel):
    voucher: str = Field(min_length=1, max_length=128)
    relay_url: str = Field(min_length=1, max_length=1024)


class PushIn(BaseModel):
    enabled: bool


class OffboardIn(BaseModel):
    force: bool = False


class RefreshTokenIn(BaseModel):
    refresh_token: str = Field(min_length=1, max_length=4096)


class ProxyIn(BaseModel):
    host: str = Field(min_length=1, max_length=255)
    port: int = Field(ge=1, le=65535)
    username: str = Field("", max_length=255)
    password: str = Field("", max_length=255)
    auth: ProxyAuth = ProxyAuth.DIGEST


class CertificatesIn(BaseModel):
    system_ca: bool = Field(description="let the system manage CA certificates")
    ca_bundle: str = Field("", max_length=60000, description="PEM certificates to trust")


class TroubleshootingIn(BaseModel):
    send_troubleshooting: bool
    encrypt_pii: bool


class EnterpriseIo(BaseModel):
    oauth_refresh_login: bool
    access_token_minutes: int = Field(ge=1, le=1440)
    refresh_token_days: int = Field(ge=1, le=365)


class EnterpriseOut(EnterpriseIo):
    revoked_refresh_tokens: int = 0


class ServiceParams(BaseModel):
    push_high_availability: bool


class UcServiceIn(BaseModel):
    name: str = Field(min_length=1, max_length=255)
    params: dict[str, str] = Field(default_factory=dict)


class UcServiceParamsIn(BaseModel):
    params: dict[str, str]


class UcServiceOut(BaseModel):
    name: str
    type: str
    params: dict[str, str]


class ProfileIn(BaseModel):
    name: str = Field(min_length=1, max_length=255)
    ucservices: list[str] = Field(default_factory=list)


class ProfileOut(BaseModel):
    name: str
    ucservices: list[str]


class UserIn(BaseModel):
    username: str = Field(min_length=1, max_length=255)
    password: str = Field(min_length=1, max_length=256)
    display_name: str = Field("", max_length=255)
    profile: str | None = Field(None, max_length=255)


class UserProfileIn(BaseModel):
    profile: str | None = Field(None, max_length=255)


class UserOut(BaseModel):
    username: str
    display_name: str
    profile: str | None
    created_at: datetime


class DeviceOut(BaseModel):
    id: str
    username: str
    platform: str
    service: str
    push_state: str
    push_token: str = Field(description="shortened: enough to recognise, not to push with")
    local_push_capable: bool
    updated_at: datetime
    signed_out_at: datetime | None


class AdminIn(BaseModel):
    username: str = Field(min_length=1, max_length=64)
    password: str = Field(min_length=1, max_length=256)


class AdminOut(BaseModel):
    username: str
    created_at: datetime


class AlarmOut(BaseModel):
    name: str
    severity: str
    node: str
    key: str
    count: int
    last_raised_at: str


# views shared by the API and the pages


def onboarding_view(ctx: AdminContext) -> OnboardingOut:
    cloud = ctx.cloud
    status = cloud.status
    proxy = cloud.proxy
    return OnboardingOut(
        cluster_id=cloud.cluster_id,
        status=status.status.value,
        status_line=status.label,
        alarm=status.alarm,
        detail=status.detail,
        relay_url=cloud.relay_url,
        account_id=cloud.account_id,
        push_enabled=cloud.push_enabled,
        system_ca=cloud.system_ca,
        ca_bundle=cloud.ca_bundle,
        proxy=ProxyOut(
            host=proxy.host,
            port=proxy.port,
            username=proxy.username,
            password_set=bool(proxy.password),
            auth=proxy.auth,
        )
        if proxy
        else None,
        send_troubleshooting=cloud.send_troubleshooting,
        encrypt_pii=cloud.encrypt_pii,
        pii_support_token=cloud.pii_support_token,
        voucher_generation=ctx.voucher_issuer is not None,
    )


async def generate_voucher(ctx: AdminContext) -> str:
    if ctx.voucher_issuer is None:
        raise CloudError(
            409,
            "this node cannot issue vouchers: ask the relay operator "
            "(ucpush relay voucher create --tenant NAME) and enter the voucher",
        )
    return await ctx.voucher_issuer()


def proxy_config(host: str, port: int, username: str, password: str, auth: str) -> ProxyConfig:
    try:
        return ProxyConfig(host.strip(), port, username.strip(), password, ProxyAuth(auth))
    except ValueError as exc:
        raise CloudError(400, str(exc)) from None


async def ucservices_view(ctx: AdminContext) -> list[UcServiceOut]:
    return [
        UcServiceOut(name=s.name, type=s.type, params=dict(s.params))
        for s in await ctx.store.signin.list_ucservices()
    ]


async def profiles_view(ctx: AdminContext) -> list[ProfileOut]:
    repo = ctx.store.signin
    return [
        ProfileOut(name=p.name, ucservices=[s.name for s in await repo.profile_ucservices(p.id)])
        for p in await repo.list_profiles()
    ]


async def users_view(ctx: AdminContext) -> list[UserOut]:
    profiles = {p.id: p.name for p in await ctx.store.signin.list_profiles()}
    return [
        UserOut(
            username=u.username,
            display_name=u.display_name,
            profile=profiles.get(u.profile_id) if u.profile_id else None,
            created_at=u.created_at,
        )
        for u in await ctx.store.signin.list_users()
    ]


def _short(token: str) -> str:
    return token if len(token) <= 16 else f"{token[:8]}…{token[-6:]}"


async def devices_view(ctx: AdminContext) -> list[DeviceOut]:
    names = {u.id: u.username for u in await ctx.store.signin.list_users()}
    return [
        DeviceOut(
            id=d.id,
            username=names.get(d.user_id, d.user_id),
            platform=d.platform.value,
            service=d.service,
            push_state=d.push_state.value,
            push_token=_short(d.push_token),
            local_push_capable=d.platform.value == "ios",
            updated_at=d.updated_at,
            signed_out_at=d.signed_out_at,
        )
        for d in await ctx.store.signin.list_devices()
    ]


async def enterprise_view(ctx: AdminContext) -> EnterpriseOut:
    params = await ctx.store.signin.get_enterprise()
    return EnterpriseOut(
        oauth_refresh_login=params.oauth_refresh_login,
        access_token_minutes=params.access_token_minutes,
        refresh_token_days=params.refresh_token_days,
    )


async def set_enterprise(ctx: AdminContext, body: EnterpriseIo) -> EnterpriseOut:
    params, revoked = await ctx.signin.set_enterprise(
        oauth_refresh_login=body.oauth_refresh_login,
        access_token_minutes=body.access_token_minutes,
        refresh_token_days=body.refresh_token_days,
    )
    return EnterpriseOut(
        oauth_refresh_login=params.oauth_refresh_login,
        access_token_minutes=params.access_token_minutes,
        refresh_token_days=params.refresh_token_days,
        revoked_refresh_tokens=revoked,
    )


def router() -> APIRouter:
    api = APIRouter(prefix="/api/v1")

    @api.post("/token", response_model=TokenOut, tags=["auth"])
    async def token(user: User, ctx: Ctx) -> Any:
        """Exchange Basic credentials for a bearer token valid ``admin.session_minutes``."""
        issued, _ = ctx.auth.issue(user)
        return TokenOut(access_token=issued, expires_in=ctx.auth.session_seconds)

    @api.get("/onboarding", response_model=OnboardingOut, tags=["onboarding"])
    async def onboarding(_: User, ctx: Ctx) -> Any:
        """Cluster ID, status line (with the alarm name on errors), relay, push switch, CA
        trust, proxy, troubleshooting options and the PII support token."""
        await ctx.cloud.reload()
        return onboarding_view(ctx)

    @api.post("/onboarding/check", response_model=ReachabilityOut, tags=["onboarding"])
    async def check(_: User, ctx: Ctx, body: ReachabilityIn | None = None) -> Any:
        """Cloud reachability and certificate check (the stored relay URL by default)."""
        return ReachabilityOut.of(
            await ctx.cloud.check_reachability(body.relay_url if body else None)
        )

    @api.post("/onboarding/verify", response_model=OnboardingOut, tags=["onboarding"])
    async def verify(_: User, ctx: Ctx) -> Any:
        """Fetch an access token now: Completed, or an error naming its alarm."""
        await ctx.cloud.verify()
        return onboarding_view(ctx)

    @api.post("/onboarding/voucher", response_model=VoucherOut, tags=["onboarding"])
    async def voucher(_: User, ctx: Ctx) -> Any:
        """Generate a voucher (only where the relay shares this node's database)."""
        return VoucherOut(voucher=await generate_voucher(ctx))

    @api.post("/onboarding/enroll", response_model=OnboardingOut, tags=["onboarding"])
    async def enroll(body: EnrollIn, _: User, ctx: Ctx) -> Any:
        """Onboard with a voucher and enable push notifications."""
        await ctx.cloud.enroll(body.voucher, body.relay_url)
        return onboarding_view(ctx)

    @api.post("/onboarding/push", response_model=OnboardingOut, tags=["onboarding"])
    async def push(body: PushIn, _: User, ctx: Ctx) -> Any:
        """Enable or disable push notifications (the machine account is kept)."""
        await (ctx.cloud.enable_push() if body.enabled else ctx.cloud.disable_push())
        return onboarding_view(ctx)

    @api.post("/onboarding/offboard", response_model=OnboardingOut, tags=["onboarding"])
    async def offboard(_: User, ctx: Ctx, body: OffboardIn | None = None) -> Any:
        """Give the machine account back to the relay; onboard again with a new voucher."""
        await ctx.cloud.offboard(force=body.force if body else False)
        return onboarding_view(ctx)

    @api.put("/onboarding/refresh-token", response_model=OnboardingOut, tags=["onboarding"])
    async def refresh_token(body: RefreshTokenIn, _: User, ctx: Ctx) -> Any:
        """Manual recovery: store the refresh token the relay operator issued (every node
        of the cluster picks it up)."""
        await ctx.cloud.replace_refresh_token(body.refresh_token)
        return onboarding_view(ctx)

    @api.put("/onboarding/proxy", response_model=OnboardingOut, tags=["onboarding"])
    async def set_proxy(body: ProxyIn, _: User, ctx: Ctx) -> Any:
        """HTTP(S) proxy towards the relay, basic or digest authentication."""
        await ctx.cloud.set_proxy(
            proxy_config(body.host, body.port, body.username, body.password, body.auth)
        )
        return onboarding_view(ctx)

    @api.delete("/onboarding/proxy", response_model=OnboardingOut, tags=["onboarding"])
    async def remove_proxy(_: User, ctx: Ctx) -> Any:
        await ctx.cloud.set_proxy(None)
        return onboarding_view(ctx)

    @api.put("/onboarding/certificates", response_model=OnboardingOut, tags=["onboarding"])
    async def certificates(body: CertificatesIn, _: User, ctx: Ctx) -> Any:
        """How the relay's TLS certificate is trusted."""
        await ctx.cloud.set_certificates(system_ca=body.system_ca, ca_bundle=body.ca_bundle)
        return onboarding_view(ctx)

    @api.put("/onboarding/troubleshooting", response_model=OnboardingOut, tags=["onboarding"])
    async def troubleshooting(body: TroubleshootingIn, _: User, ctx: Ctx) -> Any:
        """Send troubleshooting information (alarms) to the relay, PII encrypted or not."""
        await ctx.cloud.set_troubleshooting(
            send=body.send_troubleshooting, encrypt_pii=body.encrypt_pii
        )
        return onboarding_view(ctx)

    @api.get("/alarms", response_model=list[AlarmOut], tags=["operations"])
    async def alarms(_: User, ctx: Ctx) -> Any:
        """Active alarms of every node of the cluster, newest first."""
        return await ctx.active_alarms()

    @api.post("/alarms/push-now", status_code=202, tags=["operations"])
    async def push_now(_: User, ctx: Ctx) -> Response:
        """Send troubleshooting information (alarms) to the relay now: the running nodes
        upload at their next poll (``alarms.poll_seconds``)."""
        await ctx.store.alarms.request_push(datetime.now(UTC))
        return Response(status_code=202)

    @api.get("/service-parameters", response_model=ServiceParams, tags=["service"])
    async def get_service(_: User, ctx: Ctx) -> Any:
        return ServiceParams(push_high_availability=ctx.cloud.push_high_availability)

    @api.put("/service-parameters", response_model=ServiceParams, tags=["service"])
    async def put_service(body: ServiceParams, _: User, ctx: Ctx) -> Any:
        """Push high availability: calls fail over to another node's push dispatcher."""
        await ctx.cloud.set_push_high_availability(body.push_high_availability)
        return ServiceParams(push_high_availability=ctx.cloud.push_high_availability)

    @api.get("/enterprise", response_model=EnterpriseOut, tags=["sign-in"])
    async def get_enterprise(_: User, ctx: Ctx) -> Any:
        return await enterprise_view(ctx)

    @api.put("/enterprise", response_model=EnterpriseOut, tags=["sign-in"])
    async def put_enterprise(body: EnterpriseIo, _: User, ctx: Ctx) -> Any:
        """Client OAuth: refresh login on/off (off revokes every refresh token), lifetimes."""
        return await set_enterprise(ctx, body)

    @api.get("/ucservices", response_model=list[UcServiceOut], tags=["sign-in"])
    async def list_ucservices(_: User, ctx: Ctx) -> Any:
        return await ucservices_view(ctx)

    @api.post("/ucservices", response_model=UcServiceOut, status_code=201, tags=["sign-in"])
    async def add_ucservice(body: UcServiceIn, _: User, ctx: Ctx) -> Any:
        """A client-configuration UC service, e.g. ``{"LocalPushSSIDList": "Ward4;Ward5"}``."""
        service = await ctx.signin.add_ucservice(body.name, body.params)
        return UcServiceOut(name=service.name, type=service.type, params=dict(service.params))

    @api.put("/ucservices/{name}", response_model=UcServiceOut, tags=["sign-in"])
    async def set_ucservice(name: str, body: UcServiceParamsIn, _: User, ctx: Ctx) -> Any:
        await ctx.signin.set_ucservice_params(name, body.params)
        service = await ctx.store.signin.get_ucservice_by_name(name)
        return UcServiceOut(name=service.name, type=service.type, params=dict(service.params))

    @api.get("/profiles", response_model=list[ProfileOut], tags=["sign-in"])
    async def list_profiles(_: User, ctx: Ctx) -> Any:
        return await profiles_view(ctx)

    @api.post("/profiles", response_model=ProfileOut, status_code=201, tags=["sign-in"])
    async def add_profile(body: ProfileIn, _: User, ctx: Ctx) -> Any:
        """A service profile: UC services merged in the order given."""
        profile = await ctx.signin.add_profile(body.name, body.ucservices)
        return ProfileOut(name=profile.name, ucservices=body.ucservices)

    @api.get("/users", response_model=list[UserOut], tags=["sign-in"])
    async def list_users(_: User, ctx: Ctx) -> Any:
        return await users_view(ctx)

    @api.post("/users", response_model=UserOut, status_code=201, tags=["sign-in"])
    async def add_user(body: UserIn, _: User, ctx: Ctx) -> Any:
        user = await ctx.signin.add_user(
            body.username, body.password, display_name=body.display_name, profile=body.profile
        )
        return UserOut(
            username=user.username,
            display_name=user.display_name,
            profile=body.profile,
            created_at=user.created_at,
        )

    @api.put("/users/{username}/profile", response_model=UserOut, tags=["sign-in"])
    async def set_user_profile(username: str, body: UserProfileIn, _: User, ctx: Ctx) -> Any:
        """Assign a service profile (SSID provisioning); live local push sessions re-check."""
        await ctx.signin.set_user_profile(username, body.profile)
        [user] = [u for u in await users_view(ctx) if u.username == username]
        return user

    @api.delete("/users/{username}", status_code=204, tags=["sign-in"])
    async def delete_user(username: str, _: User, ctx: Ctx) -> Response:
        await ctx.signin.delete_user(username)
        return Response(status_code=204)

    @api.get("/devices", response_model=list[DeviceOut], tags=["sign-in"])
    async def devices(_: User, ctx: Ctx) -> Any:
        """Every registered device with its push state."""
        return await devices_view(ctx)

    @api.get("/admins", response_model=list[AdminOut], tags=["auth"])
    async def list_admins(_: User, ctx: Ctx) -> Any:
        return [
            AdminOut(username=a.username, created_at=a.created_at)
            for a in await ctx.store.admins.list()
        ]

    @api.post("/admins", response_model=AdminOut, status_code=201, tags=["auth"])
    async def add_admin(body: AdminIn, _: User, ctx: Ctx) -> Any:
        admin = await ctx.auth.add_user(body.username, body.password)
        return AdminOut(username=admin.username, created_at=admin.created_at)

    return api
