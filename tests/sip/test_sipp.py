"""Conformance against SIPp (Debian ``sip-tester``): a real ``SipNode`` on ephemeral loopback
ports, SIPp playing the devices and the caller over UDP and TCP (this SIPp build has no TLS;
TLS is covered in ``test_transport``).

A device is one SIPp process: its main scenario REGISTERs (digest) and then pauses for ``-d``
ms while the out-of-call scenario (``-oocsf``) takes the INVITE the proxy forks to it (SIPp
pairs messages by Call-ID, and the INVITE carries the caller's). Every run is bounded by
``-m 1`` and ``-timeout``, and killed at teardown if still alive.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import pytest

from ucpush.config import SipSettings
from ucpush.sip.digest import MD5, SHA256, compute_ha1
from ucpush.sip.server import SipNode
from ucpush.store import Store, open_store
from ucpush.store.repository import SipUser

SIPP = shutil.which("sipp")
SCENARIOS = Path(__file__).parent / "scenarios"
DOMAIN = "example.org"
PASSWORD = "secret"
USERS = ("bob", "carol")
_FAILURE_RE = re.compile(r"Failed|Aborting|unexpected|[Tt]imeout")

pytestmark = [
    pytest.mark.skipif(SIPP is None, reason="sipp not installed (Debian package sip-tester)"),
    pytest.mark.timeout(60),
]


def free_port() -> int:
    """A port free for both UDP and TCP on loopback (SIPp uses the same number for both)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
            tcp.bind(("127.0.0.1", 0))
            port = tcp.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                try:
                    udp.bind(("127.0.0.1", port))
                except OSError:
                    continue
                return port
    raise RuntimeError("no free port")


@dataclass
class Sipp:
    """One SIPp process and the directory holding its logs."""

    process: asyncio.subprocess.Process
    name: str
    cwd: Path
    port: int
    out_of_call: bool

    def errors(self) -> str:
        logs = sorted(self.cwd.glob("*_errors.log"))
        return "\n".join(p.read_text(errors="replace")[-2000:] for p in logs)

    async def succeeded(self) -> None:
        code = await asyncio.wait_for(self.process.wait(), 25)
        assert code == 0, f"sipp {self.name} exited {code}:\n{self.errors()}"
        if self.out_of_call:
            # A failed check (ereg check_it) is only logged and the call goes on.
            errors = self.errors()
            assert not _FAILURE_RE.search(errors), f"{self.name}:\n{errors}"
            logs = "".join(p.read_text() for p in self.cwd.glob("*_logs.log"))
            assert "out-of-call scenario complete" in logs, f"{self.name}:\n{errors}"


@dataclass
class Harness:
    node: SipNode
    store: Store
    base: Path
    procs: list[Sipp] = field(default_factory=list)

    async def sipp(
        self,
        scenario: str,
        transport: str,
        *,
        oocsf: str | None = None,
        duration_ms: int = 0,
        user: str = "bob",
        extra: tuple[str, ...] = (),
    ) -> Sipp:
        proxy = self.node.transport.local["UDP" if transport == "u1" else "TCP"]
        port = free_port()
        cwd = self.base / f"{scenario.removesuffix('.xml')}-{port}"
        cwd.mkdir()
        args = [
            f"{proxy[0]}:{proxy[1]}",
            "-sf", str(SCENARIOS / scenario),
            "-t", transport,
            "-i", "127.0.0.1",
            "-p", str(port),
            "-m", "1",
            "-timeout", "20s",
            "-timeout_error",
            "-nostdin",
            "-trace_err",
            "-trace_logs",
            "-key", "user", user,
            "-key", "domain", DOMAIN,
            "-key", "contact_params", "",
            "-au", user,
            "-ap", PASSWORD,
            "-auth_uri", DOMAIN,
            "-d", str(duration_ms),
            *extra,
        ]  # fmt: skip
        if oocsf is not None:
            args += ["-oocsf", str(SCENARIOS / oocsf)]
        assert SIPP is not None
        process = await asyncio.create_subprocess_exec(
            SIPP,
            *args,
            cwd=cwd,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        proc = Sipp(process, oocsf or scenario, cwd, port, oocsf is not None)
        self.procs.append(proc)
        return proc

    async def device(self, ooc: str, transport: str, user: str = "bob") -> Sipp:
        """A registered device whose INVITE handling is ``ooc``; stays up about 3 s."""
        before = len(await self.store.sip.list_bindings(f"sip:{user}@{DOMAIN}"))
        if before:
            # Nonces only change once a second and every SIPp sends nc=1 with the same
            # cnonce: a second device challenged in the same second looks like a replay.
            await asyncio.sleep(1 - datetime.now(UTC).microsecond / 1e6 + 0.01)
        proc = await self.sipp("register.xml", transport, oocsf=ooc, duration_ms=3000, user=user)
        await self.registered(user, before + 1)
        return proc

    async def registered(self, user: str, count: int) -> None:
        aor = f"sip:{user}@{DOMAIN}"
        for _ in range(100):
            if len(await self.store.sip.list_bindings(aor)) >= count:
                return
            await asyncio.sleep(0.05)
        raise AssertionError(f"{aor} never got {count} binding(s)")


@pytest.fixture
async def harness(tmp_path: Path) -> AsyncIterator[Harness]:
    store = await open_store("sqlite+aiosqlite:///:memory:")
    now = datetime.now(UTC)
    for user in USERS:
        await store.sip.add_user(
            SipUser(
                f"sip:{user}@{DOMAIN}",
                user,
                DOMAIN,
                compute_ha1(user, DOMAIN, PASSWORD, MD5),
                compute_ha1(user, DOMAIN, PASSWORD, SHA256),
                now,
            )
        )
    settings = SipSettings(
        udp_port=0,
        tcp_port=0,
        transports=["udp", "tcp"],
        domains=[DOMAIN],
        digest_algorithms=["MD5"],  # SIPp answers the first challenge and knows only MD5
    )
    node = SipNode(settings, store.sip, digest_secret=os.urandom(32))
    await node.start()
    h = Harness(node, store, tmp_path)
    try:
        yield h
    finally:
        for proc in h.procs:
            if proc.process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.process.kill()
                await proc.process.wait()
        await node.close()
        await store.close()


@pytest.mark.parametrize("transport", ["u1", "t1"])
async def test_fork_one_answers_other_cancelled_with_reason(harness, transport):
    winner = await harness.device("device_answers.xml", transport)
    loser = await harness.device("device_cancelled.xml", transport)
    caller = await harness.sipp("caller_answered.xml", transport)
    await caller.succeeded()
    await winner.succeeded()
    await loser.succeeded()


@pytest.mark.parametrize("transport", ["u1", "t1"])
async def test_caller_cancel_gets_487_and_every_branch_is_cancelled(harness, transport):
    devices = [await harness.device("device_trying_cancelled.xml", transport) for _ in range(2)]
    caller = await harness.sipp("caller_cancels.xml", transport)
    await caller.succeeded()
    for device in devices:
        await device.succeeded()


@pytest.mark.parametrize("transport", ["u1", "t1"])
async def test_unregistered_aor_is_404(harness, transport):
    await (await harness.sipp("options_404.xml", transport, user="carol")).succeeded()


@pytest.mark.parametrize("transport", ["u1", "t1"])
async def test_max_forwards_zero_is_483(harness, transport):
    await (await harness.sipp("options_483.xml", transport)).succeeded()
