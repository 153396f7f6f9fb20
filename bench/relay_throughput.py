"""Pushes/s and latency through the relay to the APNs simulator, beside the direct limit.

Three processes, as in production: the APNs simulator (HTTP/2), the relay, and a load
generator. For each concurrency (in-flight pushes) the same number of encrypted VoIP pushes is
sent two ways in the same run:

- **relay**: h2load (nghttp2's C load generator, so the client is not the bottleneck) posts
  ``/v1/push`` to the relay with a machine-account access token; the relay validates, looks up
  the app and forwards over its HTTP/2 pool to the simulator;
- **direct**: an httpx HTTP/2 client (the library the relay itself uses, same number of
  connections) posts straight to the simulator, which is the limit the relay can approach.

Every push must arrive: the simulator's delivery count is checked after each run. Relay RSS
is sampled during the runs. Results: table on stdout, ``bench/results/relay_throughput.md``
and ``.json``.

    .venv/bin/python bench/relay_throughput.py [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import jwt
from rich.console import Console
from rich.table import Table

from ucpush import aio
from ucpush.crypto import jwe
from ucpush.relay.client import RelayClient
from ucpush.relay.identity import Identity
from ucpush.relay.onboarding import Onboarding
from ucpush.relay.providers.h2client import H2Client
from ucpush.sim.credentials import make_apns_key
from ucpush.store import open_store
from ucpush.store.repository import ProviderApp

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
TEAM, KEY_ID, BUNDLE = "BENCHTEAM1", "BENCHKEY01", "org.example.bench"
DEVICE = "ab" * 32
CONNECTIONS = 4  # relay.apns_connections, and the direct client's pool
console = Console(width=180)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout: float = 30.0, http2: bool = False) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with httpx.Client(http1=not http2, http2=http2, timeout=1) as c:
                c.get(url)
            return
        except httpx.TransportError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not come up")


def family(pid: int) -> list[int]:
    """``pid`` and its child processes (the relay's workers)."""
    children = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rpartition(")")[2].split()[1]) == pid:
                children.append(int(entry.name))
    return [pid, *children]


class RssSampler(threading.Thread):
    """Peak of the summed RSS of a process and its children."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid, self.peak_kb, self.running = pid, 0, True

    def run(self) -> None:
        while self.running:
            total = 0
            for pid in family(self.pid):
                try:
                    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                        if line.startswith("VmRSS:"):
                            total += int(line.split()[1])
                except FileNotFoundError:
                    continue
            self.peak_kb = max(self.peak_kb, total)
            time.sleep(0.05)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process and its children so far (/proc/<pid>/stat fields
    14 and 15)."""
    total = 0
    for member in family(pid):
        try:
            fields = Path(f"/proc/{member}/stat").read_text().rpartition(")")[2].split()
        except FileNotFoundError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def provider_jwt(private_pem: bytes) -> str:
    return jwt.encode(
        {"iss": TEAM, "iat": int(time.time())},
        private_pem,
        algorithm="ES256",
        headers={"kid": KEY_ID},
    )


async def direct(
    kind: str, sim_url: str, private_pem: bytes, body: bytes, total: int, inflight: int
) -> dict[str, float]:
    """Straight to the simulator with ``kind`` = "httpx" or "h2client" (the relay's own)."""
    token = provider_jwt(private_pem)
    headers = {
        "authorization": f"bearer {token}",
        "apns-topic": BUNDLE + ".voip",
        "apns-push-type": "voip",
        "apns-priority": "10",
        "apns-expiration": "0",
    }
    clients: list[Any] = [
        httpx.AsyncClient(base_url=sim_url, http1=False, http2=True, timeout=60)
        if kind == "httpx"
        else H2Client(sim_url, timeout=60)
        for _ in range(CONNECTIONS)
    ]
    latencies: list[float] = []
    errors = 0
    next_index = 0

    async def worker() -> None:
        nonlocal errors, next_index
        while next_index < total:
            client = clients[next_index % CONNECTIONS]
            next_index += 1
            started = time.perf_counter()
            response = await client.post(f"/3/device/{DEVICE}", content=body, headers=headers)
            latencies.append(time.perf_counter() - started)
            errors += response.status_code != 200

    began = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(inflight)))
    elapsed = time.perf_counter() - began
    for c in clients:
        await c.aclose()
    return {
        "rate": len(latencies) / elapsed,
        "p50_ms": percentile(latencies, 0.5) * 1000,
        "p99_ms": percentile(latencies, 0.99) * 1000,
        "errors": errors,
    }


def through_relay(
    relay_url: str, access: str, body_file: Path, total: int, inflight: int, tmp: Path
) -> dict[str, float]:
    log = tmp / f"h2load-{inflight}.log"
    threads = "2" if inflight >= 2 else "1"
    cmd = [
        "h2load", "--h1", "-t", threads, "-c", str(inflight), "-m", "1", "-n", str(total),
        "-d", str(body_file), "-H", "content-type: application/json",
        "-H", f"authorization: Bearer {access}", "--log-file", str(log),
        f"{relay_url}/v1/push",
    ]  # fmt: skip
    began = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    wall = time.perf_counter() - began
    rows = [line.split("\t") for line in log.read_text().splitlines() if line.strip()]
    latencies = [int(r[2]) / 1e6 for r in rows]  # h2load logs microseconds
    ok = sum(r[1] == "200" for r in rows)
    rate_line = next(line for line in out.splitlines() if line.startswith("finished in"))
    rate = float(rate_line.split(",")[1].split()[0])
    return {
        "rate": rate,
        "p50_ms": percentile(latencies, 0.5) * 1000,
        "p99_ms": percentile(latencies, 0.99) * 1000,
        "errors": len(rows) - ok,
        "wall_s": wall,
    }


def delivered(sim_url: str) -> int:
    with httpx.Client(http1=False, http2=True) as c:
        return len(c.get(f"{sim_url}/_sim/delivered").json())


def clear(sim_url: str) -> None:
    with httpx.Client(http1=False, http2=True) as c:
        c.delete(f"{sim_url}/_sim/delivered")


async def setup(tmp: Path, relay_port: int, p8_file: Path) -> str:
    """Tenant, app and voucher, written to the relay's database before it starts."""
    from ucpush.config import Settings
    from ucpush.relay.server import public_url

    settings = Settings(data_dir=tmp)
    async with await open_store(settings.store_url) as store:
        identity = Identity(store.relay, public_url(settings, relay_port), 3600)
        await identity.load()
        onboarding = Onboarding(store.relay, identity)
        voucher = await onboarding.create_voucher("bench", timedelta(hours=1))
        await store.relay.put_app(
            ProviderApp(
                tenant_id=voucher.tenant.id,
                service="APNS",
                topic=BUNDLE,
                credentials_file=str(p8_file),
                team_id=TEAM,
                key_id=KEY_ID,
            )
        )
    return voucher.code


@dataclass
class SimStack:
    """The APNs simulator as its own process, trusting our signing key and knowing the
    bench's device tokens, plus the relay's database prepared for it (tenant, app, voucher);
    ``start_relay`` runs ``ucpush relay serve`` on it."""

    tmp: Path
    env: dict[str, str]
    sim: subprocess.Popen[bytes]
    sim_url: str
    private_pem: bytes
    relay_port: int
    voucher: str
    procs: list[subprocess.Popen[bytes]]

    @property
    def relay_url(self) -> str:
        return f"http://127.0.0.1:{self.relay_port}"

    def start_relay(self, **settings: str) -> subprocess.Popen[bytes]:
        """``settings``: more ``UCPUSH_RELAY__*`` variables (e.g. WORKERS="2")."""
        env = {
            **self.env,
            "UCPUSH_RELAY__PORT": str(self.relay_port),
            "UCPUSH_RELAY__APNS_PRODUCTION_URL": self.sim_url,
            **{f"UCPUSH_RELAY__{k}": v for k, v in settings.items()},
        }
        relay = subprocess.Popen([sys.executable, "-m", "ucpush", "relay", "serve"], env=env)
        self.procs.append(relay)
        wait_http(f"{self.relay_url}/healthz")
        return relay


@contextlib.contextmanager
def sim_stack(tmp: Path, tokens: Iterable[str]) -> Iterator[SimStack]:
    """Start the APNs simulator and prepare the relay's database; every process started
    through the stack is stopped on exit. Usable from async code too (the database set-up
    runs on a thread of its own)."""
    env = {**os.environ, "UCPUSH_DATA_DIR": str(tmp), "UCPUSH_LOG__LEVEL": "warning"}
    procs: list[subprocess.Popen[bytes]] = []
    try:
        private_pem, public_pem = make_apns_key()
        p8_file = tmp / "AuthKey.p8"
        p8_file.write_bytes(private_pem)
        sim_port, relay_port = free_port(), free_port()
        sim_url = f"http://127.0.0.1:{sim_port}"
        sim_env = {
            **env,
            "UCPUSH_SIM__APNS_PORT": str(sim_port),
            "UCPUSH_SIM__APNS_SANDBOX_PORT": str(free_port()),
            "UCPUSH_SIM__FCM_PORT": str(free_port()),
        }
        sim = subprocess.Popen([sys.executable, "-m", "ucpush", "sim", "serve"], env=sim_env)
        procs.append(sim)
        wait_http(f"{sim_url}/_sim/delivered", http2=True)
        with httpx.Client(http1=False, http2=True) as c:
            c.post(
                f"{sim_url}/_sim/keys",
                json={"team_id": TEAM, "key_id": KEY_ID, "public_key_pem": public_pem.decode()},
            )
            for token in tokens:
                c.post(f"{sim_url}/_sim/devices", json={
                    "token": token, "topic": BUNDLE, "environment": "production"})  # fmt: skip
        with ThreadPoolExecutor(1) as thread:
            voucher = thread.submit(asyncio.run, setup(tmp, relay_port, p8_file)).result()
        yield SimStack(tmp, env, sim, sim_url, private_pem, relay_port, voucher, procs)
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGINT)
        for p in procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer pushes (smoke run)")
    parser.add_argument(
        "--only", type=int, metavar="N", help="one concurrency (e.g. to profile the relay)"
    )
    parser.add_argument(
        "--workers",
        default="1,2",
        help="relay.workers values to measure, comma-separated (default: 1,2)",
    )
    args = parser.parse_args()
    worker_counts = [int(w) for w in args.workers.split(",")]
    if not shutil.which("h2load"):
        sys.exit("h2load not found: install Debian package nghttp2-client (./dev does)")
    plan = (
        [(1, 500), (100, 5000), (1000, 5000)]
        if args.quick
        else [(1, 2000), (100, 20000), (1000, 20000)]
    )
    if args.only is not None:
        plan = [(n, total) for n, total in plan if n == args.only] or [(args.only, 20000)]
    tmp = Path(tempfile.mkdtemp(prefix="ucpush-bench-"))
    try:
        with sim_stack(tmp, [DEVICE]) as stack:
            results = run_plan(stack, plan, worker_counts)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    report(results)


def run_plan(
    stack: SimStack, plan: list[tuple[int, int]], worker_counts: list[int]
) -> list[dict[str, Any]]:
    tmp, sim, sim_url, private_pem = stack.tmp, stack.sim, stack.sim_url, stack.private_pem
    relay_url, voucher = stack.relay_url, stack.voucher
    payload = jwe.encrypt(
        json.dumps({"callId": str(uuid.uuid4()), "caller": "Bench", "number": "1000"}).encode(),
        os.urandom(32),
    )
    body_file = tmp / "push.json"
    body_file.write_text(json.dumps({
        "target": DEVICE, "service": "APNS", "push_type": "voip",
        "tracking_id": "bench", "payload": payload}))  # fmt: skip
    apns_body = json.dumps({"aps": {}, "jwe": payload}, separators=(",", ":")).encode()
    refresh: str | None = None
    results = []
    for workers in worker_counts:
        relay = stack.start_relay(APNS_CONNECTIONS=str(CONNECTIONS), WORKERS=str(workers))

        async def credentials(refresh_token: str | None) -> tuple[str, str]:
            if refresh_token is None:
                enrollment = await RelayClient.enroll(relay_url, voucher, "bench-cluster")
                refresh_token = enrollment.refresh_token
            async with RelayClient(relay_url, refresh_token) as client:
                return refresh_token, await client.access_token()

        refresh, access = aio.run(credentials(refresh))
        sampler = RssSampler(relay.pid)
        sampler.start()
        for inflight, total in plan:
            clear(sim_url)
            sampler.peak_kb = 0
            cpu_before = {n: cpu_seconds(p.pid) for n, p in (("relay", relay), ("sim", sim))}
            r = through_relay(relay_url, access, body_file, total, inflight, tmp)
            r["delivered"] = delivered(sim_url)
            r["rss_mb"] = sampler.peak_kb / 1024
            # CPU per push shows which process limits the rate on a shared machine.
            for name, p in (("relay", relay), ("sim", sim)):
                r[f"{name}_cpu_us"] = (cpu_seconds(p.pid) - cpu_before[name]) / total * 1e6
            row = {"workers": workers, "inflight": inflight, "pushes": total, "relay": r}
            for kind in ("h2client", "httpx"):
                clear(sim_url)
                d = aio.run(direct(kind, sim_url, private_pem, apns_body, total, inflight))
                d["delivered"] = delivered(sim_url)
                row[kind] = d
            results.append(row)
        sampler.running = False
        relay.send_signal(signal.SIGINT)
        relay.wait(20)
    return results


def report(results: list[dict[str, Any]]) -> None:
    table = Table(title="relay throughput: APNs simulator, VoIP pushes, same run")
    columns = (
        "relay workers", "in flight", "pushes", "relay push/s", "relay p50 ms", "relay p99 ms",
        "relay RSS MB",
        "relay CPU µs/push", "sim CPU µs/push",
        "direct h2 push/s", "direct h2 p99 ms", "httpx push/s", "httpx p99 ms",
        "relay/direct h2", "relay/httpx", "lost",
    )  # fmt: skip
    for col in columns:
        table.add_column(col, justify="right")
    lines = [
        "# relay throughput", "",
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}, load average before the run "
        f"{os.getloadavg()[0]:.1f}; simulator, relay and load generator share the machine.", "",
        "relay: h2load (HTTP/1.1) -> relay /v1/push (relay.workers processes on one port) -> "
        "HTTP/2 -> APNs simulator; relay CPU and RSS sum its processes. "
        "direct h2: the relay's own H2Client straight to the simulator; httpx: an httpx "
        f"HTTP/2 client straight to the simulator; {CONNECTIONS} connections each.", "",
        "| " + " | ".join(columns) + " |",
        "|" + "---|" * len(columns),
    ]  # fmt: skip
    for res in results:
        r, h, x = res["relay"], res["h2client"], res["httpx"]
        lost = sum(res["pushes"] - part["delivered"] for part in (r, h, x))
        row = [
            str(res["workers"]), str(res["inflight"]), str(res["pushes"]), f"{r['rate']:.0f}",
            f"{r['p50_ms']:.1f}",
            f"{r['p99_ms']:.1f}", f"{r['rss_mb']:.0f}", f"{r['relay_cpu_us']:.0f}",
            f"{r['sim_cpu_us']:.0f}", f"{h['rate']:.0f}", f"{h['p99_ms']:.1f}",
            f"{x['rate']:.0f}", f"{x['p99_ms']:.1f}", f"{r['rate'] / h['rate']:.2f}",
            f"{r['rate'] / x['rate']:.2f}", str(lost),
        ]  # fmt: skip
        table.add_row(*row)
        lines.append("| " + " | ".join(row) + " |")
        errors = {k: res[k]["errors"] for k in ("relay", "h2client", "httpx") if res[k]["errors"]}
        if errors:
            lines.append(f"\nerrors at {res['inflight']} in flight: {errors}")
    console.print(table)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "relay_throughput.md").write_text("\n".join(lines) + "\n")
    (RESULTS / "relay_throughput.json").write_text(json.dumps(results, indent=2) + "\n")
    console.print(f"written to {RESULTS / 'relay_throughput.md'}")


if __name__ == "__main__":
    main()
