"""One TOML file plus ``UCPUSH_<SECTION>__<KEY>`` environment overrides.

Every key, its default and its meaning is documented in ``docs/configuration.md``;
``ucpush config show`` prints the merged result.
"""

from __future__ import annotations

import os
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

CONFIG_ENV = "UCPUSH_CONFIG"
DEFAULT_CONFIG_FILE = "ucpush.toml"
_config_file: ContextVar[Path | None] = ContextVar("ucpush_config_file", default=None)


class Section(BaseModel):
    """A ``[section]`` of the file; a misspelt key is an error, not silently ignored."""

    model_config = ConfigDict(extra="forbid")


class LogSettings(Section):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["json", "console"] = "json"


class StoreSettings(Section):
    # Empty means the embedded default: SQLite in data_dir.
    url: str = ""


class RelaySettings(Section):
    host: str = "127.0.0.1"
    port: int = Field(8443, ge=0, le=65535)
    tls_cert: str = ""
    tls_key: str = ""
    # URL the relay advertises as its issuer and in onboarding answers.
    public_url: str = ""
    access_token_ttl: int = Field(3600, ge=60, le=86400, description="seconds")
    voucher_ttl: int = Field(7 * 86400, ge=60, description="seconds")
    max_body_bytes: int = Field(16384, ge=1024)
    # Processes serving the API on one port (SO_REUSEPORT); each has its own provider pools.
    workers: int = Field(1, ge=1, le=64)
    apns_production_url: str = "https://api.push.apple.com"
    apns_sandbox_url: str = "https://api.sandbox.push.apple.com"
    fcm_url: str = "https://fcm.googleapis.com"
    # Extra CA bundle trusted for provider connections (the simulators' CA in tests).
    provider_ca_file: str = ""
    apns_connections: int = Field(4, ge=1, le=64)
    fcm_connections: int = Field(2, ge=1, le=64)
    request_timeout: float = Field(5.0, gt=0)
    retry_attempts: int = Field(3, ge=1, le=10)
    retry_base_delay: float = Field(0.25, ge=0)
    retry_max_delay: float = Field(2.0, ge=0)
    # A retry-after longer than this is returned to the caller instead of waited for.
    retry_wait_limit: float = Field(3.0, ge=0)
    apns_token_refresh: int = Field(3000, ge=1200, le=3500, description="seconds")


class SimSettings(Section):
    host: str = "127.0.0.1"
    apns_port: int = Field(8701, ge=0, le=65535)
    apns_sandbox_port: int = Field(8702, ge=0, le=65535)
    fcm_port: int = Field(8703, ge=0, le=65535)
    tls: bool = False


class SipSettings(Section):
    host: str = "127.0.0.1"
    # Address put in Via, Record-Route and Path; empty = host (must be set when host is 0.0.0.0).
    advertise: str = ""
    transports: list[Literal["udp", "tcp", "tls"]] = ["udp", "tcp", "tls"]
    udp_port: int = Field(5060, ge=0, le=65535)
    tcp_port: int = Field(5060, ge=0, le=65535)
    tls_port: int = Field(5061, ge=0, le=65535)
    tls_cert: str = ""
    tls_key: str = ""
    # Extra CA bundle trusted for outbound TLS (e.g. the upstream PBX's private CA).
    tls_ca_file: str = ""
    domains: list[str] = []
    realm: str = ""
    authenticate: bool = True
    # Challenge order; some UAs (SIPp, older phones) answer only the first, and only MD5.
    digest_algorithms: list[Literal["SHA-256", "MD5"]] = Field(["SHA-256", "MD5"], min_length=1)
    mode: Literal["registrar", "gateway"] = "registrar"
    upstream: str = ""
    min_expires: int = Field(60, ge=1)
    # Above 120 s: push bindings are refreshed by a push 120 s before they lapse (RFC 8599).
    max_expires: int = Field(3600, ge=121)
    push_providers: list[str] = ["apns", "fcm"]
    invite_timeout: float = Field(180.0, gt=0, description="seconds (Timer C)")
    # RFC 3263 NAPTR/SRV lookups go to these ("ip" or "ip:port"); empty = /etc/resolv.conf.
    dns_servers: list[str] = []
    max_message_size: int = Field(65535, ge=1500, le=1 << 20)
    # Bindings live in memory and are written to the store behind the 2xx, in one transaction
    # per this many ms (a crash loses at most that window); 0 = written before the 2xx.
    binding_flush_ms: int = Field(20, ge=0, le=10000)
    # SIP accounts are cached this long; a failed authentication re-reads the account at once.
    user_cache_seconds: float = Field(60.0, ge=0)

    @model_validator(mode="after")
    def _consistent(self) -> SipSettings:
        if self.min_expires > self.max_expires:
            raise ValueError("min_expires must not exceed max_expires")
        if self.mode == "gateway" and not self.upstream:
            raise ValueError("gateway mode needs upstream")
        if self.host in ("0.0.0.0", "::") and not self.advertise:
            raise ValueError("listening on every address needs advertise")
        return self


class SigninSettings(Section):
    host: str = "127.0.0.1"
    port: int = Field(9443, ge=0, le=65535)
    tls_cert: str = ""
    tls_key: str = ""
    # HS256 key for client access tokens, shared by the nodes of a group; empty =
    # <data_dir>/signin-secret, created on first start.
    secret_file: str = ""
    issuer: str = "ucpush"
    push_key_grace: int = Field(86400, ge=0, description="seconds")
    max_body_bytes: int = Field(16384, ge=1024)


class LpnsSettings(Section):
    host: str = "127.0.0.1"
    port: int = Field(9560, ge=0, le=65535)
    tls_cert: str = ""
    tls_key: str = ""
    keepalive_seconds: float = Field(120.0, gt=0)
    hello_timeout: float = Field(10.0, gt=0)
    ack_timeout: float = Field(2.0, gt=0)
    max_message_bytes: int = Field(8192, ge=512, le=1 << 20)
    max_sessions: int = Field(50000, ge=1)
    # Sessions are re-checked against the store this often: catches sign-outs and deletions
    # made by another node or the admin CLI, and SSID lists changed under a session.
    recheck_seconds: float = Field(30.0, gt=0)


class CallPushSettings(Section):
    """Call push (SPEC §2): timers and payload policy of the calls held for woken devices."""

    ringback_after: float = Field(5.0, gt=0, description="seconds")
    drop_after: float = Field(13.0, gt=0, description="seconds")
    push_reachable: bool = True
    reachable_push_delay: float = Field(1.0, ge=0, description="seconds")
    linger: float = Field(30.0, gt=0, description="seconds")
    push_sent_option: str = ""
    pii_free_without_key: bool = True
    active_node: str = ""

    @model_validator(mode="after")
    def _ordered(self) -> CallPushSettings:
        if self.ringback_after >= self.drop_after:
            raise ValueError("ringback_after must be shorter than drop_after")
        return self


class EdgeSettings(Section):
    """Kamailio as the SIP edge (docs/kamailio.md): the node's ``/v1/edge`` API."""

    enabled: bool = False
    # Shared with Kamailio (push.cfg EDGE_SECRET): it sends it to us and we to it. Masked in
    # `ucpush config show`.
    secret: SecretStr = SecretStr("")
    # Kamailio's HTTP side (xhttp on its SIP TCP listener), where push.cfg serves /edge/reply.
    kamailio_url: str = "http://127.0.0.1:5060"
    request_timeout: float = Field(2.0, gt=0, description="seconds")

    @model_validator(mode="after")
    def _secret_set(self) -> EdgeSettings:
        if self.enabled and len(self.secret.get_secret_value()) < 16:
            raise ValueError("edge needs a secret of at least 16 characters")
        return self


class CloudSettings(Section):
    """The node's connection to its relay; onboarding state itself lives in the database."""

    # AES key sealing the refresh token, proxy password and PII token in the database; every
    # node of the cluster needs the same file. Empty = <data_dir>/cloud-secret.
    secret_file: str = ""
    cluster_name: str = ""
    reload_seconds: float = Field(30.0, gt=0)
    request_timeout: float = Field(10.0, gt=0)


class AdminSettings(Section):
    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = Field(9444, ge=0, le=65535)
    tls_cert: str = ""
    tls_key: str = ""
    # HMAC key for admin session cookies and bearer tokens. Empty = <data_dir>/admin-secret.
    secret_file: str = ""
    session_minutes: int = Field(480, ge=1, le=10080)
    max_body_bytes: int = Field(65536, ge=1024)


class ChatSettings(Section):
    # The XEP-0357 app server, an XEP-0114 component of the user's chat server (docs/chat.md).
    enabled: bool = False
    server_host: str = "127.0.0.1"
    server_port: int = Field(5347, ge=1, le=65535)
    # The component's JID, e.g. push.example.org (the chat server's Component entry).
    component_jid: str = ""
    # File holding the component password shared with the chat server; empty =
    # <data_dir>/chat-component-secret, created on first start.
    component_secret_file: str = ""
    # Key the push node secrets are derived from, shared by the nodes of a group; empty =
    # <data_dir>/chat-secret, created on first start.
    secret_file: str = ""
    # Users' XMPP domain (bare JID = sign-in username@domain); empty = component_jid without
    # its first label.
    domain: str = ""
    include_sender: bool = True
    include_body: bool = False
    last_active_session: bool = True
    inactive_after: float = Field(300.0, ge=0, description="seconds")
    node_rate: float = Field(5.0, gt=0, description="publishes/s per node")
    node_burst: int = Field(20, ge=1)
    max_in_flight: int = Field(1000, ge=1)
    # Pushes sent to the relay at once; the rest wait their turn in the app server.
    relay_concurrency: int = Field(32, ge=1, le=1000)
    reconnect_delay: float = Field(2.0, gt=0, description="seconds")

    @model_validator(mode="after")
    def _consistent(self) -> ChatSettings:
        if self.enabled and not self.component_jid:
            raise ValueError("chat push needs component_jid")
        return self

    @property
    def user_domain(self) -> str:
        return self.domain or self.component_jid.partition(".")[2]


class AlarmSettings(Section):
    """Alarm store and the troubleshooting upload (SPEC §7); ``ucpush alarms pushfrequency``
    and ``minpushlevel`` override the first two in the database."""

    push_frequency_minutes: int = Field(30, ge=5, le=90)
    min_push_level: Literal["Critical", "Error", "Warning", "Notice", "Info"] = "Error"
    # Name of this node in alarms; empty = the host name.
    node_name: str = ""
    history_size: int = Field(1000, ge=10)
    poll_seconds: float = Field(5.0, gt=0)
    upload_batch_bytes: int = Field(12000, ge=2048, le=1 << 20)


class ClusterSettings(Section):
    """Several nodes sharing one PostgreSQL store and one Redis (docs/cluster.md)."""

    enabled: bool = False
    # This node's name in node groups and in Redis; empty = the host name. Unique per node.
    node_name: str = ""
    redis_url: str = "redis://127.0.0.1:6379/0"
    # Prefix of every Redis key and channel, so several clusters can share one Redis.
    key_prefix: str = "ucpush"
    heartbeat_seconds: float = Field(1.0, gt=0)
    failure_timeout: float = Field(3.0, gt=0, description="seconds without a heartbeat")
    relogin_rate: float = Field(4.0, gt=0, description="sign-ins/s after a failover")

    @model_validator(mode="after")
    def _timeout_longer(self) -> ClusterSettings:
        if self.failure_timeout <= self.heartbeat_seconds:
            raise ValueError("failure_timeout must be longer than heartbeat_seconds")
        return self


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="UCPUSH_",
        env_nested_delimiter="__",
        extra="forbid",
    )

    data_dir: Path = Path("var")
    log: LogSettings = LogSettings()
    store: StoreSettings = StoreSettings()
    relay: RelaySettings = RelaySettings()
    sim: SimSettings = SimSettings()
    sip: SipSettings = SipSettings()
    signin: SigninSettings = SigninSettings()
    lpns: LpnsSettings = LpnsSettings()
    callpush: CallPushSettings = CallPushSettings()
    edge: EdgeSettings = EdgeSettings()
    alarms: AlarmSettings = AlarmSettings()
    chat: ChatSettings = ChatSettings()
    cloud: CloudSettings = CloudSettings()
    admin: AdminSettings = AdminSettings()
    cluster: ClusterSettings = ClusterSettings()

    @field_validator("data_dir")
    @classmethod
    def _expand(cls, v: Path) -> Path:
        return v.expanduser()

    @property
    def store_url(self) -> str:
        return self.store.url or f"sqlite+aiosqlite:///{self.data_dir / 'ucpush.db'}"

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        path = _config_file.get() or os.environ.get(CONFIG_ENV, DEFAULT_CONFIG_FILE)
        toml = TomlConfigSettingsSource(settings_cls, toml_file=path)
        # Precedence: explicit arguments, environment, TOML file, defaults.
        return (init_settings, env_settings, toml)


def load_settings(config_file: str | Path | None = None, **overrides: Any) -> Settings:
    """Load settings; ``config_file`` wins over ``$UCPUSH_CONFIG``, which must exist if set."""
    named = config_file if config_file is not None else os.environ.get(CONFIG_ENV)
    if named is not None and not Path(named).is_file():
        raise FileNotFoundError(f"config file not found: {named}")
    token = _config_file.set(Path(named) if named is not None else None)
    try:
        return Settings(**overrides)
    finally:
        _config_file.reset(token)
