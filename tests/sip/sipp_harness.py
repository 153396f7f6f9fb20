"""Running SIPp (Debian ``sip-tester``) against a real ``SipNode`` on loopback.

A device is one SIPp process: its main scenario REGISTERs and then pauses for ``-d`` ms while
the out-of-call scenario (``-oocsf``) takes the INVITE the proxy forks to it (SIPp pairs
messages by Call-ID, and that INVITE carries the caller's). Every run is bounded by ``-m 1``
and ``-timeout``, and killed when the harness closes if still alive. SIPp's exit code ignores
out-of-call calls and failed ``check_it`` matches, so ``Sipp.succeeded`` also reads its logs.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import socket
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

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
OOC_DONE = "out-of-call scenario complete"
_FAILURE_RE = re.compile(r"Failed|Aborting|unexpected|[Tt]imeout")


def sip_user(name: str, password: str = PASSWORD) -> SipUser:
    """The account ``sip:<name>@DOMAIN`` with both HA1s of ``password``."""
    return SipUser(
        f"sip:{name}@{DOMAIN}",
        name,
        DOMAIN,
        compute_ha1(name, DOMAIN, password, MD5),
        compute_ha1(name, DOMAIN, password, SHA256),
        datetime.now(UTC),
    )


def free_port() -> int:
    """A loopback port free for both UDP and TCP (SIPp uses the same number for both)."""
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
        errors = self.errors()
        assert code == 0, f"sipp {self.name} exited {code}:\n{errors}"
        assert not _FAILURE_RE.search(errors), f"sipp {self.name}:\n{errors}"
        if self.out_of_call:
            logs = "".join(p.read_text() for p in self.cwd.glob("*_logs.log"))
            assert OOC_DONE in logs, f"sipp {self.name} never finished:\n{errors}"


async def start_sipp(
    base: Path,
    scenario: str,
    transport: str,
    remote: str | None,
    *,
    port: int | None = None,
    oocsf: str | None = None,
    duration_ms: int = 0,
    user: str = "bob",
    keys: dict[str, str] | None = None,
) -> Sipp:
    """One SIPp run of ``scenario`` on ``transport`` (``u1``/``t1``) towards ``remote``
    (host:port), or waiting for calls when ``remote`` is None; logs under ``base``."""
    port = port or free_port()
    cwd = base / f"{scenario.removesuffix('.xml')}-{port}"
    cwd.mkdir()
    args: list[str] = [remote] if remote is not None else []
    args += [
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
        "-au", user,
        "-ap", PASSWORD,
        "-auth_uri", DOMAIN,
        "-d", str(duration_ms),
    ]  # fmt: skip
    for name, value in {"user": user, "domain": DOMAIN, "contact_params": ""}.items():
        args += ["-key", name, (keys or {}).get(name, value)]
    for name, value in (keys or {}).items():
        if name not in ("user", "domain", "contact_params"):
            args += ["-key", name, value]
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
    return Sipp(process, oocsf or scenario, cwd, port, oocsf is not None)


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
        server: bool = False,
        port: int | None = None,
        oocsf: str | None = None,
        duration_ms: int = 0,
        user: str = "bob",
        keys: dict[str, str] | None = None,
    ) -> Sipp:
        """SIPp on ``transport`` (``u1``/``t1``) aimed at the node, or waiting for it
        (``server``, which needs ``port``)."""
        remote = None
        if not server:
            host, node_port = self.node.transport.local["UDP" if transport == "u1" else "TCP"]
            remote = f"{host}:{node_port}"
        proc = await start_sipp(
            self.base,
            scenario,
            transport,
            remote,
            port=port,
            oocsf=oocsf,
            duration_ms=duration_ms,
            user=user,
            keys=keys,
        )
        self.procs.append(proc)
        return proc

    async def device(
        self, ooc: str, transport: str, *, user: str = "bob", contact_params: str = ""
    ) -> Sipp:
        """A registered device whose INVITE handling is ``ooc``; stays up about 4 s."""
        aor = f"sip:{user}@{DOMAIN}"
        before = len(await self.store.sip.list_bindings(aor))
        proc = await self.sipp(
            "register.xml",
            transport,
            oocsf=ooc,
            duration_ms=4000,
            user=user,
            keys={"contact_params": contact_params},
        )
        await self.bindings(aor, before + 1)
        return proc

    async def bindings(self, aor: str, count: int) -> None:
        for _ in range(100):
            if len(await self.store.sip.list_bindings(aor)) >= count:
                return
            await asyncio.sleep(0.05)
        raise AssertionError(f"{aor} never got {count} binding(s)")

    async def close(self) -> None:
        for proc in self.procs:
            if proc.process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.process.kill()
                await proc.process.wait()
        await self.node.close()
        await self.store.close()


async def start_harness(base: Path, **settings: object) -> Harness:
    """A node on ephemeral UDP and TCP ports with accounts ``USERS`` (password ``PASSWORD``)
    in domain ``DOMAIN``; ``settings`` override ``SipSettings`` fields."""
    store = await open_store("sqlite+aiosqlite:///:memory:")
    for user in USERS:
        await store.sip.add_user(sip_user(user))
    values: dict[str, object] = {
        "udp_port": 0,
        "tcp_port": 0,
        "transports": ["udp", "tcp"],
        "domains": [DOMAIN],
        "digest_algorithms": ["MD5"],  # SIPp answers the first challenge and knows only MD5
    }
    values.update(settings)
    node = SipNode(SipSettings.model_validate(values), store.sip, digest_secret=os.urandom(32))
    await node.start()
    return Harness(node, store, base)
