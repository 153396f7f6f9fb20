"""What the node's way to the relay costs per push: plain httpx, our failover transport, squid.

Processes: the APNs simulator, the relay (plain HTTP on loopback) and squid (basic and digest
proxy auth, no cache); this process is the node. For each concurrency the same encrypted VoIP
pushes are sent four ways in the same run (interleaved rounds, median rate), with the same
access token:

- **httpx**: an ``httpx.AsyncClient`` with its default transport posting ``/v1/push`` (what
  ``RelayClient`` did before it had a proxy): the baseline;
- **direct**: ``RelayClient.send_encrypted`` through ``FailoverTransport`` without a proxy;
- **basic** / **digest**: the same through a squid ``CONNECT`` tunnel.

Every push must reach the simulator (checked after each path). Results: table on stdout,
``bench/results/relay_proxy.md`` and ``.json``; rates as ratios to the httpx baseline.

    .venv/bin/python bench/relay_proxy.py [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import pwd
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.table import Table

from relay_throughput import (
    DEVICE,
    SimStack,
    clear,
    delivered,
    free_port,
    percentile,
    sim_stack,
    wait_http,
)
from ucpush import aio
from ucpush.crypto import jwe
from ucpush.relay.client import RelayClient
from ucpush.relay.providers.base import PushType
from ucpush.relay.proxy import ProxySettings

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
SQUID_HELPERS = Path("/usr/lib/squid")
PATHS = ("httpx", "direct", "basic", "digest")
ROUNDS = 3
console = Console(width=160)


def start_squid(work: Path, port: int) -> subprocess.Popen[bytes]:
    hashed = subprocess.run(
        ["openssl", "passwd", "-apr1", "-stdin"],
        input=b"bench",
        capture_output=True,
        check=True,
    ).stdout.decode()
    (work / "basic.pw").write_text(f"bench:{hashed}")
    (work / "digest.pw").write_text("bench:bench\n")
    config = [
        f"http_port 127.0.0.1:{port}",
        f"pid_filename {work}/squid.pid",
        f"cache_log {work}/cache.log",
        "access_log none",
        f"coredump_dir {work}",
        "cache deny all",
        "cache_mem 0 MB",
        "pinger_enable off",
        "shutdown_lifetime 0 seconds",
        f"auth_param basic program {SQUID_HELPERS}/basic_ncsa_auth {work}/basic.pw",
        f"auth_param digest program {SQUID_HELPERS}/digest_file_auth {work}/digest.pw",
        "auth_param digest realm bench",
        "acl authenticated proxy_auth REQUIRED",
        "http_access allow authenticated",
        "http_access deny all",
    ]
    if os.geteuid() == 0:  # squid will not run as root; its files must belong to its user
        config.append("cache_effective_user proxy")
        user = pwd.getpwnam("proxy")
        for path in [work, *work.iterdir()]:
            os.chown(path, user.pw_uid, user.pw_gid)
    (work / "squid.conf").write_text("\n".join(config) + "\n")
    return subprocess.Popen(["squid", "-N", "-f", str(work / "squid.conf")])


async def run_path(
    send: Callable[[], Awaitable[None]], total: int, inflight: int
) -> dict[str, float]:
    latencies: list[float] = []
    errors = 0
    remaining = total

    async def worker() -> None:
        nonlocal remaining, errors
        while remaining > 0:
            remaining -= 1
            started = time.perf_counter()
            try:
                await send()
            except Exception:
                errors += 1
                continue
            latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(inflight)))
    elapsed = time.perf_counter() - started
    return {
        "rate": len(latencies) / elapsed,
        "p50_ms": percentile(latencies, 0.5) * 1000,
        "p99_ms": percentile(latencies, 0.99) * 1000,
        "errors": errors,
    }


async def measure(
    relay_url: str, sim_url: str, refresh: str, proxy_port: int, plan: list[tuple[int, int]]
) -> list[dict[str, Any]]:
    payload = jwe.encrypt(json.dumps({"callId": str(uuid.uuid4())}).encode(), os.urandom(32))
    body = {
        "target": DEVICE,
        "service": "APNS",
        "push_type": "voip",
        "tracking_id": "bench",
        "payload": payload,
    }
    clients = {
        "direct": RelayClient(relay_url, refresh),
        "basic": RelayClient(
            relay_url,
            refresh,
            proxy=ProxySettings("http", "127.0.0.1", proxy_port, "bench", "bench", "basic"),
        ),
        "digest": RelayClient(
            relay_url,
            refresh,
            proxy=ProxySettings("http", "127.0.0.1", proxy_port, "bench", "bench", "digest"),
        ),
    }
    token = await clients["direct"].access_token()
    baseline = httpx.AsyncClient(
        base_url=relay_url,
        headers={"authorization": f"Bearer {token}"},
        limits=httpx.Limits(max_connections=100, max_keepalive_connections=100),
    )

    async def via_httpx() -> None:
        (await baseline.post("/v1/push", json=body)).raise_for_status()

    def via(client: RelayClient) -> Callable[[], Awaitable[None]]:
        async def send() -> None:
            await client.send_encrypted(
                target=DEVICE,
                service="APNS",
                push_type=PushType.VOIP,
                jwe_payload=payload,
                tracking_id="bench",
            )

        return send

    senders = {"httpx": via_httpx, **{name: via(c) for name, c in clients.items()}}
    results = []
    try:
        for inflight, total in plan:
            rounds: dict[str, list[dict[str, float]]] = {name: [] for name in PATHS}
            for name in PATHS:
                await run_path(senders[name], min(100, total), inflight)  # warm the connections
            # Interleaved rounds, median kept: the machine is shared and its load drifts.
            for _ in range(ROUNDS):
                for name in PATHS:
                    clear(sim_url)
                    measured = await run_path(senders[name], total, inflight)
                    measured["delivered"] = delivered(sim_url)
                    rounds[name].append(measured)
            row: dict[str, Any] = {"inflight": inflight, "pushes": total, "rounds": ROUNDS}
            for name, runs in rounds.items():
                median = sorted(runs, key=lambda r: r["rate"])[len(runs) // 2]
                row[name] = {
                    **median,
                    "delivered": min(r["delivered"] for r in runs),
                    "errors": sum(r["errors"] for r in runs),
                }
            results.append(row)
    finally:
        await baseline.aclose()
        for client in clients.values():
            await client.aclose()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer pushes (smoke run)")
    args = parser.parse_args()
    if not shutil.which("squid"):
        sys.exit("squid not found: install Debian package squid (./dev does)")
    plan = [(1, 300), (32, 1000)] if args.quick else [(1, 1000), (32, 4000)]
    tmp = Path(tempfile.mkdtemp(prefix="ucpush-bench-"))
    try:
        with sim_stack(tmp, [DEVICE]) as stack:
            stack.start_relay()
            results = _with_squid(stack, plan)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    report(results)


def _with_squid(stack: SimStack, plan: list[tuple[int, int]]) -> list[dict[str, Any]]:
    """Squid in front of the stack's relay (stopped with the stack), then the measurement."""
    proxy_port = free_port()
    squid_dir = stack.tmp / "squid"
    squid_dir.mkdir()
    squid_dir.chmod(0o755)
    stack.tmp.chmod(0o755)  # squid's user must reach its directory
    stack.procs.append(start_squid(squid_dir, proxy_port))
    wait_http(f"http://127.0.0.1:{proxy_port}/")

    async def run() -> list[dict[str, Any]]:
        enrollment = await RelayClient.enroll(stack.relay_url, stack.voucher, "bench-cluster")
        return await measure(
            stack.relay_url, stack.sim_url, enrollment.refresh_token, proxy_port, plan
        )

    return aio.run(run())


def report(results: list[dict[str, Any]]) -> None:
    columns = ["in flight", "pushes"]
    for name in PATHS:
        columns += [f"{name} push/s", f"{name} p99 ms"]
    columns += ["direct/httpx", "basic/httpx", "digest/httpx", "lost", "errors"]
    table = Table(title="node -> relay path: pushes/s, same run")
    for col in columns:
        table.add_column(col, justify="right")
    lines = [
        "# node -> relay path: failover transport and squid CONNECT tunnel",
        "",
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}, load average before the run "
        f"{os.getloadavg()[0]:.1f}; simulator, relay, squid and this client share the machine.",
        "",
        "httpx: default httpx transport (baseline); direct: RelayClient's FailoverTransport; "
        "basic/digest: RelayClient through squid with that proxy auth. HTTP/1.1 to the relay; "
        f"median of {ROUNDS} interleaved rounds per path.",
        "",
        "| " + " | ".join(columns) + " |",
        "|" + "---|" * len(columns),
    ]
    for res in results:
        base = res["httpx"]["rate"]
        lost = sum(res["pushes"] - res[name]["delivered"] for name in PATHS)
        errors = sum(res[name]["errors"] for name in PATHS)
        row = [str(res["inflight"]), str(res["pushes"])]
        for name in PATHS:
            row += [f"{res[name]['rate']:.0f}", f"{res[name]['p99_ms']:.1f}"]
        row += [f"{res[name]['rate'] / base:.2f}" for name in ("direct", "basic", "digest")]
        row += [str(lost), str(errors)]
        table.add_row(*row)
        lines.append("| " + " | ".join(row) + " |")
    console.print(table)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "relay_proxy.md").write_text("\n".join(lines) + "\n")
    (RESULTS / "relay_proxy.json").write_text(json.dumps(results, indent=2) + "\n")
    console.print(f"written to {RESULTS / 'relay_proxy.md'}")


if __name__ == "__main__":
    main()
