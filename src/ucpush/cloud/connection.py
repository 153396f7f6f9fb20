"""The call node's side of relay onboarding (SPEC §5, §7).

``CloudConnection`` keeps the cluster's one connection to its relay: a cluster ID generated
once, the relay URL, the machine account's refresh token (sealed at rest), the onboarding
status (*Onboarding Pending* → *Onboarding Completed*, or an error naming its alarm), the push
switch, how the relay's certificate is trusted, the HTTP proxy and the troubleshooting options.
The state lives in one database row shared by every node of the cluster; each node re-reads it
every ``cloud.reload_seconds``, so a change made on one node or with the CLI reaches all.

Callers that push ask ``current_client()`` each time: it is a live ``RelayClient`` while
onboarding is completed and push is enabled, else ``None``; it is rebuilt when the settings
behind it change.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import secrets
import ssl
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import httpx
from cryptography import x509

from ucpush.alarms import Severity, clear_alarm, raise_alarm
from ucpush.cloud.sealing import Sealer
from ucpush.cloud.sql import CloudRecord, SqlCloudRepository
from ucpush.config import CloudSettings, Settings
from ucpush.logging import get_logger
from ucpush.relay.client import RelayAuthError, RelayClient, RelayError
from ucpush.relay.proxy import FailoverTransport, ProxyAuthError, ProxySettings

if TYPE_CHECKING:
    from ucpush.store import Store

log = get_logger("ucpush.cloud")

# SPEC §7 alarms this module raises, with their severities.
TOKEN_UNAVAILABLE = "PushNotificationServiceAccessTokenUnavailable"  # network / relay down
TOKEN_INVALID = "AccessTokenInvalid"  # the relay refuses the refresh token
CLIENT_POOL_FAILED = "HttpClientPoolCreationError"  # TLS trust or proxy settings unusable
_SEVERITY: dict[str, Severity] = {
    TOKEN_UNAVAILABLE: "ALERT",
    TOKEN_INVALID: "ALERT",
    CLIENT_POOL_FAILED: "ALERT",
}

# A replaced client may still be carrying pushes: it is closed this long after replacement.
_RETIRE_GRACE = 30.0
_MAX_TOKEN_CHARS = 4096


class OnboardingStatus(StrEnum):
    PENDING = "pending"
    COMPLETED = "completed"
    ERROR = "error"


_LABELS = {
    OnboardingStatus.PENDING: "Onboarding Pending",
    OnboardingStatus.COMPLETED: "Onboarding Completed",
    OnboardingStatus.ERROR: "Onboarding Error",
}


@dataclass(frozen=True, slots=True)
class CloudStatus:
    status: OnboardingStatus
    alarm: str = ""  # set with ERROR: the SPEC §7 alarm name
    detail: str = ""

    @property
    def label(self) -> str:
        """The status line of the onboarding page, e.g. ``Onboarding Error: AccessTokenInvalid``."""
        text = _LABELS[self.status]
        return f"{text}: {self.alarm}" if self.alarm else text


class ProxyAuth(StrEnum):
    BASIC = "basic"
    DIGEST = "digest"


@dataclass(frozen=True, slots=True)
class ProxyConfig:
    """HTTP(S) CONNECT proxy towards the relay (SPEC §5: digest recommended)."""

    host: str
    port: int
    username: str = ""
    password: str = ""
    auth: ProxyAuth = ProxyAuth.DIGEST

    def __post_init__(self) -> None:
        if not self.host or any(c.isspace() or c in "/@" for c in self.host):
            raise ValueError("proxy host must be a host name or address")
        if not 1 <= self.port <= 65535:
            raise ValueError("proxy port must be 1-65535")
        if self.password and not self.username:
            raise ValueError("a proxy password needs a user name")


def _proxy_settings(proxy: ProxyConfig | None) -> ProxySettings | None:
    """The stored proxy as ``RelayClient`` takes it. The node speaks plain HTTP to the proxy
    and TLS to the relay inside the CONNECT tunnel (the usual corporate set-up)."""
    if proxy is None:
        return None
    auth = proxy.auth.value if proxy.username else "none"
    return ProxySettings("http", proxy.host, proxy.port, proxy.username, proxy.password, auth)


@dataclass(frozen=True, slots=True)
class Reachability:
    """Outcome of the cloud reachability and certificate check."""

    url: str
    reachable: bool
    tls: bool
    certificate_trusted: bool | None = None  # None: plain HTTP, or no handshake happened
    subject: str = ""
    issuer: str = ""
    not_after: datetime | None = None
    detail: str = ""


class CloudError(Exception):
    """An operation the administrator asked for cannot be done; ``status`` is the HTTP status
    the admin API answers with, ``detail`` one sentence for the page and the CLI."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


def check_relay_url(url: str) -> str:
    """The URL without a trailing slash; ``CloudError`` 400 unless it is http(s)://host[:port]."""
    url = url.strip().rstrip("/")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        raise CloudError(400, "relay URL is not a valid URL") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise CloudError(400, "relay URL must look like https://relay.example.com[:port]")
    if parts.query or parts.fragment or parts.username:
        raise CloudError(400, "relay URL must not carry credentials, a query or a fragment")
    return url


def check_ca_bundle(pem: str) -> list[x509.Certificate]:
    """The certificates of a PEM bundle; ``CloudError`` 400 if it holds none or is damaged."""
    if "PRIVATE KEY" in pem:
        raise CloudError(400, "the CA bundle contains a private key: paste certificates only")
    try:
        certificates = x509.load_pem_x509_certificates(pem.encode())
    except ValueError:
        raise CloudError(400, "the CA bundle is not a PEM certificate list") from None
    return certificates


def _now() -> datetime:
    return datetime.now(UTC)


def _describe(exc: BaseException) -> str:
    """One line for the page: the error and its innermost cause (an SSL or socket error says
    the most)."""
    inner = exc
    while (nested := inner.__cause__ or inner.__context__) is not None:
        inner = nested
    outer = str(exc) or type(exc).__name__
    if inner is exc or str(inner) in outer:
        return outer
    return f"{outer} ({inner or type(inner).__name__})"


def _is_certificate_failure(exc: BaseException) -> bool:
    current: BaseException | None = exc
    while current is not None:
        if isinstance(current, ssl.SSLCertVerificationError):
            return True
        current = current.__cause__ or current.__context__
    return False


class CloudConnection:
    def __init__(
        self, settings: CloudSettings, repo: SqlCloudRepository, sealer: Sealer, record: CloudRecord
    ) -> None:
        self._settings = settings
        self._repo = repo
        self._sealer = sealer
        self._record = record
        self._client: RelayClient | None = None
        self._retiring: set[asyncio.Task[None]] = set()
        self._reloader: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()

    @classmethod
    async def open(cls, settings: Settings, store: Store) -> CloudConnection:
        """Load the state (creating it, with a new cluster ID, on first use) and start
        following changes made by other nodes."""
        key_file = Path(settings.cloud.secret_file or settings.data_dir / "cloud-secret")
        sealer = await asyncio.to_thread(Sealer.from_file, key_file)
        record = await store.cloud.get()
        if record is None:
            record = await store.cloud.create(
                CloudRecord(cluster_id=str(uuid.uuid4()), updated_at=_now())
            )
            log.info("cluster_id_created", cluster_id=record.cluster_id)
        connection = cls(settings.cloud, store.cloud, sealer, record)
        connection._reloader = asyncio.create_task(connection._follow_changes())
        return connection

    async def aclose(self) -> None:
        if self._reloader is not None:
            self._reloader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reloader
        for task in list(self._retiring):
            task.cancel()
        await asyncio.gather(*self._retiring, return_exceptions=True)
        await self._drop_client(at_once=True)

    async def __aenter__(self) -> CloudConnection:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # what the node and the admin page read

    @property
    def cluster_id(self) -> str:
        return self._record.cluster_id

    @property
    def status(self) -> CloudStatus:
        r = self._record
        return CloudStatus(OnboardingStatus(r.status), r.alarm, r.detail)

    @property
    def relay_url(self) -> str:
        return self._record.relay_url

    @property
    def account_id(self) -> str:
        return self._record.account_id

    @property
    def push_enabled(self) -> bool:
        return self._record.push_enabled

    @property
    def system_ca(self) -> bool:
        return self._record.system_ca

    @property
    def ca_bundle(self) -> str:
        return self._record.ca_bundle

    @property
    def proxy(self) -> ProxyConfig | None:
        r = self._record
        if not r.proxy_host:
            return None
        return ProxyConfig(
            r.proxy_host,
            r.proxy_port,
            r.proxy_username,
            self._sealer.open(r.proxy_password_sealed, "proxy_password"),
            ProxyAuth(r.proxy_auth),
        )

    @property
    def send_troubleshooting(self) -> bool:
        return self._record.send_troubleshooting

    @property
    def encrypt_pii(self) -> bool:
        return self._record.encrypt_pii

    @property
    def pii_support_token(self) -> str:
        """The token that decrypts the PII of uploaded alarms; "" while PII encryption is off.
        Shown only on the operator's own onboarding page (SPEC §7)."""
        if not self._record.encrypt_pii:
            return ""
        return self._sealer.open(self._record.pii_token_sealed, "pii_token")

    @property
    def push_high_availability(self) -> bool:
        return self._record.push_high_availability

    def current_client(self) -> RelayClient | None:
        """The relay client to push with, or ``None`` while push is off or not onboarded.

        Offered in the error states too: a relay that was unreachable a moment ago may answer
        this push, and the caller's own error handling applies if not."""
        r = self._record
        if not r.push_enabled or not r.account_id:
            return None
        if self._client is None:
            try:
                self._client = self._build_client()
            except (ssl.SSLError, ValueError) as exc:
                # Settings are checked when saved; this is a damaged row or key file.
                log.error("relay_client_failed", error=_describe(exc))
                return None
        return self._client

    # administrator actions

    async def enroll(self, voucher: str, relay_url: str) -> CloudStatus:
        """Redeem ``voucher`` at ``relay_url`` and enable push; Completed on success."""
        url = check_relay_url(relay_url)
        voucher = voucher.strip()
        if not voucher or len(voucher) > 128:
            raise CloudError(400, "enter the voucher (up to 128 characters)")
        async with self._lock:
            await self.reload()
            if self._record.account_id and self._record.status == OnboardingStatus.COMPLETED:
                raise CloudError(409, "already onboarded: disable push and offboard first")
            try:
                enrollment = await RelayClient.enroll(
                    url,
                    voucher,
                    self.cluster_id,
                    self._settings.cluster_name,
                    verify=self._verify(),
                    proxy=_proxy_settings(self.proxy),
                )
            except RelayError as exc:
                raise CloudError(400 if exc.status < 500 else 502, exc.detail) from None
            except ProxyAuthError as exc:
                raise CloudError(502, f"the proxy refused: {_describe(exc)}") from None
            except (ssl.SSLError, ValueError) as exc:
                raise CloudError(400, f"TLS settings unusable: {_describe(exc)}") from None
            except httpx.HTTPError as exc:
                raise CloudError(502, f"relay unreachable: {_describe(exc)}") from None
            await self._save(
                relay_url=url,
                account_id=enrollment.account_id,
                refresh_token_sealed=self._sealer.seal(enrollment.refresh_token, "refresh_token"),
                status=OnboardingStatus.COMPLETED,
                alarm="",
                detail="",
                push_enabled=True,
            )
            self._clear_alarms()
        log.info("onboarded", cluster_id=self.cluster_id, relay=url, account=enrollment.account_id)
        return self.status

    async def enable_push(self) -> None:
        async with self._lock:
            await self.reload()
            if not self._record.account_id:
                raise CloudError(409, "not onboarded: enter a voucher first")
            await self._save(push_enabled=True)

    async def disable_push(self) -> None:
        """Stop pushing through the relay; the machine account is kept."""
        async with self._lock:
            await self._save(push_enabled=False)

    async def offboard(self, *, force: bool = False) -> None:
        """Give the machine account back to the relay and forget it; Pending afterwards, ready
        for a new voucher. ``force`` forgets it even when the relay cannot be told."""
        async with self._lock:
            await self.reload()
            if self._record.account_id:
                try:
                    async with self._build_client() as client:
                        await client.offboard()
                except RelayAuthError:
                    pass  # the token no longer works: the account is unusable anyway
                except (RelayError, httpx.HTTPError, ssl.SSLError, ValueError) as exc:
                    if not force:
                        raise CloudError(
                            502, f"relay could not be told ({_describe(exc)}); retry or force"
                        ) from None
                    log.warning("offboard_forced", error=_describe(exc))
            await self._save(
                account_id="",
                refresh_token_sealed="",
                status=OnboardingStatus.PENDING,
                alarm="",
                detail="",
                push_enabled=False,
            )
            self._clear_alarms()  # no account, nothing to alarm about until the next voucher
        log.info("offboarded", cluster_id=self.cluster_id)

    async def replace_refresh_token(self, token: str) -> CloudStatus:
        """SPEC §5 manual recovery: store a refresh token issued by the relay operator
        (``ucpush relay account new-refresh-token``). Refused if the relay refuses it; kept
        (status error) if the relay cannot be reached to check it."""
        token = token.strip()
        if not token or len(token) > _MAX_TOKEN_CHARS or any(c.isspace() for c in token):
            raise CloudError(400, "refresh token must be one word of up to 4096 characters")
        async with self._lock:
            await self.reload()
            if not self._record.relay_url or not self._record.account_id:
                raise CloudError(409, "not onboarded: enroll with a voucher first")
            try:
                async with self._build_client(refresh_token=token) as probe:
                    await probe.access_token()
            except RelayAuthError as exc:
                refused = f"the relay refused this refresh token: {exc.detail}"
                raise CloudError(400, refused) from None
            except (httpx.HTTPError, ssl.SSLError) as exc:
                await self._save(
                    refresh_token_sealed=self._sealer.seal(token, "refresh_token"),
                    status=OnboardingStatus.ERROR,
                    alarm=TOKEN_UNAVAILABLE,
                    detail=f"token stored but not checked: {_describe(exc)}",
                )
                self._alarm(TOKEN_UNAVAILABLE, self._record.detail)
                return self.status
            await self._save(
                refresh_token_sealed=self._sealer.seal(token, "refresh_token"),
                status=OnboardingStatus.COMPLETED,
                alarm="",
                detail="",
            )
            self._clear_alarms()
        log.info("refresh_token_replaced", cluster_id=self.cluster_id)
        return self.status

    async def verify(self) -> CloudStatus:
        """Fetch an access token and the account status from the relay; the onboarding status
        becomes Completed, or an error with its alarm. Pending stays Pending."""
        async with self._lock:
            await self.reload()
            if not self._record.account_id:
                return self.status
            try:
                async with self._build_client() as client:
                    await client.status()
            except RelayAuthError as exc:
                await self._set_error(TOKEN_INVALID, f"refresh token refused: {exc.detail}")
            except RelayError as exc:
                await self._set_error(TOKEN_INVALID, exc.detail)
            except (ssl.SSLError, ValueError, ProxyAuthError) as exc:
                await self._set_error(CLIENT_POOL_FAILED, _describe(exc))
            except httpx.HTTPError as exc:
                await self._set_error(TOKEN_UNAVAILABLE, _describe(exc))
            else:
                if self._record.status != OnboardingStatus.COMPLETED:
                    log.info("onboarding_recovered", cluster_id=self.cluster_id)
                await self._save(status=OnboardingStatus.COMPLETED, alarm="", detail="")
                self._clear_alarms()
            return self.status

    async def check_reachability(self, relay_url: str | None = None) -> Reachability:
        """Can the relay be reached, and is its certificate trusted with the current CA
        settings? Reports the certificate's subject, issuer and expiry either way."""
        url = check_relay_url(relay_url or self._record.relay_url or "")
        parts = urlsplit(url)
        host = parts.hostname or ""
        tls = parts.scheme == "https"
        port = parts.port or (443 if tls else 80)
        subject = issuer = ""
        not_after: datetime | None = None
        proxy = _proxy_settings(self.proxy)
        # Through a proxy only the tunnelled request below shows the certificate's verdict.
        if tls and proxy is None:
            try:
                certificate = await self._peer_certificate(host, port)
            except (OSError, TimeoutError, ssl.SSLError) as exc:
                return Reachability(url, False, tls, detail=f"cannot connect: {_describe(exc)}")
            subject = certificate.subject.rfc4514_string()
            issuer = certificate.issuer.rfc4514_string()
            not_after = certificate.not_valid_after_utc
        try:
            transport = FailoverTransport(verify=self._verify(), proxy=proxy)
            async with httpx.AsyncClient(
                transport=transport, timeout=self._settings.request_timeout
            ) as http:
                response = await http.get(f"{url}/healthz")
        except (ssl.SSLError, ValueError) as exc:
            return Reachability(url, False, tls, False, subject, issuer, not_after, _describe(exc))
        except ProxyAuthError as exc:
            return Reachability(
                url, False, tls, None, subject, issuer, not_after, f"proxy: {_describe(exc)}"
            )
        except httpx.HTTPError as exc:
            trusted = False if _is_certificate_failure(exc) else None
            why = "certificate not trusted" if trusted is False else "cannot reach the relay"
            return Reachability(
                url, False, tls, trusted, subject, issuer, not_after, f"{why}: {_describe(exc)}"
            )
        ok = response.status_code == 200
        return Reachability(
            url,
            ok,
            tls,
            True if tls else None,
            subject,
            issuer,
            not_after,
            "relay answered" if ok else f"relay answered HTTP {response.status_code}",
        )

    async def set_certificates(self, *, system_ca: bool, ca_bundle: str) -> None:
        """Trust the system's CA store (``system_ca``), the pasted bundle, or both."""
        ca_bundle = ca_bundle.strip()
        if ca_bundle:
            check_ca_bundle(ca_bundle)
            ca_bundle += "\n"
        elif not system_ca:
            raise CloudError(400, "paste a CA bundle or let the system manage CA certificates")
        async with self._lock:
            await self._save(system_ca=system_ca, ca_bundle=ca_bundle)

    async def set_proxy(self, proxy: ProxyConfig | None) -> None:
        """Reach the relay through ``proxy``; ``None`` connects directly."""
        async with self._lock:
            if proxy is None:
                await self._save(
                    proxy_host="", proxy_port=0, proxy_username="", proxy_password_sealed=""
                )
                return
            await self._save(
                proxy_host=proxy.host,
                proxy_port=proxy.port,
                proxy_username=proxy.username,
                proxy_password_sealed=self._sealer.seal(proxy.password, "proxy_password"),
                proxy_auth=proxy.auth.value,
            )

    async def set_troubleshooting(self, *, send: bool, encrypt_pii: bool) -> None:
        """Upload alarms to the relay (``send``), with PII encrypted (``encrypt_pii``). Turning
        encryption on makes a new PII support token; it is kept while encryption stays on."""
        async with self._lock:
            await self.reload()
            sealed = self._record.pii_token_sealed
            if encrypt_pii and not self._record.encrypt_pii:
                sealed = self._sealer.seal(secrets.token_urlsafe(32), "pii_token")
            await self._save(
                send_troubleshooting=send,
                encrypt_pii=encrypt_pii,
                pii_token_sealed=sealed if encrypt_pii else "",
            )

    async def set_push_high_availability(self, enabled: bool) -> None:
        async with self._lock:
            await self._save(push_high_availability=enabled)

    async def reload(self) -> None:
        """Re-read the shared row; a change to what the client is built from rebuilds it."""
        record = await self._repo.get()
        if record is not None and record != self._record:
            await self._adopt(record)

    # internals

    def _verify(self) -> ssl.SSLContext:
        r = self._record
        context = (
            ssl.create_default_context() if r.system_ca else ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        )
        if r.ca_bundle:
            context.load_verify_locations(cadata=r.ca_bundle)
        elif not r.system_ca:
            raise ValueError("no CA certificates to trust: paste a bundle or use the system's")
        return context

    def _build_client(self, refresh_token: str | None = None) -> RelayClient:
        r = self._record
        token = refresh_token or self._sealer.open(r.refresh_token_sealed, "refresh_token")
        return RelayClient(
            r.relay_url,
            token,
            verify=self._verify(),
            timeout=self._settings.request_timeout,
            proxy=_proxy_settings(self.proxy),
        )

    async def _peer_certificate(self, host: str, port: int) -> x509.Certificate:
        probe = ssl.create_default_context()
        probe.check_hostname = False
        probe.verify_mode = ssl.CERT_NONE  # only to read the certificate; trust is checked next
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(host, port, ssl=probe, server_hostname=host),
            self._settings.request_timeout,
        )
        try:
            ssl_object = writer.get_extra_info("ssl_object")
            der = ssl_object.getpeercert(binary_form=True)
        finally:
            writer.close()
            with contextlib.suppress(OSError, ssl.SSLError):
                await writer.wait_closed()
        del reader
        return x509.load_der_x509_certificate(der)

    async def _save(self, **changes: object) -> None:
        # On the row as stored now, not as last read: another node may have changed other
        # columns since (only ``changes`` are this node's to write).
        current = await self._repo.get() or self._record
        record = dataclasses.replace(current, updated_at=_now(), **changes)  # type: ignore[arg-type]
        await self._repo.save(record)
        await self._adopt(record)

    async def _adopt(self, record: CloudRecord) -> None:
        before = self._record
        self._record = record
        if _client_inputs(before) != _client_inputs(record):
            await self._drop_client()

    async def _set_error(self, alarm: str, detail: str) -> None:
        await self._save(status=OnboardingStatus.ERROR, alarm=alarm, detail=detail[:1024])
        self._alarm(alarm, detail)

    def _alarm(self, alarm: str, detail: str) -> None:
        raise_alarm(alarm, _SEVERITY[alarm], cluster_id=self.cluster_id, detail=detail)

    @staticmethod
    def _clear_alarms() -> None:
        """The relay accepted our token again: the conditions behind these alarms are over."""
        for alarm in _SEVERITY:
            clear_alarm(alarm)

    async def _drop_client(self, *, at_once: bool = False) -> None:
        client, self._client = self._client, None
        if client is None:
            return
        if at_once:
            await client.aclose()
            return
        task = asyncio.create_task(self._close_later(client))
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    @staticmethod
    async def _close_later(client: RelayClient) -> None:
        try:
            await asyncio.sleep(_RETIRE_GRACE)
        finally:
            await client.aclose()

    async def check_token(self) -> CloudStatus:
        """The periodic check: while Completed, keep the access token fresh (a token request
        only when it nears expiry) and turn a failure into the error status with its alarm;
        in an error state, ask the relay again so the status and alarm clear once the cause
        is gone."""
        if not self._record.account_id:
            return self.status
        if self._record.status != OnboardingStatus.COMPLETED:
            return await self.verify()
        client = self.current_client()
        if client is None:
            return self.status  # push disabled: nothing is using the token
        try:
            await client.access_token()
        except RelayAuthError as exc:
            await self._set_error(TOKEN_INVALID, f"refresh token refused: {exc.detail}")
        except (ssl.SSLError, ValueError, ProxyAuthError) as exc:
            await self._set_error(CLIENT_POOL_FAILED, _describe(exc))
        except httpx.HTTPError as exc:
            await self._set_error(TOKEN_UNAVAILABLE, _describe(exc))
        return self.status

    async def _follow_changes(self) -> None:
        while True:
            await asyncio.sleep(self._settings.reload_seconds)
            try:
                await self.reload()
                await self.check_token()
            except Exception as exc:  # the database may be briefly unreachable; try again
                log.warning("cloud_state_check_failed", error=_describe(exc))


def _client_inputs(r: CloudRecord) -> tuple[object, ...]:
    return (
        r.relay_url,
        r.account_id,
        r.refresh_token_sealed,
        r.system_ca,
        r.ca_bundle,
        r.proxy_host,
        r.proxy_port,
        r.proxy_username,
        r.proxy_password_sealed,
        r.proxy_auth,
    )
