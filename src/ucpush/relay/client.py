"""Client of the relay, used by the call node and chat push.

It holds the cluster's machine account (its refresh token), keeps a fresh access token,
encrypts payloads with the device's key into a compact JWE, sends them, and returns typed
outcomes. Its HTTP connections stay open between pushes.

The way to the relay (``ucpush.relay.proxy``): directly or through an HTTP(S) CONNECT proxy with
basic or digest authentication, failing over between the addresses the relay's (or proxy's)
name resolves to: 2 s to connect, 5 s for an answer. Pushes, token refreshes and status reads
are resent to the next address when unanswered, so a push can reach the device twice with the
same tracking id; onboarding and offboarding are not resent.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx

from ucpush.crypto import jwe
from ucpush.relay.providers.base import Outcome, Priority, PushType
from ucpush.relay.proxy import (
    RESEND_UNCONFIRMED,
    FailoverTransport,
    ProxySettings,
    Resolver,
    resolve_addresses,
)

# Refresh the access token this long before it expires, so no push waits on it.
_REFRESH_MARGIN = 60.0
# Requests the relay may see twice without harm (see the module doc).
_RESENDABLE = {RESEND_UNCONFIRMED: True}


class RelayError(Exception):
    """The relay refused the request itself (not a provider outcome)."""

    def __init__(self, status: int, error: str, detail: str) -> None:
        super().__init__(f"relay answered {status} {error}: {detail}")
        self.status = status
        self.error = error
        self.detail = detail


class RelayAuthError(RelayError):
    """The refresh token was refused: replace it (``ucpush relay account new-refresh-token``)."""


@dataclass(frozen=True, slots=True)
class PushResult:
    outcome: Outcome
    tracking_id: str
    http_status: int
    provider_status: int | None = None
    reason: str | None = None
    provider_id: str | None = None
    unregistered_at: int | None = None
    retry_after: float | None = None
    attempts: int = 1


@dataclass(frozen=True, slots=True)
class Enrollment:
    account_id: str
    tenant: str
    status: str
    refresh_token: str
    token_endpoint: str
    push_endpoint: str


def _raise_for(response: httpx.Response) -> None:
    try:
        body = response.json()
    except ValueError:
        body = {}
    error = str(body.get("error", "http_error"))
    detail = str(body.get("detail") or body.get("error_description") or response.reason_phrase)
    raise RelayError(response.status_code, error, detail)


def _http_client(
    base_url: str,
    *,
    verify: ssl.SSLContext | str | bool,
    timeout: float,
    proxy: ProxySettings | None,
    resolve: Resolver,
    connect_timeout: float,
    confirm_timeout: float,
    limits: httpx.Limits | None = None,
) -> httpx.AsyncClient:
    # With its own transport httpx ignores HTTPS_PROXY & co: the proxy comes from settings only.
    return httpx.AsyncClient(
        base_url=base_url.rstrip("/"),
        timeout=timeout,
        transport=FailoverTransport(
            verify=verify,
            proxy=proxy,
            resolve=resolve,
            connect_timeout=connect_timeout,
            confirm_timeout=confirm_timeout,
            limits=limits,
        ),
    )


class RelayClient:
    def __init__(
        self,
        base_url: str,
        refresh_token: str,
        *,
        verify: ssl.SSLContext | str | bool = True,
        timeout: float = 10.0,
        max_connections: int = 100,
        clock: Callable[[], float] = time.time,
        proxy: ProxySettings | None = None,
        resolve: Resolver = resolve_addresses,
        connect_timeout: float = 2.0,
        confirm_timeout: float = 5.0,
    ) -> None:
        """``timeout`` bounds writes and the wait for a pooled connection; ``connect_timeout``
        and ``confirm_timeout`` bound each address's connect and answer (SPEC §5)."""
        self.refresh_token = refresh_token
        self._clock = clock
        self._http = _http_client(
            base_url,
            verify=verify,
            timeout=timeout,
            proxy=proxy,
            resolve=resolve,
            connect_timeout=connect_timeout,
            confirm_timeout=confirm_timeout,
            limits=httpx.Limits(
                max_connections=max_connections,
                max_keepalive_connections=max_connections,
                keepalive_expiry=1800,
            ),
        )
        self._access: tuple[str, float] | None = None
        self._lock = asyncio.Lock()

    async def __aenter__(self) -> RelayClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    @staticmethod
    async def enroll(
        base_url: str,
        voucher: str,
        cluster_id: str,
        cluster_name: str = "",
        *,
        verify: ssl.SSLContext | str | bool = True,
        proxy: ProxySettings | None = None,
        resolve: Resolver = resolve_addresses,
        connect_timeout: float = 2.0,
        confirm_timeout: float = 5.0,
    ) -> Enrollment:
        """Redeem a voucher (onboarding); keep the returned refresh token safe.

        Not resent to another address when unanswered: the voucher is single-use."""
        async with _http_client(
            base_url,
            verify=verify,
            timeout=10.0,
            proxy=proxy,
            resolve=resolve,
            connect_timeout=connect_timeout,
            confirm_timeout=confirm_timeout,
        ) as http:
            response = await http.post(
                "/v1/onboard",
                json={"voucher": voucher, "cluster_id": cluster_id, "cluster_name": cluster_name},
            )
        if response.status_code != 201:
            _raise_for(response)
        return Enrollment(**response.json())

    async def access_token(self, force: bool = False) -> str:
        current = self._access
        if not force and current and current[1] - _REFRESH_MARGIN > self._clock():
            return current[0]
        async with self._lock:
            if self._access is not current and self._access is not None:
                return self._access[0]  # another task refreshed while we waited
            response = await self._http.post(
                "/oauth/token",
                data={"grant_type": "refresh_token", "refresh_token": self.refresh_token},
                extensions=_RESENDABLE,
            )
            if response.status_code != 200:
                body = response.json() if response.content else {}
                raise RelayAuthError(
                    response.status_code,
                    body.get("error", "http_error"),
                    body.get("error_description", response.reason_phrase),
                )
            body = response.json()
            self._access = (body["access_token"], self._clock() + float(body["expires_in"]))
            return self._access[0]

    async def _authorised(
        self, method: str, url: str, *, resendable: bool = False, **kwargs: Any
    ) -> httpx.Response:
        if resendable:
            kwargs["extensions"] = _RESENDABLE
        response = await self._http.request(
            method, url, headers={"authorization": f"Bearer {await self.access_token()}"}, **kwargs
        )
        if response.status_code == 401:
            # Revoked, expired early or signed by a retired key: one fresh token, one retry.
            token = await self.access_token(force=True)
            response = await self._http.request(
                method, url, headers={"authorization": f"Bearer {token}"}, **kwargs
            )
        return response

    async def push(
        self,
        *,
        target: str,
        service: str,
        push_type: PushType,
        payload: dict[str, Any] | bytes,
        key: bytes,
        key_id: str | None = None,
        priority: Priority = Priority.HIGH,
        tracking_id: str | None = None,
        expiration: int | None = None,
        collapse_id: str | None = None,
    ) -> PushResult:
        """Encrypt ``payload`` with the device key and send it."""
        plaintext = (
            payload
            if isinstance(payload, bytes)
            else json.dumps(payload, separators=(",", ":")).encode()
        )
        return await self.send_encrypted(
            target=target,
            service=service,
            push_type=push_type,
            jwe_payload=jwe.encrypt(plaintext, key, kid=key_id),
            priority=priority,
            tracking_id=tracking_id,
            expiration=expiration,
            collapse_id=collapse_id,
        )

    async def send_encrypted(
        self,
        *,
        target: str,
        service: str,
        push_type: PushType,
        jwe_payload: str,
        priority: Priority = Priority.HIGH,
        tracking_id: str | None = None,
        expiration: int | None = None,
        collapse_id: str | None = None,
    ) -> PushResult:
        body: dict[str, Any] = {
            "target": target,
            "service": service,
            "push_type": push_type.value,
            "priority": priority.value,
            "tracking_id": tracking_id or uuid.uuid4().hex,
            "payload": jwe_payload,
        }
        if expiration is not None:
            body["expiration"] = expiration
        if collapse_id is not None:
            body["collapse_id"] = collapse_id
        response = await self._authorised("POST", "/v1/push", json=body, resendable=True)
        data = response.json() if response.content else {}
        if "outcome" not in data:
            _raise_for(response)
        return PushResult(
            outcome=Outcome(data["outcome"]),
            tracking_id=data["tracking_id"],
            http_status=response.status_code,
            provider_status=data.get("provider_status"),
            reason=data.get("reason"),
            provider_id=data.get("provider_id"),
            unregistered_at=data.get("unregistered_at"),
            retry_after=data.get("retry_after"),
            attempts=data.get("attempts", 1),
        )

    async def status(self) -> dict[str, Any]:
        response = await self._authorised("GET", "/v1/onboard", resendable=True)
        if response.status_code != 200:
            _raise_for(response)
        return response.json()

    async def offboard(self) -> None:
        response = await self._authorised("DELETE", "/v1/onboard")
        if response.status_code != 204:
            _raise_for(response)

    async def upload_alarms(self, upload: dict[str, Any]) -> dict[str, Any]:
        """``POST /v1/alarms``: one batch of the node's alarm uploader
        (``ucpush.alarms.uploader``); ``RelayError`` when the relay refuses it."""
        response = await self._authorised("POST", "/v1/alarms", json=upload)
        if response.status_code != 200:
            _raise_for(response)
        result: dict[str, Any] = response.json()
        return result
