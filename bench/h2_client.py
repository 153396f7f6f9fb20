"""APNs-style POSTs/s and latency: httpx's HTTP/2 client against ucpush's ``H2Client``.

The APNs simulator runs in its own process (``python -m ucpush sim serve``, h2c on loopback).
For each concurrency (requests in flight) both clients send the same number of VoIP pushes
over 4 connections in the same run, on the same event loop implementation; each run is
preceded by a short warm-up and checked afterwards against the simulator's delivery count.
Results: table on stdout and ``bench/results/h2_client.md``.

    .venv/bin/python bench/h2_client.py [--requests 20000] [--loop uvloop|asyncio]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import h2
import httpx
import jwt
import uvloop
from rich.console import Console
from rich.table import Table

from ucpush.relay.providers.h2client import H2Client
from ucpush.sim.credentials import make_apns_key

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
TEAM, KEY_ID, BUNDLE = "BENCHTEAM1", "BENCHKEY01", "org.example.bench"
DEVICES = [f"{i:064x}" for i in range(1, 1001)]  # pushes rotate over many devices, as in life
CONNECTIONS = 4
CONCURRENCY = (1, 100, 1000)
WARMUP = 500
BODY = b'{"aps":{},"jwe":"' + b"x" * 600 + b'","type":"voip","tid":"0123456789abcdef"}'
console = Console(width=140)

Post = Callable[[int, dict[str, str]], Awaitable[int]]  # (request index, headers) -> status
PATHS = [f"/3/device/{token}" for token in DEVICES]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def control(method: str, url: str, **kwargs: object) -> httpx.Response:
    with httpx.Client(http1=False, http2=True, timeout=30) as c:
        return c.request(method, url, **kwargs)  # type: ignore[arg-type]


def register_devices(url: str) -> None:
    with httpx.Client(http1=False, http2=True, timeout=30) as c:
        for token in DEVICES:
            c.post(f"{url}/_sim/devices", json={"token": token, "topic": BUNDLE})


def wait_up(url: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            control("GET", f"{url}/_sim/health")
            return
        except httpx.TransportError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not come up")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def apns_headers(token: str) -> dict[str, str]:
    return {
        "authorization": f"bearer {token}",
        "apns-topic": BUNDLE + ".voip",
        "apns-push-type": "voip",
        "apns-priority": "10",
        "apns-expiration": "0",
        "apns-id": "",  # set per request
    }


async def drive(post: Post, token: str, total: int, inflight: int) -> dict[str, float]:
    """``total`` requests from ``inflight`` workers; each request gets a fresh apns-id."""
    latencies: list[float] = []
    errors = 0
    next_index = 0

    async def worker() -> None:
        nonlocal errors, next_index
        headers = apns_headers(token)
        while next_index < total:
            index = next_index
            next_index += 1
            headers["apns-id"] = f"00000000-0000-4000-8000-{index:012d}"
            started = time.perf_counter()
            status = await post(index, headers)
            latencies.append(time.perf_counter() - started)
            errors += status != 200

    began, cpu_began = time.perf_counter(), time.process_time()
    await asyncio.gather(*(worker() for _ in range(inflight)))
    elapsed = time.perf_counter() - began
    return {
        "rate": len(latencies) / elapsed,
        "p50_ms": percentile(latencies, 0.5) * 1000,
        "p99_ms": percentile(latencies, 0.99) * 1000,
        # Client CPU per request: the simulator, a single Python process, caps the rate, so
        # this is what shows how much of a core each client needs.
        "cpu_us": (time.process_time() - cpu_began) / len(latencies) * 1e6,
        "errors": errors,
    }


async def run_httpx(url: str, token: str, total: int, inflight: int) -> dict[str, float]:
    # As the relay used it: one AsyncClient per connection, limits lifted.
    clients = [
        httpx.AsyncClient(
            base_url=url,
            http1=False,
            http2=True,
            timeout=60,
            limits=httpx.Limits(max_connections=8, keepalive_expiry=None),
        )
        for _ in range(CONNECTIONS)
    ]

    async def post(index: int, headers: dict[str, str]) -> int:
        response = await clients[index % CONNECTIONS].post(
            PATHS[index % len(PATHS)], content=BODY, headers=headers
        )
        return response.status_code

    try:
        await drive(post, token, WARMUP, min(inflight, 100))
        return await drive(post, token, total, inflight)
    finally:
        for client in clients:
            await client.aclose()


async def run_h2client(url: str, token: str, total: int, inflight: int) -> dict[str, float]:
    clients = [H2Client(url, timeout=60) for _ in range(CONNECTIONS)]

    async def post(index: int, headers: dict[str, str]) -> int:
        response = await clients[index % CONNECTIONS].post(
            PATHS[index % len(PATHS)], content=BODY, headers=headers
        )
        return response.status_code

    try:
        await drive(post, token, WARMUP, min(inflight, 100))
        return await drive(post, token, total, inflight)
    finally:
        for client in clients:
            await client.aclose()


RUNNERS = {"httpx": run_httpx, "h2client": run_h2client}


def run_on_loop(loop_name: str, coro: Awaitable[dict[str, float]]) -> dict[str, float]:
    factory = uvloop.new_event_loop if loop_name == "uvloop" else asyncio.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(coro)  # type: ignore[arg-type]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop")
    parser.add_argument(
        "--repeat", type=int, default=2, help="runs per cell; the fastest is kept (shared host)"
    )
    args = parser.parse_args()

    private_pem, public_pem = make_apns_key()
    token = jwt.encode(
        {"iss": TEAM, "iat": int(time.time())},
        private_pem,
        algorithm="ES256",
        headers={"kid": KEY_ID},
    )
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        port = free_port()
        env = {
            **os.environ,
            "UCPUSH_DATA_DIR": tmp,
            "UCPUSH_SIM__APNS_PORT": str(port),
            "UCPUSH_SIM__APNS_SANDBOX_PORT": str(free_port()),
            "UCPUSH_SIM__FCM_PORT": str(free_port()),
        }
        sim = subprocess.Popen(
            [sys.executable, "-m", "ucpush", "sim", "serve"], env=env, stdout=subprocess.DEVNULL
        )
        url = f"http://127.0.0.1:{port}"
        results: dict[tuple[str, int], dict[str, float]] = {}
        try:
            wait_up(url)
            control(
                "POST",
                f"{url}/_sim/keys",
                json={"team_id": TEAM, "key_id": KEY_ID, "public_key_pem": public_pem.decode()},
            )
            register_devices(url)
            for inflight in CONCURRENCY:
                for _ in range(args.repeat):
                    for name, runner in RUNNERS.items():
                        control("DELETE", f"{url}/_sim/delivered")
                        result = run_on_loop(args.loop, runner(url, token, args.requests, inflight))
                        delivered = len(control("GET", f"{url}/_sim/delivered").json())
                        if result["errors"] or delivered != args.requests + WARMUP:
                            raise RuntimeError(f"{name}, {inflight}: {result}, {delivered} arrived")
                        best = results.get((name, inflight))
                        if best is None or result["rate"] > best["rate"]:
                            results[(name, inflight)] = result
                        console.print(
                            f"{name:>8} in flight {inflight:>4}: {result['rate']:7.0f} req/s, "
                            f"p50 {result['p50_ms']:.2f} ms, p99 {result['p99_ms']:.2f} ms, "
                            f"{result['cpu_us']:.0f} us CPU/req"
                        )
        finally:
            sim.terminate()
            sim.wait(10)
    report(results, args, (load_before, os.getloadavg()[0]))


def report(
    results: dict[tuple[str, int], dict[str, float]],
    args: argparse.Namespace,
    load: tuple[float, float],
) -> None:
    table = Table(title=f"{args.requests} APNs POSTs over {CONNECTIONS} connections")
    for column in (
        "in flight",
        "httpx req/s",
        "httpx p50/p99 ms",
        "httpx CPU us/req",
        "h2client req/s",
        "h2client p50/p99 ms",
        "h2client CPU us/req",
        "ratio req/s",
    ):
        table.add_column(column, justify="right")
    rows = []
    for inflight in CONCURRENCY:
        a, b = results[("httpx", inflight)], results[("h2client", inflight)]
        row = (
            str(inflight),
            f"{a['rate']:.0f}",
            f"{a['p50_ms']:.2f} / {a['p99_ms']:.2f}",
            f"{a['cpu_us']:.0f}",
            f"{b['rate']:.0f}",
            f"{b['p50_ms']:.2f} / {b['p99_ms']:.2f}",
            f"{b['cpu_us']:.0f}",
            f"{b['rate'] / a['rate']:.1f}x",
        )
        rows.append(row)
        table.add_row(*row)
    console.print(table)
    lines = [
        "# HTTP/2 client: httpx vs ucpush H2Client",
        "",
        f"`bench/h2_client.py --requests {args.requests} --loop {args.loop} "
        f"--repeat {args.repeat}`: "
        f"{args.requests} APNs VoIP POSTs ({len(BODY)}-byte body, provider JWT, "
        f"{len(DEVICES)} device tokens in turn) to the APNs "
        f"simulator (`ucpush sim serve`, h2c, separate process) over {CONNECTIONS} connections, "
        f"after {WARMUP} warm-up requests; every push verified delivered. Both clients run on "
        f"{args.loop} in one process; best of {args.repeat} runs per cell (the host is shared). "
        "The simulator is one Python process and caps the rate: client CPU per request shows "
        "the clients' own cost.",
        "",
        f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
        f"httpx {httpx.__version__}, h2 {h2.__version__}; simulator and client share the machine "
        f"(1-minute load average {load[0]:.1f} before, {load[1]:.1f} after).",
        "",
        "| in flight | httpx req/s | httpx p50 / p99 ms | httpx CPU µs/req | H2Client req/s "
        "| H2Client p50 / p99 ms | H2Client CPU µs/req | ratio req/s |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
        *("| " + " | ".join(row) + " |" for row in rows),
        "",
    ]
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "h2_client.md").write_text("\n".join(lines))


if __name__ == "__main__":
    main()
