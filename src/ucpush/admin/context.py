"""What the admin API and pages work on, and the operations both of them offer."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ucpush.admin.auth import AdminAuth
from ucpush.cloud import CloudConnection

if TYPE_CHECKING:
    from ucpush.signin.service import SigninService
    from ucpush.store import Store

# Issues a voucher for this cluster's tenant; only where the relay runs beside the node and
# shares its database (``ucpush up``). Elsewhere the relay operator hands the voucher over.
VoucherIssuer = Callable[[], Awaitable[str]]


@dataclass(slots=True)
class AdminContext:
    auth: AdminAuth
    cloud: CloudConnection
    signin: SigninService
    store: Store
    voucher_issuer: VoucherIssuer | None = None
    max_body_bytes: int = 65536
    secure_cookies: bool = False

    async def active_alarms(self) -> list[dict[str, Any]]:
        """Active alarms of every node, newest first (the alarm store of ``ucpush.alarms``)."""
        records = await self.store.alarms.list_alarms(active_only=True, limit=100)
        return [
            {
                "name": r.name,
                "severity": r.severity,
                "node": r.node,
                "key": r.key,
                "count": r.count,
                "last_raised_at": r.last_raised_at.isoformat(),
            }
            for r in records
        ]
