"""Failover: time to the first push after kill -9 of the node holding the background devices.

    .venv/bin/python bench/failover.py [--devices 15000] [--calls 800] [--rate 40]

Not run by the test suite; writes bench/results/failover.{md,json}. Every component is its
own process (tests/support/callstack.py ``cluster_stack``): simulators, relay, and call nodes
``a`` and ``b`` in node group ``g`` (a primary), sharing a throwaway PostgreSQL database and
Redis, with the shipped cluster timing (``heartbeat_seconds`` 1, ``failure_timeout`` 3).

* Set-up: ``--devices`` background devices of node a: RFC 8599 push bindings (UDP contacts
  nobody answers, as an app in the background) written straight to the store before the nodes
  start, as ``bench/sip_register.py`` does; both nodes hold them (b as it would from a's
  published registrations).
* Baseline, same run, a alive: calls handled by b to ``--calls`` other devices at ``--rate``/s
  (open loop); **INVITE -> push at APNs** per call (simulator receive time minus send time).
* Failover: kill -9 of a (t0), then at once calls handled by b to ``--calls`` devices of a at
  the same rate. Reported: **time to first push** (t0 -> first push at the simulator), **time
  until pushes name b** as the active node (t0 -> first push whose payload says b), the
  INVITE -> push latency after the kill against the baseline, and pushes missing.
* Re-login storm, after the failover: ``--storm`` sign-ins (password grant, the test users on
  several devices each) sent to b at once, each client following ``Retry-After`` until it is
  served. Reported: the rate sign-ins were served at (slope of the 200s' arrival times) against
  the configured ``relogin_rate`` (4/s), and how many clients never got in.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import platform
import secrets
import ssl
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
import redis.asyncio as aioredis  # noqa: E402
from bench.call_wakeup import UA, paced  # noqa: E402
from tests.signin.helpers import PASSWORD as SIGNIN_PASSWORD  # noqa: E402
from tests.support.callstack import (  # noqa: E402
    BUNDLE,
    TEAM_ID,
    USERS,
    CallStack,
    ClusterNode,
    cluster_stack,
)
from tests.support.pg import pg_database  # noqa: E402

from ucpush.callpush.payload import PUBLIC_KEY  # noqa: E402
from ucpush.crypto import jwe  # noqa: E402
from ucpush.sip.helpers import build_ack  # noqa: E402
from ucpush.sip.resolve import Flow  # noqa: E402
from ucpush.store import open_store  # noqa: E402
from ucpush.store.repository import Binding  # noqa: E402

DOMAIN = "example.org"
RESULTS = ROOT / "bench" / "results"
REDIS_URL = "redis://127.0.0.1:6379/0"
TIMING = (1.0, 3.0)  # the shipped heartbeat_seconds, failure_timeout
RELOGIN_RATE = 4.0  # the shipped [cluster] relogin_rate
TARGET_SECONDS = 10.0  # issue 9: pushes resume within 10 s


def token_of(i: int) -> str:
    return f"{i:064x}"


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000 if ordered else 0.0


async def seed_bindings(store_url: str, count: int) -> None:
    """One background push binding per device ``d<i>``, written as a's write-behind would."""
    now = datetime.now(UTC)
    bindings = [
        Binding(
            id=f"{i:032x}",
            aor=f"sip:d{i}@{DOMAIN}",
            contact=(
                f"sip:d{i}@127.0.0.1:9;pn-provider=apns;pn-prid={token_of(i)};"
                f"pn-param={TEAM_ID}.{BUNDLE}.voip"
            ),
            expires_at=now + timedelta(hours=1),
            call_id=f"seed-{i}",
            cseq=2,
            updated_at=now,
            source_transport="UDP",
            source_host="127.0.0.1",
            source_port=9,  # discard: the app is in the background
            pn_provider="apns",
            pn_prid=token_of(i),
            pn_param=f"{TEAM_ID}.{BUNDLE}.voip",
            user_agent="bench",
        )
        for i in range(count)
    ]
    async with await open_store(store_url) as store:
        for start in range(0, count, 5000):
            await store.sip.apply_bindings(bindings[start : start + 5000], [])


def sim_client(ca_file: Path, apns: str) -> httpx.AsyncClient:
    ctx = ssl.create_default_context(cafile=str(ca_file))
    return httpx.AsyncClient(base_url=apns + "/_sim", verify=ctx, http2=True, timeout=30)


async def register_tokens(sim: httpx.AsyncClient, devices: list[int]) -> None:
    sem = asyncio.Semaphore(50)

    async def one(i: int) -> None:
        async with sem:
            answer = await sim.post("/devices", json={"token": token_of(i), "topic": BUNDLE})
            answer.raise_for_status()

    await asyncio.gather(*(one(i) for i in devices))


@dataclass
class Calls:
    sent: dict[str, float]  # INVITE send time by push token
    caller: UA
    acknowledged: asyncio.Future[list[None]]  # every final response ACKed

    async def close(self) -> None:
        await asyncio.wait_for(self.acknowledged, 40)
        await self.caller.transport.close()


async def call_devices(node: ClusterNode, devices: list[int], rate: float) -> Calls:
    """INVITEs to ``devices`` through ``node`` at ``rate``/s; send times by push token. Each
    call is held for its woken device and ends with 480 after the 13 s hold (ACKed); the
    caller does not wait for that."""
    caller = UA()
    await caller.transport.listen_udp("127.0.0.1", 0)
    host, port = node.sip_udp.split(":")
    target = Flow("UDP", host, int(port))
    sent: dict[str, float] = {}
    finals: list[asyncio.Task[None]] = []

    async def acknowledge(invite: Any, final: asyncio.Future[Any]) -> None:
        try:
            response, _, _ = await asyncio.wait_for(final, 30)
        except TimeoutError:
            return
        caller.transport.send(build_ack(invite, response), target)

    async def call(n: int) -> None:
        i = devices[n]
        invite = caller.request("INVITE", f"sip:d{i}@{DOMAIN}", "UDP", "caller")
        final = caller.expect(invite.call_id, "final")
        sent[token_of(i)] = time.time()
        caller.transport.send(invite, target)
        finals.append(asyncio.create_task(acknowledge(invite, final)))

    await paced(rate, len(devices), call)
    return Calls(sent, caller, asyncio.gather(*finals))


async def deliveries(sim: httpx.AsyncClient) -> dict[str, dict[str, Any]]:
    """The first push per token at the simulator."""
    first: dict[str, dict[str, Any]] = {}
    for d in (await sim.get("/delivered")).json():
        if d["token"] not in first or d["received_at"] < first[d["token"]]["received_at"]:
            first[d["token"]] = d
    return first


def active_node(delivery: dict[str, Any]) -> str:
    payload = json.loads(base64.b64decode(delivery["payload"]))
    return str(json.loads(jwe.decrypt(payload["jwe"], PUBLIC_KEY))["active_node"])


async def wait_pushes(sim: httpx.AsyncClient, tokens: set[str], within: float) -> dict[str, Any]:
    deadline = time.monotonic() + within
    while True:
        seen = await deliveries(sim)
        if tokens <= seen.keys() or time.monotonic() > deadline:
            return seen
        await asyncio.sleep(0.5)


async def run(
    args: argparse.Namespace, url: str, stack: CallStack, a: ClusterNode, b: ClusterNode
) -> dict[str, Any]:
    async with await open_store(url) as store:
        await store.cluster.add_group("g", ["a", "b"], datetime.now(UTC))
    await asyncio.sleep(2 * TIMING[0])  # both nodes have read the group
    step = max(1, args.devices // (2 * args.calls))
    baseline_devices = list(range(0, args.devices, step))[: args.calls]
    failover_devices = list(range(step // 2 or 1, args.devices, step))[: args.calls]
    async with sim_client(stack.ca_file, stack.apns) as sim:
        await register_tokens(sim, baseline_devices + failover_devices)

        before = await call_devices(b, baseline_devices, args.rate)
        sent = before.sent
        seen = await wait_pushes(sim, set(sent), 20)
        baseline = [seen[t]["received_at"] - at for t, at in sent.items() if t in seen]
        baseline_names = {active_node(seen[t]) for t in sent if t in seen}
        baseline_missing = len(sent) - len(baseline)

        a.proc.kill()  # kill -9
        killed = time.time()
        during = await call_devices(b, failover_devices, args.rate)
        sent2 = during.sent
        seen = await wait_pushes(sim, set(sent2) | set(sent), 30)
        after = {t: seen[t] for t in sent2 if t in seen}
        latency = [after[t]["received_at"] - sent2[t] for t in after]
        first_push = min(d["received_at"] for d in after.values()) - killed
        naming_b = [d["received_at"] for d in after.values() if active_node(d) == b.sip_uri]
        first_naming_b = min(naming_b) - killed if naming_b else None
        await before.close()
        await during.close()
    storm = await relogin_storm(b, args.storm)
    return {
        "devices": args.devices,
        "calls": args.calls,
        "rate": args.rate,
        "heartbeat_seconds": TIMING[0],
        "failure_timeout": TIMING[1],
        "baseline": {
            "pushes": len(baseline),
            "missing": baseline_missing,
            "p50_ms": pct(baseline, 0.5),
            "p99_ms": pct(baseline, 0.99),
            "active_node_named": sorted(baseline_names),
        },
        "relogin": storm,
        "failover": {
            "pushes": len(latency),
            "missing": len(sent2) - len(latency),
            "p50_ms": pct(latency, 0.5),
            "p99_ms": pct(latency, 0.99),
            "first_push_after_kill_s": first_push,
            "first_push_naming_b_after_kill_s": first_naming_b,
            "pushes_naming_b": len(naming_b),
        },
    }


async def relogin_storm(node: ClusterNode, count: int) -> dict[str, Any]:
    served: list[float] = []
    retries = 0
    failed = 0

    async def sign_in(client: httpx.AsyncClient, n: int) -> None:
        nonlocal retries, failed
        form = {
            "grant_type": "password",
            "username": USERS[n % len(USERS)],
            "password": SIGNIN_PASSWORD,
            "device_id": f"storm-{n}",
        }
        for _ in range(100):
            answer = await client.post("/oauth/token", data=form)
            if answer.status_code == 503:
                retries += 1
                await asyncio.sleep(int(answer.headers["retry-after"]))
                continue
            if answer.status_code == 200:
                served.append(time.monotonic())
            else:
                failed += 1
            return
        failed += 1

    async with httpx.AsyncClient(base_url=node.api, timeout=60) as client:
        await asyncio.gather(*(sign_in(client, n) for n in range(count)))
    served.sort()
    return {
        "clients": count,
        "served": len(served),
        "failed": failed,
        "retries": retries,
        "configured_per_s": RELOGIN_RATE,
        "achieved_per_s": 1 / slope(served) if len(served) > 1 else 0.0,
        "span_s": served[-1] - served[0] if served else 0.0,
    }


def slope(times: list[float]) -> float:
    """Seconds per sign-in: least-squares slope of the served times against their order (the
    first and last answers alone would be skewed by the storm's own start-up)."""
    n = len(times)
    mean_i, mean_t = (n - 1) / 2, sum(times) / n
    num = sum((i - mean_i) * (t - mean_t) for i, t in enumerate(times))
    return num / sum((i - mean_i) ** 2 for i in range(n))


async def forget_keys(prefix: str) -> None:
    client = aioredis.from_url(REDIS_URL)
    keys = [k async for k in client.scan_iter(f"{prefix}:*")]
    if keys:
        await client.delete(*keys)
    await client.aclose()


def report(result: dict[str, Any]) -> str:
    base, fail, storm = result["baseline"], result["failover"], result["relogin"]
    load = os.getloadavg()
    first, naming = fail["first_push_after_kill_s"], fail["first_push_naming_b_after_kill_s"]
    naming_text = f"{naming:.2f}" if naming is not None else "never"
    naming_ratio = f"{naming / TARGET_SECONDS:.2f}x" if naming is not None else "-"
    return "\n".join(
        [
            "# Failover: pushes after kill -9 of the primary node",
            "",
            f"{datetime.now(UTC).isoformat(timespec='seconds')} - {platform.machine()}, "
            f"{os.cpu_count()} CPUs (shared with other work), Python "
            f"{platform.python_version()}; load average after the run {load[0]:.2f}. "
            "Generated by `bench/failover.py` (method in its docstring): "
            f"{result['devices']} background devices on node a, {result['calls']} calls per "
            f"phase at {result['rate']:g}/s through node b; heartbeat "
            f"{result['heartbeat_seconds']:g} s, failure timeout {result['failure_timeout']:g} s.",
            "",
            "| measure | value | vs |",
            "|---|---|---|",
            f"| kill -9 -> first push for a's devices (s) | {first:.2f} | "
            f"{first / TARGET_SECONDS:.2f}x of the 10 s target |",
            f"| kill -9 -> first push naming b as active node (s) | {naming_text} | "
            f"{naming_ratio} of the 10 s target |",
            f"| INVITE -> push p50 after the kill (ms) | {fail['p50_ms']:.1f} | "
            f"{fail['p50_ms'] / base['p50_ms']:.2f}x baseline |",
            f"| INVITE -> push p99 after the kill (ms) | {fail['p99_ms']:.1f} | "
            f"{fail['p99_ms'] / base['p99_ms']:.2f}x baseline |",
            f"| baseline INVITE -> push p50 / p99, a alive (ms) | "
            f"{base['p50_ms']:.1f} / {base['p99_ms']:.1f} | 1.00x |",
            f"| pushes after the kill / missing | {fail['pushes']} / {fail['missing']} | "
            f"baseline {base['pushes']} / {base['missing']} |",
            f"| pushes after the kill naming b | {fail['pushes_naming_b']} | |",
            "",
            "Before the kill every push named a (primary, alive): "
            f"{', '.join(base['active_node_named'])}. Pushes in the first failure-timeout window "
            "after the kill still name a: b has not yet seen a's heartbeat expire.",
            "",
            f"Re-login storm on b after the failover: {storm['clients']} sign-ins at once; "
            f"served {storm['served']}, never served {storm['failed']}, 503 + Retry-After "
            f"answers {storm['retries']}. Served at {storm['achieved_per_s']:.2f} sign-ins/s "
            f"(least-squares slope over {storm['span_s']:.1f} s) "
            f"against the configured {storm['configured_per_s']:g}/s "
            f"({storm['achieved_per_s'] / storm['configured_per_s']:.2f}x).",
            "",
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=15000)
    parser.add_argument("--calls", type=int, default=800)
    parser.add_argument("--rate", type=float, default=40.0)
    parser.add_argument("--storm", type=int, default=100, help="sign-ins in the re-login storm")
    parser.add_argument("--name", default="failover", help="results file name")
    args = parser.parse_args()
    prefix = f"ucpush-bench-{secrets.token_hex(4)}"
    with pg_database() as url, tempfile.TemporaryDirectory() as tmp:
        asyncio.run(seed_bindings(url, args.devices))
        try:
            with cluster_stack(
                Path(tmp), store_url=url, key_prefix=prefix, names=("a", "b"), timing=TIMING
            ) as (stack, (a, b)):
                result = asyncio.run(run(args, url, stack, a, b))
        finally:
            asyncio.run(forget_keys(prefix))
    text = report(result)
    print(text)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{args.name}.md").write_text(text)
    (RESULTS / f"{args.name}.json").write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
