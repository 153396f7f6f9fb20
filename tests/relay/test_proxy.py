"""The relay client through a real squid on loopback (basic and digest proxy auth), and failover
between the addresses a name resolves to (127.0.0.2, 127.0.0.3... are loopback too)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import pwd
import shutil
import socket
import ssl
import subprocess
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpcore
import httpx
import pytest
import trustme

from ucpush.crypto import jwe
from ucpush.relay.client import RelayAuthError, RelayClient, RelayError
from ucpush.relay.providers.base import Outcome, PushType
from ucpush.relay.proxy import (
    FailoverTransport,
    ProxyAuthError,
    ProxySettings,
    ProxyTunnel,
    resolve_addresses,
)

from .conftest import BUNDLE, DEVICE_KEY, Stack

SQUID = shutil.which("squid") or "/usr/sbin/squid"
SQUID_HELPERS = Path("/usr/lib/squid")
PROXY_HOST = "127.0.0.3"
USERS = {"basic": ("alice", "alice-Secret1"), "digest": ("bob", "bob-Secret2")}
APNS_TOKEN = "b2" * 32

pytestmark = pytest.mark.skipif(
    not Path(SQUID).exists(), reason="squid is not installed (deploy/debian-packages.txt)"
)


@dataclass
class Squid:
    host: str
    port: int
    tls_port: int
    ca: trustme.CA
    access_log: Path

    def settings(
        self, auth: str, password: str | None = None, scheme: str = "http"
    ) -> ProxySettings:
        username, right = USERS.get(auth, ("", ""))
        port = self.tls_port if scheme == "https" else self.port
        return ProxySettings(scheme, self.host, port, username, password or right, auth)  # type: ignore[arg-type]

    def connects(self) -> list[tuple[str, str, str]]:
        """(result code, CONNECT target, user) per logged CONNECT."""
        lines = self.access_log.read_text().splitlines() if self.access_log.exists() else []
        fields = [line.split() for line in lines]
        return [(f[3], f[6], f[7]) for f in fields if len(f) > 7 and f[5] == "CONNECT"]


def _free_port(host: str) -> int:
    with socket.socket() as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def squid() -> Iterator[Squid]:
    """squid on 127.0.0.3, both basic (NCSA file) and digest (plain file) auth, no cache."""
    # Not under pytest's private (0700) temp root: squid may run as another user, see below.
    with tempfile.TemporaryDirectory(prefix="ucpush-squid-") as directory:
        yield from _run_squid(Path(directory))


def _run_squid(work: Path) -> Iterator[Squid]:
    basic_user, basic_password = USERS["basic"]
    hashed = subprocess.run(
        ["openssl", "passwd", "-apr1", "-stdin"],
        input=basic_password,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    (work / "basic.pw").write_text(f"{basic_user}:{hashed}\n")
    (work / "digest.pw").write_text("{}:{}\n".format(*USERS["digest"]))
    ca = trustme.CA()
    ca.issue_cert(PROXY_HOST).private_key_and_cert_chain_pem.write_to_path(str(work / "tls.pem"))
    port, tls_port = _free_port(PROXY_HOST), _free_port(PROXY_HOST)
    config = [
        f"http_port {PROXY_HOST}:{port}",
        f"https_port {PROXY_HOST}:{tls_port} tls-cert={work}/tls.pem",
        f"pid_filename {work}/squid.pid",
        f"cache_log {work}/cache.log",
        f"access_log stdio:{work}/access.log",
        "buffered_logs off",
        f"coredump_dir {work}",
        "cache deny all",
        "cache_mem 0 MB",
        "pinger_enable off",
        "shutdown_lifetime 0 seconds",
        f"auth_param basic program {SQUID_HELPERS}/basic_ncsa_auth {work}/basic.pw",
        "auth_param basic children 1",
        "auth_param basic realm ucpush-test",
        f"auth_param digest program {SQUID_HELPERS}/digest_file_auth {work}/digest.pw",
        "auth_param digest children 1",
        "auth_param digest realm ucpush-test",
        # Nonces wear out after a few tunnels: the client must answer a fresh challenge.
        "auth_param digest nonce_max_count 2",
        "acl authenticated proxy_auth REQUIRED",
        "http_access allow authenticated",
        "http_access deny all",
    ]
    if os.geteuid() == 0:
        # squid will not run as root: it switches to this user, who must own its files.
        user = pwd.getpwnam("proxy")
        config.append("cache_effective_user proxy")
        for path in [work, *work.iterdir()]:
            os.chown(path, user.pw_uid, user.pw_gid)
    (work / "squid.conf").write_text("\n".join(config) + "\n")
    process = subprocess.Popen(
        [SQUID, "-N", "-f", str(work / "squid.conf")],
        stdout=(work / "squid.out").open("wb"),
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            with contextlib.suppress(OSError), socket.create_connection((PROXY_HOST, port), 0.2):
                break
            if process.poll() is not None or time.monotonic() > deadline:
                logs = [work / "squid.out", work / "cache.log"]
                pytest.fail(
                    "squid did not start: " + "".join(p.read_text() for p in logs if p.exists())
                )
            time.sleep(0.1)
        yield Squid(PROXY_HOST, port, tls_port, ca, work / "access.log")
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _names(mapping: dict[str, list[str]]):
    """A resolver: names from ``mapping``, address literals as themselves."""

    async def resolve(host: str, port: int) -> Sequence[str]:
        return mapping.get(host, [host])

    return resolve


@contextlib.contextmanager
def blackhole(host: str, port: int) -> Iterator[None]:
    """An address that swallows connection attempts: a listener whose accept queue is full, so
    the kernel drops further SYNs and connecting hangs as with a dead host."""
    with socket.socket() as listener:
        listener.bind((host, port))
        listener.listen(0)
        with socket.create_connection((host, port)):
            yield


class Forwarder:
    """A TCP relay from ``listen`` to ``upstream`` (TLS passes through) that can start losing
    the answers: with ``drop_answers`` set, a connection passes the relay's bytes only until the
    client has written twice (its TLS 1.3 ClientHello, then its Finished and request), so the
    handshake completes and the HTTP answer is lost."""

    def __init__(self, listen: tuple[str, int], upstream: tuple[str, int]) -> None:
        self.listen, self.upstream = listen, upstream
        self.drop_answers = False
        self._tasks: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> Forwarder:
        self._server = await asyncio.start_server(self._connection, *self.listen)
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._server.close()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        client_writes = 0

        async def requests() -> None:
            nonlocal client_writes
            try:
                while data := await reader.read(65536):
                    client_writes += 1
                    up_writer.write(data)
                    await up_writer.drain()
            finally:
                up_writer.close()

        async def answers() -> None:
            try:
                while data := await up_reader.read(65536):
                    if not (self.drop_answers and client_writes >= 2):
                        writer.write(data)
                        await writer.drain()
            finally:
                writer.close()

        for task in (asyncio.create_task(requests()), asyncio.create_task(answers())):
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)


def _relay_port(stack: Stack) -> int:
    return httpx.URL(stack.relay.url).port  # type: ignore[return-value]


async def _push(client: RelayClient, tracking_id: str) -> Outcome:
    result = await client.push(
        target=APNS_TOKEN,
        service="APNS",
        push_type=PushType.VOIP,
        payload={"callId": tracking_id},
        key=DEVICE_KEY,
        tracking_id=tracking_id,
    )
    assert result.tracking_id == tracking_id
    return result.outcome


# --- through squid ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("scheme", "auth"), [("http", "basic"), ("http", "digest"), ("https", "digest")]
)
async def test_onboarding_and_push_through_the_proxy(
    stack: Stack, squid: Squid, scheme: str, auth: str
):
    """With https, the relay's TLS runs inside the TLS connection to the proxy."""
    stack.apns.register_device(APNS_TOKEN, BUNDLE)
    proxy = squid.settings(auth, scheme=scheme)
    trust = stack.client_ssl()
    squid.ca.configure_trust(trust)  # one trust store for proxy and relay
    before = len(squid.connects())
    enrollment = await RelayClient.enroll(
        stack.relay.url, await stack.voucher(), "cluster-p", verify=trust, proxy=proxy
    )
    async with RelayClient(
        stack.relay.url, enrollment.refresh_token, verify=trust, proxy=proxy
    ) as client:
        assert await _push(client, f"trk-{auth}") is Outcome.DELIVERED
        assert (await client.status())["status"] == "completed"
    [delivery] = stack.apns.delivered
    assert json.loads(jwe.decrypt(json.loads(delivery.payload)["jwe"], DEVICE_KEY)) == {
        "callId": f"trk-{auth}"
    }
    # Both connections (onboarding, then the client's kept-open one) went through squid as the
    # user of this auth scheme; the digest user exists only in the digest helper's file.
    relay = f"127.0.0.1:{_relay_port(stack)}"
    connects = squid.connects()[before:]
    tunnels = [c for c in connects if c[0].endswith("/200")]
    assert tunnels == [("TCP_TUNNEL/200", relay, USERS[auth][0])] * 2, connects


async def test_digest_challenge_is_kept_for_later_tunnels_then_renewed(stack: Stack, squid: Squid):
    tunnel = ProxyTunnel(squid.settings("digest"), ssl.create_default_context())
    backend = httpcore.AnyIOBackend()
    relay = f"127.0.0.1:{_relay_port(stack)}"
    before = len(squid.connects())
    for _ in range(4):
        stream = await tunnel.open(lambda: backend.connect_tcp(squid.host, squid.port), relay)
        await stream.aclose()
    # Tunnel 1 after a 407; tunnels 2 and 3 on the same nonce (nc=2, 3); squid then wants a new
    # one (with nonce_max_count 2 it takes nc up to 3), so tunnel 4 answers a fresh challenge.
    for _ in range(100):  # squid logs a tunnel when it ends
        if len(squid.connects()) - before >= 6:
            break
        await asyncio.sleep(0.05)
    results = Counter(code for code, _, _ in squid.connects()[before:])
    assert results == {"TCP_DENIED/407": 2, "TCP_TUNNEL/200": 4}


@pytest.mark.parametrize("auth", ["basic", "digest"])
async def test_wrong_proxy_password_is_a_proxy_auth_error(stack: Stack, squid: Squid, auth: str):
    proxy = squid.settings(auth, password="wrong")
    with pytest.raises(ProxyAuthError) as err:
        await RelayClient.enroll(
            stack.relay.url, await stack.voucher(), "c", verify=stack.client_ssl(), proxy=proxy
        )
    message = str(err.value)
    assert f"rejected the {auth} credentials of user '{USERS[auth][0]}'" in message
    assert f"http://{squid.host}:{squid.port}" in message
    assert "wrong" not in message
    # What the node's callers catch: an httpx error, and the same at every later call.
    async with RelayClient(
        stack.relay.url, "refresh", verify=stack.client_ssl(), proxy=proxy
    ) as client:
        with pytest.raises(httpx.HTTPError, match="rejected the"):
            await client.access_token()


async def test_proxy_demanding_credentials_we_lack(stack: Stack, squid: Squid):
    async with RelayClient(
        stack.relay.url, "refresh", verify=stack.client_ssl(), proxy=squid.settings("none")
    ) as client:
        with pytest.raises(
            ProxyAuthError, match=r"requires authentication \(basic, digest offered\)"
        ):
            await client.status()


async def test_proxy_down_is_a_connect_error(stack: Stack):
    proxy = ProxySettings("http", PROXY_HOST, _free_port(PROXY_HOST), "bob", "x", "digest")
    async with RelayClient(
        stack.relay.url, "refresh", verify=stack.client_ssl(), proxy=proxy
    ) as client:
        with pytest.raises(httpx.ConnectError, match="cannot connect to proxy") as err:
            await client.access_token()
    assert not isinstance(err.value, ProxyAuthError)


async def test_relay_unreachable_behind_the_proxy(squid: Squid):
    closed = f"https://127.0.0.1:{_free_port('127.0.0.1')}"
    async with RelayClient(closed, "refresh", proxy=squid.settings("digest")) as client:
        with pytest.raises(httpx.ProxyError, match=r"refused CONNECT 127\.0\.0\.1:\d+: 503"):
            await client.status()


async def test_http2_inside_the_tunnel(stack: Stack, squid: Squid):
    """TLS and HTTP/2 run inside the CONNECT tunnel (here to the APNs simulator)."""
    transport = FailoverTransport(
        verify=stack.client_ssl(), proxy=squid.settings("digest"), http2=True
    )
    async with httpx.AsyncClient(transport=transport) as http:
        response = await http.get(f"{stack.apns.url}/_sim/delivered")
    assert response.status_code == 200
    assert response.http_version == "HTTP/2"
    assert response.json() == []


async def test_proxy_name_fails_over_to_the_next_address_after_2s(stack: Stack, squid: Squid):
    proxy = ProxySettings("http", "proxy.test", squid.port, *USERS["digest"], "digest")
    resolve = _names({"proxy.test": ["127.0.0.2", squid.host]})
    with blackhole("127.0.0.2", squid.port):
        async with RelayClient(
            stack.relay.url, "refresh", verify=stack.client_ssl(), proxy=proxy, resolve=resolve
        ) as client:
            started = time.monotonic()
            # The relay refuses the made-up refresh token: we got through squid's second address.
            with pytest.raises(RelayAuthError, match="invalid_grant"):
                await client.access_token()
            elapsed = time.monotonic() - started
    assert 1.9 <= elapsed < 5, elapsed


# --- address failover without a proxy ---------------------------------------------------------


@pytest.fixture
async def named_relay(stack: Stack) -> AsyncIterator[tuple[str, int]]:
    """The relay reached as ``localhost`` (in its certificate); each test says what that
    name resolves to."""
    yield f"https://localhost:{_relay_port(stack)}", _relay_port(stack)


async def test_dead_first_address_is_left_after_2s(stack: Stack, named_relay: tuple[str, int]):
    url, port = named_relay
    stack.apns.register_device(APNS_TOKEN, BUNDLE)
    resolve = _names({"localhost": ["127.0.0.2", "127.0.0.1"]})
    with blackhole("127.0.0.2", port):
        started = time.monotonic()
        enrollment = await RelayClient.enroll(
            url, await stack.voucher(), "c", verify=stack.client_ssl(), resolve=resolve
        )
        assert 1.9 <= time.monotonic() - started < 5
        async with RelayClient(
            url, enrollment.refresh_token, verify=stack.client_ssl(), resolve=resolve
        ) as client:
            started = time.monotonic()
            assert await _push(client, "trk-1") is Outcome.DELIVERED
            assert 1.9 <= time.monotonic() - started < 5
            # The address that answered stays preferred: no second wait.
            started = time.monotonic()
            assert await _push(client, "trk-2") is Outcome.DELIVERED
            assert time.monotonic() - started < 1.9
    assert len(stack.apns.delivered) == 2


async def test_refusing_address_is_left_at_once_and_all_dead_is_one_clear_error(
    stack: Stack, named_relay: tuple[str, int]
):
    url, port = named_relay
    async with RelayClient(
        url,
        "refresh",
        verify=stack.client_ssl(),
        resolve=_names({"localhost": ["127.0.0.2", "127.0.0.1"]}),
    ) as client:
        started = time.monotonic()
        with pytest.raises(RelayAuthError, match="invalid_grant"):
            await client.access_token()  # reached the relay, which refused the token
        assert time.monotonic() - started < 1.9
    async with RelayClient(
        url, "refresh", resolve=_names({"localhost": ["127.0.0.2", "127.0.0.4"]})
    ) as client:
        with pytest.raises(httpx.ConnectError) as err:
            await client.access_token()
    assert f"localhost:{port} unreachable at every address (127.0.0.2: " in str(err.value)
    assert "; 127.0.0.4: " in str(err.value)


@pytest.mark.slow
async def test_unconfirmed_push_is_resent_to_the_next_address_after_5s(
    stack: Stack, named_relay: tuple[str, int]
):
    url, port = named_relay
    stack.apns.register_device(APNS_TOKEN, BUNDLE)
    enrollment = await RelayClient.enroll(
        stack.relay.url, await stack.voucher(), "c", verify=stack.client_ssl()
    )
    resolve = _names({"localhost": ["127.0.0.2", "127.0.0.1"]})
    async with (
        Forwarder(("127.0.0.2", port), ("127.0.0.1", port)) as forwarder,
        RelayClient(
            url, enrollment.refresh_token, verify=stack.client_ssl(), resolve=resolve
        ) as client,
    ):
        await client.access_token()  # through the forwarder, the first address
        forwarder.drop_answers = True
        started = time.monotonic()
        assert await _push(client, "trk-dup") is Outcome.DELIVERED
        assert 4.9 <= time.monotonic() - started < 8
        started = time.monotonic()
        assert await _push(client, "trk-next") is Outcome.DELIVERED
        assert time.monotonic() - started < 4.9
    # The relay got the first copy too and delivered it: the device sees the same push (same
    # tracking id, same ciphertext) twice, then the next one once.
    first, second, third = (json.loads(d.payload) for d in stack.apns.delivered)
    assert first == second != third
    assert first["tid"] == "trk-dup" and third["tid"] == "trk-next"
    assert json.loads(jwe.decrypt(first["jwe"], DEVICE_KEY)) == {"callId": "trk-dup"}


async def test_onboarding_is_not_resent_when_unanswered(stack: Stack, named_relay: tuple[str, int]):
    url, port = named_relay
    voucher = await stack.voucher()
    resolve = _names({"localhost": ["127.0.0.2", "127.0.0.1"]})
    async with Forwarder(("127.0.0.2", port), ("127.0.0.1", port)) as forwarder:
        forwarder.drop_answers = True
        with pytest.raises(httpx.ReadTimeout, match=r"127\.0\.0\.2"):
            await RelayClient.enroll(
                url, voucher, "c", verify=stack.client_ssl(), resolve=resolve, confirm_timeout=1.0
            )
    # The relay did redeem it: a resend would have turned the timeout into voucher_used.
    with pytest.raises(RelayError) as used:
        await RelayClient.enroll(url, voucher, "c", verify=stack.client_ssl())
    assert used.value.error == "voucher_used"


async def test_names_are_resolved_again_after_the_dns_ttl(
    stack: Stack, named_relay: tuple[str, int]
):
    url, _ = named_relay
    lookups: list[str] = []
    now = [0.0]

    async def resolve(host: str, port: int) -> Sequence[str]:
        lookups.append(host)
        return ["127.0.0.1"]

    transport = FailoverTransport(
        verify=stack.client_ssl(), resolve=resolve, dns_ttl=3600, clock=lambda: now[0]
    )
    async with httpx.AsyncClient(transport=transport) as http:
        for at in (0.0, 3599.0, 3601.0):
            now[0] = at
            assert (await http.get(f"{url}/healthz")).status_code == 200
    assert lookups == ["localhost", "localhost"]


async def test_system_resolver():
    assert await resolve_addresses("127.0.0.2", 443) == ["127.0.0.2"]
    assert await resolve_addresses("::1", 443) == ["::1"]
    local = await resolve_addresses("localhost", 443)
    assert set(local) <= {"127.0.0.1", "::1"} and local and len(local) == len(set(local))
