"""Local push service capacity: RSS per authenticated session and delivery latency.

One node process runs ``LpnsService`` over TLS (trustme certificates) with an authorizer that
accepts every hello, so the numbers are the WebSocket service's own, not the database's. Several
client processes open N sessions between them, say hello, send keepalives (spread over
``--keepalive`` seconds) and acknowledge every push at once. When all sessions are up, the node
samples its RSS, then calls ``deliver()`` at ``--rate`` pushes/s on random devices and times
each from the call to the device's ack. Results: stdout, ``bench/results/lpns_sessions.md``
and ``.json``.

    .venv/bin/python bench/lpns_sessions.py [--sessions 20000] [--procs 2] [--rate 500]

Needs as many file descriptors as sessions: the soft limit is raised to the hard one, and the
hard one too when running as root.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import platform
import random
import resource
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).parent / "results"
_SPARE_FDS = 100


def raise_fd_limit(wanted: int) -> int:
    """Raise the open-file limit towards ``wanted``; return the limit reached."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard < wanted:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, wanted))
            return wanted
        except (ValueError, PermissionError):
            wanted = hard
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, wanted), hard))
    return max(soft, wanted)


def rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


# node process


class AcceptAll:
    """Authorizer without a database: every hello is a session on SSID ``Bench``."""

    async def authorize_local_push(self, access_token: str, ssid: str, device_id: str) -> Any:
        from ucpush.lpns.session import LocalPushGrant

        return LocalPushGrant(device_id, device_id, frozenset({"Bench"}), time.time() + 86400)

    async def recheck_local_push(self, sessions: list[Any]) -> dict[str, tuple[int, str]]:
        return {}


async def node_main(args: argparse.Namespace) -> None:
    from ucpush.config import LogSettings, LpnsSettings
    from ucpush.crypto.jwe import encrypt
    from ucpush.logging import configure_logging
    from ucpush.lpns.service import LocalPushOutcome, LpnsService, server_ssl_context

    configure_logging(LogSettings(level="warning"))  # stdout carries the results
    settings = LpnsSettings(
        port=0,
        keepalive_seconds=120,
        hello_timeout=60,
        ack_timeout=2.0,
        max_sessions=args.sessions + 100,
        recheck_seconds=3600,
    )
    context = None if args.plain else server_ssl_context(args.cert, args.key)
    lpns = LpnsService(settings, AcceptAll(), ssl_context=context)
    async with lpns:
        baseline = rss_kib()
        print(json.dumps({"port": lpns.port, "rss_kib": baseline}), flush=True)
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, sys.stdin.readline)  # "go": every client is ready
        sessions = lpns.session_count
        loaded = rss_kib()
        if args.gc_freeze:
            # Sessions are long-lived: keep them out of the collector's full scans.
            gc.freeze()
        pauses: list[float] = []
        gc.callbacks.append(_gc_timer(pauses))
        devices = [f"d{p}-{i}" for p in range(args.procs) for i in range(args.per_proc)]
        payload = encrypt(b'{"caller":"Bench","number":"1000"}', os.urandom(32))
        latencies: list[float] = []
        outcomes: dict[str, int] = {}

        async def one(device: str) -> None:
            started = time.perf_counter()
            result = await lpns.deliver(device, "voip", payload)
            if result.outcome is LocalPushOutcome.DELIVERED:
                latencies.append((time.perf_counter() - started) * 1000)
            outcomes[result.outcome.value] = outcomes.get(result.outcome.value, 0) + 1

        tasks = []
        interval = 1 / args.rate
        start = time.perf_counter()
        for n in range(args.pushes):
            # Open loop: pushes leave on schedule whether or not earlier ones were acked.
            delay = start + n * interval - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(random.choice(devices))))
        await asyncio.gather(*tasks)
        elapsed = time.perf_counter() - start
        latencies.sort()
        print(
            json.dumps(
                {
                    "sessions": sessions,
                    "rss_baseline_kib": baseline,
                    "rss_loaded_kib": loaded,
                    "rss_per_session_kib": (loaded - baseline) / max(sessions, 1),
                    "pushes": args.pushes,
                    "rate_target": args.rate,
                    "rate_achieved": args.pushes / elapsed,
                    "outcomes": outcomes,
                    "gc_freeze": args.gc_freeze,
                    "gc_full_collections": len(pauses),
                    "gc_full_pause_max_ms": max(pauses, default=0.0),
                    "latency_ms": {
                        "p50": statistics.median(latencies),
                        "p99": latencies[int(len(latencies) * 0.99) - 1],
                        "max": latencies[-1],
                    },
                }
            ),
            flush=True,
        )


def _gc_timer(pauses: list[float]) -> Any:
    """A gc callback appending the duration of every full (generation 2) collection, in ms."""
    started = 0.0

    def callback(phase: str, info: dict[str, int]) -> None:
        nonlocal started
        if info["generation"] != 2:
            return
        if phase == "start":
            started = time.perf_counter()
        else:
            pauses.append((time.perf_counter() - started) * 1000)

    return callback


# client processes


async def clients_main(args: argparse.Namespace) -> None:
    from websockets.asyncio.client import connect

    context = None if args.plain else ssl.create_default_context(cafile=args.ca)
    scheme = "ws" if args.plain else "wss"
    opening = asyncio.Semaphore(100)  # handshakes in flight
    ready = 0
    done = asyncio.Event()

    async def device(n: int) -> None:
        nonlocal ready
        async with opening:
            ws = await connect(
                f"{scheme}://127.0.0.1:{args.port}/",
                ssl=context,
                open_timeout=120,
                compression=None,
                ping_interval=None,
                max_queue=4,
            )
            await ws.send(
                json.dumps(
                    {
                        "type": "hello",
                        "access_token": "bench",
                        "ssid": "Bench",
                        "device_id": f"d{args.proc}-{n}",
                    }
                )
            )
            await ws.recv()
        ready += 1
        if ready == args.per_proc:
            done.set()
        next_keepalive = time.monotonic() + random.uniform(0, args.keepalive)
        while True:
            try:
                async with asyncio.timeout(max(0.0, next_keepalive - time.monotonic())):
                    frame = await ws.recv()
            except TimeoutError:
                await ws.send('{"type":"keepalive"}')
                next_keepalive += args.keepalive
                continue
            message = json.loads(frame)
            if message["type"] == "push":
                await ws.send(json.dumps({"type": "ack", "id": message["id"]}))

    tasks = [asyncio.create_task(device(n)) for n in range(args.per_proc)]
    await done.wait()
    print("ready", flush=True)
    await asyncio.gather(*tasks)


# orchestration


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, default=20000)
    parser.add_argument("--procs", type=int, default=2, help="client processes")
    parser.add_argument("--rate", type=int, default=500, help="pushes per second")
    parser.add_argument("--pushes", type=int, default=15000)
    parser.add_argument("--keepalive", type=float, default=60.0, help="client keepalive, s")
    parser.add_argument(
        "--gc-freeze", action="store_true", help="gc.freeze() in the node once sessions are up"
    )
    parser.add_argument("--plain", action="store_true", help="ws:// (to see what TLS costs)")
    parser.add_argument("--role", choices=["main", "node", "clients"], default="main")
    parser.add_argument("--proc", type=int, default=0)
    parser.add_argument("--per-proc", type=int, default=0)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--cert", default="")
    parser.add_argument("--key", default="")
    parser.add_argument("--ca", default="")
    args = parser.parse_args()
    limit = raise_fd_limit(args.sessions + 1024)
    if args.role == "main" and args.sessions > limit - _SPARE_FDS:
        # The node needs one descriptor per session plus a few of its own.
        print(f"open-file limit {limit}: running {limit - _SPARE_FDS} sessions", file=sys.stderr)
        args.sessions = limit - _SPARE_FDS
    args.per_proc = args.per_proc or args.sessions // args.procs

    from ucpush.aio import run

    if args.role == "node":
        run(node_main(args))
        return
    if args.role == "clients":
        run(clients_main(args))
        return
    orchestrate(args)


def orchestrate(args: argparse.Namespace) -> None:
    import trustme

    with tempfile.TemporaryDirectory() as tmp:
        ca = trustme.CA()
        cert = ca.issue_cert("127.0.0.1")
        paths = {name: str(Path(tmp) / f"{name}.pem") for name in ("ca", "cert", "key")}
        ca.cert_pem.write_to_path(paths["ca"])
        cert.cert_chain_pems[0].write_to_path(paths["cert"])
        cert.private_key_pem.write_to_path(paths["key"])
        me = [sys.executable, __file__]
        common = [
            *(["--plain"] if args.plain else []),
            f"--sessions={args.sessions}",
            f"--procs={args.procs}",
            f"--per-proc={args.per_proc}",
        ]
        node = subprocess.Popen(
            [
                *me,
                "--role=node",
                *common,
                f"--rate={args.rate}",
                f"--pushes={args.pushes}",
                *(["--gc-freeze"] if args.gc_freeze else []),
                f"--cert={paths['cert']}",
                f"--key={paths['key']}",
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert node.stdin and node.stdout
        port = json.loads(node.stdout.readline())["port"]
        started = time.perf_counter()
        clients = [
            subprocess.Popen(
                [
                    *me,
                    "--role=clients",
                    *common,
                    f"--proc={p}",
                    f"--port={port}",
                    f"--ca={paths['ca']}",
                    f"--keepalive={args.keepalive}",
                ],
                stdout=subprocess.PIPE,
                text=True,
            )
            for p in range(args.procs)
        ]
        try:
            for client in clients:
                assert client.stdout and client.stdout.readline().strip() == "ready"
            connect_seconds = time.perf_counter() - started
            node.stdin.write("go\n")
            node.stdin.flush()
            result = json.loads(node.stdout.readline())
        finally:
            for process in (*clients, node):
                process.terminate()
            for process in (*clients, node):
                process.wait()
    result["connect_seconds"] = connect_seconds
    result["machine"] = (
        f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}"
    )
    result["date"] = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    report(result)


def report(r: dict[str, Any]) -> None:
    lat = r["latency_ms"]
    gc_row = (
        f"{r['gc_full_collections']}, longest {r['gc_full_pause_max_ms']:.0f} ms"
        f" (gc.freeze: {r['gc_freeze']})"
    )
    text = f"""# Local push sessions

`bench/lpns_sessions.py --sessions {r["sessions"]}`: one node process (LpnsService, TLS,
uvloop, authorizer without database), {r["sessions"]} authenticated sessions from several
client processes on the same machine, keepalives running; then {r["pushes"]} VoIP pushes
through `deliver()` at {r["rate_target"]}/s on random devices, each timed from the call to the
device's ack. {r["machine"]}; {r["date"]}.

| measure | value |
|---|---|
| sessions | {r["sessions"]} (all up in {r["connect_seconds"]:.1f} s) |
| node RSS, no sessions | {r["rss_baseline_kib"] / 1024:.1f} MiB |
| node RSS, all sessions | {r["rss_loaded_kib"] / 1024:.1f} MiB |
| RSS per session | {r["rss_per_session_kib"]:.1f} KiB |
| push rate achieved | {r["rate_achieved"]:.0f}/s |
| outcomes | {", ".join(f"{k} {v}" for k, v in sorted(r["outcomes"].items()))} |
| delivery latency p50 | {lat["p50"]:.2f} ms |
| delivery latency p99 | {lat["p99"]:.2f} ms |
| delivery latency max | {lat["max"]:.2f} ms |
| full GC runs during pushes | {gc_row} |
"""
    print(text)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "lpns_sessions.md").write_text(text)
    (RESULTS / "lpns_sessions.json").write_text(json.dumps(r, indent=2) + "\n")


if __name__ == "__main__":
    main()
