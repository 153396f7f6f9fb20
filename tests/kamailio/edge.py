"""Kamailio with deploy/kamailio/push.cfg as a test and bench peer, on free loopback ports,
run as the current user (``-DD -E``: foreground, logs to stderr, captured in a file)."""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.sip.sipp_harness import DOMAIN, PASSWORD, free_port
from tests.support.callstack import CallStack, call_stack

ROOT = Path(__file__).resolve().parents[2]
PUSH_CFG = ROOT / "deploy" / "kamailio" / "push.cfg"
KAMAILIO = shutil.which("kamailio")
MODULES = Path("/usr/lib/x86_64-linux-gnu/kamailio/modules")
EDGE_SECRET = "edge-secret-for-tests-0123456789"


def kamailio_missing() -> str | None:
    """Why the edge tests cannot run here, or None."""
    if KAMAILIO is None:
        return "kamailio is not installed"
    if not (MODULES / "http_client.so").exists():
        return "Kamailio's http_client module (kamailio-utils-modules) is not installed"
    return None


@dataclass
class Kamailio:
    process: subprocess.Popen[bytes]
    port: int  # UDP and TCP; HTTP (xhttp) on the TCP one
    log: Path

    @property
    def sip(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@contextmanager
def reserved_port() -> Iterator[int]:
    """A loopback port free for UDP and TCP, held (bound) until the block ends: the stack
    started meanwhile picks its own free ports and must not take Kamailio's."""
    for _ in range(50):
        port = free_port()
        tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            tcp.bind(("127.0.0.1", port))
            udp.bind(("127.0.0.1", port))
        except OSError:
            tcp.close()
            udp.close()
            continue
        try:
            yield port
        finally:
            tcp.close()
            udp.close()
        return
    raise RuntimeError("no free port")


def edge_node_toml(port: int, *, ringback_after: float = 5.0, drop_after: float = 13.0) -> str:
    """The node's sections for a Kamailio edge on ``port``: pushes name Kamailio as the node
    to register to."""
    return (
        f'[callpush]\nactive_node = "sip:127.0.0.1:{port};transport=tcp"\n'
        f"ringback_after = {ringback_after}\ndrop_after = {drop_after}\n"
        f'[edge]\nenabled = true\nsecret = "{EDGE_SECRET}"\n'
        f'kamailio_url = "http://127.0.0.1:{port}"\n'
    )


@contextmanager
def kamailio(
    base: Path, port: int, edge_url: str, *, children: int = 2, open_registrar: bool = False
) -> Iterator[Kamailio]:
    """Kamailio on ``port`` (UDP+TCP) asking the node at ``edge_url``; stopped on exit.
    ``open_registrar``: REGISTERs without digest authentication (benchmarks)."""
    assert KAMAILIO is not None
    base.mkdir(parents=True, exist_ok=True)
    log = base / "kamailio.log"
    args = [
        KAMAILIO, "-f", str(PUSH_CFG), "-DD", "-E",
        "-n", str(children), "-m", "64", "-M", "8",
        "-l", f"udp:127.0.0.1:{port}", "-l", f"tcp:127.0.0.1:{port}",
        "-Y", str(base),
        "-A", f'EDGE_URL="{edge_url}"', "-A", f'EDGE_SECRET="{EDGE_SECRET}"',
        "-A", f'SIP_DOMAIN="{DOMAIN}"', "-A", f'SIP_PASSWORD="{PASSWORD}"',
    ]  # fmt: skip
    if open_registrar:
        args += ["-A", "OPEN_REGISTRAR"]
    with log.open("wb") as out:
        process = subprocess.Popen(
            args,
            stdout=out,
            stderr=out,
        )
    try:
        _wait_tcp(port, process, log)
        yield Kamailio(process, port, log)
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _wait_tcp(port: int, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"kamailio exited:\n{log.read_text()[-3000:]}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.1)
    raise AssertionError(f"kamailio never listened:\n{log.read_text()[-3000:]}")


@contextmanager
def edge_stack(
    base: Path,
    *,
    sip_toml: str = "",
    open_registrar: bool = False,
    ringback_after: float = 5.0,
    drop_after: float = 13.0,
) -> Iterator[tuple[CallStack, Kamailio]]:
    """Sims, relay and node (tests/support/callstack.py, ``[edge]`` on) and Kamailio in
    front of the node; ``sip_toml`` goes into the node's ``[sip]``."""
    with ExitStack() as running:
        with reserved_port() as port:
            toml = edge_node_toml(port, ringback_after=ringback_after, drop_after=drop_after)
            stack = running.enter_context(call_stack(base, sip_toml=sip_toml, node_toml=toml))
        kam = running.enter_context(
            kamailio(base / "kam", port, stack.api, open_registrar=open_registrar)
        )
        yield stack, kam


__all__ = ["EDGE_SECRET", "Kamailio", "edge_stack", "kamailio", "kamailio_missing", "reserved_port"]
