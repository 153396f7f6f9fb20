"""Call push stack for end-to-end tests and bench/call_wakeup.py, every component its own
process: ``ucpush sim serve`` (APNs + FCM), ``ucpush relay serve`` (tenant ``acme`` with apps on
the simulators) and ``ucpush serve`` (the node, onboarded to the relay with a voucher from the
relay's CLI, SIP accounts and sign-in users ``USERS`` in its database)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from tests.signin.helpers import provision, register, sign_in
from tests.sip.sipp_harness import DOMAIN, free_port, sip_user
from ucpush.cloud.connection import CloudConnection
from ucpush.config import load_settings
from ucpush.relay.onboarding import ensure_tenant
from ucpush.signin.service import SigninService
from ucpush.sim.cli import CA_FILE_NAME
from ucpush.sim.credentials import make_apns_key, make_service_account
from ucpush.store import open_store
from ucpush.store.repository import ProviderApp

UCPUSH = [sys.executable, "-m", "ucpush"]
TEAM_ID, KEY_ID = "E2ETEAM001", "E2EKEY0001"
BUNDLE = "org.ucpush.e2e"
FCM_PROJECT = "ucpush-e2e"
USERS = [f"u{i}" for i in range(1, 17)]


@contextmanager
def call_stack(
    base: Path, *, sip_toml: str = "", node_toml: str = "", users: list[str] = USERS
) -> Iterator[CallStack]:
    """Start the three processes under ``base``; ``sip_toml`` goes into the node's ``[sip]``
    section, ``node_toml`` after it (more sections); stopped (SIGTERM, then kill) on exit."""
    procs: list[subprocess.Popen[bytes]] = []
    try:
        yield _start_stack(base, procs, sip_toml, node_toml, users)
    finally:
        _stop(procs)


@dataclass
class CallStack:
    base: Path
    sip_udp: str  # host:port of the node
    sip_tcp: str
    api: str
    apns: str
    fcm: str
    ca_file: Path
    relay_url: str
    lpns: str  # ws:// URL of the node's local push service
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    _next_user: int = 0

    def user(self) -> str:
        """A fresh SIP and sign-in user per test, so tests share the processes safely."""
        name = USERS[self._next_user]
        self._next_user += 1
        return name

    def sim(self, base: str) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=base + "/_sim", verify=_trust(self.ca_file), http2=True)

    async def apns_deliveries(self, token: str) -> list[dict[str, Any]]:
        async with self.sim(self.apns) as sim:
            return [d for d in (await sim.get("/delivered")).json() if d["token"] == token]

    async def fcm_deliveries(self, token: str) -> list[dict[str, Any]]:
        async with self.sim(self.fcm) as sim:
            return [d for d in (await sim.get("/delivered")).json() if d["token"] == token]

    async def sign_in_device(self, user: str, device: str, **fields: Any) -> str:
        """Sign ``user`` in on ``device`` and register it; returns the access token."""
        async with httpx.AsyncClient(base_url=self.api) as api:
            token: str = (await sign_in(api, user, device))["access_token"]
            await register(api, token, device, **fields)
        return token


def _trust(ca_file: Path) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(ca_file))


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def _start(config: Path, *args: str, log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "UCPUSH_LOG__LEVEL": "info"}
    with log.open("wb") as out:
        return subprocess.Popen(
            [*UCPUSH, "--config", str(config), *args], stdout=out, stderr=out, env=env
        )


def _wait_http(url: str, proc: subprocess.Popen[bytes], log: Path, verify: Any = True) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"{url} process exited:\n{log.read_text()[-3000:]}")
        try:
            with httpx.Client(http2=True, verify=verify, timeout=1) as client:
                client.get(url)
            return
        except httpx.HTTPError:
            time.sleep(0.1)
    raise AssertionError(f"{url} never answered:\n{log.read_text()[-3000:]}")


def _stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _start_stack(
    base: Path,
    procs: list[subprocess.Popen[bytes]],
    sip_toml: str,
    node_toml: str,
    users: list[str],
) -> CallStack:
    apns_port, sandbox_port, fcm_port = free_port(), free_port(), free_port()
    sims_dir = base / "sims"
    sims_toml = _write(
        base / "sims.toml",
        f'data_dir = "{sims_dir}"\n[sim]\ntls = true\napns_port = {apns_port}\n'
        f"apns_sandbox_port = {sandbox_port}\nfcm_port = {fcm_port}\n",
    )
    procs.append(_start(sims_toml, "sim", "serve", log=base / "sims.log"))
    ca_file = sims_dir / CA_FILE_NAME
    apns, fcm = f"https://127.0.0.1:{apns_port}", f"https://127.0.0.1:{fcm_port}"
    for url in (apns, fcm):
        deadline = time.monotonic() + 30
        while not ca_file.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        _wait_http(url + "/_sim/health", procs[-1], base / "sims.log", verify=_trust(ca_file))

    # Provider credentials: the relay signs with the private halves, the sims check.
    creds = base / "creds"
    creds.mkdir()
    private_pem, public_pem = make_apns_key()
    p8 = creds / "AuthKey.p8"
    p8.write_bytes(private_pem)
    account, account_public = make_service_account(FCM_PROJECT, fcm + "/token")
    sa_file = creds / "service-account.json"
    sa_file.write_text(json.dumps(account))
    with httpx.Client(verify=_trust(ca_file), http2=True) as sim:
        for url in (apns, f"https://127.0.0.1:{sandbox_port}"):
            sim.post(
                url + "/_sim/keys",
                json={"team_id": TEAM_ID, "key_id": KEY_ID, "public_key_pem": public_pem.decode()},
            ).raise_for_status()
        sim.post(
            fcm + "/_sim/accounts",
            json={
                "client_email": account["client_email"],
                "project_id": FCM_PROJECT,
                "public_key_pem": account_public.decode(),
                "private_key_id": account["private_key_id"],
            },
        ).raise_for_status()

    relay_port = free_port()
    relay_dir = base / "relay"
    relay_toml = _write(
        base / "relay.toml",
        f'data_dir = "{relay_dir}"\n[relay]\nport = {relay_port}\n'
        f'apns_production_url = "{apns}"\napns_sandbox_url = "https://127.0.0.1:{sandbox_port}"\n'
        f'fcm_url = "{fcm}"\nprovider_ca_file = "{ca_file}"\n',
    )
    asyncio.run(_relay_tenant(relay_toml, p8, sa_file))
    relay_url = f"http://127.0.0.1:{relay_port}"
    procs.append(_start(relay_toml, "relay", "serve", log=base / "relay.log"))
    _wait_http(relay_url + "/docs", procs[-1], base / "relay.log")
    voucher = new_voucher(relay_toml)

    udp, tcp, api_port, lpns_port = free_port(), free_port(), free_port(), free_port()
    node_config = _write(
        base / "node.toml",
        f'data_dir = "{base / "node"}"\n'
        f'[sip]\ntransports = ["udp", "tcp"]\nudp_port = {udp}\ntcp_port = {tcp}\n'
        f'domains = ["{DOMAIN}"]\ndigest_algorithms = ["MD5"]\n{sip_toml}'
        f"[signin]\nport = {api_port}\n[lpns]\nport = {lpns_port}\n[admin]\nport = 0\n"
        f"{node_toml}",
    )
    asyncio.run(_node_state(node_config, voucher, relay_url, users))
    procs.append(_start(node_config, "serve", log=base / "node.log"))
    api = f"http://127.0.0.1:{api_port}"
    _wait_http(api + "/docs", procs[-1], base / "node.log")
    return CallStack(
        base,
        f"127.0.0.1:{udp}",
        f"127.0.0.1:{tcp}",
        api,
        apns,
        fcm,
        ca_file,
        relay_url,
        f"ws://127.0.0.1:{lpns_port}/",
        procs,
    )


async def _relay_tenant(config: Path, p8: Path, sa_file: Path) -> None:
    settings = load_settings(config)
    async with await open_store(settings.store_url) as store:
        tenant = await ensure_tenant(store.relay, "acme")
        await store.relay.put_app(
            ProviderApp(tenant.id, "APNS", BUNDLE, str(p8), "production", TEAM_ID, KEY_ID)
        )
        await store.relay.put_app(ProviderApp(tenant.id, "FCM", FCM_PROJECT, str(sa_file)))


async def _node_state(config: Path, voucher: str, relay_url: str, users: list[str]) -> None:
    """SIP accounts and sign-in users in the node's database; onboarding with the voucher."""
    settings = load_settings(config)
    async with await open_store(settings.store_url) as store:
        signin = SigninService.from_settings(settings, store.signin)
        for user in users:
            await store.sip.add_user(sip_user(user))
            await provision(signin, username=user)
        async with await CloudConnection.open(settings, store) as cloud:
            status = await cloud.enroll(voucher, relay_url)
            assert cloud.current_client() is not None, status


def new_voucher(relay_toml: Path) -> str:
    """A voucher for tenant acme, from the relay's CLI as an operator gets one."""
    return subprocess.run(
        [*UCPUSH, "--config", str(relay_toml), "relay", "voucher", "create", "--tenant", "acme"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()[1]


# several nodes as one cluster (issue 9)


@dataclass
class ClusterNode:
    """One ``ucpush serve`` of a cluster stack."""

    name: str
    sip_udp: str
    sip_tcp: str
    api: str
    lpns: str
    config: Path
    proc: subprocess.Popen[bytes]
    key_prefix: str  # of its Redis keys: <key_prefix>:node:<name> is its heartbeat

    @property
    def sip_uri(self) -> str:
        """What its pushes name as the node to register to (``active_node``)."""
        return f"sip:{self.sip_tcp};transport=tcp"


def _cluster_toml(name: str, store_url: str, key_prefix: str, timing: tuple[float, float]) -> str:
    return (
        f'[store]\nurl = "{store_url}"\n'
        f'[cluster]\nenabled = true\nnode_name = "{name}"\nkey_prefix = "{key_prefix}"\n'
        f"heartbeat_seconds = {timing[0]}\nfailure_timeout = {timing[1]}\n"
    )


@contextmanager
def cluster_stack(
    base: Path,
    *,
    store_url: str,
    key_prefix: str,
    names: tuple[str, ...] = ("a", "b", "c"),
    users: list[str] = USERS,
    timing: tuple[float, float] = (0.25, 1.0),
) -> Iterator[tuple[CallStack, list[ClusterNode]]]:
    """Sims, relay and one node process per name, sharing the PostgreSQL database
    ``store_url``, Redis (keys under ``key_prefix``) and one data directory (the secret files
    of a cluster). The ``CallStack`` describes the first node. ``timing``: the nodes'
    ``heartbeat_seconds`` and ``failure_timeout`` (by default fast, for tests: a killed node is
    out within about a second)."""
    procs: list[subprocess.Popen[bytes]] = []
    try:
        first = _start_stack(
            base, procs, "", _cluster_toml(names[0], store_url, key_prefix, timing), users
        )
        nodes = [
            ClusterNode(
                names[0],
                first.sip_udp,
                first.sip_tcp,
                first.api,
                first.lpns,
                base / "node.toml",
                procs[-1],
                key_prefix,
            )
        ]
        for name in names[1:]:
            udp, tcp, api_port, lpns_port = free_port(), free_port(), free_port(), free_port()
            config = _write(
                base / f"node-{name}.toml",
                f'data_dir = "{base / "node"}"\n'
                f'[sip]\ntransports = ["udp", "tcp"]\nudp_port = {udp}\ntcp_port = {tcp}\n'
                f'domains = ["{DOMAIN}"]\ndigest_algorithms = ["MD5"]\n'
                f"[signin]\nport = {api_port}\n[lpns]\nport = {lpns_port}\n[admin]\nport = 0\n"
                + _cluster_toml(name, store_url, key_prefix, timing),
            )
            log = base / f"node-{name}.log"
            procs.append(_start(config, "serve", log=log))
            api = f"http://127.0.0.1:{api_port}"
            _wait_http(api + "/docs", procs[-1], log)
            nodes.append(
                ClusterNode(
                    name,
                    f"127.0.0.1:{udp}",
                    f"127.0.0.1:{tcp}",
                    api,
                    f"ws://127.0.0.1:{lpns_port}/",
                    config,
                    procs[-1],
                    key_prefix,
                )
            )
        yield first, nodes
    finally:
        _stop(procs)
