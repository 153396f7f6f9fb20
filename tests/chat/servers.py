"""Real chat servers for the chat push tests: Prosody and ejabberd started as child processes
on loopback, free ports, a private data directory, with configs rendered from deploy/."""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from string import Template

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
DOMAIN = "example.test"
COMPONENT = f"push.{DOMAIN}"
PASSWORD = "correct horse"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_listening(port: int, proc: subprocess.Popen[bytes], log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}: {_tail(log)}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise RuntimeError(f"server did not listen on {port} within {timeout} s: {_tail(log)}")


def _tail(path: Path) -> str:
    try:
        return path.read_text(errors="replace")[-3000:]
    except FileNotFoundError:
        return "(no log)"


@dataclass
class ChatServer:
    kind: str
    data_dir: Path
    c2s_port: int
    component_port: int
    component_secret: str
    log_file: Path
    users: list[str] = field(default_factory=list)
    domain: str = DOMAIN
    component: str = COMPONENT
    pid: int = 0

    def jid(self, user: str, resource: str | None = None) -> str:
        bare = f"{user}@{self.domain}"
        return f"{bare}/{resource}" if resource else bare

    def log(self) -> str:
        return _tail(self.log_file)


def available(kind: str) -> bool:
    return shutil.which("prosody" if kind == "prosody" else "ejabberdctl") is not None


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextlib.contextmanager
def prosody(tmp: Path, users: list[str], *, hibernation: int = 600) -> Iterator[ChatServer]:
    """Prosody 0.12 with mod_cloud_notify, mod_smacks, carbons, MAM and mod_privilege."""
    data = tmp / "prosody"
    accounts = data / "data" / DOMAIN.replace(".", "%2e") / "accounts"
    accounts.mkdir(parents=True)
    # internal_plain storage, written directly: prosodyctl insists on switching users.
    for user in users:
        (accounts / f"{user}.dat").write_text(f'return {{\n\t["password"] = "{PASSWORD}";\n}};\n')
    server = ChatServer(
        "prosody", data, free_port(), free_port(), secrets.token_hex(12), data / "prosody.log"
    )
    config = Template((DEPLOY / "prosody" / "prosody.cfg.lua.in").read_text()).substitute(
        DATA_DIR=str(data),
        LOG_LEVEL="debug",
        C2S_PORT=server.c2s_port,
        COMPONENT_PORT=server.component_port,
        PUSH_WITH_SENDER="true",
        HIBERNATION_TIME=hibernation,
        DOMAIN=DOMAIN,
        COMPONENT=COMPONENT,
        COMPONENT_SECRET=server.component_secret,
    )
    (data / "prosody.cfg.lua").write_text(config)
    proc = subprocess.Popen(
        ["prosody", "--config", str(data / "prosody.cfg.lua")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd=data,
    )
    try:
        _wait_listening(server.c2s_port, proc, server.log_file, 15)
        _wait_listening(server.component_port, proc, server.log_file, 15)
        server.users = users
        server.pid = proc.pid
        yield server
    finally:
        _stop(proc)


def _register(ctl: list[str], env: dict[str, str], user: str) -> None:
    # The listeners open before every module has started: retry while the node settles.
    deadline = time.monotonic() + 30
    while True:
        done = subprocess.run(
            [*ctl, "register", user, DOMAIN, PASSWORD], env=env, capture_output=True, timeout=30
        )
        if done.returncode == 0:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"ejabberdctl register {user}: {done.stdout!r} {done.stderr!r}")
        time.sleep(0.3)


@contextlib.contextmanager
def ejabberd(tmp: Path, users: list[str]) -> Iterator[ChatServer]:
    """ejabberd 23.01 with mod_push, mod_push_keepalive, mod_stream_mgmt and mod_privilege."""
    data = tmp / "ejabberd"
    (data / "db").mkdir(parents=True)
    server = ChatServer(
        "ejabberd", data, free_port(), free_port(), secrets.token_hex(12), data / "ejabberd.log"
    )
    config = Template((DEPLOY / "ejabberd" / "ejabberd.yml.in").read_text()).substitute(
        DATA_DIR=str(data),
        C2S_PORT=server.c2s_port,
        COMPONENT_PORT=server.component_port,
        DOMAIN=DOMAIN,
        COMPONENT=COMPONENT,
        COMPONENT_SECRET=server.component_secret,
    )
    (data / "ejabberd.yml").write_text(config)
    node = f"ucpush{secrets.token_hex(4)}@localhost"
    # Debian's ejabberdctl switches from root to the ejabberd user, who cannot write the
    # test's directory: run a copy that stays the current user.
    script = (Path(shutil.which("ejabberdctl") or "ejabberdctl")).read_text()
    ctl_path = data / "ejabberdctl"
    ctl_path.write_text(re.sub(r"(?m)^INSTALLUSER=.*$", "INSTALLUSER=", script, count=1))
    ctl_path.chmod(0o755)
    env = {**os.environ, "HOME": str(data)}
    ctl = [str(ctl_path), "--config-dir", str(data), "--logs", str(data), "--spool",
           str(data / "db"), "--node", node]  # fmt: skip
    proc = subprocess.Popen(
        [*ctl, "foreground"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env
    )
    try:
        _wait_listening(server.c2s_port, proc, server.log_file, 60)
        _wait_listening(server.component_port, proc, server.log_file, 30)
        for user in users:
            _register(ctl, env, user)
        server.users = users
        yield server
    finally:
        subprocess.run([*ctl, "stop"], env=env, capture_output=True, timeout=30)
        _stop(proc)
