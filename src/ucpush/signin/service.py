"""Client sign-in, devices and client configuration: the logic behind the HTTP API
(``ucpush.signin.api``), the admin CLI (``ucpush.signin.cli``) and the local push service's
authentication (``authorize_local_push``).

Errors are ``SigninError`` with an HTTP status, a short code and a sentence that never contains
passwords, tokens or keys.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import secrets
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Protocol

from ucpush.alarms import clear_alarm
from ucpush.config import Settings
from ucpush.crypto.secretfile import load_or_create_secret
from ucpush.lpns.session import (
    CLOSE_ENDED,
    CLOSE_FORBIDDEN,
    LocalPushGrant,
    LocalPushRefused,
)
from ucpush.signin import clientconfig
from ucpush.signin.passwords import hash_password, verify_password
from ucpush.signin.tokens import AccessClaims, TokenError, TokenSigner
from ucpush.store.repository import (
    ClientRefreshToken,
    Conflict,
    Device,
    EndUser,
    EnterpriseParams,
    NotFound,
    Platform,
    PushState,
    ServiceProfile,
    SigninRepository,
    UcService,
)

SERVICES_BY_PLATFORM = {
    Platform.IOS: ("APNS", "APNS:beta", "APNS:dev", "APNS:test", "APNS:load"),
    Platform.ANDROID: ("FCM", "FCM:dev"),
}


# SPEC §6: local push is offered only with OAuth refresh login on.
_NEEDS_REFRESH_LOGIN = "403 local push needs OAuth with refresh login flow enabled"


class SigninError(Exception):
    def __init__(self, status: int, error: str, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.error = error
        self.detail = detail


def _invalid_grant(detail: str) -> SigninError:
    return SigninError(400, "invalid_grant", detail)


def _unauthorized(detail: str) -> SigninError:
    return SigninError(401, "invalid_token", detail)


class SessionCloser(Protocol):
    """What the local push service offers: end live sessions of a user or a device."""

    def close_sessions(
        self, *, user: str | None = None, device: str | None = None, reason: str
    ) -> int: ...


@dataclass(frozen=True, slots=True)
class TokenGrant:
    access_token: str
    expires_in: int  # seconds
    refresh_token: str | None = None
    refresh_expires_in: int | None = None


@dataclass(frozen=True, slots=True)
class DeviceRegistration:
    platform: Platform
    service: str
    push_token: str
    push_key: bytes
    push_key_id: str
    single_channel: bool = False
    china_region: bool = False
    callkit: bool = True
    sip_instance_id: str = ""
    pn_prid: str = ""


@functools.cache
def _dummy_hash() -> str:
    """Verified against unknown usernames so that a miss costs as much as a wrong password."""
    return hash_password(secrets.token_urlsafe(16))


def _hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class SigninService:
    """``sessions`` is the local push service once it runs (set it after both exist)."""

    def __init__(
        self,
        repo: SigninRepository,
        signer: TokenSigner,
        *,
        push_key_grace: timedelta = timedelta(days=1),
        clock: Callable[[], float] = time.time,
        sessions: SessionCloser | None = None,
    ) -> None:
        self.repo = repo
        self.signer = signer
        self.push_key_grace = push_key_grace
        self.sessions = sessions
        self._clock = clock

    @classmethod
    def from_settings(cls, settings: Settings, repo: SigninRepository) -> SigninService:
        """The service with the group's signing secret (created in data_dir on first use)."""
        path = Path(settings.signin.secret_file or settings.data_dir / "signin-secret")
        signer = TokenSigner(load_or_create_secret(path), settings.signin.issuer)
        return cls(repo, signer, push_key_grace=timedelta(seconds=settings.signin.push_key_grace))

    def _now(self) -> datetime:
        return datetime.fromtimestamp(self._clock(), UTC)

    def _close(self, *, user: str | None = None, device: str | None = None, reason: str) -> None:
        if self.sessions is not None:
            self.sessions.close_sessions(user=user, device=device, reason=reason)

    # OAuth grants

    async def password_grant(self, username: str, password: str, device_id: str) -> TokenGrant:
        try:
            user = await self.repo.get_user_by_name(username)
            stored = user.password_hash
        except NotFound:
            user, stored = None, _dummy_hash()
        # scrypt takes tens of milliseconds of CPU: keep it off the event loop.
        ok = await asyncio.to_thread(verify_password, password, stored)
        if user is None or not ok:
            raise _invalid_grant("unknown username or wrong password")
        return await self._grant(user.id, device_id)

    async def refresh_grant(self, refresh_token: str) -> TokenGrant:
        params = await self.repo.get_enterprise()
        if not params.oauth_refresh_login:
            raise _invalid_grant("OAuth with refresh login flow is disabled: sign in again")
        token_hash = _hash_token(refresh_token)
        try:
            stored = await self.repo.get_refresh_token(token_hash)
        except NotFound:
            raise _invalid_grant("unknown refresh token") from None
        now = self._now()
        if stored.revoked_at is not None:
            raise _invalid_grant("refresh token revoked: sign in again")
        if now >= stored.expires_at:
            raise _invalid_grant("refresh token expired: sign in again")
        # Refresh tokens are single use (RFC 9700 §2.2.2 rotation): a replay finds it revoked.
        if not await self.repo.revoke_refresh_token(token_hash, now):
            raise _invalid_grant("refresh token revoked: sign in again")
        return await self._grant(stored.user_id, stored.device_id)

    async def _grant(self, user_id: str, device_id: str) -> TokenGrant:
        params = await self.repo.get_enterprise()
        now = self._clock()
        lifetime = params.access_token_minutes * 60
        access = self.signer.issue(user_id, device_id, now, lifetime)
        if not params.oauth_refresh_login:
            return TokenGrant(access, lifetime)
        refresh = secrets.token_urlsafe(32)
        refresh_lifetime = timedelta(days=params.refresh_token_days)
        issued = datetime.fromtimestamp(now, UTC)
        await self.repo.add_refresh_token(
            ClientRefreshToken(
                token_hash=_hash_token(refresh),
                user_id=user_id,
                device_id=device_id,
                created_at=issued,
                expires_at=issued + refresh_lifetime,
            )
        )
        return TokenGrant(access, lifetime, refresh, int(refresh_lifetime.total_seconds()))

    async def authenticate(self, access_token: str) -> tuple[EndUser, AccessClaims]:
        """The user a bearer token belongs to; 401 if it is bad, expired, its user is gone or
        its device signed out after it was issued."""
        try:
            claims = self.signer.verify(access_token, self._clock())
        except TokenError as exc:
            raise _unauthorized(str(exc)) from None
        try:
            user = await self.repo.get_user(claims.user_id)
        except NotFound:
            raise _unauthorized("user no longer exists") from None
        if claims.device_id:
            try:
                device = await self.repo.get_device(claims.device_id)
            except NotFound:
                return user, claims
            if device.signed_out_at and claims.issued_at < device.signed_out_at.timestamp():
                raise _unauthorized("device signed out: sign in again")
        return user, claims

    # devices

    async def register_device(
        self, user: EndUser, device_id: str, reg: DeviceRegistration
    ) -> Device:
        """Create or update ``device_id``; a new key id rotates the key (the old one stays
        valid for ``push_key_grace``). Registering again after sign-out resumes pushes."""
        if reg.service not in SERVICES_BY_PLATFORM[reg.platform]:
            allowed = ", ".join(SERVICES_BY_PLATFORM[reg.platform])
            raise SigninError(
                400, "invalid_request", f"service for {reg.platform} must be one of {allowed}"
            )
        now = self._now()
        try:
            old = await self.repo.get_device(device_id)
        except NotFound:
            old = None
        if old is not None and old.user_id != user.id:
            raise SigninError(409, "conflict", "device id belongs to another user")
        fields = dict(
            platform=reg.platform,
            service=reg.service,
            push_token=reg.push_token,
            push_key=reg.push_key,
            push_key_id=reg.push_key_id,
            single_channel=reg.single_channel,
            china_region=reg.china_region,
            callkit=reg.callkit,
            sip_instance_id=reg.sip_instance_id,
            pn_prid=reg.pn_prid,
            push_state=PushState.ACTIVE,
            updated_at=now,
        )
        dead_token = (
            old is not None
            and old.push_state is PushState.PAUSED_INVALID_TOKEN
            and old.push_token == reg.push_token
        )
        if dead_token:
            # The provider said this token is gone (410): pushes resume with a new one only.
            fields["push_state"] = PushState.PAUSED_INVALID_TOKEN
        if old is None:
            device = Device(id=device_id, user_id=user.id, created_at=now, **fields)
        elif old.push_key_id == reg.push_key_id:
            if old.push_key != reg.push_key:
                raise SigninError(
                    409, "conflict", "push key id already names a different key: use a new key id"
                )
            device = replace(old, **fields)
        else:
            device = replace(
                old,
                previous_push_key=old.push_key,
                previous_push_key_id=old.push_key_id,
                previous_key_until=now + self.push_key_grace,
                **fields,
            )
        if old is not None and old.platform is Platform.IOS and reg.platform is not Platform.IOS:
            # Local push is iOS only: a device re-registered as Android keeps no session.
            self._close(user=user.id, device=device_id, reason="device re-registered")
        await self.repo.put_device(device)
        if not dead_token:
            clear_alarm("PushNotificationInvalidDeviceTokenResponse", device_id=device_id)
        return device

    async def list_devices(self, user: EndUser) -> list[Device]:
        return await self.repo.list_devices(user.id)

    async def _own_device(self, user: EndUser, device_id: str) -> Device:
        try:
            device = await self.repo.get_device(device_id)
        except NotFound:
            device = None
        if device is None or device.user_id != user.id:
            raise SigninError(404, "not_found", "no such device")
        return device

    async def delete_device(self, user: EndUser, device_id: str) -> None:
        await self._own_device(user, device_id)
        await self.repo.revoke_device_refresh_tokens(user.id, device_id, self._now())
        await self.repo.delete_device(device_id)
        self._close(user=user.id, device=device_id, reason="device deleted")

    async def sign_out(self, user: EndUser, device_id: str) -> None:
        """Revoke the device's refresh tokens and stop pushes to it until it registers again."""
        now = self._now()
        await self.repo.revoke_device_refresh_tokens(user.id, device_id, now)
        try:
            await self._own_device(user, device_id)
        except SigninError:
            pass  # signed in but never registered a device: only tokens to revoke
        else:
            await self.repo.set_push_state(device_id, PushState.SIGNED_OUT, now)
        self._close(user=user.id, device=device_id, reason="signed out")

    # client configuration

    async def client_config(self, user: EndUser) -> dict[tuple[str, str], str]:
        if user.profile_id is None:
            return {}
        services = await self.repo.profile_ucservices(user.profile_id)
        return clientconfig.merge(s.params for s in services)

    async def config_xml(self, user: EndUser) -> str:
        return clientconfig.render_xml(await self.client_config(user))

    # local push authentication

    async def authorize_local_push(
        self, access_token: str, ssid: str, device_id: str
    ) -> LocalPushGrant:
        """Check a local push hello; raise ``LocalPushRefused`` with the close code."""
        try:
            user, claims = await self.authenticate(access_token)
        except SigninError as exc:
            raise LocalPushRefused(4401, f"401 {exc.detail}", invalid_token=True) from None
        if claims.device_id and claims.device_id != device_id:
            raise LocalPushRefused(4403, "403 token was issued to another device")
        if not (await self.repo.get_enterprise()).oauth_refresh_login:
            raise LocalPushRefused(4403, _NEEDS_REFRESH_LOGIN)
        try:
            device = await self._own_device(user, device_id)
        except SigninError:
            raise LocalPushRefused(4403, "403 unknown device: register it first") from None
        if device.platform is not Platform.IOS:
            raise LocalPushRefused(4403, "403 local push is for iOS devices only")
        if device.push_state is PushState.SIGNED_OUT:
            raise LocalPushRefused(4403, "403 device signed out: register it again")
        ssids = clientconfig.provisioned_ssids(await self.client_config(user))
        if ssid not in ssids:
            raise LocalPushRefused(4403, "403 SSID not provisioned for local push")
        return LocalPushGrant(user.id, device_id, frozenset(ssids), float(claims.expires_at))

    async def recheck_local_push(
        self, sessions: list[tuple[LocalPushGrant, str]]
    ) -> dict[str, tuple[int, str]]:
        """For (grant, current SSID) pairs: device id → (close code, reason) of the sessions
        that must end now (user or device deleted, signed out, SSID no longer provisioned)."""
        if not sessions:
            return {}
        if not (await self.repo.get_enterprise()).oauth_refresh_login:
            return {
                grant.device_id: (CLOSE_FORBIDDEN, _NEEDS_REFRESH_LOGIN) for grant, _ in sessions
            }
        # Whole-table reads: one query each per round, however many sessions there are.
        # Devices first: a user deleted between the two reads is then reported as such.
        devices = {d.id: d for d in await self.repo.list_devices()}
        users = {u.id: u for u in await self.repo.list_users()}
        ssids_by_profile: dict[str | None, list[str]] = {None: []}
        verdicts: dict[str, tuple[int, str]] = {}
        for grant, ssid in sessions:
            user = users.get(grant.user_id)
            device = devices.get(grant.device_id)
            if user is None:
                verdicts[grant.device_id] = (CLOSE_ENDED, "410 user deleted")
                continue
            if device is None or device.user_id != user.id or device.platform is not Platform.IOS:
                verdicts[grant.device_id] = (CLOSE_ENDED, "410 device deleted")
                continue
            if device.push_state is PushState.SIGNED_OUT:
                verdicts[grant.device_id] = (CLOSE_ENDED, "410 signed out")
                continue
            if user.profile_id not in ssids_by_profile:
                ssids_by_profile[user.profile_id] = clientconfig.provisioned_ssids(
                    await self.client_config(user)
                )
            if ssid not in ssids_by_profile[user.profile_id]:
                verdicts[grant.device_id] = (
                    CLOSE_FORBIDDEN,
                    "403 SSID not provisioned for local push",
                )
        return verdicts

    # administration

    async def set_enterprise(
        self,
        *,
        oauth_refresh_login: bool | None = None,
        access_token_minutes: int | None = None,
        refresh_token_days: int | None = None,
    ) -> tuple[EnterpriseParams, int]:
        """Change the given parameters; return the new ones and how many refresh tokens
        turning refresh login off revoked. ``SigninError`` 400 on out-of-range values."""
        current = await self.repo.get_enterprise()
        try:
            params = EnterpriseParams(
                oauth_refresh_login=current.oauth_refresh_login
                if oauth_refresh_login is None
                else oauth_refresh_login,
                access_token_minutes=current.access_token_minutes
                if access_token_minutes is None
                else access_token_minutes,
                refresh_token_days=current.refresh_token_days
                if refresh_token_days is None
                else refresh_token_days,
            )
        except ValueError as exc:
            raise SigninError(400, "invalid_value", str(exc)) from None
        return params, await self.repo.set_enterprise(params, self._now())

    async def add_user(
        self, username: str, password: str, *, display_name: str = "", profile: str | None = None
    ) -> EndUser:
        if not username or len(username) > 255 or not password:
            raise SigninError(400, "invalid_value", "username (1-255 chars) and password needed")
        profile_id = (await self._profile(profile)).id if profile else None
        user = EndUser(
            id=uuid.uuid4().hex,
            username=username,
            password_hash=await asyncio.to_thread(hash_password, password),
            created_at=self._now(),
            display_name=display_name,
            profile_id=profile_id,
        )
        try:
            await self.repo.add_user(user)
        except Conflict:
            raise SigninError(409, "conflict", f"user {username!r} exists") from None
        return user

    async def _user(self, username: str) -> EndUser:
        try:
            return await self.repo.get_user_by_name(username)
        except NotFound:
            raise SigninError(404, "not_found", f"no user {username!r}") from None

    async def _profile(self, name: str) -> ServiceProfile:
        try:
            return await self.repo.get_profile_by_name(name)
        except NotFound:
            raise SigninError(404, "not_found", f"no service profile {name!r}") from None

    async def delete_user(self, username: str) -> None:
        user = await self._user(username)
        await self.repo.delete_user(user.id)
        self._close(user=user.id, reason="user deleted")

    async def set_user_profile(self, username: str, profile: str | None) -> None:
        user = await self._user(username)
        profile_id = (await self._profile(profile)).id if profile else None
        await self.repo.set_user_profile(user.id, profile_id)
        # The SSIDs a live session was admitted on may no longer be provisioned.
        self._close(user=user.id, reason="configuration changed")

    async def add_ucservice(self, name: str, params: Mapping[str, str]) -> UcService:
        try:
            checked = clientconfig.validate_params(params)
        except clientconfig.ConfigError as exc:
            raise SigninError(400, "invalid_value", str(exc)) from None
        service = UcService(id=uuid.uuid4().hex, name=name, params=checked)
        try:
            await self.repo.add_ucservice(service)
        except Conflict:
            raise SigninError(409, "conflict", f"UC service {name!r} exists") from None
        return service

    async def set_ucservice_params(self, name: str, params: Mapping[str, str]) -> None:
        """Replace a UC service's parameters; live sessions see the change at their next
        recheck."""
        try:
            checked = clientconfig.validate_params(params)
            service = await self.repo.get_ucservice_by_name(name)
        except clientconfig.ConfigError as exc:
            raise SigninError(400, "invalid_value", str(exc)) from None
        except NotFound:
            raise SigninError(404, "not_found", f"no UC service {name!r}") from None
        await self.repo.set_ucservice_params(service.id, checked)

    async def add_profile(self, name: str, ucservices: list[str]) -> ServiceProfile:
        ids = []
        for service_name in ucservices:
            try:
                ids.append((await self.repo.get_ucservice_by_name(service_name)).id)
            except NotFound:
                raise SigninError(404, "not_found", f"no UC service {service_name!r}") from None
        profile = ServiceProfile(id=uuid.uuid4().hex, name=name, ucservice_ids=tuple(ids))
        try:
            await self.repo.add_profile(profile)
        except Conflict:
            raise SigninError(409, "conflict", f"service profile {name!r} exists") from None
        return profile
