"""Chat push: messages/s from a real Prosody turned into pushes, and the latency the app
server adds (publish received on the component → relay accepted the push).

Set-up, all on loopback: Prosody (deploy/prosody config, as the tests start it), the APNs
simulator and the relay as their own processes (as bench/relay_throughput.py starts them),
and the chat push component in this process with the slixmpp clients. ``--users`` users
each enable push from a phone and sign off, so every message sent to them is stored offline
and published to the app server (Prosody's ``mod_cloud_notify`` pushes each offline
message). A sender process then sends messages round-robin at each of ``--rates`` per second for
``--seconds``.

Measured in the same run:

- **chat push**: pushes/s that reached the APNs simulator, and per publish the time from the
  component receiving it to the relay's answer (``PushDone.done_at - received_at``);
- **baseline**: the same number of pushes offered at the same rate straight through
  ``RelayClient``, i.e. the relay + simulator alone. The table gives chat push figures as ratios
  of the baseline, and the added latency as the difference of the medians.

Targets (issue 7): ≥ 500 pushes/s, p99 < 20 ms. Results: table on stdout,
``bench/results/chat_push.md`` and ``.json``.

    .venv/bin/python bench/chat_push.py [--rates 100,500] [--seconds 6] [--users 50]
        [--relay-connections 100]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the chat server harness lives with the tests

from tests.chat.phone import Client  # noqa: E402
from tests.chat.servers import ChatServer, prosody  # noqa: E402

from relay_throughput import clear, cpu_seconds, sim_stack  # noqa: E402
from relay_throughput import delivered as sim_delivered  # noqa: E402
from ucpush.chat import PushDone, registration_for, run_chat_push  # noqa: E402
from ucpush.config import ChatSettings, LogSettings, Settings  # noqa: E402
from ucpush.crypto import jwe  # noqa: E402
from ucpush.logging import configure_logging  # noqa: E402
from ucpush.relay.client import RelayClient  # noqa: E402
from ucpush.relay.providers.base import Outcome, PushType  # noqa: E402
from ucpush.store import Store, open_store  # noqa: E402
from ucpush.store.repository import Device, EndUser, Platform  # noqa: E402

RESULTS = ROOT / "bench" / "results"

KEY = bytes(range(32))
console = Console(width=160)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def token(i: int) -> str:
    return f"{i:064x}"


@contextlib.contextmanager
def relay_stack(tmp: Path, devices: int) -> Iterator[tuple[str, str, str]]:
    """The APNs simulator and the relay as their own processes (bench/relay_throughput.py's
    ``sim_stack``); yields the simulator URL, the relay URL and an onboarding voucher."""
    with sim_stack(tmp, [token(i) for i in range(devices)]) as stack:
        stack.start_relay()
        yield stack.sim_url, stack.relay_url, stack.voucher


async def add_devices(store: Store, users: list[str]) -> None:
    now = datetime.now(UTC)
    for i, user in enumerate(users):
        await store.signin.add_user(EndUser(f"u-{user}", user, "scrypt$x", now))
        device = Device(
            f"phone-{user}", f"u-{user}", Platform.IOS, "APNS", token(i), KEY, "k1", now, now
        )
        await store.signin.put_device(device)


async def chat_run(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    users = [f"user{i}" for i in range(args.users)]
    with (
        prosody(tmp, [*users, "sender"]) as server,
        relay_stack(tmp, len(users)) as (sim_url, relay_url, voucher),
    ):
        async with await open_store(f"sqlite+aiosqlite:///{tmp / 'node.db'}") as store:
            refresh_token = (await RelayClient.enroll(relay_url, voucher, "bench")).refresh_token
            current: dict[str, RelayClient] = {}
            await add_devices(store, users)
            secret_file = tmp / "component-secret"
            secret_file.write_text(server.component_secret)
            settings = Settings(
                data_dir=tmp / "node",
                chat=ChatSettings(
                    enabled=True,
                    server_port=server.component_port,
                    component_jid=server.component,
                    component_secret_file=str(secret_file),
                    node_rate=1000.0,  # the bench floods a few nodes on purpose
                    node_burst=1000,
                    max_in_flight=10_000,
                ),
            )
            done: list[PushDone] = []
            async with run_chat_push(
                settings, store, lambda: current["relay"], on_push_done=done.append
            ) as chat:
                for user in users:  # enable push, then sign off: messages go offline + push
                    phone = Client(server, user, f"phone-{user}")
                    await phone.start()
                    reg = registration_for(chat.service.node_key, server.component, reg_node(user))
                    await phone.enable_push(server.component, reg.node, reg.secret)
                    await phone.close()
                rows = []
                # httpx scans its whole HTTP/1.1 pool on every request, so the RelayClient's
                # pool size matters: each size is measured (100 is RelayClient's default).
                for pool in args.relay_connections:
                    async with RelayClient(relay_url, refresh_token, max_connections=pool) as relay:
                        current["relay"] = relay
                        for rate in args.rates:
                            row = await one_rate(rate, args, server, sim_url, done)
                            row["relay_connections"] = pool
                            # The baseline in the same run: the relay alone, same offered rate.
                            clear(sim_url)
                            row["baseline"] = await relay_alone(
                                relay, row["messages"], rate, len(users)
                            )
                            rows.append(row)
    return {"users": args.users, "seconds": args.seconds, "rows": rows}


async def one_rate(
    rate: float,
    args: argparse.Namespace,
    server: ChatServer,
    sim_url: str,
    done: list[PushDone],
) -> dict[str, Any]:
    """Offer ``rate`` messages/s for ``args.seconds`` from a sender in its own process (so
    its XMPP client does not share this process's CPU with the component)."""
    clear(sim_url)
    done.clear()
    total = int(rate * args.seconds)
    cpu_before = time.process_time(), cpu_seconds(server.pid)
    sender = await asyncio.create_subprocess_exec(
        sys.executable, __file__, "--send", str(server.c2s_port), f"{rate:g}",
        str(total), str(args.users),
    )  # fmt: skip
    if await sender.wait() != 0:
        raise RuntimeError("the sender failed")
    deadline = time.perf_counter() + 60
    while len(done) < total and time.perf_counter() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.01)
    elapsed = max(d.done_at for d in done) - min(d.received_at for d in done) if done else 0.0
    # CPU per publish shows which process limits the rate on a shared machine.
    own_cpu = (time.process_time() - cpu_before[0]) / max(1, len(done)) * 1e6
    prosody_cpu = (cpu_seconds(server.pid) - cpu_before[1]) / max(1, len(done)) * 1e6
    pushed = [d for d in done if d.pushed]
    total_ms = [(d.done_at - d.received_at) * 1000 for d in pushed]
    own_ms = [(d.sent_at - d.received_at) * 1000 for d in pushed]
    delivered = sim_delivered(sim_url)
    return {
        "rate": rate,
        "messages": total,
        "publishes": len(done),
        "delivered": delivered,
        "outcomes": dict(Counter(d.outcome for d in done)),
        "pushes_per_s": delivered / elapsed if elapsed else 0.0,
        "p50_ms": percentile(total_ms, 0.5),
        "p99_ms": percentile(total_ms, 0.99),
        "component_cpu_us": own_cpu,
        "prosody_cpu_us": prosody_cpu,
        "own_p50_ms": percentile(own_ms, 0.5),
        "own_p99_ms": percentile(own_ms, 0.99),
    }


def reg_node(user: str) -> str:
    return f"phone-{user}"


async def paced(total: int, rate: float, send: Callable[[int], object]) -> None:
    """Call ``send(n)`` for n < total at ``rate`` per second (open loop, 10 ms ticks)."""
    start = time.perf_counter()
    sent = 0
    while sent < total:
        due = min(total, int((time.perf_counter() - start) * rate) + 1)
        for n in range(sent, due):
            send(n)
        sent = due
        await asyncio.sleep(0.01)


async def relay_alone(
    relay: RelayClient, total: int, rate: float, devices: int
) -> dict[str, float]:
    """The relay + simulator alone: ``total`` pushes offered at ``rate`` per second."""
    payload = jwe.encrypt(b'{"type":"message","count":1}', KEY, kid="k1")
    latencies: list[float] = []
    tasks: list[asyncio.Task[None]] = []

    slots = asyncio.Semaphore(ChatSettings().relay_concurrency)  # as the component does

    async def one(i: int) -> None:
        t0 = time.perf_counter()
        async with slots:
            result = await relay.send_encrypted(
                target=token(i % devices),
                service="APNS",
                push_type=PushType.MESSAGE,
                jwe_payload=payload,
                tracking_id=uuid.uuid4().hex,
            )
        latencies.append((time.perf_counter() - t0) * 1000)
        if result.outcome is not Outcome.DELIVERED:
            raise RuntimeError(f"baseline push failed: {result}")

    start = time.perf_counter()
    await paced(total, rate, lambda i: tasks.append(asyncio.create_task(one(i))))
    await asyncio.gather(*tasks)
    elapsed = time.perf_counter() - start
    return {
        "pushes": total,
        "pushes_per_s": total / elapsed if elapsed else 0.0,
        "p50_ms": percentile(latencies, 0.5),
        "p99_ms": percentile(latencies, 0.99),
    }


def report(result: dict[str, Any]) -> None:
    table = Table(title="chat push: Prosody → component → relay → APNs simulator, same run")
    columns = (
        "relay pool", "offered msg/s", "pushes", "chat push/s", "receive→accepted p50 / p99 ms",
        "component own p50 / p99 ms", "component CPU µs/push", "Prosody CPU µs/push",
        "relay alone push/s", "relay alone p50 / p99 ms",
        "push/s vs relay alone", "p50 vs relay alone",
    )  # fmt: skip
    for column in columns:
        table.add_column(column, justify="right")
    lines = []
    for row in result["rows"]:
        base = row["baseline"]
        cells = [
            str(row["relay_connections"]),
            f"{row['rate']:g}",
            f"{row['delivered']}/{row['messages']}",
            f"{row['pushes_per_s']:.0f}",
            f"{row['p50_ms']:.1f} / {row['p99_ms']:.1f}",
            f"{row['own_p50_ms']:.2f} / {row['own_p99_ms']:.2f}",
            f"{row['component_cpu_us']:.0f}",
            f"{row['prosody_cpu_us']:.0f}",
            f"{base['pushes_per_s']:.0f}",
            f"{base['p50_ms']:.1f} / {base['p99_ms']:.1f}",
            f"{row['pushes_per_s'] / base['pushes_per_s']:.2f}",
            f"{row['p50_ms'] / base['p50_ms']:.2f}",
        ]
        table.add_row(*cells)
        lines.append("| " + " | ".join(cells) + " |")
    console.print(table)
    machine = f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}"
    load = os.getloadavg()[0]
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "chat_push.json").write_text(
        json.dumps({"machine": machine, "load_average": load, **result}, indent=2) + "\n"
    )
    md = [
        "# chat push",
        "",
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {machine}, load average after the run "
        f"{load:.1f} (the machine was shared with other jobs). `bench/chat_push.py --users "
        f"{result['users']} --seconds {result['seconds']:g}`: Prosody (offline messages to "
        "push-enabled users), the component in the bench process, the relay and the APNs "
        "simulator as their own processes.",
        "",
        "*relay pool*: `RelayClient(max_connections=...)` of the component and the baseline. "
        "*receive→accepted*: publish received on the component until the relay answered. "
        "*component own*: publish received until the push request started (HMAC check, "
        "device lookup, rules, waiting for one of the `relay_concurrency` slots). *relay "
        "alone*: the same number of pushes offered at the same rate straight through "
        "`RelayClient`, with the same concurrency limit, measured right after. *CPU µs/push*: "
        "CPU time of the bench process (component and its relay client) and of Prosody per "
        "publish.",
        "",
        "| " + " | ".join(columns) + " |",
        "|" + "---:|" * len(columns),
        *lines,
        "",
        "Publish outcomes: "
        + "; ".join(
            f"pool {row['relay_connections']}, {row['rate']:g}/s {row['outcomes']}"
            for row in result["rows"]
        )
        + ".",
        "",
    ]
    (RESULTS / "chat_push.md").write_text("\n".join(md))


async def send_load(port: int, rate: float, total: int, users: int) -> None:
    """The sender process: connect as ``sender`` and offer ``total`` messages at ``rate``."""
    server = ChatServer("prosody", Path("."), port, 0, "", Path("."))
    sender = await Client(server, "sender", "load").start()
    await paced(
        total,
        rate,
        lambda n: sender.send_message(
            mto=server.jid(f"user{n % users}"), mbody=f"m{n}", mtype="chat"
        ),
    )
    await sender.disconnect(wait=120)  # only once slixmpp's send queue has drained


def main() -> None:
    if sys.argv[1:2] == ["--send"]:
        port, rate, total, users = sys.argv[2:6]
        asyncio.run(send_load(int(port), float(rate), int(total), int(users)))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--rates",
        type=lambda v: [float(r) for r in v.split(",")],
        default=[100.0, 500.0],
        help="offered messages/s, comma-separated",
    )
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--users", type=int, default=50)
    parser.add_argument(
        "--relay-connections",
        type=lambda v: [int(n) for n in v.split(",")],
        default=[100],
        help="RelayClient pool sizes, comma-separated",
    )
    args = parser.parse_args()
    configure_logging(LogSettings(level="warning"))  # one log line per push would dominate
    with tempfile.TemporaryDirectory() as tmp:
        result = asyncio.run(chat_run(args, Path(tmp)))
    report(result)


if __name__ == "__main__":
    main()
