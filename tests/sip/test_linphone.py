"""A real UA against the node: linphonec (Debian ``linphone-cli``) registering with digest auth
and RFC 8599 Contact parameters, and calling another linphonec through the proxy, over UDP
and TLS.

linphonec is driven over a pseudo-terminal (it insists on a tty), one process per account with
its own HOME and linphonerc under ``tmp_path``. Every wait is on something observable (a
binding in the store, a line on linphonec's console), bounded; processes are killed at teardown
if ``quit`` did not end them.

TLS: linphonec trusts the test's trustme CA through ``root_ca`` with full verification
(``verify_server_certs``, ``verify_server_cn``). Its TLS stack (belle-sip on mbedtls 2.28)
matches the server name against DNS names only, never IP-address SANs, so the node is
addressed and advertised (Via, Record-Route) as ``localhost``, which is in the certificate.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pty
import re
import shutil
from collections.abc import AsyncIterator, Awaitable, Callable
from functools import partial
from pathlib import Path

import pytest
import trustme

from tests.sip.sipp_harness import DOMAIN, PASSWORD, Harness, start_harness
from ucpush.store.repository import Binding

LINPHONEC = shutil.which("linphonec")
pytestmark = [
    pytest.mark.skipif(LINPHONEC is None, reason="linphonec not installed (linphone-cli)"),
    pytest.mark.timeout(30),
]
NODE_NAME = "localhost"
TEAM_BUNDLE = "TEAM1234.org.example.phone.voip"
WAIT = 10.0
# linphonec prompts for a password when the node rejects its credentials: a failure, not a wait.
_PASSWORD_PROMPT = re.compile(rb"Password for \S+ on \S+:")


class Linphonec:
    """One linphonec process on a pseudo-terminal: send console commands, await output."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.output = bytearray()
        self._seen = 0  # output before this offset has been matched already
        self._changed = asyncio.Event()
        self._master = -1
        self.process: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        assert LINPHONEC is not None
        master, slave = pty.openpty()
        try:
            self.process = await asyncio.create_subprocess_exec(
                LINPHONEC,
                "-c", str(self.home / "linphonerc"),
                "-d", "6",
                "-l", str(self.home / "linphonec.log"),
                stdin=slave,
                stdout=slave,
                stderr=slave,
                env={**os.environ, "HOME": str(self.home)},
                start_new_session=True,
            )  # fmt: skip
        except BaseException:
            os.close(master)
            raise
        finally:
            os.close(slave)
        self._master = master
        asyncio.get_running_loop().add_reader(master, self._read)

    def _read(self) -> None:
        try:
            chunk = os.read(self._master, 65536)
        except OSError:  # EIO: the process closed the terminal
            chunk = b""
        if not chunk:
            asyncio.get_running_loop().remove_reader(self._master)
        self.output += chunk
        self._changed.set()

    def send(self, command: str) -> None:
        os.write(self._master, command.encode() + b"\n")

    async def expect(self, pattern: str) -> re.Match[bytes]:
        """The next match of ``pattern`` in the console output, within ``WAIT`` seconds."""
        regex = re.compile(pattern.encode())
        async with asyncio.timeout(WAIT):
            while True:
                if match := regex.search(self.output, self._seen):
                    self._seen = match.end()
                    return match
                prompt = _PASSWORD_PROMPT.search(self.output, self._seen)
                assert prompt is None, f"credentials rejected: {self.console()}"
                self._changed.clear()
                await self._changed.wait()

    def console(self) -> str:
        return self.output.decode(errors="replace")[-3000:]

    def log(self) -> str:
        path = self.home / "linphonec.log"
        return path.read_text(errors="replace") if path.exists() else ""

    async def close(self) -> None:
        """``quit`` (which unregisters), killed if it does not end within ``WAIT``."""
        if self.process is None or self._master < 0:
            return
        if self.process.returncode is None:
            with contextlib.suppress(OSError):
                self.send("quit")
            try:
                await asyncio.wait_for(self.process.wait(), WAIT)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    self.process.kill()
                await self.process.wait()
        asyncio.get_running_loop().remove_reader(self._master)
        os.close(self._master)
        self._master = -1


def write_linphonerc(home: Path, user: str, transport: str, node_port: int, ca: Path) -> None:
    """An account for ``user`` registering (and routing every request) through the node."""
    # Where linphonec keeps its database: without the directory it never starts registering.
    (home / ".local/share/linphone").mkdir(parents=True)
    proxy = f"sip:{NODE_NAME}:{node_port};transport={transport}"
    # -1: a random free port; 0: transport off. Media ports from a range, for the same reason.
    ports = {"udp": "0", "tcp": "0", "tls": "0"} | {transport: "-1"}
    (home / "linphonerc").write_text(
        f"""[sip]
sip_port={ports["udp"]}
sip_tcp_port={ports["tcp"]}
sip_tls_port={ports["tls"]}
default_proxy=0
root_ca={ca}
verify_server_certs=1
verify_server_cn=1

[rtp]
audio_rtp_port=20000-29999
video_rtp_port=20000-29999
text_rtp_port=20000-29999

[auth_info_0]
username={user}
passwd={PASSWORD}
realm={DOMAIN}
domain={DOMAIN}

[proxy_0]
reg_proxy=<{proxy}>
reg_route=<{proxy};lr>
reg_identity=sip:{user}@{DOMAIN}
reg_expires=600
reg_sendregister=1
contact_uri_parameters=pn-provider=apns;pn-prid={token(user)};pn-param={TEAM_BUNDLE}
"""
    )


def token(user: str) -> str:
    return f"{user.encode().hex()}0123456789abcdef"


class Setup:
    """The node (UDP and TLS, digest auth) and the linphonec processes of one test."""

    def __init__(self, harness: Harness, base: Path, ca_file: Path) -> None:
        self.harness = harness
        self.base = base
        self.ca_file = ca_file
        self.phones: list[Linphonec] = []

    async def phone(self, user: str, transport: str) -> tuple[Linphonec, Binding]:
        """linphonec registered as ``user`` over ``transport``, and its stored binding."""
        home = self.base / f"{user}-{transport}"
        node_transport = transport.upper()
        port = self.harness.node.transport.local[node_transport][1]
        write_linphonerc(home, user, transport, port, self.ca_file)
        phone = Linphonec(home)
        self.phones.append(phone)
        await phone.start()
        aor = f"sip:{user}@{DOMAIN}"
        try:
            await self.harness.bindings(aor, 1)
        except AssertionError:
            raise AssertionError(f"{aor} not registered:\n{phone.log()[-4000:]}") from None
        # The node stores the binding before its 200 reaches linphonec: poll until it has it.
        async with asyncio.timeout(WAIT):
            while True:
                phone.send("status register")
                status = (await phone.expect(r"registered[^\r\n]*")).group().decode()
                if status == f"registered, identity={aor} duration=600":
                    break
                await asyncio.sleep(0.1)
        (binding,) = await self.harness.store.sip.list_bindings(aor)
        return phone, binding

    async def close(self) -> None:
        for phone in self.phones:
            await phone.close()
        await self.harness.close()


@pytest.fixture
async def setup(tmp_path: Path) -> AsyncIterator[Setup]:
    ca = trustme.CA()
    cert = ca.issue_cert(NODE_NAME)
    ca_file, cert_file, key_file = (tmp_path / n for n in ("ca.pem", "cert.pem", "key.pem"))
    ca.cert_pem.write_to_path(str(ca_file))
    cert.cert_chain_pems[0].write_to_path(str(cert_file))
    cert.private_key_pem.write_to_path(str(key_file))
    harness = await start_harness(
        tmp_path,
        transports=["udp", "tls"],
        tls_port=0,
        tls_cert=str(cert_file),
        tls_key=str(key_file),
        advertise=NODE_NAME,
        # SHA-256 first (linphonec takes it, RFC 8760), MD5 for older UAs.
        digest_algorithms=["SHA-256", "MD5"],
    )
    s = Setup(harness, tmp_path, ca_file)
    try:
        yield s
    finally:
        await s.close()


def assert_push_binding(binding: Binding, user: str, transport: str) -> None:
    """The RFC 8599 parameters linphonec put in its Contact arrived intact."""
    assert (binding.pn_provider, binding.pn_prid, binding.pn_param) == (
        "apns",
        token(user),
        TEAM_BUNDLE,
    )
    assert f";pn-prid={token(user)};pn-param={TEAM_BUNDLE}" in binding.contact
    assert binding.source_transport == transport.upper()
    assert binding.user_agent.startswith("Linphonec/")
    assert binding.instance_id.startswith("<urn:uuid:")


@pytest.mark.parametrize(
    ("caller_transport", "callee_transport"),
    [("udp", "udp"), ("tls", "tls"), ("tls", "udp")],
)
async def test_linphonec_registers_and_calls_through_the_node(
    setup: Setup, caller_transport: str, callee_transport: str
) -> None:
    callee, callee_binding = await setup.phone("bob", callee_transport)
    caller, caller_binding = await setup.phone("carol", caller_transport)
    assert_push_binding(callee_binding, "bob", callee_transport)
    assert_push_binding(caller_binding, "carol", caller_transport)
    # Digest: the node challenges with SHA-256 and MD5; linphonec takes SHA-256 (RFC 8760).
    assert re.search(r"Authorization: +Digest .*algorithm=SHA-256", caller.log())

    caller.send(f"call sip:bob@{DOMAIN}")
    await callee.expect(rf"Receiving new incoming call from sip:carol@{re.escape(DOMAIN)}")
    callee.send("answer")
    await caller.expect(rf"Call \d+ with sip:bob@{re.escape(DOMAIN)} connected")
    await callee.expect(rf"Call \d+ with sip:carol@{re.escape(DOMAIN)} connected")
    caller.send("terminate")
    await caller.expect(r"Call \d+ with \S+ ended \(No error\)")
    await callee.expect(r"Call \d+ with \S+ ended \(No error\)")

    # The node forwarded the INVITE and Record-Routed it under its advertised name, so the BYE
    # came through it as well. Once on UDP-only calls; twice (one entry per side, RFC 5658)
    # when a side is a TLS connection, which its entry names with a flow token (RFC 5626).
    log = callee.log()
    invite = log[log.index("\nINVITE sip:") :].split("\r\n\r\n", 1)[0]
    assert re.search(rf"\nVia: SIP/2.0/{callee_transport.upper()} {NODE_NAME}:\d+;", invite)
    routes = re.findall(rf"\nRecord-Route: <sips?:[^>]*\b{NODE_NAME}:\d+[;>]", invite)
    assert len(routes) == (1 if caller_transport == callee_transport == "udp" else 2)
    bye = log[log.index("\nBYE sip:") :].split("\r\n\r\n", 1)[0]
    assert re.search(rf"\nVia: SIP/2.0/{callee_transport.upper()} {NODE_NAME}:\d+;", bye)

    # quit unregisters: the bindings go.
    for phone, user in ((caller, "carol"), (callee, "bob")):
        await phone.close()
        aor = f"sip:{user}@{DOMAIN}"
        await eventually(partial(setup.harness.store.sip.list_bindings, aor), empty=True)


async def eventually(probe: Callable[[], Awaitable[object]], *, empty: bool = False) -> object:
    """Poll ``probe`` until its result is truthy (falsy with ``empty``), within ``WAIT``."""
    async with asyncio.timeout(WAIT):
        while True:
            result = await probe()
            if bool(result) != empty:
                return result
            await asyncio.sleep(0.05)


async def test_linphonec_refuses_a_node_certificate_from_another_ca(
    setup: Setup, tmp_path: Path
) -> None:
    # Proof that the TLS tests above verify for real: trusting another CA, it never registers.
    other_ca = tmp_path / "other-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(other_ca))
    home = tmp_path / "distrustful"
    port = setup.harness.node.transport.local["TLS"][1]
    write_linphonerc(home, "bob", "tls", port, other_ca)
    phone = Linphonec(home)
    setup.phones.append(phone)
    await phone.start()

    async def refused() -> bool:
        return "Certificate verification failed" in phone.log()

    await eventually(refused)
    assert not await setup.harness.store.sip.list_bindings(f"sip:bob@{DOMAIN}")
