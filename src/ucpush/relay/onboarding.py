"""Tenant onboarding: vouchers in, machine accounts out.

An operator of the relay issues a voucher for a tenant (``ucpush relay voucher create``); the
tenant's cluster redeems it once, before it expires, and receives a machine account with a
refresh token. The tenant's status goes Pending -> Completed. Disabling push (offboarding)
disables the account and revokes its tokens; a new voucher onboards the cluster again.
"""

from __future__ import annotations

import base64
import secrets
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from ucpush.relay.identity import Identity, digest
from ucpush.store.repository import (
    MachineAccount,
    NotFound,
    RelayRepository,
    Tenant,
    TenantStatus,
    Voucher,
)


@dataclass(frozen=True, slots=True)
class IssuedVoucher:
    code: str
    tenant: Tenant
    expires_at: datetime


@dataclass(frozen=True, slots=True)
class Onboarded:
    account: MachineAccount
    refresh_token: str


def normalise_voucher(code: str) -> str:
    """Vouchers are typed by people: ignore case, dashes and spaces."""
    return "".join(ch for ch in code.upper() if ch.isalnum())


def _new_voucher_code() -> str:
    raw = base64.b32encode(secrets.token_bytes(15)).decode()  # 24 chars, 120 bits
    return "-".join(raw[i : i + 4] for i in range(0, len(raw), 4))


async def ensure_tenant(repo: RelayRepository, name: str) -> Tenant:
    """The tenant called ``name``, created (pending) if it does not exist yet."""
    try:
        return await repo.get_tenant_by_name(name)
    except NotFound:
        tenant = Tenant(
            id=uuid.uuid4().hex,
            name=name,
            status=TenantStatus.PENDING,
            created_at=datetime.now(UTC),
        )
        await repo.create_tenant(tenant)
        return tenant


class Onboarding:
    def __init__(self, repo: RelayRepository, identity: Identity) -> None:
        self._repo = repo
        self._identity = identity

    async def tenant(self, name: str, create: bool = False) -> Tenant:
        if create:
            return await ensure_tenant(self._repo, name)
        return await self._repo.get_tenant_by_name(name)

    async def create_voucher(self, tenant_name: str, ttl: timedelta) -> IssuedVoucher:
        tenant = await self.tenant(tenant_name, create=True)
        if tenant.status is TenantStatus.DISABLED:
            await self._repo.set_tenant_status(tenant.id, TenantStatus.PENDING)
            tenant = await self._repo.get_tenant(tenant.id)
        code = _new_voucher_code()
        now = datetime.now(UTC)
        voucher = Voucher(
            code_hash=digest(normalise_voucher(code)),
            tenant_id=tenant.id,
            created_at=now,
            expires_at=now + ttl,
        )
        await self._repo.add_voucher(voucher)
        return IssuedVoucher(code, tenant, voucher.expires_at)

    async def redeem(self, code: str, cluster_id: str, cluster_name: str) -> Onboarded:
        """Raises ``VoucherUnusable`` for unknown, used or expired vouchers."""
        voucher = await self._repo.use_voucher(digest(normalise_voucher(code)), datetime.now(UTC))
        account = MachineAccount(
            id=uuid.uuid4().hex,
            tenant_id=voucher.tenant_id,
            cluster_id=cluster_id,
            cluster_name=cluster_name,
            created_at=datetime.now(UTC),
        )
        await self._repo.add_machine_account(account)
        refresh = await self._identity.issue_refresh_token(account.id)
        await self._repo.set_tenant_status(voucher.tenant_id, TenantStatus.COMPLETED)
        return Onboarded(account, refresh)

    async def offboard(self, account_id: str) -> None:
        """Disable push for a cluster: the account and its refresh tokens stop working."""
        account = await self._repo.get_machine_account(account_id)
        now = datetime.now(UTC)
        await self._repo.disable_machine_account(account_id, now)
        await self._repo.revoke_refresh_tokens(account_id, now)
        self._identity.forget_account(account_id)
        others = [
            a
            for a in await self._repo.list_machine_accounts(account.tenant_id)
            if a.disabled_at is None
        ]
        if not others:
            await self._repo.set_tenant_status(account.tenant_id, TenantStatus.PENDING)

    async def replace_refresh_token(self, account_id: str) -> str:
        """Manual recovery (SPEC §5): revoke every refresh token of the account, issue one new."""
        account = await self._repo.get_machine_account(account_id)
        if account.disabled_at is not None:
            raise ValueError(f"machine account {account_id} is disabled; onboard again")
        await self._repo.revoke_refresh_tokens(account_id, datetime.now(UTC))
        return await self._identity.issue_refresh_token(account_id)
