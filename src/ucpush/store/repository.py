"""Storage interface. Components depend on these records and protocols only;
``ucpush.store.sql`` implements them on SQLAlchemy (SQLite by default, PostgreSQL for clusters).
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Protocol


class StoreError(Exception):
    """Base class for storage errors callers are expected to handle."""


class NotFound(StoreError):
    pass


class Conflict(StoreError):
    """Unique constraint violated (duplicate name, key, ...)."""


class VoucherUnusable(StoreError):
    """Voucher unknown, already used or expired. ``reason`` says which."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class TenantStatus(StrEnum):
    PENDING = "pending"
    COMPLETED = "completed"
    DISABLED = "disabled"


@dataclass(frozen=True, slots=True)
class Tenant:
    id: str
    name: str
    status: TenantStatus
    created_at: datetime


@dataclass(frozen=True, slots=True)
class Voucher:
    code_hash: str  # sha256 hex of the voucher code; the code itself is never stored
    tenant_id: str
    created_at: datetime
    expires_at: datetime
    used_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class MachineAccount:
    id: str
    tenant_id: str
    cluster_id: str
    cluster_name: str
    created_at: datetime
    disabled_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class RefreshToken:
    token_hash: str  # sha256 hex; the token itself is never stored
    account_id: str
    created_at: datetime
    revoked_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class SigningKey:
    kid: str
    private_pem: bytes  # ES256 (P-256) private key, PKCS#8 PEM
    created_at: datetime
    retired_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class ProviderApp:
    """One mobile app of a tenant for one subscriber service (``APNS``, ``APNS:dev``, ``FCM``...).

    APNs: ``topic`` is the bundle id, ``team_id``/``key_id`` name the .p8 signing key in
    ``credentials_file``. FCM: ``topic`` is the Firebase project id and ``credentials_file`` the
    service-account JSON. ``environment`` is ``production`` or ``sandbox`` (APNs only).
    """

    tenant_id: str
    service: str
    topic: str
    credentials_file: str
    environment: str = "production"
    team_id: str = ""
    key_id: str = ""


class RelayRepository(Protocol):
    # tenants
    async def create_tenant(self, tenant: Tenant) -> None: ...  # Conflict on duplicate name
    async def get_tenant(self, tenant_id: str) -> Tenant: ...  # NotFound
    async def get_tenant_by_name(self, name: str) -> Tenant: ...  # NotFound
    async def list_tenants(self) -> list[Tenant]: ...
    async def set_tenant_status(self, tenant_id: str, status: TenantStatus) -> None: ...

    # vouchers
    async def add_voucher(self, voucher: Voucher) -> None: ...
    async def use_voucher(self, code_hash: str, now: datetime) -> Voucher:
        """Atomically mark an unused, unexpired voucher used and return it (with used_at set).
        Raises VoucherUnusable("unknown" | "used" | "expired"). Two concurrent callers with
        the same code: exactly one succeeds."""
        ...

    # machine accounts
    async def add_machine_account(self, account: MachineAccount) -> None: ...
    async def get_machine_account(self, account_id: str) -> MachineAccount: ...  # NotFound
    async def list_machine_accounts(self, tenant_id: str | None = None) -> list[MachineAccount]: ...
    async def disable_machine_account(self, account_id: str, now: datetime) -> None: ...

    # refresh tokens
    async def add_refresh_token(self, token: RefreshToken) -> None: ...
    async def get_refresh_token(self, token_hash: str) -> RefreshToken: ...  # NotFound
    async def revoke_refresh_tokens(self, account_id: str, now: datetime) -> int:
        """Revoke every unrevoked refresh token of the account; return how many."""
        ...

    # relay signing keys
    async def add_signing_key(self, key: SigningKey) -> None: ...
    async def list_signing_keys(self) -> list[SigningKey]: ...  # oldest first
    async def retire_signing_key(self, kid: str, now: datetime) -> None: ...

    # provider apps
    async def put_app(self, app: ProviderApp) -> None:
        """Insert or replace the app for (tenant_id, service)."""
        ...

    async def get_app(self, tenant_id: str, service: str) -> ProviderApp: ...  # NotFound
    async def list_apps(self, tenant_id: str | None = None) -> list[ProviderApp]: ...
    async def delete_app(self, tenant_id: str, service: str) -> None: ...  # NotFound


# SIP registrar (call node)


@dataclass(frozen=True, slots=True)
class SipUser:
    """A SIP account. Only the digest HA1 hashes are kept (RFC 3261 §22.4, RFC 7616 §3.4.2):
    ``ha1_md5`` = MD5("username:realm:password"), ``ha1_sha256`` likewise with SHA-256, in hex."""

    aor: str  # e.g. "sip:alice@example.org"
    username: str
    realm: str
    ha1_md5: str
    ha1_sha256: str
    created_at: datetime
    display_name: str = ""


@dataclass(frozen=True, slots=True)
class Binding:
    """One registered contact of an address-of-record (RFC 3261 §10.3, RFC 5626, RFC 8599).

    ``id`` is an opaque key chosen by the registrar. ``contact`` is the Contact URI exactly as
    the UA sent it (pn-* parameters included). ``source_*`` is where the REGISTER came from
    (the flow to send requests back on when the UA is behind a NAT). ``pn_provider``,
    ``pn_prid`` and ``pn_param`` are set only when this node pushes for the binding; other
    ``pn-*`` URI parameters are kept verbatim in ``pn_extra``. ``purr`` is the RFC 8599 §6 Proxy
    Unique Registration Reference handed to the UA (empty if none), ``purr_previous`` the one
    it replaced. ``pnsreg``: the UA tagged
    ``+sip.pnsreg`` (it can refresh without a push).
    """

    id: str
    aor: str
    contact: str
    expires_at: datetime
    call_id: str
    cseq: int
    updated_at: datetime
    instance_id: str = ""  # +sip.instance, unquoted, e.g. "<urn:uuid:...>"
    reg_id: int | None = None
    q: float | None = None
    path: tuple[str, ...] = ()
    source_transport: str = ""
    source_host: str = ""
    source_port: int = 0
    pn_provider: str = ""
    pn_prid: str = ""
    pn_param: str = ""
    pn_extra: dict[str, str] = field(default_factory=dict)
    purr: str = ""
    purr_previous: str = ""  # the PURR ``purr`` replaced; dialogs may still carry it
    purr_issued_at: datetime | None = None
    pnsreg: bool = False
    user_agent: str = ""

    @property
    def push_enabled(self) -> bool:
        return bool(self.pn_provider and self.pn_prid)


class SipRepository(Protocol):
    # users
    async def add_user(self, user: SipUser) -> None: ...  # Conflict on duplicate user or AOR
    async def get_user(self, username: str, realm: str) -> SipUser: ...  # NotFound
    async def list_users(self) -> list[SipUser]: ...
    async def delete_user(self, username: str, realm: str) -> None:
        """NotFound if missing; the user's bindings go too."""
        ...

    # bindings
    async def list_bindings(self, aor: str | None = None) -> list[Binding]: ...
    async def get_binding(self, binding_id: str) -> Binding: ...  # NotFound
    async def find_binding_by_purr(self, purr: str) -> Binding:
        """The binding whose current or previous PURR is ``purr`` (for a mid-dialog request,
        RFC 8599 §6); NotFound if none. The caller checks ``expires_at``."""
        ...

    async def add_binding(self, binding: Binding) -> None: ...  # Conflict on duplicate id
    async def update_binding(self, binding: Binding) -> None: ...  # NotFound
    async def remove_binding(self, binding_id: str) -> None: ...  # NotFound
    async def save_bindings(self, aor: str, upsert: list[Binding], remove: list[str]) -> None:
        """Apply one REGISTER's outcome atomically: insert or replace ``upsert`` and delete the
        bindings of ``aor`` whose ids are in ``remove`` (missing ones are ignored)."""
        ...

    async def remove_expired(self, now: datetime) -> list[Binding]:
        """Delete every binding with ``expires_at <= now`` and return them."""
        ...


# Client sign-in, devices and client configuration (call node)


class Platform(StrEnum):
    IOS = "ios"
    ANDROID = "android"


class PushState(StrEnum):
    ACTIVE = "active"
    PAUSED_INVALID_TOKEN = "paused-invalid-token"  # provider said the token is dead (410)
    SIGNED_OUT = "signed-out"  # no pushes until the device registers again


@dataclass(frozen=True, slots=True)
class EnterpriseParams:
    """Cluster-wide client OAuth parameters (SPEC §5); out-of-range values raise ValueError."""

    oauth_refresh_login: bool = False
    access_token_minutes: int = 60
    refresh_token_days: int = 60

    def __post_init__(self) -> None:
        if not 1 <= self.access_token_minutes <= 1440:
            raise ValueError(
                f"access token lifetime must be 1-1440 minutes, got {self.access_token_minutes}"
            )
        if not 1 <= self.refresh_token_days <= 365:
            raise ValueError(
                f"refresh token lifetime must be 1-365 days, got {self.refresh_token_days}"
            )


@dataclass(frozen=True, slots=True)
class UcService:
    """A UC service; only the ``client-configuration`` type exists so far. ``params`` are the
    client configuration keys, e.g. ``{"LocalPushSSIDList": "Ward4;Ward5"}``."""

    id: str
    name: str
    params: dict[str, str] = field(default_factory=dict)
    type: str = "client-configuration"


@dataclass(frozen=True, slots=True)
class ServiceProfile:
    id: str
    name: str
    ucservice_ids: tuple[str, ...] = ()  # in the order their parameters are merged


@dataclass(frozen=True, slots=True)
class EndUser:
    """A person signing in from the mobile app. ``password_hash`` is a self-describing scrypt
    string (see ``ucpush.signin.passwords``); the password itself is never stored."""

    id: str
    username: str
    password_hash: str
    created_at: datetime
    display_name: str = ""
    profile_id: str | None = None


@dataclass(frozen=True, slots=True)
class ClientRefreshToken:
    token_hash: str  # sha256 hex; the token itself is never stored
    user_id: str
    device_id: str  # the client's device id given at sign-in ("" if none)
    created_at: datetime
    expires_at: datetime
    revoked_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class Device:
    """A user's app installation and where to push it.

    ``push_key`` is the 256-bit AES key payloads are encrypted with (SPEC §5); after a rotation
    the previous key stays valid until ``previous_key_until`` so pushes already encrypted with it
    still open. ``sip_instance_id`` / ``pn_prid`` link the device to its SIP binding.
    """

    id: str
    user_id: str
    platform: Platform
    service: str  # subscriber service: APNS, APNS:dev, ..., FCM, FCM:dev
    push_token: str
    push_key: bytes
    push_key_id: str
    created_at: datetime
    updated_at: datetime
    previous_push_key: bytes = b""
    previous_push_key_id: str = ""
    previous_key_until: datetime | None = None
    single_channel: bool = False
    china_region: bool = False
    callkit: bool = True
    sip_instance_id: str = ""
    pn_prid: str = ""
    push_state: PushState = PushState.ACTIVE
    signed_out_at: datetime | None = None

    def valid_keys(self, now: datetime) -> dict[str, bytes]:
        """Key id → key of every key a payload may be encrypted with at ``now``."""
        keys = {self.push_key_id: self.push_key}
        if self.previous_push_key and self.previous_key_until and now < self.previous_key_until:
            keys[self.previous_push_key_id] = self.previous_push_key
        return keys


class SigninRepository(Protocol):
    # enterprise parameters
    async def get_enterprise(self) -> EnterpriseParams: ...  # defaults until first set
    async def set_enterprise(self, params: EnterpriseParams, now: datetime) -> int:
        """Store ``params``; when refresh login is off, revoke every refresh token in the same
        transaction. Return how many were revoked."""
        ...

    # UC services and service profiles
    async def add_ucservice(self, service: UcService) -> None: ...  # Conflict on duplicate name
    async def get_ucservice_by_name(self, name: str) -> UcService: ...  # NotFound
    async def list_ucservices(self) -> list[UcService]: ...
    async def set_ucservice_params(self, service_id: str, params: dict[str, str]) -> None: ...
    async def add_profile(self, profile: ServiceProfile) -> None:
        """Conflict on duplicate name, NotFound if a UC service is missing."""
        ...

    async def get_profile_by_name(self, name: str) -> ServiceProfile: ...  # NotFound
    async def list_profiles(self) -> list[ServiceProfile]: ...
    async def profile_ucservices(self, profile_id: str) -> list[UcService]:
        """The profile's UC services in profile order; NotFound if the profile is missing."""
        ...

    # end users
    async def add_user(self, user: EndUser) -> None: ...  # Conflict on duplicate username
    async def get_user(self, user_id: str) -> EndUser: ...  # NotFound
    async def get_user_by_name(self, username: str) -> EndUser: ...  # NotFound
    async def list_users(self) -> list[EndUser]: ...
    async def set_user_profile(self, user_id: str, profile_id: str | None) -> None: ...
    async def delete_user(self, user_id: str) -> None:
        """NotFound if missing; the user's devices and refresh tokens go too."""
        ...

    # refresh tokens
    async def add_refresh_token(self, token: ClientRefreshToken) -> None: ...
    async def get_refresh_token(self, token_hash: str) -> ClientRefreshToken: ...  # NotFound
    async def revoke_refresh_token(self, token_hash: str, now: datetime) -> bool:
        """Revoke one token; False if it was already revoked (a replayed refresh token)."""
        ...

    async def revoke_device_refresh_tokens(
        self, user_id: str, device_id: str, now: datetime
    ) -> int:
        """Revoke the user's unrevoked tokens issued to ``device_id``; return how many."""
        ...

    # devices
    async def put_device(self, device: Device) -> None: ...  # insert or replace by id
    async def get_device(self, device_id: str) -> Device: ...  # NotFound
    async def list_devices(self, user_id: str | None = None) -> list[Device]: ...
    async def find_devices(
        self, instance_ids: Collection[str], tokens: Collection[str]
    ) -> list[Device]:
        """By SIP instance id, or by a pn-prid or push token in ``tokens``."""
        ...

    async def set_push_state(self, device_id: str, state: PushState, now: datetime) -> None:
        """NotFound if missing; SIGNED_OUT also stamps ``signed_out_at``."""
        ...

    async def delete_device(self, device_id: str) -> None: ...  # NotFound
